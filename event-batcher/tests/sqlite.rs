//! The pipeline end to end against SQLite (a temporary file per test): through the library
//! (`event_batcher::run`, checking the returned summary) and through the binary (exit codes,
//! stdout, stderr), always reading the database back directly.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Db, TempSqlite, failing, run_binary, scenarios, summary_value, synthetic, texts};
use event_batcher::Pipeline;
use event_batcher::pipeline::OnFailure;
use event_batcher::report::Outcome;
use event_batcher::source::{AckHandle, Position, Record, RecordBody, SourceSpec, SyntheticSpec};
use futures::StreamExt;
use futures::future::BoxFuture;
use result_stream::BoxError;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn clean_run() {
    common::within(async {
        let db = TempSqlite::new();
        scenarios::clean_run(&db.url, "events").await;
    })
    .await;
}

#[tokio::test]
async fn fail_every_with_skip_batch_leaves_no_row_of_a_failed_batch() {
    common::within(async {
        let db = TempSqlite::new();
        scenarios::rollback_skip_batch(&db.url, "events").await;
    })
    .await;
}

#[tokio::test]
async fn fail_every_with_stop_rolls_back_and_stops() {
    common::within(async {
        let db = TempSqlite::new();
        scenarios::rollback_stop(&db.url, "events").await;
    })
    .await;
}

#[tokio::test]
async fn rerun_is_idempotent_and_rollback_spares_earlier_rows() {
    common::within(async {
        let db = TempSqlite::new();
        scenarios::rerun_idempotent(&db.url, "events").await;
    })
    .await;
}

#[test]
fn default_command_writes_events_db_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_binary(dir.path(), &[], None);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(dir.path().join("events.db").exists());
    assert_eq!(summary_value(&stdout, "events read"), "10000");
    assert_eq!(summary_value(&stdout, "invalid lines"), "0");
    assert_eq!(
        summary_value(&stdout, "events acknowledged"),
        "10000 (10000 new rows, 0 already present)"
    );
    assert_eq!(
        summary_value(&stdout, "batches written"),
        "20 (size 20, weight 0, deadline 0, end 0, eviction 0)"
    );
    assert_eq!(
        summary_value(&stdout, "batches rolled back"),
        "0 (0 events)"
    );
    assert!(summary_value(&stdout, "rows in database").starts_with("10000 in table events"));
    assert!(summary_value(&stdout, "consistency check").starts_with("OK"));
}

#[test]
fn stop_mode_exits_1_with_a_one_line_error_and_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--events", "300", "--max-batch", "100", "--fail-every", "2"];
    let output = run_binary(dir.path(), &args, None);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].starts_with(
            "event-batcher: error: run stopped: batch 2: injected failure after writing the first 50 of 100 events; rolled back cleanly"
        ),
        "{stderr}"
    );
    assert_eq!(
        summary_value(&stdout, "batches rolled back"),
        "1 (100 events)"
    );
    assert!(summary_value(&stdout, "rows in database").starts_with("100 in table events"));
    assert!(summary_value(&stdout, "consistency check").starts_with("OK"));
}

#[test]
fn skip_batch_mode_exits_0_and_writes_the_dead_letter_file() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--events",
        "1000",
        "--max-batch",
        "100",
        "--fail-every",
        "4",
        "--on-failure",
        "skip-batch",
        "--dead-letter",
        "dead.ndjson",
    ];
    let output = run_binary(dir.path(), &args, None);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        summary_value(&stdout, "batches rolled back"),
        "2 (200 events)"
    );
    // The dead letters are the events of batches 4 and 8, replayable as input.
    let dead = std::fs::read_to_string(dir.path().join("dead.ndjson")).unwrap();
    let dead_ids: Vec<String> = dead
        .lines()
        .map(|l| {
            serde_json::from_str::<event_batcher::event::Event>(l)
                .unwrap()
                .id
        })
        .collect();
    let expected: Vec<String> = common::ids(42, 301, 400)
        .into_iter()
        .chain(common::ids(42, 701, 800))
        .collect();
    assert_eq!(dead_ids, expected);
    let replay = run_binary(dir.path(), &["--input", "dead.ndjson"], None);
    let (stdout, stderr) = texts(&replay);
    assert_eq!(replay.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        summary_value(&stdout, "events acknowledged"),
        "200 (200 new rows, 0 already present)"
    );
    assert!(summary_value(&stdout, "rows in database").starts_with("1000 in table events"));
}

const NDJSON: &str = r#"{"id":"n1","tenant":"acme","ts":1714564800000,"payload":{"k":1}}
this is not json
{"id":"n2","tenant":"acme","ts":1714564800001,"payload":null}
{"id":"n3","tenant":"globex","ts":1714564800002,"payload":[1,2]}
{"id":"n4","tenant":"","ts":1,"payload":1}
{"id":"n5","tenant":"hooli","ts":3,"payload":"x"}

{"id":"n6","tenant":"hooli","ts":4,"payload":{},"extra":true}
{"id":"n7","tenant":"hooli","ts":5,"payload":{}}
"#;

#[test]
fn invalid_ndjson_lines_are_counted_reported_by_line_and_written_to_rejects() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.ndjson"), NDJSON).unwrap();
    let args = [
        "--input",
        "in.ndjson",
        "--rejects",
        "rejects.ndjson",
        "--max-batch",
        "2",
    ];
    let output = run_binary(dir.path(), &args, None);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(summary_value(&stdout, "events read"), "9");
    assert_eq!(summary_value(&stdout, "invalid lines"), "4");
    for (line, reason) in [
        (2, "invalid event"),
        (5, "field `tenant` is empty"),
        (7, "empty line"),
        (8, "invalid event: unknown field `extra`"),
    ] {
        let reported = format!("event-batcher: invalid line {line}: {reason}");
        assert!(stderr.contains(&reported), "{reported:?} not in:\n{stderr}");
        assert!(
            stdout.contains(&format!("    line {line}: {reason}")),
            "{stdout}"
        );
    }
    let rejects = std::fs::read_to_string(dir.path().join("rejects.ndjson")).unwrap();
    let lines: Vec<u64> = rejects
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["line"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(lines, [2, 5, 7, 8]);
    assert!(rejects.contains(r#""raw":"this is not json""#), "{rejects}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ids = runtime.block_on(async {
        let url = format!("sqlite://{}", dir.path().join("events.db").display());
        let db = Db::open(&url).await;
        let ids = db.ids("events").await;
        db.close().await;
        ids
    });
    let expected: std::collections::BTreeSet<String> =
        ["n1", "n2", "n3", "n5", "n7"].map(String::from).into();
    assert_eq!(ids, expected);
}

#[test]
fn strict_stops_at_the_first_invalid_line_read_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_binary(
        dir.path(),
        &["--input", "-", "--strict"],
        Some(NDJSON.as_bytes()),
    );
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("event-batcher: error: run stopped: invalid input at line 2:"),
        "{stderr}"
    );
    assert!(stderr.contains("(--strict)"), "{stderr}");
    // The batch formed before the invalid line (line 1) is written, nothing after it.
    assert_eq!(summary_value(&stdout, "events read"), "2");
    assert_eq!(
        summary_value(&stdout, "events acknowledged"),
        "1 (1 new rows, 0 already present)"
    );
    assert!(summary_value(&stdout, "batches written").contains("before an input error 1"));
    assert!(summary_value(&stdout, "rows in database").starts_with("1 in table events"));
}

#[test]
fn setup_errors_exit_2_with_one_line_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["--database", "mysql://localhost/db"],
            "bad database URL mysql://localhost/db",
        ),
        (
            // Port 1: nothing listens there.
            &["--database", "postgres://postgres:secret@127.0.0.1:1/test"],
            "cannot connect to postgres://postgres:***@127.0.0.1:1/test",
        ),
        (
            &["--database", "sqlite:///nonexistent-dir/x/events.db"],
            "cannot create the SQLite file /nonexistent-dir/x/events.db: its directory \
             /nonexistent-dir/x does not exist",
        ),
        (
            &["--input", "missing.ndjson"],
            "cannot read input missing.ndjson",
        ),
        (&["--table", "events; DROP TABLE x"], "invalid table name"),
    ];
    for (args, expected) in cases {
        let output = run_binary(dir.path(), args, None);
        let (stdout, stderr) = texts(&output);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {stdout}\n{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("event-batcher: error: {expected}")),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("secret"), "{stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
    assert!(!dir.path().join("events.db").exists());
}

#[test]
fn plain_progress_lines_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--events", "600", "--rate", "200", "--flush-every", "200ms"];
    let output = run_binary(dir.path(), &args, None);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    // 600 events at 200/s take 3 s: at least one line every 2 s, no terminal escapes.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("progress: "))
        .collect();
    assert!(!lines.is_empty(), "{stderr}");
    assert!(lines[0].contains("events read"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    // At 200 events/s a batch never fills up to 500: the deadline flushes them.
    let deadline: u64 = summary_value(&stdout, "batches written")
        .split("deadline ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .expect("a deadline count");
    // (How many depends on how long each write takes on a loaded machine: the source catches
    // up after a slow write and fills the next batch faster.)
    assert!(deadline >= 1, "{stdout}");
}

#[tokio::test]
async fn compensation_retries_until_it_succeeds() {
    common::within(async {
        let db = TempSqlite::new();
        let mut config = failing(
            synthetic(&db.url, "events", 300, 100, 5),
            2,
            OnFailure::SkipBatch,
        );
        config.rollback.attempts = 3;
        config.faults.fail_rollback_attempts = 2;
        let summary = event_batcher::run(config).await.unwrap();
        assert!(summary.is_success(), "{summary}");
        let batch = &summary.failed_batches[0];
        assert!(batch.rolled_back_cleanly, "{summary}");
        assert_eq!(batch.rows_deleted, 50);
        assert_eq!(summary.acknowledged, 200);
    })
    .await;
}

#[tokio::test]
async fn an_incomplete_rollback_stops_the_run_and_fails_the_check() {
    common::within(async {
        for policy in [OnFailure::Stop, OnFailure::SkipBatch] {
            let db = TempSqlite::new();
            let mut config = failing(synthetic(&db.url, "events", 300, 100, 6), 2, policy);
            config.rollback.attempts = 2;
            config.faults.fail_rollback_attempts = 5;
            let summary = event_batcher::run(config).await.unwrap();
            let Outcome::Stopped {
                rolled_back_cleanly,
                ..
            } = summary.outcome
            else {
                panic!("{policy:?}: expected a stopped run:\n{summary}");
            };
            // Both modes report the incomplete rollback (skip-batch mode did it itself).
            assert!(!rolled_back_cleanly, "{policy:?}: {summary}");
            assert!(
                summary
                    .outcome
                    .to_string()
                    .contains("not rolled back cleanly")
                    || summary
                        .outcome
                        .to_string()
                        .contains("failed after 2 attempt(s)"),
                "{summary}"
            );
            let batch = &summary.failed_batches[0];
            assert!(!batch.rolled_back_cleanly, "{summary}");
            assert!(
                batch.rollback.contains("failed after 2 attempt(s)"),
                "{summary}"
            );
            // The partial write is still there, and the check says so.
            assert!(!summary.check.holds, "{summary}");
            assert!(summary.check.detail.contains("left 50 row(s)"), "{summary}");
            assert_eq!(summary.exit_code(), 1);
            assert_eq!(summary.rows.as_ref().map(|r| r.total), Ok(150));
        }
    })
    .await;
}

#[tokio::test]
async fn deadline_flushes_a_slow_source() {
    common::within(async {
        let db = TempSqlite::new();
        let mut config = synthetic(&db.url, "events", 10, 1000, 7);
        config.source = SourceSpec::Synthetic(SyntheticSpec {
            events: 10,
            rate: 20.0,
            seed: 7,
        });
        config.flush_every = Duration::from_millis(100);
        let summary = event_batcher::run(config).await.unwrap();
        assert!(summary.is_success(), "{summary}");
        assert_eq!(summary.acknowledged, 10);
        // One event every 50 ms, at most 100 ms per batch: deadline flushes (several, unless
        // a slow write lets the source fall behind and catch up at once), no full batch.
        assert!(summary.batches.deadline >= 1, "{summary}");
        assert_eq!(summary.batches.size, 0);
    })
    .await;
}

/// A settlement of one record: (id, what, rows with that id in the database at that moment).
type Settlements = Arc<Mutex<Vec<(String, &'static str, i64)>>>;

/// Records each settlement and how many rows the event's id had in the database then.
#[derive(Debug)]
struct RecordingAck {
    id: String,
    pool: sqlx::SqlitePool,
    log: Settlements,
}

impl RecordingAck {
    fn settle(self: Box<Self>, what: &'static str) -> BoxFuture<'static, Result<(), BoxError>> {
        Box::pin(async move {
            let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE id = ?")
                .bind(&self.id)
                .fetch_one(&self.pool)
                .await?;
            self.log.lock().unwrap().push((self.id, what, rows));
            Ok(())
        })
    }
}

impl AckHandle for RecordingAck {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.settle("ack")
    }
    fn nak(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.settle("nak")
    }
    fn reject(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.settle("reject")
    }
    fn abandon(self: Box<Self>) {
        self.log.lock().unwrap().push((self.id, "abandon", -1));
    }
}

/// `n` valid JSON records `m01`… whose hooks record their settlement in `log`.
fn recorded_records(
    n: u64,
    pool: &sqlx::SqlitePool,
    log: &Settlements,
) -> event_batcher::source::RecordStream {
    let records: Vec<_> = (1..=n)
        .map(|n| {
            let id = format!("m{n:02}");
            let line = format!(r#"{{"id":"{id}","tenant":"t","ts":{n},"payload":{n}}}"#);
            let ack = RecordingAck {
                id,
                pool: pool.clone(),
                log: log.clone(),
            };
            Ok(Record {
                position: Position::Sequence(n),
                body: RecordBody::Json(line.into_bytes()),
                ack: Some(Box::new(ack) as _),
            })
        })
        .collect();
    futures::stream::iter(records).boxed()
}

/// A batch whose delete fails is not nak'ed (another consumer could ack the events against
/// rows a late delete then removes): its records are abandoned, in both failure modes.
#[tokio::test]
async fn a_failed_delete_abandons_the_records_instead_of_nacking_them() {
    common::within(async {
        for policy in [OnFailure::Stop, OnFailure::SkipBatch] {
            let db = TempSqlite::new();
            event_batcher::run(synthetic(&db.url, "events", 0, 10, 8))
                .await
                .unwrap();
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            let log: Settlements = Arc::default();
            let mut config = failing(synthetic(&db.url, "events", 0, 10, 8), 2, policy);
            config.rollback.attempts = 2;
            config.faults.fail_rollback_attempts = 2;
            let summary = Pipeline::new(config)
                .source(recorded_records(30, &pool, &log), "test broker", Some(30))
                .run()
                .await
                .unwrap();
            assert_eq!(summary.exit_code(), 1, "{policy:?}: {summary}");
            let log = log.lock().unwrap().clone();
            let count = |what: &str| log.iter().filter(|(_, w, _)| *w == what).count();
            // Batch 1 committed and acked; batch 2 failed, its delete failed: abandoned.
            assert_eq!(count("ack"), 10, "{policy:?}: {log:?}");
            assert_eq!(count("nak"), 0, "{policy:?}: {log:?}");
            assert_eq!(count("abandon"), 10, "{policy:?}: {log:?}");
            pool.close().await;
        }
    })
    .await;
}

#[tokio::test]
async fn acks_follow_commits_naks_follow_rollbacks_and_invalid_records_are_rejected() {
    common::within(async {
        let db = TempSqlite::new();
        // Create the table first, so the acks can look at it.
        event_batcher::run(synthetic(&db.url, "events", 0, 10, 8))
            .await
            .unwrap();
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();

        let log: Settlements = Arc::default();
        let records: Vec<_> = (1..=42u64)
            .map(|n| {
                let (id, body) = if n % 21 == 0 {
                    (format!("bad{n}"), b"{broken".to_vec())
                } else {
                    let id = format!("m{n:02}");
                    let line = format!(r#"{{"id":"{id}","tenant":"t","ts":{n},"payload":{n}}}"#);
                    (id, line.into_bytes())
                };
                let ack = RecordingAck {
                    id,
                    pool: pool.clone(),
                    log: log.clone(),
                };
                Ok(Record {
                    position: Position::Sequence(n),
                    body: RecordBody::Json(body),
                    ack: Some(Box::new(ack) as _),
                })
            })
            .collect();
        let source = futures::stream::iter(records).boxed();

        let config = failing(
            synthetic(&db.url, "events", 0, 10, 8),
            2,
            OnFailure::SkipBatch,
        );
        let summary = Pipeline::new(config)
            .source(source, "test broker", Some(42))
            .run()
            .await
            .unwrap();
        assert!(summary.is_success(), "{summary}");
        assert_eq!(summary.invalid, 2);
        assert_eq!(summary.source, "test broker");
        // 40 valid events: batches 1-4 of 10; 2 and 4 fail.
        assert_eq!(summary.batches_rolled_back, 2, "{summary}");

        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 42, "every record settled exactly once: {log:?}");
        let stored = Db::open(&db.url).await.ids("events").await;
        for (id, what, rows_then) in &log {
            match *what {
                // Acked after the commit: the row is there.
                "ack" => assert!(stored.contains(id) && *rows_then == 1, "{id}: {log:?}"),
                // Nak'ed after the rollback deleted the row.
                "nak" => assert!(!stored.contains(id) && *rows_then == 0, "{id}: {log:?}"),
                "reject" => assert!(id.starts_with("bad"), "{id}"),
                other => panic!("unexpected settlement {other}"),
            }
        }
        let acked = log.iter().filter(|(_, w, _)| *w == "ack").count() as u64;
        let naked = log.iter().filter(|(_, w, _)| *w == "nak").count() as u64;
        assert_eq!(acked, summary.acknowledged);
        assert_eq!(naked, summary.events_rolled_back);
        assert_eq!((acked, naked), (20, 20));
    })
    .await;
}

#[tokio::test]
async fn cancellation_ends_the_run_with_the_committed_batches_intact() {
    common::within(async {
        let db = TempSqlite::new();
        let mut config = synthetic(&db.url, "events", 0, 100, 9);
        config.flush_every = Duration::from_secs(10);
        // 150 events, then the source cancels the run and never ends: one full batch is
        // written (the pipeline pulls nothing while a batch is being written, so it is
        // committed before the source is polled again), 50 events wait for the 10 s deadline
        // when the run is cancelled.
        let first = event_batcher::source::synthetic::stream(SyntheticSpec {
            events: 150,
            rate: 0.0,
            seed: 9,
        });
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        let cancel_after_150 =
            futures::stream::once(async move { trigger.cancel() }).filter_map(|()| async { None });
        let source = first
            .chain(cancel_after_150)
            .chain(futures::stream::pending())
            .boxed();
        let summary = Pipeline::new(config)
            .source(source, "endless", None)
            .cancellation(cancel)
            .run()
            .await
            .unwrap();
        assert!(
            matches!(
                summary.outcome,
                Outcome::Cancelled {
                    rolled_back_cleanly: true,
                    ..
                }
            ),
            "{summary}"
        );
        assert_eq!(summary.acknowledged, 100);
        assert_eq!(summary.events_not_written, 50, "{summary}");
        assert!(summary.check.holds, "{summary}");
        assert_eq!(summary.exit_code(), 1);
        let db = Db::open(&db.url).await;
        assert_eq!(db.ids("events").await, common::ids(9, 1, 100));
    })
    .await;
}

#[tokio::test]
async fn fail_rate_is_seeded_and_every_failed_batch_is_undone() {
    common::within(async {
        let mut failed_batches = Vec::new();
        for _ in 0..2 {
            let db = TempSqlite::new();
            let mut config = synthetic(&db.url, "events", 2000, 100, 10);
            config.faults.fail_rate = 0.5;
            config.on_failure = OnFailure::SkipBatch;
            let summary = event_batcher::run(config).await.unwrap();
            assert!(summary.is_success(), "{summary}");
            assert!((1..20).contains(&summary.batches_rolled_back), "{summary}");
            assert_eq!(summary.acknowledged + summary.events_rolled_back, 2000);
            let stored = Db::open(&db.url).await.ids("events").await;
            assert_eq!(stored.len() as u64, summary.acknowledged);
            for batch in &summary.failed_batches {
                assert!(!stored.contains(&batch.first_id), "{summary}");
                assert_eq!(batch.rows_deleted, 50);
            }
            failed_batches.push(
                summary
                    .failed_batches
                    .iter()
                    .map(|b| b.seq)
                    .collect::<Vec<_>>(),
            );
        }
        // The same seed fails the same batches.
        assert_eq!(failed_batches[0], failed_batches[1]);
    })
    .await;
}

#[test]
fn output_files_are_never_truncated_by_a_run_that_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let keep = "{\"id\":\"k1\",\"tenant\":\"t\",\"ts\":1,\"payload\":1}\n";
    std::fs::write(dir.path().join("dead.ndjson"), keep).unwrap();
    std::fs::write(dir.path().join("rejects.ndjson"), keep).unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--input", "dead.ndjson", "--dead-letter", "dead.ndjson"],
            "--dead-letter dead.ndjson is the --input file",
        ),
        (
            &["--input", "./dead.ndjson", "--rejects", "dead.ndjson"],
            "--rejects dead.ndjson is the --input file",
        ),
        (
            // The input cannot be read: the outputs are not touched.
            &[
                "--input",
                "missing.ndjson",
                "--rejects",
                "rejects.ndjson",
                "--dead-letter",
                "dead.ndjson",
            ],
            "cannot read input missing.ndjson",
        ),
        (&["--rollback-timeout", "0s"], "--rollback-timeout must be"),
    ];
    for (args, expected) in cases {
        let output = run_binary(dir.path(), args, None);
        let (stdout, stderr) = texts(&output);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {stdout}\n{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        for file in ["dead.ndjson", "rejects.ndjson"] {
            let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
            assert_eq!(text, keep, "{args:?} changed {file}");
        }
    }
    assert!(!dir.path().join("events.db").exists());
}

/// Deletes its event's row when acknowledged: an acknowledged event then has no row.
#[derive(Debug)]
struct DeletingAck {
    id: String,
    pool: sqlx::SqlitePool,
}

impl DeletingAck {
    fn delete(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM events WHERE id = ?")
                .bind(&self.id)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }
}

impl AckHandle for DeletingAck {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.delete()
    }
    fn nak(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.delete()
    }
    fn reject(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.delete()
    }
}

/// The check verifies in the database that every event skipped as already present has its
/// row, rather than deriving "already present" from the counts.
#[tokio::test]
async fn the_check_finds_an_acknowledged_already_present_event_without_a_row() {
    common::within(async {
        let db = TempSqlite::new();
        let first = event_batcher::run(synthetic(&db.url, "events", 20, 10, 21))
            .await
            .unwrap();
        assert!(first.is_success(), "{first}");
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        // The same 20 events again (all already present); the hook of event 3 deletes its
        // row when it is acknowledged.
        let records: Vec<_> = futures::executor::block_on_stream(
            event_batcher::source::synthetic::stream(SyntheticSpec {
                events: 20,
                rate: 0.0,
                seed: 21,
            }),
        )
        .map(|record| {
            let mut record = record.unwrap();
            if record.position == Position::Sequence(3) {
                let id = common::ids(21, 3, 3).into_iter().next().unwrap();
                record.ack = Some(Box::new(DeletingAck {
                    id,
                    pool: pool.clone(),
                }));
            }
            Ok(record)
        })
        .collect();
        let summary = Pipeline::new(synthetic(&db.url, "events", 0, 10, 21))
            .source(futures::stream::iter(records).boxed(), "rerun", Some(20))
            .run()
            .await
            .unwrap();
        assert_eq!((summary.inserted, summary.already_present), (0, 20));
        assert!(!summary.check.holds, "{summary}");
        assert!(
            summary.check.detail.contains("19 of 20 id(s)"),
            "{}",
            summary.check.detail
        );
        assert_eq!(summary.exit_code(), 1);
        pool.close().await;
    })
    .await;
}
