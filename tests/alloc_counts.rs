//! Heap-allocation counts of the adapters' hot paths: no per-item heap allocation in any
//! adapter; in `chunks_timeout_result` one allocation per batch after a batch that filled,
//! and a first batch that grows by doubling.
//!
//! A counting `#[global_allocator]` counts allocations (`alloc`, `alloc_zeroed` and
//! `realloc`) made on the current thread while counting is switched on. Counting is switched
//! on only *inside* the `poll`/`poll_next` of the adapter under test (see [`Counted`]), so
//! what is counted is exactly what the adapter, the upstream it polls and the handler it
//! calls allocate. The consumer (collecting batch lengths), the runtime's own bookkeeping
//! between polls, and other test threads are not counted. Every runtime is a
//! `current_thread` runtime built before counting begins, so the task runs on the test's
//! own thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use result_stream::{CompensationScope, ResultStreamExt};

// ---------------------------------------------------------------------------------------
// The counting allocator.

struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: the allocator can be called while thread-locals are being torn down.
    let counting = COUNTING.try_with(Cell::get).unwrap_or(false);
    if counting {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every method forwards to `System` unchanged; the counters are thread-locals with
// const initialisers and no destructors, so touching them never allocates or re-enters.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Runs `f` with counting switched on and returns what it returned.
fn counting<R>(f: impl FnOnce() -> R) -> R {
    let was = COUNTING.with(|c| c.replace(true));
    let result = f();
    COUNTING.with(|c| c.set(was));
    result
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn reset() {
    ALLOCATIONS.with(|n| n.set(0));
}

pin_project_lite::pin_project! {
    /// Counts the allocations made inside the wrapped stream's `poll_next` or future's `poll`.
    struct Counted<S> {
        #[pin]
        inner: S,
    }
}

fn counted<S>(inner: S) -> Counted<S> {
    reset();
    Counted { inner }
}

impl<S: Stream> Stream for Counted<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let inner = self.project().inner;
        counting(|| inner.poll_next(cx))
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let inner = self.project().inner;
        counting(|| inner.poll(cx))
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn paused_current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

type E = std::io::Error;

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

// ---------------------------------------------------------------------------------------
// map_ok_stream

#[test]
fn map_ok_stream_allocates_nothing_per_item() {
    let rt = current_thread();
    let n = 100_000_u64;
    let sum = rt.block_on(async {
        let upstream = stream::iter((0..n).map(|v| {
            if v % 10 == 9 {
                Err(std::io::ErrorKind::Other.into())
            } else {
                Ok::<u64, E>(v)
            }
        }));
        let mapped = counted(upstream.map_ok_stream(|v| async move { Ok::<u64, E>(v * 2) }));
        mapped
            .fold(0_u64, |acc, r| async move { acc + r.unwrap_or(1) })
            .await
    });
    assert!(sum > 0);
    assert_eq!(allocations(), 0);
}

#[test]
fn map_ok_stream_with_pending_futures_allocates_nothing_per_item() {
    /// Returns `Pending` once (waking itself), then `Ready`.
    struct YieldOnce(bool, u64);
    impl Future for YieldOnce {
        type Output = Result<u64, E>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            if self.0 {
                Poll::Ready(Ok(self.1))
            } else {
                self.0 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
    let rt = current_thread();
    let n = 20_000_u64;
    let count = rt.block_on(async {
        let upstream = stream::iter((0..n).map(Ok::<u64, E>));
        counted(upstream.map_ok_stream(|v| YieldOnce(false, v)))
            .count()
            .await
    });
    assert_eq!(count as u64, n);
    assert_eq!(allocations(), 0);
}

// ---------------------------------------------------------------------------------------
// for_each_compensated

/// Pre-built batches: `n` vectors of 8 values (built before counting).
fn batches(n: u64) -> Vec<Result<Vec<u64>, E>> {
    (0..n).map(|i| Ok((i * 8..i * 8 + 8).collect())).collect()
}

#[test]
fn for_each_compensated_with_nothing_registered_allocates_nothing() {
    let rt = current_thread();
    let n = 50_000_u64;
    let input = batches(n);
    let done = rt.block_on(async {
        counted(stream::iter(input).for_each_compensated(
            CompensationScope::new(),
            |batch, _scope| async move {
                std::hint::black_box(batch.iter().sum::<u64>());
                Ok(())
            },
        ))
        .await
    });
    assert_eq!(done.unwrap().items(), n);
    assert_eq!(allocations(), 0);
}

#[test]
fn for_each_compensated_allocates_once_per_registration() {
    // One compensation per item, a real closure capturing the batch's first id: one
    // allocation for it (the `Box` of the action). The scope's stack `Vec` grows once (to 4
    // entries) and is reused for every later item, because committing an item truncates the
    // stack without allocating.
    const STACK_GROWTH: u64 = 1;
    let rt = current_thread();
    let n = 50_000_u64;
    let input = batches(n);
    let scope = CompensationScope::new();
    let done = rt.block_on(async {
        counted(stream::iter(input).for_each_compensated(
            scope.clone(),
            |batch, scope| async move {
                let first = batch[0];
                scope.register(move || async move {
                    std::hint::black_box(first);
                    Ok::<(), std::io::Error>(())
                });
                std::hint::black_box(batch.iter().sum::<u64>());
                Ok(())
            },
        ))
        .await
    });
    let allocs = allocations();
    assert_eq!(done.unwrap().items(), n);
    assert!(scope.is_empty(), "every item's compensation was committed");
    assert!(
        (n..=n + STACK_GROWTH).contains(&allocs),
        "{allocs} allocations for {n} registrations"
    );
}

#[test]
fn for_each_compensated_all_or_nothing_allocates_once_per_registration_plus_stack_growth() {
    // All-or-nothing keeps every compensation until the end: the stack `Vec` doubles
    // log2(n) times on top of one allocation per registration.
    let rt = current_thread();
    let n = 50_000_u64;
    let input = batches(n);
    let scope = CompensationScope::new();
    let done = rt.block_on(async {
        counted(
            stream::iter(input)
                .for_each_compensated(scope.clone(), |batch, scope| async move {
                    let first = batch[0];
                    scope.register(move || async move {
                        std::hint::black_box(first);
                        Ok::<(), std::io::Error>(())
                    });
                    Ok(())
                })
                .all_or_nothing(),
        )
        .await
    });
    let allocs = allocations();
    assert_eq!(done.unwrap().items(), n);
    assert!(scope.is_empty());
    let growth = u64::from(u64::BITS - n.leading_zeros()); // ceil(log2(n)) + 1 at most
    assert!(
        (n..=n + growth).contains(&allocs),
        "{allocs} allocations for {n} registrations"
    );
}

#[test]
fn for_each_compensated_zero_sized_compensations_allocate_nothing() {
    // A closure that captures nothing is zero-sized: boxing it allocates nothing, so
    // registering and committing it allocates nothing (at most the stack's one growth).
    let rt = current_thread();
    let n = 20_000_u64;
    let input = batches(n);
    let done = rt.block_on(async {
        counted(stream::iter(input).for_each_compensated(
            CompensationScope::new(),
            |_batch, scope| async move {
                scope.register(|| async { Ok::<(), std::io::Error>(()) });
                Ok(())
            },
        ))
        .await
    });
    let allocs = allocations();
    assert_eq!(done.unwrap().items(), n);
    assert!(allocs <= 1, "{allocs} allocations for {n} registrations");
}

#[test]
fn for_each_compensated_several_registrations_per_item_allocate_once_each() {
    // Three compensations per item: committing them moves them out of the lock through a
    // reused buffer, so once warm an item costs its three `Box`es and nothing else. Warm-up:
    // the stack's and the spare buffer's growth to 4 entries, once each.
    const WARM_UP: u64 = 2;
    let rt = current_thread();
    let n = 20_000_u64;
    let input = batches(n);
    let done = rt.block_on(async {
        counted(stream::iter(input).for_each_compensated(
            CompensationScope::new(),
            |batch, scope| async move {
                for &id in &batch[..3] {
                    scope.register(move || async move {
                        std::hint::black_box(id);
                        Ok::<(), std::io::Error>(())
                    });
                }
                Ok(())
            },
        ))
        .await
    });
    let allocs = allocations();
    assert_eq!(done.unwrap().items(), n);
    assert!(
        (3 * n..=3 * n + WARM_UP).contains(&allocs),
        "{allocs} allocations for {} registrations",
        3 * n
    );
}
