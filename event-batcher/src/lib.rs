//! `event-batcher`: the seed scenario of `result-stream` as a runnable pipeline on a real
//! database. Events in, batches of up to 500 or every 2 s, each batch persisted to SQLite or
//! PostgreSQL, partial writes rolled back when persistence fails.
//!
//! It uses only the public API of `result-stream`:
//!
//! ```text
//! source (synthetic | NDJSON | stdin | NATS)       Stream<Item = Result<Record, PipelineError>>
//!   .map_ok_stream(validate)                        parse + validate; invalid → Err(Invalid)
//!   .filter_map(divert invalid)                     count, report line number, --rejects;
//!                                                   dropped, or passed on with --strict
//!   .chunks_timeout_result(--max-batch, --flush-every)   (--per-tenant: by_key, per tenant)
//!   [.max_weight(--max-batch-bytes, encoded size)]
//!   .with_batch_info()                              size | weight | deadline | end | error | eviction
//!   .for_each_compensated(scope, write_batch)       register undo, write, commit, ack
//!       .rollback_policy(--rollback-*)
//!       .with_cancellation(Ctrl-C)
//!       .concurrency(--concurrency) [.retry(--write-retries)] [.skip_failed_items(..)]
//! ```
//!
//! # Partial writes and their compensation
//!
//! A batch is deliberately **not** written as one database transaction: a transaction that
//! aborts leaves nothing to undo, and would prove nothing about the library. Instead, as a
//! real sink without transactions would (an HTTP API, a queue, several databases), a batch is
//! written in two parts, its first half and then the rest, each part committed on its own
//! (one multi-row statement, or one transaction when it takes several) by inserts that store
//! no id twice and skip a row they find present (`ON CONFLICT (id) DO NOTHING`); the batch
//! *claims* those rows as its last write, when it is about to commit (see below and
//! [`store`]).
//! Between the two parts the first half is committed and visible: a failure there — an
//! injected one (`--fail-every N`, `--fail-rate P`), or a real one such as a lost connection
//! — is a genuine partial write.
//!
//! What makes the batch atomic is the compensation, registered with the library *before*
//! the first statement: `DELETE FROM events WHERE run_id = ? AND batch_seq = ? AND claimed = 0`.
//! If the
//! batch fails, the library runs it (with retries under the rollback policy) and the partial
//! write disappears; if the batch succeeds, it is committed (dropped) and the batch's events
//! count as acknowledged.
//!
//! # Idempotency, and why the compensation does not delete by id alone
//!
//! Writes are idempotent by event id (`id` is the primary key, `ON CONFLICT (id) DO
//! NOTHING`): a re-run of the same input, or a redelivered message, never duplicates a row.
//! That interacts with rollback: if a batch of a re-run holds ids that an earlier run
//! already committed, a compensation `DELETE … WHERE id IN (batch ids)` would delete those
//! earlier, committed rows, which this batch never wrote. So every row records who inserted
//! it, `run_id` (random per run) and `batch_seq` (the batch number within the run), and the
//! compensation deletes `WHERE run_id = ? AND batch_seq = ? AND claimed = 0`: the rows this
//! batch inserted and that no other batch has since found present (and acknowledged), never
//! a row that was already there. It is indexed, needs no list of ids (no
//! bind-parameter limit), and is idempotent, so the library may retry it safely.
//!
//! The same columns give the consistency check its meaning (see [`report::check`]): the rows of
//! this run must be exactly those inserted by committed batches, and no row may carry the
//! number of a rolled-back batch.
//!
//! # Failure policy
//!
//! - `--on-failure stop` (default): the handler registers its compensations on the
//!   pipeline's scope and returns the error; `for_each_compensated` stops pulling, rolls the
//!   batch back and resolves to a `CompensatedError`; the summary is printed with the cause
//!   and the rollback report, and the exit code is 1. Batches committed before stay (each
//!   batch is its own unit of work).
//! - `--on-failure skip-batch`: the handler registers its compensations the same way and
//!   returns the error; `for_each_compensated(..).skip_failed_items(..)` rolls that batch
//!   back alone and hands it to the pipeline, which records it as failed (and writes its
//!   events to `--dead-letter`, unless the source redelivers them: NATS, see
//!   `--max-deliveries`): the run goes on. A cancellation while the batch is being written
//!   rolls it back as in stop mode. If a rollback cannot complete, the run stops, reported
//!   as not rolled back cleanly: rows it could not delete are still there, and the check
//!   will say so. A NATS source always skips a batch that failed because the database was
//!   unavailable (it is nak'ed and redelivered); in stop mode any other failure then stops
//!   the run.
//! - `--write-retries N`: before the failure policy applies, a failed write is rolled back,
//!   backed off and retried (`.retry`); `--concurrency N` writes N batches at once
//!   (`.concurrency`), each committed, counted and acknowledged on its own.
//! - A record's source is nak'ed only after its batch's rows were deleted; when the delete
//!   failed or timed out, the record is abandoned instead (no verdict: redelivered after
//!   the source's own timeout, by when a late delete has finished). With
//!   `--max-deliveries N`, a record delivered N times is not nak'ed but given up: its event
//!   is appended to `--dead-letter` and synced first (nak'ed after all if that fails).
//! - Ctrl-C cancels the run: the batch being written is dropped at once and rolled back.
//!
//! # Layers
//!
//! Imports flow one way, bottom to top: [`console`] (the one writer to standard error) and
//! the lock helper; [`event`] (the event and its rules), [`record`] (what a source hands
//! over), [`validate`]; the [`source`]s and the [`store`], each with its own typed errors;
//! [`report`] (counters, the consistency check, the summary, the progress display);
//! [`metrics`] (those counters served to Prometheus scrapes, `--metrics`) and [`logs`]
//! (the console's lines as `tracing` events, `--log-format`); the [`pipeline`], which
//! wraps the errors below it; and the [`cli`] on top, the only place that knows about
//! flags.
//!
//! # Sources and acknowledgements
//!
//! The pipeline is generic over its source: a [`source::RecordStream`] of records carrying
//! an optional [`record::AckHandle`], acked after the record's batch commits, nak'ed after
//! it is rolled back (the nak is a compensation registered before the delete, so it runs
//! after it), rejected when invalid. The file sources have nothing to acknowledge; the NATS
//! JetStream source ([`source::nats`], `--source nats://…`) is a durable pull consumer that
//! any number of instances share: ack after commit, nak (with a delay) after rollback, `+TERM`
//! for an invalid message, keep-alives for held messages, and a graceful stop
//! ([`pipeline::Pipeline::stop`]: SIGINT/SIGTERM, `--idle-exit`, `--max-events`).
//! [`pipeline::Pipeline::source`] runs any other stream.
//!
//! # Known limits
//!
//! - A row that another batch found present is *claimed* and survives its owner's rollback
//!   (see [`store`]): two runs writing the same ids at once, or a frozen instance that
//!   resumes into a rollback, never delete a row someone acknowledged. The row then keeps
//!   the values the owner wrote (the same event, by id).
//! - One batch is written at a time; throughput is bound by the database's statement
//!   latency.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

// Layers, bottom to top: a module imports only modules listed before it (one way; checked
// by `module-cycles`).
pub mod cli;
pub mod console;
pub mod event;
pub mod logs;
pub mod metrics;
mod mutex;
pub mod pipeline;
pub mod record;
pub mod report;
pub mod source;
pub mod store;
pub mod validate;

pub use pipeline::{Config, Pipeline, PipelineError, SetupError, run};
pub use report::Summary;
