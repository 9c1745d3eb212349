//! The memory of a re-run does not grow with the events found already present (the
//! consistency check once kept every skipped id in memory, 162 MB of RSS for a re-run of
//! 1,000,000 events).
//!
//! The memory of a `--per-tenant` run grows with the events its open batches hold, not with
//! `--max-batch` slots per tenant (20,000 tenants holding a few events each once reserved a
//! batch-sized buffer each, 1.17 GB of RSS for 200,000 events).
//!
//! A counting `#[global_allocator]` keeps the bytes live (allocated minus freed, every
//! thread: the runtime's, SQLite's worker) and their peak. The tests take turns (`SERIAL`),
//! so nothing else allocates meanwhile.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use common::{TempSqlite, synthetic};
use event_batcher::source::{Input, SourceSpec};

/// One test at a time: the counters are global.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    let _serial = SERIAL.lock().await;
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

/// Runs the NDJSON file `path` into a new SQLite file, per tenant or not, and returns the
/// peak of the bytes live during the run above what was live when it started.
async fn ndjson_peak(path: &std::path::Path, events: u64, per_tenant: bool) -> i64 {
    let db = TempSqlite::new();
    let mut config = synthetic(&db.url, "events", events, 500, 18);
    config.source = SourceSpec::Ndjson(Input::File(path.to_owned()));
    config.per_tenant = per_tenant;
    config.flush_every = std::time::Duration::from_secs(3600);
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let report = event_batcher::run(config).await.unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    assert!(report.is_success(), "{report}");
    assert_eq!(report.inserted, events);
    peak
}

#[tokio::test]
async fn per_tenant_batches_hold_memory_in_proportion_to_their_events() {
    const TENANTS: u64 = 20_000;
    const EVENTS: u64 = 2 * TENANTS;
    let _serial = SERIAL.lock().await;
    common::within(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let lines: String = (0..EVENTS)
            .map(|i| {
                let tenant = i % TENANTS;
                format!(
                    r#"{{"id":"e{i}","tenant":"tenant-{tenant}","ts":1714564800000,"payload":{{"n":{i},"text":"a payload of about a hundred bytes, like the events of a real feed"}}}}"#
                ) + "\n"
            })
            .collect();
        std::fs::write(&path, lines).unwrap();

        let single = ndjson_peak(&path, EVENTS, false).await;
        let per_tenant = ndjson_peak(&path, EVENTS, true).await;
        eprintln!(
            "heap peak over {EVENTS} events: {single} B in one batch stream, {per_tenant} B \
             per tenant over {TENANTS} tenants (every tenant's batch open until the end)"
        );
        // Every event is held in an open batch until the end: the events themselves and,
        // per tenant, its index entry and list node. A `--max-batch` (500) slot buffer per
        // tenant would add 20,000 x 500 x the size of an event (about 1 GB).
        let per_event = (per_tenant - single) / EVENTS as i64;
        assert!(
            per_event < 2_000,
            "{per_event} bytes per buffered event ({single} -> {per_tenant})"
        );
    })
    .await;
}
