use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::FutureExt as _;

use super::RollbackPolicy;
use super::error::{CompensationFailure, FailureKind, RollbackReport};
use super::scope::{CompensationScope, Entry};

/// Future for [`CompensationScope::rollback`]: runs every pending compensation, newest first,
/// and resolves to a [`RollbackReport`].
///
/// Rules:
/// - one compensation at a time, newest first, each tried up to
///   [`RollbackPolicy::max_attempts`] times with the policy's backoff between attempts and its
///   time limit on each attempt (timed by `tokio::time`);
/// - a compensation that still fails is recorded in the report and the rollback goes on with
///   the next one: one failure never stops the others;
/// - rollbacks of one scope take turns: a second one waits, then runs what the first left;
/// - a compensation leaves the scope only once it has finished (succeeded, or failed for the
///   last time). If this future is dropped midway, the compensation in progress and those
///   below it are still in the scope, and a later rollback runs them (the interrupted one
///   from its first attempt again).
///
/// The rollback is driven by one boxed future, allocated when the rollback starts: this is
/// the failure path, never the per-item path.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Rollback {
    inner: Pin<Box<dyn Future<Output = RollbackReport> + Send>>,
}

impl fmt::Debug for Rollback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rollback").finish_non_exhaustive()
    }
}

impl Rollback {
    pub(crate) fn new(scope: CompensationScope, policy: RollbackPolicy) -> Self {
        Self {
            inner: Box::pin(run(scope, policy)),
        }
    }
}

impl Future for Rollback {
    type Output = RollbackReport;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RollbackReport> {
        self.inner.as_mut().poll(cx)
    }
}

async fn run(scope: CompensationScope, policy: RollbackPolicy) -> RollbackReport {
    let _turn = scope.rollback_turn().await;
    let mut report = RollbackReport::default();
    while let Some(entry) = scope.newest_to_roll_back() {
        let order = report.ran;
        report.ran += 1;
        let outcome = run_with_retries(&entry, &policy).await;
        scope.remove(&entry);
        if let Err((attempts, kind)) = outcome {
            report.failures.push(CompensationFailure {
                order,
                label: entry.label.clone(),
                attempts,
                kind,
                action: entry.action.clone(),
            });
        }
    }
    report
}

/// Runs one compensation until it succeeds or its attempts are used up.
async fn run_with_retries(
    entry: &Entry,
    policy: &RollbackPolicy,
) -> Result<(), (u32, FailureKind)> {
    let mut attempt = 1;
    loop {
        // A panicking compensation is one failed attempt, not the end of the rollback.
        let compensate = AssertUnwindSafe(entry.action.compensate()).catch_unwind();
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
