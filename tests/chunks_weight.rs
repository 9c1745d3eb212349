//! The weight cap of `chunks_timeout_result(..).max_weight(max_weight, weigh)`, one
//! rule per test, on a paused Tokio clock. Values are `(id, weight)` pairs weighed by their
//! second field.

mod common;

use std::cell::Cell;
use std::pin::pin;

use common::panics::{record_panics, take_panic_location};
use common::{batch, collect_tagged, error, ms, scheduled, secs};
use futures::channel::mpsc;
use futures::stream::{self, FusedStream, Stream};
use futures::{StreamExt, poll};
use result_stream::{FlushReason, ResultStreamExt};
use tokio::time::Instant;

type V = (u32, usize);

fn weight(v: &V) -> usize {
    v.1
}

#[tokio::test(start_paused = true)]
async fn oversize_first_value_is_yielded_alone_at_once() {
    let start = Instant::now();
    let rx = scheduled::<V, &str>(
        start,
        vec![(ms(0), Ok((1, 50))), (ms(100), Ok((2, 3)))],
        secs(10),
    );
    let adapter = rx.chunks_timeout_result(10, secs(2)).max_weight(10, weight);
    let (outs, ended) = collect_tagged(adapter, start).await;
    assert_eq!(
        outs,
        vec![
            batch(ms(0), vec![(1, 50)], FlushReason::Weight), // not held for the deadline
            batch(ms(2_100), vec![(2, 3)], FlushReason::Deadline),
        ]
    );
    assert_eq!(ended, secs(10));
}

#[tokio::test(start_paused = true)]
async fn oversize_value_mid_batch_closes_the_batch_then_goes_alone() {
    let start = Instant::now();
    let rx = scheduled::<V, &str>(
        start,
        vec![
            (ms(0), Ok((1, 2))),
            (ms(500), Ok((2, 3))),
            (ms(800), Ok((3, 99))), // closes [1, 2], then alone
            (ms(800), Ok((4, 1))),
        ],
        secs(10),
    );
    let adapter = rx.chunks_timeout_result(10, secs(2)).max_weight(10, weight);
    let (outs, _) = collect_tagged(adapter, start).await;
    assert_eq!(
        outs,
        vec![
            batch(ms(800), vec![(1, 2), (2, 3)], FlushReason::Weight),
            batch(ms(800), vec![(3, 99)], FlushReason::Weight),
            batch(ms(2_800), vec![(4, 1)], FlushReason::Deadline),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn batch_reaching_max_weight_exactly_is_yielded_at_once() {
    let start = Instant::now();
    let rx = scheduled::<V, &str>(
        start,
        vec![
            (ms(0), Ok((1, 4))),
            (ms(300), Ok((2, 6))),
            (ms(400), Ok((3, 0))),
        ],
        secs(10),
    );
    let adapter = rx.chunks_timeout_result(10, secs(2)).max_weight(10, weight);
    let (outs, _) = collect_tagged(adapter, start).await;
    assert_eq!(
        outs,
        vec![
            batch(ms(300), vec![(1, 4), (2, 6)], FlushReason::Weight),
            batch(ms(2_400), vec![(3, 0)], FlushReason::Deadline),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn value_that_would_push_past_max_weight_starts_the_next_batch() {
    let start = Instant::now();
    let rx = scheduled::<V, &str>(
        start,
        vec![
            (ms(0), Ok((1, 6))),
            (ms(300), Ok((2, 5))),
            (ms(900), Ok((3, 4))),
        ],
        secs(10),
    );
    let adapter = rx.chunks_timeout_result(10, secs(2)).max_weight(10, weight);
    let (outs, _) = collect_tagged(adapter, start).await;
    assert_eq!(
        outs,
        vec![
            batch(ms(300), vec![(1, 6)], FlushReason::Weight),
            // Value 2's batch has its own deadline, from its arrival at 300 ms.
            batch(ms(2_300), vec![(2, 5), (3, 4)], FlushReason::Deadline),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn weight_zero_values_are_limited_by_max_items_only() {
    let values: Vec<Result<V, ()>> = (0..7).map(|i| Ok((i, 0))).collect();
    let batches: Vec<_> = stream::iter(values)
        .chunks_timeout_result(3, secs(2))
        .max_weight(1, weight)
        .collect()
        .await;
    assert_eq!(
        batches,
        vec![
            Ok(vec![(0, 0), (1, 0), (2, 0)]),
            Ok(vec![(3, 0), (4, 0), (5, 0)]),
            Ok(vec![(6, 0)]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn weight_and_count_caps_together_whichever_comes_first() {
    let start = Instant::now();
    let ws = [1, 1, 1, 5, 4, 2, 2];
    let rx = scheduled::<V, &str>(
        start,
        ws.iter()
            .enumerate()
            .map(|(i, &w)| (ms(0), Ok((i as u32, w))))
            .collect(),
        secs(1),
    );
    let adapter = rx.chunks_timeout_result(3, secs(5)).max_weight(9, weight);
    let (outs, _) = collect_tagged(adapter, start).await;
    assert_eq!(
        outs,
        vec![
            batch(ms(0), vec![(0, 1), (1, 1), (2, 1)], FlushReason::Full),
            batch(ms(0), vec![(3, 5), (4, 4)], FlushReason::Weight), // 9: full by weight
            batch(ms(1_000), vec![(5, 2), (6, 2)], FlushReason::End),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn deadline_applies_to_weighed_batches() {
    let start = Instant::now();
    let rx = scheduled::<V, &str>(
        start,
        vec![
            (ms(0), Ok((1, 3))),
            (ms(1_000), Ok((2, 3))),
            (ms(2_500), Ok((3, 3))),
        ],
        secs(10),
    );
    let adapter = rx
        .chunks_timeout_result(10, secs(2))
        .max_weight(100, weight);
    let (outs, _) = collect_tagged(adapter, start).await;
    assert_eq!(
        outs,
        vec![
            batch(secs(2), vec![(1, 3), (2, 3)], FlushReason::Deadline),
            batch(ms(4_500), vec![(3, 3)], FlushReason::Deadline),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn error_mid_batch_flushes_and_resets_the_weight() {
    let start = Instant::now();
    let rx = scheduled::<V, &str>(
        start,
        vec![
            (ms(0), Ok((1, 7))),
            (ms(100), Err("bad")),
            (ms(200), Ok((2, 7))), // would not fit after value 1: the total was reset
            (ms(300), Ok((3, 3))),
        ],
        secs(10),
    );
    let adapter = rx.chunks_timeout_result(10, secs(2)).max_weight(10, weight);
    let (outs, _) = collect_tagged(adapter, start).await;
    assert_eq!(
        outs,
        vec![
            batch(ms(100), vec![(1, 7)], FlushReason::Error),
            error(ms(100), "bad"),
            batch(ms(300), vec![(2, 7), (3, 3)], FlushReason::Weight),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn weigh_is_called_exactly_once_per_value() {
    let calls = Cell::new(0);
    let values: Vec<Result<V, ()>> = (0..100).map(|i| Ok((i, (i % 13) as usize))).collect();
    let batches: Vec<_> = stream::iter(values)
        .chunks_timeout_result(7, secs(2))
        .max_weight(20, |v: &V| {
            calls.set(calls.get() + 1);
            v.1
        })
        .collect()
        .await;
    let flat: Vec<V> = batches.into_iter().flat_map(Result::unwrap).collect();
    assert_eq!(flat.len(), 100);
    assert_eq!(calls.get(), 100);
}

#[tokio::test(start_paused = true)]
async fn value_starting_the_next_batch_is_buffered_and_taken_by_take_remainder() {
    let (tx, rx) = mpsc::unbounded::<Result<V, &str>>();
    let mut s = pin!(rx.chunks_timeout_result(10, secs(2)).max_weight(10, weight));
    tx.unbounded_send(Ok((1, 6))).unwrap();
    tx.unbounded_send(Ok((2, 6))).unwrap();
    assert_eq!(s.next().await, Some(Ok(vec![(1, 6)])));
    assert_eq!(s.buffered_values(), &[(2, 6)]);
    assert_eq!(s.as_mut().take_remainder(), (vec![(2, 6)], None));
    // The weight went with it: 9 more fit into the next batch.
    tx.unbounded_send(Ok((3, 9))).unwrap();
    tx.unbounded_send(Ok((4, 1))).unwrap();
    assert_eq!(s.next().await, Some(Ok(vec![(3, 9), (4, 1)])));
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Weight));
}

#[tokio::test(start_paused = true)]
async fn lone_oversize_value_left_when_the_upstream_ends_is_yielded_then_none() {
    let values: Vec<Result<V, ()>> = vec![Ok((1, 5)), Ok((2, 50))];
    let mut s = pin!(
        stream::iter(values)
            .chunks_timeout_result(10, secs(2))
            .max_weight(10, weight)
    );
    assert_eq!(s.next().await, Some(Ok(vec![(1, 5)])));
    assert!(!s.is_terminated());
    assert_eq!(
        poll!(s.next()),
        std::task::Poll::Ready(Some(Ok(vec![(2, 50)])))
    );
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Weight));
    assert_eq!(s.next().await, None);
    assert!(s.is_terminated());
}

#[test]
#[should_panic(expected = "`max_weight` must be greater than zero")]
fn zero_max_weight_panics_naming_the_parameter() {
    let _ = stream::empty::<Result<V, ()>>()
        .chunks_timeout_result(1, secs(1))
        .max_weight(0, weight);
}

#[test]
fn zero_max_weight_panic_points_at_the_caller() {
    record_panics();
    let line = line!() + 4;
    let result = std::panic::catch_unwind(|| {
        stream::empty::<Result<V, ()>>()
            .chunks_timeout_result(1, secs(1))
            .max_weight(0, weight)
    });
    assert!(result.is_err());
    let (file, at) = take_panic_location().unwrap();
    assert_eq!((file.as_str(), at), (file!(), line));
}

/// `size_hint` with a value carried into the next batch by the weight cap: that value is one
/// more possible batch on top of one per upstream item; with nothing buffered, none.
#[tokio::test(start_paused = true)]
async fn size_hint_counts_a_carried_value_as_one_possible_batch() {
    let values: Vec<Result<V, ()>> = vec![Ok((1, 6)), Ok((2, 6)), Ok((3, 1))];
    let mut s = pin!(
        stream::iter(values)
            .chunks_timeout_result(10, secs(2))
            .max_weight(10, weight)
    );
    // Nothing buffered: at least one batch of the three values, at most one per value.
    assert_eq!(s.size_hint(), (1, Some(3)));
    assert_eq!(s.next().await, Some(Ok(vec![(1, 6)])));
    // Value 2 is buffered, value 3 is still upstream.
    assert_eq!(s.buffered_values(), &[(2, 6)]);
    assert_eq!(s.size_hint(), (1, Some(2)));
    assert_eq!(s.next().await, Some(Ok(vec![(2, 6), (3, 1)])));
    assert_eq!(s.size_hint(), (0, Some(0)));
}

#[test]
fn debug_shows_the_weight_cap() {
    let s = stream::empty::<Result<V, ()>>()
        .chunks_timeout_result(3, secs(1))
        .max_weight(10, weight);
    let debug = format!("{s:?}");
    assert!(debug.contains("max_items: 3"), "{debug}");
    assert!(
        debug.contains("MaxWeight { max_weight: 10, .. }"),
        "{debug}"
    );
}

/// A sum past `usize::MAX` is past any cap: it never saturates into a batch "weighing"
/// `usize::MAX`.
#[tokio::test(start_paused = true)]
async fn an_overflowing_weight_sum_is_past_the_cap() {
    let values = [(1, usize::MAX - 1), (2, 5), (3, 0)].map(Ok::<V, ()>);
    let out: Vec<_> = stream::iter(values)
        .chunks_timeout_result(10, secs(1))
        .max_weight(usize::MAX, weight)
        .with_batch_info()
        .map(|b| b.map(|(batch, info)| (batch, info.reason(), info.weight())))
        .collect()
        .await;
    assert_eq!(
        out,
        vec![
            Ok((
                vec![(1, usize::MAX - 1)],
                FlushReason::Weight,
                Some(usize::MAX - 1)
            )),
            Ok((vec![(2, 5), (3, 0)], FlushReason::End, Some(5))),
        ]
    );
}
