//! Property tests of `chunks_timeout_result` and its weight cap against a
//! reference model, over random schedules of weighted values, errors and gaps, on a paused
//! Tokio clock.
//!
//! The upstream is driven by the clock itself ([`Scripted`]): an event is ready from its
//! instant on, so when a batch's deadline falls on the instant another event arrives, that
//! event is ready when the adapter is polled, and the model can say exactly what happens
//! ("data wins ties"). Every case is compared with the model; the generator is
//! checked to produce such ties, weight flushes and oversize values often.

mod common;

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use common::{Out, collect_tagged, ms, paused_runtime};
use futures::{Stream, StreamExt, stream};
use proptest::prelude::*;
use result_stream::{FlushReason, ResultStreamExt};
use tokio::time::{Instant, Sleep};

/// A value: a unique id and a weight.
type V = (u32, usize);

/// One input token: a value or an error (with a unique id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    V(V),
    E(u32),
}

/// A generated case: events at absolute times (ms), the end of the stream (ms), and the
/// adapter's parameters (`max_weight: None` is the count-only adapter).
#[derive(Debug, Clone)]
struct Case {
    events: Vec<(u64, Tok)>,
    end: u64,
    max_items: usize,
    timeout: u64,
    max_weight: Option<usize>,
}

fn weight() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0usize), 6 => 1usize..=10, 1 => 11usize..=40]
}

fn case() -> impl Strategy<Value = Case> {
    let gap = prop_oneof![2 => Just(0u64), 3 => 0u64..=30];
    let step = (gap, prop::bool::weighted(0.15), weight());
    (
        prop::collection::vec(step, 0..40),
        prop_oneof![Just(0u64), 0u64..=60],
        1usize..=10,
        prop_oneof![1 => Just(0u64), 9 => 1u64..=50],
        prop_oneof![1 => Just(None), 2 => (1usize..=30).prop_map(Some)],
    )
        .prop_map(|(steps, final_gap, max_items, timeout, max_weight)| {
            let mut now = 0;
            let events = steps
                .into_iter()
                .enumerate()
                .map(|(i, (gap, is_error, weight))| {
                    now += gap;
                    let id = i as u32;
                    let tok = if is_error {
                        Tok::E(id)
                    } else {
                        Tok::V((id, weight))
                    };
                    (now, tok)
                })
                .collect();
            Case {
                events,
                end: now + final_gap,
                max_items,
                timeout,
                max_weight,
            }
        })
}

type O = Out<V, u32>;

/// What the model saw on its way: the rules a case exercises.
#[derive(Debug, Default)]
struct Seen {
    /// A deadline fell on the instant of an event (or of the end) with values buffered.
    ties: usize,
    weight_flushes: usize,
    oversize: usize,
}

/// The reference model: the exact outputs.
fn model(case: &Case) -> (Vec<O>, Seen) {
    let mut seen = Seen::default();
    let mut outs = Vec::new();
    let mut batch: Vec<V> = Vec::new();
    let mut total = 0usize;
    let mut deadline = 0;
    let flush = |outs: &mut Vec<O>, batch: &mut Vec<V>, total: &mut usize, at, reason| {
        *total = 0;
        outs.push(common::batch(ms(at), std::mem::take(batch), reason));
    };
    for &(t, tok) in &case.events {
        if !batch.is_empty() {
            seen.ties += usize::from(deadline == t);
            if deadline < t {
                flush(
                    &mut outs,
                    &mut batch,
                    &mut total,
                    deadline,
                    FlushReason::Deadline,
                );
            }
        }
        match tok {
            Tok::V((id, w)) => {
                if let Some(max_weight) = case.max_weight {
                    seen.oversize += usize::from(w > max_weight);
                    if !batch.is_empty() && total + w > max_weight {
                        seen.weight_flushes += 1;
                        flush(&mut outs, &mut batch, &mut total, t, FlushReason::Weight);
                    }
                }
                if batch.is_empty() {
                    deadline = t + case.timeout;
                }
                batch.push((id, w));
                total += w;
                if batch.len() == case.max_items {
                    flush(&mut outs, &mut batch, &mut total, t, FlushReason::Full);
                } else if case.max_weight.is_some_and(|max| total >= max) {
                    seen.weight_flushes += 1;
                    flush(&mut outs, &mut batch, &mut total, t, FlushReason::Weight);
                }
            }
            Tok::E(e) => {
                if !batch.is_empty() {
                    flush(&mut outs, &mut batch, &mut total, t, FlushReason::Error);
                }
                outs.push(common::error(ms(t), e));
            }
        }
    }
    if !batch.is_empty() {
        seen.ties += usize::from(deadline == case.end);
        if deadline < case.end {
            flush(
                &mut outs,
                &mut batch,
                &mut total,
                deadline,
                FlushReason::Deadline,
            );
        } else {
            flush(
                &mut outs,
                &mut batch,
                &mut total,
                case.end,
                FlushReason::End,
            );
        }
    }
    (outs, seen)
}

/// An upstream driven by the paused clock: each event is ready from its instant on, and the
/// stream ends at `end`.
struct Scripted {
    events: VecDeque<(Instant, Result<V, u32>)>,
    end: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl Stream for Scripted {
    type Item = Result<V, u32>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.events.front().map_or(self.end, |&(at, _)| at);
        if Instant::now() < next {
            self.sleep.as_mut().reset(next);
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        Poll::Ready(self.events.pop_front().map(|(_, item)| item))
    }
}

/// Runs the adapter over the case's schedule on a fresh paused runtime.
fn run(case: &Case) -> (Vec<O>, Duration) {
    paused_runtime().block_on(async {
        let start = Instant::now();
        let upstream = Scripted {
            events: case
                .events
                .iter()
                .map(|&(t, tok)| {
                    let item = match tok {
                        Tok::V(v) => Ok(v),
                        Tok::E(e) => Err(e),
                    };
                    (start + ms(t), item)
                })
                .collect(),
            end: start + ms(case.end),
            sleep: Box::pin(tokio::time::sleep_until(start)),
        };
        let adapter = upstream.chunks_timeout_result(case.max_items, ms(case.timeout));
        match case.max_weight {
            None => collect_tagged(adapter, start).await,
            Some(max) => collect_tagged(adapter.max_weight(max, |&(_, w): &V| w), start).await,
        }
    })
}

/// The rules that hold whatever the model says.
fn check_rules(case: &Case, outs: &[O], ended: Duration) -> Result<(), TestCaseError> {
    let arrival = |tok: Tok| {
        ms(case
            .events
            .iter()
            .find(|&&(_, t)| t == tok)
            .expect("every output token was an input")
            .0)
    };

    // Nothing lost, duplicated or reordered; errors keep their places.
    let flattened: Vec<Tok> = outs
        .iter()
        .flat_map(|o| match &o.item {
            Ok(values) => values.iter().map(|&v| Tok::V(v)).collect::<Vec<_>>(),
            Err(e) => vec![Tok::E(*e)],
        })
        .collect();
    let inputs: Vec<Tok> = case.events.iter().map(|&(_, tok)| tok).collect();
    prop_assert_eq!(&flattened, &inputs);

    prop_assert_eq!(ended, ms(case.end), "None comes when the upstream ends");
    let timeout = ms(case.timeout);
    for (i, out) in outs.iter().enumerate() {
        if i > 0 {
            prop_assert!(outs[i - 1].at <= out.at, "outputs in time order");
        }
        let Ok(values) = &out.item else { continue };
        prop_assert!(!values.is_empty(), "empty batch at {}", i);
        prop_assert!(values.len() <= case.max_items, "batch over max_items");
        if let Some(max) = case.max_weight {
            let total: usize = values.iter().map(|&(_, w)| w).sum();
            prop_assert!(
                total <= max || values.len() == 1,
                "batch {:?} weighs {} > {} and is not a lone oversize value",
                values,
                total,
                max
            );
            if values.len() == 1 && values[0].1 > max {
                prop_assert_eq!(out.at, arrival(Tok::V(values[0])), "oversize value held");
            }
        }
        let first = arrival(Tok::V(values[0]));
        let last = arrival(Tok::V(*values.last().unwrap()));
        prop_assert!(out.at >= last, "a batch is not yielded before its values");
        prop_assert!(
            out.at <= first + timeout,
            "batch {:?} waited past its deadline: first value at {:?}, yielded at {:?}",
            values,
            first,
            out.at
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn batches_match_the_reference_model(case in case()) {
        let (outs, ended) = run(&case);
        check_rules(&case, &outs, ended)?;
        prop_assert_eq!(outs, model(&case).0);
    }

    /// On an always-ready upstream the batches are exactly the greedy packing: each batch is
    /// the longest run of values that fits both caps (a lone heavier value alone).
    #[test]
    fn ready_upstream_batches_are_the_greedy_packing(
        items in prop::collection::vec((weight(), prop::bool::weighted(0.1)), 0..80),
        max_items in 1usize..=12,
        max_weight in 1usize..=30,
    ) {
        let items: Vec<Result<V, u32>> = items
            .into_iter()
            .enumerate()
            .map(|(i, (w, is_error))| if is_error { Err(i as u32) } else { Ok((i as u32, w)) })
            .collect();
        let batches: Vec<Result<Vec<V>, u32>> = futures::executor::block_on(
            stream::iter(items.clone())
                .chunks_timeout_result(max_items, Duration::from_secs(1))
                .max_weight(max_weight, |&(_, w): &V| w)
                .collect(),
        );
        // Greedy packing, written independently of the timed model.
        let mut expected = Vec::new();
        let mut open: Vec<V> = Vec::new();
        for item in items {
            match item {
                Err(e) => {
                    if !open.is_empty() {
                        expected.push(Ok(std::mem::take(&mut open)));
                    }
                    expected.push(Err(e));
                }
                Ok(v) => {
                    let fits = open.len() < max_items
                        && open.iter().map(|&(_, w)| w).sum::<usize>() + v.1 <= max_weight;
                    if !open.is_empty() && !fits {
                        expected.push(Ok(std::mem::take(&mut open)));
                    }
                    open.push(v);
                    let weight: usize = open.iter().map(|&(_, w)| w).sum();
                    if open.len() == max_items || weight >= max_weight {
                        expected.push(Ok(std::mem::take(&mut open)));
                    }
                }
            }
        }
        if !open.is_empty() {
            expected.push(Ok(open));
        }
        prop_assert_eq!(batches, expected);
    }
}

/// The generator exercises what the model is there to check: ties between a deadline and an
/// event (data wins), weight flushes and oversize values, each in a good share of cases.
#[test]
fn generated_cases_exercise_ties_weights_and_oversize_values() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = case();
    let total = 300;
    let (mut ties, mut weights, mut oversize, mut zero_timeout) = (0, 0, 0, 0);
    for _ in 0..total {
        let case = strategy.new_tree(&mut runner).unwrap().current();
        let (_, seen) = model(&case);
        ties += usize::from(seen.ties > 0 && case.timeout > 0);
        weights += usize::from(seen.weight_flushes > 0);
        oversize += usize::from(seen.oversize > 0);
        zero_timeout += usize::from(case.timeout == 0);
    }
    assert!(
        ties * 10 >= total,
        "only {ties} of {total} cases have a tie"
    );
    assert!(
        weights * 4 >= total,
        "only {weights} of {total} cases flush by weight"
    );
    assert!(
        oversize * 5 >= total,
        "only {oversize} of {total} cases have an oversize value"
    );
    assert!(
        zero_timeout * 5 <= total,
        "{zero_timeout} of {total} cases have timeout 0"
    );
}

#[test]
fn model_agrees_with_a_hand_written_case() {
    // max 3 items, weight 10, timeout 20 ms: 1@0 2@5 (deadline 20) | 3@20 (ties with the
    // deadline: data wins, joins) | 4@25 (w 9: 4+9 > 10, weight flush) | 5@25 (w 12, oversize:
    // closes 4's batch first, then alone) | E@30 | 6@40 end@45.
    let v = |id, w| Tok::V((id, w));
    let case = Case {
        events: vec![
            (0, v(1, 1)),
            (5, v(2, 1)),
            (20, v(3, 2)),
            (25, v(4, 9)),
            (25, v(5, 12)),
            (30, Tok::E(9)),
            (40, v(6, 0)),
        ],
        end: 45,
        max_items: 3,
        timeout: 20,
        max_weight: Some(10),
    };
    let expected = vec![
        common::batch(ms(20), vec![(1, 1), (2, 1), (3, 2)], FlushReason::Full),
        common::batch(ms(25), vec![(4, 9)], FlushReason::Weight),
        common::batch(ms(25), vec![(5, 12)], FlushReason::Weight),
        common::error(ms(30), 9),
        common::batch(ms(45), vec![(6, 0)], FlushReason::End),
    ];
    assert_eq!(model(&case).0, expected);
    let (outs, ended) = run(&case);
    assert_eq!(outs, expected);
    assert_eq!(ended, ms(45));
}
