//! An independent attack on both batchers: random schedules of values, errors, bursts past
//! the cooperative budget and clock steps, polled only when woken (so a missing wake-up
//! shows as a late batch); weights at the edges of `usize`; the per-key error and eviction
//! order; the budget's yield and deadline; `take_remainder`. Every test here holds
//! (`batchers_attack_review_edges.rs` has the rest).

mod common;

use std::collections::HashMap;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::wakers::CountingWaker;
use common::{ms, paused_runtime};
use futures::channel::mpsc;
use futures::stream::{self, FusedStream, Stream, StreamExt};
use proptest::prelude::*;
use result_stream::{BatchInfo, FlushReason, ResultStreamExt};
use tokio::time::{Instant, advance};

type E = &'static str;

/// A task that polls its stream only when woken, as an executor does.
struct Task {
    flag: Arc<CountingWaker>,
    waker: Waker,
    seen: usize,
}

impl Task {
    fn new() -> Self {
        let flag = Arc::new(CountingWaker(AtomicUsize::new(1)));
        let waker = Waker::from(flag.clone());
        Self {
            flag,
            waker,
            seen: 0,
        }
    }

    /// Polls while woken; returns what was yielded and whether the stream ended.
    fn run<S: Stream + ?Sized>(&mut self, mut s: Pin<&mut S>, out: &mut Vec<S::Item>) -> bool {
        loop {
            let wakes = self.flag.0.load(Ordering::SeqCst);
            if wakes == self.seen {
                return false;
            }
            self.seen = wakes;
            loop {
                match s.as_mut().poll_next(&mut Context::from_waker(&self.waker)) {
                    Poll::Ready(Some(item)) => out.push(item),
                    Poll::Ready(None) => return true,
                    Poll::Pending => break,
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Values(Vec<(u8, usize)>),
    Error,
    Advance(u64),
    Burst(u8),
}

fn weight() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..6,
        1 => Just(usize::MAX),
        1 => Just(usize::MAX - 1),
        1 => Just(usize::MAX / 2 + 1),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        6 => prop::collection::vec((0u8..4, weight()), 1..4).prop_map(Step::Values),
        1 => Just(Step::Error),
        4 => (1u64..30).prop_map(Step::Advance),
        1 => (0u8..4).prop_map(Step::Burst),
    ];
    prop::collection::vec(step, 0..40)
}

/// One input item: a value (key, weight, number) or an error.
type Input = Result<(u8, usize, u32), E>;

/// The input items of a schedule, values numbered in order; bursts run past the budget.
fn items(steps: &[Step]) -> Vec<Option<Vec<Input>>> {
    let mut n = 0;
    let mut next = |key, weight| {
        n += 1;
        Ok((key, weight, n))
    };
    steps
        .iter()
        .map(|step| match step {
            Step::Values(values) => Some(values.iter().map(|&(k, w)| next(k, w)).collect()),
            Step::Error => Some(vec![Err("boom")]),
            // Key 0 bursts over all four keys, the others over one.
            Step::Burst(key) => Some(
                (0..4_200u32)
                    .map(|i| next(key.max(&((i % 4) as u8)).to_owned(), 0))
                    .collect(),
            ),
            Step::Advance(_) => None,
        })
        .collect()
}

/// Checks one batch against the caps and the waiting bound; returns its weight.
fn check_batch(
    values: &[(u8, usize, u32)],
    info: &BatchInfo,
    max_items: usize,
    max_weight: usize,
    timeout: Duration,
) {
    assert!(!values.is_empty(), "an empty batch");
    assert!(values.len() <= max_items, "{} > max_items", values.len());
    let sum: u128 = values.iter().map(|v| v.1 as u128).sum();
    if values.len() > 1 {
        assert!(
            sum <= max_weight as u128,
            "batch of {} weighs {sum} > {max_weight}",
            values.len()
        );
    }
    assert_eq!(
        info.weight().map(|w| w as u128),
        Some(sum),
        "reported weight"
    );
    match info.reason() {
        FlushReason::Deadline => assert_eq!(info.age(), timeout, "a deadline batch's age"),
        FlushReason::Full => assert_eq!(values.len(), max_items),
        _ => assert!(
            info.age() <= timeout,
            "{:?} batch waited {:?}",
            info.reason(),
            info.age()
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Single batcher, polled only when woken: nothing lost, duplicated or reordered,
    /// errors in place, caps kept, deadlines exact and no batch older than `timeout`.
    #[test]
    fn single_batcher_under_random_schedules(
        steps in steps(),
        max_items in prop_oneof![3 => 1usize..6, 1 => Just(10_000usize)],
        max_weight in prop_oneof![1usize..8, Just(usize::MAX)],
        timeout in prop_oneof![Just(0u64), 1u64..25],
    ) {
        let timeout = ms(timeout);
        let inputs = items(&steps);
        paused_runtime().block_on(async {
            let (tx, rx) = mpsc::unbounded();
            let mut s = pin!(rx
                .chunks_timeout_result(max_items, timeout)
                .max_weight(max_weight, |v: &(u8, usize, u32)| v.1)
                .with_batch_info());
            let (mut task, mut out) = (Task::new(), Vec::new());
            for (step, input) in steps.iter().zip(&inputs) {
                match (step, input) {
                    (Step::Advance(n), _) => for _ in 0..*n {
                        advance(ms(1)).await;
                        task.run(s.as_mut(), &mut out);
                    },
                    (_, Some(items)) => for item in items {
                        tx.unbounded_send(*item).unwrap();
                    },
                    _ => unreachable!(),
                }
                task.run(s.as_mut(), &mut out);
                assert!(s.buffered_values().len() <= max_items);
            }
            drop(tx);
            assert!(task.run(s.as_mut(), &mut out), "the end was not reached");
            assert!(s.is_terminated());
            let mut flat = Vec::new();
            for item in out {
                match item {
                    Ok((values, info)) => {
                        check_batch(&values, &info, max_items, max_weight, timeout);
                        flat.extend(values.into_iter().map(Ok));
                    }
                    Err(e) => flat.push(Err(e)),
                }
            }
            let expected: Vec<_> = inputs.into_iter().flatten().flatten().collect();
            assert_eq!(flat, expected);
        });
    }

    /// Per-key batcher, polled only when woken, with a weight cap and `max_open_keys`:
    /// per-key order, errors after every value before them and before every value after
    /// them, caps kept, open batches bounded, deadlines exact.
    #[test]
    fn keyed_batcher_under_random_schedules(
        steps in steps(),
        max_items in prop_oneof![3 => 1usize..6, 1 => Just(10_000usize)],
        max_weight in prop_oneof![1usize..8, Just(usize::MAX)],
        max_open in 1usize..4,
        timeout in prop_oneof![Just(0u64), 1u64..25],
    ) {
        let timeout = ms(timeout);
        let inputs = items(&steps);
        paused_runtime().block_on(async {
            let (tx, rx) = mpsc::unbounded();
            let mut s = pin!(rx
                .chunks_timeout_by_key_result(|v: &(u8, usize, u32)| v.0, max_items, timeout)
                .max_open_keys(max_open)
                .max_weight(max_weight, |v: &(u8, usize, u32)| v.1)
                .with_batch_info());
            let (mut task, mut out) = (Task::new(), Vec::new());
            for (step, input) in steps.iter().zip(&inputs) {
                match (step, input) {
                    (Step::Advance(n), _) => for _ in 0..*n {
                        advance(ms(1)).await;
                        task.run(s.as_mut(), &mut out);
                    },
                    (_, Some(items)) => for item in items {
                        tx.unbounded_send(*item).unwrap();
                    },
                    _ => unreachable!(),
                }
                task.run(s.as_mut(), &mut out);
                assert!(s.open_keys() <= max_open, "{} open batches", s.open_keys());
            }
            drop(tx);
            assert!(task.run(s.as_mut(), &mut out), "the end was not reached");
            assert!(s.is_terminated());
            // Segments between errors: the same multiset of values, each key in order.
            let expected: Vec<_> = inputs.into_iter().flatten().flatten().collect();
            let split = |items: Vec<Input>| {
                let mut segments = vec![HashMap::<u8, Vec<u32>>::new()];
                for item in items {
                    match item {
                        Ok(v) => segments.last_mut().unwrap().entry(v.0).or_default().push(v.2),
                        Err(_) => segments.push(HashMap::new()),
                    }
                }
                segments
            };
            let mut flat = Vec::new();
            for item in out {
                match item {
                    Ok((key, (values, info))) => {
                        assert!(values.iter().all(|v| v.0 == key), "a value under another key");
                        check_batch(&values, &info, max_items, max_weight, timeout);
                        flat.extend(values.into_iter().map(Ok));
                    }
                    Err(e) => flat.push(Err(e)),
                }
            }
            assert_eq!(split(flat), split(expected));
        });
    }
}

fn drain_now<S: Stream>(s: S) -> Vec<S::Item> {
    paused_runtime().block_on(s.collect())
}

#[test]
fn weights_at_the_edge_of_usize_never_saturate_in_either_batcher() {
    let input =
        || stream::iter([usize::MAX - 1, 5, usize::MAX, 0, 0, usize::MAX, 1].map(Ok::<_, E>));
    let single: Vec<_> = drain_now(
        input()
            .chunks_timeout_result(100, ms(10))
            .max_weight(usize::MAX, |&w| w)
            .with_batch_info(),
    )
    .into_iter()
    .map(|b| {
        let (values, info) = b.unwrap();
        (values, info.weight(), info.reason())
    })
    .collect();
    use FlushReason::*;
    let max = usize::MAX;
    assert_eq!(
        single,
        vec![
            (vec![max - 1], Some(max - 1), Weight),
            (vec![5], Some(5), Weight),
            (vec![max,], Some(max), Weight),
            (vec![0, 0, max], Some(max), Weight),
            (vec![1], Some(1), End),
        ]
    );
    let keyed: Vec<_> = drain_now(
        input()
            .chunks_timeout_by_key_result(|_| (), 100, ms(10))
            .max_weight(usize::MAX, |&w| w)
            .with_batch_info(),
    )
    .into_iter()
    .map(|b| {
        let ((), (values, info)) = b.unwrap();
        (values, info.weight(), info.reason())
    })
    .collect();
    assert_eq!(keyed, single);
}

#[tokio::test(start_paused = true)]
async fn an_oversize_value_goes_alone_and_at_once_in_both_batchers() {
    let (tx, rx) = mpsc::unbounded::<Result<usize, E>>();
    let mut s = pin!(
        rx.chunks_timeout_result(10, ms(1_000))
            .max_weight(5, |&w| w)
    );
    tx.unbounded_send(Ok(2)).unwrap();
    tx.unbounded_send(Ok(9)).unwrap();
    let start = Instant::now();
    assert_eq!(s.next().await, Some(Ok(vec![2])));
    assert_eq!(s.next().await, Some(Ok(vec![9])));
    assert_eq!(
        (start.elapsed(), s.last_flush_reason()),
        (Duration::ZERO, Some(FlushReason::Weight))
    );

    let (tx, rx) = mpsc::unbounded::<Result<(char, usize), E>>();
    let mut k = pin!(
        rx.chunks_timeout_by_key_result(|v| v.0, 10, ms(1_000))
            .max_open_keys(1)
            .max_weight(5, |v| v.1)
    );
    tx.unbounded_send(Ok(('a', 2))).unwrap();
    tx.unbounded_send(Ok(('b', 9))).unwrap(); // heavier than the cap: evicts nothing
    tx.unbounded_send(Ok(('a', 2))).unwrap();
    tx.unbounded_send(Ok(('a', 9))).unwrap(); // splits a, then goes alone
    tx.unbounded_send(Err("e")).unwrap();
    assert_eq!(k.next().await, Some(Ok(('b', vec![('b', 9)]))));
    assert_eq!(k.open_keys(), 1);
    assert_eq!(k.next().await, Some(Ok(('a', vec![('a', 2), ('a', 2)]))));
    assert_eq!(k.next().await, Some(Ok(('a', vec![('a', 9)]))));
    assert_eq!(k.next().await, Some(Err("e")));
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn keyed_error_flushes_every_open_batch_oldest_first_after_a_split_reopened_one() {
    let (tx, rx) = mpsc::unbounded::<Result<(char, usize), E>>();
    let mut k = pin!(
        rx.chunks_timeout_by_key_result(|v| v.0, 10, ms(1_000))
            .max_weight(5, |v| v.1)
    );
    for v in [('a', 3), ('b', 1), ('c', 1), ('a', 3)] {
        tx.unbounded_send(Ok(v)).unwrap();
    }
    // a's second value closes a's batch by weight and reopens a behind b and c.
    assert_eq!(k.next().await, Some(Ok(('a', vec![('a', 3)]))));
    assert_eq!(
        k.open_keys_oldest_first().copied().collect::<Vec<_>>(),
        ['b', 'c', 'a']
    );
    tx.unbounded_send(Ok(('d', 1))).unwrap();
    tx.unbounded_send(Err("e")).unwrap();
    tx.unbounded_send(Ok(('b', 1))).unwrap();
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(k.next().await.unwrap());
    }
    let keys: Vec<_> = got.iter().map(|r| r.as_ref().map(|b| b.0)).collect();
    assert_eq!(
        keys,
        [Ok('b'), Ok('c'), Ok('a'), Ok('d'), Err(&"e"), Ok('b')]
    );
    assert!(!k.is_terminated());
}

#[tokio::test(start_paused = true)]
async fn eviction_takes_the_oldest_first_value_not_the_oldest_key() {
    let (tx, rx) = mpsc::unbounded::<Result<(char, u32), E>>();
    let mut k = pin!(
        rx.chunks_timeout_by_key_result(|v| v.0, 2, ms(1_000))
            .max_open_keys(2)
    );
    for v in [('a', 1), ('b', 1), ('a', 2), ('a', 3), ('c', 1)] {
        tx.unbounded_send(Ok(v)).unwrap();
    }
    // a fills and reopens behind b, so c evicts b.
    assert_eq!(k.next().await, Some(Ok(('a', vec![('a', 1), ('a', 2)]))));
    assert_eq!(k.next().await, Some(Ok(('b', vec![('b', 1)]))));
    assert_eq!(k.last_flush_reason(), Some(FlushReason::Eviction));
    assert_eq!(
        k.open_keys_oldest_first().copied().collect::<Vec<_>>(),
        ['a', 'c']
    );
}

#[tokio::test(start_paused = true)]
async fn a_budget_yield_wakes_the_task_and_does_not_move_the_deadline() {
    let (tx, rx) = mpsc::unbounded::<Result<u32, E>>();
    let mut s = pin!(rx.chunks_timeout_result(100_000, ms(50)));
    for v in 0..10_000 {
        tx.unbounded_send(Ok(v)).unwrap();
    }
    let mut task = Task::new();
    let waker = task.waker.clone();
    let mut cx = Context::from_waker(&waker);
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    assert_eq!(
        s.buffered_values().len(),
        4_096,
        "one poll takes the budget"
    );
    assert_eq!(
        task.flag.0.load(Ordering::SeqCst),
        2,
        "the yield woke the task"
    );
    let deadline = s.armed_deadline().expect("armed at the yield");
    assert_eq!(deadline, Instant::now() + ms(50));
    advance(ms(30)).await;
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    assert_eq!(
        s.armed_deadline(),
        Some(deadline),
        "not extended by later values"
    );
    advance(ms(20)).await;
    task.seen = task.flag.0.load(Ordering::SeqCst) - 1;
    let mut out = Vec::new();
    task.run(s.as_mut(), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].as_ref().unwrap().len(), 10_000);
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Deadline));
}

#[tokio::test(start_paused = true)]
async fn a_carried_value_keeps_its_own_deadline_when_the_consumer_is_slow() {
    let (tx, rx) = mpsc::unbounded::<Result<usize, E>>();
    let mut s = pin!(
        rx.chunks_timeout_result(10, ms(40))
            .max_weight(5, |&w| w)
            .with_batch_info()
    );
    tx.unbounded_send(Ok(3)).unwrap();
    tx.unbounded_send(Ok(4)).unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().0, vec![3]);
    assert_eq!(s.buffered_values(), &[4]);
    advance(ms(100)).await; // the consumer is slow: 4's deadline passed meanwhile
    let (values, info) = s.next().await.unwrap().unwrap();
    assert_eq!(
        (values, info.reason(), info.age()),
        (vec![4], FlushReason::Deadline, ms(100))
    );
}

#[tokio::test(start_paused = true)]
async fn take_remainder_returns_a_carried_value_and_a_due_oversize_value() {
    let (tx, rx) = mpsc::unbounded::<Result<(char, usize), E>>();
    let mut s = pin!(
        rx.chunks_timeout_result(10, ms(40))
            .max_weight(5, |v: &(char, usize)| v.1)
    );
    tx.unbounded_send(Ok(('a', 3))).unwrap();
    tx.unbounded_send(Ok(('a', 4))).unwrap();
    assert!(s.next().await.is_some());
    assert_eq!(s.as_mut().take_remainder(), (vec![('a', 4)], None));
    assert_eq!(s.armed_deadline(), None);

    let (tx, rx) = mpsc::unbounded::<Result<(char, usize), E>>();
    let mut k = pin!(
        rx.chunks_timeout_by_key_result(|v| v.0, 10, ms(40))
            .max_weight(5, |v| v.1)
    );
    for v in [('a', 3), ('b', 1), ('a', 9)] {
        tx.unbounded_send(Ok(v)).unwrap();
    }
    assert_eq!(k.next().await, Some(Ok(('a', vec![('a', 3)]))));
    let (rest, error) = k.as_mut().take_remainder();
    assert_eq!(
        (rest, error),
        (vec![('b', vec![('b', 1)]), ('a', vec![('a', 9)])], None)
    );
    drop(tx);
    assert_eq!(k.next().await, None, "the due value is not yielded twice");
}
