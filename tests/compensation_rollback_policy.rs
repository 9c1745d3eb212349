//! `RetryPolicy` in a rollback: the number of attempts, fixed and exponential backoff, the
//! time limit of an attempt, and rollbacks that run several compensations at once (newest
//! first, every failure reported, unfinished ones left in the scope when dropped).

mod common;
mod compensation_common;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ms, secs};
use compensation_common::*;
use futures::stream::{self};
use result_stream::{
    Backoff, Compensation, CompensationScope, FailureKind, ResultStreamExt, RetryPolicy,
};
use tokio::time::{Instant, sleep};

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
            RetryPolicy::default()
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
            RetryPolicy::default()
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
async fn default_policy_runs_each_compensation_exactly_once() {
    let policy = RetryPolicy::default();
    assert_eq!(policy.max_attempts(), 1);
    assert_eq!(policy.backoff_strategy(), Backoff::None);
    assert_eq!(policy.attempt_time_limit(), None);
    assert_eq!(RetryPolicy::new(), policy);

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
    let _ = RetryPolicy::default().attempts(0);
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
        .rollback(RetryPolicy::default().attempts(2).attempt_timeout(secs(1)))
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
        .rollback(RetryPolicy::default().attempt_timeout(secs(1)))
        .await;
    assert!(report.is_complete());
    assert_eq!(start.elapsed(), ms(999));
    assert_eq!(log.entries(), vec!["slow but in time"]);
}

#[tokio::test(start_paused = true)]
async fn a_concurrent_rollback_starts_newest_first_overlaps_and_reports_every_failure() {
    let start = Instant::now();
    let log = Log::default();
    let scope = CompensationScope::new();
    for (name, fails) in [("a", true), ("b", false), ("c", true), ("d", false)] {
        let log = log.clone();
        scope.register_labeled(name, move || {
            let log = log.clone();
            async move {
                log.push(format!("{name} start"));
                sleep(secs(1)).await;
                if fails {
                    return Err(io::Error::other(format!("{name} failed")));
                }
                Ok(())
            }
        });
    }
    let report = scope.rollback(RetryPolicy::default().concurrent(2)).await;
    // Two at a time: d and c, then b and a.
    assert_eq!(start.elapsed(), secs(2));
    assert_eq!(
        log.entries(),
        vec!["d start", "c start", "b start", "a start"]
    );
    assert_eq!(report.ran(), 4);
    let failed: Vec<_> = report
        .failures()
        .iter()
        .map(|failure| (failure.order(), failure.label().unwrap().to_owned()))
        .collect();
    assert_eq!(failed, vec![(1, "c".to_owned()), (3, "a".to_owned())]);
    assert!(scope.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_concurrent_rollback_leaves_every_unfinished_compensation() {
    let log = Log::default();
    let scope = CompensationScope::new();
    for name in ["old", "mid", "new"] {
        let log = log.clone();
        scope.register(move || {
            let log = log.clone();
            async move {
                log.push(name);
                sleep(secs(10)).await;
                Ok::<(), io::Error>(())
            }
        });
    }
    let rollback = scope.rollback(RetryPolicy::default().concurrent(2));
    assert!(tokio::time::timeout(secs(1), rollback).await.is_err());
    assert_eq!(log.entries(), vec!["new", "mid"]);
    // Both running ones were put back: the owner may commit all three.
    assert_eq!(scope.commit(), 3);
}

#[test]
#[should_panic(expected = "RetryPolicy::concurrent: `n` must be at least 1")]
fn a_concurrency_of_zero_panics() {
    let _ = RetryPolicy::default().concurrent(0);
}
