//! `for_each_compensated` and `CompensationScope`: every failure path, the rollback
//! policy, and the error that reports them.

mod common;
mod compensation_common;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;

use common::{ms, secs};
use compensation_common::*;
use futures::FutureExt;
use futures::future::FusedFuture;
use futures::stream::{self, Stream};
use result_stream::{Backoff, Cause, CompensationScope, ResultStreamExt, RetryPolicy, UnitOfWork};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

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
    let report = scope.rollback(RetryPolicy::default()).await;
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
    let report = scope.rollback(RetryPolicy::default()).await;
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
    let report = scope.rollback(RetryPolicy::default()).await;
    assert_eq!(report.ran(), 2);
    assert_eq!(log.entries(), vec!["undo 3b", "undo 3a"]);
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
                    let report = inner.rollback(RetryPolicy::default()).await;
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
// Construction
// ---------------------------------------------------------------------------------------

#[test]
fn construction_needs_no_runtime() {
    assert!(tokio::runtime::Handle::try_current().is_err());
    let scope = CompensationScope::new();
    let run = stream::iter(vec![Ok::<u32, AppError>(1)])
        .for_each_compensated(scope.clone(), |_, _| {
            futures::future::ready(Ok::<(), AppError>(()))
        })
        .rollback_policy(
            RetryPolicy::default()
                .attempts(3)
                .backoff(Backoff::Fixed(ms(10)))
                .attempt_timeout(secs(1)),
        )
        .all_or_nothing()
        .with_cancellation(CancellationToken::new());
    let debug = format!("{run:?}");
    assert!(debug.contains("ForEachCompensated"), "{debug}");
    assert!(
        debug.contains("CompensationScope { pending: 0 }"),
        "{debug}"
    );
    drop(run);

    // A rollback without backoff or time limit touches no timer at all.
    let log = Log::default();
    scope.register(undo(&log, "undo"));
    let rollback = scope.rollback(RetryPolicy::default());
    assert!(format!("{rollback:?}").contains("Rollback"));
    let report = futures::executor::block_on(rollback);
    assert_eq!(report.ran(), 1);
    assert_eq!(log.entries(), vec!["undo"]);
}
