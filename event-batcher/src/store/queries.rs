//! The SQL: the schema, the idempotent inserts, the deletion of one batch, the counts.

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, Database, Encode, QueryBuilder, Type};

use super::{MAX_ROWS_PER_STATEMENT, Pool, QueryError, Store};
use crate::event::Event;

/// Most batch numbers in one `IN (…)` list of [`Store::count_batches`].
const MAX_IDS_PER_QUERY: usize = 1000;

/// What [`Store::insert`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inserted {
    /// Rows inserted.
    pub rows: u64,
    /// Ids of the events skipped because a row with the id was already there.
    pub skipped: Vec<String>,
}

impl Store {
    pub(super) async fn create_schema(&self) -> Result<(), QueryError> {
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
                Ok(tx.commit().await?)
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
    async fn execute(&self, sql: String, binds: &[i64]) -> Result<u64, QueryError> {
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
    async fn count(&self, sql: String, binds: &[i64]) -> Result<u64, QueryError> {
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
    ) -> Result<Inserted, QueryError> {
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
    pub async fn count_ids(&self, ids: &[String]) -> Result<u64, QueryError> {
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
    pub async fn delete_batch(&self, run: i64, batch: i64) -> Result<u64, QueryError> {
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
    pub async fn count_all(&self) -> Result<u64, QueryError> {
        self.count(format!("SELECT COUNT(*) FROM {}", self.table), &[])
            .await
    }

    /// Rows that run `run` inserted (and that are still there).
    pub async fn count_run(&self, run: i64) -> Result<u64, QueryError> {
        let sql = format!(
            "SELECT COUNT(*) FROM {} WHERE run_id = {}",
            self.table,
            self.placeholder(1)
        );
        self.count(sql, &[run]).await
    }

    /// Rows that the given batches of run `run` inserted and that are still there.
    pub async fn count_batches(&self, run: i64, batches: &[i64]) -> Result<u64, QueryError> {
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
