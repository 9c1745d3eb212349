//! The write path's rules on both backends: a part is committed whole or not at all, a
//! re-run inserts nothing and claims nothing, the rows it found present are claimed when it
//! commits ([`Store::claim`], fencing), a batch's rollback deletes exactly its unclaimed
//! rows, a claim finds the rows that vanished before it. The PostgreSQL tests are `#[ignore]`d (run with `--ignored`
//! and `EVENT_BATCHER_POSTGRES_URL` set); each uses a table of its own, dropped afterwards.

use std::time::Duration;

use futures::FutureExt;
use sqlx::AssertSqlSafe;

use super::super::{MAX_ROWS_PER_STATEMENT, POSTGRES_MAX_ROWS_PER_STATEMENT, Pool, Store};
use crate::event::Event;

fn event(id: &str) -> Event {
    Event {
        id: id.into(),
        tenant: "t".into(),
        ts: 1,
        payload: serde_json::value::to_raw_value(&serde_json::json!({
            "text": "tab\there, newline\nhere, backslash \\ and é"
        }))
        .expect("a JSON value serialises"),
    }
}

fn events(prefix: &str, n: usize) -> Vec<Event> {
    (0..n).map(|i| event(&format!("{prefix}{i}"))).collect()
}

async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    Store::connect(&url, "events", Duration::from_secs(5))
        .await
        .unwrap()
}

/// Runs `body` on a PostgreSQL table of its own, dropped afterwards even when `body` panics.
async fn with_postgres_table<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let url = std::env::var("EVENT_BATCHER_POSTGRES_URL")
        .expect("set EVENT_BATCHER_POSTGRES_URL to run the PostgreSQL tests");
    let table = format!("store_{name}_{}", std::process::id());
    let store = Store::connect(&url, &table, Duration::from_secs(5))
        .await
        .unwrap();
    let outcome = std::panic::AssertUnwindSafe(body(store.clone()))
        .catch_unwind()
        .await;
    execute(&store, &format!("DROP TABLE {table}")).await;
    execute(&store, &format!("DROP FUNCTION IF EXISTS {table}_refuse()")).await;
    store.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn execute(store: &Store, sql: &str) {
    let query = AssertSqlSafe(sql.to_owned());
    match &store.pool {
        Pool::Sqlite(pool) => sqlx::query(query).execute(pool).await.map(drop),
        Pool::Postgres(pool) => sqlx::query(query).execute(pool).await.map(drop),
    }
    .unwrap();
}

/// Makes every insert of the id `bad` fail (a trigger raising an error).
async fn refuse_bad_id(store: &Store) {
    let table = store.table().to_owned();
    match store.backend() {
        super::super::Backend::Sqlite => {
            execute(
                store,
                &format!(
                    "CREATE TRIGGER {table}_refuse BEFORE INSERT ON {table} \
                     WHEN NEW.id = 'bad' BEGIN SELECT RAISE(ABORT, 'refused'); END"
                ),
            )
            .await;
        }
        super::super::Backend::Postgres => {
            execute(
                store,
                &format!(
                    "CREATE FUNCTION {table}_refuse() RETURNS trigger LANGUAGE plpgsql AS \
                     $$ BEGIN IF NEW.id = 'bad' THEN RAISE EXCEPTION 'refused'; END IF; \
                     RETURN NEW; END $$"
                ),
            )
            .await;
            execute(
                store,
                &format!(
                    "CREATE TRIGGER {table}_refuse BEFORE INSERT ON {table} \
                     FOR EACH ROW EXECUTE FUNCTION {table}_refuse()"
                ),
            )
            .await;
        }
    }
}

/// A part of several statements whose last statement fails leaves no row: the statements
/// before it are rolled back with it. The same part without the bad event then inserts all.
async fn a_failing_part_leaves_no_row(store: &Store, statement_rows: usize) {
    refuse_bad_id(store).await;
    let mut part = events("p", statement_rows + 5);
    part.push(event("bad"));
    let error = store.insert(1, 1, &part).await.unwrap_err().to_string();
    assert!(error.contains("refused"), "{error}");
    assert_eq!(store.count_all().await.unwrap(), 0);
    part.pop();
    let inserted = store.insert(1, 1, &part).await.unwrap();
    assert_eq!(
        (inserted.rows, inserted.skipped.len()),
        (part.len() as u64, 0)
    );
}

/// A part whose ids are all new, a re-run of it (another run), a mixed part with duplicates,
/// the batch's own rows met again, and the rollbacks.
async fn rerun_claims_and_rollback(store: &Store) {
    let first = events("a", 300);
    let inserted = store.insert(1, 1, &first).await.unwrap();
    assert_eq!((inserted.rows, inserted.skipped.len()), (300, 0));
    assert_eq!(
        store.count_batches(1, &[1], Some(false)).await.unwrap(),
        300
    );

    // A re-run (run 2) of the same events inserts nothing, claims nothing until it commits,
    // then claims every row.
    let rerun = store.insert(2, 1, &first).await.unwrap();
    assert_eq!(rerun.rows, 0);
    assert_eq!(rerun.skipped.len(), 300);
    assert_eq!(store.count_batches(1, &[1], Some(true)).await.unwrap(), 0);
    assert_eq!(store.claim(2, 1, &rerun.skipped).await.unwrap(), 0);
    assert_eq!(store.count_batches(1, &[1], Some(true)).await.unwrap(), 300);
    // So run 1's late rollback deletes none of them.
    assert_eq!(store.delete_batch(1, 1).await.unwrap(), 0);
    assert_eq!(store.count_all().await.unwrap(), 300);

    // A part mixing present ids, new ids and a new id twice: the new ones are inserted once,
    // in the events' order the first occurrence counts, the rest is skipped.
    let mixed = [
        event("a0"),
        event("n1"),
        event("n2"),
        event("n1"),
        event("a1"),
    ];
    let inserted = store.insert(3, 4, &mixed).await.unwrap();
    assert_eq!(inserted.rows, 2);
    assert_eq!(inserted.skipped, ["a0", "n1", "a1"]);
    // The batch meeting its own rows again (its second part) skips them without claiming.
    let again = store
        .insert(3, 4, &[event("n2"), event("n3")])
        .await
        .unwrap();
    assert_eq!((again.rows, &again.skipped), (1, &vec!["n2".to_owned()]));
    assert_eq!(store.count_batches(3, &[4], Some(true)).await.unwrap(), 0);
    // A claim of its own rows claims nothing.
    assert_eq!(store.claim(3, 4, &again.skipped).await.unwrap(), 0);
    assert_eq!(store.count_batches(3, &[4], Some(true)).await.unwrap(), 0);
    // Its rollback deletes exactly the three rows it inserted, once.
    assert_eq!(store.delete_batch(3, 4).await.unwrap(), 3);
    assert_eq!(store.delete_batch(3, 4).await.unwrap(), 0);
    assert_eq!(store.count_all().await.unwrap(), 300);

    // Text with tabs, newlines, backslashes and non-ASCII survives the write unchanged.
    let payload: String = match &store.pool {
        Pool::Sqlite(pool) => sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT payload FROM {} WHERE id = 'a0'",
            store.table()
        )))
        .fetch_one(pool)
        .await
        .unwrap(),
        Pool::Postgres(pool) => sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT payload FROM {} WHERE id = 'a0'",
            store.table()
        )))
        .fetch_one(pool)
        .await
        .unwrap(),
    };
    assert_eq!(payload, event("a0").payload.to_string());

    // A batch that found rows present whose owner then rolled back: the claim reports them
    // missing and claims none of those still there.
    store
        .insert(5, 1, &[event("v1"), event("v2")])
        .await
        .unwrap();
    let found = store
        .insert(6, 1, &[event("v1"), event("v2")])
        .await
        .unwrap();
    assert_eq!(found.skipped.len(), 2);
    execute(
        store,
        &format!("DELETE FROM {} WHERE id = 'v1'", store.table()),
    )
    .await;
    assert_eq!(store.claim(6, 1, &found.skipped).await.unwrap(), 1);
    assert_eq!(store.count_batches(5, &[1], Some(true)).await.unwrap(), 0);
    assert_eq!(store.delete_batch(5, 1).await.unwrap(), 1);
    assert_eq!(store.claim(6, 1, &found.skipped).await.unwrap(), 2);
}

#[tokio::test]
async fn sqlite_a_failing_part_leaves_no_row() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    a_failing_part_leaves_no_row(&store, MAX_ROWS_PER_STATEMENT).await;
    store.close().await;
}

#[tokio::test]
async fn sqlite_rerun_claims_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    rerun_claims_and_rollback(&store).await;
    store.close().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
async fn postgres_a_failing_plain_insert_leaves_no_row() {
    // All ids new: the part is one plain INSERT, refused as a whole (and not retried as an
    // upsert: the error is not a unique violation).
    with_postgres_table("plain_fails", |store| async move {
        a_failing_part_leaves_no_row(&store, 10).await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
async fn postgres_a_failing_upsert_of_several_statements_leaves_no_row() {
    // One id present: the upsert takes two statements in one transaction, the second
    // refused.
    with_postgres_table("upsert_fails", |store| async move {
        store.insert(9, 9, &[event("p0")]).await.unwrap();
        refuse_bad_id(&store).await;
        let mut part = events("p", POSTGRES_MAX_ROWS_PER_STATEMENT + 5);
        part.push(event("bad"));
        let error = store.insert(1, 1, &part).await.unwrap_err().to_string();
        assert!(error.contains("refused"), "{error}");
        assert_eq!(store.count_all().await.unwrap(), 1);
        assert_eq!(store.count_batches(9, &[9], Some(false)).await.unwrap(), 1);
        part.pop();
        let inserted = store.insert(1, 1, &part).await.unwrap();
        assert_eq!(inserted.rows, part.len() as u64 - 1);
        assert_eq!(inserted.skipped, ["p0"]);
        assert_eq!(store.count_batches(9, &[9], Some(true)).await.unwrap(), 0);
        assert_eq!(store.claim(1, 1, &inserted.skipped).await.unwrap(), 0);
        assert_eq!(store.count_batches(9, &[9], Some(true)).await.unwrap(), 1);
    })
    .await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
async fn postgres_rerun_claims_and_rollback() {
    with_postgres_table("rerun", |store| async move {
        rerun_claims_and_rollback(&store).await;
    })
    .await;
}

/// A part of several statements (`statement_rows` rows each) whose first statement is all
/// new rows and whose later statements meet present ids, with an id repeated across
/// statements: every new row is counted inserted (those of the statements before the first
/// conflict too), exactly the present ids and the repeat are skipped, in the events' order,
/// and nothing present is claimed or overwritten.
async fn later_statement_conflicts(store: &Store, statement_rows: usize) {
    let n = statement_rows * 2 + statement_rows / 2;
    // Present before the part: one id in the second statement, one at the very start of the
    // third, and one that the part does not hold.
    let in_second = format!("p{}", statement_rows + 7);
    let third_first = format!("p{}", statement_rows * 2);
    store
        .insert(
            1,
            1,
            &[event(&in_second), event(&third_first), event("other")],
        )
        .await
        .unwrap();
    let mut part = events("p", n);
    // The first statement's id 3 again in the last statement (replacing p{n-2}).
    part[n - 2] = event("p3");
    let inserted = store.insert(2, 1, &part).await.unwrap();
    assert_eq!(
        inserted.rows,
        n as u64 - 3,
        "{} skipped",
        inserted.skipped.len()
    );
    assert_eq!(
        inserted.skipped,
        [in_second.clone(), third_first.clone(), "p3".to_owned()]
    );
    assert_eq!(store.count_all().await.unwrap(), n as u64);
    assert_eq!(store.count_run(2).await.unwrap(), n as u64 - 3);
    assert_eq!(store.count_batches(1, &[1], Some(true)).await.unwrap(), 0);
    assert_eq!(store.count_batches(1, &[1], None).await.unwrap(), 3);
    // The first statement's rows are this batch's: its rollback deletes every row it
    // counted inserted, none of the present ones.
    assert_eq!(store.claim(2, 1, &inserted.skipped).await.unwrap(), 0);
    assert_eq!(store.count_batches(1, &[1], Some(true)).await.unwrap(), 2);
    assert_eq!(store.delete_batch(2, 1).await.unwrap(), n as u64 - 3);
    assert_eq!(store.count_all().await.unwrap(), 3);

    // A part of several statements with no present id, an id of its first statement
    // repeated in its last: every distinct row inserted, the repeat alone skipped.
    let mut head = part[..statement_rows + 5].to_vec();
    head.push(event("p3"));
    let inserted = store.insert(3, 1, &head).await.unwrap();
    assert_eq!(
        (inserted.rows, &inserted.skipped),
        (statement_rows as u64 + 5, &vec!["p3".to_owned()])
    );
    // Then a part whose only present id is that one, in its last statement.
    let tail = &part[statement_rows * 2 + 1..];
    let inserted = store.insert(3, 2, tail).await.unwrap();
    assert_eq!(inserted.rows, tail.len() as u64 - 1);
    assert_eq!(inserted.skipped, ["p3"]);
}

#[tokio::test]
async fn sqlite_a_later_chunk_with_a_present_id_counts_the_earlier_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    later_statement_conflicts(&store, MAX_ROWS_PER_STATEMENT).await;
    store.close().await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
async fn postgres_a_later_statement_with_a_present_id_counts_the_earlier_ones() {
    with_postgres_table("later_conflict", |store| async move {
        later_statement_conflicts(&store, POSTGRES_MAX_ROWS_PER_STATEMENT).await;
    })
    .await;
}

/// An existing SQLite table whose `id` compares without case (`COLLATE NOCASE`): "A" and
/// "a" are one row to it. The rules hold by the table's own equality: the second is
/// skipped as present (not counted inserted), in one part and across parts.
#[tokio::test]
async fn sqlite_ids_equal_by_the_tables_collation_are_skipped_not_counted() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    {
        let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc"))
            .await
            .unwrap();
        sqlx::query(
            "CREATE TABLE events (id TEXT COLLATE NOCASE PRIMARY KEY, tenant TEXT NOT NULL, \
             ts INTEGER NOT NULL, payload TEXT NOT NULL, run_id INTEGER NOT NULL, \
             batch_seq INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let store = Store::connect(&url, "events", Duration::from_secs(5))
        .await
        .unwrap();
    let inserted = store
        .insert(1, 1, &[event("A"), event("b"), event("a")])
        .await
        .unwrap();
    assert_eq!(store.count_all().await.unwrap(), 2);
    assert_eq!(
        (inserted.rows, &inserted.skipped),
        (2, &vec!["a".to_owned()])
    );
    let again = store.insert(2, 1, &[event("B"), event("c")]).await.unwrap();
    assert_eq!((again.rows, &again.skipped), (1, &vec!["B".to_owned()]));
    store.close().await;
}
