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
//!     batch_seq BIGINT NOT NULL    -- the batch of that run that inserted the row
//! );
//! CREATE INDEX IF NOT EXISTS events_run_batch ON events (run_id, batch_seq);
//! ```
//!
//! The table name is `--table` (default `events`); it is created on start when missing, and
//! an existing table must have these columns.
//!
//! # Rules
//! - Inserts are `INSERT … ON CONFLICT (id) DO NOTHING`: an event whose id is already stored
//!   (by an earlier run, an earlier batch, or a redelivery) is skipped, never duplicated, and
//!   the existing row is left as it is. [`Store::insert`] returns how many rows it actually
//!   inserted and, from `RETURNING id`, the ids it skipped.
//! - Each call to [`Store::insert`] is one or more autocommitted multi-row statements of at
//!   most [`MAX_ROWS_PER_STATEMENT`] rows (6 bind parameters per row: well under SQLite's
//!   32766 and PostgreSQL's 65535 parameter limits). It is deliberately *not* one
//!   transaction: the pipeline writes a batch in parts, and its compensation, not a database
//!   transaction, undoes a batch that fails halfway (see the crate documentation).
//! - [`Store::delete_batch`] deletes exactly the rows that one batch of one run inserted
//!   (`run_id` and `batch_seq`), so a rollback never deletes a row another run or batch
//!   stored, even for the same event id. It is idempotent: running it twice deletes nothing
//!   the second time.
//! - SQLite: the file is created if missing, in WAL journal mode with `synchronous = NORMAL`
//!   (a committed statement survives a crash of the process; the last ones may be lost on a
//!   power failure), a busy timeout, and a pool of [`SQLITE_POOL_SIZE`] connections.
//!   PostgreSQL: a pool of [`POSTGRES_POOL_SIZE`] connections.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Database, Encode, QueryBuilder, Type};

use crate::event::Event;
use crate::pipeline::SetupError;

/// Most rows written by one `INSERT` statement.
pub const MAX_ROWS_PER_STATEMENT: usize = 1000;
/// Most batch numbers in one `IN (…)` list of [`Store::count_batches`].
const MAX_IDS_PER_QUERY: usize = 1000;
/// Connections in the SQLite pool.
pub const SQLITE_POOL_SIZE: u32 = 2;
/// Connections in the PostgreSQL pool.
pub const POSTGRES_POOL_SIZE: u32 = 4;
/// Longest accepted `--table` name (the index name appends a suffix and PostgreSQL
/// identifiers are at most 63 bytes).
pub const MAX_TABLE_NAME: usize = 48;

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
    pub fn of_url(url: &str) -> Result<Backend, SetupError> {
        let scheme = url
            .split_once(':')
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("sqlite") => Ok(Backend::Sqlite),
            Some("postgres" | "postgresql") => Ok(Backend::Postgres),
            _ => Err(SetupError::DatabaseUrl {
                url: redact(url),
                reason: "expected sqlite://PATH or postgres://USER@HOST:PORT/DATABASE".into(),
            }),
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

/// What [`Store::insert`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inserted {
    /// Rows inserted.
    pub rows: u64,
    /// Ids of the events skipped because a row with the id was already there.
    pub skipped: Vec<String>,
}

/// Checks a `--table` name: a letter or `_`, then letters, digits or `_`, at most
/// [`MAX_TABLE_NAME`] bytes (it is written into SQL, so nothing else is accepted).
pub fn check_table_name(table: &str) -> Result<(), String> {
    let mut chars = table.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !valid_start
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        || table.len() > MAX_TABLE_NAME
    {
        return Err(format!(
            "invalid table name {table:?}: use a letter or `_`, then letters, digits or `_`, at most {MAX_TABLE_NAME} characters"
        ));
    }
    Ok(())
}

/// `url` with its password, if any, replaced by `***`, for messages and reports.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A one-line description of a driver error: the database's own message for errors the
/// server returned (without sqlx's "at line N" of the server's source code), the driver's
/// message otherwise.
pub fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (code {code})", db.message()),
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    }
}

impl Store {
    /// Connects to `url`, creates the table when missing and checks its columns.
    ///
    /// Errors (all one line, password redacted): an unsupported or malformed URL, a database
    /// that cannot be reached or opened within `timeout`, a table with other columns.
    pub async fn connect(url: &str, table: &str, timeout: Duration) -> Result<Store, SetupError> {
        check_table_name(table).map_err(SetupError::Config)?;
        let shown = redact(url);
        let bad_url = |error: sqlx::Error| SetupError::DatabaseUrl {
            url: shown.clone(),
            reason: error.to_string(),
        };
        let unreachable = |reason: String| SetupError::DatabaseUnreachable {
            url: shown.clone(),
            reason,
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
                    let probe = options
                        .connect()
                        .await
                        .map_err(|e| unreachable(describe(&e)))?;
                    probe.close().await.map_err(|e| unreachable(describe(&e)))?;
                    SqlitePoolOptions::new()
                        .max_connections(SQLITE_POOL_SIZE)
                        .acquire_timeout(timeout)
                        .connect_with(options)
                        .await
                        .map(Pool::Sqlite)
                        .map_err(|error| unreachable(describe(&error)))
                }
                Backend::Postgres => {
                    let options = PgConnectOptions::from_str(url).map_err(bad_url)?;
                    let probe = options
                        .connect()
                        .await
                        .map_err(|e| unreachable(describe(&e)))?;
                    probe.close().await.map_err(|e| unreachable(describe(&e)))?;
                    PgPoolOptions::new()
                        .max_connections(POSTGRES_POOL_SIZE)
                        .acquire_timeout(timeout)
                        .connect_with(options)
                        .await
                        .map(Pool::Postgres)
                        .map_err(|error| unreachable(describe(&error)))
                }
            }
        };
        let pool = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| unreachable(format!("no connection within {timeout:?}")))??;
        let store = Store {
            pool,
            table: table.to_owned(),
            url: shown.clone(),
            delete_timeout: None,
        };
        store
            .create_schema()
            .await
            .map_err(|error| SetupError::Schema {
                url: shown,
                table: table.to_owned(),
                reason: describe(&error),
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

    async fn create_schema(&self) -> Result<(), sqlx::Error> {
        let table = &self.table;
        let statements = [
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (\
                 id TEXT PRIMARY KEY, tenant TEXT NOT NULL, ts BIGINT NOT NULL, \
                 payload TEXT NOT NULL, run_id BIGINT NOT NULL, batch_seq BIGINT NOT NULL)"
            ),
            format!("CREATE INDEX IF NOT EXISTS {table}_run_batch ON {table} (run_id, batch_seq)"),
            // Fails when an existing table lacks one of the columns.
            format!("SELECT id, tenant, ts, payload, run_id, batch_seq FROM {table} WHERE 1 = 0"),
        ];
        match &self.pool {
            Pool::Postgres(pool) => {
                // Instances started together (several consumers of one broker) run this at
                // the same time, and concurrent `CREATE TABLE IF NOT EXISTS` can fail in
                // PostgreSQL (a unique violation in its catalog): serialise them on an
                // advisory lock held until the transaction ends.
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(table)
                    .execute(&mut *tx)
                    .await?;
                for sql in statements {
                    sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await?;
                }
                tx.commit().await
            }
            Pool::Sqlite(_) => {
                for sql in statements {
                    self.execute(sql, &[]).await?;
                }
                Ok(())
            }
        }
    }

    /// Runs one statement with `i64` binds and returns the rows it affected.
    async fn execute(&self, sql: String, binds: &[i64]) -> Result<u64, sqlx::Error> {
        match &self.pool {
            Pool::Sqlite(pool) => {
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for bind in binds {
                    query = query.bind(*bind);
                }
                Ok(query.execute(pool).await?.rows_affected())
            }
            Pool::Postgres(pool) => {
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for bind in binds {
                    query = query.bind(*bind);
                }
                Ok(query.execute(pool).await?.rows_affected())
            }
        }
    }

    /// Runs one `SELECT COUNT(*)` with `i64` binds.
    async fn count(&self, sql: String, binds: &[i64]) -> Result<u64, sqlx::Error> {
        let count: i64 = match &self.pool {
            Pool::Sqlite(pool) => {
                let mut query = sqlx::query_scalar(AssertSqlSafe(sql));
                for bind in binds {
                    query = query.bind(*bind);
                }
                query.fetch_one(pool).await?
            }
            Pool::Postgres(pool) => {
                let mut query = sqlx::query_scalar(AssertSqlSafe(sql));
                for bind in binds {
                    query = query.bind(*bind);
                }
                query.fetch_one(pool).await?
            }
        };
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Inserts `events` as rows of batch `batch` of run `run`, skipping every id already
    /// stored, in autocommitted statements of at most [`MAX_ROWS_PER_STATEMENT`] rows
    /// (`… ON CONFLICT (id) DO NOTHING RETURNING id`). Returns how many rows were inserted
    /// and the ids of the events that were skipped (the ids the database did not return).
    ///
    /// If a statement fails, the statements before it stay committed: undoing them is the
    /// job of [`delete_batch`](Self::delete_batch), registered as a compensation before the
    /// first call.
    pub async fn insert(
        &self,
        run: i64,
        batch: i64,
        events: &[Event],
    ) -> Result<Inserted, sqlx::Error> {
        let mut inserted = Inserted::default();
        for chunk in events.chunks(MAX_ROWS_PER_STATEMENT) {
            let payloads: Vec<String> = chunk.iter().map(|e| e.payload.to_string()).collect();
            let prefix = format!(
                "INSERT INTO {} (id, tenant, ts, payload, run_id, batch_seq) ",
                self.table
            );
            let returned: Vec<String> = match &self.pool {
                Pool::Sqlite(pool) => {
                    let mut builder = insert_statement(prefix, run, batch, chunk, &payloads);
                    builder.build_query_scalar().fetch_all(pool).await?
                }
                Pool::Postgres(pool) => {
                    let mut builder = insert_statement(prefix, run, batch, chunk, &payloads);
                    builder.build_query_scalar().fetch_all(pool).await?
                }
            };
            inserted.rows += returned.len() as u64;
            // Each returned id stands for one event of the chunk (an id twice in the chunk
            // is inserted once and skipped once).
            let mut returned: HashMap<String, usize> =
                returned.into_iter().fold(HashMap::new(), |mut counts, id| {
                    *counts.entry(id).or_default() += 1;
                    counts
                });
            for event in chunk {
                match returned.get_mut(&event.id) {
                    Some(n) if *n > 0 => *n -= 1,
                    _ => inserted.skipped.push(event.id.clone()),
                }
            }
        }
        Ok(inserted)
    }

    /// How many of `ids` (distinct) have a row in the table, in queries of at most
    /// 1,000 ids.
    pub async fn count_ids(&self, ids: &[String]) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        for chunk in ids.chunks(MAX_IDS_PER_QUERY) {
            let list: Vec<String> = (0..chunk.len()).map(|i| self.placeholder(i + 1)).collect();
            let sql = format!(
                "SELECT COUNT(*) FROM {} WHERE id IN ({})",
                self.table,
                list.join(", ")
            );
            let count: i64 = match &self.pool {
                Pool::Sqlite(pool) => {
                    let mut query = sqlx::query_scalar(AssertSqlSafe(sql));
                    for id in chunk {
                        query = query.bind(id.as_str());
                    }
                    query.fetch_one(pool).await?
                }
                Pool::Postgres(pool) => {
                    let mut query = sqlx::query_scalar(AssertSqlSafe(sql));
                    for id in chunk {
                        query = query.bind(id.as_str());
                    }
                    query.fetch_one(pool).await?
                }
            };
            total += u64::try_from(count).unwrap_or(0);
        }
        Ok(total)
    }

    /// Deletes the rows that batch `batch` of run `run` inserted; returns how many.
    pub async fn delete_batch(&self, run: i64, batch: i64) -> Result<u64, sqlx::Error> {
        let sql = format!(
            "DELETE FROM {} WHERE run_id = {} AND batch_seq = {}",
            self.table,
            self.placeholder(1),
            self.placeholder(2)
        );
        match (&self.pool, self.delete_timeout) {
            (Pool::Postgres(pool), Some(limit)) => {
                // Dropped before `COMMIT` (the caller timed out), the transaction is rolled
                // back; the server cancels a `DELETE` running longer than `limit`.
                let mut tx = pool.begin().await?;
                let millis = limit.as_millis().clamp(1, i32::MAX as u128);
                sqlx::query(AssertSqlSafe(format!(
                    "SET LOCAL statement_timeout = {millis}"
                )))
                .execute(&mut *tx)
                .await?;
                let rows = sqlx::query(AssertSqlSafe(sql))
                    .bind(run)
                    .bind(batch)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(rows)
            }
            _ => self.execute(sql, &[run, batch]).await,
        }
    }

    /// Rows in the table.
    pub async fn count_all(&self) -> Result<u64, sqlx::Error> {
        self.count(format!("SELECT COUNT(*) FROM {}", self.table), &[])
            .await
    }

    /// Rows that run `run` inserted (and that are still there).
    pub async fn count_run(&self, run: i64) -> Result<u64, sqlx::Error> {
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE run_id = {}",
            self.table,
            self.placeholder(1)
        );
        self.count(sql, &[run]).await
    }

    /// Rows that the given batches of run `run` inserted and that are still there.
    pub async fn count_batches(&self, run: i64, batches: &[i64]) -> Result<u64, sqlx::Error> {
        let mut total = 0;
        for chunk in batches.chunks(MAX_IDS_PER_QUERY) {
            let list: Vec<String> = (0..chunk.len()).map(|i| self.placeholder(i + 2)).collect();
            let sql = format!(
                "SELECT COUNT(*) FROM {} WHERE run_id = {} AND batch_seq IN ({})",
                self.table,
                self.placeholder(1),
                list.join(", ")
            );
            let mut binds = Vec::with_capacity(chunk.len() + 1);
            binds.push(run);
            binds.extend_from_slice(chunk);
            total += self.count(sql, &binds).await?;
        }
        Ok(total)
    }

    /// Closes the pool, waiting for the connections to finish (SQLite checkpoints its WAL).
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }

    /// The `n`th (1-based) bind placeholder of this backend.
    fn placeholder(&self, n: usize) -> String {
        match self.pool {
            Pool::Sqlite(_) => format!("?{n}"),
            Pool::Postgres(_) => format!("${n}"),
        }
    }
}

/// `prefix VALUES (…), (…) ON CONFLICT (id) DO NOTHING RETURNING id` for `rows`, for either
/// backend (SQLite has `RETURNING` since 3.35; sqlx bundles a newer one).
fn insert_statement<DB>(
    prefix: String,
    run: i64,
    batch: i64,
    rows: &[Event],
    payloads: &[String],
) -> QueryBuilder<DB>
where
    DB: Database,
    DB::Arguments: Default,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Type<DB>,
{
    let mut builder = QueryBuilder::<DB>::new(prefix);
    builder.push_values(rows.iter().zip(payloads), |mut row, (event, payload)| {
        row.push_bind(event.id.as_str())
            .push_bind(event.tenant.as_str())
            .push_bind(event.ts)
            .push_bind(payload.as_str())
            .push_bind(run)
            .push_bind(batch);
    });
    builder.push(" ON CONFLICT (id) DO NOTHING RETURNING id");
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://events.db"), "sqlite://events.db");
        assert_eq!(redact("sqlite::memory:"), "sqlite::memory:");
    }

    #[test]
    fn accepts_only_plain_table_names() {
        assert!(check_table_name("events").is_ok());
        assert!(check_table_name("_t1").is_ok());
        for bad in [
            "",
            "1t",
            "a-b",
            "a;drop",
            "é",
            &"x".repeat(MAX_TABLE_NAME + 1),
        ] {
            assert!(check_table_name(bad).is_err(), "{bad:?}");
        }
    }

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
            payload: serde_json::json!({"n": 1}),
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
            store.count_batches(1, &[1, 2]).await.unwrap(),
            many.len() as u64
        );
        assert_eq!(store.count_batches(1, &[2]).await.unwrap(), 0);
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
