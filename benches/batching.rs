//! The benchmark suite: result-stream's adapters against `futures`, `tokio-stream` and
//! `futures-batch`, each group running its contenders side by side on the same input, in one
//! process.
//!
//! Run it with `cargo bench` (or `cargo bench --bench batching`). Criterion's HTML report,
//! with plots, lands in `target/criterion/report/index.html`. At the end this binary prints
//! the tables of BENCHMARKS.md and writes them to `target/criterion/ratios.md`.
//!
//! # What is measured
//!
//! Every measurement is one pass over the whole input (throughput is in items). Building the
//! input is never timed; where it is pre-built (group 4), freeing its emptied container is
//! not timed either.
//!
//! 1. `1_ready/<cap>`: 5,000,000 `Ok(u64)` from `futures::stream::iter`, `max_items` 500 and
//!    8, timeout 2 s, on a current_thread runtime. Contenders: `chunks_timeout_result`
//!    (count-only; with `.max_weight(..)`, whose weigh reads the value and whose cap never
//!    binds, so the batches are the same; with `.with_batch_info()`),
//!    `futures::StreamExt::chunks`, `futures::TryStreamExt::try_chunks`,
//!    `tokio_stream::StreamExt::chunks_timeout`,
//!    `futures_batch::TryChunksTimeoutStreamExt::try_chunks_timeout`, and the floor: a plain
//!    synchronous loop over the same iterator pushing into a `Vec`. Every batch goes to the
//!    same consumer (its length added up, the batch passed through `black_box`, dropped).
//! 2. `2_channel/<cap>`: 2,000,000 `Ok(u64)` sent through a bounded `tokio::sync::mpsc`
//!    channel (capacity 1,024) by a producer task, batched and consumed by a consumer task,
//!    both spawned on a 2-worker multi-thread runtime. Same contenders; the floor is a
//!    `recv().await` loop pushing into a `Vec`.
//! 3. `3_timer_bound`: on a paused clock (current_thread runtime, `start_paused(true)`),
//!    200,000 `Ok(u64)`, one every 3 ms from a producer stream driven by one
//!    `tokio::time::Sleep` (the same producer for every contender), batched with
//!    `max_items` 500 and a 10 ms timeout: every batch (of 4 values) is closed by its
//!    deadline, so this measures the timer's cost per flush. Contenders:
//!    `chunks_timeout_result`, `tokio_stream::StreamExt::chunks_timeout`, and as the no-timer
//!    reference `futures::StreamExt::chunks(4)` on the same producer (the same batches, cut
//!    by count). `futures-batch` is absent: its timer is `futures-timer`, a wall-clock thread
//!    that a paused Tokio clock does not drive.
//! 4. `4_for_each/<registered>/<cap>`: `for_each_compensated` against
//!    `TryStreamExt::try_for_each` over 1,000,000 values pre-built as `Vec<u64>` batches of
//!    500 and of 8 (2,000 and 125,000 items). **The same work** for every contender and item:
//!    sum the batch's values (the batch through `black_box`, the sum through `black_box`),
//!    then drop the batch (freeing it), as a persistence step that consumes its batch does.
//!    - `none`: nothing registered. `try_for_each_arc_clone` is `try_for_each` plus the
//!      clone and drop of an `Arc` per item: the cost of the handler signature alone (the
//!      handler receives an owned `CompensationScope`, an `Arc` handle).
//!    - `one_per_item`: `for_each_compensated`'s handler also registers one compensation per
//!      item, a real closure capturing the batch's first value
//!      (`scope.register(move || async move { black_box(first); Ok::<(), io::Error>(()) })`),
//!      committed when the handler returns `Ok`. `try_for_each` has no compensations, so it
//!      appears twice: doing the sum only (the reference), and `try_for_each_undo_log`, the
//!      same bookkeeping by hand: the same closure, boxed, pushed onto a
//!      `Mutex<Vec<Box<dyn Fn() -> BoxFuture<..>>>>` and truncated after the item.
//! 5. `5_map_ok`: 5,000,000 `Ok(u64)` from `futures::stream::iter`, each mapped by an async
//!    closure returning `Ok(v * 3)` at once: `map_ok_stream` against
//!    `TryStreamExt::and_then`, with `TryStreamExt::map_ok` (a synchronous closure) as the
//!    floor. The consumer adds the values up.
//!
//! Reference (ratio 1.00) per group: `futures_chunks` in groups 1 to 3, `try_for_each` in
//! group 4, `and_then` in group 5.
//!
//! # Paired ratios
//!
//! Criterion measures one contender after the other, so a compile starting on a shared
//! machine halfway through a group skews the ratio of its medians. For every ratio that a
//! target is about, the binary therefore also measures the two contenders interleaved after
//! criterion is done: 15 rounds of A B B A, each slot at least 40 ms of back-to-back passes,
//! and reports the median of the per-round ratios next to the ratio of criterion's medians.
//! The paired ratios and the tables are produced only when the whole suite ran (no filter).
//!
//! While working on performance, `PAIRED_ONLY=<group prefix> cargo bench --bench batching`
//! skips criterion and measures only the paired ratios of the matching groups (seconds).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt, TryStreamExt, stream};
use futures_batch::TryChunksTimeoutStreamExt;
use result_stream::{BatchInfo, CompensationScope, ResultStreamExt};
use tokio::runtime::{Builder, Runtime};

type E = std::io::Error;

const TIMEOUT: Duration = Duration::from_secs(2);
const READY_ITEMS: u64 = 5_000_000;
const CHANNEL_ITEMS: u64 = 2_000_000;
const CHANNEL_CAPACITY: usize = 1_024;
const TIMER_ITEMS: u64 = 200_000;
const TIMER_PERIOD: Duration = Duration::from_millis(3);
const TIMER_TIMEOUT: Duration = Duration::from_millis(10);
const TIMER_BATCH: usize = 4;
const FOR_EACH_VALUES: u64 = 1_000_000;
const MAP_ITEMS: u64 = 5_000_000;
const CAPS: [usize; 2] = [500, 8];
const PAIRED_ROUNDS: usize = 15;
const PAIRED_SLOT: Duration = Duration::from_millis(40);

// ---------------------------------------------------------------------------------------
// Contenders: one timed pass each.

/// One contender of a group: times one pass over a fresh input (input building untimed).
struct Contender<'a> {
    name: &'static str,
    pass: Box<dyn FnMut() -> Duration + 'a>,
}

fn contender<'a>(name: &'static str, pass: impl FnMut() -> Duration + 'a) -> Contender<'a> {
    Contender {
        name,
        pass: Box::new(pass),
    }
}

/// Times `run` on a fresh input from `setup`. Neither building the input nor dropping what
/// `run` returns is timed.
fn timed<I, R>(setup: impl FnOnce() -> I, run: impl FnOnce(I) -> R) -> Duration {
    let input = setup();
    let start = Instant::now();
    let output = black_box(run(input));
    let elapsed = start.elapsed();
    drop(output);
    elapsed
}

fn current_thread() -> Runtime {
    Builder::new_current_thread().enable_all().build().unwrap()
}

/// What every consumer does with a batch: count it, show it to the optimiser, drop it.
#[inline]
fn consume<T>(batch: Vec<T>) -> u64 {
    let len = batch.len() as u64;
    drop(black_box(batch));
    len
}

/// Drains a stream of `Vec` batches (futures' `chunks`, tokio-stream's `chunks_timeout`).
async fn drain_vecs<T, S: Stream<Item = Vec<T>>>(batches: S) -> u64 {
    let mut batches = std::pin::pin!(batches);
    let mut n = 0;
    while let Some(batch) = batches.next().await {
        n += consume(batch);
    }
    n
}

/// Drains a stream of `Result<Vec, _>` batches (the `try_` contenders).
async fn drain_results<T, Er: std::fmt::Debug, S: Stream<Item = Result<Vec<T>, Er>>>(
    batches: S,
) -> u64 {
    let mut batches = std::pin::pin!(batches);
    let mut n = 0;
    while let Some(batch) = batches.next().await {
        n += consume(batch.unwrap());
    }
    n
}

/// Drains a stream of `Result<(Vec, BatchInfo), _>` batches (`.with_batch_info()`).
async fn drain_with_info<T, S>(batches: S) -> u64
where
    S: Stream<Item = Result<(Vec<T>, BatchInfo), E>>,
{
    let mut batches = std::pin::pin!(batches);
    let mut n = 0;
    while let Some(batch) = batches.next().await {
        let (batch, info) = batch.unwrap();
        black_box(info);
        n += consume(batch);
    }
    n
}

/// The synchronous floor: pushes the values into a `Vec`, `cap` at a time.
#[inline]
fn vec_loop(values: impl Iterator<Item = Result<u64, E>>, cap: usize) -> u64 {
    let mut total = 0;
    let mut batch = Vec::with_capacity(cap);
    for value in values {
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

// ---------------------------------------------------------------------------------------
// 1. Ready stream.

fn ready_input() -> impl Stream<Item = Result<u64, E>> + Unpin + Send {
    stream::iter((0..black_box(READY_ITEMS)).map(Ok::<u64, E>))
}

fn ready_contenders(rt: &Runtime, cap: usize) -> Vec<Contender<'_>> {
    vec![
        contender("chunks_timeout_result", move || {
            timed(ready_input, |input| {
                rt.block_on(drain_results(input.chunks_timeout_result(cap, TIMEOUT)))
            })
        }),
        contender("chunks_timeout_result_max_weight", move || {
            timed(ready_input, |input| {
                rt.block_on(drain_results(
                    input
                        .chunks_timeout_result(cap, TIMEOUT)
                        .max_weight(usize::MAX / 2, |v: &u64| (*v & 3) as usize),
                ))
            })
        }),
        contender("chunks_timeout_result_batch_info", move || {
            timed(ready_input, |input| {
                rt.block_on(drain_with_info(
                    input.chunks_timeout_result(cap, TIMEOUT).with_batch_info(),
                ))
            })
        }),
        contender("futures_chunks", move || {
            timed(ready_input, |input| {
                rt.block_on(drain_vecs(input.chunks(cap)))
            })
        }),
        contender("futures_try_chunks", move || {
            timed(ready_input, |input| {
                rt.block_on(drain_results(input.try_chunks(cap)))
            })
        }),
        contender("tokio_stream_chunks_timeout", move || {
            timed(ready_input, |input| {
                rt.block_on(drain_vecs(tokio_stream::StreamExt::chunks_timeout(
                    input, cap, TIMEOUT,
                )))
            })
        }),
        contender("futures_batch_try_chunks_timeout", move || {
            timed(ready_input, |input| {
                rt.block_on(drain_results(input.try_chunks_timeout(cap, TIMEOUT)))
            })
        }),
        contender("sync_vec_loop", move || {
            timed(
                || (0..black_box(READY_ITEMS)).map(Ok::<u64, E>),
                |values| vec_loop(values, cap),
            )
        }),
    ]
}

// ---------------------------------------------------------------------------------------
// 2. Channel-fed.

type Receiver = tokio::sync::mpsc::Receiver<Result<u64, E>>;

/// Spawns the producer and `consumer(rx)` as two tasks, and waits for both.
fn channel_pass<F, Fut>(rt: &Runtime, consumer: F) -> Duration
where
    F: FnOnce(Receiver) -> Fut,
    Fut: Future<Output = u64> + Send + 'static,
{
    timed(
        || tokio::sync::mpsc::channel(CHANNEL_CAPACITY),
        |(tx, rx)| {
            let consumer = consumer(rx);
            rt.block_on(async move {
                let producer = tokio::spawn(async move {
                    for v in 0..CHANNEL_ITEMS {
                        tx.send(Ok(v)).await.unwrap();
                    }
                });
                let consumer = tokio::spawn(consumer);
                producer.await.unwrap();
                consumer.await.unwrap()
            })
        },
    )
}

fn receiver_stream(rx: Receiver) -> tokio_stream::wrappers::ReceiverStream<Result<u64, E>> {
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn channel_contenders(rt: &Runtime, cap: usize) -> Vec<Contender<'_>> {
    vec![
        contender("chunks_timeout_result", move || {
            channel_pass(rt, |rx| {
                drain_results(receiver_stream(rx).chunks_timeout_result(cap, TIMEOUT))
            })
        }),
        contender("futures_chunks", move || {
            channel_pass(rt, |rx| drain_vecs(receiver_stream(rx).chunks(cap)))
        }),
        contender("futures_try_chunks", move || {
            channel_pass(rt, |rx| drain_results(receiver_stream(rx).try_chunks(cap)))
        }),
        contender("tokio_stream_chunks_timeout", move || {
            channel_pass(rt, |rx| {
                drain_vecs(tokio_stream::StreamExt::chunks_timeout(
                    receiver_stream(rx),
                    cap,
                    TIMEOUT,
                ))
            })
        }),
        contender("futures_batch_try_chunks_timeout", move || {
            channel_pass(rt, |rx| {
                drain_results(receiver_stream(rx).try_chunks_timeout(cap, TIMEOUT))
            })
        }),
        contender("recv_vec_loop", move || {
            channel_pass(rt, |mut rx| async move {
                let mut total = 0;
                let mut batch = Vec::with_capacity(cap);
                while let Some(value) = rx.recv().await {
                    batch.push(value.unwrap());
                    if batch.len() >= cap {
                        total += consume(std::mem::replace(&mut batch, Vec::with_capacity(cap)));
                    }
                }
                if !batch.is_empty() {
                    total += consume(batch);
                }
                total
            })
        }),
    ]
}

// ---------------------------------------------------------------------------------------
// 3. Timer-bound (paused clock).

pin_project_lite::pin_project! {
    /// The producer of group 3: yields `0..n` as `Ok`, one every `period` of `tokio::time`,
    /// driven by one `Sleep` (boxed once, reset after every value).
    struct Ticker {
        sleep: Pin<Box<tokio::time::Sleep>>,
        period: Duration,
        next: u64,
        n: u64,
    }
}

/// Must be called inside the runtime (it creates a `Sleep`).
fn ticker() -> Ticker {
    Ticker {
        sleep: Box::pin(tokio::time::sleep(TIMER_PERIOD)),
        period: TIMER_PERIOD,
        next: 0,
        n: TIMER_ITEMS,
    }
}

impl Stream for Ticker {
    type Item = Result<u64, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.next == *this.n {
            return Poll::Ready(None);
        }
        std::task::ready!(this.sleep.as_mut().poll(cx));
        let at = this.sleep.deadline() + *this.period;
        this.sleep.as_mut().reset(at);
        *this.next += 1;
        Poll::Ready(Some(Ok(*this.next - 1)))
    }
}

fn paused_runtime() -> Runtime {
    Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn timer_contenders(rt: &Runtime) -> Vec<Contender<'_>> {
    vec![
        contender("chunks_timeout_result", move || {
            timed(
                || (),
                |()| {
                    rt.block_on(async {
                        drain_results(ticker().chunks_timeout_result(500, TIMER_TIMEOUT)).await
                    })
                },
            )
        }),
        contender("tokio_stream_chunks_timeout", move || {
            timed(
                || (),
                |()| {
                    rt.block_on(async {
                        drain_vecs(tokio_stream::StreamExt::chunks_timeout(
                            ticker(),
                            500,
                            TIMER_TIMEOUT,
                        ))
                        .await
                    })
                },
            )
        }),
        contender("futures_chunks", move || {
            timed(
                || (),
                |()| rt.block_on(async { drain_vecs(ticker().chunks(TIMER_BATCH)).await }),
            )
        }),
    ]
}

// ---------------------------------------------------------------------------------------
// 4. for_each_compensated against try_for_each.

/// The work done on each item by every contender of group 4 (the batch is then dropped).
#[inline]
fn work(batch: &[u64]) {
    black_box(black_box(batch).iter().sum::<u64>());
}

/// The items of group 4: `FOR_EACH_VALUES` values in `Vec` batches of `cap`. The stream
/// borrows the returned iterator, so freeing its emptied buffer is not timed.
fn batches_input(cap: usize) -> std::vec::IntoIter<Result<Vec<u64>, E>> {
    let cap = cap as u64;
    (0..FOR_EACH_VALUES / cap)
        .map(|i| Ok((i * cap..(i + 1) * cap).collect()))
        .collect::<Vec<_>>()
        .into_iter()
}

type UndoLog = Mutex<Vec<Box<dyn Fn() -> BoxFuture<'static, Result<(), E>> + Send + Sync>>>;

fn for_each_contenders(rt: &Runtime, registered: bool, cap: usize) -> Vec<Contender<'_>> {
    let setup = move || batches_input(cap);
    let try_for_each = contender("try_for_each", move || {
        timed(setup, |mut input| {
            let done = rt.block_on(stream::iter(&mut input).try_for_each(|batch| async move {
                work(&batch);
                Ok(())
            }));
            (done.unwrap(), input)
        })
    });

    if !registered {
        let scope = CompensationScope::new();
        let handle = Arc::new(0_u64);
        return vec![
            contender("for_each_compensated", move || {
                timed(setup, |mut input| {
                    let done = rt.block_on(stream::iter(&mut input).for_each_compensated(
                        scope.clone(),
                        |batch, _scope| async move {
                            work(&batch);
                            Ok(())
                        },
                    ));
                    (done.unwrap().items(), input)
                })
            }),
            contender("try_for_each_arc_clone", move || {
                timed(setup, |mut input| {
                    let handle = &handle;
                    let done = rt.block_on(stream::iter(&mut input).try_for_each(|batch| {
                        let handle = Arc::clone(handle);
                        async move {
                            black_box(&handle);
                            work(&batch);
                            Ok(())
                        }
                    }));
                    (done.unwrap(), input)
                })
            }),
            try_for_each,
        ];
    }

    let scope = CompensationScope::new();
    let log = UndoLog::default();
    vec![
        contender("for_each_compensated", move || {
            timed(setup, |mut input| {
                let done = rt.block_on(stream::iter(&mut input).for_each_compensated(
                    scope.clone(),
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
                (done.unwrap().items(), input)
            })
        }),
        contender("try_for_each_undo_log", move || {
            timed(setup, |mut input| {
                let log = &log;
                let done = rt.block_on(stream::iter(&mut input).try_for_each(|batch| async move {
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
                }));
                (done.unwrap(), input)
            })
        }),
        try_for_each,
    ]
}

// ---------------------------------------------------------------------------------------
// 5. map_ok_stream against and_then.

async fn sum_ok<S: Stream<Item = Result<u64, E>>>(values: S) -> u64 {
    let mut values = std::pin::pin!(values);
    let mut sum = 0_u64;
    while let Some(value) = values.next().await {
        sum = sum.wrapping_add(value.unwrap());
    }
    sum
}

fn map_ok_contenders(rt: &Runtime) -> Vec<Contender<'_>> {
    vec![
        contender("map_ok_stream", move || {
            timed(ready_input, |input| {
                rt.block_on(sum_ok(
                    input.map_ok_stream(|v| async move { Ok::<u64, E>(v * 3) }),
                ))
            })
        }),
        contender("and_then", move || {
            timed(ready_input, |input| {
                rt.block_on(sum_ok(
                    input.and_then(|v| async move { Ok::<u64, E>(v * 3) }),
                ))
            })
        }),
        contender("map_ok", move || {
            timed(ready_input, |input| {
                rt.block_on(sum_ok(input.map_ok(|v| v * 3)))
            })
        }),
    ]
}

// ---------------------------------------------------------------------------------------
// The groups, their targets, and the runs.

/// A ratio that a target of the issue is about.
struct Target {
    numerator: &'static str,
    denominator: &'static str,
    /// The most the ratio may be; `None` when the ratio is only reported.
    limit: Option<f64>,
}

struct Group<'a> {
    name: String,
    items: u64,
    reference: &'static str,
    contenders: Vec<Contender<'a>>,
    targets: Vec<Target>,
}

fn target(numerator: &'static str, denominator: &'static str, limit: Option<f64>) -> Target {
    Target {
        numerator,
        denominator,
        limit,
    }
}

fn groups<'a>(current: &'a Runtime, multi: &'a Runtime, paused: &'a Runtime) -> Vec<Group<'a>> {
    let mut groups = Vec::new();
    for cap in CAPS {
        groups.push(Group {
            name: format!("1_ready/{cap}"),
            items: READY_ITEMS,
            reference: "futures_chunks",
            contenders: ready_contenders(current, cap),
            targets: vec![
                target("chunks_timeout_result", "futures_try_chunks", Some(1.10)),
                target(
                    "chunks_timeout_result_max_weight",
                    "chunks_timeout_result",
                    Some(1.10),
                ),
                target(
                    "chunks_timeout_result_batch_info",
                    "chunks_timeout_result",
                    Some(1.05),
                ),
            ],
        });
    }
    for cap in CAPS {
        groups.push(Group {
            name: format!("2_channel/{cap}"),
            items: CHANNEL_ITEMS,
            reference: "futures_chunks",
            contenders: channel_contenders(multi, cap),
            targets: vec![],
        });
    }
    groups.push(Group {
        name: "3_timer_bound".into(),
        items: TIMER_ITEMS,
        reference: "futures_chunks",
        contenders: timer_contenders(paused),
        targets: vec![target(
            "chunks_timeout_result",
            "tokio_stream_chunks_timeout",
            Some(1.0),
        )],
    });
    for registered in [false, true] {
        for cap in CAPS {
            groups.push(Group {
                name: format!(
                    "4_for_each/{}/{cap}",
                    if registered { "one_per_item" } else { "none" }
                ),
                items: FOR_EACH_VALUES / cap as u64,
                reference: "try_for_each",
                contenders: for_each_contenders(current, registered, cap),
                targets: if registered {
                    vec![
                        target("for_each_compensated", "try_for_each", None),
                        target("for_each_compensated", "try_for_each_undo_log", None),
                    ]
                } else {
                    vec![
                        target("for_each_compensated", "try_for_each", Some(1.10)),
                        target("try_for_each_arc_clone", "try_for_each", None),
                    ]
                },
            });
        }
    }
    groups.push(Group {
        name: "5_map_ok".into(),
        items: MAP_ITEMS,
        reference: "and_then",
        contenders: map_ok_contenders(current),
        targets: vec![target("map_ok_stream", "and_then", None)],
    });
    groups
}

fn run_criterion(criterion: &mut Criterion, groups: &mut [Group<'_>]) {
    for group in groups {
        let mut bench = criterion.benchmark_group(&group.name);
        bench
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .sampling_mode(SamplingMode::Flat)
            .throughput(Throughput::Elements(group.items));
        for contender in &mut group.contenders {
            bench.bench_function(contender.name, |b| {
                b.iter_custom(|iters| (0..iters).map(|_| (contender.pass)()).sum())
            });
        }
        bench.finish();
    }
}

/// The median, over `PAIRED_ROUNDS` rounds, of `time(a) / time(b)`, each round timing the
/// two interleaved as A B B A (so that a change of load during a round hits both alike).
/// Each of the four slots runs its contender `reps` times back to back, `reps` chosen so
/// that a slot lasts at least `PAIRED_SLOT`: short passes are otherwise at the mercy of a
/// single preemption.
fn paired_ratio(group: &mut Group<'_>, a: &str, b: &str) -> Option<f64> {
    let ia = group.contenders.iter().position(|c| c.name == a)?;
    let ib = group.contenders.iter().position(|c| c.name == b)?;
    let mut pass = |i: usize, reps: u32| {
        (0..reps)
            .map(|_| (group.contenders[i].pass)().as_secs_f64())
            .sum::<f64>()
    };
    let warm_up = pass(ia, 1).min(pass(ib, 1));
    let reps = (PAIRED_SLOT.as_secs_f64() / warm_up)
        .ceil()
        .clamp(1.0, 1_000.0) as u32;
    let mut ratios: Vec<f64> = (0..PAIRED_ROUNDS)
        .map(|_| {
            let (a1, b1, b2, a2) = (
                pass(ia, reps),
                pass(ib, reps),
                pass(ib, reps),
                pass(ia, reps),
            );
            (a1 + a2) / (b1 + b2)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    Some((ratios[(PAIRED_ROUNDS - 1) / 2] + ratios[PAIRED_ROUNDS / 2]) / 2.0)
}

// ---------------------------------------------------------------------------------------
// The tables.

/// Where criterion writes its results: `$CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`,
/// else the `criterion` directory of the target directory this binary was built in.
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Path::new(&target).join("criterion");
    }
    // <target>/<profile>/deps/batching-<hash>
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// The median time per pass, in nanoseconds, of one benchmark's latest criterion run.
fn median_ns(home: &Path, group: &str, function: &str) -> Option<f64> {
    // Criterion turns the `/` of a group name into `_` in its directory names.
    let path = home
        .join(group.replace('/', "_"))
        .join(function)
        .join("new/estimates.json");
    let json = std::fs::read_to_string(path).ok()?;
    let median = &json[json.find("\"median\"")?..];
    let value = &median[median.find("\"point_estimate\"")? + "\"point_estimate\"".len()..];
    let value = value.trim_start_matches([':', ' ']);
    let end = value.find([',', '}'])?;
    value[..end].trim().parse().ok()
}

fn format_time(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

fn verdict(ratio: f64, limit: Option<f64>) -> String {
    match limit {
        None => "reported only".into(),
        Some(limit) if ratio <= limit => format!("≤ {limit:.2}×: met"),
        Some(limit) => format!(
            "≤ {limit:.2}×: **missed by {:.1} %**",
            (ratio / limit - 1.0) * 100.0
        ),
    }
}

/// Renders one group as markdown, from criterion's medians and the paired ratios.
fn render(home: &Path, group: &Group<'_>, paired: &[Option<f64>]) -> String {
    let mut out = format!(
        "\n#### `{}` ({} items per pass)\n\n\
         | contender | median per pass | ns per item | ratio to `{}` |\n\
         |---|---:|---:|---:|\n",
        group.name, group.items, group.reference
    );
    let reference = median_ns(home, &group.name, group.reference);
    for contender in &group.contenders {
        match median_ns(home, &group.name, contender.name) {
            Some(ns) => out.push_str(&format!(
                "| `{}` | {} | {:.2} | {} |\n",
                contender.name,
                format_time(ns),
                ns / group.items as f64,
                reference.map_or("–".into(), |r| format!("{:.2}×", ns / r)),
            )),
            None => out.push_str(&format!("| `{}` | not run | | |\n", contender.name)),
        }
    }
    for (target, paired) in group.targets.iter().zip(paired) {
        let medians = median_ns(home, &group.name, target.numerator)
            .zip(median_ns(home, &group.name, target.denominator))
            .map(|(a, b)| a / b);
        let shown = |r: Option<f64>| r.map_or("–".into(), |r| format!("{r:.3}×"));
        out.push_str(&format!(
            "\nTarget `{}` / `{}`: ratio of medians **{}**, paired (interleaved) **{}**; {}\n",
            target.numerator,
            target.denominator,
            shown(medians),
            shown(*paired),
            paired
                .or(medians)
                .map_or("not measured".into(), |r| verdict(r, target.limit)),
        ));
    }
    out
}

fn main() {
    let home = criterion_home();
    let mut criterion = Criterion::default()
        .output_directory(&home)
        .configure_from_args();

    let current = current_thread();
    let multi = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let paused = paused_runtime();
    let mut groups = groups(&current, &multi, &paused);

    // A quick check while working on performance: `PAIRED_ONLY=1_ready cargo bench` measures
    // only the paired ratios of the groups whose names start with the value.
    if let Some(prefix) = std::env::var_os("PAIRED_ONLY") {
        let prefix = prefix.to_string_lossy().into_owned();
        for group in groups.iter_mut().filter(|g| g.name.starts_with(&prefix)) {
            for i in 0..group.targets.len() {
                let (a, b) = (group.targets[i].numerator, group.targets[i].denominator);
                let ratio = paired_ratio(group, a, b).unwrap_or(f64::NAN);
                println!("{}: {a} / {b} = {ratio:.3} (paired)", group.name);
            }
        }
        return;
    }

    run_criterion(&mut criterion, &mut groups);
    criterion.final_summary();

    // The paired ratios and the tables, only after a real measuring run of the whole suite
    // (`cargo bench` passes `--bench`; a filter or `--test`/`--list` skips this).
    let args: Vec<String> = std::env::args().skip(1).collect();
    let whole_suite = args.iter().all(|a| a == "--bench");
    if !args.iter().any(|a| a == "--bench") || !whole_suite {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut tables = String::new();
    for group in &mut groups {
        let pairs: Vec<(&'static str, &'static str)> = group
            .targets
            .iter()
            .map(|t| (t.numerator, t.denominator))
            .collect();
        let paired: Vec<Option<f64>> = pairs
            .into_iter()
            .map(|(a, b)| paired_ratio(group, a, b))
            .collect();
        tables.push_str(&render(&home, group, &paired));
    }
    println!("\n## Results of this run ({cores} cores available)\n{tables}");
    let path = home.join("ratios.md");
    if std::fs::write(&path, &tables).is_ok() {
        println!("\n(written to {})", path.display());
    }
}
