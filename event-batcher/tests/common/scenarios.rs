//! The end-to-end scenarios, written once and run against SQLite (always) and PostgreSQL
//! (`--ignored`, with `EVENT_BATCHER_POSTGRES_URL` set). Each checks the summary *and* reads the
//! database directly.

use event_batcher::pipeline::OnFailure;
use event_batcher::report::Outcome;

use super::{Db, failing, ids, ids_of_surviving_batches, synthetic};

/// A clean run: every event stored once, batches flushed by size and at the end.
pub async fn clean_run(url: &str, table: &str) {
    let summary = event_batcher::run(synthetic(url, table, 1234, 100, 1))
        .await
        .expect("the run starts");
    assert_eq!(summary.outcome, Outcome::Finished, "{summary}");
    assert_eq!(summary.events_read, 1234);
    assert_eq!(summary.invalid, 0);
    assert_eq!(summary.acknowledged, 1234);
    assert_eq!(summary.inserted, 1234);
    assert_eq!(summary.already_present, 0);
    assert_eq!(
        (summary.batches.size, summary.batches.end),
        (12, 1),
        "{summary}"
    );
    assert_eq!(summary.batches.deadline, 0);
    assert_eq!(summary.batches_rolled_back, 0);
    assert!(summary.check.holds, "{summary}");
    assert_eq!(summary.exit_code(), 0);

    let db = Db::open(url).await;
    assert_eq!(db.ids(table).await, ids(1, 1, 1234));
    assert_eq!(db.rows_of_run(table, summary.run_id).await, 1234);
    db.close().await;
}

/// Skip-batch: every 3rd batch fails after writing its first half; each is rolled back
/// (its partial rows deleted), the run goes on, and the summary matches the database.
pub async fn rollback_skip_batch(url: &str, table: &str) {
    let config = failing(synthetic(url, table, 1000, 100, 2), 3, OnFailure::SkipBatch);
    let summary = event_batcher::run(config).await.expect("the run starts");
    assert_eq!(summary.outcome, Outcome::Finished, "{summary}");
    assert_eq!(summary.batches_rolled_back, 3, "{summary}");
    assert_eq!(summary.events_rolled_back, 300);
    let seqs: Vec<u64> = summary.failed_batches.iter().map(|b| b.seq).collect();
    assert_eq!(seqs, [3, 6, 9]);
    for batch in &summary.failed_batches {
        // A real partial write (the first half) existed and was deleted.
        assert_eq!(batch.rows_deleted, 50, "{summary}");
        assert!(batch.rolled_back_cleanly, "{summary}");
        assert!(batch.error.contains("injected failure"), "{}", batch.error);
    }
    assert_eq!(summary.acknowledged, 700);
    assert_eq!(summary.batches.total(), 7);
    assert!(summary.check.holds, "{summary}");
    assert_eq!(summary.exit_code(), 0);

    let db = Db::open(url).await;
    let stored = db.ids(table).await;
    // No row of a failed batch is left; every other event is there.
    assert_eq!(stored, ids_of_surviving_batches(2, 1000, 100, 3));
    assert_eq!(stored.len() as u64, summary.acknowledged);
    assert_eq!(db.rows_of_run(table, summary.run_id).await, 700);
    db.close().await;
}

/// Stop: the 2nd batch fails after writing its first half; the run stops, the partial write
/// is rolled back, the first batch stays.
pub async fn rollback_stop(url: &str, table: &str) {
    let config = failing(synthetic(url, table, 1000, 100, 3), 2, OnFailure::Stop);
    let summary = event_batcher::run(config).await.expect("the run starts");
    let Outcome::Stopped {
        cause,
        rolled_back_cleanly,
        ..
    } = &summary.outcome
    else {
        panic!("expected a stopped run:\n{summary}");
    };
    assert!(cause.contains("batch 2: injected failure"), "{cause}");
    assert!(rolled_back_cleanly);
    assert_eq!(summary.batches_rolled_back, 1);
    assert_eq!(summary.failed_batches[0].rows_deleted, 50);
    assert_eq!(summary.acknowledged, 100);
    assert_eq!(summary.events_not_written, 0, "{summary}");
    assert!(summary.check.holds, "{summary}");
    assert_eq!(summary.exit_code(), 1);

    let db = Db::open(url).await;
    assert_eq!(db.ids(table).await, ids(3, 1, 100));
    db.close().await;
}

/// Re-runs: nothing is stored twice, and a rollback never deletes a row that an earlier run
/// committed, even when the failed batch holds the same ids.
pub async fn rerun_idempotent(url: &str, table: &str) {
    let seed = 4;
    let first = event_batcher::run(synthetic(url, table, 500, 100, seed))
        .await
        .expect("the run starts");
    assert!(first.is_success(), "{first}");

    // Every batch fails after its first half. Batches 1-5 hold ids stored by the first run:
    // nothing is inserted, and their rollback must not delete those rows. Batches 6-10
    // insert new rows, which their rollback deletes.
    let config = failing(
        synthetic(url, table, 1000, 100, seed),
        1,
        OnFailure::SkipBatch,
    );
    let failed = event_batcher::run(config).await.expect("the run starts");
    assert_eq!(failed.batches_rolled_back, 10, "{failed}");
    let deleted: Vec<u64> = failed
        .failed_batches
        .iter()
        .map(|b| b.rows_deleted)
        .collect();
    assert_eq!(deleted, [0, 0, 0, 0, 0, 50, 50, 50, 50, 50]);
    assert!(failed.check.holds, "{failed}");
    let db = Db::open(url).await;
    assert_eq!(db.ids(table).await, ids(seed, 1, 500));

    // A clean re-run fills in the rest and skips what is there.
    let second = event_batcher::run(synthetic(url, table, 1000, 100, seed))
        .await
        .expect("the run starts");
    assert!(second.is_success(), "{second}");
    assert_eq!((second.inserted, second.already_present), (500, 500));

    // And the same run again stores nothing.
    let third = event_batcher::run(synthetic(url, table, 1000, 100, seed))
        .await
        .expect("the run starts");
    assert!(third.is_success(), "{third}");
    assert_eq!((third.inserted, third.already_present), (0, 1000));
    assert_eq!(third.rows.as_ref().map(|r| r.total), Ok(1000));
    assert_eq!(db.ids(table).await, ids(seed, 1, 1000));
    assert_eq!(db.rows_of_run(table, third.run_id).await, 0);
    db.close().await;
}

/// The same id twice in one batch (with different payloads), and once more in the next
/// batch: stored once (the first occurrence), every occurrence acknowledged, the check holds.
pub async fn duplicate_id_in_one_batch(url: &str, table: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dup.ndjson");
    let line =
        |id: &str, n: u32| format!(r#"{{"id":"{id}","tenant":"t","ts":1,"payload":{{"n":{n}}}}}"#);
    let lines = [
        line("dup", 1),
        line("x", 2),
        line("dup", 3),
        line("y", 4),
        line("dup", 5),
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let config = event_batcher::Config {
        source: event_batcher::source::SourceSpec::Ndjson(event_batcher::source::Input::File(path)),
        ..synthetic(url, table, 0, 4, 9)
    };
    let summary = event_batcher::run(config).await.expect("the run starts");
    assert_eq!(summary.outcome, Outcome::Finished, "{summary}");
    assert_eq!(summary.invalid, 0);
    assert_eq!(summary.acknowledged, 5, "{summary}");
    assert_eq!(
        (summary.inserted, summary.already_present),
        (3, 2),
        "{summary}"
    );
    assert!(summary.check.holds, "{summary}");

    let db = Db::open(url).await;
    assert_eq!(
        db.ids(table).await,
        ["dup", "x", "y"].map(String::from).into()
    );
    assert_eq!(db.payload(table, "dup").await, r#"{"n":1}"#);
    db.close().await;
}

/// `--concurrency 4` with skip-batch: every 3rd batch fails after writing its first half
/// while up to three others are being written; each failed batch is rolled back alone, the
/// others commit, and the summary matches the database exactly.
pub async fn concurrent_skip_batch(url: &str, table: &str) {
    let mut config = failing(synthetic(url, table, 3000, 100, 7), 3, OnFailure::SkipBatch);
    config.concurrency = 4;
    let summary = event_batcher::run(config).await.expect("the run starts");
    assert_eq!(summary.outcome, Outcome::Finished, "{summary}");
    let mut seqs: Vec<u64> = summary.failed_batches.iter().map(|b| b.seq).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=10).map(|n| n * 3).collect::<Vec<_>>(),
        "{summary}"
    );
    for batch in &summary.failed_batches {
        assert_eq!(batch.rows_deleted, 50, "{summary}");
        assert!(batch.rolled_back_cleanly, "{summary}");
    }
    assert_eq!(summary.acknowledged, 2000, "{summary}");
    assert_eq!(summary.events_rolled_back, 1000, "{summary}");
    assert_eq!(summary.batches.total(), 20, "{summary}");
    assert!(summary.check.holds, "{summary}");
    assert_eq!(summary.exit_code(), 0);

    let db = Db::open(url).await;
    assert_eq!(
        db.ids(table).await,
        ids_of_surviving_batches(7, 3000, 100, 3)
    );
    assert_eq!(db.rows_of_run(table, summary.run_id).await, 2000);
    // Each committed batch's rows carry its own number, all of them.
    let batches = db.batches(table, summary.run_id).await;
    let numbers: Vec<i64> = batches.keys().copied().collect();
    let expected: Vec<i64> = (1..=30).filter(|n| n % 3 != 0).collect();
    assert_eq!(numbers, expected);
    assert!(
        batches.values().all(|(rows, _)| *rows == 100),
        "{batches:?}"
    );
    db.close().await;
}

/// `--write-retries 2` with a failure injected into the first attempt of every 4th batch:
/// each such attempt is rolled back (its first half deleted), retried, and commits; the
/// run finishes in stop mode with every event stored once, nothing rolled back for good.
pub async fn transient_failures_are_retried(url: &str, table: &str, concurrency: usize) {
    let mut config = failing(synthetic(url, table, 2000, 100, 8), 4, OnFailure::Stop);
    config.faults.fail_attempts = Some(1);
    config.write_retry.retries = 2;
    config.write_retry.backoff = std::time::Duration::ZERO;
    config.concurrency = concurrency;
    let summary = event_batcher::run(config).await.expect("the run starts");
    assert_eq!(summary.outcome, Outcome::Finished, "{summary}");
    assert_eq!(summary.write_retries, 5, "{summary}");
    assert_eq!(summary.batches_rolled_back, 0, "{summary}");
    assert_eq!(summary.acknowledged, 2000);
    assert_eq!(summary.inserted, 2000, "{summary}");
    assert_eq!(summary.already_present, 0, "{summary}");
    assert!(summary.check.holds, "{summary}");

    let db = Db::open(url).await;
    assert_eq!(db.ids(table).await, ids(8, 1, 2000));
    let batches = db.batches(table, summary.run_id).await;
    assert_eq!(batches.len(), 20);
    assert!(
        batches.values().all(|(rows, _)| *rows == 100),
        "{batches:?}"
    );
    db.close().await;
}
