//! Memory and allocations of `chunks_timeout_by_key_result`: no allocation per value, one
//! per batch for keys whose batches fill, 1,000,000 distinct keys with `max_open_keys(1_000)`
//! never buffer more than 1,000 batches, and open batches hold memory in proportion to
//! their values (never `max_items` slots per key up front).
//!
//! A counting `#[global_allocator]` keeps, per thread and only while switched on, the number
//! of allocations (`alloc`, `alloc_zeroed`, `realloc`) and the bytes live (allocated minus
//! freed) with their peak. Every run here is single-threaded (a `current_thread` runtime or
//! `futures::executor::block_on`), so what is counted is the adapter, its upstream and the
//! consumer, which drops each batch at once.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use common::paused_runtime;
use futures::{Stream, StreamExt, stream};
use result_stream::{FlushReason, ResultStreamExt};

struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn note(allocation: bool, delta: i64) {
    // `try_with`: the allocator can be called while thread-locals are being torn down.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        if allocation {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
        let _ = LIVE.try_with(|live| {
            live.set(live.get() + delta);
            let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
        });
    }
}

// SAFETY: every method forwards to `System` unchanged; the counters are thread-locals with
// const initialisers and no destructors, so touching them never allocates or re-enters.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(true, layout.size() as i64);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(true, layout.size() as i64);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(true, new_size as i64 - layout.size() as i64);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(false, -(layout.size() as i64));
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// What a counted run allocated.
#[derive(Debug, Clone, Copy)]
struct Counts {
    allocations: u64,
    peak_live_bytes: i64,
}

/// Runs `f` with counting switched on, from zero.
fn counting<R>(f: impl FnOnce() -> R) -> (R, Counts) {
    ALLOCATIONS.with(|n| n.set(0));
    LIVE.with(|n| n.set(0));
    PEAK.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    let result = f();
    COUNTING.with(|c| c.set(false));
    let counts = Counts {
        allocations: ALLOCATIONS.with(Cell::get),
        peak_live_bytes: PEAK.with(Cell::get),
    };
    (result, counts)
}

type E = std::io::Error;

// ---------------------------------------------------------------------------------------
// A million keys

#[test]
fn a_million_distinct_keys_with_max_open_keys_1000_never_buffer_more_than_1000_batches() {
    const KEYS: u64 = 1_000_000;
    const MAX_OPEN: usize = 1_000;
    const MAX_ITEMS: usize = 10;
    let run = |bounded: bool, n: u64| {
        counting(|| {
            let upstream = stream::iter((0..n).map(Ok::<u64, E>));
            let adapter = upstream
                .chunks_timeout_by_key_result(|&v| v, MAX_ITEMS, Duration::from_secs(60))
                .max_open_keys(if bounded { MAX_OPEN } else { usize::MAX })
                .with_batch_info();
            futures::executor::block_on(async {
                let mut adapter = std::pin::pin!(adapter);
                let (mut values, mut most_open, mut evictions) = (0u64, 0usize, 0u64);
                while let Some(item) = adapter.next().await {
                    let (key, (batch, info)) = item.unwrap();
                    assert_eq!(batch, vec![key]);
                    values += 1;
                    evictions += u64::from(info.reason() == FlushReason::Eviction);
                    most_open = most_open.max(adapter.open_keys());
                }
                (values, most_open, evictions)
            })
        })
    };

    let ((values, most_open, evictions), counts) = run(true, KEYS);
    assert_eq!(values, KEYS, "nothing lost");
    assert_eq!(most_open, MAX_OPEN, "never more than 1,000 open batches");
    assert_eq!(
        evictions,
        KEYS - MAX_OPEN as u64,
        "all but the last 1,000 evicted"
    );
    // Each open key holds one batch buffer of `MAX_ITEMS` values, a slab slot and an index
    // entry: well under 512 bytes a key here.
    let per_key = (MAX_ITEMS * size_of::<u64>()) as i64 + 512;
    assert!(
        counts.peak_live_bytes <= MAX_OPEN as i64 * per_key,
        "peak {} bytes for {MAX_OPEN} open keys",
        counts.peak_live_bytes
    );

    // The same bound fails without `max_open_keys` (on fewer keys, to keep the test short):
    // the measurement above is not vacuous.
    let ((values, most_open, _), unbounded) = run(false, 20 * MAX_OPEN as u64);
    assert_eq!(values, 20 * MAX_OPEN as u64);
    assert_eq!(most_open, 20 * MAX_OPEN - 1);
    eprintln!(
        "peak live bytes: {} with max_open_keys({MAX_OPEN}) over {KEYS} keys, {} unbounded \
         over 20,000 keys",
        counts.peak_live_bytes, unbounded.peak_live_bytes
    );
    assert!(
        unbounded.peak_live_bytes > MAX_OPEN as i64 * per_key,
        "unbounded: peak {} bytes for 20,000 open keys, bounded: {}",
        unbounded.peak_live_bytes,
        counts.peak_live_bytes
    );
}

// ---------------------------------------------------------------------------------------
// Allocations: one per batch, none per value

/// Yields `n` values round-robin over `keys` keys, returning `Pending` (after waking
/// itself) after every `burst` values; it allocates nothing.
struct Bursty {
    next: u64,
    n: u64,
    keys: u64,
    burst: u64,
    in_burst: u64,
}

impl Stream for Bursty {
    type Item = Result<u64, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.next == self.n {
            return Poll::Ready(None);
        }
        if self.in_burst == self.burst {
            self.in_burst = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.in_burst += 1;
        self.next += 1;
        Poll::Ready(Some(Ok((self.next - 1) % self.keys)))
    }
}

/// Runs the keyed adapter over `n` values of `keys` keys (bursts of `burst`, or a ready
/// upstream when `burst` is `None`) on a paused current-thread runtime, and returns the
/// number of batches and the allocations made.
fn batches_and_allocations(
    n: u64,
    keys: u64,
    burst: Option<u64>,
    max_items: usize,
    timeout: Duration,
) -> (u64, u64) {
    let runtime = paused_runtime();
    let upstream = Bursty {
        next: 0,
        n,
        keys,
        burst: burst.unwrap_or(u64::MAX),
        in_burst: 0,
    };
    let (batches, counts) = counting(|| {
        runtime.block_on(async {
            let mut batches = 0;
            let mut values = 0;
            let adapter = upstream.chunks_timeout_by_key_result(|&v| v, max_items, timeout);
            let mut adapter = std::pin::pin!(adapter);
            while let Some(item) = adapter.next().await {
                values += item.unwrap().1.len() as u64;
                batches += 1;
            }
            assert_eq!(values, n);
            batches
        })
    });
    (batches, counts.allocations)
}

/// Twice the values cost exactly the extra batches in allocations: the fixed costs (the
/// index, the slab, the runtime) cancel out, and nothing is allocated per value.
fn assert_one_allocation_per_batch(keys: u64, burst: Option<u64>, max_items: usize, timeout: u64) {
    let timeout = Duration::from_millis(timeout);
    let n = 50_000;
    // A warm-up run first: the runtime's one-time allocations are not the adapter's.
    let _ = batches_and_allocations(n, keys, burst, max_items, timeout);
    let (batches, allocations) = batches_and_allocations(n, keys, burst, max_items, timeout);
    let (batches2, allocations2) = batches_and_allocations(2 * n, keys, burst, max_items, timeout);
    assert!(batches2 > batches);
    eprintln!(
        "{keys} keys, bursts {burst:?}, max_items {max_items}: {allocations} allocations for \
         {batches} batches, {allocations2} for {batches2}"
    );
    assert_eq!(
        allocations2 - allocations,
        batches2 - batches,
        "{keys} keys, bursts {burst:?}, max_items {max_items}: {allocations} allocations for \
         {batches} batches, {allocations2} for {batches2}"
    );
    assert!(allocations >= batches, "every batch is one allocation");
}

#[test]
fn one_key_on_a_ready_upstream_allocates_once_per_batch() {
    assert_one_allocation_per_batch(1, None, 500, 1_000);
}

#[test]
fn a_thousand_keys_on_a_ready_upstream_allocate_once_per_batch() {
    assert_one_allocation_per_batch(1_000, None, 20, 1_000);
}

#[test]
fn batches_closed_by_their_deadlines_allocate_once_per_batch() {
    // Bursts of 30 values over 100 keys, with a zero timeout: every batch closes by its
    // deadline as soon as the upstream is pending.
    assert_one_allocation_per_batch(100, Some(30), 500, 0);
}

#[test]
fn with_a_timer_armed_between_bursts_allocation_stays_once_per_batch() {
    // Bursts of 7 over 10 keys, cap 5: the timer is armed at every `Pending` and batches
    // close when full; at the end, by the end.
    assert_one_allocation_per_batch(10, Some(7), 5, 1_000);
}

// ---------------------------------------------------------------------------------------
// Memory held by open batches: in proportion to their values

/// The peak bytes live while `keys` keys each buffer `per_key` values (round-robin, so all
/// are open at once before the upstream ends), with `max_items` far above `per_key`.
fn peak_with_open_batches(keys: u64, per_key: u64, max_items: usize) -> i64 {
    let (values, counts) = counting(|| {
        let upstream = stream::iter((0..keys * per_key).map(Ok::<u64, E>));
        let adapter = upstream.chunks_timeout_by_key_result(
            move |&v| v % keys,
            max_items,
            Duration::from_secs(60),
        );
        futures::executor::block_on(async {
            let mut adapter = std::pin::pin!(adapter);
            let mut values = 0;
            while let Some(item) = adapter.next().await {
                values += item.unwrap().1.len() as u64;
            }
            values
        })
    });
    assert_eq!(values, keys * per_key);
    counts.peak_live_bytes
}

#[test]
fn a_thousand_keys_holding_one_value_each_reserve_no_batch_sized_buffers() {
    // Reserved up front at `max_items` slots a key, this would be 1,000 x 4,096 x 8 bytes.
    let peak = peak_with_open_batches(1_000, 1, 4_096);
    eprintln!("peak live bytes, 1,000 keys holding one u64 each: {peak}");
    assert!(peak <= 1_000 * 512, "peak {peak} bytes");
}

#[test]
fn open_batches_grow_with_their_values_not_with_max_items() {
    // 100 keys holding 100 values each: at most twice the values (a `Vec` doubling), plus
    // the key's place in the index and the deadline list.
    let peak = peak_with_open_batches(100, 100, 4_096);
    let bound = 100 * (2 * 100 * size_of::<u64>() as i64 + 512);
    eprintln!("peak live bytes, 100 keys holding 100 u64 each: {peak} (bound {bound})");
    assert!(peak <= bound, "peak {peak} bytes, bound {bound}");
}
