//! The idempotent, fencing insert of one part of a batch, one way per backend.
//!
//! Rules (both backends):
//! - A part is written as **one transaction** when it takes more than one statement, so it
//!   is committed whole or not at all; a part of one statement is that statement,
//!   autocommitted. Either way, what a part committed stays committed until the batch's
//!   compensation deletes it: a failure *between* parts is undone by the compensation, not
//!   by the database.
//! - An id twice in a part is written once (its first occurrence); the others are skipped.
//! - A row already present is never overwritten, nor claimed: it is skipped. The claim that
//!   fences it off from its owner's rollback is made later, by [`Store::claim`], when the
//!   batch is about to commit (see [`Store::insert`]).
//!
//! PostgreSQL: a part is first written by one plain `INSERT … SELECT … FROM
//! unnest($1::text[], $2::text[], $3::int8[], $4::text[])` (four array parameters whatever the
//! row count: the statement text never changes, so it is prepared once per connection, and a
//! part is one round trip and one commit). It inserts all the rows or, if one id is already
//! stored (SQLSTATE 23505), none; only then is the part written again by the upsert, the
//! same `unnest` with `ON CONFLICT (id) DO NOTHING RETURNING id, run_id, batch_seq`. Most parts are new rows, and a plain insert skips the conflict
//! check of every row and the `RETURNING`. A part over [`POSTGRES_MAX_ROWS_PER_STATEMENT`]
//! rows goes to the upsert directly, in one transaction.
//!
//! SQLite: the part runs in one `BEGIN IMMEDIATE` transaction (the write lock is taken first,
//! so no other writer can insert between its statements). Per chunk of at most
//! [`MAX_ROWS_PER_STATEMENT`] rows, a plain multi-row `INSERT` (no `ON CONFLICT`) is tried
//! first: it inserts every row of the chunk or, when one id is already stored (a unique
//! violation), none (SQLite's default `ABORT` undoes that statement alone and the
//! transaction goes on). Only then is the chunk written the slow way: a
//! `SELECT id … WHERE id IN (…)` finds the ids already present, then a multi-row
//! `INSERT … ON CONFLICT (id) DO NOTHING` without `RETURNING` writes the rest. Most chunks
//! are new rows, and the plain insert spares them the `SELECT`. When that insert wrote fewer
//! rows than the ids not found present (the table's `id` equates distinct strings, e.g.
//! `COLLATE NOCASE`), the ids inserted are read back: those of the chunk this batch owns
//! now, minus those present before; an id equal to a stored one by the table's rule is
//! skipped, never counted inserted. The driver hands every
//! result row from its worker thread to the caller through a channel, one wake-up each: a
//! `RETURNING` of every inserted row cost more than the insert; the `SELECT` usually
//! returns nothing.

use std::collections::HashSet;

use sqlx::postgres::{PgArguments, PgConnection};
use sqlx::query::{Query, QueryAs};
use sqlx::{AssertSqlSafe, Connection, Postgres, QueryBuilder, Sqlite};

use super::{MAX_ROWS_PER_STATEMENT, Pool, QueryError, Store};
use crate::event::Event;

/// Most rows in one PostgreSQL `INSERT` (its arrays have no parameter limit; this bounds the
/// size of one message and of one statement's work).
pub const POSTGRES_MAX_ROWS_PER_STATEMENT: usize = 10_000;

/// SQLSTATE `unique_violation`.
const UNIQUE_VIOLATION: &str = "23505";

/// What [`Store::insert`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inserted {
    /// Rows inserted.
    pub rows: u64,
    /// Ids of the events skipped because a row with the id was already there.
    pub skipped: Vec<String>,
}

/// One row to write: the event and its payload as JSON text.
struct Row<'a> {
    event: &'a Event,
    payload: &'a str,
}

/// Which rows of a part a backend inserted.
enum New<'a> {
    /// Every row (the part's first occurrence of each id).
    All,
    /// These ids.
    Only(HashSet<&'a str>),
}

impl Store {
    /// Inserts `events` as rows of batch `batch` of run `run`, skipping every id already
    /// stored; returns how many rows were inserted and the ids of the events that were
    /// skipped.
    ///
    /// A row found already present is left as it is (its owner, its values, its `claimed`)
    /// and **not claimed** here (`ON CONFLICT (id) DO NOTHING`): this batch does not know yet
    /// whether it commits, and a batch that is rolled back acknowledges nothing, so its
    /// claim must not fence the row. The caller claims the skipped ids with
    /// [`claim`](Self::claim) as the batch's last write before it is acknowledged. An id
    /// twice in `events` is inserted once (the first occurrence) and skipped the other
    /// times.
    ///
    /// The call is one part of a batch: committed whole (one statement, or one transaction
    /// when it takes several), or, on error, not at all. Parts committed by earlier calls
    /// stay committed: undoing them is the job of [`delete_batch`](Self::delete_batch),
    /// registered as a compensation before the first call.
    pub async fn insert(
        &self,
        run: i64,
        batch: i64,
        events: &[Event],
    ) -> Result<Inserted, QueryError> {
        // One row per id: PostgreSQL refuses an upsert that meets the same row twice. The
        // later occurrences are skipped whatever the backend does, in the events' order.
        let mut seen = HashSet::with_capacity(events.len());
        let mut repeated = Vec::new();
        let mut rows: Vec<Row<'_>> = Vec::with_capacity(events.len());
        for event in events {
            if seen.insert(event.id.as_str()) {
                rows.push(Row {
                    event,
                    payload: event.payload.get(),
                });
            } else {
                repeated.push(event.id.as_str());
            }
        }
        drop(seen);
        let new = match &self.pool {
            Pool::Postgres(_) => self.insert_postgres(run, batch, &rows).await?,
            Pool::Sqlite(_) => self.insert_sqlite(run, batch, &rows).await?,
        };
        let new = match new {
            New::All => {
                return Ok(Inserted {
                    rows: rows.len() as u64,
                    skipped: repeated.into_iter().map(str::to_owned).collect(),
                });
            }
            New::Only(new) => new,
        };
        // In the events' order: the first occurrence of an inserted id is the inserted
        // event, every other event was skipped.
        let mut inserted = Inserted {
            rows: new.len() as u64,
            skipped: Vec::new(),
        };
        let mut counted = HashSet::with_capacity(new.len());
        for event in events {
            if !(new.contains(event.id.as_str()) && counted.insert(event.id.as_str())) {
                inserted.skipped.push(event.id.clone());
            }
        }
        Ok(inserted)
    }

    /// The PostgreSQL part: first a plain `INSERT … SELECT … FROM unnest(…)` of all its rows
    /// (no `ON CONFLICT`, no `RETURNING`), which inserts every row or, on a unique violation
    /// (some id is already stored), none; then, only in that case, the upsert. Returns
    /// [`New::All`] when the plain insert wrote every row (no set of ids to build), else the
    /// ids the upsert inserted.
    async fn insert_postgres<'a>(
        &self,
        run: i64,
        batch: i64,
        rows: &[Row<'a>],
    ) -> Result<New<'a>, QueryError> {
        let Pool::Postgres(pool) = &self.pool else {
            unreachable!("insert_postgres is only called with a PostgreSQL pool")
        };
        if rows.is_empty() {
            return Ok(New::All);
        }
        let mut conn = pool.acquire().await?;
        if rows.len() <= POSTGRES_MAX_ROWS_PER_STATEMENT {
            let sql = format!(
                "INSERT INTO {} (id, tenant, ts, payload, run_id, batch_seq) \
                 SELECT id, tenant, ts, payload, $5, $6 \
                 FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[]) AS u(id, tenant, ts, payload)",
                self.table
            );
            let plain = bind_rows(sqlx::query(AssertSqlSafe(sql)), rows)
                .bind(run)
                .bind(batch)
                .execute(&mut *conn)
                .await;
            match plain {
                Ok(_) => return Ok(New::All),
                Err(sqlx::Error::Database(error))
                    if error.code().as_deref() == Some(UNIQUE_VIOLATION) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(New::Only(
            self.upsert_postgres(&mut conn, run, batch, rows).await?,
        ))
    }

    /// The PostgreSQL upsert: `unnest` statements on `conn`, in one transaction when there
    /// are several; returns the ids inserted.
    async fn upsert_postgres<'r, 'a>(
        &self,
        conn: &mut PgConnection,
        run: i64,
        batch: i64,
        rows: &'r [Row<'a>],
    ) -> Result<HashSet<&'a str>, QueryError> {
        let table = &self.table;
        let sql = format!(
            "INSERT INTO {table} (id, tenant, ts, payload, run_id, batch_seq) \
             SELECT id, tenant, ts, payload, $5, $6 \
             FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[]) AS u(id, tenant, ts, payload) \
             ON CONFLICT (id) DO NOTHING \
             RETURNING id, run_id, batch_seq"
        );
        let statement = |chunk: &'r [Row<'a>]| {
            bind_rows(
                sqlx::query_as::<_, (String, i64, i64)>(AssertSqlSafe(sql.clone())),
                chunk,
            )
            .bind(run)
            .bind(batch)
        };
        let mut returned = Vec::with_capacity(rows.len());
        if rows.len() <= POSTGRES_MAX_ROWS_PER_STATEMENT {
            if !rows.is_empty() {
                returned = statement(rows).fetch_all(&mut *conn).await?;
            }
        } else {
            let mut tx = conn.begin().await?;
            for chunk in rows.chunks(POSTGRES_MAX_ROWS_PER_STATEMENT) {
                returned.extend(statement(chunk).fetch_all(&mut *tx).await?);
            }
            tx.commit().await?;
        }
        // Returned: the rows inserted (owned by this batch); not returned: the rows already
        // present (another batch's, or this batch's from an earlier part).
        let new: HashSet<String> = returned
            .into_iter()
            .filter(|(_, owner_run, owner_batch)| (*owner_run, *owner_batch) == (run, batch))
            .map(|(id, _, _)| id)
            .collect();
        Ok(rows
            .iter()
            .map(|r| r.event.id.as_str())
            .filter(|id| new.contains(*id))
            .collect())
    }

    /// The SQLite part: one `BEGIN IMMEDIATE` transaction and, per chunk, a plain `INSERT`,
    /// or (when an id of the chunk is already stored) a `SELECT` of the ids present and an
    /// `INSERT … ON CONFLICT (id) DO NOTHING`. Returns [`New::All`] when every chunk was
    /// written by its plain insert (no set of ids to build), else the ids inserted.
    async fn insert_sqlite<'a>(
        &self,
        run: i64,
        batch: i64,
        rows: &[Row<'a>],
    ) -> Result<New<'a>, QueryError> {
        let Pool::Sqlite(pool) = &self.pool else {
            unreachable!("insert_sqlite is only called with a SQLite pool")
        };
        let table = &self.table;
        if rows.is_empty() {
            return Ok(New::All);
        }
        // Built at the first chunk that meets a present id, with the chunks written before.
        let mut new: Option<HashSet<&'a str>> = None;
        let ids = |chunk: &[Row<'a>]| {
            chunk
                .iter()
                .map(|r| r.event.id.as_str())
                .collect::<Vec<_>>()
        };
        // Six anonymous parameters per row (a numbered `?NNN` would make the driver look
        // each one up by name, in time proportional to their number). The text depends only
        // on the row count (a full chunk always has the same): the driver prepares it once
        // per connection and reuses it.
        let insert = |chunk: &'_ [Row<'a>], upsert: bool| {
            let mut sql =
                format!("INSERT INTO {table} (id, tenant, ts, payload, run_id, batch_seq) VALUES ");
            sql.reserve(chunk.len() * 20 + 32);
            for i in 0..chunk.len() {
                sql.push_str(if i == 0 { "" } else { ", " });
                sql.push_str("(?, ?, ?, ?, ?, ?)");
            }
            if upsert {
                sql.push_str(" ON CONFLICT (id) DO NOTHING");
            }
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for row in chunk {
                query = query
                    .bind(row.event.id.as_str())
                    .bind(row.event.tenant.as_str())
                    .bind(row.event.ts)
                    .bind(row.payload)
                    .bind(run)
                    .bind(batch);
            }
            query
        };
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        for (index, chunk) in rows.chunks(MAX_ROWS_PER_STATEMENT).enumerate() {
            // A constraint violation aborts the statement alone (SQLite's default `ABORT`):
            // none of its rows is inserted, the transaction goes on.
            match insert(chunk, false).execute(&mut *tx).await {
                Ok(_) => {
                    if let Some(new) = &mut new {
                        new.extend(ids(chunk));
                    }
                    continue;
                }
                Err(sqlx::Error::Database(error))
                    if error.kind() == sqlx::error::ErrorKind::UniqueViolation => {}
                Err(error) => return Err(error.into()),
            }
            let mut select =
                QueryBuilder::<Sqlite>::new(format!("SELECT id FROM {table} WHERE id IN ("));
            let mut list = select.separated(", ");
            for row in chunk {
                list.push_bind(row.event.id.as_str());
            }
            select.push(")");
            let present: HashSet<String> = select
                .build_query_scalar::<String>()
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
            let written = insert(chunk, true).execute(&mut *tx).await?.rows_affected();
            let mut chunk_new: Vec<&'a str> = ids(chunk)
                .into_iter()
                .filter(|id| !present.contains(*id))
                .collect();
            // No id present is inserted (a row equals itself under any collation), so when
            // the counts agree the ids are these. They differ when the table's `id` equates
            // distinct strings (`COLLATE NOCASE`: "a" conflicts with "A", stored or of this
            // chunk): then the rows this batch owns now, minus those present before, say
            // which ids were inserted (rare; it costs one more `SELECT` of the chunk).
            if written != chunk_new.len() as u64 {
                let mut select =
                    QueryBuilder::<Sqlite>::new(format!("SELECT id FROM {table} WHERE run_id = "));
                select
                    .push_bind(run)
                    .push(" AND batch_seq = ")
                    .push_bind(batch);
                select.push(" AND id IN (");
                let mut list = select.separated(", ");
                for row in chunk {
                    list.push_bind(row.event.id.as_str());
                }
                select.push(")");
                let owned: HashSet<String> = select
                    .build_query_scalar::<String>()
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .collect();
                chunk_new.retain(|id| owned.contains(*id));
            }
            let new = new.get_or_insert_with(|| {
                let mut set = HashSet::with_capacity(rows.len());
                set.extend(ids(&rows[..index * MAX_ROWS_PER_STATEMENT]));
                set
            });
            new.extend(chunk_new);
        }
        tx.commit().await?;
        Ok(new.map_or(New::All, New::Only))
    }
}

/// Binds `rows` as the four arrays `$1` (ids), `$2` (tenants), `$3` (timestamps) and `$4`
/// (payloads) of an `unnest` statement.
fn bind_rows<'q, Q: BindArrays<'q>>(query: Q, rows: &'q [Row<'_>]) -> Q {
    let ids: Vec<&str> = rows.iter().map(|r| r.event.id.as_str()).collect();
    let tenants: Vec<&str> = rows.iter().map(|r| r.event.tenant.as_str()).collect();
    let ts: Vec<i64> = rows.iter().map(|r| r.event.ts).collect();
    let payloads: Vec<&str> = rows.iter().map(|r| r.payload).collect();
    query
        .bind_strs(ids)
        .bind_strs(tenants)
        .bind_ints(ts)
        .bind_strs(payloads)
}

/// The binds [`bind_rows`] needs, of a PostgreSQL query with or without output rows.
trait BindArrays<'q>: Sized {
    fn bind_strs(self, values: Vec<&'q str>) -> Self;
    fn bind_ints(self, values: Vec<i64>) -> Self;
}

impl<'q> BindArrays<'q> for Query<'q, Postgres, PgArguments> {
    fn bind_strs(self, values: Vec<&'q str>) -> Self {
        self.bind(values)
    }
    fn bind_ints(self, values: Vec<i64>) -> Self {
        self.bind(values)
    }
}

impl<'q, O> BindArrays<'q> for QueryAs<'q, Postgres, O, PgArguments> {
    fn bind_strs(self, values: Vec<&'q str>) -> Self {
        self.bind(values)
    }
    fn bind_ints(self, values: Vec<i64>) -> Self {
        self.bind(values)
    }
}

#[cfg(test)]
mod tests;
