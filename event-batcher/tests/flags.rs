//! The flags that put the library's newer capabilities to work, against SQLite:
//! `--max-batch-bytes` (`max_weight`), `--per-tenant` / `--max-open-tenants`
//! (`chunks_timeout_by_key_result`), `--concurrency` (`for_each_compensated(..).concurrency`),
//! `--write-retries` (`.retry`), and what the summary reports of them. Each test reads the
//! database back directly. (The PostgreSQL runs of the shared scenarios: `tests/postgres.rs`.)

mod common;

use common::{Db, TempSqlite, failing, run_binary, scenarios, summary_value, synthetic, texts};
use event_batcher::event::Event;
use event_batcher::pipeline::{OnFailure, encoded_len};
use event_batcher::report::Outcome;
use event_batcher::source::{Input, SourceSpec};

#[tokio::test]
async fn concurrent_skip_batch_summary_matches_the_database() {
    common::within(async {
        let db = TempSqlite::new();
        scenarios::concurrent_skip_batch(&db.url, "events").await;
    })
    .await;
}

#[tokio::test]
async fn transient_failures_are_retried_and_every_event_is_stored() {
    common::within(async {
        for concurrency in [1, 4] {
            let db = TempSqlite::new();
            scenarios::transient_failures_are_retried(&db.url, "events", concurrency).await;
        }
    })
    .await;
}

/// A failure on every attempt exhausts the retries: the batch is rolled back once more and
/// the failure policy applies (stop), exactly as without retries.
#[tokio::test]
async fn retries_exhausted_apply_the_failure_policy() {
    common::within(async {
        let db = TempSqlite::new();
        let mut config = failing(
            synthetic(&db.url, "events", 500, 100, 9),
            3,
            OnFailure::Stop,
        );
        config.write_retry.retries = 2;
        config.write_retry.backoff = std::time::Duration::ZERO;
        let summary = event_batcher::run(config).await.unwrap();
        let Outcome::Stopped {
            cause,
            rolled_back_cleanly,
            ..
        } = &summary.outcome
        else {
            panic!("expected a stopped run:\n{summary}");
        };
        assert!(cause.starts_with("batch 3: injected failure"), "{summary}");
        assert!(rolled_back_cleanly, "{summary}");
        assert_eq!(summary.write_retries, 2, "{summary}");
        assert_eq!(summary.batches_rolled_back, 1, "{summary}");
        // Three attempts, each wrote the first half and had it deleted.
        assert_eq!(summary.failed_batches[0].rows_deleted, 150, "{summary}");
        assert_eq!(summary.acknowledged, 200, "{summary}");
        assert!(summary.check.holds, "{summary}");
        let db = Db::open(&db.url).await;
        assert_eq!(db.ids("events").await, common::ids(9, 1, 200));
        db.close().await;
    })
    .await;
}

/// Stop mode at `--concurrency 4`: the failed batch and the batches in flight beside it
/// are rolled back (and listed), every committed batch stays whole, and the summary
/// matches the database.
#[tokio::test]
async fn a_failure_at_concurrency_4_stops_with_the_table_exact() {
    common::within(async {
        let db = TempSqlite::new();
        let mut config = failing(
            synthetic(&db.url, "events", 3000, 100, 10),
            5,
            OnFailure::Stop,
        );
        config.concurrency = 4;
        let summary = event_batcher::run(config).await.unwrap();
        let Outcome::Stopped { cause, .. } = &summary.outcome else {
            panic!("expected a stopped run:\n{summary}");
        };
        // The first failure in time is the cause. That is batch 5 or a later multiple of 5:
        // with four writers (and SQLite taking one write transaction at a time) batch 5 may
        // still be waiting for the database when a later failing batch fails.
        let failed: u64 = cause
            .strip_prefix("batch ")
            .and_then(|rest| rest.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no batch number in the cause:\n{summary}"));
        assert!(
            failed.is_multiple_of(5) && cause.contains(": injected failure"),
            "{summary}"
        );
        assert!(
            summary.failed_batches.iter().any(|b| b.seq == failed),
            "{summary}"
        );
        assert!(summary.check.holds, "{summary}");
        assert_eq!(summary.exit_code(), 1);
        let db = Db::open(&db.url).await;
        let batches = db.batches("events", summary.run_id).await;
        // Every batch in the table is whole; no batch that the summary lists as rolled back
        // (the failed one, and those it stopped in flight) left a row.
        assert!(batches.values().all(|b| b.0 == 100), "{summary}");
        assert_eq!(batches.len() as u64, summary.batches.total(), "{summary}");
        for failed in &summary.failed_batches {
            assert!(!batches.contains_key(&(failed.seq as i64)), "{summary}");
        }
        let rows: u64 = batches.values().map(|b| b.0).sum();
        assert_eq!(rows, summary.acknowledged, "{summary}");
        db.close().await;
    })
    .await;
}

/// Events of exactly known encoded sizes: `--max-batch-bytes` closes a batch before the
/// event that would push it past the cap, and writes an event larger than the cap alone.
#[tokio::test]
async fn max_batch_bytes_caps_each_batch_by_encoded_size() {
    common::within(async {
        let db = TempSqlite::new();
        let event = |n: usize, pad: usize| Event {
            id: format!("e{n:03}"),
            tenant: "t".into(),
            ts: 1,
            payload: serde_json::value::to_raw_value(
                &serde_json::json!({ "pad": "x".repeat(pad) }),
            )
            .unwrap(),
        };
        // Ten events of 100 bytes, then one of 500, then two of 100.
        let base = encoded_len(&event(0, 0));
        let mut events: Vec<Event> = (0..10).map(|n| event(n, 100 - base)).collect();
        events.push(event(10, 500 - base));
        events.extend((11..13).map(|n| event(n, 100 - base)));
        let mut text = String::new();
        for event in &events {
            let line = serde_json::to_string(event).unwrap();
            assert_eq!(line.len(), encoded_len(event));
            text.push_str(&line);
            text.push('\n');
        }
        assert!(events[..10].iter().all(|e| encoded_len(e) == 100));
        let path = db.dir.path().join("events.ndjson");
        std::fs::write(&path, text).unwrap();

        let mut config = synthetic(&db.url, "events", 0, 500, 1);
        config.source = SourceSpec::Ndjson(Input::File(path));
        config.max_batch_bytes = Some(350);
        let summary = event_batcher::run(config).await.unwrap();
        assert_eq!(summary.outcome, Outcome::Finished, "{summary}");
        assert!(summary.check.holds, "{summary}");
        // 3 + 3 + 3 (each closed by the next event's weight), 1 (closed by the oversized
        // event), the oversized one alone, then the last two at the end.
        assert_eq!(summary.batches.weight, 5, "{summary}");
        assert_eq!(summary.batches.end, 1, "{summary}");
        assert_eq!(summary.batches.total(), 6, "{summary}");
        let db = Db::open(&db.url).await;
        let sizes: Vec<u64> = db
            .batches("events", summary.run_id)
            .await
            .values()
            .map(|b| b.0)
            .collect();
        assert_eq!(sizes, [3, 3, 3, 1, 1, 2]);
        assert_eq!(db.ids("events").await.len(), 13);
        db.close().await;
    })
    .await;
}

/// `--per-tenant`: every batch holds one tenant's events; `--max-open-tenants 2` (of 8
/// tenants) evicts, and still every batch holds one tenant. The summary's tenants add up.
#[tokio::test]
async fn per_tenant_batches_hold_one_tenant_each() {
    common::within(async {
        for max_open in [None, Some(2)] {
            let db = TempSqlite::new();
            let mut config = synthetic(&db.url, "events", 2000, 50, 11);
            config.per_tenant = true;
            config.max_open_tenants = max_open;
            let summary = event_batcher::run(config).await.unwrap();
            assert_eq!(summary.outcome, Outcome::Finished, "{summary}");
            assert!(summary.check.holds, "{summary}");
            assert_eq!(summary.acknowledged, 2000);
            match max_open {
                // Without a bound, 8 open batches: only size and end flushes.
                None => {
                    assert_eq!(summary.batches.eviction, 0, "{summary}");
                    assert_eq!(summary.batches.end, 8, "{summary}");
                }
                Some(_) => {
                    assert!(summary.batches.eviction > 0, "{summary}");
                    assert!(summary.batches.end <= 2, "{summary}");
                }
            }
            assert_eq!(summary.tenants, 8, "{summary}");
            assert_eq!(summary.top_tenants.len(), 5, "{summary}");
            assert!(
                summary.top_tenants.windows(2).all(|w| w[0].1 >= w[1].1),
                "{summary}"
            );
            let db = Db::open(&db.url).await;
            let batches = db.batches("events", summary.run_id).await;
            assert_eq!(batches.len() as u64, summary.batches.total(), "{summary}");
            assert!(batches.values().all(|(_, tenants)| tenants.len() == 1));
            // The top tenants' counts are the table's.
            for (tenant, events) in &summary.top_tenants {
                let stored: u64 = batches
                    .values()
                    .filter(|(_, tenants)| tenants.contains(tenant))
                    .map(|(rows, _)| rows)
                    .sum();
                assert_eq!(stored, *events, "{tenant}: {summary}");
            }
            db.close().await;
        }
    })
    .await;
}

/// The binary with the new flags: a concurrent, retrying, failure-injected run exits 0,
/// and its summary lines report the flush reasons, the batch ages, the tenants and the
/// retries; bad values are refused with exit code 2.
#[test]
fn the_binary_takes_the_new_flags_and_reports_them() {
    let db = TempSqlite::new();
    let args = [
        "--database",
        db.url.as_str(),
        "--events",
        "3000",
        "--max-batch",
        "100",
        "--max-batch-bytes",
        "20000",
        "--concurrency",
        "4",
        "--write-retries",
        "1",
        "--write-backoff",
        "0",
        "--fail-every",
        "5",
        "--fail-attempts",
        "1",
        "-q",
    ];
    let output = run_binary(db.dir.path(), &args, None);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        summary_value(&stdout, "events acknowledged"),
        "3000 (3000 new rows, 0 already present)"
    );
    assert_eq!(
        summary_value(&stdout, "write retries").split(' ').next(),
        Some("6")
    );
    let written = summary_value(&stdout, "batches written");
    assert!(
        written.contains(" weight ") && written.contains(" eviction 0"),
        "{written}"
    );
    assert!(
        summary_value(&stdout, "batch age").starts_with("p50 "),
        "{stdout}"
    );
    assert!(
        summary_value(&stdout, "top tenants").ends_with("(events; 8 tenant(s))"),
        "{stdout}"
    );
    assert!(
        summary_value(&stdout, "consistency check").starts_with("OK"),
        "{stdout}"
    );

    for bad in [
        &["--concurrency", "0"][..],
        &["--max-batch-bytes", "0"],
        &["--max-open-tenants", "3"],
        &["--fail-attempts", "0"],
    ] {
        let output = run_binary(db.dir.path(), bad, None);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{bad:?}: {:?}",
            texts(&output)
        );
    }
}

/// A count that must be positive, given as 0: the error names the flag and says "must be
/// at least 1" (not clap's "0 is not in 1..18446744073709551615"); a non-number says a whole
/// number is expected. Exit code 2, nothing written.
#[test]
fn a_zero_count_says_the_flag_must_be_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    for flag in [
        "--max-batch",
        "--concurrency",
        "--max-batch-bytes",
        "--rollback-attempts",
        "--fail-every",
        "--max-ack-pending",
    ] {
        for (value, reason) in [
            ("0", "must be at least 1"),
            ("x", "expected a whole number"),
        ] {
            let output = run_binary(dir.path(), &[flag, value], None);
            let (stdout, stderr) = texts(&output);
            assert_eq!(
                output.status.code(),
                Some(2),
                "{flag} {value}: {stdout}\n{stderr}"
            );
            let expected = format!("invalid value '{value}' for '{flag} <N>': {reason}");
            assert!(stderr.contains(&expected), "{flag} {value}: {stderr}");
            assert!(!stderr.contains("18446744073709551615"), "{stderr}");
        }
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A duration without a unit (`--flush-every 2`) is refused, not read as seconds: the error
/// shows how to write it. `0` needs no unit; `2s` and `500ms` are accepted.
#[test]
fn a_duration_needs_a_unit() {
    let dir = tempfile::tempdir().unwrap();
    for flag in ["--flush-every", "--write-backoff", "--connect-timeout"] {
        let output = run_binary(dir.path(), &[flag, "2"], None);
        let (stdout, stderr) = texts(&output);
        assert_eq!(output.status.code(), Some(2), "{flag}: {stdout}\n{stderr}");
        let expected = format!(
            "invalid value '2' for '{flag} <DURATION>': a duration needs a unit: write 2s for \
             seconds or 2ms for milliseconds"
        );
        assert!(stderr.contains(&expected), "{flag}: {stderr}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let db = TempSqlite::new();
    for (flag, value) in [
        ("--flush-every", "500ms"),
        ("--flush-every", "2s"),
        ("--write-backoff", "0"),
    ] {
        let args = ["--database", &db.url, "--events", "10", flag, value, "-q"];
        let output = run_binary(db.dir.path(), &args, None);
        let (stdout, stderr) = texts(&output);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{flag} {value}: {stdout}\n{stderr}"
        );
    }
}
