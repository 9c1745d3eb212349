//! What the handle a handler receives acts on: its own item only, under any concurrency;
//! and how often a run polls a handler (only when it was woken).

mod compensation_common;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use compensation_common::{AppError, Log, Table, undo};
use futures::stream;
use result_stream::{Cause, CompensationScope, ResultStreamExt};
use tokio::time::sleep;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn an_items_commit_does_not_drop_another_items_undo_under_concurrency() {
    // Item 1 commits its transaction and calls `commit()`; item 2, half written, then
    // fails: its undo must still run, and the report must say one compensation ran.
    let (log, table) = (Log::default(), Table::default());
    let (log2, table2) = (log.clone(), table.clone());
    let error = stream::iter([1u32, 2].map(Ok::<u32, AppError>))
        .for_each_compensated(CompensationScope::new(), move |item, scope| {
            let (log, table) = (log2.clone(), table2.clone());
            async move {
                scope.register(table.delete(&log, item));
                table.insert(item);
                if item == 1 {
                    sleep(ms(10)).await;
                    assert_eq!(scope.commit(), 1, "item 1 commits only its own undo");
                    Ok(())
                } else {
                    sleep(ms(20)).await;
                    Err(AppError::Write(item))
                }
            }
        })
        .concurrency(2)
        .await
        .unwrap_err();
    assert!(matches!(error.cause(), Cause::Handler(AppError::Write(2))));
    assert_eq!(error.report().ran(), 1);
    assert_eq!(log.entries(), vec!["undo 2"]);
    assert_eq!(table.rows(), vec![1], "item 2's partial write is undone");
}

#[tokio::test(start_paused = true)]
async fn an_items_rollback_does_not_undo_another_item_in_flight() {
    // Item 1 undoes its own partial write and returns `Ok`; item 2 is mid-write. Item 2's
    // row must survive: the run succeeds with every row it claims.
    let (log, table) = (Log::default(), Table::default());
    let (log2, table2) = (log.clone(), table.clone());
    let done = stream::iter([1u32, 2].map(Ok::<u32, AppError>))
        .for_each_compensated(CompensationScope::new(), move |item, scope| {
            let (log, table) = (log2.clone(), table2.clone());
            async move {
                scope.register(table.delete(&log, item));
                table.insert(item);
                if item == 1 {
                    sleep(ms(10)).await;
                    let report = scope.rollback(Default::default()).await;
                    assert_eq!(report.ran(), 1, "item 1 undoes only its own write");
                } else {
                    sleep(ms(20)).await;
                }
                Ok(())
            }
        })
        .concurrency(2)
        .await
        .unwrap();
    assert_eq!(done.items(), 2);
    assert_eq!(log.entries(), vec!["undo 1"]);
    assert_eq!(table.rows(), vec![2]);
}

#[tokio::test(start_paused = true)]
async fn a_handlers_commit_keeps_what_the_scopes_own_handles_registered() {
    // One item at a time. The scope's own handle registers an undo before the run; item 1
    // commits through its handle; item 2 fails: the run's rollback still runs the scope's.
    let log = Log::default();
    let scope = CompensationScope::new();
    scope.register(undo(&log, "before the run"));
    let log2 = log.clone();
    let error = stream::iter([1u32, 2].map(Ok::<u32, AppError>))
        .for_each_compensated(scope.clone(), move |item, scope| {
            scope.register(undo(&log2, format!("item {item}")));
            async move {
                if item == 2 {
                    return Err(AppError::Write(2));
                }
                assert_eq!(scope.commit(), 1, "only item 1's own undo");
                Ok(())
            }
        })
        .await
        .unwrap_err();
    assert_eq!(error.report().ran(), 2);
    assert_eq!(log.entries(), vec!["item 2", "before the run"]);
    assert!(scope.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_handlers_commit_keeps_what_the_runs_handle_registered() {
    let log = Log::default();
    let log2 = log.clone();
    let run = stream::iter([1u32, 2].map(Ok::<u32, AppError>)).for_each_compensated(
        CompensationScope::new(),
        move |item, scope| {
            scope.register(undo(&log2, format!("item {item}")));
            async move {
                if item == 2 {
                    return Err(AppError::Write(2));
                }
                scope.commit();
                Ok(())
            }
        },
    );
    run.scope().register(undo(&log, "run-level"));
    let error = run.await.unwrap_err();
    assert_eq!(log.entries(), vec!["item 2", "run-level"]);
    assert_eq!(error.report().ran(), 2);
}

/// Counts the polls of the future it wraps.
struct CountPolls<F> {
    inner: Pin<Box<F>>,
    polls: Arc<AtomicUsize>,
}

impl<F: Future> Future for CountPolls<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.inner.as_mut().poll(cx)
    }
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_sleeps_once_is_polled_at_most_three_times_with_64_in_flight() {
    for (items, concurrency) in [(640u64, 64), (20, 1), (100, 8)] {
        let polls = Arc::new(AtomicUsize::new(0));
        let counter = polls.clone();
        let done = stream::iter((0..items).map(Ok::<u64, AppError>))
            .for_each_compensated(CompensationScope::new(), move |item, _scope| CountPolls {
                inner: Box::pin(async move {
                    // Different lengths, so that the items end at different times.
                    sleep(ms(1 + item % 7)).await;
                    Ok(())
                }),
                polls: counter.clone(),
            })
            .concurrency(concurrency)
            .await
            .unwrap();
        assert_eq!(done.items(), items);
        let polls = polls.load(Ordering::Relaxed) as u64;
        assert!(
            polls <= 3 * items,
            "{polls} polls for {items} items at concurrency {concurrency}"
        );
    }
}
