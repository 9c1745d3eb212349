//! The database: SQLite (embedded, the default) or PostgreSQL, through one code path.
//!
//! # Table
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS events (
//!     id        TEXT PRIMARY KEY,  -- the event id: the idempotency key
//!     tenant    TEXT   NOT NULL,
//!     ts        BIGINT NOT NULL,   -- milliseconds since the Unix epoch
//!     payload   TEXT   NOT NULL,   -- JSON text
//!     run_id    BIGINT NOT NULL,   -- the run that inserted the row
//!     batch_seq BIGINT NOT NULL,   -- the batch of that run that inserted the row
//!     claimed   SMALLINT NOT NULL DEFAULT 0  -- 1 once another batch found the row present and committed
//! );
//! CREATE INDEX IF NOT EXISTS events_run_batch ON events (run_id, batch_seq);
//! ```
//!
//! The table name is `--table` (default `events`); it is created on start when missing, and
//! an existing table must have these columns (`claimed` is added to a table made before
//! it existed).
//!
//! # Rules
//! - Inserts never store an id twice and never change a stored row: an event whose id is
//!   already stored (by an earlier run, an earlier batch, or a redelivery) is skipped
//!   (`ON CONFLICT (id) DO NOTHING`), the existing row left as it is. [`Store::insert`]
//!   returns how many rows it actually inserted and the ids it skipped.
//! - Claim rule (fencing): only a batch about to commit claims. As its last write before it
//!   is acknowledged, the batch calls [`Store::claim`] with the ids it skipped: in one
//!   transaction it sets `claimed = 1` on those rows that are not its own and counts them;
//!   it commits only if every one is still there, and otherwise claims nothing and the
//!   batch fails (rolled back, retried or redelivered). A batch that is rolled back has
//!   therefore claimed nothing (but for a claim whose `COMMIT` succeeded while the batch saw
//!   an error), and a claimed row is one some committed batch acknowledges.
//! - Each call to [`Store::insert`] writes one part of a batch and commits it whole or not
//!   at all (one statement, or one transaction when it takes several). It deliberately does
//!   not span parts: the pipeline writes a batch in parts, and its compensation, not a
//!   database transaction, undoes a batch that fails halfway (see the crate documentation).
//!   How each backend writes a part, and why (PostgreSQL: a plain `INSERT … FROM unnest`
//!   of arrays, the upsert only after a unique violation; SQLite: statements of at most
//!   [`MAX_ROWS_PER_STATEMENT`] rows in a `BEGIN IMMEDIATE` transaction), is in `insert`.
//! - [`Store::delete_batch`] deletes exactly the rows that one batch of one run inserted
//!   (`run_id` and `batch_seq`) and that nobody claimed (`claimed = 0`), so a rollback never
//!   deletes a row another run or batch stored, nor one another batch found present and
//!   acknowledged, even when it comes late (an instance frozen past the broker's ack wait). It is idempotent: running it twice deletes nothing
//!   the second time.
//! - SQLite: the file is created if missing, in WAL journal mode with `synchronous = NORMAL`
//!   (a committed statement survives a crash of the process; the last ones may be lost on a
//!   power failure), a busy timeout, and a pool of [`SQLITE_POOL_SIZE`] connections.
//!   PostgreSQL: a pool of [`POSTGRES_POOL_SIZE`] connections (at least; one more than the
//!   batches written at once), a connection probed before it is handed out only when it was
//!   idle for [`POSTGRES_PING_AFTER_IDLE`] or more.
//!
//! The store owns its errors: [`ConnectError`] (the run cannot start) and [`QueryError`] (a
//! statement failed). The inserts are in `insert`, the other SQL in `queries`, the accepted
//! table names in [`table_name`], the URL shown in messages in [`redact`](mod@redact).

mod error;
mod insert;
mod queries;
pub mod redact;
pub mod table_name;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};

use crate::console::one_line;

pub use error::{ConnectError, QueryError, describe};
pub use insert::{Inserted, POSTGRES_MAX_ROWS_PER_STATEMENT};
pub use redact::redact;
pub use table_name::{MAX_TABLE_NAME, check_table_name};

/// Most rows written by one SQLite `INSERT` statement (6 bind parameters per row: well under
/// SQLite's limit of 32766).
pub const MAX_ROWS_PER_STATEMENT: usize = 1000;
/// Connections in the SQLite pool.
pub const SQLITE_POOL_SIZE: u32 = 2;
/// Connections in the PostgreSQL pool.
pub const POSTGRES_POOL_SIZE: u32 = 4;
/// A PostgreSQL connection idle in the pool this long is probed (`Sync`, one round trip)
/// before it is handed out; one used more recently is handed out as it is.
///
/// The pool already probes every connection as it is given back; probing it again when it is
/// taken, a millisecond later, cost one round trip per statement on the write path (two per
/// batch). A connection can die between any probe and its next statement anyway (a server
/// restart), and that is handled as a database outage whatever the age of the probe: the
/// statement fails, the batch waits for the database (probing it at most every 100 ms to
/// 1 s, by when every dead connection has been idle long enough to be probed and dropped)
/// and is rolled back.
pub const POSTGRES_PING_AFTER_IDLE: Duration = Duration::from_millis(100);

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite:…`
    Sqlite,
    /// `postgres://…` or `postgresql://…`
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        })
    }
}

impl Backend {
    /// The backend a URL's scheme names, or a one-line error.
    pub fn of_url(url: &str) -> Result<Backend, ConnectError> {
        let scheme = url
            .split_once(':')
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("sqlite") => Ok(Backend::Sqlite),
            Some("postgres" | "postgresql") => Ok(Backend::Postgres),
            _ => Err(ConnectError::Scheme { url: redact(url) }),
        }
    }
}

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A connection pool and the table the events go to. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
    table: String,
    url: String,
    /// Server-side time limit of a `DELETE` (PostgreSQL), see
    /// [`with_delete_timeout`](Self::with_delete_timeout).
    delete_timeout: Option<Duration>,
}

impl Store {
    /// Connects to `url`, creates the table when missing and checks its columns.
    ///
    /// Errors (all one line, password redacted): an unsupported or malformed URL, a database
    /// that cannot be reached or opened within `timeout`, a table with other columns.
    pub async fn connect(url: &str, table: &str, timeout: Duration) -> Result<Store, ConnectError> {
        Self::connect_with_pool(url, table, timeout, 0).await
    }

    /// [`connect`](Self::connect) with a pool of at least `connections` connections (one
    /// per batch written at once, and one more for probes and rollbacks).
    pub async fn connect_with_pool(
        url: &str,
        table: &str,
        timeout: Duration,
        connections: u32,
    ) -> Result<Store, ConnectError> {
        check_table_name(table).map_err(ConnectError::TableName)?;
        let shown = redact(url);
        let bad_url = |source: sqlx::Error| ConnectError::Url {
            url: shown.clone(),
            source,
        };
        let unreachable = |source: sqlx::Error| ConnectError::Unreachable {
            url: shown.clone(),
            source,
        };
        // One plain connection first: the pool retries failed connections until its
        // timeout and then reports only "pool timed out", hiding the cause (connection
        // refused, unknown database, …); a single attempt reports it.
        let connecting = async {
            match Backend::of_url(url)? {
                Backend::Sqlite => {
                    let options = SqliteConnectOptions::from_str(url)
                        .map_err(bad_url)?
                        .create_if_missing(true)
                        .journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal)
                        .busy_timeout(timeout);
                    let probe =
                        options.connect().await.map_err(|source| {
                            match missing_directory(options.get_filename()) {
                                Some(directory) => ConnectError::MissingDirectory {
                                    file: one_line(&options.get_filename().display().to_string()),
                                    directory: one_line(&directory.display().to_string()),
                                },
                                None => unreachable(source),
                            }
                        })?;
                    probe.close().await.map_err(unreachable)?;
                    SqlitePoolOptions::new()
                        .max_connections(SQLITE_POOL_SIZE.max(connections))
                        .acquire_timeout(timeout)
                        .connect_with(options)
                        .await
                        .map(Pool::Sqlite)
                        .map_err(unreachable)
                }
                Backend::Postgres => {
                    let options = PgConnectOptions::from_str(url).map_err(bad_url)?;
                    let probe = options.connect().await.map_err(unreachable)?;
                    probe.close().await.map_err(unreachable)?;
                    PgPoolOptions::new()
                        .max_connections(POSTGRES_POOL_SIZE.max(connections))
                        .acquire_timeout(timeout)
                        .test_before_acquire(false)
                        .before_acquire(|conn, meta| {
                            Box::pin(async move {
                                if meta.idle_for >= POSTGRES_PING_AFTER_IDLE {
                                    conn.ping().await?;
                                }
                                Ok(true)
                            })
                        })
                        .connect_with(options)
                        .await
                        .map(Pool::Postgres)
                        .map_err(unreachable)
                }
            }
        };
        let pool = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| ConnectError::Timeout {
                url: shown.clone(),
                timeout,
            })??;
        let store = Store {
            pool,
            table: table.to_owned(),
            url: shown.clone(),
            delete_timeout: None,
        };
        store
            .create_schema()
            .await
            .map_err(|source| ConnectError::Schema {
                url: shown,
                table: table.to_owned(),
                source,
            })?;
        Ok(store)
    }

    /// Makes PostgreSQL give up a [`delete_batch`](Self::delete_batch) after `limit`: the
    /// `DELETE` runs in a transaction with `SET LOCAL statement_timeout`, so one that the
    /// caller stopped waiting for (a compensation attempt timing out after a little longer)
    /// cannot commit later, when the caller already treats it as failed. Use less than the
    /// caller's own timeout. SQLite has no equivalent: its statement runs on a worker thread
    /// that finishes it even when the caller stopped waiting (it is local and short, but a
    /// busy database can delay it by up to the busy timeout).
    pub fn with_delete_timeout(mut self, limit: Duration) -> Self {
        self.delete_timeout = Some(limit);
        self
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// The URL, password redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Closes the pool, waiting for the connections to finish (SQLite checkpoints its WAL).
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}

/// The directory of the SQLite file `file` when it does not exist: SQLite creates a missing
/// file, not a missing directory, and says only "unable to open database file".
fn missing_directory(file: &std::path::Path) -> Option<&std::path::Path> {
    let directory = file.parent().filter(|dir| !dir.as_os_str().is_empty())?;
    (!directory.is_dir()).then_some(directory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    #[test]
    fn tells_backends_by_scheme() {
        assert_eq!(Backend::of_url("sqlite://x.db").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::of_url("sqlite::memory:").unwrap(), Backend::Sqlite);
        assert_eq!(
            Backend::of_url("postgresql://h/d").unwrap(),
            Backend::Postgres
        );
        let error = Backend::of_url("mysql://h/d").unwrap_err().to_string();
        assert!(error.contains("mysql://h/d"), "{error}");
    }

    fn event(id: &str) -> Event {
        Event {
            id: id.into(),
            tenant: "t".into(),
            ts: 1,
            payload: serde_json::value::RawValue::from_string(r#"{"n":1}"#.into()).unwrap(),
        }
    }

    #[tokio::test]
    async fn inserts_idempotently_and_deletes_exactly_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect(&url, "events", Duration::from_secs(5))
            .await
            .unwrap();
        // More rows than one statement holds.
        let many: Vec<Event> = (0..MAX_ROWS_PER_STATEMENT + 5)
            .map(|i| event(&format!("a{i}")))
            .collect();
        let first = store.insert(1, 1, &many).await.unwrap();
        assert_eq!(first.rows, many.len() as u64);
        assert!(first.skipped.is_empty());
        // Batch 2 repeats two ids of batch 1, adds one, and holds it twice.
        let again = [event("a0"), event("b"), event("a1"), event("b")];
        let second = store.insert(1, 2, &again).await.unwrap();
        assert_eq!(second.rows, 1);
        assert_eq!(second.skipped, ["a0", "a1", "b"]);
        let ids = ["a0", "b", "zz"].map(String::from);
        assert_eq!(store.count_ids(&ids).await.unwrap(), 2);
        assert_eq!(store.count_all().await.unwrap(), many.len() as u64 + 1);
        // Deleting batch 2 removes only the row it inserted, twice over.
        assert_eq!(store.delete_batch(1, 2).await.unwrap(), 1);
        assert_eq!(store.delete_batch(1, 2).await.unwrap(), 0);
        assert_eq!(store.count_run(1).await.unwrap(), many.len() as u64);
        assert_eq!(
            store.count_batches(1, &[1, 2], None).await.unwrap(),
            many.len() as u64
        );
        assert_eq!(store.count_batches(1, &[2], None).await.unwrap(), 0);
        store.close().await;
    }

    /// Fencing: a row found present by another batch is claimed when that batch commits
    /// ([`Store::claim`]), and its owner's late compensation no longer deletes it; a batch's
    /// own rows are never claimed by itself, so its compensation still deletes all of them.
    #[tokio::test]
    async fn a_row_found_present_by_another_batch_survives_its_owners_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect(&url, "events", Duration::from_secs(5))
            .await
            .unwrap();
        // Run 1, batch 1 (frozen, later rolled back) inserted a and b.
        assert_eq!(
            store
                .insert(1, 1, &[event("a"), event("b")])
                .await
                .unwrap()
                .rows,
            2
        );
        // Run 2, batch 7 got a's message again: a is present and skipped, not yet claimed;
        // claimed as batch 7 commits.
        let other = store.insert(2, 7, &[event("a"), event("c")]).await.unwrap();
        assert_eq!((other.rows, &other.skipped), (1, &vec!["a".to_owned()]));
        assert_eq!(store.count_batches(1, &[1], Some(true)).await.unwrap(), 0);
        assert_eq!(store.claim(2, 7, &other.skipped).await.unwrap(), 0);
        assert_eq!(store.count_batches(1, &[1], Some(true)).await.unwrap(), 1);
        // Run 1's late rollback deletes b only: a is acknowledged by run 2.
        assert_eq!(store.delete_batch(1, 1).await.unwrap(), 1);
        assert_eq!(store.count_ids(&["a".into(), "b".into()]).await.unwrap(), 1);
        assert_eq!(store.count_batches(1, &[1], None).await.unwrap(), 1);
        assert_eq!(store.count_batches(1, &[1], Some(false)).await.unwrap(), 0);
        // The same batch meeting its own row again (a second statement) claims nothing.
        assert_eq!(store.insert(3, 1, &[event("d")]).await.unwrap().rows, 1);
        let again = store.insert(3, 1, &[event("d")]).await.unwrap();
        assert_eq!((again.rows, &again.skipped), (0, &vec!["d".to_owned()]));
        assert_eq!(store.claim(3, 1, &again.skipped).await.unwrap(), 0);
        assert_eq!(store.delete_batch(3, 1).await.unwrap(), 1);
        store.close().await;
    }

    /// A batch that finds a row present and is then rolled back (it never claims) does not
    /// fence it: the owner's rollback still deletes it. A batch whose found-present row was
    /// deleted by its owner's rollback before it claims learns it, and claims nothing.
    #[tokio::test]
    async fn only_a_committing_batch_fences_and_a_vanished_row_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::connect(&url, "events", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            store
                .insert(1, 1, &[event("a"), event("b")])
                .await
                .unwrap()
                .rows,
            2
        );
        // Run 2, batch 1 finds a and b present, then is rolled back: no claim.
        let found = store.insert(2, 1, &[event("a"), event("b")]).await.unwrap();
        assert_eq!(found.skipped.len(), 2);
        assert_eq!(store.delete_batch(2, 1).await.unwrap(), 0);
        // Run 3, batch 1 finds a and b present; run 1 rolls back before run 3 commits.
        let found = store
            .insert(3, 1, &[event("a"), event("b"), event("a")])
            .await
            .unwrap();
        assert_eq!(found.skipped.len(), 3);
        assert_eq!(store.delete_batch(1, 1).await.unwrap(), 2);
        assert_eq!(store.count_all().await.unwrap(), 0);
        // Both are gone: run 3 must not commit as is.
        assert_eq!(store.claim(3, 1, &found.skipped).await.unwrap(), 2);
        // One found present and still there, one gone: nothing is claimed.
        assert_eq!(store.insert(4, 1, &[event("a")]).await.unwrap().rows, 1);
        assert_eq!(store.claim(3, 1, &found.skipped).await.unwrap(), 1);
        assert_eq!(store.count_batches(4, &[1], Some(true)).await.unwrap(), 0);
        assert_eq!(store.claim(3, 1, &["a".to_owned()]).await.unwrap(), 0);
        assert_eq!(store.count_batches(4, &[1], Some(true)).await.unwrap(), 1);
        assert_eq!(store.delete_batch(4, 1).await.unwrap(), 0);
        store.close().await;
    }

    /// A table made before `claimed` existed gets the column, its rows unclaimed.
    #[tokio::test]
    async fn adds_the_claimed_column_to_an_older_table() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        sqlx::query(
            "CREATE TABLE events (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, ts BIGINT NOT NULL, \
             payload TEXT NOT NULL, run_id BIGINT NOT NULL, batch_seq BIGINT NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO events VALUES ('old', 't', 1, '1', 5, 1)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let store = Store::connect(&url, "events", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(store.count_batches(5, &[1], Some(false)).await.unwrap(), 1);
        assert_eq!(store.delete_batch(5, 1).await.unwrap(), 1);
        store.close().await;
    }

    #[tokio::test]
    async fn refuses_a_table_with_other_columns() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true);
        let pool = SqlitePool::connect_with(options).await.unwrap();
        sqlx::query("CREATE TABLE events (id TEXT PRIMARY KEY, body TEXT)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let error = Store::connect(&url, "events", Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("table `events`"), "{error}");
    }
}
