//! The end of a run: how it ended, and the row counts of the consistency check.

use result_stream::{Cause, CompensatedError, Completion};

use super::batch::{Ctx, batch_number};
use super::error::PipelineError;
use crate::report::{DatabaseRows, Outcome};

impl Ctx {
    /// How the run ended; records the batch that `for_each_compensated` rolled back itself.
    pub(super) fn outcome(
        &self,
        result: Result<Completion, CompensatedError<PipelineError>>,
    ) -> Outcome {
        let error = match result {
            Ok(_) => return Outcome::Finished,
            Err(error) => error,
        };
        let (cause, report) = error.into_parts();
        // The batches `for_each_compensated` rolled back as it stopped: the one that
        // failed, and those it dropped in flight (`--concurrency`).
        let failed = match &cause {
            Cause::Handler(
                PipelineError::Write { batch, .. }
                | PipelineError::Injected { batch, .. }
                | PipelineError::Vanished { batch, .. },
            ) => Some(*batch),
            _ => None,
        };
        let stop_cause = crate::mutex::lock(&self.stop_cause).take();
        for batch in self.stats.take_all_in_flight() {
            let error = match &cause {
                Cause::Handler(error) if failed == Some(batch.seq) => error.to_string(),
                _ if stop_cause.is_some() || failed.is_some() => {
                    format!("batch {}: rolled back as the run stopped", batch.seq)
                }
                Cause::Upstream(error) => error.to_string(),
                Cause::TimedOut(limit) => {
                    format!("batch {}: write timed out after {limit:?}", batch.seq)
                }
                _ => format!("batch {}: cancelled", batch.seq),
            };
            self.rolled_back(&batch, error, &report, false);
        }
        if let Some(stop) = stop_cause
            && cause.is_cancelled()
            && !self.cancel.is_cancelled()
        {
            // Stopped by a failure that skip-batch handling rolled back (see `skipped`).
            return Outcome::Stopped {
                cause: stop.cause,
                rollback: stop.rollback,
                rolled_back_cleanly: stop.rolled_back_cleanly && report.is_complete(),
            };
        }
        let (rollback, rolled_back_cleanly) = match &cause {
            _ if report.ran() == 0 => ("nothing to roll back".to_owned(), report.is_complete()),
            _ => (report.to_string(), report.is_complete()),
        };
        match cause {
            Cause::Upstream(error) | Cause::Handler(error) => {
                let cause = match (&error, self.failure.strict) {
                    (PipelineError::Invalid(_), true) => format!("{error} (--strict)"),
                    _ => error.to_string(),
                };
                Outcome::Stopped {
                    cause,
                    rollback,
                    rolled_back_cleanly,
                }
            }
            Cause::Cancelled => Outcome::Cancelled {
                rollback,
                rolled_back_cleanly,
            },
            Cause::TimedOut(limit) => Outcome::Stopped {
                cause: format!("a batch write timed out after {limit:?}"),
                rollback,
                rolled_back_cleanly,
            },
            // Causes a later version of the crate may add (the enum is non-exhaustive).
            _ => Outcome::Stopped {
                cause: "stopped".to_owned(),
                rollback,
                rolled_back_cleanly,
            },
        }
    }

    /// The row counts of the consistency check.
    pub(super) async fn count_rows(&self) -> Result<DatabaseRows, String> {
        let rolled_back: Vec<i64> = self.stats_failed_batches();
        let skipped = self.stats.take_skipped_ids();
        let store = &self.store;
        let run = self.run_id;
        let counting = async {
            let of_rolled_back = store.count_batches(run, &rolled_back, None).await?;
            let (total, of_run) = store.count_all_and_run(run).await?;
            Ok::<_, crate::store::QueryError>(DatabaseRows {
                total,
                of_run: of_run.saturating_sub(of_rolled_back),
                left_by_rolled_back: store.count_batches(run, &rolled_back, Some(false)).await?,
                kept_claimed: store.count_batches(run, &rolled_back, Some(true)).await?,
                skipped_ids: 0,
                skipped_found: 0,
            })
        };
        let rows = counting.await.map_err(|error| error.to_string())?;
        // In chunks read back from disk: the ids are not all in memory at once.
        let (skipped_ids, skipped_found) = skipped
            .verify(|chunk| async move { store.count_ids(&chunk).await })
            .await?;
        Ok(DatabaseRows {
            skipped_ids,
            skipped_found,
            ..rows
        })
    }

    fn stats_failed_batches(&self) -> Vec<i64> {
        self.stats
            .failed_batch_numbers()
            .into_iter()
            .map(batch_number)
            .collect()
    }
}
