//! `for_each_compensated(..).skip_failed_items(on_skip)`: a failed item
//! is rolled back alone and the run goes on; with concurrency, after retries, and refused in
//! an all-or-nothing run. Every timing rule on a paused clock.

mod common;
mod compensation_common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use common::ms;
use compensation_common::*;
use futures::stream;
use result_stream::{
    Cause, CompensatedError, CompensationScope, Completion, ResultStreamExt, RetryPolicy,
};

// ---------------------------------------------------------------------------------------
// skip_failed_items(on_skip)
// ---------------------------------------------------------------------------------------

type Skips = Arc<Mutex<Vec<(u64, CompensatedError<AppError>)>>>;

fn recorder(skips: &Skips) -> impl FnMut(u64, CompensatedError<AppError>) + Send + 'static {
    let skips = skips.clone();
    move |index, error| skips.lock().unwrap().push((index, error))
}

#[tokio::test(start_paused = true)]
async fn skipped_items_are_rolled_back_alone_and_the_run_goes_on_with_concurrency() {
    let (log, table) = (Log::default(), Table::default());
    let skips = Skips::default();
    let scope = CompensationScope::new();
    let done: Completion = stream::iter((1..=6).map(Ok::<u32, AppError>))
        .for_each_compensated(
            scope.clone(),
            scripted(
                &log,
                &table,
                |item| ms(u64::from(item) * 10),
                |item, _| match item % 3 {
                    0 => Err(AppError::Write(item)),
                    _ => Ok(()),
                },
            ),
        )
        .concurrency(3)
        .skip_failed_items(recorder(&skips))
        .await
        .unwrap();
    assert_eq!((done.items(), done.skipped()), (4, 2));
    assert_eq!(table.rows(), vec![1, 2, 4, 5]);
    assert_eq!(undos(&log), vec!["undo 3", "undo 6"]);
    let skips = skips.lock().unwrap();
    let seen: Vec<_> = skips
        .iter()
        .map(|(index, error)| (*index, error.cause().clone(), error.report().ran()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (2, Cause::Handler(AppError::Write(3)), 1),
            (5, Cause::Handler(AppError::Write(6)), 1)
        ]
    );
    assert!(scope.is_empty());
}

/// The default shape, one item at a time with no retry: a failed item is skipped there too
/// (rolled back alone, the run goes on), not treated as the run's failure.
#[tokio::test(start_paused = true)]
async fn a_failed_item_is_skipped_one_at_a_time_without_retry() {
    let log = Log::default();
    let skips = Skips::default();
    let scope = CompensationScope::new();
    let log2 = log.clone();
    let done = stream::iter((1..=4).map(Ok::<u32, AppError>))
        .for_each_compensated(scope.clone(), move |item, scope| {
            scope.register(undo(&log2, format!("undo {item}")));
            async move {
                match item {
                    3 => Err(AppError::Write(3)),
                    _ => Ok(()),
                }
            }
        })
        .skip_failed_items(recorder(&skips))
        .await
        .expect("the failed item is skipped, not the run's failure");
    assert_eq!((done.items(), done.skipped()), (3, 1));
    assert_eq!(log.entries(), vec!["undo 3"]);
    let skips = skips.lock().unwrap();
    assert_eq!(skips.len(), 1);
    assert_eq!(skips[0].0, 2, "the third item");
    assert_eq!(skips[0].1.cause(), &Cause::Handler(AppError::Write(3)));
    assert_eq!(skips[0].1.report().ran(), 1);
    assert!(scope.is_empty(), "the other items were committed");
}

#[tokio::test(start_paused = true)]
async fn a_skipped_item_whose_rollback_is_incomplete_stops_the_run() {
    let log = Log::default();
    let skips = Skips::default();
    let pulled = Arc::new(AtomicU32::new(0));
    let pulled2 = pulled.clone();
    let log2 = log.clone();
    let error = stream::iter((1..=5).map(Ok::<u32, AppError>))
        .for_each_compensated(CompensationScope::new(), move |item, scope| {
            pulled2.fetch_add(1, Ordering::SeqCst);
            if item == 2 {
                scope.register_labeled("stuck", failing(&log2, "undo 2", "still there"));
            } else {
                scope.register(undo(&log2, format!("undo {item}")));
            }
            async move {
                match item {
                    2 => Err(AppError::Write(2)),
                    _ => Ok(()),
                }
            }
        })
        .skip_failed_items(recorder(&skips))
        .await
        .unwrap_err();
    assert_eq!(
        pulled.load(Ordering::SeqCst),
        2,
        "nothing builds on a half-undone write"
    );
    assert!(skips.lock().unwrap().is_empty());
    assert_eq!(error.cause(), &Cause::Handler(AppError::Write(2)));
    assert!(!error.is_rolled_back_cleanly());
    assert_eq!(error.report().failures()[0].label(), Some("stuck"));
    assert_eq!(log.entries(), vec!["undo 2"]);
}

#[tokio::test(start_paused = true)]
async fn upstream_errors_still_stop_a_run_that_skips() {
    let skips = Skips::default();
    let error = stream::iter(vec![
        Ok::<u32, AppError>(1),
        Err(AppError::Upstream("gone")),
        Ok(3),
    ])
    .for_each_compensated(CompensationScope::new(), |_, _| async { Ok(()) })
    .skip_failed_items(recorder(&skips))
    .await
    .unwrap_err();
    assert_eq!(error.cause(), &Cause::Upstream(AppError::Upstream("gone")));
}

#[tokio::test(start_paused = true)]
async fn skip_after_retries_hands_over_the_last_attempts_cause() {
    let (log, table) = (Log::default(), Table::default());
    let skips = Skips::default();
    let done = stream::iter((1..=2).map(Ok::<u32, AppError>))
        .for_each_compensated(
            CompensationScope::new(),
            scripted(
                &log,
                &table,
                |_| ms(1),
                |item, _| match item {
                    1 => Err(AppError::Write(1)),
                    _ => Ok(()),
                },
            ),
        )
        .retry(RetryPolicy::default().attempts(2))
        .skip_failed_items(recorder(&skips))
        .await
        .unwrap();
    assert_eq!((done.items(), done.skipped()), (1, 1));
    assert_eq!(
        log.entries(),
        vec!["write 1#1", "undo 1", "write 1#2", "undo 1", "write 2#1"]
    );
    assert_eq!(skips.lock().unwrap()[0].0, 0);
}

#[test]
#[should_panic(expected = "an all-or-nothing run cannot skip failed items")]
fn skipping_in_an_all_or_nothing_run_is_refused() {
    drop(
        stream::iter(vec![Ok::<u32, AppError>(1)])
            .for_each_compensated(CompensationScope::new(), |_, _| async { Ok(()) })
            .all_or_nothing()
            .skip_failed_items(|_, _| {}),
    );
}

#[test]
#[should_panic(expected = "cannot skip failed items")]
fn all_or_nothing_after_skipping_is_refused() {
    drop(
        stream::iter(vec![Ok::<u32, AppError>(1)])
            .for_each_compensated(CompensationScope::new(), |_, _| async { Ok(()) })
            .skip_failed_items(|_, _| {})
            .all_or_nothing(),
    );
}
