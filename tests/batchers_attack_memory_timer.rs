//! Rules an independent attack on both batchers found broken (now kept): each test states
//! the rule it checks.
//!
//! A counting `#[global_allocator]` keeps, per thread and only while switched on, the bytes
//! live (allocated minus freed), for the memory rules.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use common::panics::panic_file;
use common::wakers::CountingWaker;
use common::{ms, paused_runtime};
use futures::channel::mpsc;
use futures::stream::{self, Stream, StreamExt};
use result_stream::{FlushReason, ResultStreamExt};
use tokio::time::{Instant, advance};

type E = &'static str;

struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn note(delta: i64) {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = LIVE.try_with(|live| live.set(live.get() + delta));
    }
}

// SAFETY: every method forwards to `System` unchanged; the counters are thread-locals with
// const initialisers and no destructors, so touching them never allocates or re-enters.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as i64);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as i64);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as i64 - layout.size() as i64);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as i64));
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn poll<S: Stream + ?Sized>(s: Pin<&mut S>, waker: &Waker) -> Poll<Option<S::Item>> {
    s.poll_next(&mut Context::from_waker(waker))
}

// ---------------------------------------------------------------------------------------
// The zero cap of `.max_weight_opt(Some(0), ..)` panics inside the crate
// ---------------------------------------------------------------------------------------

/// Rule: "`max_weight == 0` panics at the caller as `max_items == 0` does", and the rustdoc
/// of `max_weight_opt` promises "Panics, at the caller's location, if `max_weight` is
/// `Some(0)`". (A check inside an `Option::map` closure, which `#[track_caller]` does not
/// reach, would point the panic at the crate's own files.)
#[test]
fn max_weight_opt_some_zero_panics_at_the_caller() {
    let empty = stream::empty::<Result<usize, E>>;
    let single = panic_file(|| {
        drop(
            empty()
                .chunks_timeout_result(1, ms(1))
                .max_weight_opt(Some(0), |&w| w),
        )
    });
    let keyed = panic_file(|| {
        drop(
            empty()
                .chunks_timeout_by_key_result(|&v| v, 1, ms(1))
                .max_weight_opt(Some(0), |&w| w),
        )
    });
    assert_eq!((single.as_str(), keyed.as_str()), (file!(), file!()));
}

// ---------------------------------------------------------------------------------------
// A deadline on a second runtime, polled by the same waker
// ---------------------------------------------------------------------------------------

/// Rule: a batch closes by `Deadline` only when `timeout` has passed since its first value
/// (and the per-key rustdoc: "the adapter may be moved to another runtime between polls").
/// The timer's fast path trusts a `Sleep` of the first runtime whenever the waker is the
/// same (a waker kept across runtimes, as `futures::executor::block_on`'s per-thread waker
/// or any hand-made one is): dropping that runtime fires all its timers, so on the second
/// runtime the batch comes out at once, with reason `Deadline`, 100 ms early.
#[test]
fn single_deadline_on_a_new_runtime_with_the_same_waker_is_not_early() {
    let waker = Waker::from(Arc::new(CountingWaker::default()));
    let (tx, rx) = mpsc::unbounded::<Result<u32, E>>();
    let mut s = Box::pin(rx.chunks_timeout_result(10, ms(100)));
    let first = paused_runtime();
    first.block_on(async {
        tx.unbounded_send(Ok(1)).unwrap();
        assert!(
            poll(s.as_mut(), &waker).is_pending(),
            "the deadline is armed"
        );
    });
    drop(first);
    paused_runtime().block_on(async {
        let started = Instant::now();
        assert!(
            poll(s.as_mut(), &waker).is_pending(),
            "flushed {:?} after {:?}",
            s.last_flush_reason(),
            started.elapsed()
        );
    });
}

/// The same rule for the per-key batcher.
#[test]
fn keyed_deadline_on_a_new_runtime_with_the_same_waker_is_not_early() {
    let waker = Waker::from(Arc::new(CountingWaker::default()));
    let (tx, rx) = mpsc::unbounded::<Result<u32, E>>();
    let mut s = Box::pin(rx.chunks_timeout_by_key_result(|&v| v, 10, ms(100)));
    let first = paused_runtime();
    first.block_on(async {
        tx.unbounded_send(Ok(1)).unwrap();
        assert!(
            poll(s.as_mut(), &waker).is_pending(),
            "the deadline is armed"
        );
    });
    drop(first);
    paused_runtime().block_on(async {
        assert!(
            poll(s.as_mut(), &waker).is_pending(),
            "flushed early: {:?}",
            s.last_flush_reason()
        );
    });
}

/// Rule: a deadline is honoured on the runtime that polls. With the first runtime alive
/// but no longer driven (its clock never moves), the second runtime's clock passes the
/// deadline, yet the batch never comes out: the fast path asks the first runtime's `Sleep`.
#[test]
fn single_deadline_is_honoured_on_a_second_live_runtime_with_the_same_waker() {
    let waker = Waker::from(Arc::new(CountingWaker::default()));
    let (tx, rx) = mpsc::unbounded::<Result<u32, E>>();
    let mut s = Box::pin(rx.chunks_timeout_result(10, ms(100)));
    let first = paused_runtime();
    first.block_on(async {
        tx.unbounded_send(Ok(1)).unwrap();
        assert!(poll(s.as_mut(), &waker).is_pending());
    });
    paused_runtime().block_on(async {
        assert!(poll(s.as_mut(), &waker).is_pending());
        advance(ms(150)).await;
        assert_eq!(poll(s.as_mut(), &waker), Poll::Ready(Some(Ok(vec![1]))));
    });
    drop(first);
}

// ---------------------------------------------------------------------------------------
// Memory in proportion to content
// ---------------------------------------------------------------------------------------

/// Rule: an open batch holds memory in proportion to what it holds; it "may reserve its full
/// size once it has shown it will fill". A batch closed by weight showed that batches fill
/// at about its own length, not at `max_items`; yet the next batch reserves
/// `min(max_items, 65_536)` slots: here 10,000 slots for 10 values, in every batch (and the
/// consumer receives that capacity). Suggested: after a `Weight` close, reserve the closed
/// batch's length (or grow) instead of `max_items`.
#[test]
fn batches_closed_by_weight_do_not_reserve_max_items() {
    let input = || stream::iter((0..100u64).map(Ok::<_, E>));
    let single: Vec<Vec<u64>> = paused_runtime().block_on(
        input()
            .chunks_timeout_result(10_000, ms(10))
            .max_weight(10, |_| 1)
            .map(Result::unwrap)
            .collect(),
    );
    let keyed: Vec<Vec<u64>> = paused_runtime().block_on(
        input()
            .chunks_timeout_by_key_result(|_| 0u8, 10_000, ms(10))
            .max_weight(10, |_| 1)
            .map(|b| b.unwrap().1)
            .collect(),
    );
    for batches in [single, keyed] {
        assert_eq!(batches.len(), 10);
        let capacities: Vec<_> = batches[1..].iter().map(Vec::capacity).collect();
        assert!(
            capacities.iter().all(|&c| c <= 64),
            "10-value batches with capacities {capacities:?}"
        );
    }
}

/// Rule (same): the single batcher's first batch has shown nothing, yet reserves
/// `min(max_items, 65_536)` slots: one value waiting for its deadline holds 65,536 slots
/// (here 64 KB of `u8` pairs; with 1 KB rows, 64 MB). Suggested: start `filled` false in
/// `BatchState::new` (src/adapters/batch/state.rs), as the per-key batcher does.
#[test]
fn the_first_batch_holds_memory_in_proportion_to_its_values() {
    let batch = paused_runtime().block_on(async {
        let (tx, rx) = mpsc::unbounded::<Result<[u8; 16], E>>();
        let mut s = pin!(rx.chunks_timeout_result(1_000_000, ms(10)));
        tx.unbounded_send(Ok([0; 16])).unwrap();
        s.next().await.unwrap().unwrap()
    });
    assert_eq!(batch.len(), 1);
    assert!(
        batch.capacity() <= 64,
        "one value, capacity {}",
        batch.capacity()
    );
}

/// Rule: memory in proportion to content ("each open batch costs an index entry and a list
/// node"). After a burst of 100,000 keys has been flushed by its deadlines, no batch is
/// open, yet the adapter still holds the index's and the slab's capacity for 100,000: about
/// 10 MB, until it is dropped. Suggested: in `OpenBatches::close` (src/adapters/by_key/open.rs),
/// when the last batch closes (`open == 0`), clear `nodes` and `free` and shrink them and the
/// index (or shrink whenever `open` falls below a quarter of their capacity).
#[test]
fn a_flushed_burst_of_keys_leaves_no_table_behind() {
    let runtime = paused_runtime();
    let (tx, rx) = mpsc::unbounded::<Result<u64, E>>();
    let waker = Waker::from(Arc::new(CountingWaker::default()));
    let mut s = Box::pin(rx.chunks_timeout_by_key_result(|&v| v, 10, ms(100)));
    let held = runtime.block_on(async {
        LIVE.with(|l| l.set(0));
        COUNTING.with(|c| c.set(true));
        for v in 0..100_000 {
            tx.unbounded_send(Ok(v)).unwrap();
        }
        while poll(s.as_mut(), &waker).is_pending() && s.open_keys() < 100_000 {}
        assert_eq!(s.open_keys(), 100_000);
        advance(ms(100)).await;
        let mut flushed = 0;
        while let Poll::Ready(Some(batch)) = poll(s.as_mut(), &waker) {
            assert_eq!(s.last_flush_reason(), Some(FlushReason::Deadline));
            drop(batch);
            flushed += 1;
            if flushed == 100_000 {
                break;
            }
        }
        assert_eq!((flushed, s.open_keys()), (100_000, 0));
        COUNTING.with(|c| c.set(false));
        LIVE.with(Cell::get)
    });
    assert!(held < 256 * 1024, "no batch open, {held} bytes held");
}

/// The same rule for the per-key batcher, whose one timer is shared by every key.
#[test]
fn keyed_deadline_is_honoured_on_a_second_live_runtime_with_the_same_waker() {
    let waker = Waker::from(Arc::new(CountingWaker::default()));
    let (tx, rx) = mpsc::unbounded::<Result<u32, E>>();
    let mut s = Box::pin(rx.chunks_timeout_by_key_result(|&v| v, 10, ms(100)));
    let first = paused_runtime();
    first.block_on(async {
        tx.unbounded_send(Ok(1)).unwrap();
        assert!(poll(s.as_mut(), &waker).is_pending());
    });
    paused_runtime().block_on(async {
        assert!(poll(s.as_mut(), &waker).is_pending());
        advance(ms(150)).await;
        assert_eq!(
            poll(s.as_mut(), &waker),
            Poll::Ready(Some(Ok((1, vec![1]))))
        );
    });
    drop(first);
}

// ---------------------------------------------------------------------------------------
// Data wins ties, per key
// ---------------------------------------------------------------------------------------

/// Rule: each key's batch follows the single batcher's rules, among them "when a full batch
/// and an expired deadline are both ready, the values already available are taken first
/// (data wins)". After a batch that a value closed (here b, full), a's expired batch must
/// not come out by `Deadline` with one value while a's second value, ready in the upstream,
/// fills it.
#[test]
fn keyed_data_wins_over_an_expired_deadline_after_another_key_fills() {
    let waker = Waker::from(Arc::new(CountingWaker::default()));
    paused_runtime().block_on(async {
        let (tx, rx) = mpsc::unbounded::<Result<(char, u32), E>>();
        let mut s = pin!(rx.chunks_timeout_by_key_result(|v| v.0, 2, ms(100)));
        tx.unbounded_send(Ok(('a', 1))).unwrap();
        assert!(poll(s.as_mut(), &waker).is_pending());
        advance(ms(150)).await; // a busy consumer: a's deadline passes unpolled
        for v in [('b', 1), ('b', 2), ('a', 2)] {
            tx.unbounded_send(Ok(v)).unwrap();
        }
        let b = poll(s.as_mut(), &waker);
        assert_eq!(b, Poll::Ready(Some(Ok(('b', vec![('b', 1), ('b', 2)])))));
        let a = poll(s.as_mut(), &waker);
        assert_eq!(a, Poll::Ready(Some(Ok(('a', vec![('a', 1), ('a', 2)])))));
        assert_eq!(s.last_flush_reason(), Some(FlushReason::Full));
    });
}

/// Rule: data wins only for a bounded amount of work: an expired deadline is honoured
/// within 4,096 values even while every poll closes another key's batch by count (so that
/// no poll spends its budget).
#[test]
fn keyed_expired_deadline_is_honoured_while_another_key_fills_every_poll() {
    let waker = Waker::from(Arc::new(CountingWaker::default()));
    paused_runtime().block_on(async {
        let b_values = stream::iter((0..).map(|v| Ok::<_, E>(('b', v))));
        let input = stream::iter([Ok(('a', 0))]).chain(b_values);
        let mut s = pin!(input.chunks_timeout_by_key_result(|v| v.0, 2, ms(100)));
        assert!(matches!(
            poll(s.as_mut(), &waker),
            Poll::Ready(Some(Ok(('b', _))))
        ));
        advance(ms(150)).await;
        let polls = (0..10_000)
            .position(|_| matches!(poll(s.as_mut(), &waker), Poll::Ready(Some(Ok(('a', _))))));
        assert!(polls.is_some(), "a's expired batch never came out");
        assert_eq!(s.last_flush_reason(), Some(FlushReason::Deadline));
    });
}
