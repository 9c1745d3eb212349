//! `CompensationScope` and `Rollback`: failures that never stop the others, interrupted and
//! concurrent rollbacks of one scope, and the reports and errors that describe them. (The
//! rollback policy, its attempts, backoff and time limits, is in
//! `compensation_rollback_policy.rs`.)
//!
//! # `cargo mutants` over `rollback.rs`, `policy.rs` and `action.rs`
//!
//! A second pass (2026-12-01, cargo-mutants 27.1, in place on 2 shared cores; the commands
//! are in `compensation_edges.rs`) tested the mutants of these files that the first, partial
//! pass had not reached and that are not plainly unviable (generic `Default`s), against
//! `compensation`, `compensation_edges`, `compensation_rollback`, `compensation_load`,
//! `compensation_skip`, `compensation_cancel` and `attack_compensation`:
//! - `action.rs`: 2 of 2 tested, 2 caught (the `Arc` impl is how the scope stores every
//!   compensation, so the attack tests see it).
//! - `policy.rs`: 6 of 12 tested (`Backoff::delay`, the builders `attempts`, `backoff`,
//!   `attempt_timeout`, `concurrency_limit` returning 0 or 1), 6 caught.
//! - `rollback.rs`: 14 of 78 tested: 10 caught, 1 timeout, 3 missed, all 3 now killed (a
//!   rerun: 3 of 3 caught):
//!   - `CompensationFailure`'s `Debug` printing nothing:
//!     `a_failures_debug_shows_its_place_label_attempts_and_how_it_failed`;
//!   - `failure.order += offset` → `-=` / `*=` in `RollbackReport::after` (the numbering of
//!     the run's rollback after an attempt's own, incomplete, undo):
//!     `an_incomplete_attempt_undo_and_the_runs_rollback_report_as_one_in_the_order_they_ran`
//!     in `compensation_load.rs`.
//!   - The timeout is a real hang, so caught: `Running::done` replaced by `()` leaves every
//!     compensation that succeeded "interrupted", so it is put back in the scope, and the
//!     rollback's loop takes it again, forever.
//!
//! A third pass (2026-12-01, same command, see `compensation_edges.rs`) ran the rest that is
//! not plainly unviable:
//! - `rollback.rs`: 53 tested: 48 caught, 1 unviable (`&&` → `||` in the `while .. && let`
//!   chain), 3 timeouts, 1 missed. The timeouts are real hangs, so caught: the match guard
//!   `attempt >= max_attempts()` → `false`, `>=` → `<`, and `attempt += 1` → `*=` retry a
//!   compensation that always fails for ever. The missed one is the first pass's
//!   equivalent, `concurrency_limit() > 1` → `>= 1` in `run` (see `compensation_edges.rs`).
//!   Not run: 11 plainly unviable (`Rollback`, `FailureKind` and `CompensationFailure` have
//!   no `Default`; `Poll::new(..)`, `from_iter`, a `dyn Compensation` or `dyn Error` by
//!   `Default`).
//! - `policy.rs`: the other 6 (`concurrent` by `Default`, `max_attempts` 0 or 1,
//!   `backoff_strategy` by `Default`, `attempt_time_limit` `None` or `Some(0)`): 6 caught.
//!
//! Counts (tested / caught / unviable / missed / timeout; a timeout is a real hang, so
//! caught; "missed, now" is what is left after the tests named above):
//!
//! ```text
//! file         mutants  before: tested caught unv missed t/o   after: tested caught unv missed t/o  missed, now  not tested
//! rollback.rs       78           14    10     0    3     1          67     58    1     4     4    1 (equiv.)  11
//! policy.rs         12            6     6     0    0     0          12     12    0     0     0    0            0
//! action.rs          2            2     2     0    0     0           2      2    0     0     0    0            0
//! ```

mod common;
mod compensation_common;

use std::error::Error as _;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{ms, secs};
use compensation_common::*;
use futures::FutureExt;
use futures::future::FusedFuture;
use futures::stream::{self};
use result_stream::{
    Cause, CompensatedError, CompensationScope, FailureKind, ResultStreamExt, RetryPolicy,
};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

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
        .rollback_policy(RetryPolicy::default().attempts(2))
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
    let interrupted = tokio::time::timeout(secs(1), scope.rollback(RetryPolicy::default())).await;
    assert!(interrupted.is_err());
    assert_eq!(
        scope.len(),
        2,
        "the interrupted one and the one below it remain"
    );
    let report = scope.rollback(RetryPolicy::default()).await;
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
    let report = clone.rollback(RetryPolicy::default()).await;
    assert_eq!(report.ran(), 3);
    assert!(report.is_complete());
    assert_eq!(log.entries(), vec!["3", "2", "1"]);
    assert!(scope.is_empty());

    scope.register(undo(&log, "never"));
    scope.register(undo(&log, "never"));
    assert_eq!(clone.commit(), 2);
    assert!(scope.is_empty());
    assert_eq!(scope.rollback(RetryPolicy::default()).await.ran(), 0);
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
    // Display names the cause with its error and the rollback; the error being in the text,
    // `source` is the error's own source (none here), so an error-chain printer shows it once.
    let text = error.to_string();
    assert!(
        text.starts_with("stopped by a handler error: write failed;"),
        "{text}"
    );
    assert!(text.contains("rolled back cleanly"), "{text}");
    assert_eq!(error.cause().to_string(), "handler error: write failed");
    assert!(error.source().is_none());
    let io = error.cause().error().expect("the user's error");
    assert_eq!(io.to_string(), "write failed");
    // It travels as a boxed, thread-safe error.
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(error);
    assert!(boxed.to_string().contains("write failed"));

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
    assert!(upstream.to_string().contains("upstream: gone"));
    assert_eq!(upstream.cause().error(), Some(&AppError::Upstream("gone")));

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
    let report = scope.rollback(RetryPolicy::default()).await;
    let text = report.to_string();
    assert!(text.contains("rollback incomplete"), "{text}");
    assert!(
        text.contains("flush") && text.contains("still dirty"),
        "{text}"
    );
    assert!(report.failures()[0].to_string().contains("1 attempt"));
}

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

    let report = scope.rollback(RetryPolicy::default().attempts(2)).await;

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

    let report = scope.rollback(RetryPolicy::default()).await;
    let failure = &report.failures()[0];
    assert!(
        matches!(failure.kind(), FailureKind::Error(e) if e.to_string() == "database down"),
        "{:?}",
        failure.kind()
    );
    failure.retry().await.expect("the second run succeeds");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Or put it back in a scope to run under a policy later.
    let again = CompensationScope::new();
    again.register(failure.action().clone());
    assert_eq!(again.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failures_debug_shows_its_place_label_attempts_and_how_it_failed() {
    let log = Log::default();
    let scope = CompensationScope::new();
    scope.register_labeled("drop staging", failing(&log, "drop", "table locked"));
    scope.register(undo(&log, "newer"));
    let report = scope.rollback(RetryPolicy::default().attempts(2)).await;
    let debug = format!("{:?}", report.failures()[0]);
    for part in [
        "CompensationFailure",
        "order: 1",
        "label: Some(\"drop staging\")",
        "attempts: 2",
        "table locked",
    ] {
        assert!(debug.contains(part), "{part} missing from {debug}");
    }
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
        scope.rollback(RetryPolicy::default()),
        scope.rollback(RetryPolicy::default())
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

#[tokio::test(start_paused = true)]
async fn rollback_is_a_fused_future_that_panics_when_polled_after_it_resolved() {
    let log = Log::default();
    let scope = CompensationScope::new();
    scope.register(undo(&log, "undo"));
    let mut rollback = scope.rollback(RetryPolicy::default());
    assert!(!rollback.is_terminated());
    let report = (&mut rollback).await;
    assert_eq!(report.ran(), 1);
    assert!(rollback.is_terminated());
    let again = AssertUnwindSafe(&mut rollback).catch_unwind().await;
    let panic = again.expect_err("polled after it resolved");
    assert_eq!(
        panic.downcast_ref::<String>().map(String::as_str),
        Some("Rollback polled after it resolved")
    );
}

#[tokio::test(start_paused = true)]
async fn a_report_hands_over_its_failures_in_the_order_they_ran() {
    let log = Log::default();
    let scope = CompensationScope::new();
    scope.register_labeled("old", failing(&log, "old", "old broke"));
    scope.register(undo(&log, "mid"));
    scope.register_labeled("new", failing(&log, "new", "new broke"));
    let report = scope.rollback(RetryPolicy::default()).await;
    assert_eq!(report.ran(), 3);
    let failures = report.into_failures();
    let described: Vec<_> = failures
        .iter()
        .map(|failure| (failure.order(), failure.label().unwrap().to_owned()))
        .collect();
    assert_eq!(
        described,
        vec![(0, "new".to_owned()), (2, "old".to_owned())]
    );
    // Each can be registered again.
    let again = CompensationScope::new();
    for failure in &failures {
        again.register(failure.action().clone());
    }
    assert_eq!(again.len(), 2);
}
