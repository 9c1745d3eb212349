//! Heap-allocation counts of `chunks_timeout_result`: one allocation per batch after a batch
//! that filled, and a first batch that grows by doubling; nothing per item, and nothing for
//! the timer, whether the upstream is ready, returns `Pending`, or is a channel fed from
//! another thread. Also checks that the counter itself counts.
//!
//! Allocations are counted only inside the adapter's polls (see `alloc_common`); the
//! consumer collecting batch lengths is not counted.

mod alloc_common;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use alloc_common::{
    E, allocations, counted, counting, current_thread, paused_current_thread, reset,
};
use futures::{Stream, StreamExt, stream};
use result_stream::ResultStreamExt;

#[global_allocator]
static GLOBAL: alloc_common::CountingAllocator = alloc_common::CountingAllocator;

/// Drains a stream of batches, returning the batch sizes. Runs outside the counted section.
async fn batch_sizes<S>(batches: S) -> Vec<usize>
where
    S: Stream<Item = Result<Vec<u64>, E>>,
{
    let mut sizes = Vec::with_capacity(100_000);
    let mut batches = std::pin::pin!(batches);
    while let Some(batch) = batches.next().await {
        sizes.push(batch.expect("no errors in these streams").len());
    }
    sizes
}

// ---------------------------------------------------------------------------------------
// Upstreams that return `Pending`.

pin_project_lite::pin_project! {
    /// Yields `0..n` as `Ok`, returning `Pending` (after waking itself) after every `burst`
    /// values: a `Pending`-returning upstream that never allocates and needs no clock.
    struct Bursty {
        next: u64,
        n: u64,
        burst: u64,
        yielded_in_burst: u64,
    }
}

fn bursty(n: u64, burst: u64) -> Bursty {
    Bursty {
        next: 0,
        n,
        burst,
        yielded_in_burst: 0,
    }
}

impl Stream for Bursty {
    type Item = Result<u64, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.next == *this.n {
            return Poll::Ready(None);
        }
        if *this.yielded_in_burst == *this.burst {
            *this.yielded_in_burst = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        *this.yielded_in_burst += 1;
        *this.next += 1;
        Poll::Ready(Some(Ok(*this.next - 1)))
    }
}

pin_project_lite::pin_project! {
    /// Yields `0..n` as `Ok`, one every `period` of `tokio::time`: one `Sleep`, boxed once at
    /// construction (before counting starts) and reset for every value.
    struct Ticker {
        sleep: Pin<Box<tokio::time::Sleep>>,
        period: Duration,
        next: u64,
        n: u64,
    }
}

fn ticker(n: u64, period: Duration) -> Ticker {
    Ticker {
        sleep: Box::pin(tokio::time::sleep(period)),
        period,
        next: 0,
        n,
    }
}

impl Stream for Ticker {
    type Item = Result<u64, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.next == *this.n {
            return Poll::Ready(None);
        }
        std::task::ready!(this.sleep.as_mut().poll(cx));
        let at = this.sleep.deadline() + *this.period;
        this.sleep.as_mut().reset(at);
        *this.next += 1;
        Poll::Ready(Some(Ok(*this.next - 1)))
    }
}

// ---------------------------------------------------------------------------------------
// chunks_timeout_result

/// The allocations of a `Vec` grown one value at a time from empty to `len` values
/// (capacity 4, then doubling): what the first batch costs.
fn first_batch_growth(len: usize) -> u64 {
    let (mut capacity, mut allocations) = (0, 0);
    for at in 0..len {
        if at == capacity {
            capacity = (capacity * 2).max(4);
            allocations += 1;
        }
    }
    allocations
}

#[test]
fn the_counter_counts() {
    reset();
    let v: Vec<u64> = counting(|| Vec::with_capacity(std::hint::black_box(10)));
    let boxed = counting(|| Box::new(std::hint::black_box(1_u64)));
    assert_eq!(allocations(), 2);
    drop((v, boxed));
    let uncounted = Box::new(std::hint::black_box(2_u64));
    assert_eq!(allocations(), 2);
    drop(uncounted);
}

#[test]
fn chunks_timeout_result_ready_stream_allocates_once_per_batch() {
    let rt = current_thread();
    for (n, cap) in [(100_000_u64, 500_usize), (100_000, 8), (10_001, 7)] {
        let batches = rt.block_on(async {
            let upstream = stream::iter((0..n).map(Ok::<u64, E>));
            batch_sizes(counted(
                upstream.chunks_timeout_result(cap, Duration::from_secs(2)),
            ))
            .await
        });
        let allocs = allocations();
        assert_eq!(batches.iter().sum::<usize>() as u64, n);
        assert_eq!(batches.len() as u64, n.div_ceil(cap as u64));
        assert!(
            allocs <= batches.len() as u64 - 1 + first_batch_growth(batches[0]),
            "cap {cap}: {allocs} allocations for {} batches",
            batches.len()
        );
    }
}

/// The first batch has shown nothing, so it starts empty and grows by doubling, as a `Vec`
/// does; a batch after one that filled reserves its full size, `min(max_items, 65_536)`
/// values, in one allocation, and doubles past that.
#[test]
fn chunks_timeout_result_first_batch_grows_by_doubling_later_ones_allocate_once() {
    let rt = current_thread();
    for n in [65_536_u64, 65_537, 200_000] {
        let batches = rt.block_on(async {
            let upstream = stream::iter((0..2 * n).map(Ok::<u64, E>));
            batch_sizes(counted(
                upstream.chunks_timeout_result(n as usize, Duration::from_secs(2)),
            ))
            .await
        });
        assert_eq!(batches, vec![n as usize, n as usize]);
        let second = 1 + u64::from(n > 65_536) + u64::from(n > 131_072);
        assert_eq!(
            allocations(),
            first_batch_growth(n as usize) + second,
            "two batches of {n} values"
        );
    }
}

/// With `.max_weight(..)` and `.with_batch_info()`, a batch after one closed by weight
/// reserves that batch's length: one allocation, and one more when it grows past it (the
/// weights differ, so the lengths do): at most two per batch after the first.
#[test]
fn chunks_timeout_result_with_weight_and_info_allocates_once_per_batch() {
    let rt = current_thread();
    let n = 100_000_u64;
    let (batches, weighed) = rt.block_on(async {
        let upstream = stream::iter((0..n).map(Ok::<u64, E>));
        let adapter = upstream
            .chunks_timeout_result(500, Duration::from_secs(2))
            .max_weight(1_000, |v: &u64| (*v % 10) as usize)
            .with_batch_info();
        let mut sizes = Vec::with_capacity(1_000);
        let mut weighed = 0;
        let mut adapter = std::pin::pin!(counted(adapter));
        while let Some(batch) = adapter.next().await {
            let (batch, info) = batch.expect("no errors");
            weighed += u64::from(info.reason() == result_stream::FlushReason::Weight);
            sizes.push(batch.len());
        }
        (sizes, weighed)
    });
    let allocs = allocations();
    assert_eq!(batches.iter().sum::<usize>() as u64, n);
    assert!(weighed > 0, "some batches closed by weight");
    assert!(
        allocs <= 2 * (batches.len() as u64 - 1) + first_batch_growth(batches[0]),
        "{allocs} allocations for {} batches",
        batches.len()
    );
}

#[test]
fn chunks_timeout_result_pending_upstream_arms_the_timer_without_allocating() {
    // The upstream returns `Pending` every 3 values, so the deadline timer is armed for
    // every batch (created once, then reset): still exactly one allocation per batch.
    let rt = current_thread();
    let (n, cap) = (60_000_u64, 500_usize);
    let (batches, armed) = rt.block_on(async {
        // (A real clock: a deadline no run reaches keeps the batch count exact.)
        let adapter = bursty(n, 3).chunks_timeout_result(cap, Duration::from_secs(3600));
        let mut adapter = std::pin::pin!(counted(adapter));
        // Check on the way that the timer really is armed when the upstream is pending.
        let mut armed = 0;
        let mut sizes = Vec::new();
        loop {
            let polled = futures::future::poll_fn(|cx| {
                let polled = adapter.as_mut().poll_next(cx);
                if polled.is_pending()
                    && adapter.as_mut().project().inner.armed_deadline().is_some()
                {
                    armed += 1;
                }
                Poll::Ready(polled)
            })
            .await;
            match polled {
                Poll::Ready(Some(batch)) => sizes.push(batch.unwrap().len()),
                Poll::Ready(None) => break,
                Poll::Pending => tokio::task::yield_now().await,
            }
        }
        (sizes, armed)
    });
    let allocs = allocations();
    assert_eq!(batches.iter().sum::<usize>() as u64, n);
    assert_eq!(batches.len() as u64, n.div_ceil(cap as u64));
    assert!(
        armed >= batches.len() - 1,
        "the timer was armed {armed} times"
    );
    assert!(
        allocs <= batches.len() as u64 - 1 + first_batch_growth(batches[0]),
        "{allocs} allocations for {} batches",
        batches.len()
    );
}

#[test]
fn chunks_timeout_result_deadline_flushes_allocate_nothing_for_the_timer() {
    // Paused clock, a value every 3 ms, a 10 ms timeout: every batch (of 4) is closed by its
    // deadline, so the timer is reset and fires once per batch.
    let rt = paused_current_thread();
    let n = 20_000_u64;
    let batches = rt.block_on(async {
        let upstream = ticker(n, Duration::from_millis(3));
        batch_sizes(counted(
            upstream.chunks_timeout_result(500, Duration::from_millis(10)),
        ))
        .await
    });
    let allocs = allocations();
    assert_eq!(batches.iter().sum::<usize>() as u64, n);
    assert!(
        batches[..batches.len() - 1].iter().all(|&len| len == 4),
        "every batch but the last is closed by its deadline after 4 values"
    );
    assert!(
        allocs <= batches.len() as u64 - 1 + first_batch_growth(batches[0]),
        "{allocs} allocations for {} batches",
        batches.len()
    );
}

/// Makes tokio's `current_thread` scheduler allocate its list of deferred wakers, which it
/// does once per `block_on`, the first time a task runs out of its cooperative budget (an
/// allocation inside a tokio resource's poll, such as `poll_recv`, not in an adapter). Call
/// it at the start of the `block_on` whose allocations are then counted: whether a counted
/// run would exhaust the budget first depends on thread timing.
async fn warm_up_cooperative_budget() {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1024);
    for v in 0..1024 {
        tx.try_send(v).unwrap();
    }
    // 1024 ready receives: the 128-unit budget runs out, and the task defers its waker.
    for _ in 0..1024 {
        rx.recv().await.unwrap();
    }
}

#[test]
fn chunks_timeout_result_channel_upstream_allocates_once_per_batch() {
    // A bounded tokio channel fed from another OS thread: its own allocations (the channel's
    // blocks) happen on the sender's thread; the receiving side and the adapter allocate
    // only the batches, in every run of the same `block_on` once the runtime is warmed up
    // (see `warm_up_cooperative_budget`).
    let rt = current_thread();
    let n = 200_000_u64;
    rt.block_on(async {
        warm_up_cooperative_budget().await;
        for run in 1..=2 {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<u64, E>>(64);
            let producer = std::thread::spawn(move || {
                for v in 0..n {
                    tx.blocking_send(Ok(v)).unwrap();
                }
            });
            let upstream = futures::stream::poll_fn({
                let mut rx = rx;
                move |cx| rx.poll_recv(cx)
            });
            let batches = batch_sizes(counted(
                upstream.chunks_timeout_result(500, Duration::from_secs(2)),
            ))
            .await;
            producer.join().unwrap();
            let allocs = allocations();
            assert_eq!(batches.iter().sum::<usize>() as u64, n);
            assert!(
                allocs <= batches.len() as u64 - 1 + first_batch_growth(batches[0]),
                "run {run}: {allocs} allocations for {} batches",
                batches.len()
            );
        }
    });
}
