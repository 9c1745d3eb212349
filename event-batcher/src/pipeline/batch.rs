//! Writing one batch: the handler of `for_each_compensated`, the compensation it registers
//! first, and the state every batch shares ([`Ctx`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use result_stream::{BatchInfo, BoxError, ItemScope, RetryPolicy};
use tokio_util::sync::CancellationToken;

use super::config::OnFailure;
use super::error::PipelineError;
use super::faults::FaultInjector;
use super::outputs::Outputs;
use crate::console::Console;
use crate::event::Event;
use crate::mutex::lock;
use crate::record::Ack;
use crate::report::stats::{InFlight, Stats};
use crate::store::{self, Store};
use crate::validate::Incoming;

/// How failures are handled.
#[derive(Debug)]
pub(super) struct FailurePolicy {
    /// How compensations are retried.
    pub(super) rollback: RetryPolicy,
    /// How a failed batch write is retried (`--write-retries`), if it is.
    pub(super) retry: Option<RetryPolicy>,
    /// What a failed batch does to the run.
    pub(super) on_failure: OnFailure,
    /// `--max-deliveries`.
    pub(super) max_deliveries: Option<u64>,
    /// `--strict`: an invalid record stops the run.
    pub(super) strict: bool,
}

impl FailurePolicy {
    /// Attempts of one batch write, the first included.
    fn write_attempts(&self) -> u32 {
        self.retry.map_or(1, |policy| policy.max_attempts())
    }
}

/// Why skip-batch handling stopped the run (stop mode, a redelivering source, a failure
/// that is not a database outage): what the summary reports as the cause.
#[derive(Debug, Clone)]
pub(super) struct StopCause {
    pub(super) cause: String,
    pub(super) rollback: String,
    pub(super) rolled_back_cleanly: bool,
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
    /// A child of `cancel`, watched by `for_each_compensated`: also cancelled by a failure
    /// that stops the run from skip-batch handling (see [`StopCause`]).
    pub(super) stopping: CancellationToken,
    /// Set with `stopping` by a failure that stops the run.
    pub(super) stop_cause: Mutex<Option<StopCause>>,
    /// The records carry acknowledgement hooks and their source redelivers what is given
    /// back (NATS): a batch that failed because the database went away is rolled back,
    /// given back, and the run goes on, whatever `--on-failure` says.
    pub(super) redelivers: bool,
    /// `--database-outage`.
    pub(super) database_outage: std::time::Duration,
}

/// One batch, as `for_each_compensated` hands it to [`write_batch`]: cheap to clone (a
/// retried batch is a clone), numbered once, its records' hooks shared by its attempts.
#[derive(Debug, Clone)]
pub(super) struct Batch {
    /// The batch number (1-based, in the order batches closed).
    seq: u64,
    /// Its tenant (`--per-tenant`).
    tenant: Option<Arc<str>>,
    /// Why it closed, its weight, its age.
    info: BatchInfo,
    events: Arc<[Event]>,
    /// Each hook with the index of its event; taken by whoever settles them.
    acks: Arc<Mutex<Vec<(usize, Ack)>>>,
    /// Attempts so far.
    attempts: Arc<AtomicU32>,
    /// Rows its rollbacks deleted, over all attempts.
    rows_deleted: Arc<AtomicU64>,
}

impl Batch {
    pub(super) fn new(
        seq: u64,
        tenant: Option<String>,
        info: BatchInfo,
        batch: Vec<Incoming>,
    ) -> Self {
        let mut events = Vec::with_capacity(batch.len());
        let mut acks = Vec::new();
        for (index, incoming) in batch.into_iter().enumerate() {
            events.push(incoming.event);
            acks.extend(incoming.ack.map(|ack| (index, ack)));
        }
        Batch {
            seq,
            tenant: tenant.map(Arc::from),
            info,
            events: events.into(),
            acks: Arc::new(Mutex::new(acks)),
            attempts: Arc::new(AtomicU32::new(0)),
            rows_deleted: Arc::new(AtomicU64::new(0)),
        }
    }

    fn in_flight(&self) -> InFlight {
        InFlight {
            seq: self.seq,
            events: self.events.clone(),
            rows_deleted: self.rows_deleted.clone(),
        }
    }
}

/// Writes one batch (one attempt of it): the handler of `for_each_compensated`.
///
/// Rules:
/// - the batch's compensations are registered on `scope` before anything is written;
///   `for_each_compensated` runs them when this attempt fails (then retries, skips or
///   stops, as configured) or the run stops while the batch is not committed;
/// - a write that fails because the database is unavailable first waits for it (bounded by
///   `--database-outage`), so that the rollback and a retry can reach it;
/// - once written, the batch claims the rows it found present (its last write, see
///   [`Store::claim`]); if one of them is gone (its owner rolled back meanwhile) the
///   attempt fails, and is rolled back like any other;
/// - once written and claimed, the batch is committed for its compensations (they do
///   nothing from then on), counted, and only then are its events acknowledged to the
///   source.
pub(super) async fn write_batch(
    ctx: Arc<Ctx>,
    batch: Batch,
    scope: ItemScope,
) -> Result<(), PipelineError> {
    let seq = batch.seq;
    let attempt = batch.attempts.fetch_add(1, Ordering::Relaxed) + 1;
    let freeze = attempt == 1 && ctx.faults.freezes_at(seq);
    let fail = freeze || ctx.faults.should_fail(seq, attempt);
    let hang = ctx.faults.hangs_at(seq);
    if attempt > 1 {
        ctx.stats.retried.fetch_add(1, Ordering::Relaxed);
    }
    ctx.stats.begin_batch(batch.in_flight());

    let committed = Arc::new(AtomicBool::new(false));
    ctx.register_undo(&scope, &batch, attempt, &committed);
    let inserted = match ctx.write(seq, &batch.events, fail, freeze).await {
        Ok(inserted) => inserted,
        Err(error) => {
            if error.is_database_unavailable() {
                // The rollback needs the database: wait for it (bounded) first.
                ctx.await_database(seq, &error).await;
            }
            return Err(error);
        }
    };
    if hang {
        ctx.faults.hang(seq, &ctx.console).await;
    }
    // The batch's last write: claim the rows it found present, now that it commits (a
    // batch rolled back claims nothing, so it fences nothing), and check they are all still
    // there (see `Store::claim`).
    let missing = ctx
        .store
        .claim(ctx.run_id, batch_number(seq), &inserted.skipped)
        .await
        .map_err(|source| PipelineError::Write { batch: seq, source });
    match missing {
        Ok(0) => {}
        Ok(missing) => {
            return Err(PipelineError::Vanished {
                batch: seq,
                missing,
            });
        }
        Err(error) => {
            if error.is_database_unavailable() {
                ctx.await_database(seq, &error).await;
            }
            return Err(error);
        }
    }
    // The flag makes this batch's compensations do nothing from here on, so a
    // cancellation while the acknowledgements are sent deletes none of its rows (the run
    // commits them when this handler returns `Ok`; `scope.commit()` would do the same for
    // this batch only).
    committed.store(true, Ordering::Release);

    // Committed: count it, then acknowledge its events to the source. A failed ack only
    // means a redelivery, which the idempotent insert absorbs.
    ctx.stats.batch_committed(
        seq,
        &batch.info,
        batch.tenant.as_deref(),
        &batch.events,
        inserted.rows,
        inserted.skipped,
    );
    let pending = std::mem::take(&mut *lock(&batch.acks));
    for (_, ack) in pending {
        if let Err(error) = ack.ack().await {
            ctx.stats.ack_failed("ack", &error);
        }
    }
    Ok(())
}

impl Ctx {
    /// Registers, before anything is written, what undoes this attempt of `batch`: a nak of its events
    /// (registered first, so it runs last, after the rows are gone; see
    /// [`settle_rolled_back`](Self::settle_rolled_back)) and the deletion of the rows it
    /// inserts.
    ///
    /// The events are nak'ed only if the deletion succeeded. If it failed or timed out (its
    /// statement may still commit later), a nak would let another instance get the events
    /// at once, find the rows present and acknowledge them just before the late deletion
    /// removes them: acknowledged events missing. They are abandoned instead
    /// ([`AckHandle::abandon`](crate::record::AckHandle::abandon)): no verdict, the broker
    /// redelivers them after its ack wait. Both do nothing once the batch is committed, and
    /// the nak waits for the last attempt (`--write-retries`) unless the run is stopping.
    pub(super) fn register_undo(
        self: &Arc<Self>,
        scope: &ItemScope,
        batch: &Batch,
        attempt: u32,
        committed: &Arc<AtomicBool>,
    ) {
        let seq = batch.seq;
        let rows_gone = Arc::new(AtomicBool::new(false));
        // Another attempt follows this one's rollback unless it is the last one or the run
        // is stopping: its hooks are then kept for it (a hook left unsettled when the run
        // stops is dropped, which gives its record back).
        let last_attempt = attempt >= self.failure.write_attempts();
        if !lock(&batch.acks).is_empty() {
            let ctx = self.clone();
            let events = batch.events.clone();
            let acks = batch.acks.clone();
            let rows_gone = rows_gone.clone();
            let committed = committed.clone();
            scope.register_labeled(format!("batch {seq}: nak its events"), move || {
                let ctx = ctx.clone();
                let events = events.clone();
                let acks = acks.clone();
                let rows_gone = rows_gone.load(Ordering::Acquire);
                let settle = !committed.load(Ordering::Acquire)
                    && (last_attempt || !rows_gone || ctx.stopping.is_cancelled());
                async move {
                    if settle {
                        // Taken once: a retry has nothing left to nak.
                        let pending = std::mem::take(&mut *lock(&acks));
                        ctx.settle_rolled_back(pending, &events, rows_gone).await;
                    }
                    Ok::<(), BoxError>(())
                }
            });
        }
        let store = self.store.clone();
        let run = self.run_id;
        let number = batch_number(seq);
        let failing = Arc::new(AtomicU32::new(self.faults.failing_rollback_attempts()));
        let deleted = batch.rows_deleted.clone();
        let committed = committed.clone();
        scope.register_labeled(format!("batch {seq}: delete its rows"), move || {
            let store = store.clone();
            let failing = failing.clone();
            let deleted = deleted.clone();
            let rows_gone = rows_gone.clone();
            let committed = committed.load(Ordering::Acquire);
            async move {
                if committed {
                    return Ok(());
                }
                let injected = failing
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok();
                if injected {
                    return Err(BoxError::from(
                        "injected compensation failure (--fail-rollback-attempts)",
                    ));
                }
                let rows = store.delete_batch(run, number).await?;
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
