//! Round 3 of the attack on `chunks_timeout_result`, after its rewrite: a `Sleep` that fired
//! is kept and reset for the next batch, the timer's fast path trusts a `Sleep` that holds
//! "the same task's" waker on the same runtime, and the builders share one `rebuild()`.
//!
//! Each test names the rule of the `chunks_timeout_result` rustdoc (src/ext.rs) it checks.

mod common;

use std::cell::RefCell;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::panics::panic_at;
use common::wakers::counting_waker;
use common::{ms, paused_runtime};
use futures::channel::mpsc;
use futures::stream::{self, Stream};
use futures::task::ArcWake;
use futures::{FutureExt, StreamExt};
use result_stream::{FlushReason, ResultStreamExt};
use tokio::time::{Instant, advance};

type Item = Result<u32, &'static str>;
type Chunks = result_stream::ChunksTimeoutResult<mpsc::UnboundedReceiver<Item>>;

// ---------------------------------------------------------------------------------------
// The fast path's notion of "the same task"
// ---------------------------------------------------------------------------------------

/// One object behind two wakers whose vtables do different things: `std::task::Wake`
/// wakes one task, `futures::task::ArcWake` another (two executors sharing a per-task
/// object). Both wakers carry the same data pointer, and std's `will_wake` says they are not
/// known to wake the same task.
#[derive(Default)]
struct TwoFaced {
    std_wakes: AtomicUsize,
    futures_wakes: AtomicUsize,
}

impl Wake for TwoFaced {
    fn wake(self: Arc<Self>) {
        self.std_wakes.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.std_wakes.fetch_add(1, Ordering::SeqCst);
    }
}

impl ArcWake for TwoFaced {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.futures_wakes.fetch_add(1, Ordering::SeqCst);
    }
}

/// Rule (Stream contract, and the timer's "the deadline wakes the task that polled last"):
/// a `Pending` must leave the waker of *that* poll registered. The timer treats a waker with
/// the same data pointer as the stored one as "the same task" even when `will_wake` says
/// otherwise (different vtable), skips re-registering, and the second waker is never woken:
/// the task that polled last hangs. (Contrived: it needs two wakers over one pointer with
/// different behaviour, which std's `Waker` contract allows.)
#[tokio::test(start_paused = true)]
async fn a_waker_with_the_same_data_pointer_but_another_vtable_is_woken() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_result(10, ms(100)));
    let two = Arc::new(TwoFaced::default());
    let first = Waker::from(Arc::clone(&two));
    let second = futures::task::waker(Arc::clone(&two));
    assert_eq!(first.data(), second.data(), "one object behind both");
    assert!(
        !first.will_wake(&second),
        "std: not known to wake the same task"
    );

    tx.unbounded_send(Ok(1)).unwrap();
    assert!(
        s.as_mut()
            .poll_next(&mut Context::from_waker(&first))
            .is_pending()
    );
    assert!(
        s.as_mut()
            .poll_next(&mut Context::from_waker(&second))
            .is_pending()
    );
    let before = two.futures_wakes.load(Ordering::SeqCst);
    advance(ms(100)).await;
    assert!(
        two.futures_wakes.load(Ordering::SeqCst) > before,
        "the deadline woke only the first waker ({} wakes), not the one that polled last",
        two.std_wakes.load(Ordering::SeqCst)
    );
}

// ---------------------------------------------------------------------------------------
// The kept `Sleep`: deadlines after its reuse
// ---------------------------------------------------------------------------------------

/// Rule 2 (a deadline per batch, `timeout` after its first value's poll) across the kept
/// `Sleep`'s reuse, with `with_batch_info`'s reason, length, weight and age for each batch,
/// and no wake before a deadline: a deadline batch, a 10 s idle gap, one value; a batch
/// closed by size right after a deadline batch; then a deadline batch again. Passes; pins
/// exact wake times after the reuse (earlier tests check the flush, not the wake).
#[tokio::test(start_paused = true)]
async fn every_deadline_after_the_kept_sleep_is_reused_wakes_exactly_once_on_time() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_result(3, ms(100)).with_batch_info());
    let (waker, count) = counting_waker();
    let mut cx = Context::from_waker(&waker);

    for gap in [0, 10_000, 1] {
        advance(ms(gap)).await;
        tx.unbounded_send(Ok(gap as u32)).unwrap();
        assert!(s.as_mut().poll_next(&mut cx).is_pending());
        let now = Instant::now();
        assert_eq!(s.armed_deadline(), Some(now + ms(100)), "gap {gap}");
        let before = count.get();
        advance(ms(99)).await;
        assert_eq!(count.get(), before, "woken early after a {gap} ms gap");
        assert!(
            s.as_mut().poll_next(&mut cx).is_pending(),
            "flushed early after {gap} ms"
        );
        advance(ms(1)).await;
        assert_eq!(count.get(), before + 1, "one wake at the deadline");
        let Poll::Ready(Some(Ok((batch, info)))) = s.as_mut().poll_next(&mut cx) else {
            panic!("no batch at the deadline after a {gap} ms gap");
        };
        assert_eq!(
            (batch, info.reason(), info.weight(), info.age()),
            (vec![gap as u32], FlushReason::Deadline, None, ms(100))
        );
        assert_eq!(s.armed_deadline(), None);

        // A batch closed by size right after: no timer, age zero.
        for v in 0..3 {
            tx.unbounded_send(Ok(v)).unwrap();
        }
        let Poll::Ready(Some(Ok((batch, info)))) = s.as_mut().poll_next(&mut cx) else {
            panic!("no full batch");
        };
        assert_eq!(
            (batch, info.reason(), info.age()),
            (vec![0, 1, 2], FlushReason::Full, Duration::ZERO)
        );
        assert!(s.as_mut().poll_next(&mut cx).is_pending());
        let before = count.get();
        advance(ms(500)).await;
        assert_eq!(count.get(), before, "a wake with nothing buffered");
    }
}

/// Rule: "never an empty batch" and the timer is disarmed when its batch is gone. The kept
/// `Sleep` is reset for a batch that then closes by size before its deadline, and for one
/// taken out by `take_remainder`: neither may wake the task at its old deadline. Passes.
#[tokio::test(start_paused = true)]
async fn a_reused_sleep_never_wakes_for_a_batch_that_is_gone() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_result(2, ms(100)));
    let (waker, count) = counting_waker();
    let mut cx = Context::from_waker(&waker);

    tx.unbounded_send(Ok(1)).unwrap();
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    advance(ms(100)).await;
    assert_eq!(
        s.as_mut().poll_next(&mut cx),
        Poll::Ready(Some(Ok(vec![1])))
    );

    // The fired Sleep is reset for value 2's batch, which then fills at 50 ms.
    tx.unbounded_send(Ok(2)).unwrap();
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    advance(ms(50)).await;
    tx.unbounded_send(Ok(3)).unwrap();
    assert_eq!(
        s.as_mut().poll_next(&mut cx),
        Poll::Ready(Some(Ok(vec![2, 3])))
    );
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    let before = count.get();
    advance(ms(1_000)).await;
    assert_eq!(count.get(), before, "woken at a full batch's old deadline");

    // Fire once more, then reset for value 4, then take it out.
    tx.unbounded_send(Ok(4)).unwrap();
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    advance(ms(100)).await;
    assert_eq!(
        s.as_mut().poll_next(&mut cx),
        Poll::Ready(Some(Ok(vec![4])))
    );
    tx.unbounded_send(Ok(5)).unwrap();
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
    assert_eq!(s.as_mut().take_remainder(), (vec![5], None));
    let before = count.get();
    advance(ms(1_000)).await;
    assert_eq!(count.get(), before, "woken for values taken out");
    assert!(s.as_mut().poll_next(&mut cx).is_pending());
}

/// Rule: a deadline wakes the task that polled last, also after the kept `Sleep` was reset
/// for the batch by another task. Passes.
#[tokio::test(start_paused = true)]
async fn a_reused_sleep_wakes_the_task_that_polled_last() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_result(10, ms(100)));
    let (first, first_count) = counting_waker();
    let (second, second_count) = counting_waker();
    tx.unbounded_send(Ok(1)).unwrap();
    assert!(
        s.as_mut()
            .poll_next(&mut Context::from_waker(&first))
            .is_pending()
    );
    advance(ms(100)).await;
    let mut cx = Context::from_waker(&first);
    assert_eq!(
        s.as_mut().poll_next(&mut cx),
        Poll::Ready(Some(Ok(vec![1])))
    );

    tx.unbounded_send(Ok(2)).unwrap();
    assert!(
        s.as_mut().poll_next(&mut cx).is_pending(),
        "reset, first's waker"
    );
    advance(ms(40)).await;
    let mut cx = Context::from_waker(&second);
    assert!(
        s.as_mut().poll_next(&mut cx).is_pending(),
        "second task polls"
    );
    let before = (first_count.get(), second_count.get());
    advance(ms(60)).await;
    assert_eq!(second_count.get(), before.1 + 1, "second not woken");
    assert_eq!(first_count.get(), before.0, "the stale waker woken");
    assert_eq!(
        s.as_mut().poll_next(&mut cx),
        Poll::Ready(Some(Ok(vec![2])))
    );
}

/// Rule: the timer needs "a Tokio runtime with the time driver when polled", and the adapter
/// may be polled on another runtime between polls. One waker drives the adapter through
/// three runtimes: a deadline flush on A (kept alive, never driven again), a deadline batch
/// on B, then B dropped, a batch on C, then back on A. Every deadline is exact and woken by
/// the runtime polling now. Passes.
#[test]
fn a_kept_sleep_is_never_reused_across_three_runtimes() {
    let (waker, count) = counting_waker();
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = Box::pin(rx.chunks_timeout_result(10, ms(100)));
    let round = |runtime: &tokio::runtime::Runtime, s: &mut Pin<Box<Chunks>>, v: u32| {
        runtime.block_on(async {
            let mut cx = Context::from_waker(&waker);
            tx.unbounded_send(Ok(v)).unwrap();
            assert!(s.as_mut().poll_next(&mut cx).is_pending());
            assert_eq!(s.armed_deadline(), Some(Instant::now() + ms(100)));
            let before = count.get();
            advance(ms(99)).await;
            assert_eq!(count.get(), before, "woken early in round {v}");
            assert!(s.as_mut().poll_next(&mut cx).is_pending(), "early in {v}");
            advance(ms(1)).await;
            assert!(count.get() > before, "not woken in round {v}");
            assert_eq!(
                s.as_mut().poll_next(&mut cx),
                Poll::Ready(Some(Ok(vec![v])))
            );
        });
    };
    let a = paused_runtime();
    round(&a, &mut s, 1);
    let b = paused_runtime();
    round(&b, &mut s, 2);
    drop(b);
    let c = paused_runtime();
    round(&c, &mut s, 3);
    round(&a, &mut s, 4);
    round(&c, &mut s, 5);
    drop((a, c));
    drop(s); // the kept Sleep of a dropped runtime is dropped outside any runtime
}

/// Rule (Weight cap): "a value that starts the next batch this way ... its batch's deadline
/// is `timeout` after the poll in which it arrived", also when the timer is the kept `Sleep`
/// of an earlier deadline batch. Passes.
#[tokio::test(start_paused = true)]
async fn a_weight_split_after_a_deadline_batch_gets_its_own_deadline() {
    let (tx, rx) = mpsc::unbounded::<Result<usize, &'static str>>();
    let mut s = pin!(
        rx.chunks_timeout_result(10, ms(100))
            .max_weight(5, |&w| w)
            .with_batch_info()
    );
    tx.unbounded_send(Ok(1)).unwrap();
    let (batch, info) = s.next().await.unwrap().unwrap();
    assert_eq!((batch, info.reason()), (vec![1], FlushReason::Deadline));
    advance(ms(1_000)).await;
    tx.unbounded_send(Ok(3)).unwrap();
    assert!(s.next().now_or_never().is_none());
    advance(ms(30)).await;
    let split_at = Instant::now();
    tx.unbounded_send(Ok(4)).unwrap();
    let (batch, info) = s.next().await.unwrap().unwrap();
    assert_eq!(
        (batch, info.reason(), info.weight(), info.age()),
        (vec![3], FlushReason::Weight, Some(3), ms(30))
    );
    let (batch, info) = s.next().await.unwrap().unwrap();
    assert_eq!(
        (batch, info.reason(), info.weight(), info.age()),
        (vec![4], FlushReason::Deadline, Some(4), ms(100))
    );
    assert_eq!(split_at.elapsed(), ms(100));
}

/// The coop-budget path after the reuse: the kept `Sleep` is reset while the task is out of
/// tokio's cooperative budget (so it is not registered): the deadline must still come.
/// Passes.
#[tokio::test(start_paused = true)]
async fn a_kept_sleep_reset_out_of_coop_budget_still_fires() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_result(10, ms(100)));
    tx.unbounded_send(Ok(1)).unwrap();
    assert_eq!(s.next().await, Some(Ok(vec![1])));
    let (budget_tx, mut budget_rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    for v in 0..1_000 {
        budget_tx.send(v).unwrap();
    }
    tx.unbounded_send(Ok(2)).unwrap();
    let start = Instant::now();
    futures::future::poll_fn(|cx| {
        while let Poll::Ready(Some(_)) = budget_rx.poll_recv(cx) {}
        assert!(s.as_mut().poll_next(cx).is_pending());
        Poll::Ready(())
    })
    .await;
    let out = tokio::time::timeout(ms(5_000), s.next()).await;
    assert_eq!(out, Ok(Some(Ok(vec![2]))));
    assert_eq!(start.elapsed(), ms(100));
}

// ---------------------------------------------------------------------------------------
// The budget of 4,096 values per poll
// ---------------------------------------------------------------------------------------

/// An endless ready upstream of weight-3 values that counts what it hands out.
struct Endless(Rc<RefCell<usize>>);

impl Stream for Endless {
    type Item = Result<usize, &'static str>;
    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        *self.0.borrow_mut() += 1;
        Poll::Ready(Some(Ok(3)))
    }
}

/// Rule (liveness): "one `poll_next` takes at most 4,096 values from the upstream; past that
/// it wakes its task and returns `Pending`", also with a weight cap whose splits leave a
/// carried value at the start of a poll; every `Pending` comes with a wake (the upstream
/// never returns `Pending`, so no other wake exists); nothing is lost. Passes.
#[test]
fn every_poll_takes_at_most_the_budget_and_every_pending_wakes() {
    let runtime = paused_runtime();
    let _entered = runtime.enter();
    let taken = Rc::new(RefCell::new(0));
    let mut s = Box::pin(
        Endless(Rc::clone(&taken))
            .chunks_timeout_result(1_000_000, ms(100))
            .max_weight(10_000, |&w| w),
    );
    let (waker, count) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let (mut out, mut last_taken) = (0, 0);
    for _ in 0..40 {
        let before = count.get();
        let polled = s.as_mut().poll_next(&mut cx);
        let now_taken = *taken.borrow();
        assert!(
            now_taken - last_taken <= 4_096,
            "{} in one poll",
            now_taken - last_taken
        );
        last_taken = now_taken;
        match polled {
            Poll::Pending => assert_eq!(count.get(), before + 1, "Pending without a wake"),
            Poll::Ready(Some(Ok(batch))) => {
                assert_eq!(batch.len(), 3_333, "greedy packing by weight");
                assert_eq!(s.last_flush_reason(), Some(FlushReason::Weight));
                out += batch.len();
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(out + s.buffered_values().len(), last_taken, "a value lost");
}

/// Rule (liveness): on an endless ready upstream the batch's deadline is honoured
/// after a bounded amount of work, with reason `Deadline` (real clock: a paused one does not
/// move while the task is busy). Passes.
#[test]
fn an_endless_ready_upstream_gets_its_deadline_batch_on_a_real_clock() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let upstream = stream::repeat_with(|| Ok::<u8, ()>(7));
        let mut s = pin!(
            upstream
                .chunks_timeout_result(usize::MAX, ms(20))
                .with_batch_info()
        );
        let start = std::time::Instant::now();
        let (batch, info) = s.next().await.unwrap().unwrap();
        assert_eq!(info.reason(), FlushReason::Deadline);
        assert!(!batch.is_empty() && batch.iter().all(|&v| v == 7));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    });
}

/// Rule: `timeout == Duration::ZERO` yields the batch as soon as the upstream has nothing
/// ready or the poll's budget of 4,096 values is spent, and data wins ties only within that
/// budget. A ready burst of 5,000 values with room for 10,000 comes out as [4,096] and [904],
/// both `Deadline`, in order. (With a 1 s timeout the same burst is one batch.)
#[tokio::test(start_paused = true)]
async fn zero_timeout_yields_a_ready_burst_in_budget_sized_batches() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(
        rx.chunks_timeout_result(10_000, Duration::ZERO)
            .with_batch_info()
    );
    for v in 0..5_000 {
        tx.unbounded_send(Ok(v)).unwrap();
    }
    let mut lens = Vec::new();
    let mut next = 0;
    while next < 5_000 {
        let (batch, info) = s.next().await.unwrap().unwrap();
        assert_eq!(info.reason(), FlushReason::Deadline);
        assert_eq!(batch, (next..next + batch.len() as u32).collect::<Vec<_>>());
        next += batch.len() as u32;
        lens.push(batch.len());
    }
    assert_eq!(
        lens,
        [4_096, 904],
        "the burst is cut only by the per-poll budget"
    );
}

// ---------------------------------------------------------------------------------------
// Weights at the edge of usize, memory, panics
// ---------------------------------------------------------------------------------------

/// Rule (Weight cap): sums never saturate or wrap; "a total that would overflow `usize` is
/// past any cap", through `max_weight_opt(Some(usize::MAX))` (the run-time form, not tested
/// at this edge before), with `with_batch_info` built first. Passes.
#[tokio::test(start_paused = true)]
async fn max_weight_opt_at_usize_max_packs_exactly() {
    const M: usize = usize::MAX;
    let values = [M - 1, 1, 1, M, 0, 0, M - 2, 2, 1];
    let out: Vec<_> = stream::iter(values.map(Ok::<usize, ()>))
        .chunks_timeout_result(100, ms(10))
        .with_batch_info()
        .max_weight_opt(Some(M), |&w| w)
        .map(|item| {
            let (batch, info) = item.unwrap();
            (batch, info.reason(), info.weight())
        })
        .collect()
        .await;
    use FlushReason::{End, Weight};
    assert_eq!(
        out,
        vec![
            (vec![M - 1, 1], Weight, Some(M)),
            (vec![1], Weight, Some(1)),
            (vec![M], Weight, Some(M)),
            (vec![0, 0, M - 2, 2], Weight, Some(M)),
            (vec![1], End, Some(1)),
        ]
    );
}

/// Rule (memory): "a batch after one that closed by weight reserves that batch's length (at
/// most 65,536)", and after a count close "`min(max_items, 65_536)`"; after a deadline
/// batch the next starts empty. Checked on the yielded `Vec`s' capacities. Passes.
#[tokio::test(start_paused = true)]
async fn reservations_follow_the_previous_batch_and_stop_at_65_536() {
    let (tx, rx) = mpsc::unbounded::<Result<u8, ()>>();
    let mut s = pin!(
        rx.chunks_timeout_result(200_000, ms(10))
            .max_weight(70_000, |_| 1)
    );
    for _ in 0..70_001 {
        tx.unbounded_send(Ok(1)).unwrap();
    }
    assert_eq!(s.next().await.unwrap().unwrap().len(), 70_000);
    let batch = s.next().await.unwrap().unwrap(); // the carried value, by deadline
    assert_eq!((batch.len(), batch.capacity()), (1, 65_536));
    tx.unbounded_send(Ok(1)).unwrap();
    let batch = s.next().await.unwrap().unwrap();
    assert!(
        batch.capacity() < 16,
        "after a deadline: {}",
        batch.capacity()
    );

    let (tx, rx) = mpsc::unbounded::<Result<u8, ()>>();
    let mut s = pin!(rx.chunks_timeout_result(3, ms(10)));
    for _ in 0..4 {
        tx.unbounded_send(Ok(1)).unwrap();
    }
    assert_eq!(s.next().await.unwrap().unwrap().len(), 3);
    let batch = s.next().await.unwrap().unwrap();
    assert_eq!((batch.len(), batch.capacity()), (1, 3));
}

/// Rule: `max_weight`/`max_weight_opt` panic "at the caller's location" for a zero cap,
/// naming the parameter, also when called after `with_batch_info()` (the shared
/// `rebuild()`); and `max_items == 0` points at the caller. Passes.
#[test]
fn zero_caps_after_with_batch_info_panic_at_the_caller_naming_the_parameter() {
    let empty = stream::empty::<Result<usize, ()>>;
    let line = line!() + 6;
    let (file, at, message) = panic_at(|| {
        drop(
            empty()
                .chunks_timeout_result(1, ms(1))
                .with_batch_info()
                .max_weight_opt(Some(0), |&w| w),
        )
    });
    assert_eq!((file.as_str(), at), (file!(), line));
    assert!(message.contains("`max_weight`"), "{message}");
    let line = line!() + 1;
    let (file, at, message) = panic_at(|| drop(empty().chunks_timeout_result(0, ms(1))));
    assert_eq!((file.as_str(), at), (file!(), line));
    assert!(message.contains("`max_items`"), "{message}");
}
