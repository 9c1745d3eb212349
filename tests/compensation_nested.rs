//! Nested scopes: a child's compensations are committed, rolled back or absorbed into its
//! parent in their order; per-item units and all-or-nothing are two uses of it. And the
//! opt-in that hands upstream errors to a callback.

mod compensation_common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use compensation_common::{AppError, Log, Table, undo};
use futures::stream;
use result_stream::{Cause, CompensationScope, ItemScope, ResultStreamExt, RetryPolicy};
use tokio::time::sleep;

fn policy() -> RetryPolicy {
    RetryPolicy::default()
}

#[tokio::test]
async fn a_childs_commit_and_rollback_touch_only_its_own() {
    let log = Log::default();
    let scope = CompensationScope::new();
    scope.register(undo(&log, "parent"));
    let kept = scope.child();
    kept.register(undo(&log, "kept"));
    let undone = scope.child();
    undone.register(undo(&log, "undone 1"));
    undone.register(undo(&log, "undone 2"));
    assert_eq!(undone.rollback(policy()).await.ran(), 2);
    assert_eq!(log.entries(), vec!["undone 2", "undone 1"]);
    assert_eq!(kept.commit(), 1);
    assert_eq!(scope.len(), 1);
    assert_eq!(scope.rollback(policy()).await.ran(), 1);
    assert_eq!(log.entries(), vec!["undone 2", "undone 1", "parent"]);
}

#[tokio::test]
async fn an_absorbed_child_joins_its_parent_in_registration_order() {
    let log = Log::default();
    let scope = CompensationScope::new();
    scope.register(undo(&log, "a"));
    let child = scope.child();
    child.register(undo(&log, "b"));
    let grandchild = child.child();
    grandchild.register(undo(&log, "c"));
    grandchild.absorb();
    child.register(undo(&log, "d"));
    // Dropping a child absorbs it, as `absorb` does.
    drop(child);
    scope.register(undo(&log, "e"));
    assert_eq!(scope.rollback(policy()).await.ran(), 5);
    assert_eq!(log.entries(), vec!["e", "d", "c", "b", "a"]);
}

#[tokio::test]
async fn an_open_child_of_the_scope_is_out_of_reach_of_the_scopes_own_handles() {
    let log = Log::default();
    let scope = CompensationScope::new();
    let child = scope.child();
    child.register(undo(&log, "child"));
    assert_eq!(scope.commit(), 0, "the open child's undo is its own");
    assert_eq!(scope.rollback(policy()).await.ran(), 0);
    child.absorb();
    assert_eq!(scope.rollback(policy()).await.ran(), 1);
    assert_eq!(log.entries(), vec!["child"]);
}

#[tokio::test(start_paused = true)]
async fn a_child_rollback_dropped_midway_gives_what_it_did_not_run_to_the_parent() {
    let log = Log::default();
    let scope = CompensationScope::new();
    let child = scope.child();
    child.register(undo(&log, "first"));
    let slow_log = log.clone();
    child.register(move || {
        let log = slow_log.clone();
        async move {
            sleep(Duration::from_secs(10)).await;
            log.push("slow");
            Ok::<(), std::io::Error>(())
        }
    });
    let rollback = child.rollback(policy());
    assert!(
        tokio::time::timeout(Duration::from_secs(1), rollback)
            .await
            .is_err()
    );
    assert_eq!(scope.len(), 2, "both are back in the scope");
    let report = scope.rollback(policy()).await;
    assert_eq!(report.ran(), 2);
    assert_eq!(log.entries(), vec!["slow", "first"]);
}

#[tokio::test(start_paused = true)]
async fn an_items_child_is_a_step_undone_on_its_own() {
    let (log, table) = (Log::default(), Table::default());
    let (log2, table2) = (log.clone(), table.clone());
    let scope = CompensationScope::new();
    let done = stream::iter([1u32, 2].map(Ok::<u32, AppError>))
        .for_each_compensated(scope.clone(), move |item, scope: ItemScope| {
            let (log, table) = (log2.clone(), table2.clone());
            async move {
                scope.register(table.delete(&log, item));
                table.insert(item);
                let step = scope.child();
                step.register(table.delete(&log, item * 10));
                table.insert(item * 10);
                if item == 2 {
                    assert_eq!(step.rollback(policy()).await.ran(), 1);
                } else {
                    step.absorb();
                }
                Ok(())
            }
        })
        .concurrency(2)
        .await
        .unwrap();
    assert_eq!(done.items(), 2);
    assert_eq!(log.entries(), vec!["undo 20"]);
    assert_eq!(table.rows(), vec![1, 2, 10]);
    assert!(scope.is_empty(), "absorbed into item 1, committed with it");
}

#[tokio::test(start_paused = true)]
async fn all_or_nothing_absorbs_each_item_into_the_run_so_a_late_failure_undoes_all() {
    for concurrency in [1, 3] {
        let (log, table) = (Log::default(), Table::default());
        let (log2, table2) = (log.clone(), table.clone());
        let error = stream::iter((1..=3u32).map(Ok::<u32, AppError>))
            .for_each_compensated(CompensationScope::new(), move |item, scope| {
                let (log, table) = (log2.clone(), table2.clone());
                async move {
                    scope.register(table.delete(&log, item));
                    table.insert(item);
                    sleep(Duration::from_millis(u64::from(item))).await;
                    // An item's own commit cannot reach what earlier items handed the run.
                    assert_eq!(scope.commit(), 1);
                    scope.register(table.delete(&log, item));
                    if item == 3 {
                        return Err(AppError::Write(3));
                    }
                    Ok(())
                }
            })
            .all_or_nothing()
            .concurrency(concurrency)
            .await
            .unwrap_err();
        assert_eq!(error.report().ran(), 3);
        assert_eq!(log.entries(), vec!["undo 3", "undo 2", "undo 1"]);
        assert!(table.rows().is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn a_clone_of_an_items_handle_kept_past_its_item_registers_into_the_run() {
    let log = Log::default();
    let kept: Arc<Mutex<Option<ItemScope>>> = Arc::default();
    let kept2 = kept.clone();
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<u32, AppError>>();
    let run = rx.for_each_compensated(CompensationScope::new(), move |item, scope| {
        let kept = kept2.clone();
        async move {
            if item == 1 {
                *kept.lock().unwrap() = Some(scope);
                return Ok(());
            }
            Err(AppError::Write(item))
        }
    });
    let log2 = log.clone();
    let feeder = tokio::spawn(async move {
        tx.unbounded_send(Ok(1)).unwrap();
        sleep(Duration::from_millis(5)).await;
        let late = kept.lock().unwrap().take().unwrap();
        late.register(undo(&log2, "registered late"));
        tx.unbounded_send(Ok(2)).unwrap();
    });
    let error = run.await.unwrap_err();
    feeder.await.unwrap();
    assert!(matches!(error.cause(), Cause::Handler(AppError::Write(2))));
    assert_eq!(log.entries(), vec!["registered late"]);
}

#[tokio::test(start_paused = true)]
async fn skip_upstream_errors_hands_each_error_over_in_order_and_goes_on() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let table = Table::default();
    let table2 = table.clone();
    let done = stream::iter(vec![
        Ok(1),
        Err(AppError::Upstream("bad json")),
        Ok(2),
        Err(AppError::Upstream("truncated")),
        Ok(3),
    ])
    .for_each_compensated(CompensationScope::new(), move |item, _scope| {
        let table = table2.clone();
        async move {
            table.insert(item);
            Ok(())
        }
    })
    .skip_upstream_errors(move |error| seen2.lock().unwrap().push(error))
    .concurrency(2)
    .await
    .unwrap();
    assert_eq!((done.items(), done.upstream_errors()), (3, 2));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            AppError::Upstream("bad json"),
            AppError::Upstream("truncated")
        ]
    );
    assert_eq!(table.rows(), vec![1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn skip_upstream_errors_keeps_an_all_or_nothing_run_whole_and_handler_errors_still_stop() {
    let (log, table) = (Log::default(), Table::default());
    let (log2, table2) = (log.clone(), table.clone());
    let error = stream::iter(vec![
        Ok(1),
        Err(AppError::Upstream("bad json")),
        Ok(2),
        Ok(3),
    ])
    .for_each_compensated(CompensationScope::new(), move |item, scope| {
        let (log, table) = (log2.clone(), table2.clone());
        async move {
            scope.register(table.delete(&log, item));
            table.insert(item);
            if item == 3 {
                return Err(AppError::Write(3));
            }
            Ok(())
        }
    })
    .all_or_nothing()
    .skip_upstream_errors(|_| {})
    .await
    .unwrap_err();
    assert!(matches!(error.cause(), Cause::Handler(AppError::Write(3))));
    assert_eq!(log.entries(), vec!["undo 3", "undo 2", "undo 1"]);
    assert!(table.rows().is_empty());
}
