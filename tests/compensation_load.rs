//! `for_each_compensated` under load (SPEC §7, issue 11): `.concurrency(n)`, `.retry(policy)`,
//! `.skip_failed_items(on_skip)`, and how they compose with each other, with cancellation and
//! with all-or-nothing. Every timing rule on a paused clock.

mod common;
mod compensation_common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ms, secs};
use compensation_common::*;
use futures::stream;
use result_stream::{
    Backoff, Cause, CompensatedError, CompensationScope, Completion, ResultStreamExt,
    RollbackPolicy,
};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

/// A handler script: item `i` registers `undo i`, writes row `i`, waits `wait(i)`, and
/// resolves to `outcome(i, attempt)` (attempts counted from 1 per item).
fn scripted(
    log: &Log,
    table: &Table,
    wait: impl Fn(u32) -> Duration + Send + Sync + 'static,
    outcome: impl Fn(u32, u32) -> Result<(), AppError> + Send + Sync + 'static,
) -> impl FnMut(
    u32,
    CompensationScope,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), AppError>> + Send>> {
    let (log, table) = (log.clone(), table.clone());
    let attempts: Arc<Mutex<Vec<u32>>> = Arc::default();
    let (wait, outcome) = (Arc::new(wait), Arc::new(outcome));
    move |item, scope| {
        let attempt = {
            let mut attempts = attempts.lock().unwrap();
            if attempts.len() <= item as usize {
                attempts.resize(item as usize + 1, 0);
            }
            attempts[item as usize] += 1;
            attempts[item as usize]
        };
        let (log, table, wait, outcome) =
            (log.clone(), table.clone(), wait.clone(), outcome.clone());
        Box::pin(async move {
            scope.register(table.delete(&log, item));
            table.insert(item);
            log.push(format!("write {item}#{attempt}"));
            sleep(wait(item)).await;
            outcome(item, attempt)
        })
    }
}

fn undos(log: &Log) -> Vec<String> {
    log.entries()
        .into_iter()
        .filter(|entry| entry.starts_with("undo"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// concurrency(n)
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn eight_items_of_one_second_at_concurrency_four_take_two_seconds() {
    let start = Instant::now();
    let (log, table) = (Log::default(), Table::default());
    let scope = CompensationScope::new();
    let done = stream::iter((1..=8).map(Ok::<u32, AppError>))
        .for_each_compensated(
            scope.clone(),
            scripted(&log, &table, |_| secs(1), |_, _| Ok(())),
        )
        .concurrency(4)
        .await
        .unwrap();
    assert_eq!(done.items(), 8);
    assert_eq!(start.elapsed(), secs(2));
    assert_eq!(table.rows(), (1..=8).collect::<Vec<_>>());
    assert!(scope.is_empty(), "each item committed its own");
    assert!(undos(&log).is_empty());
}

#[tokio::test(start_paused = true)]
async fn items_are_pulled_in_order_and_a_free_slot_takes_the_next_at_once() {
    let start = Instant::now();
    let log = Log::default();
    let table = Table::default();
    // Item 1 takes 3 s; items 2.. take 1 s: with 2 slots, 2, 3, 4 follow each other in the
    // second slot while 1 runs.
    let done = stream::iter((1..=4).map(Ok::<u32, AppError>))
        .for_each_compensated(
            CompensationScope::new(),
            scripted(
                &log,
                &table,
                |item| if item == 1 { secs(3) } else { secs(1) },
                |_, _| Ok(()),
            ),
        )
        .concurrency(2)
        .await
        .unwrap();
    assert_eq!(done.items(), 4);
    assert_eq!(start.elapsed(), secs(3));
    let writes: Vec<_> = log.entries();
    assert_eq!(
        writes,
        vec!["write 1#1", "write 2#1", "write 3#1", "write 4#1"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_drops_the_items_in_flight_and_undoes_exactly_the_uncommitted_newest_first() {
    let start = Instant::now();
    let (log, table) = (Log::default(), Table::default());
    let scope = CompensationScope::new();
    // t=0: items 1, 2, 3 start; t=100ms: 1 commits, 4 starts; t=200ms: 4 fails while 2
    // (until 500ms) and 3 (until 300ms) are in flight.
    let error = stream::iter((1..=6).map(Ok::<u32, AppError>))
        .for_each_compensated(
            scope.clone(),
            scripted(
                &log,
                &table,
                |item| match item {
                    1 | 4 => ms(100),
                    2 => ms(500),
                    _ => ms(300),
                },
                |item, _| match item {
                    4 => Err(AppError::Write(4)),
                    _ => Ok(()),
                },
            ),
        )
        .concurrency(3)
        .await
        .unwrap_err();
    assert_eq!(
        start.elapsed(),
        ms(200),
        "in-flight handlers are dropped at once"
    );
    assert_eq!(error.cause(), &Cause::Handler(AppError::Write(4)));
    assert_eq!(error.report().ran(), 3);
    assert_eq!(undos(&log), vec!["undo 4", "undo 3", "undo 2"]);
    assert_eq!(table.rows(), vec![1], "item 1 committed, the rest undone");
    assert!(scope.is_empty());
}

#[tokio::test(start_paused = true)]
async fn cancellation_with_items_in_flight_drops_them_and_undoes_them() {
    let start = Instant::now();
    let (log, table) = (Log::default(), Table::default());
    let token = CancellationToken::new();
    let canceller = token.clone();
    tokio::spawn(async move {
        sleep(ms(1_500)).await;
        canceller.cancel();
    });
    let error = stream::iter((1..=20).map(Ok::<u32, AppError>))
        .for_each_compensated(
            CompensationScope::new(),
            scripted(&log, &table, |_| secs(1), |_, _| Ok(())),
        )
        .concurrency(4)
        .with_cancellation(token)
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), ms(1_500), "cancellation is prompt");
    assert!(error.cause().is_cancelled());
    // 1–4 committed at 1 s; 5–8 were in flight.
    assert_eq!(undos(&log), vec!["undo 8", "undo 7", "undo 6", "undo 5"]);
    assert_eq!(table.rows(), vec![1, 2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn all_or_nothing_with_concurrency_undoes_every_item_newest_first() {
    let (log, table) = (Log::default(), Table::default());
    let error = stream::iter((1..=4).map(Ok::<u32, AppError>))
        .for_each_compensated(
            CompensationScope::new(),
            scripted(
                &log,
                &table,
                |item| ms(u64::from(item) * 100),
                |item, _| match item {
                    4 => Err(AppError::Write(4)),
                    _ => Ok(()),
                },
            ),
        )
        .concurrency(2)
        .all_or_nothing()
        .await
        .unwrap_err();
    assert_eq!(error.report().ran(), 4);
    // Registration order: 1, 2 at t=0, 3 at 100 ms, 4 at 200 ms.
    assert_eq!(undos(&log), vec!["undo 4", "undo 3", "undo 2", "undo 1"]);
    assert!(table.rows().is_empty());
}

#[test]
#[should_panic(expected = "ForEachCompensated::concurrency: `n` must be at least 1")]
fn concurrency_zero_panics_at_the_caller() {
    drop(
        stream::iter(vec![Ok::<u32, AppError>(1)])
            .for_each_compensated(CompensationScope::new(), |_, _| async { Ok(()) })
            .concurrency(0),
    );
}

// ---------------------------------------------------------------------------------------
// retry(policy)
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retry_undoes_each_failed_attempt_then_waits_the_backoff_then_tries_a_clone() {
    let start = Instant::now();
    let (log, table) = (Log::default(), Table::default());
    let scope = CompensationScope::new();
    let done = stream::iter((1..=2).map(Ok::<u32, AppError>))
        .for_each_compensated(
            scope.clone(),
            scripted(
                &log,
                &table,
                |_| ms(10),
                |item, attempt| match (item, attempt) {
                    (2, 1 | 2) => Err(AppError::Write(2)),
                    _ => Ok(()),
                },
            ),
        )
        .retry(
            RollbackPolicy::default()
                .attempts(3)
                .backoff(Backoff::Fixed(ms(100))),
        )
        .await
        .unwrap();
    assert_eq!(done.items(), 2);
    assert_eq!(
        log.entries(),
        vec![
            "write 1#1",
            "write 2#1",
            "undo 2",
            "write 2#2",
            "undo 2",
            "write 2#3"
        ]
    );
    // 10 ms for item 1, then item 2: three attempts of 10 ms and two backoffs of 100 ms.
    assert_eq!(start.elapsed(), ms(10 + 3 * 10 + 2 * 100));
    assert_eq!(table.rows(), vec![1, 2]);
    assert!(scope.is_empty());
}

#[tokio::test(start_paused = true)]
async fn retry_gives_up_after_its_attempts_and_the_run_fails_as_without_retries() {
    let (log, table) = (Log::default(), Table::default());
    let error = stream::iter((1..=3).map(Ok::<u32, AppError>))
        .for_each_compensated(
            CompensationScope::new(),
            scripted(
                &log,
                &table,
                |_| ms(10),
                |item, _| match item {
                    2 => Err(AppError::Write(2)),
                    _ => Ok(()),
                },
            ),
        )
        .retry(RollbackPolicy::default().attempts(2))
        .await
        .unwrap_err();
    assert_eq!(error.cause(), &Cause::Handler(AppError::Write(2)));
    // Attempt 1 undone by the retry, attempt 2 by the run's rollback; item 3 never pulled.
    assert_eq!(
        log.entries(),
        vec!["write 1#1", "write 2#1", "undo 2", "write 2#2", "undo 2"]
    );
    assert_eq!(error.report().ran(), 1);
    assert_eq!(table.rows(), vec![1]);
}

#[tokio::test(start_paused = true)]
async fn exponential_backoff_between_attempts_doubles_up_to_its_cap() {
    let start = Instant::now();
    let (log, table) = (Log::default(), Table::default());
    let times: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let times2 = times.clone();
    let error = stream::iter(vec![Ok::<u32, AppError>(1)])
        .for_each_compensated(
            CompensationScope::new(),
            scripted(
                &log,
                &table,
                |_| ms(0),
                move |_, _| {
                    times2.lock().unwrap().push(start.elapsed());
                    Err(AppError::Write(1))
                },
            ),
        )
        .retry(
            RollbackPolicy::default()
                .attempts(5)
                .backoff(Backoff::Exponential {
                    initial: ms(100),
                    max: ms(300),
                }),
        )
        .await
        .unwrap_err();
    assert_eq!(error.cause(), &Cause::Handler(AppError::Write(1)));
    assert_eq!(
        *times.lock().unwrap(),
        vec![ms(0), ms(100), ms(300), ms(600), ms(900)]
    );
}

#[tokio::test(start_paused = true)]
async fn cancellation_during_a_backoff_ends_the_run_at_once() {
    let start = Instant::now();
    let (log, table) = (Log::default(), Table::default());
    let token = CancellationToken::new();
    let canceller = token.clone();
    tokio::spawn(async move {
        sleep(secs(5)).await;
        canceller.cancel();
    });
    let error = stream::iter(vec![Ok::<u32, AppError>(1)])
        .for_each_compensated(
            CompensationScope::new(),
            scripted(&log, &table, |_| ms(0), |_, _| Err(AppError::Write(1))),
        )
        .retry(
            RollbackPolicy::default()
                .attempts(3)
                .backoff(Backoff::Fixed(secs(3_600))),
        )
        .with_cancellation(token)
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), secs(5));
    assert!(error.cause().is_cancelled());
    // The failed attempt was undone before the backoff; nothing was left to roll back.
    assert_eq!(log.entries(), vec!["write 1#1", "undo 1"]);
    assert_eq!(error.report().ran(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_past_its_time_limit_is_dropped_undone_and_retried() {
    let start = Instant::now();
    let (log, table) = (Log::default(), Table::default());
    let error = stream::iter(vec![Ok::<u32, AppError>(1)])
        .for_each_compensated(
            CompensationScope::new(),
            scripted(&log, &table, |_| secs(3_600), |_, _| Ok(())),
        )
        .retry(
            RollbackPolicy::default()
                .attempts(2)
                .attempt_timeout(secs(1)),
        )
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), secs(2));
    assert_eq!(error.cause(), &Cause::TimedOut(secs(1)));
    assert_eq!(
        log.entries(),
        vec!["write 1#1", "undo 1", "write 1#2", "undo 1"]
    );
    assert!(table.rows().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_incomplete_undo_of_an_attempt_stops_the_run_instead_of_retrying() {
    let log = Log::default();
    let calls = Arc::new(AtomicU32::new(0));
    let (log2, calls2) = (log.clone(), calls.clone());
    let error = stream::iter(vec![Ok::<u32, AppError>(1)])
        .for_each_compensated(CompensationScope::new(), move |item, scope| {
            calls2.fetch_add(1, Ordering::SeqCst);
            scope.register_labeled("stuck", failing(&log2, "undo", "still there"));
            async move { Err(AppError::Write(item)) }
        })
        .retry(RollbackPolicy::default().attempts(5))
        .await
        .unwrap_err();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "never retried on a half-undone write"
    );
    assert_eq!(error.cause(), &Cause::Handler(AppError::Write(1)));
    assert!(!error.is_rolled_back_cleanly());
    assert_eq!(error.report().ran(), 1);
    assert_eq!(error.report().failures()[0].label(), Some("stuck"));
    assert_eq!(log.entries(), vec!["undo"]);
}

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
        .retry(RollbackPolicy::default().attempts(2))
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
