//! Hostile tests for the batching adapters (`chunks_timeout_result` with `.max_weight` /
//! `.with_batch_info`, and `chunks_timeout_by_key_result`). Each test quotes the rule it
//! checks. Failing on main (eb4cdd2):
//! - `weight_split_value_is_not_held_past_its_deadline_by_a_slow_consumer`
//! - `batch_info_deadline_batch_is_never_older_than_timeout_when_polled_at_once`
//! - `armed_deadline_survives_the_runtime_that_armed_it`
//!
//! The others pass and are kept as guards of rules no other test covers (each says which).

mod common;

use std::pin::pin;
use std::task::{Context, Waker};

use common::panics::{record_panics, take_panic_location};
use common::{paused_runtime, secs};
use futures::channel::mpsc;
use futures::stream::{self, FusedStream, Stream, StreamExt};
use result_stream::{FlushReason, ResultStreamExt};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------
// chunks_timeout_result + max_weight: the value that starts the next batch
// ---------------------------------------------------------------------------------------

/// The deadline rule: "a deadline per batch, started by its first value, never extended by later
/// values: every value waits at most `timeout`, give or take the poll that is in progress";
/// README: the deadline "is `timeout` after the end of the poll in which that value arrived".
///
/// Value `b` arrives in the poll that yields `[a]` (it would push the batch past
/// `max_weight`, so it starts the next batch and stays buffered). The consumer then takes
/// 5 s with `[a]` (a database write). When it polls again, `b`'s deadline (2 s after the
/// poll in which it arrived) is long gone, so `[b]` is due at once. The adapter instead arms
/// the timer only now, at the first `Pending`, and holds `b` for another 2 s: 7 s in all.
#[tokio::test(start_paused = true)]
async fn weight_split_value_is_not_held_past_its_deadline_by_a_slow_consumer() {
    let (tx, rx) = mpsc::unbounded::<Result<u32, ()>>();
    let mut s = pin!(
        rx.chunks_timeout_result(10, secs(2))
            .max_weight(6, |v: &u32| *v as usize)
    );
    tx.unbounded_send(Ok(4)).unwrap();
    tx.unbounded_send(Ok(4)).unwrap(); // would make 8 > 6: starts the next batch
    let start = Instant::now();
    assert_eq!(s.next().await, Some(Ok(vec![4])));
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Weight));
    assert_eq!(
        s.buffered_values(),
        &[4],
        "the second value is buffered in the adapter"
    );

    tokio::time::sleep(secs(5)).await; // the consumer writes the first batch

    assert_eq!(s.next().await, Some(Ok(vec![4])));
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Deadline));
    assert_eq!(
        start.elapsed(),
        secs(5),
        "the buffered value's 2 s deadline had passed when the consumer came back at 5 s; \
         it was held until {:?}",
        start.elapsed()
    );
}

/// Same defect seen through `.with_batch_info()`: a batch closed for `Deadline` reports an
/// age of 7 s with `timeout == 2 s`, i.e. its deadline was not "`timeout` after its first
/// value arrived" (`FlushReason::Deadline`'s own doc).
#[tokio::test(start_paused = true)]
async fn batch_info_deadline_batch_is_never_older_than_timeout_when_polled_at_once() {
    let (tx, rx) = mpsc::unbounded::<Result<u32, ()>>();
    let mut s = pin!(
        rx.chunks_timeout_result(10, secs(2))
            .max_weight(6, |v: &u32| *v as usize)
            .with_batch_info()
    );
    tx.unbounded_send(Ok(4)).unwrap();
    tx.unbounded_send(Ok(4)).unwrap();
    let (_, info) = s.next().await.unwrap().unwrap();
    assert_eq!(info.reason(), FlushReason::Weight);
    tokio::time::sleep(secs(5)).await;
    let (batch, info) = s.next().await.unwrap().unwrap();
    assert_eq!(batch, vec![4]);
    assert_eq!(info.reason(), FlushReason::Deadline);
    assert!(
        info.age() <= secs(5),
        "a Deadline batch polled as soon as the consumer was back is {:?} old (timeout 2 s)",
        info.age()
    );
}

// ---------------------------------------------------------------------------------------
// chunks_timeout_result: a second runtime while a batch's timer is armed
// ---------------------------------------------------------------------------------------

/// README: the timer "is created on the runtime that polls, so the adapter outlives a
/// runtime". The existing test (`chunks_edges.rs`) only moves the adapter between runtimes
/// when no batch is open. Here the timer is armed on runtime 1 (a value buffered, upstream
/// pending), runtime 1 is dropped, and the adapter is polled on runtime 2: it polls the old
/// `Sleep` and panics with "A Tokio 1.x context was found, but it is being shutdown". The
/// per-key adapter handles exactly this case (`timer_runtime`); this one does not.
#[test]
fn armed_deadline_survives_the_runtime_that_armed_it() {
    let (tx, rx) = mpsc::unbounded::<Result<u32, ()>>();
    let mut s = Box::pin(rx.chunks_timeout_result(10, secs(1)));
    {
        let runtime = paused_runtime();
        runtime.block_on(async {
            tx.unbounded_send(Ok(1)).unwrap();
            let mut cx = Context::from_waker(Waker::noop());
            assert!(s.as_mut().poll_next(&mut cx).is_pending());
            assert!(s.armed_deadline().is_some());
        });
    }
    let runtime = paused_runtime();
    let out = runtime.block_on(async {
        tokio::time::timeout(secs(3600), s.next())
            .await
            .expect("the buffered value is yielded on the second runtime")
    });
    assert_eq!(out, Some(Ok(vec![1])));
}

/// Same as above, but on runtime 2 a value fills the batch: the old timer is dropped in
/// `flush` without being polled, so this passes. Guard: dropping a `Sleep` of a dead
/// runtime must stay harmless (no existing test drops one with a batch open).
#[test]
fn batch_with_dead_runtimes_timer_filled_on_a_second_runtime() {
    let (tx, rx) = mpsc::unbounded::<Result<u32, ()>>();
    let mut s = Box::pin(rx.chunks_timeout_result(2, secs(1)));
    {
        let runtime = paused_runtime();
        runtime.block_on(async {
            tx.unbounded_send(Ok(1)).unwrap();
            let mut cx = Context::from_waker(Waker::noop());
            assert!(s.as_mut().poll_next(&mut cx).is_pending());
        });
    }
    let runtime = paused_runtime();
    runtime.block_on(async {
        tx.unbounded_send(Ok(2)).unwrap();
        assert_eq!(s.next().await, Some(Ok(vec![1, 2])));
    });
}

// ---------------------------------------------------------------------------------------
// size_hint with a weight cap (no existing test weighs in its size_hint checks)
// ---------------------------------------------------------------------------------------

type WItem = Result<(char, usize), &'static str>;

fn weighted_patterns() -> Vec<Vec<WItem>> {
    vec![
        vec![Ok(('a', 9)), Ok(('a', 9)), Ok(('a', 9))],
        vec![
            Ok(('a', 1)),
            Ok(('a', 9)),
            Err("e"),
            Ok(('b', 9)),
            Ok(('a', 3)),
        ],
        vec![
            Ok(('a', 3)),
            Ok(('b', 3)),
            Ok(('a', 3)),
            Ok(('b', 3)),
            Ok(('a', 10)),
        ],
        vec![
            Ok(('a', 0)),
            Ok(('a', 0)),
            Ok(('a', 5)),
            Ok(('a', 5)),
            Err("x"),
            Err("y"),
        ],
        vec![
            Ok(('a', 5)),
            Ok(('b', 5)),
            Ok(('c', 5)),
            Ok(('a', 5)),
            Ok(('b', 5)),
        ],
    ]
}

/// §0 "a correct `size_hint`", checked at every step with a weight cap on both adapters
/// (a weight split buffers a value across a yielded batch). Passes; guards size_hint under
/// `max_weight`, which no existing test covers.
#[tokio::test(start_paused = true)]
async fn size_hint_bounds_hold_at_every_step_with_a_weight_cap() {
    for pattern in weighted_patterns() {
        for max in 1..=3 {
            let total = stream::iter(pattern.clone())
                .chunks_timeout_result(max, secs(1))
                .max_weight(6, |v| v.1)
                .count()
                .await;
            let mut s = pin!(
                stream::iter(pattern.clone())
                    .chunks_timeout_result(max, secs(1))
                    .max_weight(6, |v| v.1)
            );
            let mut left = total;
            loop {
                let (lower, upper) = s.size_hint();
                assert!(lower <= left, "{pattern:?}/{max}: lower {lower} > {left}");
                assert!(
                    upper.is_none_or(|u| left <= u),
                    "{pattern:?}/{max}: {upper:?} < {left}"
                );
                if s.next().await.is_none() {
                    break;
                }
                left -= 1;
            }
            assert_eq!(left, 0);
            assert!(s.is_terminated());

            let total = stream::iter(pattern.clone())
                .chunks_timeout_by_key_result(|v| v.0, max, secs(1))
                .max_open_keys(2)
                .max_weight(6, |v| v.1)
                .count()
                .await;
            let mut s = pin!(
                stream::iter(pattern.clone())
                    .chunks_timeout_by_key_result(|v| v.0, max, secs(1))
                    .max_open_keys(2)
                    .max_weight(6, |v| v.1)
            );
            let mut left = total;
            loop {
                let (lower, upper) = s.size_hint();
                assert!(
                    lower <= left,
                    "keyed {pattern:?}/{max}: lower {lower} > {left}"
                );
                assert!(
                    upper.is_none_or(|u| left <= u),
                    "keyed {pattern:?}/{max}: {upper:?} < {left}"
                );
                if s.next().await.is_none() {
                    break;
                }
                left -= 1;
            }
            assert_eq!(left, 0);
            assert!(s.is_terminated());
        }
    }
}

// ---------------------------------------------------------------------------------------
// chunks_timeout_by_key_result
// ---------------------------------------------------------------------------------------

/// §6 + §5 per key: a value that splits its key's batch and is heavier than `max_weight`
/// is yielded alone at once; `take_remainder` between the two yields must return it.
/// Passes; guards the `due` state against `take_remainder` (not covered elsewhere).
#[tokio::test(start_paused = true)]
async fn keyed_take_remainder_returns_a_heavy_value_due_next() {
    let (tx, rx) = mpsc::unbounded::<WItem>();
    let mut s = pin!(
        rx.chunks_timeout_by_key_result(|v| v.0, 10, secs(2))
            .max_weight(8, |v| v.1)
    );
    tx.unbounded_send(Ok(('a', 3))).unwrap();
    tx.unbounded_send(Ok(('b', 1))).unwrap();
    tx.unbounded_send(Ok(('a', 20))).unwrap();
    tx.unbounded_send(Err("late")).unwrap();
    assert_eq!(s.next().await, Some(Ok(('a', vec![('a', 3)]))));
    let (rest, error) = s.as_mut().take_remainder();
    assert_eq!(rest, vec![('b', vec![('b', 1)]), ('a', vec![('a', 20)])]);
    assert_eq!(error, None);
    assert_eq!(s.open_keys(), 0);
    // The adapter goes on: the error is next, nothing is yielded twice.
    assert_eq!(s.next().await, Some(Err("late")));
    drop(tx);
    assert_eq!(s.next().await, None);
}

/// §6: a value that splits its key's batch starts a batch "with a deadline of its own" from
/// its own arrival, even when the consumer is slow (the per-key adapter stamps it at once,
/// unlike the single one above). Passes; the keyed counterpart of the first test.
#[tokio::test(start_paused = true)]
async fn keyed_weight_split_value_keeps_its_deadline_across_a_slow_consumer() {
    let (tx, rx) = mpsc::unbounded::<WItem>();
    let mut s = pin!(
        rx.chunks_timeout_by_key_result(|v| v.0, 10, secs(2))
            .max_weight(6, |v| v.1)
    );
    tx.unbounded_send(Ok(('a', 4))).unwrap();
    tx.unbounded_send(Ok(('a', 4))).unwrap();
    let start = Instant::now();
    assert_eq!(s.next().await, Some(Ok(('a', vec![('a', 4)]))));
    tokio::time::sleep(secs(5)).await;
    assert_eq!(s.next().await, Some(Ok(('a', vec![('a', 4)]))));
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Deadline));
    assert_eq!(start.elapsed(), secs(5));
}

/// Track-caller for the per-key `max_weight(0)`: the existing per-key panic-location test
/// covers `max_items` and `max_open_keys` only. Passes; guard.
#[test]
fn keyed_zero_max_weight_panics_at_the_caller_naming_the_parameter() {
    record_panics();
    let line = line!() + 3;
    let result = std::panic::catch_unwind(|| {
        let s = stream::empty::<WItem>().chunks_timeout_by_key_result(|v| v.0, 1, secs(1));
        s.max_weight(0, |v| v.1)
    });
    let payload = result.expect_err("max_weight(0) panics");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(message.contains("`max_weight`"), "message: {message}");
    let at = take_panic_location().expect("hook saw the panic");
    assert!(
        at.0.ends_with("attack_batching.rs"),
        "panic located at {at:?}"
    );
    assert_eq!(at.1, line, "panic line");
}
