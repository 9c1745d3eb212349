//! A rolled-back batch: recording it, and settling its records with their source (nak,
//! give up to the dead-letter file, or abandon when its rows may still be there).

use std::sync::atomic::Ordering;

use result_stream::{Cause, CompensatedError};

use super::batch::{Ctx, StopCause};
use super::config::OnFailure;
use super::error::PipelineError;
use crate::event::Event;
use crate::record::Ack;
use crate::report::stats::InFlight;

/// How many rolled-back batches are reported one by one on standard error (all are counted
/// in the summary, and all go to `--dead-letter`).
pub const REPORTED_ROLLBACKS: u64 = 20;

impl Ctx {
    /// The `skip_failed_items` callback: batch number `index + 1` failed (after its
    /// retries) and was rolled back alone, cleanly. It is recorded (counters, a message, the
    /// dead-letter file); in stop mode, unless it failed for a reason a redelivery clears
    /// (the database was unavailable, or rows it found present vanished before its claim:
    /// [`PipelineError::is_redeliverable`]) and its source redelivers, the run then stops
    /// (see [`StopCause`]).
    pub(super) fn skipped(&self, index: u64, error: CompensatedError<PipelineError>) {
        let seq = index + 1;
        let (cause, report) = error.into_parts();
        let (message, redeliverable) = match &cause {
            Cause::Handler(error) => (error.to_string(), error.is_redeliverable()),
            Cause::TimedOut(limit) => (
                format!("batch {seq}: write timed out after {limit:?}"),
                false,
            ),
            other => (format!("batch {seq}: {other}"), false),
        };
        let stops =
            self.failure.on_failure == OnFailure::Stop && !(redeliverable && self.redelivers);
        if let Some(batch) = self.stats.take_in_flight(seq) {
            self.rolled_back(&batch, message.clone(), &report, !stops);
        }
        if stops {
            let mut cause = crate::mutex::lock(&self.stop_cause);
            if cause.is_none() {
                *cause = Some(StopCause {
                    cause: message,
                    rollback: report.to_string(),
                    rolled_back_cleanly: report.is_complete(),
                });
            }
            drop(cause);
            self.stopping.cancel();
        }
    }

    /// Records a rolled-back batch: counters, a message, and the dead-letter file.
    /// `announce` prints a line on stderr (skip-batch mode; when the run stops, its final
    /// error line says it).
    pub(super) fn rolled_back(
        &self,
        batch: &InFlight,
        error: String,
        report: &result_stream::RollbackReport,
        announce: bool,
    ) {
        // Durable (flushed and synced) before the batch is announced.
        if let Err(error) = self.outputs.dead_letter(batch.events.iter()) {
            self.stats
                .warn(format!("cannot write to the dead-letter file: {error}"));
        }
        let count = self.stats.rolled_back.load(Ordering::Relaxed) + 1;
        if announce && count <= REPORTED_ROLLBACKS {
            self.console.warn(format!(
                "event-batcher: {error}: rolled back, {} row(s) deleted, {report}",
                batch.rows_deleted.load(Ordering::Relaxed)
            ));
        }
        if announce && count == REPORTED_ROLLBACKS + 1 {
            self.console
                .warn("event-batcher: more batches rolled back: counted and listed in the summary");
        }
        self.stats.batch_rolled_back(batch, error, report);
    }

    /// Settles the hooks of a rolled-back batch, once its compensation deleted its rows
    /// (`rows_gone`) or failed to:
    /// - rows not (surely) deleted: every hook is abandoned, the source redelivers after its
    ///   own timeout (see [`register_undo`](Self::register_undo));
    /// - otherwise, with `--max-deliveries N`, the events whose record has been delivered N
    ///   times are appended to the dead-letter file, which is synced, and only then given up
    ///   (`+TERM`); if the file cannot be written they are nak'ed instead, so
    ///   no event is ever dropped;
    /// - every other hook is nak'ed (redelivered after `--nak-delay`).
    pub(super) async fn settle_rolled_back(
        &self,
        pending: Vec<(usize, Ack)>,
        events: &[Event],
        rows_gone: bool,
    ) {
        if !rows_gone {
            for (_, ack) in pending {
                ack.abandon();
            }
            return;
        }
        // A cancelled run says nothing about whether the database accepts these events.
        let may_give_up = !self.cancel.is_cancelled();
        let exhausted = |ack: &Ack| {
            may_give_up
                && self
                    .failure
                    .max_deliveries
                    .is_some_and(|max| ack.deliveries().is_some_and(|n| n >= max))
        };
        let (given_up, mut retried): (Vec<_>, Vec<_>) =
            pending.into_iter().partition(|(_, ack)| exhausted(ack));
        if !given_up.is_empty() {
            match self
                .outputs
                .give_up(given_up.iter().map(|(index, _)| &events[*index]))
            {
                Ok(()) => {
                    self.stats
                        .dead_lettered
                        .fetch_add(given_up.len() as u64, Ordering::Relaxed);
                    for (_, ack) in given_up {
                        if let Err(error) = ack.give_up().await {
                            self.stats.ack_failed("term", &error);
                        }
                    }
                }
                Err(error) => {
                    self.stats.warn(format!(
                        "cannot write to the dead-letter file ({error}): {} event(s) given back \
                         for redelivery instead of given up",
                        given_up.len()
                    ));
                    retried.extend(given_up);
                }
            }
        }
        for (_, ack) in retried {
            if let Err(error) = ack.nak().await {
                // The source redelivers an unacknowledged record anyway.
                self.stats.ack_failed("nak", &error);
            }
        }
    }
}
