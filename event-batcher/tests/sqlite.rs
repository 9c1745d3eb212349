//! The pipeline end to end against SQLite (a temporary file per test) through the library
//! (`event_batcher::run`, checking the returned summary): failure modes, retries, rollbacks,
//! acknowledgements following commits, cancellation and the consistency check, always
//! reading the database back directly. (The binary's runs are in `sqlite_binary.rs`.)

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Db, TempSqlite, failing, scenarios, synthetic};
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
