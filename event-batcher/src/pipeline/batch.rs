//! Writing one batch: the handler of `for_each_compensated`, the compensation it registers
//! first, and the state every batch shares ([`Ctx`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use result_stream::{BoxError, CompensationScope, FlushReason, RollbackPolicy};
use tokio_util::sync::CancellationToken;

use super::config::OnFailure;
use super::error::PipelineError;
use super::faults::FaultInjector;
use super::outputs::Outputs;
use crate::console::Console;
use crate::event::Event;
use crate::record::Ack;
use crate::report::stats::{InFlight, Stats};
use crate::store::{self, Store};
use crate::sync::lock;
use crate::validate::Incoming;

/// How failures are handled.
#[derive(Debug)]
pub(super) struct FailurePolicy {
    /// How compensations are retried.
    pub(super) rollback: RollbackPolicy,
    /// What a failed batch does to the run.
    pub(super) on_failure: OnFailure,
    /// `--max-deliveries`.
    pub(super) max_deliveries: Option<u64>,
    /// `--strict`: an invalid record stops the run.
    pub(super) strict: bool,
}

/// The state every batch shares.
#[derive(Debug)]
pub(super) struct Ctx {
    pub(super) store: Store,
    pub(super) run_id: i64,
    pub(super) stats: Arc<Stats>,
    pub(super) console: Console,
    pub(super) failure: FailurePolicy,
    pub(super) faults: FaultInjector,
    pub(super) outputs: Outputs,
    /// The run's cancellation: a batch rolled back because of it gives nothing up.
    pub(super) cancel: CancellationToken,
    /// `--database-outage`.
    pub(super) database_outage: std::time::Duration,
}

/// Writes one batch under the failure policy: the handler of `for_each_compensated`.
///
/// `scope` is the pipeline's own scope, used with `UnitOfWork::Item`: when this runs it holds
/// nothing but what this batch registers, so `scope.commit()` commits exactly this batch.
pub(super) async fn write_batch(
    ctx: Arc<Ctx>,
    seq: u64,
    reason: FlushReason,
    batch: Vec<Incoming>,
    scope: CompensationScope,
) -> Result<(), PipelineError> {
    let mut events = Vec::with_capacity(batch.len());
    // Each hook with the index of its event.
    let mut acks = Vec::new();
    for (index, incoming) in batch.into_iter().enumerate() {
        events.push(incoming.event);
        acks.extend(incoming.ack.map(|ack| (index, ack)));
    }
    let events: Arc<[Event]> = events.into();
    let acks = Arc::new(Mutex::new(acks));
    let rows_deleted = Arc::new(AtomicU64::new(0));
    let freeze = ctx.faults.freezes_at(seq);
    let fail = freeze || ctx.faults.should_fail(seq);
    let hang = ctx.faults.hangs_at(seq);
    // Records whose source redelivers what is given back (a broker): a batch of them that
    // failed because the database went away is given back, and the run goes on.
    let redelivers = !lock(&acks).is_empty();
    ctx.stats.begin_batch(InFlight {
        seq,
        events: events.clone(),
        rows_deleted: rows_deleted.clone(),
    });

    // The batch's compensations go to the pipeline's scope: when this runs it holds nothing
    // else (`UnitOfWork::Item` commits each successful batch), so `scope.rollback` undoes
    // exactly this batch and `scope.commit` commits exactly this batch. A cancellation
    // while the batch is being written makes `for_each_compensated` roll it back.
    ctx.register_undo(&scope, seq, &events, &acks, &rows_deleted);
    let inserted = match ctx.write(seq, &events, fail, freeze).await {
        Ok(inserted) => inserted,
        Err(error) => {
            let outage = error.is_database_unavailable();
            if outage {
                // The rollback needs the database: wait for it (bounded) first.
                ctx.await_database(seq, &error).await;
            }
            // Stop mode: the error propagates, `for_each_compensated` stops and rolls this
            // batch back. Not for an outage with a redelivering source: that batch is given
            // back and written again later, like in skip-batch mode.
            if ctx.failure.on_failure == OnFailure::Stop && !(outage && redelivers) {
                return Err(error);
            }
            // Skip-batch mode: roll this batch back here, record it and go on.
            let report = scope.rollback(ctx.failure.rollback).await;
            let batch = InFlight {
                seq,
                events,
                rows_deleted,
            };
            ctx.rolled_back(&batch, error.to_string(), &report, true);
            if !report.is_complete() {
                // Rows this batch wrote are still there: going on would build on an
                // inconsistent table.
                return Err(PipelineError::RollbackIncomplete {
                    batch: seq,
                    report: report.to_string(),
                });
            }
            return Ok(());
        }
    };
    if hang {
        ctx.faults.hang(seq, &ctx.console).await;
    }
    scope.commit();

    // Committed: count it, then acknowledge its events to the source. A failed ack only
    // means a redelivery, which the idempotent insert absorbs.
    ctx.stats
        .batch_committed(reason, events.len(), inserted.rows, inserted.skipped);
    let pending = std::mem::take(&mut *lock(&acks));
    for (_, ack) in pending {
        if let Err(error) = ack.ack().await {
            ctx.stats.ack_failed("ack", &error);
        }
    }
    Ok(())
}

impl Ctx {
    /// Registers, before anything is written, what undoes batch `seq`: a nak of its events
    /// (registered first, so it runs last, after the rows are gone; see
    /// [`settle_rolled_back`](Self::settle_rolled_back)) and the deletion of the rows it
    /// inserts.
    ///
    /// The events are nak'ed only if the deletion succeeded. If it failed or timed out (its
    /// statement may still commit later), a nak would let another instance get the events
    /// at once, find the rows present and acknowledge them just before the late deletion
    /// removes them: acknowledged events missing. They are abandoned instead
    /// ([`AckHandle::abandon`](crate::record::AckHandle::abandon)): no verdict, the broker
    /// redelivers them after its ack wait.
    pub(super) fn register_undo(
        self: &Arc<Self>,
        scope: &CompensationScope,
        seq: u64,
        events: &Arc<[Event]>,
        acks: &Arc<Mutex<Vec<(usize, Ack)>>>,
        rows_deleted: &Arc<AtomicU64>,
    ) {
        let rows_gone = Arc::new(AtomicBool::new(false));
        if !lock(acks).is_empty() {
            let ctx = self.clone();
            let events = events.clone();
            let acks = acks.clone();
            let rows_gone = rows_gone.clone();
            scope.register_labeled(format!("batch {seq}: nak its events"), move || {
                let ctx = ctx.clone();
                let events = events.clone();
                let acks = acks.clone();
                let rows_gone = rows_gone.load(Ordering::Acquire);
                async move {
                    // Taken once: a retry has nothing left to nak.
                    let pending = std::mem::take(&mut *lock(&acks));
                    ctx.settle_rolled_back(pending, &events, rows_gone).await;
                    Ok::<(), BoxError>(())
                }
            });
        }
        let store = self.store.clone();
        let run = self.run_id;
        let batch = batch_number(seq);
        let failing = Arc::new(AtomicU32::new(self.faults.failing_rollback_attempts()));
        let deleted = rows_deleted.clone();
        scope.register_labeled(format!("batch {seq}: delete its rows"), move || {
            let store = store.clone();
            let failing = failing.clone();
            let deleted = deleted.clone();
            let rows_gone = rows_gone.clone();
            async move {
                let injected = failing
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok();
                if injected {
                    return Err(BoxError::from(
                        "injected compensation failure (--fail-rollback-attempts)",
                    ));
                }
                let rows = store.delete_batch(run, batch).await?;
                deleted.fetch_add(rows, Ordering::Relaxed);
                rows_gone.store(true, Ordering::Release);
                Ok(())
            }
        });
    }

    /// Writes `events` as batch `seq` in two parts, each its own autocommitted statement(s),
    /// failing in between when `fail` is set (after freezing when `freeze` is set); returns
    /// the rows inserted and the ids skipped.
    pub(super) async fn write(
        &self,
        seq: u64,
        events: &[Event],
        fail: bool,
        freeze: bool,
    ) -> Result<store::Inserted, PipelineError> {
        let batch = batch_number(seq);
        let write_error = |source| PipelineError::Write { batch: seq, source };
        let (first, second) = events.split_at(events.len().div_ceil(2));
        let mut inserted = self
            .store
            .insert(self.run_id, batch, first)
            .await
            .map_err(write_error)?;
        if freeze {
            self.faults.freeze(seq, &self.console).await;
        }
        if fail {
            return Err(PipelineError::Injected {
                batch: seq,
                written: first.len(),
                len: events.len(),
            });
        }
        if !second.is_empty() {
            let rest = self
                .store
                .insert(self.run_id, batch, second)
                .await
                .map_err(write_error)?;
            inserted.rows += rest.rows;
            inserted.skipped.extend(rest.skipped);
        }
        Ok(inserted)
    }
}

/// A batch number as stored in `batch_seq`.
pub(super) fn batch_number(seq: u64) -> i64 {
    // A run would need 2^63 batches to overflow.
    i64::try_from(seq).unwrap_or(i64::MAX)
}
