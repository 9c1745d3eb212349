//! Hostile tests of the compensation part (for_each_compensated, CompensationScope, Rollback).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use result_stream::{
    Cause, Compensation, CompensationScope, ItemScope, ResultStreamExt, RetryPolicy,
};
use tokio_util::sync::CancellationToken;

/// The handles these tests register through: the scope's own and an item's.
trait Handle {
    fn register_labeled(&self, label: &'static str, action: impl Compensation + 'static);
}

impl Handle for CompensationScope {
    fn register_labeled(&self, label: &'static str, action: impl Compensation + 'static) {
        CompensationScope::register_labeled(self, label, action);
    }
}

impl Handle for ItemScope {
    fn register_labeled(&self, label: &'static str, action: impl Compensation + 'static) {
        ItemScope::register_labeled(self, label, action);
    }
}

/// Counts of one compensation's starts and ends.
#[derive(Default)]
struct Counts {
    started: AtomicUsize,
    finished: AtomicUsize,
}

/// Registers a compensation that takes `took` and succeeds, counting its runs.
fn register_slow(scope: &impl Handle, label: &'static str, took: Duration, counts: Arc<Counts>) {
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
fn register_failing(scope: &impl Handle, label: &'static str, runs: Arc<AtomicUsize>) {
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
/// The contract: "every one that still failed after its retries, with its error"; README: "every
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
        .retry(RetryPolicy::default().attempts(3))
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
    assert_eq!(
        slow.started.load(Ordering::SeqCst),
        1,
        "`slow` started twice"
    );
    assert_eq!(slow.finished.load(Ordering::SeqCst), 1);
    assert!(scope.is_empty());
}

/// Same with concurrency: item 0's failed attempt is being undone (skip) when the upstream
/// yields an error. The contract: the cause is the upstream error and the report lists "every one
/// that still failed after its retries".
#[tokio::test(start_paused = true)]
async fn upstream_error_during_skip_undo_keeps_the_undo_failure() {
    let scope = CompensationScope::new();
    let slow = Arc::new(Counts::default());
    let failing = Arc::new(AtomicUsize::new(0));
    let upstream = stream::iter(vec![Ok::<u32, String>(0)]).chain(stream::once(async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Err("upstream broke".to_owned())
    }));
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
    assert!(
        matches!(error.cause(), Cause::Upstream(e) if e == "upstream broke"),
        "{error}"
    );
    assert!(skipped.lock().unwrap().is_empty());
    assert_eq!(failing.load(Ordering::SeqCst), 1);
    assert!(
        !error.report().is_complete(),
        "the `refused` compensation failed and left the scope, yet the report says: {}",
        error.report()
    );
    assert_eq!(
        slow.started.load(Ordering::SeqCst),
        1,
        "`slow` started twice"
    );
    assert!(scope.is_empty());
}

/// Registers a compensation that records its label in `ran` and succeeds.
fn register_recorded(scope: &impl Handle, label: &'static str, ran: Arc<Mutex<Vec<&'static str>>>) {
    scope.register_labeled(label, move || {
        let ran = ran.clone();
        async move {
            ran.lock().unwrap().push(label);
            Ok::<(), std::io::Error>(())
        }
    });
}

/// What is registered through the run's own `scope()` handle while an item is in progress
/// (by another task) belongs to the run, not to that item: `ForEachCompensated::scope`:
/// "what is registered through it belongs to this run, like what the handler registers,
/// whenever it is registered ...: it is committed when the run succeeds and rolled back when
/// it fails". Here item 0 succeeds, item 1 fails: the run fails, so `run-level` must be
/// undone, not committed along with item 0.
#[tokio::test(start_paused = true)]
async fn a_run_level_registration_during_an_item_is_not_committed_with_that_item() {
    let scope = CompensationScope::new();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let ran2 = ran.clone();
    let run = stream::iter(vec![Ok::<u32, String>(0), Ok(1)]).for_each_compensated(
        scope.clone(),
        move |item, scope| {
            let ran = ran2.clone();
            async move {
                register_recorded(&scope, if item == 0 { "item 0" } else { "item 1" }, ran);
                if item == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Ok(())
                } else {
                    Err("write 1 failed".to_owned())
                }
            }
        },
    );
    let run_scope = run.scope().clone();
    let ran3 = ran.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        register_recorded(&run_scope, "run-level", ran3);
    });
    let error = run.await.expect_err("item 1 fails");
    assert!(matches!(error.cause(), Cause::Handler(_)));
    assert_eq!(
        *ran.lock().unwrap(),
        vec!["item 1", "run-level"],
        "the run-level compensation was committed with item 0 although the run failed"
    );
    assert!(scope.is_empty());
}

/// The same with retries: the undo of item 0's failed first attempt must undo that attempt
/// only, not a run-level registration made meanwhile; the run then succeeds, so
/// `run-level` is committed and never run.
#[tokio::test(start_paused = true)]
async fn a_failed_attempts_undo_leaves_a_run_level_registration_alone() {
    let scope = CompensationScope::new();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(AtomicUsize::new(0));
    let (ran2, attempts2) = (ran.clone(), attempts.clone());
    let run = stream::iter(vec![Ok::<u32, String>(0)])
        .for_each_compensated(scope.clone(), move |_item, scope| {
            let (ran, attempts) = (ran2.clone(), attempts2.clone());
            async move {
                register_recorded(&scope, "attempt", ran);
                if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Err("transient".to_owned())
                } else {
                    Ok(())
                }
            }
        })
        .retry(RetryPolicy::default().attempts(2));
    let run_scope = run.scope().clone();
    let ran3 = ran.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        register_recorded(&run_scope, "run-level", ran3);
    });
    let done = run.await.expect("the second attempt succeeds");
    assert_eq!(done.items(), 1);
    assert_eq!(
        *ran.lock().unwrap(),
        vec!["attempt"],
        "the attempt's undo ran the run-level compensation although the run succeeded"
    );
    assert!(scope.is_empty());
}

/// With items in flight, a stop undoes every uncommitted item "newest registration first"
/// (`ForEachCompensated::concurrency`). Item 0's failed attempt is being undone (skip) when
/// the upstream fails: the compensation it is running finishes, then what is left goes
/// newest first: item 1's `b0` (registered after item 0's `a0`) before `a0`.
#[tokio::test(start_paused = true)]
async fn a_stop_during_an_undo_runs_what_is_left_newest_first_across_items() {
    let scope = CompensationScope::new();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let upstream = stream::iter(vec![Ok::<u32, String>(0), Ok(1)]).chain(stream::once(async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Err("upstream broke".to_owned())
    }));
    let ran2 = ran.clone();
    let error = upstream
        .for_each_compensated(scope.clone(), move |item, scope| {
            let ran = ran2.clone();
            async move {
                if item == 0 {
                    register_recorded(&scope, "a0", ran.clone());
                    let ran = ran.clone();
                    scope.register_labeled("a1", move || {
                        let ran = ran.clone();
                        async move {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            ran.lock().unwrap().push("a1");
                            Ok::<(), std::io::Error>(())
                        }
                    });
                    Err("write 0 failed".to_owned())
                } else {
                    register_recorded(&scope, "b0", ran);
                    std::future::pending().await
                }
            }
        })
        .concurrency(3)
        .skip_failed_items(|_, _| {})
        .await
        .expect_err("the upstream error stops the run");
    assert!(matches!(error.cause(), Cause::Upstream(_)), "{error}");
    assert!(error.report().is_complete());
    assert_eq!(error.report().ran(), 3);
    assert_eq!(*ran.lock().unwrap(), vec!["a1", "b0", "a0"]);
    assert!(scope.is_empty());
}

/// A rollback dropped midway (say, the losing branch of `select!`, or a time limit around
/// it): the newest compensation already failed for good, the next one is running. The
/// failed one has left the scope and its failure was in a report nobody will ever see.
///
/// The contract: "Nothing is lost silently."; README: "a failed one stays retryable from the
/// report"; `Rollback`: "if this future is dropped midway, the compensation in progress and
/// those below it stay in the scope, and a later rollback runs them".
#[tokio::test(start_paused = true)]
async fn a_dropped_rollback_loses_no_failed_compensation() {
    let scope = CompensationScope::new();
    let slow = Arc::new(Counts::default());
    let failing = Arc::new(AtomicUsize::new(0));
    register_slow(&scope, "slow", Duration::from_millis(10), slow.clone());
    register_failing(&scope, "refused", failing.clone());
    let dropped = tokio::time::timeout(
        Duration::from_millis(5),
        scope.rollback(RetryPolicy::default()),
    )
    .await;
    assert!(dropped.is_err(), "the rollback is still running `slow`");
    assert_eq!(failing.load(Ordering::SeqCst), 1);
    // Both are still owed: `slow` was interrupted, `refused` failed and nobody was told.
    assert_eq!(
        scope.len(),
        2,
        "the failed compensation vanished with the dropped rollback"
    );
    let report = scope.rollback(RetryPolicy::default()).await;
    assert_eq!(report.ran(), 2);
    assert_eq!(report.failures()[0].label(), Some("refused"));
    assert!(scope.is_empty());
    // Each ran again from its first attempt; `slow` succeeded once.
    assert_eq!(failing.load(Ordering::SeqCst), 2);
    assert_eq!(slow.started.load(Ordering::SeqCst), 2);
    assert_eq!(slow.finished.load(Ordering::SeqCst), 1);
}

/// The same through `for_each_compensated`: the run's future is dropped while its rollback
/// runs, after one compensation failed for good. The contract: "If the future is dropped ...
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
    assert!(
        tokio::time::timeout(Duration::from_millis(5), run)
            .await
            .is_err()
    );
    assert_eq!(failing.load(Ordering::SeqCst), 1);
    assert_eq!(
        scope.len(),
        2,
        "the failed compensation vanished with the dropped run"
    );
    // The run is over: what it left is the scope's to roll back.
    let report = scope.rollback(RetryPolicy::default()).await;
    assert_eq!(report.ran(), 2);
    assert_eq!(report.failures().len(), 1);
    assert_eq!(report.failures()[0].label(), Some("refused"));
    assert_eq!(slow.finished.load(Ordering::SeqCst), 1);
    assert!(scope.is_empty());
}

/// The same with compensations run concurrently: `refused` fails at once while `slow` runs
/// next to it, then the rollback is dropped. Both go back to the scope.
#[tokio::test(start_paused = true)]
async fn a_dropped_concurrent_rollback_loses_no_failed_compensation() {
    let scope = CompensationScope::new();
    let slow = Arc::new(Counts::default());
    let failing = Arc::new(AtomicUsize::new(0));
    register_slow(&scope, "slow", Duration::from_millis(10), slow.clone());
    register_failing(&scope, "refused", failing.clone());
    let rollback = scope.rollback(RetryPolicy::default().concurrent(2));
    assert!(
        tokio::time::timeout(Duration::from_millis(5), rollback)
            .await
            .is_err()
    );
    assert_eq!(failing.load(Ordering::SeqCst), 1);
    assert_eq!(slow.started.load(Ordering::SeqCst), 1);
    assert_eq!(
        scope.len(),
        2,
        "the failed compensation vanished with the dropped rollback"
    );
    let report = scope.rollback(RetryPolicy::default().concurrent(2)).await;
    assert_eq!(report.ran(), 2);
    assert_eq!(report.failures()[0].label(), Some("refused"));
    assert!(scope.is_empty());
}

/// A rollback that resolves keeps today's rule: a compensation that failed for good is in
/// its report (retryable from there) and out of the scope. Until the rollback resolves the
/// failed one is still the rollback's: `commit()` neither takes nor counts it, and a
/// second rollback does not run it.
#[tokio::test(start_paused = true)]
async fn a_failed_compensation_is_the_rollbacks_until_it_resolves() {
    let scope = CompensationScope::new();
    let slow = Arc::new(Counts::default());
    let failing = Arc::new(AtomicUsize::new(0));
    register_slow(&scope, "slow", Duration::from_millis(10), slow.clone());
    register_failing(&scope, "refused", failing.clone());
    let first = tokio::spawn(scope.rollback(RetryPolicy::default()));
    tokio::time::sleep(Duration::from_millis(5)).await; // `refused` failed, `slow` runs
    assert_eq!(failing.load(Ordering::SeqCst), 1);
    assert_eq!(scope.len(), 2);
    assert_eq!(
        scope.commit(),
        0,
        "commit took a compensation the rollback has"
    );
    let second = scope.rollback(RetryPolicy::default()).await;
    assert_eq!(
        second.ran(),
        0,
        "the second rollback waits for the first, then finds nothing"
    );
    let report = first.await.unwrap();
    assert_eq!(report.ran(), 2);
    assert_eq!(report.failures().len(), 1);
    assert!(
        scope.is_empty(),
        "a failure of a resolved rollback is in its report only"
    );
    assert_eq!(failing.load(Ordering::SeqCst), 1);
    report.failures()[0]
        .retry()
        .await
        .expect_err("still refused");
    assert_eq!(failing.load(Ordering::SeqCst), 2);
}
