use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::future::FusedFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};

use super::scope::{CompensationScope, Entry, Take};
use super::{BoxError, Compensation, RollbackPolicy};

/// The boxed body of a [`Rollback`].
type Body = Pin<Box<dyn Future<Output = RollbackReport> + Send>>;

/// Future for [`CompensationScope::rollback`]: runs every pending compensation it may take,
/// newest first, and resolves to a [`RollbackReport`].
///
/// Rules:
/// - one compensation at a time (or up to [`RollbackPolicy::concurrent`] at a time), newest
///   first, each tried up to
///   [`RollbackPolicy::max_attempts`] times with the policy's backoff between attempts and its
///   time limit on each attempt (timed by `tokio::time`);
/// - a compensation that still fails, returns an error, panics (while building its future or
///   while it runs) or times out is recorded in the report, and the rollback goes on with the
///   next one: one failure never stops the others;
/// - rollbacks of one scope take turns: a second one waits, then runs what the first left;
/// - a compensation that succeeded leaves the scope at once; one that failed for the last
///   time leaves it when this future resolves (its failure is then in the report, retryable
///   from there); until then no [`commit`](CompensationScope::commit) and no other rollback
///   can take it;
/// - each compensation that succeeded runs once. A rollback dropped midway returns the
///   interrupted one and those that failed to the scope: they stay there with those it had
///   not started, and a later rollback runs them again, each from its first attempt (the
///   failures of a report nobody receives are never lost silently). A compensation must
///   therefore be idempotent (see [`Compensation`]).
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
    wind_down: Option<Arc<AtomicBool>>,
}

impl fmt::Debug for Rollback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rollback")
            .field("terminated", &self.body.is_none())
            .finish_non_exhaustive()
    }
}

impl Rollback {
    pub(crate) fn new(scope: CompensationScope, policy: RollbackPolicy) -> Self {
        Self::taking(scope, policy, Take::Handle)
    }

    /// A rollback of what `scope` registered since `mark` only: one failed attempt.
    pub(crate) fn since(scope: CompensationScope, mark: u64, policy: RollbackPolicy) -> Self {
        Self::taking(scope, policy, Take::Since(mark))
    }

    fn taking(scope: CompensationScope, policy: RollbackPolicy, take: Take) -> Self {
        // Only the undo of one failed attempt can be wound down (by its run's stop).
        let wind_down = matches!(take, Take::Since(_)).then(Arc::default);
        Self {
            body: Some(Mutex::new(Box::pin(run(
                scope,
                policy,
                take,
                wind_down.clone(),
            )))),
            wind_down,
        }
    }

    /// Starts no further compensation: the ones in progress finish (and are reported),
    /// those not started stay in the scope. For a rollback made by [`since`](Self::since).
    pub(crate) fn wind_down(&self) {
        if let Some(flag) = &self.wind_down {
            flag.store(true, Ordering::Release);
        }
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
        Poll::Ready(report)
    }
}

impl FusedFuture for Rollback {
    fn is_terminated(&self) -> bool {
        self.body.is_none()
    }
}

/// Settles one compensation that [`start_newest`](CompensationScope::start_newest) marked
/// running: when it succeeded, removes it from the scope; when it failed for good, leaves it
/// there, still running, for the rollback's [`Failed`] to settle; when its rollback is
/// dropped before it finished, puts it back (not running).
struct Running<'a> {
    scope: &'a CompensationScope,
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
    scope: &'a CompensationScope,
    /// Registration numbers. Allocated only when a compensation fails.
    seqs: Vec<u64>,
}

impl<'a> Failed<'a> {
    fn new(scope: &'a CompensationScope) -> Self {
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
fn wound_down(flag: &Option<Arc<AtomicBool>>) -> bool {
    flag.as_ref()
        .is_some_and(|flag| flag.load(Ordering::Acquire))
}

async fn run(
    scope: CompensationScope,
    policy: RollbackPolicy,
    take: Take,
    wind_down: Option<Arc<AtomicBool>>,
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
    scope: &CompensationScope,
    policy: &RollbackPolicy,
    take: Take,
    wind_down: &Option<Arc<AtomicBool>>,
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

/// Runs `entry`, which [`start_newest`](CompensationScope::start_newest) marked running, and
/// removes it from the scope if it succeeded (see [`Running`]; one that failed for good is
/// left to the rollback's [`Failed`], and one whose future is dropped first is put back).
async fn run_one(
    scope: &CompensationScope,
    entry: &Entry,
    policy: &RollbackPolicy,
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
    policy: &RollbackPolicy,
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

/// How the last attempt of a compensation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum FailureKind {
    /// The compensation returned an error.
    Error(BoxError),
    /// The attempt ran past the policy's time limit and was dropped.
    TimedOut(Duration),
    /// The compensation panicked; the panic was caught (with its message, when it had one)
    /// so that the rollback could go on.
    Panicked(String),
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Error(error) => error.fmt(f),
            FailureKind::TimedOut(limit) => write!(f, "timed out after {limit:?}"),
            FailureKind::Panicked(message) => write!(f, "panicked: {message}"),
        }
    }
}

/// A compensation that still failed after its last attempt.
///
/// Once its rollback has resolved, it has left the scope, but not the program: [`retry`](Self::retry) runs it again (say,
/// once the database is back), and [`action`](Self::action) hands it out to be registered
/// again or run elsewhere.
pub struct CompensationFailure {
    pub(crate) order: usize,
    pub(crate) label: Option<Cow<'static, str>>,
    pub(crate) attempts: u32,
    pub(crate) kind: FailureKind,
    pub(crate) action: Arc<dyn Compensation>,
}

impl fmt::Debug for CompensationFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompensationFailure")
            .field("order", &self.order)
            .field("label", &self.label)
            .field("attempts", &self.attempts)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl CompensationFailure {
    /// Its place in the rollback: 0 for the first compensation run (the newest).
    pub fn order(&self) -> usize {
        self.order
    }

    /// The label it was registered with, if any.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// How many attempts were made.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How the last attempt failed.
    pub fn kind(&self) -> &FailureKind {
        &self.kind
    }

    /// The compensation itself.
    pub fn action(&self) -> &Arc<dyn Compensation> {
        &self.action
    }

    /// Runs the compensation once more (no policy: one attempt, no time limit).
    pub async fn retry(&self) -> Result<(), BoxError> {
        self.action.compensate().await
    }
}

/// The compensation's own error is part of the [`Display`](fmt::Display) text (a report
/// lists its failures in its own text), so [`source`](Error::source) skips it and returns
/// *its* source: an error-chain printer shows each message once. The error itself is in
/// [`kind`](Self::kind).
impl Error for CompensationFailure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.kind {
            FailureKind::Error(error) => error.source(),
            _ => None,
        }
    }
}

/// `compensation #<order> (<label>) failed after <n> attempt(s): <how>`.
impl fmt::Display for CompensationFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "compensation #{}", self.order)?;
        if let Some(label) = &self.label {
            write!(f, " ({label})")?;
        }
        write!(
            f,
            " failed after {} attempt(s): {}",
            self.attempts, self.kind
        )
    }
}

/// What a rollback did: how many compensations ran and which ones still failed.
#[derive(Debug, Default)]
pub struct RollbackReport {
    pub(crate) ran: usize,
    pub(crate) failures: Vec<CompensationFailure>,
}

impl RollbackReport {
    /// How many compensations were run (each counted once, whatever its attempts).
    pub fn ran(&self) -> usize {
        self.ran
    }

    /// How many compensations succeeded.
    pub fn succeeded(&self) -> usize {
        self.ran - self.failures.len()
    }

    /// The compensations that still failed after their retries, in the order they ran.
    pub fn failures(&self) -> &[CompensationFailure] {
        &self.failures
    }

    /// Records the outcome of the compensation that ran `order`th.
    fn record(&mut self, order: usize, entry: &Entry, outcome: Result<(), (u32, FailureKind)>) {
        if let Err((attempts, kind)) = outcome {
            self.failures.push(CompensationFailure {
                order,
                label: entry.label.clone(),
                attempts,
                kind,
                action: entry.action.clone(),
            });
        }
    }

    /// Puts `earlier`'s compensations before this report's, as if one rollback had run them
    /// all.
    pub(crate) fn after(mut self, earlier: RollbackReport) -> Self {
        let offset = earlier.ran;
        for failure in &mut self.failures {
            failure.order += offset;
        }
        let mut failures = earlier.failures;
        failures.append(&mut self.failures);
        Self {
            ran: offset + self.ran,
            failures,
        }
    }

    /// Takes the failures, in the order they ran, to retry or register them again.
    pub fn into_failures(self) -> Vec<CompensationFailure> {
        self.failures
    }

    /// `true` when every compensation succeeded (or there was none): the effects they
    /// guarded are undone.
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty()
    }
}

impl fmt::Display for RollbackReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_complete() {
            write!(f, "rolled back cleanly ({} compensation(s) ran)", self.ran)
        } else {
            write!(
                f,
                "rollback incomplete: {} of {} compensation(s) failed",
                self.failures.len(),
                self.ran
            )?;
            for failure in &self.failures {
                write!(f, "; {failure}")?;
            }
            Ok(())
        }
    }
}
