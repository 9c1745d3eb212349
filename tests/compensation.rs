//! `for_each_compensated` and `CompensationScope` (SPEC §3): every failure path, the rollback
//! policy, and the error that reports them.

mod common;

use std::collections::BTreeSet;
use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use common::{ms, secs};
use futures::future::FusedFuture;
use futures::stream::{self, Stream};
use futures::{FutureExt, StreamExt as _};
use result_stream::{
    Backoff, Cause, CompensatedError, Compensation, CompensationScope, FailureKind,
    ResultStreamExt, RollbackPolicy, UnitOfWork,
};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The user's own error type: the cause must keep it, matchable.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AppError {
    Write(u32),
    Upstream(&'static str),
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::Write(item) => write!(f, "write of item {item} failed"),
            AppError::Upstream(what) => write!(f, "upstream: {what}"),
        }
    }
}

impl std::error::Error for AppError {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A shared, ordered record of what happened.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, entry: impl Into<String>) {
        lock(&self.0).push(entry.into());
    }
    fn entries(&self) -> Vec<String> {
        lock(&self.0).clone()
    }
}

/// A compensation that records `name` and succeeds.
fn undo(log: &Log, name: impl Into<String>) -> impl Compensation + 'static {
    let log = log.clone();
    let name = name.into();
    move || {
        let (log, name) = (log.clone(), name.clone());
        async move {
            log.push(name);
            Ok::<(), io::Error>(())
        }
    }
}

/// A compensation that records `name` and always fails with `message`.
fn failing(
    log: &Log,
    name: impl Into<String>,
    message: &'static str,
) -> impl Compensation + 'static {
    let log = log.clone();
    let name = name.into();
    move || {
        let (log, name) = (log.clone(), name.clone());
        async move {
            log.push(name);
            Err::<(), _>(io::Error::other(message))
        }
    }
}

/// A table standing in for a database, with a compensation that deletes rows.
#[derive(Clone, Default)]
struct Table(Arc<Mutex<BTreeSet<u32>>>);

impl Table {
    fn insert(&self, row: u32) {
        lock(&self.0).insert(row);
    }
    fn rows(&self) -> Vec<u32> {
        lock(&self.0).iter().copied().collect()
    }
    /// A compensation deleting `row`, recording `undo <row>` in `log`.
    fn delete(&self, log: &Log, row: u32) -> impl Compensation + 'static {
        let (table, log) = (self.clone(), log.clone());
        move || {
            let (table, log) = (table.clone(), log.clone());
            async move {
                lock(&table.0).remove(&row);
                log.push(format!("undo {row}"));
                Ok::<(), io::Error>(())
            }
        }
    }
}

/// Runs a closure when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// A stream that panics if polled again after it yielded an `Err`: the terminal step must
/// stop pulling at the first error.
struct StopsAtError<T, E> {
    items: std::vec::IntoIter<Result<T, E>>,
    failed: bool,
}

impl<T: Unpin, E: Unpin> Stream for StopsAtError<T, E> {
    type Item = Result<T, E>;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        assert!(!self.failed, "upstream polled after it yielded an error");
        let next = self.items.next();
        self.failed = matches!(next, Some(Err(_)));
        Poll::Ready(next)
    }
}

fn stops_at_error<T, E>(items: Vec<Result<T, E>>) -> StopsAtError<T, E> {
    StopsAtError {
        items: items.into_iter(),
        failed: false,
    }
}

// ---------------------------------------------------------------------------------------
// Success
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn success_resolves_with_item_count_and_commits_each_item() {
    let (log, table) = (Log::default(), Table::default());
    let scope = CompensationScope::new();
    let (log2, table2) = (log.clone(), table.clone());
    let done = stream::iter((1..=4).map(Ok::<u32, AppError>))
        .for_each_compensated(scope.clone(), move |item, scope| {
            let (log, table) = (log2.clone(), table2.clone());
            async move {
                // Per-item mode: the previous items' compensations were committed.
                assert_eq!(scope.len(), 0, "item {item} starts with an empty scope");
                scope.register(table.delete(&log, item));
                table.insert(item);
                sleep(ms(10)).await;
                assert_eq!(scope.len(), 1);
                Ok(())
            }
        })
        .await
        .expect("every item written");
    assert_eq!(done.items(), 4);
    assert!(scope.is_empty());
    assert!(log.entries().is_empty(), "no compensation ran");
    assert_eq!(table.rows(), vec![1, 2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn empty_stream_succeeds_with_zero_items() {
    let done = stream::empty::<Result<u32, AppError>>()
        .for_each_compensated(CompensationScope::new(), |_, _| async { Ok(()) })
        .await
        .unwrap();
    assert_eq!(done.items(), 0);
}

#[tokio::test(start_paused = true)]
async fn accessors_report_progress_while_running() {
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<u32, AppError>>();
    let scope = CompensationScope::new();
    let log = Log::default();
    let log2 = log.clone();
    let mut fut = pin!(
        rx.for_each_compensated(scope.clone(), move |item, scope| {
            scope.register(undo(&log2, format!("undo {item}")));
            async { Ok(()) }
        })
        .all_or_nothing()
    );
    tx.unbounded_send(Ok(1)).unwrap();
    tx.unbounded_send(Ok(2)).unwrap();
    assert!(futures::poll!(fut.as_mut()).is_pending());
    assert_eq!(fut.items_processed(), 2);
    assert_eq!(fut.scope().len(), 2);
    assert!(!fut.is_terminated());
    assert_eq!(fut.get_ref().size_hint().0, 0);
    drop(tx);
    let done = fut.as_mut().await.unwrap();
    assert_eq!(done.items(), 2);
    assert!(fut.is_terminated());
    assert!(scope.is_empty());
    assert!(log.entries().is_empty());
}

#[tokio::test(start_paused = true)]
async fn polling_after_completion_panics() {
    let mut fut = pin!(
        stream::iter(vec![Ok::<u32, AppError>(1)])
            .for_each_compensated(CompensationScope::new(), |_, _| async { Ok(()) })
    );
    assert_eq!(fut.as_mut().await.unwrap().items(), 1);
    assert!(fut.is_terminated());
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let polled_again = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let _ = fut.as_mut().poll(&mut cx);
    }));
    assert!(polled_again.is_err());
}

// ---------------------------------------------------------------------------------------
// Handler error
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn handler_error_undoes_its_item_newest_first_and_keeps_committed_items() {
    let (log, table) = (Log::default(), Table::default());
    let scope = CompensationScope::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let (log2, table2, calls2) = (log.clone(), table.clone(), calls.clone());
    let result = stream::iter((1..=4).map(Ok::<u32, AppError>))
        .for_each_compensated(scope.clone(), move |item, scope| {
            calls2.fetch_add(1, Ordering::SeqCst);
            let (log, table) = (log2.clone(), table2.clone());
            async move {
                // Two effects per item, each compensation registered before its write.
                scope.register(table.delete(&log, item * 10));
                table.insert(item * 10);
                scope.register(table.delete(&log, item * 10 + 1));
                if item == 3 {
                    return Err(AppError::Write(item)); // second write failed
                }
                table.insert(item * 10 + 1);
                Ok(())
            }
        })
        .await;

    let error = result.unwrap_err();
    assert!(matches!(error.cause(), Cause::Handler(AppError::Write(3))));
    assert_eq!(error.report().ran(), 2);
    assert_eq!(error.report().succeeded(), 2);
    assert!(error.report().is_complete());
    assert!(error.is_rolled_back_cleanly());
    // Item 3's compensations, newest first; items 1 and 2 were committed and stay.
    assert_eq!(log.entries(), vec!["undo 31", "undo 30"]);
    assert_eq!(table.rows(), vec![10, 11, 20, 21]);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "no item handled after the failure"
    );
    assert!(scope.is_empty());
}

#[tokio::test(start_paused = true)]
async fn handler_error_after_awaiting_rolls_back_at_that_time() {
    let start = Instant::now();
    let log = Log::default();
    let log2 = log.clone();
    let result = stream::iter(vec![Ok::<u32, AppError>(1)])
        .for_each_compensated(CompensationScope::new(), move |item, scope| {
            let log = log2.clone();
            async move {
                scope.register(undo(&log, "undo"));
                sleep(secs(3)).await;
                Err(AppError::Write(item))
            }
        })
        .await;
    assert_eq!(start.elapsed(), secs(3));
    let (cause, report) = result.unwrap_err().into_parts();
    assert_eq!(cause.into_error(), Some(AppError::Write(1)));
    assert_eq!(report.ran(), 1);
    assert_eq!(log.entries(), vec!["undo"]);
}

#[tokio::test(start_paused = true)]
async fn compensations_registered_before_the_run_are_rolled_back_too() {
    let log = Log::default();
    let scope = CompensationScope::new();
    scope.register(undo(&log, "before the run"));
    let log2 = log.clone();
    let error = stream::iter(vec![Ok::<u32, AppError>(1)])
        .for_each_compensated(scope.clone(), move |item, scope| {
            scope.register(undo(&log2, "item"));
            async move { Err(AppError::Write(item)) }
        })
        .await
        .unwrap_err();
    assert_eq!(error.report().ran(), 2);
    assert_eq!(log.entries(), vec!["item", "before the run"]);
    assert!(scope.is_empty());
}

// ---------------------------------------------------------------------------------------
// Upstream error
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn upstream_error_stops_pulling_and_keeps_committed_items_per_item() {
    let (log, table) = (Log::default(), Table::default());
    let (log2, table2) = (log.clone(), table.clone());
    let upstream = stops_at_error(vec![
        Ok(1),
        Ok(2),
        Err(AppError::Upstream("socket reset")),
        Ok(3),
    ]);
    let error = upstream
        .for_each_compensated(CompensationScope::new(), move |item: u32, scope| {
            let (log, table) = (log2.clone(), table2.clone());
            async move {
                scope.register(table.delete(&log, item));
                table.insert(item);
                Ok(())
            }
        })
        .await
        .unwrap_err();
    assert!(matches!(
        error.cause(),
        Cause::Upstream(AppError::Upstream("socket reset"))
    ));
    assert_eq!(error.report().ran(), 0, "items 1 and 2 were committed");
    assert!(error.is_rolled_back_cleanly());
    assert_eq!(table.rows(), vec![1, 2]);
    assert!(log.entries().is_empty());
}

#[tokio::test(start_paused = true)]
async fn upstream_error_all_or_nothing_undoes_every_item() {
    let (log, table) = (Log::default(), Table::default());
    let (log2, table2) = (log.clone(), table.clone());
    let upstream = stops_at_error(vec![Ok(1), Ok(2), Err(AppError::Upstream("eof")), Ok(3)]);
    let error = upstream
        .for_each_compensated(CompensationScope::new(), move |item: u32, scope| {
            let (log, table) = (log2.clone(), table2.clone());
            async move {
                scope.register(table.delete(&log, item));
                table.insert(item);
                Ok(())
            }
        })
        .all_or_nothing()
        .await
        .unwrap_err();
    assert_eq!(
        error.cause().error(),
        Some(&AppError::Upstream("eof")),
        "the cause is the upstream error"
    );
    assert!(!error.cause().is_cancelled());
    assert_eq!(error.report().ran(), 2);
    assert_eq!(log.entries(), vec!["undo 2", "undo 1"]);
    assert!(table.rows().is_empty());
}

#[tokio::test(start_paused = true)]
async fn partial_batch_before_an_upstream_error_is_persisted_first() {
    let (log, table) = (Log::default(), Table::default());
    let (log2, table2) = (log.clone(), table.clone());
    let handled: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
    let handled2 = handled.clone();
    let error = stream::iter(vec![
        Ok(1),
        Ok(2),
        Err(AppError::Upstream("bad frame")),
        Ok(3),
    ])
    .chunks_timeout_result(10, secs(1))
    .for_each_compensated(CompensationScope::new(), move |batch: Vec<u32>, scope| {
        let (log, table, handled) = (log2.clone(), table2.clone(), handled2.clone());
        async move {
            for &row in &batch {
                scope.register(table.delete(&log, row));
                table.insert(row);
            }
            lock(&handled).push(batch);
            Ok(())
        }
    })
    .await
    .unwrap_err();
    assert!(matches!(
        error.cause(),
        Cause::Upstream(AppError::Upstream("bad frame"))
    ));
    assert_eq!(*lock(&handled), vec![vec![1, 2]]);
    assert_eq!(table.rows(), vec![1, 2]);
    assert!(log.entries().is_empty());
}

// ---------------------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn cancellation_drops_the_running_handler_at_once_then_rolls_back() {
    let start = Instant::now();
    let log = Log::default();
    let token = CancellationToken::new();
    let canceller = token.clone();
    tokio::spawn(async move {
        sleep(secs(1)).await;
        canceller.cancel();
    });
    let scope = CompensationScope::new();
    let dropped_at: Arc<Mutex<Option<Duration>>> = Arc::default();
    let (log2, dropped_at2) = (log.clone(), dropped_at.clone());
    let error = stream::iter((1..=3).map(Ok::<u32, AppError>))
        .for_each_compensated(scope.clone(), move |item, scope| {
            let (log, dropped_at) = (log2.clone(), dropped_at2.clone());
            async move {
                let log_drop = log.clone();
                let _guard = OnDrop(move || {
                    *lock(&dropped_at) = Some(start.elapsed());
                    log_drop.push(format!("handler {item} dropped"));
                });
                scope.register(undo(&log, format!("undo {item}")));
                sleep(secs(10)).await; // a slow write, interrupted at 1 s
                log.push(format!("handler {item} finished"));
                Ok(())
            }
        })
        .with_cancellation(token)
        .await
        .unwrap_err();

    assert_eq!(start.elapsed(), secs(1), "cancellation is prompt");
    assert_eq!(*lock(&dropped_at), Some(secs(1)));
    assert!(error.cause().is_cancelled());
    assert!(matches!(error.cause(), Cause::Cancelled));
    assert!(error.cause().error().is_none());
    assert_eq!(error.report().ran(), 1);
    // The handler future was dropped, then its registered compensation ran, all before
    // the future resolved.
    assert_eq!(log.entries(), vec!["handler 1 dropped", "undo 1"]);
    assert!(scope.is_empty());
}

#[tokio::test(start_paused = true)]
async fn cancellation_while_waiting_on_upstream() {
    for all_or_nothing in [false, true] {
        let start = Instant::now();
        let log = Log::default();
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<u32, AppError>>();
        tx.unbounded_send(Ok(1)).unwrap();
        tx.unbounded_send(Ok(2)).unwrap();
        let token = CancellationToken::new();
        let canceller = token.clone();
        tokio::spawn(async move {
            sleep(secs(2)).await;
            canceller.cancel();
        });
        let log2 = log.clone();
        let mut fut = rx
            .for_each_compensated(CompensationScope::new(), move |item, scope| {
                scope.register(undo(&log2, format!("undo {item}")));
                async { Ok(()) }
            })
            .with_cancellation(token);
        if all_or_nothing {
            fut = fut.unit_of_work(UnitOfWork::Run);
        }
        let error = fut.await.unwrap_err();
        assert_eq!(start.elapsed(), secs(2));
        assert!(error.cause().is_cancelled());
        if all_or_nothing {
            assert_eq!(error.report().ran(), 2);
            assert_eq!(log.entries(), vec!["undo 2", "undo 1"]);
        } else {
            assert_eq!(error.report().ran(), 0);
            assert!(log.entries().is_empty());
        }
        drop(tx);
    }
}

#[tokio::test(start_paused = true)]
async fn token_cancelled_before_start_stops_before_any_item() {
    let token = CancellationToken::new();
    token.cancel();
    let calls = Arc::new(AtomicUsize::new(0));
    let calls2 = calls.clone();
    let error = stream::iter((1..=3).map(Ok::<u32, AppError>))
        .for_each_compensated(CompensationScope::new(), move |_, _| {
            calls2.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        })
        .with_cancellation(token)
        .await
        .unwrap_err();
    assert!(error.cause().is_cancelled());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(error.report().ran(), 0);
}

#[tokio::test(start_paused = true)]
async fn cancellation_during_rollback_neither_stops_it_nor_replaces_the_cause() {
    let start = Instant::now();
    let log = Log::default();
    let token = CancellationToken::new();
    let canceller = token.clone();
    let log2 = log.clone();
    let error = stream::iter(vec![Ok::<u32, AppError>(1)])
        .for_each_compensated(CompensationScope::new(), move |item, scope| {
            let log = log2.clone();
            let canceller = canceller.clone();
            scope.register(undo(&log, "undo older"));
            scope.register(move || {
                let (log, canceller) = (log.clone(), canceller.clone());
                async move {
                    canceller.cancel(); // fires while the rollback is running
                    sleep(secs(1)).await;
                    log.push("undo slow");
                    Ok::<(), io::Error>(())
                }
            });
            async move { Err(AppError::Write(item)) }
        })
        .with_cancellation(token)
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), secs(1));
    assert!(matches!(error.cause(), Cause::Handler(AppError::Write(1))));
    assert_eq!(error.report().ran(), 2);
    assert!(error.is_rolled_back_cleanly());
    assert_eq!(log.entries(), vec!["undo slow", "undo older"]);
}

// ---------------------------------------------------------------------------------------
// Rollback policy
// ---------------------------------------------------------------------------------------

/// A compensation that fails its first `failures` attempts, recording each attempt's time.
fn flaky(
    start: Instant,
    failures: usize,
    attempts_at: Arc<Mutex<Vec<Duration>>>,
) -> impl Compensation + 'static {
    move || {
        let attempts_at = attempts_at.clone();
        async move {
            let attempt = {
                let mut at = lock(&attempts_at);
                at.push(start.elapsed());
                at.len()
            };
            if attempt <= failures {
                Err(format!("attempt {attempt} failed"))
            } else {
                Ok(())
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn failing_compensation_is_retried_with_fixed_backoff_until_it_succeeds() {
    let start = Instant::now();
    let attempts_at: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let attempts2 = attempts_at.clone();
    let error = stream::iter(vec![Ok::<u32, AppError>(1)])
        .for_each_compensated(CompensationScope::new(), move |item, scope| {
            scope.register(flaky(start, 2, attempts2.clone()));
            async move { Err(AppError::Write(item)) }
        })
        .rollback_policy(
            RollbackPolicy::default()
                .attempts(3)
                .backoff(Backoff::Fixed(ms(100))),
        )
        .await
        .unwrap_err();
    assert_eq!(*lock(&attempts_at), vec![ms(0), ms(100), ms(200)]);
    assert_eq!(start.elapsed(), ms(200));
    assert_eq!(error.report().ran(), 1);
    assert!(
        error.is_rolled_back_cleanly(),
        "succeeded on its third attempt"
    );
    assert!(error.report().failures().is_empty());
}

#[tokio::test(start_paused = true)]
async fn exponential_backoff_doubles_up_to_its_cap_and_reports_the_last_error() {
    let start = Instant::now();
    let attempts_at: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let scope = CompensationScope::new();
    scope.register_labeled("flaky", flaky(start, usize::MAX, attempts_at.clone()));
    let report = scope
        .rollback(
            RollbackPolicy::default()
                .attempts(5)
                .backoff(Backoff::Exponential {
                    initial: ms(100),
                    max: ms(250),
                }),
        )
        .await;
    // Waits of 100, 200, then 250 (capped) twice.
    assert_eq!(
        *lock(&attempts_at),
        vec![ms(0), ms(100), ms(300), ms(550), ms(800)]
    );
    assert_eq!(start.elapsed(), ms(800), "no wait after the last attempt");
    assert_eq!(report.ran(), 1);
    assert!(!report.is_complete());
    let failure = &report.failures()[0];
    assert_eq!(failure.attempts(), 5);
    assert_eq!(failure.label(), Some("flaky"));
    match failure.kind() {
        FailureKind::Error(error) => assert_eq!(error.to_string(), "attempt 5 failed"),
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(
        scope.is_empty(),
        "a finally failed compensation leaves the scope"
    );
}

#[test]
fn backoff_delays() {
    let exp = Backoff::Exponential {
        initial: ms(100),
        max: ms(250),
    };
    assert_eq!(exp.delay(1), ms(100));
    assert_eq!(exp.delay(2), ms(200));
    assert_eq!(exp.delay(3), ms(250));
    assert_eq!(exp.delay(40), ms(250), "no overflow for late retries");
    assert_eq!(exp.delay(u32::MAX), ms(250));
    assert_eq!(Backoff::Fixed(ms(7)).delay(1), ms(7));
    assert_eq!(Backoff::Fixed(ms(7)).delay(9), ms(7));
    assert_eq!(Backoff::None.delay(3), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn one_compensation_that_always_fails_does_not_stop_the_others() {
    let log = Log::default();
    let log2 = log.clone();
    let error = stream::iter(vec![Ok::<u32, AppError>(7)])
        .for_each_compensated(CompensationScope::new(), move |item, scope| {
            scope.register(undo(&log2, "a"));
            scope.register_labeled("b-label", failing(&log2, "b", "disk gone"));
            scope.register(undo(&log2, "c"));
            async move { Err(AppError::Write(item)) }
        })
        .rollback_policy(RollbackPolicy::default().attempts(2))
        .await
        .unwrap_err();

    assert_eq!(log.entries(), vec!["c", "b", "b", "a"]);
    let report = error.report();
    assert_eq!(report.ran(), 3);
    assert_eq!(report.succeeded(), 2);
    assert!(!report.is_complete());
    assert!(!error.is_rolled_back_cleanly());
    assert_eq!(report.failures().len(), 1);
    let failure = &report.failures()[0];
    assert_eq!(failure.label(), Some("b-label"));
    assert_eq!(failure.order(), 1, "the second compensation run");
    assert_eq!(failure.attempts(), 2);
    match failure.kind() {
        FailureKind::Error(e) => {
            assert_eq!(e.to_string(), "disk gone");
            let io = e
                .downcast_ref::<io::Error>()
                .expect("the compensation's own error");
            assert_eq!(io.kind(), io::ErrorKind::Other);
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let text = report.to_string();
    assert!(
        text.contains("b-label") && text.contains("disk gone"),
        "{text}"
    );

    // The original cause is intact, with the user's own type.
    match error.into_cause() {
        Cause::Handler(AppError::Write(7)) => {}
        other => panic!("cause replaced: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn default_policy_runs_each_compensation_exactly_once() {
    let policy = RollbackPolicy::default();
    assert_eq!(policy.max_attempts(), 1);
    assert_eq!(policy.backoff_strategy(), Backoff::None);
    assert_eq!(policy.attempt_time_limit(), None);
    assert_eq!(RollbackPolicy::new(), policy);

    let counts: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::default()).collect();
    let counts2 = counts.clone();
    let error = stream::iter(vec![Ok::<u32, AppError>(1)])
        .for_each_compensated(CompensationScope::new(), move |item, scope| {
            for (i, count) in counts2.iter().enumerate() {
                let count = count.clone();
                scope.register(move || {
                    let count = count.clone();
                    async move {
                        count.fetch_add(1, Ordering::SeqCst);
                        if i % 2 == 0 { Err("nope") } else { Ok(()) }
                    }
                });
            }
            async move { Err(AppError::Write(item)) }
        })
        .await
        .unwrap_err();
    for count in &counts {
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
    assert_eq!(error.report().ran(), 4);
    assert_eq!(error.report().failures().len(), 2);
    assert!(error.report().failures().iter().all(|f| f.attempts() == 1));
}

#[test]
#[should_panic(expected = "attempts")]
fn zero_attempts_panics() {
    let _ = RollbackPolicy::default().attempts(0);
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_reports_a_hanging_compensation_and_the_others_still_run() {
    let start = Instant::now();
    let log = Log::default();
    let dropped = Arc::new(AtomicUsize::new(0));
    let scope = CompensationScope::new();
    scope.register(undo(&log, "first"));
    let dropped2 = dropped.clone();
    scope.register_labeled("hangs", move || {
        let dropped = dropped2.clone();
        async move {
            let _guard = OnDrop(move || {
                dropped.fetch_add(1, Ordering::SeqCst);
            });
            std::future::pending::<Result<(), io::Error>>().await
        }
    });
    scope.register(undo(&log, "third"));
    let report = scope
        .rollback(
            RollbackPolicy::default()
                .attempts(2)
                .attempt_timeout(secs(1)),
        )
        .await;
    assert_eq!(start.elapsed(), secs(2), "two attempts of one second each");
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        2,
        "each timed-out attempt dropped"
    );
    assert_eq!(log.entries(), vec!["third", "first"]);
    assert_eq!(report.ran(), 3);
    assert_eq!(report.failures().len(), 1);
    let failure = &report.failures()[0];
    assert_eq!(failure.label(), Some("hangs"));
    assert_eq!(failure.attempts(), 2);
    assert!(matches!(failure.kind(), FailureKind::TimedOut(limit) if *limit == secs(1)));
    assert!(scope.is_empty());
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_does_not_cut_a_compensation_that_finishes_in_time() {
    let start = Instant::now();
    let log = Log::default();
    let scope = CompensationScope::new();
    let log2 = log.clone();
    scope.register(move || {
        let log = log2.clone();
        async move {
            sleep(ms(999)).await;
            log.push("slow but in time");
            Ok::<(), io::Error>(())
        }
    });
    let report = scope
        .rollback(RollbackPolicy::default().attempt_timeout(secs(1)))
        .await;
    assert!(report.is_complete());
    assert_eq!(start.elapsed(), ms(999));
    assert_eq!(log.entries(), vec!["slow but in time"]);
}

// ---------------------------------------------------------------------------------------
// Dropped future, panicking handler
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn dropped_future_mid_item_leaves_its_compensations_in_scope() {
    let log = Log::default();
    let scope = CompensationScope::new();
    let log2 = log.clone();
    let run = stream::iter((1..=3).map(Ok::<u32, AppError>)).for_each_compensated(
        scope.clone(),
        move |item, scope| {
            let log = log2.clone();
            async move {
                scope.register(undo(&log, format!("undo {item}a")));
                scope.register(undo(&log, format!("undo {item}b")));
                if item == 2 {
                    sleep(secs(3_600)).await; // still writing when the future is dropped
                }
                Ok(())
            }
        },
    );
    assert!(tokio::time::timeout(secs(1), run).await.is_err());

    // Item 1 was committed; item 2's compensations are still pending, none has run.
    assert_eq!(scope.len(), 2);
    assert!(log.entries().is_empty());
    let report = scope.rollback(RollbackPolicy::default()).await;
    assert_eq!(report.ran(), 2);
    assert!(report.is_complete());
    assert_eq!(log.entries(), vec!["undo 2b", "undo 2a"]);
    assert!(scope.is_empty());
}

#[test]
fn accessors_and_into_inner_before_polling() {
    // The future holds a `WaitForCancellationFutureOwned` pinned inline, so it is never
    // `Unpin`: once polled it cannot be moved, and `into_inner` is for unpolled futures.
    let calls = Arc::new(AtomicUsize::new(0));
    let calls2 = calls.clone();
    let mut run = stream::iter((1..=3).map(Ok::<u32, AppError>)).for_each_compensated(
        CompensationScope::new(),
        move |_, _| {
            calls2.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        },
    );
    assert_eq!(run.get_ref().size_hint(), (3, Some(3)));
    assert_eq!(
        futures::executor::block_on(futures::StreamExt::next(run.get_mut())),
        Some(Ok(1))
    );
    assert_eq!(run.items_processed(), 0);
    assert!(run.scope().is_empty());
    let rest: Vec<_> = futures::executor::block_on_stream(run.into_inner()).collect();
    assert_eq!(rest, vec![Ok(2), Ok(3)]);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn panicking_handler_in_a_spawned_task_leaves_its_compensations_in_scope() {
    let log = Log::default();
    let scope = CompensationScope::new();
    let (log2, scope2) = (log.clone(), scope.clone());
    let joined = tokio::spawn(async move {
        stream::iter((1..=3).map(Ok::<u32, AppError>))
            .for_each_compensated(scope2, move |item, scope| {
                let log = log2.clone();
                async move {
                    scope.register(undo(&log, format!("undo {item}")));
                    if item == 2 {
                        panic!("handler bug on item {item}");
                    }
                    Ok(())
                }
            })
            .await
    })
    .await;
    let join_error = joined.expect_err("the handler panicked");
    assert!(join_error.is_panic());
    assert_eq!(scope.len(), 1, "item 2's compensation is still pending");
    assert!(log.entries().is_empty());
    let report = scope.rollback(RollbackPolicy::default()).await;
    assert_eq!(report.ran(), 1);
    assert_eq!(log.entries(), vec!["undo 2"]);
}

#[tokio::test(start_paused = true)]
async fn panicking_handler_caught_with_catch_unwind_leaves_its_compensations_in_scope() {
    let log = Log::default();
    let scope = CompensationScope::new();
    let log2 = log.clone();
    let run = stream::iter((1..=3).map(Ok::<u32, AppError>)).for_each_compensated(
        scope.clone(),
        move |item, scope| {
            let log = log2.clone();
            async move {
                scope.register(undo(&log, format!("undo {item}a")));
                scope.register(undo(&log, format!("undo {item}b")));
                sleep(ms(10)).await;
                if item == 3 {
                    panic!("boom");
                }
                Ok(())
            }
        },
    );
    let caught = AssertUnwindSafe(run).catch_unwind().await;
    assert!(caught.is_err());
    assert_eq!(scope.len(), 2);
    let report = scope.rollback(RollbackPolicy::default()).await;
    assert_eq!(report.ran(), 2);
    assert_eq!(log.entries(), vec!["undo 3b", "undo 3a"]);
}

#[tokio::test(start_paused = true)]
async fn rollback_dropped_midway_keeps_the_unfinished_compensations() {
    let start = Instant::now();
    let log = Log::default();
    let scope = CompensationScope::new();
    scope.register(undo(&log, "bottom"));
    let log2 = log.clone();
    scope.register(move || {
        let log = log2.clone();
        async move {
            log.push("slow started");
            sleep(secs(10)).await;
            log.push("slow finished");
            Ok::<(), io::Error>(())
        }
    });
    scope.register(undo(&log, "top"));
    let interrupted =
        tokio::time::timeout(secs(1), scope.rollback(RollbackPolicy::default())).await;
    assert!(interrupted.is_err());
    assert_eq!(
        scope.len(),
        2,
        "the interrupted one and the one below it remain"
    );
    let report = scope.rollback(RollbackPolicy::default()).await;
    assert_eq!(report.ran(), 2);
    assert_eq!(start.elapsed(), secs(11));
    assert_eq!(
        log.entries(),
        vec![
            "top",
            "slow started",
            "slow started",
            "slow finished",
            "bottom"
        ]
    );
}

// ---------------------------------------------------------------------------------------
// All-or-nothing
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn all_or_nothing_failure_on_item_three_undoes_items_one_to_three() {
    for use_unit_of_work in [false, true] {
        let (log, table) = (Log::default(), Table::default());
        let scope = CompensationScope::new();
        let (log2, table2) = (log.clone(), table.clone());
        let run = stream::iter((1..=5).map(Ok::<u32, AppError>)).for_each_compensated(
            scope.clone(),
            move |item, scope| {
                let (log, table) = (log2.clone(), table2.clone());
                async move {
                    assert_eq!(scope.len() as u32, item - 1, "earlier items kept");
                    scope.register(table.delete(&log, item));
                    table.insert(item);
                    if item == 3 {
                        Err(AppError::Write(3))
                    } else {
                        Ok(())
                    }
                }
            },
        );
        let run = if use_unit_of_work {
            run.unit_of_work(UnitOfWork::Run)
        } else {
            run.all_or_nothing()
        };
        let error = run.await.unwrap_err();
        assert!(matches!(error.cause(), Cause::Handler(AppError::Write(3))));
        assert_eq!(error.report().ran(), 3);
        assert_eq!(log.entries(), vec!["undo 3", "undo 2", "undo 1"]);
        assert!(table.rows().is_empty());
        assert!(scope.is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn all_or_nothing_success_commits_everything() {
    let (log, table) = (Log::default(), Table::default());
    let scope = CompensationScope::new();
    let (log2, table2) = (log.clone(), table.clone());
    let done = stream::iter((1..=5).map(Ok::<u32, AppError>))
        .for_each_compensated(scope.clone(), move |item, scope| {
            let (log, table) = (log2.clone(), table2.clone());
            async move {
                scope.register(table.delete(&log, item));
                table.insert(item);
                Ok(())
            }
        })
        .all_or_nothing()
        .await
        .unwrap();
    assert_eq!(done.items(), 5);
    assert!(scope.is_empty());
    assert!(log.entries().is_empty());
    assert_eq!(table.rows(), vec![1, 2, 3, 4, 5]);
}

#[tokio::test(start_paused = true)]
async fn nested_scope_skips_a_failed_batch_and_carries_on() {
    let (log, table) = (Log::default(), Table::default());
    let outer = CompensationScope::new();
    let (log2, table2) = (log.clone(), table.clone());
    let done = stream::iter((1..=3).map(Ok::<u32, AppError>))
        .for_each_compensated(outer.clone(), move |item, _outer| {
            let (log, table) = (log2.clone(), table2.clone());
            async move {
                let inner = CompensationScope::new();
                inner.register(table.delete(&log, item));
                table.insert(item);
                if item == 2 {
                    let report = inner.rollback(RollbackPolicy::default()).await;
                    assert!(report.is_complete());
                } else {
                    inner.commit();
                }
                Ok(())
            }
        })
        .await
        .unwrap();
    assert_eq!(done.items(), 3);
    assert_eq!(table.rows(), vec![1, 3]);
    assert_eq!(log.entries(), vec!["undo 2"]);
    assert!(outer.is_empty());
}

// ---------------------------------------------------------------------------------------
// Scope and error types
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn scope_is_one_shared_lifo_stack() {
    let log = Log::default();
    let scope = CompensationScope::default();
    let clone = scope.clone();
    scope.register(undo(&log, "1"));
    clone.register_labeled("two", undo(&log, "2"));
    scope.register(undo(&log, "3"));
    assert_eq!(clone.len(), 3);
    assert!(format!("{scope:?}").contains('3'));
    let report = clone.rollback(RollbackPolicy::default()).await;
    assert_eq!(report.ran(), 3);
    assert!(report.is_complete());
    assert_eq!(log.entries(), vec!["3", "2", "1"]);
    assert!(scope.is_empty());

    scope.register(undo(&log, "never"));
    scope.register(undo(&log, "never"));
    assert_eq!(clone.commit(), 2);
    assert!(scope.is_empty());
    assert_eq!(scope.rollback(RollbackPolicy::default()).await.ran(), 0);
    assert_eq!(log.entries().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn compensated_error_display_and_source() {
    let error: CompensatedError<io::Error> = stream::iter(vec![Ok::<u32, io::Error>(1)])
        .for_each_compensated(CompensationScope::new(), |_, scope| {
            scope.register(|| async { Ok::<(), io::Error>(()) });
            async { Err(io::Error::other("write failed")) }
        })
        .await
        .unwrap_err();
    // Display names the kind of cause and the rollback; the cause's text is the source's, so
    // an error-chain printer shows it once.
    let text = error.to_string();
    assert!(text.contains("stopped by a handler error"), "{text}");
    assert!(!text.contains("write failed"), "{text}");
    assert!(text.contains("rolled back cleanly"), "{text}");
    assert_eq!(error.cause().to_string(), "handler error: write failed");
    let source = error.source().expect("the cause is the source");
    let io = source
        .downcast_ref::<io::Error>()
        .expect("the user's error");
    assert_eq!(io.to_string(), "write failed");
    // It travels as a boxed, thread-safe error.
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(error);
    assert!(boxed.source().is_some());

    let upstream: CompensatedError<AppError> =
        stream::iter(vec![Err::<u32, _>(AppError::Upstream("gone"))])
            .for_each_compensated(CompensationScope::new(), |_, _| async { Ok(()) })
            .await
            .unwrap_err();
    assert!(
        upstream
            .to_string()
            .contains("stopped by an upstream error")
    );
    assert_eq!(
        upstream.cause().to_string(),
        "upstream error: upstream: gone"
    );
    assert_eq!(
        upstream.source().and_then(|s| s.downcast_ref::<AppError>()),
        Some(&AppError::Upstream("gone"))
    );

    let token = CancellationToken::new();
    token.cancel();
    let cancelled: CompensatedError<AppError> = stream::iter(vec![Ok::<u32, AppError>(1)])
        .for_each_compensated(CompensationScope::new(), |_, scope| {
            scope.register_labeled("flush", || async { Err::<(), _>("still dirty") });
            async { Ok(()) }
        })
        .with_cancellation(token)
        .await
        .unwrap_err();
    // Cancelled before the first item: nothing registered, nothing to undo.
    assert!(cancelled.source().is_none());
    assert!(cancelled.to_string().starts_with("cancelled"));

    let scope = CompensationScope::new();
    scope.register_labeled("flush", || async { Err::<(), _>("still dirty") });
    let report = scope.rollback(RollbackPolicy::default()).await;
    let text = report.to_string();
    assert!(text.contains("rollback incomplete"), "{text}");
    assert!(
        text.contains("flush") && text.contains("still dirty"),
        "{text}"
    );
    assert!(report.failures()[0].to_string().contains("1 attempt"));
}

#[test]
fn construction_needs_no_runtime() {
    assert!(tokio::runtime::Handle::try_current().is_err());
    let scope = CompensationScope::new();
    let run = stream::iter(vec![Ok::<u32, AppError>(1)])
        .for_each_compensated(scope.clone(), |_, _| {
            futures::future::ready(Ok::<(), AppError>(()))
        })
        .rollback_policy(
            RollbackPolicy::default()
                .attempts(3)
                .backoff(Backoff::Fixed(ms(10)))
                .attempt_timeout(secs(1)),
        )
        .all_or_nothing()
        .with_cancellation(CancellationToken::new());
    assert!(format!("{run:?}").contains("ForEachCompensated"));
    drop(run);

    // A rollback without backoff or time limit touches no timer at all.
    let log = Log::default();
    scope.register(undo(&log, "undo"));
    let rollback = scope.rollback(RollbackPolicy::default());
    assert!(format!("{rollback:?}").contains("Rollback"));
    let report = futures::executor::block_on(rollback);
    assert_eq!(report.ran(), 1);
    assert_eq!(log.entries(), vec!["undo"]);
}

// ---------------------------------------------------------------------------------------
// Review findings: panics, retrying failures, cancellation from inside, shared scopes
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_panicking_compensation_is_reported_and_the_others_still_run() {
    let log = Log::default();
    let scope = CompensationScope::new();
    scope.register(undo(&log, "oldest"));
    scope.register_labeled("bomb", || async {
        if true {
            panic!("compensation exploded");
        }
        Ok::<(), io::Error>(())
    });
    scope.register(undo(&log, "newest"));

    let report = scope.rollback(RollbackPolicy::default().attempts(2)).await;

    assert_eq!(log.entries(), vec!["newest", "oldest"]);
    assert_eq!(report.ran(), 3);
    assert_eq!(report.failures().len(), 1);
    let failure = &report.failures()[0];
    assert_eq!(failure.label(), Some("bomb"));
    assert_eq!(failure.attempts(), 2);
    assert!(
        matches!(failure.kind(), FailureKind::Panicked(m) if m == "compensation exploded"),
        "{:?}",
        failure.kind()
    );
    assert!(scope.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_compensation_can_be_retried_from_the_report() {
    let calls = Arc::new(AtomicUsize::new(0));
    let scope = CompensationScope::new();
    let counter = calls.clone();
    scope.register_labeled("flaky", move || {
        let counter = counter.clone();
        async move {
            match counter.fetch_add(1, Ordering::SeqCst) {
                0 => Err(io::Error::other("database down")),
                _ => Ok(()),
            }
        }
    });

    let report = scope.rollback(RollbackPolicy::default()).await;
    let failure = &report.failures()[0];
    assert_eq!(
        failure.source().map(|e| e.to_string()).as_deref(),
        Some("database down")
    );
    failure.retry().await.expect("the second run succeeds");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Or put it back in a scope to run under a policy later.
    let again = CompensationScope::new();
    again.register(failure.action().clone());
    assert_eq!(again.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_cancels_the_token_pulls_no_further_item() {
    let token = CancellationToken::new();
    let pulled = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let items = stream::iter(1..=10u32).map(move |item| {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok::<u32, AppError>(item)
    });
    let (handler_token, handler_count) = (token.clone(), handled.clone());
    let error = items
        .for_each_compensated(CompensationScope::new(), move |item, _| {
            handler_count.fetch_add(1, Ordering::SeqCst);
            let token = handler_token.clone();
            async move {
                if item == 2 {
                    token.cancel();
                }
                Ok(())
            }
        })
        .with_cancellation(token)
        .await
        .unwrap_err();
    assert!(error.cause().is_cancelled());
    assert_eq!(pulled.load(Ordering::SeqCst), 2);
    assert_eq!(handled.load(Ordering::SeqCst), 2);
}

/// A one-item run on `scope` whose handler registers `undo(name)`, then after `after`
/// resolves to `outcome`.
fn one_item_run(
    scope: &CompensationScope,
    log: &Log,
    name: &'static str,
    after: Duration,
    outcome: Result<(), AppError>,
) -> impl Future<Output = Result<result_stream::Completion, CompensatedError<AppError>>> {
    let log = log.clone();
    stream::iter(vec![Ok::<u32, AppError>(1)]).for_each_compensated(
        scope.clone(),
        move |_, scope| {
            scope.register(undo(&log, name));
            let outcome = outcome.clone();
            async move {
                sleep(after).await;
                outcome
            }
        },
    )
}

#[tokio::test(start_paused = true)]
async fn two_pipelines_sharing_a_scope_commit_and_roll_back_only_their_own_work() {
    let log = Log::default();
    let scope = CompensationScope::new();
    scope.register(undo(&log, "setup"));

    // A's item registers, then succeeds at 100 ms; B's registers, then fails at 500 ms.
    let (a, b) = tokio::join!(
        one_item_run(&scope, &log, "a", ms(100), Ok(())),
        one_item_run(&scope, &log, "b", ms(500), Err(AppError::Write(2))),
    );

    assert_eq!(a.unwrap().items(), 1);
    let b = b.unwrap_err();
    // A's commit did not drop B's compensation; B's rollback undid B's item and the
    // scope's own registration, not A's (already committed) work.
    assert_eq!(log.entries(), vec!["b", "setup"]);
    assert_eq!(b.report().ran(), 2);
    assert!(scope.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failure_leaves_a_concurrent_pipelines_pending_work_alone() {
    let log = Log::default();
    let scope = CompensationScope::new();
    // A's item is still in flight (registered, not yet done) when B fails.
    let (a, b) = tokio::join!(
        one_item_run(&scope, &log, "a", ms(500), Ok(())),
        one_item_run(&scope, &log, "b", ms(100), Err(AppError::Write(2))),
    );
    assert_eq!(b.unwrap_err().report().ran(), 1);
    assert_eq!(a.unwrap().items(), 1);
    assert_eq!(log.entries(), vec!["b"]);
    assert!(scope.is_empty(), "A committed its own entry");
}

#[tokio::test(start_paused = true)]
async fn concurrent_rollbacks_of_one_scope_run_each_compensation_once_newest_first() {
    let log = Log::default();
    let scope = CompensationScope::new();
    for name in ["old", "mid", "new"] {
        let log = log.clone();
        scope.register(move || {
            let log = log.clone();
            async move {
                log.push(format!("{name} start"));
                sleep(ms(10)).await;
                log.push(format!("{name} end"));
                Ok::<(), io::Error>(())
            }
        });
    }
    let (first, second) = tokio::join!(
        scope.rollback(RollbackPolicy::default()),
        scope.rollback(RollbackPolicy::default())
    );
    assert_eq!(first.ran() + second.ran(), 3);
    assert_eq!(
        log.entries(),
        vec![
            "new start",
            "new end",
            "mid start",
            "mid end",
            "old start",
            "old end"
        ]
    );
}
