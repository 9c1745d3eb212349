//! `for_each_compensated` under load: latency-bound handlers in flight at once.
//!
//! Run it with `cargo bench --bench for_each`.
//!
//! # What is measured
//!
//! `latency_bound`: 2,000 items, each handled by a 1 ms `tokio::time::sleep` on the real
//! clock (a current_thread runtime with the time driver), standing in for a write to a
//! database or an API. One measurement is one pass over the 2,000 items. Contenders:
//! - `concurrency_8`: `for_each_compensated(..).concurrency(8)`;
//! - `try_for_each_concurrent_8`: `futures::TryStreamExt::try_for_each_concurrent(8, ..)`,
//!   the reference (no compensation at all);
//! - `concurrency_1`: `for_each_compensated` one item at a time (the default), which the
//!   first should beat about 8 times over.
//!
//! Each handler registers one compensation (committed when it returns `Ok`), except in
//! `try_for_each_concurrent_8`, which has no scope. Tokio's timer has a 1 ms resolution, so a
//! "1 ms" sleep lasts 1 to 2 ms: the ratio between contenders is what matters, measured in
//! the same process, one after the other.

use std::hint::black_box;
use std::io;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::TryStreamExt;
use futures::stream;
use result_stream::{CompensationScope, ResultStreamExt};
use tokio::runtime::Runtime;

const ITEMS: u64 = 2_000;
const WRITE: Duration = Duration::from_millis(1);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

async fn compensated(concurrency: usize) -> u64 {
    let done = stream::iter((0..ITEMS).map(Ok::<u64, io::Error>))
        .for_each_compensated(CompensationScope::new(), |item, scope| async move {
            scope.register(move || async move {
                black_box(item);
                Ok::<(), io::Error>(())
            });
            tokio::time::sleep(WRITE).await;
            Ok(())
        })
        .concurrency(concurrency)
        .await
        .expect("every write succeeds");
    done.items()
}

async fn try_for_each_concurrent(concurrency: usize) -> u64 {
    stream::iter((0..ITEMS).map(Ok::<u64, io::Error>))
        .try_for_each_concurrent(concurrency, |item| async move {
            black_box(item);
            tokio::time::sleep(WRITE).await;
            Ok(())
        })
        .await
        .expect("every write succeeds");
    ITEMS
}

fn latency_bound(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("latency_bound");
    group.throughput(Throughput::Elements(ITEMS));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(6));
    group.bench_function("concurrency_8", |b| {
        b.iter(|| assert_eq!(rt.block_on(compensated(8)), ITEMS));
    });
    group.bench_function("try_for_each_concurrent_8", |b| {
        b.iter(|| assert_eq!(rt.block_on(try_for_each_concurrent(8)), ITEMS));
    });
    group.measurement_time(Duration::from_secs(45));
    group.bench_function("concurrency_1", |b| {
        b.iter(|| assert_eq!(rt.block_on(compensated(1)), ITEMS));
    });
    group.finish();
}

criterion_group!(benches, latency_bound);
criterion_main!(benches);
