//! An independent attack on the compensation engine, continued: panics, caller locations
//! of bad input, what an item's handle acts on after the item ended, nested scopes, the
//! rollback policy's concurrency. Every test here passes: each states a rule the engine
//! keeps.

mod compensation_common;

use std::panic::{AssertUnwindSafe, Location};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use compensation_common::{AppError, Log, failing, lock, undo};
use futures::stream;
use result_stream::{
    Cause, CompensationScope, FailureKind, ItemScope, ResultStreamExt, RetryPolicy,
};
use tokio::time::sleep;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
/// The location of the panic `f` raises.
fn panic_location(f: impl FnOnce()) -> (u32, String) {
    let seen: Arc<Mutex<Option<(u32, String)>>> = Arc::default();
    let (s2, me) = (seen.clone(), std::thread::current().id());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // Other tests may panic on their own threads meanwhile.
        if std::thread::current().id() == me {
            let location = info.location().unwrap();
            *lock(&s2) = Some((location.line(), location.file().to_owned()));
        }
    }));
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    assert!(outcome.is_err(), "no panic");
    lock(&seen).clone().unwrap()
}

#[test]
fn bad_configuration_panics_at_the_callers_line() {
    let this = file!().to_owned();
    let run = || {
        stream::iter(vec![Ok::<u32, AppError>(1)])
            .for_each_compensated(CompensationScope::new(), |_, _| async { Ok(()) })
    };
    let line = Location::caller().line();
    let (at, file) = panic_location(|| drop(run().concurrency(0)));
    assert_eq!((at, file), (line + 1, this.clone()));
    let line = Location::caller().line();
    let (at, file) = panic_location(|| drop(run().all_or_nothing().skip_failed_items(|_, _| {})));
    assert_eq!((at, file), (line + 1, this.clone()));
    let line = Location::caller().line();
    let (at, file) = panic_location(|| drop(run().skip_failed_items(|_, _| {}).all_or_nothing()));
    assert_eq!((at, file), (line + 1, this.clone()));
    let line = Location::caller().line();
    let (at, file) = panic_location(|| {
        let _ = RetryPolicy::default().attempts(0);
    });
    assert_eq!((at, file), (line + 2, this.clone()));
    let line = Location::caller().line();
    let (at, file) = panic_location(|| {
        let _ = RetryPolicy::default().concurrent(0);
    });
    assert_eq!((at, file), (line + 2, this));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_compensation_in_an_items_undo_stops_the_run_and_is_reported() {
    for concurrency in [1, 3] {
        let log = Log::default();
        let l2 = log.clone();
        let error = stream::iter((0..3u32).map(Ok::<u32, AppError>))
            .for_each_compensated(CompensationScope::new(), move |item, scope| {
                let log = l2.clone();
                async move {
                    scope.register(undo(&log, format!("undo {item}")));
                    if item == 1 {
                        scope.register(|| async {
                            panic!("undo exploded");
                            #[allow(unreachable_code)]
                            Ok::<(), std::io::Error>(())
                        });
                        return Err(AppError::Write(item));
                    }
                    sleep(ms(5)).await;
                    Ok(())
                }
            })
            .concurrency(concurrency)
            .retry(RetryPolicy::default().attempts(3))
            .await
            .unwrap_err();
        assert_eq!(error.cause(), &Cause::Handler(AppError::Write(1)));
        let failures = error.report().failures();
        assert_eq!(failures.len(), 1, "concurrency {concurrency}");
        assert!(matches!(failures[0].kind(), FailureKind::Panicked(m) if m == "undo exploded"));
        // The panicking compensation did not stop the one below it; no retry was made.
        assert_eq!(log.entries().iter().filter(|e| *e == "undo 1").count(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_leaves_the_runs_compensations_to_the_scope() {
    for concurrency in [1, 3] {
        let (scope, log) = (CompensationScope::new(), Log::default());
        let l2 = log.clone();
        let run = stream::iter((0..4u32).map(Ok::<u32, AppError>))
            .for_each_compensated(scope.clone(), move |item, scope| {
                let log = l2.clone();
                async move {
                    scope.register(undo(&log, format!("undo {item}")));
                    sleep(ms(u64::from(item))).await;
                    assert_ne!(item, 2, "handler bug");
                    Ok(())
                }
            })
            .concurrency(concurrency);
        let panicked = tokio::spawn(run).await.unwrap_err();
        assert!(panicked.is_panic());
        let report = scope.rollback(RetryPolicy::default()).await;
        let expected: &[&str] = if concurrency == 1 {
            &["undo 2"]
        } else {
            &["undo 3", "undo 2"]
        };
        assert_eq!(log.entries(), expected, "concurrency {concurrency}");
        assert_eq!(report.ran(), expected.len());
    }
}

#[tokio::test(start_paused = true)]
async fn registrations_through_an_items_handle_after_it_ended_belong_to_the_run() {
    // With several items in flight each item has an id of its own: a late registration of
    // item 0 is neither committed by item 1's success nor lost.
    let log = Log::default();
    let leaked: Arc<Mutex<Option<ItemScope>>> = Arc::default();
    let (l2, leaked2) = (log.clone(), leaked.clone());
    let error = stream::iter((0..3u32).map(Ok::<u32, AppError>))
        .for_each_compensated(CompensationScope::new(), move |item, scope| {
            let (log, leaked) = (l2.clone(), leaked2.clone());
            async move {
                sleep(ms(u64::from(item) * 10)).await;
                match item {
                    0 => *lock(&leaked) = Some(scope),
                    1 => {
                        let late = lock(&leaked).clone().unwrap();
                        late.register(undo(&log, "late of 0"));
                        assert_eq!(late.commit(), 1, "its own, only");
                        late.register(undo(&log, "late of 0, kept"));
                        scope.register(undo(&log, "undo 1"));
                    }
                    _ => return Err(AppError::Write(item)),
                }
                Ok(())
            }
        })
        .concurrency(2)
        .await
        .unwrap_err();
    assert!(error.is_rolled_back_cleanly());
    assert_eq!(log.entries(), vec!["late of 0, kept"]);
}

#[tokio::test]
async fn nested_children_absorb_in_registration_order_and_roll_back_newest_first() {
    let (scope, log) = (CompensationScope::new(), Log::default());
    scope.register(undo(&log, "p0"));
    let child = scope.child();
    child.register(undo(&log, "c0"));
    scope.register(undo(&log, "p1"));
    let grandchild = child.child();
    grandchild.register(undo(&log, "g0"));
    child.register(undo(&log, "c1"));
    grandchild.register(undo(&log, "g1"));
    // Out of reach of the scope's own rollback while open.
    assert_eq!(scope.rollback(RetryPolicy::default()).await.ran(), 2);
    assert_eq!(log.entries(), vec!["p1", "p0"]);
    scope.register(undo(&log, "p2"));
    grandchild.absorb();
    let step = child.child();
    step.register(undo(&log, "s0"));
    assert_eq!(step.commit(), 1);
    child.absorb();
    let report = scope.rollback(RetryPolicy::default()).await;
    assert_eq!(report.ran(), 5);
    assert_eq!(&log.entries()[2..], ["p2", "g1", "c1", "g0", "c0"]);
}

#[tokio::test(start_paused = true)]
async fn an_items_child_rolled_back_in_the_handler_runs_only_its_own() {
    for concurrency in [1, 2] {
        let log = Log::default();
        let l2 = log.clone();
        let done = stream::iter((0..4u32).map(Ok::<u32, AppError>))
            .for_each_compensated(CompensationScope::new(), move |item, scope| {
                let log = l2.clone();
                async move {
                    scope.register(undo(&log, format!("item {item}")));
                    let step = scope.child();
                    step.register(undo(&log, format!("step {item}")));
                    sleep(ms(u64::from(4 - item))).await;
                    let report = step.rollback(RetryPolicy::default()).await;
                    assert_eq!(report.ran(), 1);
                    Ok(())
                }
            })
            .concurrency(concurrency)
            .await
            .unwrap();
        assert_eq!(done.items(), 4);
        let mut entries = log.entries();
        entries.sort();
        assert_eq!(entries, ["step 0", "step 1", "step 2", "step 3"]);
    }
}

#[tokio::test(start_paused = true)]
async fn a_concurrent_rollback_policy_reports_failures_in_start_order() {
    let (scope, log) = (CompensationScope::new(), Log::default());
    for n in 0..6 {
        if n % 2 == 0 {
            scope.register_labeled(format!("f{n}"), failing(&log, format!("f{n}"), "no"));
        } else {
            scope.register(undo(&log, format!("u{n}")));
        }
    }
    let report = scope.rollback(RetryPolicy::default().concurrent(4)).await;
    assert_eq!(report.ran(), 6);
    let labels: Vec<_> = report
        .failures()
        .iter()
        .map(|f| f.label().unwrap())
        .collect();
    assert_eq!(labels, ["f4", "f2", "f0"]);
    let orders: Vec<_> = report.failures().iter().map(|f| f.order()).collect();
    assert_eq!(orders, [1, 3, 5]);
    assert!(scope.is_empty());
}

#[tokio::test]
async fn a_large_concurrency_limit_with_few_items_works() {
    let done = stream::iter((0..3u32).map(Ok::<u32, AppError>))
        .for_each_compensated(CompensationScope::new(), |_, _| async { Ok(()) })
        .concurrency(100_000)
        .await
        .unwrap();
    assert_eq!(done.items(), 3);
}
