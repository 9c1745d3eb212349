//! The adapter chain, built from the library's public API:
//!
//! ```text
//! source ─► map_ok_stream(validate) ─► invalid records diverted ─► chunks_timeout_result
//!        ─► tagged with the flush reason ─► for_each_compensated(write the batch)
//! ```

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::{Stream, StreamExt, TryStreamExt};
use result_stream::{CompensatedError, CompensationScope, Completion, ResultStreamExt};
use tokio_util::sync::CancellationToken;

use super::batch::{Ctx, write_batch};
use super::config::Config;
use super::error::PipelineError;
use crate::source::RecordStream;
use crate::validate::{self, Incoming};

/// How many invalid records are reported one by one on standard error (all are counted,
/// and all go to `--rejects`).
pub const REPORTED_REJECTS: u64 = 20;

/// Builds the adapter chain and drives it to its end.
pub(super) async fn drive(
    ctx: Arc<Ctx>,
    source: RecordStream,
    config: &Config,
    cancel: CancellationToken,
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

    let mut batches = Box::pin(valid.chunks_timeout_result(config.max_batch, config.flush_every));
    let tagged = futures::stream::poll_fn(move |cx| {
        batches.as_mut().poll_next(cx).map(|next| {
            next.map(|item| {
                item.map(|batch| {
                    let reason = batches
                        .last_flush_reason()
                        .expect("a yielded batch has a flush reason");
                    (batch, reason)
                })
            })
        })
    });

    let writing = ctx.clone();
    let mut seq = 0u64;
    tagged
        .for_each_compensated(CompensationScope::new(), move |(batch, reason), scope| {
            seq += 1;
            write_batch(writing.clone(), seq, reason, batch, scope)
        })
        .rollback_policy(ctx.failure.rollback)
        .with_cancellation(cancel)
        .await
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
                .println(format!("event-batcher: invalid {rejected}"));
        }
        if count == REPORTED_REJECTS + 1 {
            self.console.println(
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
