//! `for_each_compensated`: cancellation through a `CancellationToken` (prompt,
//! from outside and from inside a handler, during a rollback), and runs sharing one scope.

mod common;
mod compensation_common;

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ms, secs};
use compensation_common::*;
use futures::StreamExt as _;
use futures::stream::{self};
use result_stream::{Cause, CompensatedError, CompensationScope, ResultStreamExt, UnitOfWork};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

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
// Cancellation from inside; runs sharing a scope
// ---------------------------------------------------------------------------------------

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
async fn two_pipelines_sharing_a_scope_never_take_each_others_work() {
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
    // A's success committed its own work and the scope's own registration (it belongs to
    // the run that ends first), never B's compensation; B's rollback undid B's item only.
    assert_eq!(log.entries(), vec!["b"]);
    assert_eq!(b.report().ran(), 1);
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
