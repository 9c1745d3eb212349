//! `for_each_compensated` under load: `.concurrency(n)` and
//! `.retry(policy)`, with cancellation and all-or-nothing (skipping is in
//! `compensation_skip.rs`). Every timing rule on a paused clock.

mod common;
mod compensation_common;

use std::pin::pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ms, secs};
use compensation_common::*;
use futures::channel::mpsc;
use futures::stream;
use result_stream::{Backoff, Cause, CompensationScope, ResultStreamExt, RetryPolicy};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

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
            RetryPolicy::default()
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
        .retry(RetryPolicy::default().attempts(2))
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
            RetryPolicy::default()
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
            RetryPolicy::default()
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
        .retry(RetryPolicy::default().attempts(2).attempt_timeout(secs(1)))
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
        .retry(RetryPolicy::default().attempts(5))
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

#[tokio::test(start_paused = true)]
async fn a_retry_policy_of_one_attempt_fails_the_item_as_without_retries() {
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
        .retry(RetryPolicy::default())
        .await
        .unwrap_err();
    assert_eq!(error.cause(), &Cause::Handler(AppError::Write(2)));
    // No second attempt: item 2 is undone by the run's rollback, item 3 never pulled.
    assert_eq!(log.entries(), vec!["write 1#1", "write 2#1", "undo 2"]);
    assert_eq!(error.report().ran(), 1);
    assert_eq!(table.rows(), vec![1]);
}

#[tokio::test(start_paused = true)]
async fn retry_releases_its_copy_of_an_item_once_the_item_succeeded() {
    let (tx, rx) = mpsc::unbounded::<Result<Arc<Vec<u32>>, AppError>>();
    let batch = Arc::new(vec![1, 2, 3]);
    tx.unbounded_send(Ok(batch.clone())).unwrap();
    let mut run = pin!(
        rx.for_each_compensated(CompensationScope::new(), |_batch, _scope| async { Ok(()) })
            .retry(RetryPolicy::default().attempts(3))
    );
    // The batch is written; the run waits for the next one.
    assert!(futures::poll!(run.as_mut()).is_pending());
    assert_eq!(
        Arc::strong_count(&batch),
        1,
        "the run still holds its retry copy of a batch that succeeded"
    );
    drop(tx);
    assert_eq!(run.await.unwrap().items(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_incomplete_attempt_undo_and_the_runs_rollback_report_as_one_in_the_order_they_ran() {
    let log = Log::default();
    let log2 = log.clone();
    let error = stream::iter((1..=2).map(Ok::<u32, AppError>))
        .for_each_compensated(CompensationScope::new(), move |item, scope| {
            let name = format!("undo {item}");
            scope.register_labeled(name.clone(), failing(&log2, name, "row locked"));
            async move {
                match item {
                    2 => Err(AppError::Write(2)),
                    _ => Ok(()),
                }
            }
        })
        .all_or_nothing()
        .retry(RetryPolicy::default().attempts(2))
        .await
        .unwrap_err();
    assert_eq!(error.cause(), &Cause::Handler(AppError::Write(2)));
    // Item 2's failed attempt is undone first (incompletely: no retry), then the run's
    // rollback undoes item 1: one report, numbered across both.
    assert_eq!(log.entries(), vec!["undo 2", "undo 1"]);
    let report = error.report();
    assert_eq!(report.ran(), 2);
    let failed: Vec<_> = report
        .failures()
        .iter()
        .map(|failure| (failure.order(), failure.label().unwrap().to_owned()))
        .collect();
    assert_eq!(
        failed,
        vec![(0, "undo 2".to_owned()), (1, "undo 1".to_owned())]
    );
}

/// A stream of `0..n` that panics if polled again after it ended.
struct EndsOnce {
    next: u32,
    n: u32,
    ended: bool,
}

impl futures::Stream for EndsOnce {
    type Item = Result<u32, AppError>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        assert!(!self.ended, "upstream polled after it ended");
        if self.next == self.n {
            self.ended = true;
            return std::task::Poll::Ready(None);
        }
        self.next += 1;
        std::task::Poll::Ready(Some(Ok(self.next)))
    }
}

#[tokio::test(start_paused = true)]
async fn the_upstream_is_not_polled_after_it_ended_whichever_path_handled_the_last_item() {
    for (concurrency, fails_last) in [(1, false), (1, true), (3, false), (3, true)] {
        let (log, table) = (Log::default(), Table::default());
        let done = EndsOnce {
            next: 0,
            n: 3,
            ended: false,
        }
        .for_each_compensated(
            CompensationScope::new(),
            scripted(
                &log,
                &table,
                |_| ms(1),
                move |item, attempt| match (item, attempt) {
                    (3, 1) if fails_last => Err(AppError::Write(3)),
                    _ => Ok(()),
                },
            ),
        )
        .concurrency(concurrency)
        .retry(RetryPolicy::default().attempts(2))
        .await
        .unwrap();
        assert_eq!(done.items(), 3);
    }
}
