//! Ctrl-C cancels the pipeline through a `CancellationToken`: the batch being written is
//! dropped at once and its compensation deletes what it had written; the batches committed
//! before it stay.
//!
//! Run: `cargo run --example graceful_shutdown`, then press Ctrl-C. Unattended (Unix):
//! `cargo run --example graceful_shutdown -- --interrupt-self` sends itself SIGINT, as
//! Ctrl-C does, while batch 3 is half written.

use std::process::Command;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures::stream;
use result_stream::{CancellationToken, Cause, CompensationScope, ResultStreamExt};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let interrupt_self = std::env::args().any(|arg| arg == "--interrupt-self");
    let dir = tempfile::tempdir()?;
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("events.db"))
        .create_if_missing(true);
    let pool = SqlitePool::connect_with(options).await?;
    sqlx::query("CREATE TABLE events (id INTEGER PRIMARY KEY, batch INTEGER NOT NULL)")
        .execute(&pool)
        .await?;

    let cancel = CancellationToken::new();
    tokio::spawn({
        let cancel = cancel.clone();
        async move {
            tokio::signal::ctrl_c()
                .await
                .expect("Ctrl-C can be listened for");
            println!("Ctrl-C: cancelling the run");
            cancel.cancel();
        }
    });

    // An endless source, in batches of 100; each batch takes a second to write.
    let (mut started, committed) = (0, AtomicI64::new(0));
    let result = stream::iter((0..).map(Ok::<i64, sqlx::Error>))
        .chunks_timeout_result(100, Duration::from_secs(2))
        .for_each_compensated(CompensationScope::new(), |batch, scope| {
            started += 1;
            let (pool, no, committed) = (pool.clone(), started, &committed);
            async move {
                let undo = pool.clone();
                scope.register(move || delete_batch(undo.clone(), no));
                let (first, rest) = batch.split_at(batch.len() / 2);
                insert(&pool, no, first).await?;
                println!("batch {no}: first half written");
                if no == 3 && interrupt_self {
                    send_sigint_to_self().await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await; // a slow sink
                insert(&pool, no, rest).await?;
                println!("batch {no}: committed");
                committed.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .with_cancellation(cancel)
        .await;

    let error = result.expect_err("the run ends only when cancelled");
    println!("the run stopped: {}; {}", error.cause(), error.report());
    assert!(matches!(error.cause(), Cause::Cancelled) && error.is_rolled_back_cleanly());
    // No batch is left half written: each one in the table is whole, the one in flight is gone.
    let committed = committed.load(Ordering::SeqCst);
    let sql = "SELECT COUNT(*) FROM events GROUP BY batch HAVING COUNT(*) = 100";
    let whole_batches = sqlx::query_scalar::<_, i64>(sql)
        .fetch_all(&pool)
        .await?
        .len();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&pool)
        .await?;
    println!("{committed} batches committed, {rows} rows; batch {started} was in flight");
    assert_eq!((whole_batches as i64, rows), (committed, committed * 100));
    if interrupt_self {
        assert_eq!((committed, started), (2, 3)); // batch 3 was half written, then undone
    }
    Ok(())
}

/// Writes `ids` in one transaction: all of them, or none.
async fn insert(pool: &SqlitePool, batch: i64, ids: &[i64]) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    for id in ids {
        let insert = sqlx::query("INSERT INTO events (id, batch) VALUES (?, ?)");
        insert.bind(id).bind(batch).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// The compensation: deletes what batch `no` wrote. Idempotent, so it may be retried.
async fn delete_batch(pool: SqlitePool, no: i64) -> sqlx::Result<()> {
    let delete = sqlx::query("DELETE FROM events WHERE batch = ?").bind(no);
    let deleted = delete.execute(&pool).await?.rows_affected();
    println!("batch {no}: rolled back, {deleted} rows deleted");
    Ok(())
}

/// Sends this process SIGINT, as Ctrl-C in its terminal does (with `kill`, on Unix).
async fn send_sigint_to_self() {
    let pid = std::process::id().to_string();
    let kill = move || Command::new("kill").args(["-INT", &pid]).status();
    let status = tokio::task::spawn_blocking(kill).await.unwrap();
    assert!(
        status.is_ok_and(|status| status.success()),
        "kill -INT failed"
    );
}
