//! The memory of a re-run does not grow with the events found already present (issue 13:
//! the consistency check used to keep every skipped id in memory, 162 MB of RSS for a
//! re-run of 1,000,000 events).
//!
//! A counting `#[global_allocator]` keeps the bytes live (allocated minus freed, every
//! thread: the runtime's, SQLite's worker) and their peak. Only one test runs in this
//! binary, so nothing else allocates meanwhile.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use common::{TempSqlite, synthetic};

struct CountingAllocator;

static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);

fn note(delta: i64) {
    let live = LIVE.fetch_add(delta, Ordering::Relaxed) + delta;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` unchanged; the counters are atomics, so touching
// them never allocates or re-enters.
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

/// Runs `events` synthetic events into a new SQLite file, then the same events again (each
/// one found already present); returns the peak of the bytes live during the second run
/// above what was live when it started.
async fn rerun_peak(events: u64) -> i64 {
    let db = TempSqlite::new();
    let first = event_batcher::run(synthetic(&db.url, "events", events, 1000, 13))
        .await
        .unwrap();
    assert!(first.is_success(), "{first}");
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let again = event_batcher::run(synthetic(&db.url, "events", events, 1000, 13))
        .await
        .unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    assert!(again.is_success(), "{again}");
    assert_eq!((again.inserted, again.already_present), (0, events));
    assert!(
        again
            .check
            .detail
            .contains(&format!("all {events} id(s) found")),
        "{}",
        again.check.detail
    );
    peak
}

#[tokio::test]
async fn a_rerun_does_not_keep_the_skipped_ids_in_memory() {
    common::within(async {
        let small = rerun_peak(5_000).await;
        let large = rerun_peak(45_000).await;
        // 40,000 more skipped ids: kept in memory (a `String` and a hash-set slot each,
        // about 70 bytes) they would add about 2.8 MB to the peak.
        let growth = large - small;
        eprintln!("re-run heap peak: {small} B (5,000 events), {large} B (45,000 events)");
        assert!(
            growth < 400_000,
            "the peak grew by {growth} bytes with 40,000 more skipped ids ({small} -> {large})"
        );
    })
    .await;
}
