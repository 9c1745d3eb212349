//! The adapter chain, built from the library's public API:
//!
//! ```text
//! source ─► map_ok_stream(validate) ─► invalid records diverted
//!        ─► chunks_timeout_result(--max-batch, --flush-every)          (or, --per-tenant:
//!           chunks_timeout_by_key_result(tenant, …).max_open_keys(--max-open-tenants))
//!           .max_weight_opt(--max-batch-bytes, encoded size) .with_batch_info()
//!        ─► numbered ─► for_each_compensated(write the batch)
//!           .concurrency(--concurrency) [.retry(--write-retries)] [.skip_failed_items]
//! ```

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::future::Either;
use futures::{Stream, StreamExt, TryStreamExt};
use result_stream::{BatchInfo, CompensatedError, CompensationScope, Completion, ResultStreamExt};

use super::batch::{Batch, Ctx, write_batch};
use super::config::{Config, OnFailure};
use super::error::PipelineError;
use crate::event::Event;
use crate::source::RecordStream;
use crate::validate::{self, Incoming};

/// How many invalid records are reported one by one on standard error (all are counted,
/// and all go to `--rejects`).
pub const REPORTED_REJECTS: u64 = 20;

/// The size of `event` encoded as one NDJSON line (without its newline): the weight that
/// `--max-batch-bytes` caps.
pub fn encoded_len(event: &Event) -> usize {
    /// Counts what is written, keeps nothing.
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing an `Event` (strings, an integer, a JSON value) cannot fail.
    serde_json::to_writer(&mut count, event).map_or(0, |()| count.0)
}

/// Batches `valid` as `config` says: one open batch, or one per tenant (two adapter types,
/// joined by `Either`); the byte cap, known only at run time, is an `Option` the adapters
/// take as it is (`max_weight_opt`), so it costs no branch of its own.
fn batches<S>(
    valid: S,
    config: &Config,
) -> impl Stream<Item = Result<(Option<String>, Vec<Incoming>, BatchInfo), PipelineError>>
where
    S: Stream<Item = Result<Incoming, PipelineError>>,
{
    let weigh = |incoming: &Incoming| encoded_len(&incoming.event);
    let (max, every, bytes) = (config.max_batch, config.flush_every, config.max_batch_bytes);
    if config.per_tenant {
        let tenant = |incoming: &Incoming| incoming.event.tenant.clone();
        let by_tenant = valid
            .chunks_timeout_by_key_result(tenant, max, every)
            .max_open_keys(config.max_open_tenants.unwrap_or(usize::MAX))
            .max_weight_opt(bytes, weigh)
            .with_batch_info()
            .map_ok(|(tenant, (batch, info))| (Some(tenant), batch, info));
        Either::Left(by_tenant)
    } else {
        let single = valid
            .chunks_timeout_result(max, every)
            .max_weight_opt(bytes, weigh)
            .with_batch_info()
            .map_ok(|(batch, info)| (None, batch, info));
        Either::Right(single)
    }
}

/// Builds the adapter chain and drives it to its end.
pub(super) async fn drive(
    ctx: Arc<Ctx>,
    source: RecordStream,
    config: &Config,
) -> Result<Completion, CompensatedError<PipelineError>> {
    let reading = ctx.clone();
    let validated = source
        .err_into::<PipelineError>()
        .map_ok_stream(move |record| {
            reading.stats.read.fetch_add(1, Ordering::Relaxed);
            futures::future::ready(
                validate::validate(record)
                    .map_err(|rejected| PipelineError::Invalid(Box::new(rejected))),
            )
        });
    let diverting = ctx.clone();
    let valid = validated.filter_map(move |item| {
        let ctx = diverting.clone();
        async move { ctx.divert_invalid(item).await }
    });

    // Numbered here, once: a retried batch keeps its number (and so its rows' batch_seq).
    let mut seq = 0u64;
    let numbered = batches(valid, config).map_ok(move |(tenant, batch, info)| {
        seq += 1;
        Batch::new(seq, tenant, info, batch)
    });

    let writing = ctx.clone();
    let run = numbered
        .for_each_compensated(CompensationScope::new(), move |batch, scope| {
            let ctx = writing.clone();
            async move {
                // Attempts that end are timed; one dropped by a cancellation is not.
                let started = tokio::time::Instant::now();
                let written = write_batch(ctx.clone(), batch, scope).await;
                ctx.stats.write_seconds.observe(started.elapsed());
                written
            }
        })
        .rollback_policy(ctx.failure.rollback)
        .concurrency(config.concurrency)
        .with_cancellation(ctx.stopping.clone());
    let run = match ctx.failure.retry {
        Some(policy) => run.retry(policy),
        None => run,
    };
    // Skip-batch mode, and any batch of a redelivering source (its events come back): a
    // failed batch is rolled back alone and the run goes on. In stop mode, `skipped` then
    // stops the run for a failure that is not a database outage.
    let skips = ctx.failure.on_failure == OnFailure::SkipBatch || ctx.redelivers;
    let run = if skips {
        let skipping = ctx.clone();
        run.skip_failed_items(move |index, error| skipping.skipped(index, error))
    } else {
        run
    };
    run.await
}

impl Ctx {
    /// Counts, reports and (unless `--strict`) drops an invalid record.
    async fn divert_invalid(
        &self,
        item: Result<Incoming, PipelineError>,
    ) -> Option<Result<Incoming, PipelineError>> {
        let mut rejected = match item {
            Err(PipelineError::Invalid(rejected)) => rejected,
            other => return Some(other),
        };
        self.stats.record_reject(&rejected);
        let count = self.stats.invalid.load(Ordering::Relaxed);
        if count <= REPORTED_REJECTS {
            self.console
                .warn(format!("event-batcher: invalid {rejected}"));
        }
        if count == REPORTED_REJECTS + 1 {
            self.console.warn(
                "event-batcher: more invalid records: counted in the summary, all in --rejects if given",
            );
        }
        if let Err(error) = self.outputs.reject(&rejected) {
            self.stats
                .warn(format!("cannot write to the rejects file: {error}"));
        }
        if let Some(ack) = rejected.ack.take()
            && let Err(error) = ack.reject().await
        {
            self.stats.ack_failed("reject", &error);
        }
        if self.failure.strict {
            Some(Err(PipelineError::Invalid(rejected)))
        } else {
            None
        }
    }
}
