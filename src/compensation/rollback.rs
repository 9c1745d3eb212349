use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_core::future::FusedFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};

use super::RetryPolicy;
use super::report::{FailureKind, RollbackReport};
use super::scope::Closing;
use super::stack::{Entry, Stack, Take};

/// The boxed body of a [`Rollback`].
type Body = Pin<Box<dyn Future<Output = RollbackReport> + Send>>;

/// Future for [`CompensationScope::rollback`](crate::CompensationScope::rollback),
/// [`ItemScope::rollback`](crate::ItemScope::rollback) and
/// [`ChildScope::rollback`](crate::ChildScope::rollback): runs every pending compensation its
/// handle may take, newest first, and resolves to a [`RollbackReport`].
///
/// Rules:
/// - one compensation at a time (or up to [`RetryPolicy::concurrent`] at a time), newest
///   first, each tried up to
///   [`RetryPolicy::max_attempts`] times with the policy's backoff between attempts and its
///   time limit on each attempt (timed by `tokio::time`);
/// - a compensation that still fails, returns an error, panics (while building its future or
///   while it runs) or times out is recorded in the report, and the rollback goes on with the
///   next one: one failure never stops the others;
/// - rollbacks of one scope take turns: a second one waits, then runs what the first left;
/// - a compensation that succeeded leaves the scope at once; one that failed for the last
///   time leaves it when this future resolves (its failure is then in the report, retryable
///   from there); until then no [`commit`](crate::CompensationScope::commit) and no other rollback
///   can take it;
/// - each compensation that succeeded runs once. A rollback dropped midway returns the
///   interrupted one and those that failed to the scope: they stay there with those it had
///   not started, and a later rollback runs them again, each from its first attempt (the
///   failures of a report nobody receives are never lost silently). A compensation must
///   therefore be idempotent (see [`Compensation`](crate::Compensation));
/// - the rollback of a [`ChildScope`](crate::ChildScope) ends the child: once it resolves or
///   is dropped, what is left of the child is absorbed into its parent.
///
/// # Panics
///
/// Panics if polled again after it resolved ([`is_terminated`](FusedFuture::is_terminated)
/// tells).
///
/// # Implementation
///
/// The rollback is driven by one boxed future, allocated when the rollback starts: this is
/// the failure path, never the per-item path. The box sits in a `Mutex` that is never locked
/// (it is reached through `&mut`), which makes `Rollback` `Sync` as well as `Send`.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Rollback {
    body: Option<Mutex<Body>>,
    /// Set by [`wind_down`](Self::wind_down): start no further compensation.
    wind_down: Arc<AtomicBool>,
    /// The child scope this rollback ends, if any: absorbed into its parent (what is left
    /// of it) once the body is dropped.
    closing: Option<Closing>,
}

impl fmt::Debug for Rollback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rollback")
            .field("terminated", &self.body.is_none())
            .finish_non_exhaustive()
    }
}

impl Rollback {
    pub(crate) fn new(
        stack: Stack,
        policy: RetryPolicy,
        take: Take,
        closing: Option<Closing>,
    ) -> Self {
        let wind_down = Arc::<AtomicBool>::default();
        let body = Box::pin(run(stack, policy, take, wind_down.clone()));
        Self {
            body: Some(Mutex::new(body)),
            wind_down,
            closing,
        }
    }

    /// `rest`, once the `finishing` rollbacks (polled side by side) resolved; one report,
    /// `earlier`'s first, then theirs in the order they resolved, then `rest`'s.
    pub(crate) fn after(finishing: Vec<Rollback>, rest: Rollback, earlier: RollbackReport) -> Self {
        let body = async move {
            let mut finishing: FuturesUnordered<Rollback> = finishing.into_iter().collect();
            let mut report = earlier;
            while let Some(done) = finishing.next().await {
                report = done.after(report);
            }
            rest.await.after(report)
        };
        let (wind_down, closing) = (Arc::default(), None);
        Self {
            body: Some(Mutex::new(Box::pin(body))),
            wind_down,
            closing,
        }
    }

    /// Starts no further compensation: the ones in progress finish (and are reported),
    /// those not started stay in the scope.
    pub(crate) fn wind_down(&self) {
        self.wind_down.store(true, Ordering::Release);
    }
}

impl Future for Rollback {
    type Output = RollbackReport;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RollbackReport> {
        let body = self
            .body
            .as_mut()
            .expect("Rollback polled after it resolved");
        let body = body
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let report = std::task::ready!(body.as_mut().poll(cx));
        self.body = None;
        self.closing = None;
        Poll::Ready(report)
    }
}

impl FusedFuture for Rollback {
    fn is_terminated(&self) -> bool {
        self.body.is_none()
    }
}

/// Settles one compensation that [`start_newest`](Stack::start_newest) marked
/// running: when it succeeded, removes it from the scope; when it failed for good, leaves it
/// there, still running, for the rollback's [`Failed`] to settle; when its rollback is
/// dropped before it finished, puts it back (not running).
struct Running<'a> {
    scope: &'a Stack,
    seq: u64,
    outcome: Option<bool>,
}

impl Running<'_> {
    /// The compensation finished: `succeeded`, or failed after its last attempt.
    fn done(mut self, succeeded: bool) {
        self.outcome = Some(succeeded);
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        match self.outcome {
            Some(true) => self.scope.finish(self.seq),
            Some(false) => {}
            None => self.scope.interrupt(self.seq),
        }
    }
}

/// The compensations a rollback ran that failed for good. They stay in the scope, marked
/// running (no commit and no other rollback takes them), until the rollback resolves:
/// [`settle`](Self::settle) then removes them (their failures are in its report). If the
/// rollback is dropped before, nobody would ever see that report: they are put back, not
/// running, and a later rollback runs them again.
struct Failed<'a> {
    scope: &'a Stack,
    /// Registration numbers. Allocated only when a compensation fails.
    seqs: Vec<u64>,
}

impl<'a> Failed<'a> {
    fn new(scope: &'a Stack) -> Self {
        Self {
            scope,
            seqs: Vec::new(),
        }
    }

    /// Records `outcome` in `report` and holds the compensation if it failed.
    fn record(
        &mut self,
        report: &mut RollbackReport,
        order: usize,
        entry: &Entry,
        outcome: Result<(), (u32, FailureKind)>,
    ) {
        if outcome.is_err() {
            self.seqs.push(entry.seq);
        }
        report.record(order, entry, outcome);
    }

    /// The rollback resolves with its report: the failed compensations leave the scope.
    fn settle(mut self) {
        for seq in std::mem::take(&mut self.seqs) {
            self.scope.finish(seq);
        }
    }
}

impl Drop for Failed<'_> {
    fn drop(&mut self) {
        for &seq in &self.seqs {
            self.scope.interrupt(seq);
        }
    }
}

/// Whether the rollback was [wound down](Rollback::wind_down).
fn wound_down(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Acquire)
}

async fn run(
    scope: Stack,
    policy: RetryPolicy,
    take: Take,
    wind_down: Arc<AtomicBool>,
) -> RollbackReport {
    let _turn = scope.rollback_turn().await;
    // Declared after the turn, so dropped before it: what it puts back is there for the
    // next rollback.
    let mut failed = Failed::new(&scope);
    let mut report = RollbackReport::default();
    if policy.concurrency_limit() > 1 {
        run_concurrently(&scope, &policy, take, &wind_down, &mut report, &mut failed).await;
    } else {
        while !wound_down(&wind_down)
            && let Some(entry) = scope.start_newest(take)
        {
            let order = report.ran;
            report.ran += 1;
            let outcome = run_one(&scope, &entry, &policy).await;
            failed.record(&mut report, order, &entry, outcome);
        }
    }
    // No await from here on: the report is returned in this same poll.
    failed.settle();
    report
}

/// Up to the policy's limit at a time, started newest first.
async fn run_concurrently(
    scope: &Stack,
    policy: &RetryPolicy,
    take: Take,
    wind_down: &AtomicBool,
    report: &mut RollbackReport,
    failed: &mut Failed<'_>,
) {
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < policy.concurrency_limit() && !wound_down(wind_down) {
            let Some(entry) = scope.start_newest(take) else {
                break;
            };
            let order = report.ran;
            report.ran += 1;
            running.push(async move {
                let outcome = run_one(scope, &entry, policy).await;
                (order, entry, outcome)
            });
        }
        let Some((order, entry, outcome)) = running.next().await else {
            break;
        };
        failed.record(report, order, &entry, outcome);
    }
    report.failures.sort_by_key(|failure| failure.order);
}

/// Runs `entry`, which [`start_newest`](Stack::start_newest) marked running, and
/// removes it from the scope if it succeeded (see [`Running`]; one that failed for good is
/// left to the rollback's [`Failed`], and one whose future is dropped first is put back).
async fn run_one(
    scope: &Stack,
    entry: &Entry,
    policy: &RetryPolicy,
) -> Result<(), (u32, FailureKind)> {
    let running = Running {
        scope,
        seq: entry.seq,
        outcome: None,
    };
    let outcome = run_with_retries(entry, policy).await;
    running.done(outcome.is_ok());
    outcome
}

/// Runs one compensation until it succeeds or its attempts are used up.
pub(crate) async fn run_with_retries(
    entry: &Entry,
    policy: &RetryPolicy,
) -> Result<(), (u32, FailureKind)> {
    let mut attempt = 1;
    loop {
        // A panicking compensation is one failed attempt, not the end of the rollback: the
        // call is made inside the guarded future, so a panic while building the future (a
        // hand-written `compensate`) is caught as well as one while it runs.
        let compensate = AssertUnwindSafe(async { entry.action.compensate().await }).catch_unwind();
        let outcome = match policy.attempt_time_limit() {
            None => Ok(compensate.await),
            Some(limit) => tokio::time::timeout(limit, compensate)
                .await
                .map_err(|_elapsed| FailureKind::TimedOut(limit)),
        };
        let result = match outcome {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(FailureKind::Error(error)),
            Ok(Err(panic)) => Err(FailureKind::Panicked(panic_message(panic.as_ref()))),
            Err(timed_out) => Err(timed_out),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(kind) if attempt >= policy.max_attempts() => return Err((attempt, kind)),
            Err(_) => {
                let wait = policy.backoff_strategy().delay(attempt);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                attempt += 1;
            }
        }
    }
}

/// The message of a caught panic, when it was a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}
