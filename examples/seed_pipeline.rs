//! Events in, batches of up to 500 (or whatever arrived within 2 s) out, each batch written
//! to SQLite and undone if its write fails halfway.
//!
//! A batch is written in two parts, each its own transaction (as a batch too large for one
//! transaction, or spread over two systems, would be): the compensation registered before
//! the first part is what makes the batch all-or-nothing.
//!
//! Run: `cargo run --example seed_pipeline`

use std::time::Duration;

use result_stream::{Cause, CompensationScope, ResultStreamExt};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, Clone)]
struct Event {
    id: i64,
    amount: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("events.db"))
        .create_if_missing(true);
    let pool = SqlitePool::connect_with(options).await?;
    sqlx::query(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, batch INTEGER NOT NULL,
                              amount INTEGER NOT NULL CHECK (amount >= 0))",
    )
    .execute(&pool)
    .await?;

    // 1,050 events arrive at once, then none for 3 s. Event 1,030 has an amount the table
    // refuses.
    let (tx, rx) = mpsc::channel::<Result<Event, sqlx::Error>>(100);
    tokio::spawn(async move {
        for id in 0..1_050 {
            let amount = if id == 1_030 { -5 } else { 10 };
            if tx.send(Ok(Event { id, amount })).await.is_err() {
                return; // the pipeline stopped
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    });

    let mut batch_no = 0;
    let result = ReceiverStream::new(rx)
        .chunks_timeout_result(500, Duration::from_secs(2))
        .with_batch_info()
        .for_each_compensated(CompensationScope::new(), |(batch, info), scope| {
            batch_no += 1;
            let (pool, no) = (pool.clone(), batch_no);
            println!(
                "batch {no}: {} events, closed by {:?} after {:.1?}",
                batch.len(),
                info.reason(),
                info.age()
            );
            async move {
                // Registered before the first write: if anything below fails, it runs.
                let undo = pool.clone();
                scope.register(move || delete_batch(undo.clone(), no));
                let (first, rest) = batch.split_at(batch.len() / 2);
                insert(&pool, no, first).await?; // committed: the batch is now partly written
                insert(&pool, no, rest).await
            }
        })
        .await;

    let error = result.expect_err("batch 3 holds an event the table refuses");
    println!("the run stopped: {}; {}", error.cause(), error.report());
    assert!(matches!(
        error.cause(),
        Cause::Handler(sqlx::Error::Database(_))
    ));
    assert!(error.is_rolled_back_cleanly());

    let count = |sql| sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool);
    let rows = count("SELECT COUNT(*) FROM events").await?;
    let of_batch_3 = count("SELECT COUNT(*) FROM events WHERE batch = 3").await?;
    println!("rows in the table: {rows} (batches 1 and 2); of batch 3: {of_batch_3}");
    assert_eq!((rows, of_batch_3), (1_000, 0));
    Ok(())
}

/// Writes `events` in one transaction: all of them, or none.
async fn insert(pool: &SqlitePool, batch: i64, events: &[Event]) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    for event in events {
        sqlx::query("INSERT INTO events (id, batch, amount) VALUES (?, ?, ?)")
            .bind(event.id)
            .bind(batch)
            .bind(event.amount)
            .execute(&mut *tx)
            .await?;
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
