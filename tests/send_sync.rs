//! Auto traits: the handles and errors cross threads, and the whole pipeline (map, batch,
//! persist) is a `Send` future that runs on a multi-thread runtime.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use result_stream::batch::{MaxWeight, NoWeight, WithInfo};
use result_stream::{
    Backoff, BatchInfo, Cause, ChunksTimeoutResult, CompensatedError, CompensationFailure,
    CompensationScope, Completion, FailureKind, FlushReason, ForEachCompensated, MapOkStream,
    RetryPolicy, Rollback, RollbackReport, UnitOfWork,
};
use result_stream::{BoxError, ChildScope, ItemScope, ResultStreamExt};

fn assert_send<T: Send>() {}
fn assert_sync<T: Sync>() {}
fn assert_clone<T: Clone>() {}
fn assert_static<T: 'static>() {}
fn assert_send_val<T: Send>(value: T) -> T {
    value
}

#[test]
fn handles_reports_and_errors_are_thread_safe() {
    assert_send::<CompensationScope>();
    assert_sync::<CompensationScope>();
    assert_clone::<CompensationScope>();
    assert_send::<ItemScope>();
    assert_sync::<ItemScope>();
    assert_clone::<ItemScope>();
    assert_send::<ChildScope>();
    assert_sync::<ChildScope>();

    assert_send::<Rollback>();
    assert_sync::<Rollback>();

    assert_send::<RollbackReport>();
    assert_sync::<RollbackReport>();
    assert_send::<CompensationFailure>();
    assert_sync::<CompensationFailure>();
    assert_send::<FailureKind>();
    assert_sync::<FailureKind>();

    assert_send::<CompensatedError<io::Error>>();
    assert_sync::<CompensatedError<io::Error>>();
    assert_static::<CompensatedError<io::Error>>();
    assert_send::<Cause<io::Error>>();
    assert_sync::<Cause<io::Error>>();

    assert_send::<RetryPolicy>();
    assert_sync::<RetryPolicy>();
    assert_send::<Backoff>();
    assert_send::<UnitOfWork>();
    assert_send::<Completion>();
    assert_send::<FlushReason>();
    assert_send::<BatchInfo>();
    assert_sync::<BatchInfo>();
    assert_send::<BoxError>();
    assert_sync::<BoxError>();
}

#[test]
fn compensated_error_converts_into_a_boxed_thread_safe_error() {
    fn into_box(
        error: CompensatedError<io::Error>,
    ) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        error.into()
    }
    let _ = into_box;
}

type Events = BoxStream<'static, Result<u32, io::Error>>;

#[test]
fn adapters_are_send_and_sync_when_their_parts_are() {
    assert_send::<ChunksTimeoutResult<Events>>();
    assert_send::<ChunksTimeoutResult<stream::Iter<std::vec::IntoIter<Result<u32, io::Error>>>>>();
    assert_sync::<ChunksTimeoutResult<stream::Iter<std::vec::IntoIter<Result<u32, io::Error>>>>>();
    // With a weight cap and batch info (the type-state parameters of `result_stream::batch`).
    type Iter = stream::Iter<std::vec::IntoIter<Result<u32, io::Error>>>;
    type Weighed = ChunksTimeoutResult<Iter, MaxWeight<fn(&u32) -> usize>, WithInfo>;
    assert_send::<Weighed>();
    assert_sync::<Weighed>();
    assert_send::<ChunksTimeoutResult<Events, NoWeight, WithInfo>>();
    // A weight cap known at run time (`.max_weight_opt`), and the per-key batcher.
    type Optional = ChunksTimeoutResult<Iter, Option<MaxWeight<fn(&u32) -> usize>>, WithInfo>;
    assert_send::<Optional>();
    assert_sync::<Optional>();
    type Keyed = result_stream::ChunksTimeoutByKeyResult<
        Iter,
        u32,
        fn(&u32) -> u32,
        Option<MaxWeight<fn(&u32) -> usize>>,
        WithInfo,
    >;
    assert_send::<Keyed>();
    assert_sync::<Keyed>();
    assert_send::<
        MapOkStream<
            Events,
            futures::future::Ready<Result<u64, io::Error>>,
            fn(u32) -> futures::future::Ready<Result<u64, io::Error>>,
        >,
    >();
    assert_send::<
        ForEachCompensated<
            Events,
            fn(u32, ItemScope) -> futures::future::Ready<Result<(), io::Error>>,
            futures::future::Ready<Result<(), io::Error>>,
        >,
    >();
    // `Sync` as well when its parts are (a `BoxStream` is not `Sync`; an iterator's stream is).
    type Ready = futures::future::Ready<Result<(), io::Error>>;
    assert_sync::<
        ForEachCompensated<
            stream::Iter<std::vec::IntoIter<Result<u32, io::Error>>>,
            fn(u32, ItemScope) -> Ready,
            Ready,
        >,
    >();
}

#[test]
fn the_full_pipeline_future_is_send_and_runs_on_a_multi_thread_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");

    let table: Arc<Mutex<Vec<u64>>> = Arc::default();
    let undone = Arc::new(AtomicUsize::new(0));
    let scope = CompensationScope::new();

    let (table2, undone2, scope2) = (table.clone(), undone.clone(), scope.clone());
    // The handler yields (so the chunker sees `Pending` and arms its deadline) on a real
    // clock: a deadline no test run reaches keeps the batches at 500, 500 and 200 however
    // slow the machine.
    let events = stream::iter((0..1_200u32).map(Ok::<u32, io::Error>)).boxed();
    let pipeline = events
        .map_ok_stream(|e| async move {
            tokio::task::yield_now().await;
            Ok(u64::from(e) * 2)
        })
        .chunks_timeout_result(500, Duration::from_secs(3600))
        .for_each_compensated(scope2, move |batch: Vec<u64>, scope| {
            let (table, undone) = (table2.clone(), undone2.clone());
            async move {
                let ids = batch.clone();
                let (undo_table, undo_count) = (table.clone(), undone.clone());
                scope.register(move || {
                    let (table, ids, count) = (undo_table.clone(), ids.clone(), undo_count.clone());
                    async move {
                        table.lock().unwrap().retain(|row| !ids.contains(row));
                        count.fetch_add(1, Ordering::SeqCst);
                        Ok::<(), io::Error>(())
                    }
                });
                tokio::task::yield_now().await; // held across an await: the handle is Send
                table.lock().unwrap().extend(batch.iter().copied());
                Ok(())
            }
        })
        .rollback_policy(RetryPolicy::default().attempts(2));
    let pipeline = assert_send_val(pipeline);

    let done = runtime
        .block_on(async move { tokio::spawn(pipeline).await })
        .expect("the task did not panic")
        .expect("every batch written");
    assert_eq!(done.items(), 3);
    assert_eq!(table.lock().unwrap().len(), 1_200);
    assert_eq!(undone.load(Ordering::SeqCst), 0);
    assert!(scope.is_empty());
}

#[test]
fn a_failing_pipeline_rolls_back_inside_a_spawned_task() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    let undone = Arc::new(AtomicUsize::new(0));
    let undone2 = undone.clone();
    let pipeline = stream::iter((0..10u32).map(Ok::<u32, io::Error>))
        .map_ok_stream(|e| async move { Ok(e) })
        .chunks_timeout_result(3, Duration::from_secs(2))
        .for_each_compensated(CompensationScope::new(), move |batch, scope| {
            let undone = undone2.clone();
            async move {
                scope.register(move || {
                    let undone = undone.clone();
                    async move {
                        undone.fetch_add(1, Ordering::SeqCst);
                        Ok::<(), io::Error>(())
                    }
                });
                if batch.contains(&7) {
                    return Err(io::Error::other("write failed"));
                }
                Ok(())
            }
        });
    let error = runtime
        .block_on(async move { tokio::spawn(assert_send_val(pipeline)).await })
        .expect("no panic")
        .expect_err("batch [6, 7, 8] fails");
    assert!(matches!(error.cause(), Cause::Handler(e) if e.to_string() == "write failed"));
    assert_eq!(error.report().ran(), 1);
    assert_eq!(undone.load(Ordering::SeqCst), 1);

    // The error itself crosses threads.
    let text = std::thread::spawn(move || error.cause().to_string())
        .join()
        .unwrap();
    assert!(text.contains("write failed"));
}

#[test]
fn a_scope_can_be_rolled_back_from_another_thread() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    let scope = CompensationScope::new();
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let ran = ran.clone();
        let registrar = scope.clone();
        std::thread::spawn(move || {
            registrar.register(move || {
                let ran = ran.clone();
                async move {
                    ran.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), io::Error>(())
                }
            })
        })
        .join()
        .unwrap();
    }
    assert_eq!(scope.len(), 3);
    let rollback = assert_send_val(scope.rollback(RetryPolicy::default()));
    let report = runtime
        .block_on(async move { tokio::spawn(rollback).await })
        .unwrap();
    assert_eq!(report.ran(), 3);
    assert_eq!(ran.load(Ordering::SeqCst), 3);
    assert!(scope.is_empty());
}
