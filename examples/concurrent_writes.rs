//! Four batches written at once; a failed write is undone and retried; a batch that still
//! fails is undone alone and its events go to a dead-letter file, while the run goes on.
//!
//! Run: `cargo run --example concurrent_writes`

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{TryStreamExt, stream};
use result_stream::{Backoff, CompensationScope, ResultStreamExt, RetryPolicy};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};

type Event = (i64, i64); // (id, amount)

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("events.db"))
        .create_if_missing(true); // SQLite has one writer: the others wait (5 s at most)
    let pool = SqlitePool::connect_with(options).await?;
    let table = "CREATE TABLE events (id INTEGER PRIMARY KEY, batch INTEGER NOT NULL, \
                 amount INTEGER NOT NULL CHECK (amount >= 0))";
    sqlx::query(table).execute(&pool).await?;

    // 2,000 events in batches of 100. Batch 4 loses its connection on its first attempt;
    // batch 7 holds an amount the table refuses, so it fails on every attempt.
    let events = (0..2_000).map(|id| Ok((id, if id == 650 { -5 } else { 10 })));
    // The events of a failed attempt, for the dead-letter file if the batch is skipped.
    let failed: Arc<Mutex<HashMap<i64, Vec<Event>>>> = Arc::default();
    let failed_attempts = failed.clone();
    let dead_letters = dir.path().join("dead-letters.ndjson");
    let (path, backoff) = (
        dead_letters.clone(),
        Backoff::Fixed(Duration::from_millis(50)),
    );

    let done = stream::iter(events)
        .chunks_timeout_result(100, Duration::from_secs(2))
        .map_ok({
            let mut next = 0;
            move |batch| {
                next += 1; // the batches are numbered from 1
                (next, batch)
            }
        })
        .for_each_compensated(CompensationScope::new(), |(no, batch), scope| {
            let (pool, failed) = (pool.clone(), failed_attempts.clone());
            let drop_connection = no == 4 && !failed.lock().unwrap().contains_key(&no);
            async move {
                let undo = pool.clone();
                scope.register(move || delete_batch(undo.clone(), no));
                let result = write_batch(&pool, no, &batch, drop_connection).await;
                if let Err(error) = &result {
                    println!("batch {no}: attempt failed: {error}");
                    failed.lock().unwrap().insert(no, batch);
                }
                result
            }
        })
        .concurrency(4)
        .retry(RetryPolicy::new().attempts(3).backoff(backoff))
        .skip_failed_items(move |index, error| {
            let no = index as i64 + 1;
            let events = failed.lock().unwrap().remove(&no).unwrap_or_default();
            dead_letter(&path, &events).expect("the dead-letter file is writable");
            let (cause, report, n) = (error.cause(), error.report(), events.len());
            println!("batch {no}: skipped ({cause}; {report}), {n} events dead-lettered");
        })
        .await?;

    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&pool)
        .await?;
    let dead = std::fs::read_to_string(&dead_letters)?;
    let (items, skipped, dead_count) = (done.items(), done.skipped(), dead.lines().count());
    println!("{items} batches written, {skipped} skipped: {rows} rows, {dead_count} dead letters");
    assert_eq!((items, skipped, rows, dead_count), (19, 1, 1_900, 100)); // batch 7: none stored
    assert!(dead.starts_with(r#"{"id":600,"amount":10}"#)); // and all dead-lettered
    Ok(())
}

/// Writes a batch in two parts, each its own transaction; `fail` fails it after the first.
async fn write_batch(pool: &SqlitePool, no: i64, batch: &[Event], fail: bool) -> sqlx::Result<()> {
    for part in batch.chunks(batch.len().div_ceil(2)) {
        let mut tx = pool.begin().await?;
        for (id, amount) in part {
            let sql = "INSERT INTO events (id, batch, amount) VALUES (?, ?, ?)";
            let insert = sqlx::query(sql).bind(id).bind(no).bind(amount);
            insert.execute(&mut *tx).await?;
        }
        tx.commit().await?; // this part is written for good
        if fail {
            return Err(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()));
        }
    }
    Ok(())
}

/// Appends `events` to the dead-letter file, one JSON object per line.
fn dead_letter(path: &Path, events: &[Event]) -> std::io::Result<()> {
    let mut file = File::options().create(true).append(true).open(path)?;
    for (id, amount) in events {
        writeln!(file, r#"{{"id":{id},"amount":{amount}}}"#)?;
    }
    Ok(())
}

/// The compensation: deletes what batch `no` wrote. Idempotent, so it may be retried.
async fn delete_batch(pool: SqlitePool, no: i64) -> sqlx::Result<()> {
    let delete = sqlx::query("DELETE FROM events WHERE batch = ?").bind(no);
    let deleted = delete.execute(&pool).await?.rows_affected();
    println!("batch {no}: rolled back, {deleted} rows deleted");
    Ok(())
}
