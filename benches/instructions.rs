//! Instruction counts (Valgrind's callgrind, through gungraun) of every adapter and its
//! peers: deterministic where wall time on a shared machine is not.
//!
//! Run it with `cargo bench --bench instructions` (needs `valgrind` and
//! `cargo install gungraun-runner --version <the gungraun version in Cargo.toml>`).
//! Only the benchmark function is counted: building the runtime and the pre-built batches
//! (the `setup` functions) is not.
//!
//! # What is counted
//!
//! - `ready`: [`READY_ITEMS`] `Ok(u64)` from `futures::stream::iter` on a current_thread
//!   runtime, batched with `max_items` 8 and 500 (timeout 2 s) and drained by one consumer
//!   (each batch's length added up, the batch through `black_box`, dropped). Contenders:
//!   `chunks_timeout_result` count-only, with `.max_weight(..)` (a weigh that reads the value,
//!   a cap that never binds, so the batches are the same), with `.with_batch_info()`;
//!   `futures` `chunks` and `try_chunks`, tokio-stream `chunks_timeout`, futures-batch
//!   `try_chunks_timeout`, and the floors: a synchronous loop pushing into a `Vec`, and the
//!   same loop checking the same weight cap as the `.max_weight(..)` contender.
//! - `keyed`: the same input through `chunks_timeout_by_key_result`, all of one key (caps 8
//!   and 500, to compare with `chunks_timeout_result` in `ready`) and over 1,000 keys taken
//!   round-robin (cap 500), next to a hand-written `HashMap` batcher with one `Sleep` per key
//!   on the same keys.
//! - `map_ok`: [`READY_ITEMS`] values each mapped by an async closure: `map_ok_stream`,
//!   `TryStreamExt::and_then`, and `map_ok` (a synchronous closure) as the floor.
//! - `for_each`: [`FOR_EACH_VALUES`] values pre-built as batches of 8 and 500; the handler
//!   sums its batch: `for_each_compensated` with nothing registered against `try_for_each`;
//!   and with one compensation registered per item (a closure capturing the batch's first
//!   value, committed when the handler returns) against `try_for_each_undo_log`, the same
//!   bookkeeping by hand (the closure boxed onto a `Mutex<Vec<Box<dyn Fn>>>`, truncated after
//!   the item), as in group 4 of `benches/batching.rs`; and, on batches of 8, with up to 8
//!   items in flight (ready handlers): `for_each_compensated(..).concurrency(8)` against
//!   futures' `try_for_each_concurrent(8)`.
//! - `timer`: on a paused clock, [`TIMER_ITEMS`] values 3 ms apart from one `Sleep`-driven
//!   producer, `max_items` 500 and a 10 ms timeout, so every batch (4 values) is closed by its
//!   deadline: `chunks_timeout_result` and tokio-stream's `chunks_timeout`, with
//!   `futures::StreamExt::chunks(4)` on the same producer as the no-timer reference.

use std::hint::black_box;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt, stream};
use futures_batch::TryChunksTimeoutStreamExt;
use gungraun::{library_benchmark, library_benchmark_group, main};
use result_stream::{CompensationScope, ResultStreamExt};
use tokio::runtime::{Builder, Runtime};

#[path = "support/hashmap_sleep_per_key.rs"]
mod baseline;
use baseline::HashMapSleepPerKey;

type E = std::io::Error;

/// Values in the `ready` and `map_ok` groups.
const READY_ITEMS: u64 = 1_000_000;
/// Values in the `for_each` group.
const FOR_EACH_VALUES: u64 = 5_000_000;
const TIMEOUT: Duration = Duration::from_secs(2);

fn runtime(cap: usize) -> (Runtime, usize) {
    let rt = Builder::new_current_thread().enable_time().build().unwrap();
    // One warm-up pass so that the runtime's one-time allocations are not counted.
    rt.block_on(async { drain_results(input().chunks_timeout_result(cap, TIMEOUT)).await });
    (rt, cap)
}

fn input() -> impl Stream<Item = Result<u64, E>> + Unpin {
    stream::iter((0..black_box(READY_ITEMS)).map(Ok::<u64, E>))
}

#[inline]
fn consume<T>(batch: Vec<T>) -> u64 {
    let len = batch.len() as u64;
    drop(black_box(batch));
    len
}

async fn drain_vecs<T, S: Stream<Item = Vec<T>>>(batches: S) -> u64 {
    let mut batches = std::pin::pin!(batches);
    let mut n = 0;
    while let Some(batch) = batches.next().await {
        n += consume(batch);
    }
    n
}

async fn drain_results<T, S: Stream<Item = Result<Vec<T>, E>>>(batches: S) -> u64 {
    let mut batches = std::pin::pin!(batches);
    let mut n = 0;
    while let Some(batch) = batches.next().await {
        n += consume(batch.unwrap());
    }
    n
}

#[library_benchmark(setup = runtime)]
#[benches::cap(8, 500)]
fn chunks_timeout_result((rt, cap): (Runtime, usize)) -> u64 {
    rt.block_on(drain_results(input().chunks_timeout_result(cap, TIMEOUT)))
}

#[library_benchmark(setup = runtime)]
#[benches::cap(8, 500)]
fn chunks_timeout_result_max_weight((rt, cap): (Runtime, usize)) -> u64 {
    rt.block_on(drain_results(
        input()
            .chunks_timeout_result(cap, TIMEOUT)
            .max_weight(usize::MAX / 2, |v: &u64| (*v & 3) as usize),
    ))
}

#[library_benchmark(setup = runtime)]
#[benches::cap(8, 500)]
fn chunks_timeout_result_batch_info((rt, cap): (Runtime, usize)) -> u64 {
    rt.block_on(async {
        let batches = input()
            .chunks_timeout_result(cap, TIMEOUT)
            .with_batch_info();
        let mut batches = std::pin::pin!(batches);
        let mut n = 0;
        while let Some(batch) = batches.next().await {
            let (batch, info) = batch.unwrap();
            black_box(info);
            n += consume(batch);
        }
        n
    })
}

#[library_benchmark(setup = runtime)]
#[benches::cap(8, 500)]
fn futures_chunks((rt, cap): (Runtime, usize)) -> u64 {
    rt.block_on(drain_vecs(input().chunks(cap)))
}

#[library_benchmark(setup = runtime)]
#[benches::cap(8, 500)]
fn futures_try_chunks((rt, cap): (Runtime, usize)) -> u64 {
    rt.block_on(async {
        let batches = input().try_chunks(cap);
        let mut batches = std::pin::pin!(batches);
        let mut n = 0;
        while let Some(batch) = batches.next().await {
            n += consume(batch.unwrap());
        }
        n
    })
}

#[library_benchmark(setup = runtime)]
#[benches::cap(8, 500)]
fn tokio_stream_chunks_timeout((rt, cap): (Runtime, usize)) -> u64 {
    rt.block_on(drain_vecs(tokio_stream::StreamExt::chunks_timeout(
        input(),
        cap,
        TIMEOUT,
    )))
}

#[library_benchmark(setup = runtime)]
#[benches::cap(8, 500)]
fn futures_batch_try_chunks_timeout((rt, cap): (Runtime, usize)) -> u64 {
    rt.block_on(drain_results(input().try_chunks_timeout(cap, TIMEOUT)))
}

#[library_benchmark]
#[benches::cap(8, 500)]
fn sync_vec_loop(cap: usize) -> u64 {
    let mut total = 0;
    let mut batch = Vec::with_capacity(cap);
    for value in (0..black_box(READY_ITEMS)).map(Ok::<u64, E>) {
        batch.push(value.unwrap());
        if batch.len() >= cap {
            total += consume(std::mem::replace(&mut batch, Vec::with_capacity(cap)));
        }
    }
    if !batch.is_empty() {
        total += consume(batch);
    }
    total
}

// The floor with a weight cap: the synchronous loop with the same weigh and cap as
// `chunks_timeout_result_max_weight` (a value that would pass the cap closes the batch
// first; a sum that would overflow is past it).
#[library_benchmark]
#[benches::cap(8, 500)]
fn sync_vec_loop_max_weight(cap: usize) -> u64 {
    let max_weight = usize::MAX / 2;
    let mut total = 0;
    let mut batch = Vec::with_capacity(cap);
    let mut weight = 0usize;
    for value in (0..black_box(READY_ITEMS)).map(Ok::<u64, E>) {
        let value = value.unwrap();
        let w = (value & 3) as usize;
        match weight.checked_add(w) {
            Some(sum) if sum <= max_weight => weight = sum,
            _ => {
                total += consume(std::mem::replace(&mut batch, Vec::with_capacity(cap)));
                weight = w;
            }
        }
        batch.push(value);
        if batch.len() >= cap || weight >= max_weight {
            total += consume(std::mem::replace(&mut batch, Vec::with_capacity(cap)));
            weight = 0;
        }
    }
    if !batch.is_empty() {
        total += consume(batch);
    }
    total
}

library_benchmark_group!(
    name = ready;
    benchmarks =
        chunks_timeout_result,
        chunks_timeout_result_max_weight,
        chunks_timeout_result_batch_info,
        futures_chunks,
        futures_try_chunks,
        tokio_stream_chunks_timeout,
        futures_batch_try_chunks_timeout,
        sync_vec_loop,
        sync_vec_loop_max_weight
);

/// Drains `(key, batch)` pairs from `chunks_timeout_by_key_result`.
async fn drain_keyed<S: Stream<Item = Result<(u64, Vec<u64>), E>>>(batches: S) -> u64 {
    let mut batches = std::pin::pin!(batches);
    let mut n = 0;
    while let Some(batch) = batches.next().await {
        let (key, batch) = batch.unwrap();
        black_box(key);
        n += consume(batch);
    }
    n
}

// `chunks_timeout_by_key_result` with every value of one key, against the
// `chunks_timeout_result` rows of the `ready` group (the same input and caps).
#[library_benchmark(setup = runtime)]
#[benches::cap(8, 500)]
fn chunks_timeout_by_key_result_1_key((rt, cap): (Runtime, usize)) -> u64 {
    rt.block_on(drain_keyed(input().chunks_timeout_by_key_result(
        |_: &u64| 0,
        cap,
        TIMEOUT,
    )))
}

// `chunks_timeout_by_key_result` over 1,000 keys taken round-robin (`v % 1_000`): every
// value is a hash lookup.
#[library_benchmark(setup = runtime)]
#[benches::cap(500)]
fn chunks_timeout_by_key_result_1000_keys((rt, cap): (Runtime, usize)) -> u64 {
    rt.block_on(drain_keyed(input().chunks_timeout_by_key_result(
        |v: &u64| v % 1_000,
        cap,
        TIMEOUT,
    )))
}

// The hand-written `HashMap<u64, Vec<u64>>` batcher with one `Sleep` per key
// (`benches/support/hashmap_sleep_per_key.rs`) on the same 1,000 keys.
#[library_benchmark(setup = runtime)]
#[benches::cap(500)]
fn hashmap_sleep_per_key_1000_keys((rt, cap): (Runtime, usize)) -> u64 {
    rt.block_on(async {
        let batches = HashMapSleepPerKey::new(input(), |v: &u64| v % 1_000, cap, TIMEOUT);
        drain_keyed(batches).await
    })
}

library_benchmark_group!(
    name = keyed;
    benchmarks =
        chunks_timeout_by_key_result_1_key,
        chunks_timeout_by_key_result_1000_keys,
        hashmap_sleep_per_key_1000_keys
);

async fn sum_ok<S: Stream<Item = Result<u64, E>>>(values: S) -> u64 {
    let mut values = std::pin::pin!(values);
    let mut sum = 0_u64;
    while let Some(value) = values.next().await {
        sum = sum.wrapping_add(value.unwrap());
    }
    sum
}

fn plain_runtime() -> Runtime {
    Builder::new_current_thread().enable_time().build().unwrap()
}

#[library_benchmark(setup = plain_runtime)]
#[bench::values()]
fn map_ok_stream(rt: Runtime) -> u64 {
    rt.block_on(sum_ok(
        input().map_ok_stream(|v| async move { Ok::<u64, E>(v * 3) }),
    ))
}

#[library_benchmark(setup = plain_runtime)]
#[bench::values()]
fn and_then(rt: Runtime) -> u64 {
    rt.block_on(sum_ok(
        input().and_then(|v| async move { Ok::<u64, E>(v * 3) }),
    ))
}

#[library_benchmark(setup = plain_runtime)]
#[bench::values()]
fn map_ok(rt: Runtime) -> u64 {
    rt.block_on(sum_ok(input().map_ok(|v| v * 3)))
}

library_benchmark_group!(
    name = map_ok_group;
    benchmarks = map_ok_stream, and_then, map_ok
);

type Batches = std::vec::IntoIter<Result<Vec<u64>, E>>;

/// The runtime and `FOR_EACH_VALUES` values in `Vec` batches of `cap`.
fn batches(cap: usize) -> (Runtime, Batches) {
    let cap = cap as u64;
    let batches = (0..FOR_EACH_VALUES / cap)
        .map(|i| Ok((i * cap..(i + 1) * cap).collect()))
        .collect::<Vec<_>>()
        .into_iter();
    (plain_runtime(), batches)
}

#[inline]
fn work(batch: &[u64]) {
    black_box(black_box(batch).iter().sum::<u64>());
}

#[library_benchmark(setup = batches)]
#[benches::cap(8, 500)]
fn for_each_compensated((rt, input): (Runtime, Batches)) -> u64 {
    let done = rt.block_on(stream::iter(input).for_each_compensated(
        CompensationScope::new(),
        |batch, _scope| async move {
            work(&batch);
            Ok(())
        },
    ));
    done.unwrap().items()
}

#[library_benchmark(setup = batches)]
#[benches::cap(8, 500)]
fn try_for_each((rt, input): (Runtime, Batches)) -> u64 {
    rt.block_on(stream::iter(input).try_for_each(|batch| async move {
        work(&batch);
        Ok(())
    }))
    .unwrap();
    0
}

/// The undo log of `try_for_each_undo_log`: what a user would write by hand.
type UndoLog = std::sync::Mutex<
    Vec<Box<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), E>> + Send + Sync>>,
>;

#[library_benchmark(setup = batches)]
#[benches::cap(8, 500)]
fn for_each_compensated_one_per_item((rt, input): (Runtime, Batches)) -> u64 {
    let done = rt.block_on(stream::iter(input).for_each_compensated(
        CompensationScope::new(),
        |batch, scope| async move {
            let first = batch[0];
            scope.register(move || async move {
                black_box(first);
                Ok::<(), E>(())
            });
            work(&batch);
            Ok(())
        },
    ));
    done.unwrap().items()
}

#[library_benchmark(setup = batches)]
#[benches::cap(8, 500)]
fn try_for_each_undo_log((rt, input): (Runtime, Batches)) -> u64 {
    let log = UndoLog::default();
    let log = &log;
    rt.block_on(stream::iter(input).try_for_each(|batch| async move {
        let first = batch[0];
        let mark = {
            let mut log = log.lock().unwrap();
            log.push(Box::new(move || {
                Box::pin(async move {
                    black_box(first);
                    Ok::<(), E>(())
                })
            }));
            log.len() - 1
        };
        work(&batch);
        log.lock().unwrap().truncate(mark);
        Ok(())
    }))
    .unwrap();
    0
}

#[library_benchmark(setup = batches)]
#[benches::cap(8)]
fn for_each_compensated_concurrency_8((rt, input): (Runtime, Batches)) -> u64 {
    let done = rt.block_on(
        stream::iter(input)
            .for_each_compensated(CompensationScope::new(), |batch, _scope| async move {
                work(&batch);
                Ok(())
            })
            .concurrency(8),
    );
    done.unwrap().items()
}

#[library_benchmark(setup = batches)]
#[benches::cap(8)]
fn try_for_each_concurrent_8((rt, input): (Runtime, Batches)) -> u64 {
    rt.block_on(
        stream::iter(input).try_for_each_concurrent(8, |batch| async move {
            work(&batch);
            Ok(())
        }),
    )
    .unwrap();
    0
}

library_benchmark_group!(
    name = for_each;
    benchmarks =
        for_each_compensated,
        try_for_each,
        for_each_compensated_one_per_item,
        try_for_each_undo_log,
        for_each_compensated_concurrency_8,
        try_for_each_concurrent_8
);

// Timer-bound, on a paused clock: every batch is closed by its deadline, so every batch arms
// a timer (with this crate: creates a `Sleep`, registers and drops it).

/// Values in the `timer` group, one every `TIMER_PERIOD`.
const TIMER_ITEMS: u64 = 20_000;
const TIMER_PERIOD: Duration = Duration::from_millis(3);
const TIMER_TIMEOUT: Duration = Duration::from_millis(10);

/// Yields `0..TIMER_ITEMS` as `Ok`, one every `TIMER_PERIOD` of `tokio::time`, driven by one
/// `Sleep` (boxed once, reset after every value).
struct Ticker {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    next: u64,
}

impl Stream for Ticker {
    type Item = Result<u64, E>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.next == TIMER_ITEMS {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(self.sleep.as_mut().poll(cx));
        let at = self.sleep.deadline() + TIMER_PERIOD;
        self.sleep.as_mut().reset(at);
        self.next += 1;
        std::task::Poll::Ready(Some(Ok(self.next - 1)))
    }
}

fn paused_runtime() -> Runtime {
    let rt = Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    // Warm the timer wheel and the runtime up with the same work.
    rt.block_on(async { drain_results(ticker().chunks_timeout_result(500, TIMER_TIMEOUT)).await });
    rt
}

/// Must be called inside the runtime (it creates a `Sleep`).
fn ticker() -> Ticker {
    Ticker {
        sleep: Box::pin(tokio::time::sleep(TIMER_PERIOD)),
        next: 0,
    }
}

#[library_benchmark(setup = paused_runtime)]
#[bench::deadline_flushes()]
fn timer_chunks_timeout_result(rt: Runtime) -> u64 {
    rt.block_on(async { drain_results(ticker().chunks_timeout_result(500, TIMER_TIMEOUT)).await })
}

#[library_benchmark(setup = paused_runtime)]
#[bench::deadline_flushes()]
fn timer_tokio_stream_chunks_timeout(rt: Runtime) -> u64 {
    rt.block_on(async {
        drain_vecs(tokio_stream::StreamExt::chunks_timeout(
            ticker(),
            500,
            TIMER_TIMEOUT,
        ))
        .await
    })
}

#[library_benchmark(setup = paused_runtime)]
#[bench::same_batches_no_timer()]
fn timer_futures_chunks(rt: Runtime) -> u64 {
    rt.block_on(async { drain_vecs(ticker().chunks(4)).await })
}

library_benchmark_group!(
    name = timer;
    benchmarks =
        timer_chunks_timeout_result,
        timer_tokio_stream_chunks_timeout,
        timer_futures_chunks
);

main!(
    library_benchmark_groups = ready,
    keyed,
    map_ok_group,
    for_each,
    timer
);
