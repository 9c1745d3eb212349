//! Hostile tests of the compensation part (for_each_compensated, CompensationScope, Rollback).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use result_stream::{Cause, CompensationScope, ResultStreamExt, RollbackPolicy};
use tokio_util::sync::CancellationToken;

/// Counts of one compensation's starts and ends.
#[derive(Default)]
struct Counts {
    started: AtomicUsize,
    finished: AtomicUsize,
}

/// Registers a compensation that takes `took` and succeeds, counting its runs.
fn register_slow(scope: &CompensationScope, label: &'static str, took: Duration, counts: Arc<Counts>) {
    scope.register_labeled(label, move || {
        let counts = counts.clone();
        async move {
            counts.started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(took).await;
            counts.finished.fetch_add(1, Ordering::SeqCst);
            Ok::<(), std::io::Error>(())
        }
    });
}

/// Registers a compensation that always fails at once.
fn register_failing(scope: &CompensationScope, label: &'static str, runs: Arc<AtomicUsize>) {
    scope.register_labeled(label, move || {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>("undo refused")
        }
    });
}

/// The undo of a failed attempt (retry) is in progress: its newest compensation already
/// failed for good (it left the scope, its failure is in that undo's report) and the next
/// one is running when the token fires. The failure must reach the run's report, and the
/// running compensation must not be started twice.
///
/// README: "the error keeps ... a `RollbackReport` that tells a clean rollback
/// (`is_complete()`) from an incomplete one, listing each compensation that still failed";
/// SPEC §3: "every one that still failed after its retries, with its error"; README: "every
/// attempt that did not commit is undone exactly once".
#[tokio::test(start_paused = true)]
async fn cancel_during_retry_undo_keeps_the_undo_failure_and_runs_nothing_twice() {
    let scope = CompensationScope::new();
    let slow = Arc::new(Counts::default());
    let failing = Arc::new(AtomicUsize::new(0));
    let token = CancellationToken::new();
    let canceller = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        canceller.cancel();
    });
    let (slow2, failing2) = (slow.clone(), failing.clone());
    let result = stream::iter(vec![Ok::<u32, String>(1)])
        .for_each_compensated(scope.clone(), move |_item, scope| {
            let (slow, failing) = (slow2.clone(), failing2.clone());
            async move {
                register_slow(&scope, "slow", Duration::from_millis(10), slow);
                register_failing(&scope, "refused", failing);
                Err("write failed".to_owned())
            }
        })
        .retry(RollbackPolicy::default().attempts(3))
        .with_cancellation(token)
        .await;
    let error = result.expect_err("cancelled");
    assert!(matches!(error.cause(), Cause::Cancelled), "{error}");
    assert_eq!(failing.load(Ordering::SeqCst), 1);
    assert!(
        !error.report().is_complete(),
        "the `refused` compensation failed and left the scope, yet the report says: {}",
        error.report()
    );
    assert_eq!(slow.started.load(Ordering::SeqCst), 1, "`slow` started twice");
    assert_eq!(slow.finished.load(Ordering::SeqCst), 1);
    assert!(scope.is_empty());
}

/// Same with concurrency: item 0's failed attempt is being undone (skip) when the upstream
/// yields an error. SPEC §3: the cause is the upstream error and the report lists "every one
/// that still failed after its retries".
#[tokio::test(start_paused = true)]
async fn upstream_error_during_skip_undo_keeps_the_undo_failure() {
    let scope = CompensationScope::new();
    let slow = Arc::new(Counts::default());
    let failing = Arc::new(AtomicUsize::new(0));
    let upstream = stream::iter(vec![Ok::<u32, String>(0)]).chain(
        stream::once(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Err("upstream broke".to_owned())
        }),
    );
    let skipped = Arc::new(Mutex::new(Vec::new()));
    let skipped2 = skipped.clone();
    let (slow2, failing2) = (slow.clone(), failing.clone());
    let result = upstream
        .for_each_compensated(scope.clone(), move |_item, scope| {
            let (slow, failing) = (slow2.clone(), failing2.clone());
            async move {
                register_slow(&scope, "slow", Duration::from_millis(10), slow);
                register_failing(&scope, "refused", failing);
                Err("write failed".to_owned())
            }
        })
        .concurrency(2)
        .skip_failed_items(move |index, _error| skipped2.lock().unwrap().push(index))
        .await;
    let error = result.expect_err("the upstream error stops the run");
    assert!(matches!(error.cause(), Cause::Upstream(e) if e == "upstream broke"), "{error}");
    assert!(skipped.lock().unwrap().is_empty());
    assert_eq!(failing.load(Ordering::SeqCst), 1);
    assert!(
        !error.report().is_complete(),
        "the `refused` compensation failed and left the scope, yet the report says: {}",
        error.report()
    );
    assert_eq!(slow.started.load(Ordering::SeqCst), 1, "`slow` started twice");
    assert!(scope.is_empty());
}

/// A rollback dropped midway (say, the losing branch of `select!`, or a time limit around
/// it): the newest compensation already failed for good, the next one is running. The
/// failed one has left the scope and its failure was in a report nobody will ever see.
///
/// SPEC §3: "Nothing is lost silently."; README: "a failed one stays retryable from the
/// report"; `Rollback`: "if this future is dropped midway, the compensation in progress and
/// those below it stay in the scope, and a later rollback runs them".
#[tokio::test(start_paused = true)]
async fn a_dropped_rollback_loses_no_failed_compensation() {
    let scope = CompensationScope::new();
    let slow = Arc::new(Counts::default());
    let failing = Arc::new(AtomicUsize::new(0));
    register_slow(&scope, "slow", Duration::from_millis(10), slow.clone());
    register_failing(&scope, "refused", failing.clone());
    let dropped =
        tokio::time::timeout(Duration::from_millis(5), scope.rollback(RollbackPolicy::default()))
            .await;
    assert!(dropped.is_err(), "the rollback is still running `slow`");
    assert_eq!(failing.load(Ordering::SeqCst), 1);
    // Both are still owed: `slow` was interrupted, `refused` failed and nobody was told.
    assert_eq!(scope.len(), 2, "the failed compensation vanished with the dropped rollback");
    let report = scope.rollback(RollbackPolicy::default()).await;
    assert_eq!(report.ran(), 2);
    assert_eq!(report.failures()[0].label(), Some("refused"));
    assert!(scope.is_empty());
}

/// The same through `for_each_compensated`: the run's future is dropped while its rollback
/// runs, after one compensation failed for good. SPEC §3: "If the future is dropped ...
/// the compensations registered so far stay in the scope ... Nothing is lost silently."
#[tokio::test(start_paused = true)]
async fn a_run_dropped_during_its_rollback_loses_no_failed_compensation() {
    let scope = CompensationScope::new();
    let slow = Arc::new(Counts::default());
    let failing = Arc::new(AtomicUsize::new(0));
    let (slow2, failing2) = (slow.clone(), failing.clone());
    let run = stream::iter(vec![Ok::<u32, String>(1)]).for_each_compensated(
        scope.clone(),
        move |_item, scope| {
            let (slow, failing) = (slow2.clone(), failing2.clone());
            async move {
                register_slow(&scope, "slow", Duration::from_millis(10), slow);
                register_failing(&scope, "refused", failing);
                Err("write failed".to_owned())
            }
        },
    );
    assert!(tokio::time::timeout(Duration::from_millis(5), run).await.is_err());
    assert_eq!(failing.load(Ordering::SeqCst), 1);
    assert_eq!(scope.len(), 2, "the failed compensation vanished with the dropped run");
}

/// `RollbackPolicy::concurrent`: "Used by a handler's `retry`, only its undo runs
/// concurrently." A retry policy with `concurrent(2)` must undo a failed attempt's two
/// independent compensations at the same time.
#[tokio::test(start_paused = true)]
async fn retry_policy_concurrent_runs_the_attempts_undo_concurrently() {
    let scope = CompensationScope::new();
    let attempts = Arc::new(AtomicUsize::new(0));
    let second_attempt_at = Arc::new(Mutex::new(None));
    let start = tokio::time::Instant::now();
    let (attempts2, at2) = (attempts.clone(), second_attempt_at.clone());
    let done = stream::iter(vec![Ok::<u32, String>(1)])
        .for_each_compensated(scope.clone(), move |_item, scope| {
            let (attempts, at) = (attempts2.clone(), at2.clone());
            async move {
                if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                    for label in ["a", "b"] {
                        register_slow(&scope, label, Duration::from_millis(10), Arc::default());
                    }
                    Err("transient".to_owned())
                } else {
                    *at.lock().unwrap() = Some(start.elapsed());
                    Ok(())
                }
            }
        })
        .retry(RollbackPolicy::default().attempts(2).concurrent(2))
        .await
        .expect("the second attempt succeeds");
    assert_eq!(done.items(), 1);
    assert_eq!(
        *second_attempt_at.lock().unwrap(),
        Some(Duration::from_millis(10)),
        "the two 10 ms compensations ran one after the other"
    );
}
