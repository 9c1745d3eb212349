//! `chunks_timeout_result` at its edges: runtimes, timers of batches that are gone,
//! the exact waiting bound, and the ready path's independence from the timer.
//!
//! # Mutation testing of the batching adapter
//!
//! `cargo mutants --test-tool cargo --file src/adapters/chunks_timeout_result.rs --file
//! 'src/adapters/batch/*.rs' -- -p result-stream --test chunks_timing --test chunks_edges
//! --test chunks_weight --test chunks_info --test chunks_properties --test alloc_counts
//! --test send_sync` (cargo-mutants 27.1, 2026-12-01, before `chunks_api.rs` was split out of
//! `chunks_timing.rs`; add `--test chunks_api` now): 149 mutants, 86 caught, 49 unviable,
//! 1 timeout (deleting the `!` of `if !upstream_done` stops polling the upstream, so the
//! tests hang), 13 missed. Seven of those are now caught (a rerun of them: 15 of 15 caught):
//! the stand-in for "never" (`30 years` mutated to `1 year + 30 s`; the huge-timeout test now
//! advances twenty years), the three mutants of `size_hint`'s `buffered > 0`
//! (`chunks_weight.rs`, a value carried by the weight cap), and `MaxWeight::max_weight` and
//! its `Debug` (`chunks_weight.rs`). The six that survived changed nothing a test can
//! observe; those whose code still exists:
//! - `W::SPLITS && !items.is_empty()` to `||` at the top of `poll_next`: without a weight cap
//!   `closes` finds nothing to close there (a full batch is never left open), so it only adds
//!   a check per poll;
//! - `WithInfo::clear` replaced by `()`: the next batch's first value sets the start again;
//! - `NoWeight::overflows` and `NoWeight::is_full` returning `true`: unreachable, because
//!   without a weight cap every value takes the fast path (`take_room` is always `Some`) and
//!   the check at the top of `poll_next` is compiled out (`SPLITS` is `false`);
//!
//! (Run before this round's rewrite of the adapter; `grow` and `Limiter::closes_by_weight`,
//! two of the survivors then, no longer exist.)

mod common;

use std::pin::{Pin, pin};
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::wakers::counting_waker;
use common::{ms, paused_runtime};
use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::{self, Stream};
use result_stream::{FlushReason, ResultStreamExt};
use tokio::time::{Instant, advance};

type Item = Result<u32, &'static str>;

// ---------------------------------------------------------------------------------------
// Bug 5: the adapter outlives the runtime that armed its timer
// ---------------------------------------------------------------------------------------

/// tokio-stream's `chunks_timeout` passes this; an adapter that keeps one `Sleep` and resets
/// it panicked on the second runtime ("A Tokio 1.x context was found, but it is being
/// shutdown").
#[test]
fn deadlines_work_on_a_second_runtime_after_the_first_is_dropped() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut batches = Box::pin(rx.chunks_timeout_result(10, ms(100)));
    for round in 0..3 {
        let runtime = paused_runtime();
        runtime.block_on(async {
            tx.unbounded_send(Ok(round)).unwrap();
            let started = Instant::now();
            assert_eq!(batches.next().await, Some(Ok(vec![round])));
            assert_eq!(started.elapsed(), ms(100), "round {round}");
            assert_eq!(batches.last_flush_reason(), Some(FlushReason::Deadline));
        });
        drop(runtime);
    }
}

/// The timer keeps a `Sleep` that fired, to reset it for the next batch: never one of
/// another runtime. The same hand-made waker polls a batch to its deadline on a first runtime
/// (left alive, never driven again), then a new batch on a second runtime: the second
/// runtime's timer wakes the task `timeout` after the new batch's first value, not earlier.
#[test]
fn a_timer_kept_after_a_deadline_is_not_reused_on_another_live_runtime() {
    let (waker, count) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = Box::pin(rx.chunks_timeout_result(10, ms(100)));
    let first = paused_runtime();
    first.block_on(async {
        tx.unbounded_send(Ok(1)).unwrap();
        assert!(s.as_mut().poll_next(&mut cx).is_pending());
        advance(ms(100)).await;
        assert_eq!(
            s.as_mut().poll_next(&mut cx),
            Poll::Ready(Some(Ok(vec![1])))
        );
    });
    paused_runtime().block_on(async {
        tx.unbounded_send(Ok(2)).unwrap();
        assert!(s.as_mut().poll_next(&mut cx).is_pending());
        let before = count.0.load(Ordering::SeqCst);
        advance(ms(99)).await;
        assert_eq!(count.0.load(Ordering::SeqCst), before, "woken early");
        advance(ms(1)).await;
        assert!(
            count.0.load(Ordering::SeqCst) > before,
            "not woken at the deadline"
        );
        assert_eq!(
            s.as_mut().poll_next(&mut cx),
            Poll::Ready(Some(Ok(vec![2])))
        );
    });
    drop(first);
}

// ---------------------------------------------------------------------------------------
// Bug 6: no wake-up at the deadline of a batch that is gone
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn no_wake_up_at_the_old_deadline_after_a_full_flush() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_result(2, ms(1_000)));
    let (waker, count) = counting_waker();
    let mut cx = Context::from_waker(&waker);

    tx.unbounded_send(Ok(1)).unwrap();
    assert!(s.as_mut().poll_next(&mut cx).is_pending(), "deadline armed");
    assert!(s.armed_deadline().is_some());
    tx.unbounded_send(Ok(2)).unwrap();
    assert_eq!(
        s.as_mut().poll_next(&mut cx),
        Poll::Ready(Some(Ok(vec![1, 2])))
    );
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Full));
    assert!(
        s.as_mut().poll_next(&mut cx).is_pending(),
        "nothing buffered"
    );

    let before = count.0.load(Ordering::SeqCst);
    advance(ms(5_000)).await;
    assert_eq!(
        count.0.load(Ordering::SeqCst),
        before,
        "woken at the deadline of a batch already yielded"
    );
    drop(tx);
    assert_eq!(s.as_mut().poll_next(&mut cx), Poll::Ready(None));
}

#[tokio::test(start_paused = true)]
async fn no_wake_up_at_the_old_deadline_after_take_remainder() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_result(10, ms(1_000)));
    let (waker, count) = counting_waker();
    let mut cx = Context::from_waker(&waker);

    tx.unbounded_send(Ok(1)).unwrap();
    assert!(s.as_mut().poll_next(&mut cx).is_pending(), "deadline armed");
    assert_eq!(s.as_mut().take_remainder(), (vec![1], None));
    assert_eq!(s.armed_deadline(), None);

    let before = count.0.load(Ordering::SeqCst);
    advance(ms(5_000)).await;
    assert_eq!(
        count.0.load(Ordering::SeqCst),
        before,
        "woken at the deadline of values taken out"
    );
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    drop(tx);
}

// ---------------------------------------------------------------------------------------
// The exact waiting bound
// ---------------------------------------------------------------------------------------

/// Yields `first`, then spends `busy` (on the paused clock) before yielding `second` in the
/// same poll of the adapter, then stays pending: a synchronous upstream that takes time.
struct BusyUpstream {
    step: u8,
    busy: Duration,
}

impl Stream for BusyUpstream {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Item>> {
        self.step += 1;
        match self.step {
            1 => Poll::Ready(Some(Ok(1))),
            2 => {
                // Time passes inside this poll, as it does for a CPU-bound upstream.
                let busy = self.busy;
                tokio::runtime::Handle::current().block_on(advance(busy));
                Poll::Ready(Some(Ok(2)))
            }
            _ => Poll::Pending,
        }
    }
}

/// The documented bound: the deadline is `timeout` after the end of the poll in which the
/// batch's first value arrived (the first `Pending` with it buffered), not after the value
/// itself; the difference is the time the upstream spent producing that poll's values. A
/// value that arrives in an idle upstream's poll waits exactly `timeout`.
#[test]
fn deadline_is_timeout_after_the_poll_in_which_the_first_value_arrived() {
    let runtime = paused_runtime();
    let _entered = runtime.enter();
    let start = Instant::now();
    let upstream = BusyUpstream {
        step: 0,
        busy: ms(270),
    };
    let mut s = Box::pin(upstream.chunks_timeout_result(10, ms(100)));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    assert_eq!(
        start.elapsed(),
        ms(270),
        "value 1 arrived at 0, value 2 at 270 ms"
    );
    assert_eq!(s.buffered_values(), &[1, 2]);
    assert_eq!(s.armed_deadline(), Some(start + ms(270) + ms(100)));
}

// ---------------------------------------------------------------------------------------
// The ready path never touches the timer
// ---------------------------------------------------------------------------------------

/// With no Tokio runtime at all, creating a timer panics; a batch that fills from a ready
/// upstream must not need one. Arming a timer for each batch on the ready
/// path fails here.
#[test]
fn batches_that_fill_from_a_ready_upstream_need_no_runtime() {
    assert!(tokio::runtime::Handle::try_current().is_err());
    let upstream = stream::iter((0..1_000u32).map(Ok::<u32, ()>));
    let batches: Vec<_> = futures::executor::block_on(
        upstream
            .chunks_timeout_result(8, ms(100))
            .collect::<Vec<_>>(),
    );
    assert_eq!(batches.len(), 125);
    let values: Vec<u32> = batches.into_iter().flat_map(Result::unwrap).collect();
    assert_eq!(values, (0..1_000).collect::<Vec<_>>());

    // The same with a weight cap and batch info: neither needs the timer either.
    let upstream = stream::iter((0..1_000u32).map(Ok::<u32, ()>));
    let batches: Vec<_> = futures::executor::block_on(
        upstream
            .chunks_timeout_result(8, ms(100))
            .max_weight(20, |v: &u32| (*v % 7) as usize)
            .with_batch_info()
            .collect::<Vec<_>>(),
    );
    let mut values = Vec::new();
    for (batch, info) in batches.into_iter().map(Result::unwrap) {
        assert!(matches!(
            info.reason(),
            FlushReason::Full | FlushReason::Weight | FlushReason::End
        ));
        values.extend(batch);
    }
    assert_eq!(values, (0..1_000).collect::<Vec<_>>());
}
