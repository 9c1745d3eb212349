//! The compensation contract at its edges: what a run owns, compensations that
//! panic before returning a future, commits racing a rollback, and the scope's own handle
//! next to a live run. (Cancellation noticed while a handler is pending is in
//! `compensation_cancel_while_handler_pending.rs`, the error texts in
//! `compensation_error_chain.rs`.)
//!
//! Each test here failed against the code before the fix that keeps the rule it states, or
//! kills a one-line mutation that the rest of the suite let through (the survivors of
//! `cargo mutants` below).
//!
//! # `cargo mutants` over `src/compensation`
//!
//! `cargo mutants --file src/compensation/scope.rs -j 1 --test-package result-stream --
//! --test compensation --test compensation_edges --test compensation_rollback
//! --test compensation_stress --test compensation_load --test compensation_load_properties
//! --test send_sync` (2026-12-01): 78 mutants, 62 caught, 11 unviable, 5 missed. Of the 5:
//! - `is_empty -> true` and `LiveRun`'s `Debug` returning nothing (which was a real bug:
//!   it printed nothing) are now killed (`commit_during_a_rollback_...`, and
//!   `construction_needs_no_runtime` in `compensation.rs`);
//! - `<` → `<=` in `commit_since`'s scan is killed by
//!   `an_item_that_registered_nothing_never_commits_another_runs_registration`;
//! - equivalent, left alone: `<` → `==` in the same scan (the `seq < mark` check after the
//!   scan still stops it; only how far the scan looks changes), and `+` → `*` in
//!   `at + 1 == stack.len()` (`remove` instead of `pop` on the last index: the same).
//!
//! The same command over `rollback.rs`, `policy.rs`, `action.rs` and `for_each/` (251
//! mutants) was stopped at the deadline after 105: 71 caught, 10 timed out (an infinite
//! loop or a hang is caught too), 14 unviable, 10 missed. `policy.rs`, `action.rs`,
//! `config.rs`, `error.rs`, `item.rs`, `plain.rs` and most of `rollback.rs` were not
//! reached. Its survivors: `concurrency_limit() > 1` → `>= 1` in `rollback.rs`
//! (equivalent: a limit of 1 then takes the concurrent path, one at a time, the same
//! order and report; only the allocation-free sequential loop is skipped), `busy += 1` → `-=`
//! / `*=` (the count only ever mattered as zero or not: now a flag), the upstream polled
//! after it ended on the way back to the plain path (killed by
//! `the_upstream_is_not_polled_after_it_ended_...` in `compensation_load.rs`), and `delete !`
//! in `simple = single && .. && !rules.skip` (equivalent: a run without retry or skip then
//! takes `plain.rs`'s path, which treats it the same; but not for a run that skips: see the
//! third pass below), and `limit > 1` → `>= 1` where an
//! item takes a handle of its own (equivalent: at concurrency 1 the general path is only
//! taken with a time limit, and an item's own handle commits and undoes the same entries).
//! `slot_busy -> false` and `||` → `&&` in it (the token check before resuming pending
//! handlers on the slots' path) are killed by `a_pending_handler_is_not_resumed_...` (in
//! `compensation_cancel_while_handler_pending.rs`), now run on all three paths;
//! `slot_busy -> true` is equivalent (with no item in flight the
//! token is checked before the next pull anyway; it only differs when the token fires in
//! the very poll that would resolve `Ok`, where both outcomes are allowed).
//!
//! A second pass over the files the first one had not reached (2026-12-01, `-p
//! result-stream`, 7 test targets, 60 s timeout, `--in-place --baseline skip`, with
//! `CARGO_PROFILE_DEV_DEBUG=0` to make each build cheaper; the time allowed ~75 mutants, so
//! it took the ones not plainly unviable: about 30 s to a minute each at a load of 15):
//!
//! ```text
//! cargo mutants -p result-stream --in-place --timeout 60 --build-timeout 900 \
//!   --baseline skip -f src/compensation/policy.rs -f src/compensation/rollback.rs \
//!   -f src/compensation/for_each/config.rs -f src/compensation/for_each/error.rs \
//!   -f src/compensation/for_each/item.rs -f src/compensation/for_each/plain.rs \
//!   -F <lines chosen per file> -E 'Poll::new\(\)|from_iter|Vec::leak\(vec|...' \
//!   -- --test compensation --test compensation_edges --test compensation_rollback \
//!   --test compensation_load --test compensation_skip --test compensation_cancel \
//!   --test attack_compensation
//! ```
//!
//! (`rollback.rs`, `policy.rs`, `action.rs`: see `compensation_rollback.rs`.) In
//! `for_each/`:
//! - `config.rs`: 2 of 21 tested (`Completion::skipped` returning 0 or 1), 2 caught;
//! - `error.rs`: 2 of 25 tested (`is_rolled_back_cleanly` returning `true` or `false`),
//!   2 caught;
//! - `item.rs`: 16 of 49 tested: 13 caught (`arm` replaced by `()` in the rerun), 1 timeout,
//!   2 missed, both now killed (a rerun: caught): `drop_item` replaced by `()` (the run
//!   held its retry copy of an item that succeeded until the next item came) by
//!   `retry_releases_its_copy_of_an_item_once_the_item_succeeded` in `compensation_load.rs`,
//!   and `mark -> 0` (an item's commit took everything its handle held, not only what was
//!   registered since it started) by
//!   `an_item_commits_only_what_was_registered_since_it_started` below. The timeout is a
//!   real hang, so caught: `kept && retries left` → `||` in `poll_step` retries an item
//!   that always fails forever (with retries on, the item is always kept);
//! - `plain.rs`: 11 of 15 tested, in the rerun with the tests above (no count before them):
//!   10 caught (`max_attempts() > 1` → `>=` / `==`, a one-attempt retry handed to the
//!   retry machinery, also by `a_retry_policy_of_one_attempt_fails_the_item_as_without_retries`
//!   in `compensation_load.rs`, checked by hand), 1 missed, equivalent: the match guard `Some(keep) if KEEP` replaced by
//!   `if true`. `plain::poll::<false, ..>` is only called when the run keeps no item
//!   (`keep` is `None`, so that arm never matches), and in `plain::poll::<true, ..>` the
//!   guard is `true` already.
//!
//! A third pass (2026-12-01, the same command and flags, one file per run, on a copy of the
//! tree; `-F` the mutants not run before, leaving out the plainly unviable ones: generic
//! `Default`s, `Pin::new()`, `Poll::new(..)`, `from_iter`, `Cause::new(..)`, `Step::..`, a
//! builder returning `Self` by `Default`) ran the rest, `for_each/mod.rs` first:
//! - `mod.rs`: 50 tested: 34 caught, 13 timeouts, 3 missed. The timeouts are real hangs,
//!   so caught (in `attack_compensation`, `compensation_load`, `compensation_cancel`; a
//!   test there runs in well under a second on the paused clock): `single`'s `&&` → `||`
//!   and `==` → `!=` (a run at concurrency 2 or 3 without a time limit goes one item at a
//!   time, and waits for ever on an item that never finishes where the upstream's error
//!   should stop it), `!finishing.is_empty()` without `!` (a stop with no undo in progress
//!   returns `Pending` with no waker: every failed run hangs), `single && !is_busy()`
//!   without `!` and `&&` → `||` twice in `single && free.is_some() && !upstream_done`
//!   (the "back to the plain path" `continue` loops for ever), `!item.is_busy()` without
//!   `!` (the busy slots are never polled), `slots < limit` → `==` / `>` (no slot is ever
//!   added: concurrency lost), `!pending && !again` without the second `!` (a run whose
//!   items are all done never resolves), `1 + extra.len()` → `-` / `*` in the stop's loop
//!   (a slot's undo is never taken, or an overflow), `is_cancelled -> false` (a
//!   cancellation while the upstream is pending is never noticed). The 3 missed: `limit > 1`
//!   → `>= 1` and `slot_busy -> true` are the first pass's equivalents above; `delete !` in
//!   `simple = single && .. && !rules.skip` was *not* equivalent, the first pass's reason
//!   only covers a run without skip: a run that skips, one item at a time, with no retry,
//!   then took the path that knows no skip, and its first failed item stopped the run. Only
//!   the doctest of `skip_failed_items` ran that shape; killed by
//!   `a_failed_item_is_skipped_one_at_a_time_without_retry` in `compensation_skip.rs`.
//!   Not run: the 8 plainly unviable ones (`slot`'s and `poll`'s `Pin`/`Poll`
//!   constructions).
//! - `error.rs`: 8 tested (`Cause::error`/`into_error -> None`, `is_cancelled` true/false,
//!   both `Display`s, `report` by `Default`, `CompensatedError::source -> None`), 8 caught.
//!   Not run: 15 plainly unviable (`Cause` has no `new`, `from_iter` or `Default`; `E` no
//!   `Default`).
//! - `config.rs`: 5 tested (`Completion::items` and `items_processed` returning 0 or 1,
//!   `scope` by a new scope), 5 caught. Not run: 14 plainly unviable (builders returning
//!   `Self` by `Default`, `get_ref`, `get_mut`, `get_pin_mut`, `into_inner` over a generic
//!   `St`).
//! - `item.rs`: 15 tested: 14 caught, 1 timeout, a real hang, so caught: `*this.attempt +=
//!   1` → `*=` leaves the attempt at 1, so an item that always fails is retried for ever.
//!   Not run: 18 plainly unviable (`Step`/`Poll` constructions, a generic `T`, `Rollback`
//!   has no `Default`).
//! - `plain.rs`: not run (time): `poll -> Default::default()`, `items += 1` → `-=` / `*=`
//!   (line 48) and `delete !` on line 58.
//!
//! Counts over the three passes (tested / caught / unviable / missed / timeout; a timeout
//! is a real hang, so caught; "missed, now" counts what is left after the tests named
//! above; not tested = plainly unviable or not reached):
//!
//! ```text
//! file        mutants  before: tested caught unv missed t/o   after: tested caught unv missed t/o  missed, now  not tested
//! mod.rs           58            0     0     0    0     0          50     34    0     3    13    2 (equiv.)   8
//! config.rs        21            2     2     0    0     0           7      7    0     0     0    0           14
//! error.rs         25            2     2     0    0     0          10     10    0     0     0    0           15
//! item.rs          49           16    13     0    2     1          31     28    0     2     2    0           18
//! plain.rs         15           11    10     0    1     0          11     10    0     1     0    1 (equiv.)   4
//! ```
//!
//! ("before" is the second pass; the first pass's 105, over files since changed, are in its
//! paragraph above.)

mod common;
mod compensation_common;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use common::{ms, secs};
use compensation_common::*;
use futures::channel::mpsc;
use futures::stream;
use result_stream::{
    BoxError, Cause, Compensation, CompensationScope, FailureKind, ResultStreamExt, RetryPolicy,
    UnitOfWork,
};
use tokio::time::sleep;

// ---------------------------------------------------------------------------------------
// A successful run commits everything it owns
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_successful_run_commits_what_its_handle_registered_before_the_first_poll() {
    for unit in [UnitOfWork::Item, UnitOfWork::Run] {
        let log = Log::default();
        let scope = CompensationScope::new();
        let log2 = log.clone();
        let run = stream::iter((1..=3).map(Ok::<u32, AppError>))
            .for_each_compensated(scope.clone(), move |item, scope| {
                scope.register(undo(&log2, format!("undo {item}")));
                async { Ok(()) }
            })
            .unit_of_work(unit);
        run.scope().register(undo(&log, "set up by the caller"));
        assert_eq!(scope.len(), 1);

        let done = run.await.expect("every item succeeds");

        assert_eq!(done.items(), 3);
        assert!(
            scope.is_empty(),
            "{unit:?}: the run left {} behind",
            scope.len()
        );
        let report = scope.rollback(RetryPolicy::default()).await;
        assert_eq!(
            report.ran(),
            0,
            "{unit:?}: a later rollback undid a successful run"
        );
        assert!(log.entries().is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn a_successful_run_commits_what_its_handle_registered_between_items() {
    for unit in [UnitOfWork::Item, UnitOfWork::Run] {
        let log = Log::default();
        let scope = CompensationScope::new();
        let (tx, rx) = mpsc::unbounded::<Result<u32, AppError>>();
        let log2 = log.clone();
        let run = rx
            .for_each_compensated(scope.clone(), move |item, scope| {
                scope.register(undo(&log2, format!("undo {item}")));
                async { Ok(()) }
            })
            .unit_of_work(unit);
        let handle = run.scope().clone();
        let log3 = log.clone();
        tokio::spawn(async move {
            tx.unbounded_send(Ok(1)).unwrap();
            sleep(ms(10)).await; // item 1 is done, the run waits for item 2
            handle.register(undo(&log3, "between items"));
            sleep(ms(10)).await;
            tx.unbounded_send(Ok(2)).unwrap();
        });

        let done = run.await.expect("every item succeeds");

        assert_eq!(done.items(), 2);
        assert!(
            scope.is_empty(),
            "{unit:?}: the run left {} behind",
            scope.len()
        );
        assert_eq!(scope.rollback(RetryPolicy::default()).await.ran(), 0);
        assert!(log.entries().is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_run_undoes_what_its_handle_registered_before_the_first_poll() {
    let log = Log::default();
    let scope = CompensationScope::new();
    let log2 = log.clone();
    let run = stream::iter((1..=2).map(Ok::<u32, AppError>)).for_each_compensated(
        scope.clone(),
        move |item, scope| {
            scope.register(undo(&log2, format!("undo {item}")));
            async move {
                if item == 2 {
                    return Err(AppError::Write(item));
                }
                Ok(())
            }
        },
    );
    run.scope().register(undo(&log, "set up by the caller"));
    let error = run.await.unwrap_err();
    // Item 1 was committed; item 2 and the run's own set-up are undone, newest first.
    assert_eq!(error.report().ran(), 2);
    assert_eq!(log.entries(), vec!["undo 2", "set up by the caller"]);
    assert!(scope.is_empty());
}

// ---------------------------------------------------------------------------------------
// A compensation that panics before returning its future
// ---------------------------------------------------------------------------------------

/// A hand-written `Compensation` (no `async_trait`) whose `compensate` panics before it
/// returns a future.
struct PanicsBeforeItsFuture;

impl Compensation for PanicsBeforeItsFuture {
    fn compensate<'life0, 'async_trait>(
        &'life0 self,
    ) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        panic!("no future for you")
    }
}

#[tokio::test(start_paused = true)]
async fn a_compensation_that_panics_before_returning_its_future_does_not_stop_the_rollback() {
    let log = Log::default();
    let scope = CompensationScope::new();
    scope.register(undo(&log, "oldest"));
    scope.register_labeled("eager bomb", PanicsBeforeItsFuture);
    scope.register(undo(&log, "newest"));

    let report = scope.rollback(RetryPolicy::default().attempts(2)).await;

    assert_eq!(log.entries(), vec!["newest", "oldest"]);
    assert_eq!(report.ran(), 3);
    let [failure] = report.failures() else {
        panic!("one failure expected: {report}");
    };
    assert_eq!(failure.label(), Some("eager bomb"));
    assert_eq!(failure.attempts(), 2);
    assert!(
        matches!(failure.kind(), FailureKind::Panicked(m) if m == "no future for you"),
        "{:?}",
        failure.kind()
    );
    assert!(scope.is_empty());
}

// ---------------------------------------------------------------------------------------
// commit() racing a running rollback
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn commit_during_a_rollback_takes_only_what_the_rollback_has_not_started() {
    let log = Log::default();
    let scope = CompensationScope::new();
    scope.register(undo(&log, "bottom"));
    let log2 = log.clone();
    scope.register(move || {
        let log = log2.clone();
        async move {
            log.push("slow started");
            sleep(ms(100)).await;
            log.push("slow finished");
            Ok::<(), io::Error>(())
        }
    });
    scope.register(undo(&log, "top"));

    assert!(!scope.is_empty());
    let rollback = tokio::spawn(scope.rollback(RetryPolicy::default()));
    sleep(ms(10)).await; // "top" ran, "slow" is running
    assert_eq!(log.entries(), vec!["top", "slow started"]);

    // "slow" is being undone: committing it would count an effect as kept that the
    // rollback is removing. Only "bottom" is committed.
    assert_eq!(scope.commit(), 1);
    assert_eq!(scope.len(), 1, "the running one leaves when it finishes");

    let report = rollback.await.unwrap();
    assert_eq!(report.ran(), 2);
    assert!(report.is_complete());
    assert_eq!(log.entries(), vec!["top", "slow started", "slow finished"]);
    assert!(scope.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_rollback_leaves_its_compensation_committable_again() {
    let log = Log::default();
    let scope = CompensationScope::new();
    let log2 = log.clone();
    scope.register(move || {
        let log = log2.clone();
        async move {
            log.push("slow started");
            sleep(secs(10)).await;
            Ok::<(), io::Error>(())
        }
    });
    let interrupted = tokio::time::timeout(secs(1), scope.rollback(RetryPolicy::default())).await;
    assert!(interrupted.is_err());
    // No rollback is running it any more: the owner may keep the effect.
    assert_eq!(scope.commit(), 1);
    assert!(scope.is_empty());
    assert_eq!(log.entries(), vec!["slow started"]);
}

// ---------------------------------------------------------------------------------------
// The scope's own handle next to a live run
// ---------------------------------------------------------------------------------------

/// A one-item run on `scope` whose handler registers the row's delete, writes the row,
/// waits 100 ms and fails.
fn a_run_that_fails_after_a_partial_write(
    scope: &CompensationScope,
    table: &Table,
    log: &Log,
) -> impl Future<Output = Result<result_stream::Completion, result_stream::CompensatedError<AppError>>>
+ Send
+ 'static {
    let (table, log) = (table.clone(), log.clone());
    stream::iter(vec![Ok::<u32, AppError>(7)]).for_each_compensated(
        scope.clone(),
        move |row, scope| {
            scope.register(table.delete(&log, row));
            table.insert(row); // the partial write
            async move {
                sleep(ms(100)).await;
                Err(AppError::Write(row))
            }
        },
    )
}

#[tokio::test(start_paused = true)]
async fn the_owner_commit_does_not_strip_a_live_runs_undo() {
    let (log, table) = (Log::default(), Table::default());
    let scope = CompensationScope::new();
    let run = tokio::spawn(a_run_that_fails_after_a_partial_write(&scope, &table, &log));
    sleep(ms(10)).await; // the row is written, the handler is still running
    assert_eq!(table.rows(), vec![7]);

    assert_eq!(scope.commit(), 0, "the live run's undo is its own");

    let error = run.await.unwrap().unwrap_err();
    assert_eq!(error.report().ran(), 1);
    assert!(error.is_rolled_back_cleanly());
    assert!(table.rows().is_empty(), "the partial write was left behind");
    assert_eq!(log.entries(), vec!["undo 7"]);
}

#[tokio::test(start_paused = true)]
async fn the_owner_rollback_leaves_a_live_runs_work_to_the_run() {
    let (log, table) = (Log::default(), Table::default());
    let scope = CompensationScope::new();
    scope.register(undo(&log, "owner's"));
    let run = tokio::spawn(a_run_that_fails_after_a_partial_write(&scope, &table, &log));
    sleep(ms(10)).await;

    let report = scope.rollback(RetryPolicy::default()).await;
    assert_eq!(report.ran(), 1, "only the owner's own compensation");
    assert_eq!(log.entries(), vec!["owner's"]);
    assert_eq!(
        table.rows(),
        vec![7],
        "the running handler's write is not undone under it"
    );

    let error = run.await.unwrap().unwrap_err();
    assert_eq!(error.report().ran(), 1);
    assert!(table.rows().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_runs_compensations_are_the_owners_to_commit() {
    let (log, table) = (Log::default(), Table::default());
    let scope = CompensationScope::new();
    let run = a_run_that_fails_after_a_partial_write(&scope, &table, &log);
    assert!(tokio::time::timeout(ms(10), run).await.is_err());
    // The run is gone: what it left is the scope's.
    assert_eq!(scope.commit(), 1);
    assert!(scope.is_empty());
    assert_eq!(table.rows(), vec![7], "committed: the effect is kept");
}

// ---------------------------------------------------------------------------------------
// Surviving mutants of `cargo mutants` (see the module documentation)
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_item_that_registered_nothing_never_commits_another_runs_registration() {
    let log = Log::default();
    let scope = CompensationScope::new();
    // A's item starts first (its mark is the next registration number), registers nothing
    // and succeeds at 100 ms; meanwhile B registers (taking exactly that number) and fails
    // at 200 ms.
    let a = stream::iter(vec![Ok::<u32, AppError>(1)]).for_each_compensated(
        scope.clone(),
        |_, _| async {
            sleep(ms(100)).await;
            Ok(())
        },
    );
    let log2 = log.clone();
    let b = stream::iter(vec![Ok::<u32, AppError>(2)]).for_each_compensated(
        scope.clone(),
        move |item, scope| {
            scope.register(undo(&log2, "b"));
            async move {
                sleep(ms(200)).await;
                Err(AppError::Write(item))
            }
        },
    );
    let (a, b) = tokio::join!(a, b);
    assert_eq!(a.unwrap().items(), 1);
    assert_eq!(b.unwrap_err().report().ran(), 1, "A's commit took B's undo");
    assert_eq!(log.entries(), vec!["b"]);
}

#[tokio::test(start_paused = true)]
async fn an_item_commits_only_what_was_registered_since_it_started() {
    for retry in [false, true] {
        let log = Log::default();
        let (tx, rx) = mpsc::unbounded::<Result<u32, AppError>>();
        let kept: Arc<Mutex<Option<result_stream::ItemScope>>> = Arc::default();
        let kept2 = kept.clone();
        let mut run = rx.for_each_compensated(CompensationScope::new(), move |item, scope| {
            if item == 1 {
                *lock(&kept2) = Some(scope);
            }
            async move {
                match item {
                    3 => Err(AppError::Write(3)),
                    _ => Ok(()),
                }
            }
        });
        if retry {
            // One attempt: the run takes the path that keeps a copy of each item.
            run = run.retry(RetryPolicy::default());
        }
        let log2 = log.clone();
        tokio::spawn(async move {
            tx.unbounded_send(Ok(1)).unwrap();
            sleep(ms(10)).await; // item 1 is committed; the run waits for item 2
            let handle = lock(&kept).take().expect("item 1 ran");
            handle.register(undo(&log2, "registered between items"));
            tx.unbounded_send(Ok(2)).unwrap();
            sleep(ms(10)).await;
            tx.unbounded_send(Ok(3)).unwrap();
        });

        let error = run.await.unwrap_err();

        assert_eq!(error.cause(), &Cause::Handler(AppError::Write(3)));
        // Item 2 registered nothing: its commit took nothing, and the run's rollback undid
        // what was registered before item 2 started.
        assert_eq!(error.report().ran(), 1, "retry: {retry}");
        assert_eq!(log.entries(), vec!["registered between items"]);
    }
}
