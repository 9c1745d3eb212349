//! The idempotent, fencing insert of one part of a batch, one way per backend.
//!
//! Rules (both backends):
//! - A part is written as **one transaction** when it takes more than one statement, so it
//!   is committed whole or not at all; a part of one statement is that statement,
//!   autocommitted. Either way, what a part committed stays committed until the batch's
//!   compensation deletes it: a failure *between* parts is undone by the compensation, not
//!   by the database.
//! - An id twice in a part is written once (its first occurrence); the others are skipped.
//! - A row already present is never overwritten; when another batch (of any run) owns it,
//!   the statement that meets it sets `claimed = 1` (fencing, see [`Store::insert`]).
//!
//! PostgreSQL: each statement is `INSERT … SELECT … FROM unnest($1::text[], $2::text[],
//! $3::int8[], $4::text[]) … ON CONFLICT … RETURNING id, run_id, batch_seq`: four array
//! parameters whatever the row count, so the statement text never changes (prepared once per
//! connection), there is no bind-parameter limit to split for below
//! [`POSTGRES_MAX_ROWS_PER_STATEMENT`], and a part is one round trip and one commit.
//!
//! SQLite: the part runs in one `BEGIN IMMEDIATE` transaction (the write lock is taken first,
//! so no other writer can insert between the two statements). Per chunk of at most
//! [`MAX_ROWS_PER_STATEMENT`] rows, a `SELECT id, run_id, batch_seq … WHERE id IN (…)` finds
//! the ids already present, then a multi-row `INSERT … ON CONFLICT …` without `RETURNING`
//! writes the rest (and claims the present rows another batch owns). The driver hands every
//! result row from its worker thread to the caller through a channel, one wake-up each: a
//! `RETURNING` of every inserted row cost more than the insert; the `SELECT` usually
//! returns nothing.

use std::collections::HashSet;

use sqlx::{AssertSqlSafe, QueryBuilder, Sqlite};

use super::{MAX_ROWS_PER_STATEMENT, Pool, QueryError, Store};
use crate::event::Event;

/// Most rows in one PostgreSQL `INSERT` (its arrays have no parameter limit; this bounds the
/// size of one message and of one statement's work).
pub const POSTGRES_MAX_ROWS_PER_STATEMENT: usize = 10_000;

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
    payload: String,
}

impl Store {
    /// Inserts `events` as rows of batch `batch` of run `run`, skipping every id already
    /// stored; returns how many rows were inserted and the ids of the events that were
    /// skipped.
    ///
    /// A row found already present that another batch (of any run) inserted is **claimed**
    /// by the same statement (`… ON CONFLICT (id) DO UPDATE SET claimed = 1 WHERE` the row's
    /// `run_id`/`batch_seq` are not this batch's): its owner's compensation
    /// ([`delete_batch`](Self::delete_batch)) no longer deletes it, so a row that this batch
    /// acknowledges as present cannot disappear under it, however late the owner rolls
    /// back. The row itself (its owner, its values) is left as it is. An id twice in
    /// `events` is inserted once (the first occurrence) and skipped the other times.
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
        // One row per id: PostgreSQL refuses an upsert that meets the same row twice.
        let mut seen = HashSet::with_capacity(events.len());
        let rows: Vec<Row<'_>> = events
            .iter()
            .filter(|event| seen.insert(event.id.as_str()))
            .map(|event| Row {
                event,
                payload: event.payload.to_string(),
            })
            .collect();
        drop(seen);
        let new = match &self.pool {
            Pool::Postgres(_) => self.insert_postgres(run, batch, &rows).await?,
            Pool::Sqlite(_) => self.insert_sqlite(run, batch, &rows).await?,
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

    /// The PostgreSQL part: `unnest` statements; returns the ids inserted.
    async fn insert_postgres<'r, 'a>(
        &self,
        run: i64,
        batch: i64,
        rows: &'r [Row<'a>],
    ) -> Result<HashSet<&'a str>, QueryError> {
        let Pool::Postgres(pool) = &self.pool else {
            unreachable!("insert_postgres is only called with a PostgreSQL pool")
        };
        let table = &self.table;
        let sql = format!(
            "INSERT INTO {table} (id, tenant, ts, payload, run_id, batch_seq) \
             SELECT id, tenant, ts, payload, $5, $6 \
             FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[]) AS u(id, tenant, ts, payload) \
             ON CONFLICT (id) DO UPDATE SET claimed = 1 \
             WHERE {table}.run_id <> excluded.run_id OR {table}.batch_seq <> excluded.batch_seq \
             RETURNING id, run_id, batch_seq"
        );
        let statement = |chunk: &'r [Row<'a>]| {
            let ids: Vec<&str> = chunk.iter().map(|r| r.event.id.as_str()).collect();
            let tenants: Vec<&str> = chunk.iter().map(|r| r.event.tenant.as_str()).collect();
            let ts: Vec<i64> = chunk.iter().map(|r| r.event.ts).collect();
            let payloads: Vec<&str> = chunk.iter().map(|r| r.payload.as_str()).collect();
            sqlx::query_as::<_, (String, i64, i64)>(AssertSqlSafe(sql.clone()))
                .bind(ids)
                .bind(tenants)
                .bind(ts)
                .bind(payloads)
                .bind(run)
                .bind(batch)
        };
        let mut returned = Vec::with_capacity(rows.len());
        if rows.len() <= POSTGRES_MAX_ROWS_PER_STATEMENT {
            if !rows.is_empty() {
                returned = statement(rows).fetch_all(pool).await?;
            }
        } else {
            let mut tx = pool.begin().await?;
            for chunk in rows.chunks(POSTGRES_MAX_ROWS_PER_STATEMENT) {
                returned.extend(statement(chunk).fetch_all(&mut *tx).await?);
            }
            tx.commit().await?;
        }
        // Returned: the rows inserted (owned by this batch) and the rows claimed (owned by
        // another); not returned: rows this batch inserted in an earlier part.
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

    /// The SQLite part: one `BEGIN IMMEDIATE` transaction, a `SELECT` of the ids present and
    /// an `INSERT` per chunk; returns the ids inserted.
    async fn insert_sqlite<'a>(
        &self,
        run: i64,
        batch: i64,
        rows: &[Row<'a>],
    ) -> Result<HashSet<&'a str>, QueryError> {
        let Pool::Sqlite(pool) = &self.pool else {
            unreachable!("insert_sqlite is only called with a SQLite pool")
        };
        let table = &self.table;
        let mut new = HashSet::with_capacity(rows.len());
        if rows.is_empty() {
            return Ok(new);
        }
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        for chunk in rows.chunks(MAX_ROWS_PER_STATEMENT) {
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
            let mut insert = QueryBuilder::<Sqlite>::new(format!(
                "INSERT INTO {table} (id, tenant, ts, payload, run_id, batch_seq) "
            ));
            insert.push_values(chunk, |mut values, row| {
                values
                    .push_bind(row.event.id.as_str())
                    .push_bind(row.event.tenant.as_str())
                    .push_bind(row.event.ts)
                    .push_bind(row.payload.as_str())
                    .push_bind(run)
                    .push_bind(batch);
            });
            insert.push(format!(
                " ON CONFLICT (id) DO UPDATE SET claimed = 1 \
                 WHERE {table}.run_id <> excluded.run_id OR {table}.batch_seq <> excluded.batch_seq"
            ));
            insert.build().execute(&mut *tx).await?;
            new.extend(
                chunk
                    .iter()
                    .map(|r| r.event.id.as_str())
                    .filter(|id| !present.contains(*id)),
            );
        }
        tx.commit().await?;
        Ok(new)
    }
}
