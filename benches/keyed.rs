//! Benchmarks of `chunks_timeout_by_key_result`.
//!
//! Run it with `cargo bench --bench keyed`. At the end the binary prints each group's
//! medians and ratios, from criterion's estimates and from an interleaved A B B A
//! measurement (see `benches/batching.rs` for why both).
//!
//! # What is measured
//!
//! Every measurement is one pass over the whole input (throughput is in values), on a
//! current_thread runtime; every batch goes to the same consumer (its length added up, the
//! batch passed through `black_box`, dropped).
//!
//! 1. `keyed_1_key/500`: 5,000,000 `Ok(u64)` from `futures::stream::iter`, all of one key,
//!    `max_items` 500, timeout 2 s: `chunks_timeout_by_key_result` against
//!    `chunks_timeout_result` (the reference): the cost of keying when there is one key.
//! 2. `keyed_1000_keys/500`: the same 5,000,000 values over 1,000 keys (`v % 1_000`), cap
//!    500: `chunks_timeout_by_key_result` against `hashmap_sleep_per_key` (the reference), a
//!    hand-written `HashMap<u64, Vec<u64>>` batcher with one `tokio::time::Sleep` per key
//!    (boxed once per key, reset when a batch opens, every armed one polled when the
//!    upstream is pending): the obvious alternative.
//! 3. `keyed_timer_bound`: on a paused clock, 100,000 `Ok(u64)`, one every 1 ms from one
//!    `Sleep`-driven producer, round-robin over 100 keys, cap 500, timeout 50 ms: each key
//!    gets a value every 100 ms, so every batch (of one value) is closed by its deadline,
//!    with about 50 batches open at any time. Same two contenders as group 2.

use std::future::Future;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use futures::{Stream, StreamExt, stream};
use result_stream::ResultStreamExt;
use tokio::runtime::{Builder, Runtime};
use tokio::time::Sleep;

type E = std::io::Error;

const READY_ITEMS: u64 = 5_000_000;
const CAP: usize = 500;
const TIMEOUT: Duration = Duration::from_secs(2);
const KEYS: u64 = 1_000;
const TIMER_ITEMS: u64 = 100_000;
const TIMER_KEYS: u64 = 100;
const TIMER_PERIOD: Duration = Duration::from_millis(1);
const TIMER_TIMEOUT: Duration = Duration::from_millis(50);
const PAIRED_ROUNDS: usize = 9;
const PAIRED_SLOT: Duration = Duration::from_millis(40);

#[path = "support/hashmap_sleep_per_key.rs"]
mod baseline;
use baseline::HashMapSleepPerKey;

// ---------------------------------------------------------------------------------------
// Inputs and consumers.

fn ready_input() -> impl Stream<Item = Result<u64, E>> + Unpin {
    stream::iter((0..black_box(READY_ITEMS)).map(Ok::<u64, E>))
}

fn one_key(_: &u64) -> u64 {
    0
}

fn thousand_keys(v: &u64) -> u64 {
    v % KEYS
}

fn hundred_keys(v: &u64) -> u64 {
    v % TIMER_KEYS
}

/// Drains batches, adding up their lengths.
async fn drain<S, B>(batches: S, len: impl Fn(&B) -> usize) -> u64
where
    S: Stream<Item = Result<B, E>>,
{
    let mut batches = std::pin::pin!(batches);
    let mut n = 0;
    while let Some(batch) = batches.next().await {
        let batch = batch.unwrap();
        n += len(&batch) as u64;
        drop(black_box(batch));
    }
    n
}

fn pair_len(batch: &(u64, Vec<u64>)) -> usize {
    batch.1.len()
}

fn timed(run: impl FnOnce() -> u64, expected: u64) -> Duration {
    let start = Instant::now();
    let n = run();
    let elapsed = start.elapsed();
    assert_eq!(n, expected, "every value in a batch");
    elapsed
}

pin_project_lite::pin_project! {
    /// The producer of group 3: `0..TIMER_ITEMS`, one every `TIMER_PERIOD`,
    /// driven by one `Sleep` (boxed once, reset after every value).
    struct Ticker {
        sleep: Pin<Box<Sleep>>,
        next: u64,
    }
}

/// Must be called inside the runtime (it creates a `Sleep`).
fn ticker() -> Ticker {
    Ticker {
        sleep: Box::pin(tokio::time::sleep(TIMER_PERIOD)),
        next: 0,
    }
}

impl Stream for Ticker {
    type Item = Result<u64, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        if *this.next == TIMER_ITEMS {
            return Poll::Ready(None);
        }
        std::task::ready!(this.sleep.as_mut().poll(cx));
        let at = this.sleep.deadline() + TIMER_PERIOD;
        this.sleep.as_mut().reset(at);
        *this.next += 1;
        Poll::Ready(Some(Ok(*this.next - 1)))
    }
}

// ---------------------------------------------------------------------------------------
// Groups.

type Pass<'a> = Box<dyn FnMut() -> Duration + 'a>;

struct Group<'a> {
    name: &'static str,
    items: u64,
    reference: &'static str,
    contenders: Vec<(&'static str, Pass<'a>)>,
}

fn groups<'a>(current: &'a Runtime, paused: &'a Runtime) -> Vec<Group<'a>> {
    vec![
        Group {
            name: "keyed_1_key/500",
            items: READY_ITEMS,
            reference: "chunks_timeout_result",
            contenders: vec![
                (
                    "chunks_timeout_by_key_result",
                    Box::new(move || {
                        timed(
                            || {
                                let s = ready_input()
                                    .chunks_timeout_by_key_result(one_key, CAP, TIMEOUT);
                                current.block_on(drain(s, pair_len))
                            },
                            READY_ITEMS,
                        )
                    }),
                ),
                (
                    "chunks_timeout_result",
                    Box::new(move || {
                        timed(
                            || {
                                let s = ready_input().chunks_timeout_result(CAP, TIMEOUT);
                                current.block_on(drain(s, Vec::len))
                            },
                            READY_ITEMS,
                        )
                    }),
                ),
            ],
        },
        Group {
            name: "keyed_1000_keys/500",
            items: READY_ITEMS,
            reference: "hashmap_sleep_per_key",
            contenders: vec![
                (
                    "chunks_timeout_by_key_result",
                    Box::new(move || {
                        timed(
                            || {
                                let s = ready_input().chunks_timeout_by_key_result(
                                    thousand_keys,
                                    CAP,
                                    TIMEOUT,
                                );
                                current.block_on(drain(s, pair_len))
                            },
                            READY_ITEMS,
                        )
                    }),
                ),
                (
                    "hashmap_sleep_per_key",
                    Box::new(move || {
                        timed(
                            || {
                                current.block_on(async {
                                    let s = HashMapSleepPerKey::new(
                                        ready_input(),
                                        thousand_keys,
                                        CAP,
                                        TIMEOUT,
                                    );
                                    drain(s, pair_len).await
                                })
                            },
                            READY_ITEMS,
                        )
                    }),
                ),
            ],
        },
        Group {
            name: "keyed_timer_bound",
            items: TIMER_ITEMS,
            reference: "hashmap_sleep_per_key",
            contenders: vec![
                (
                    "chunks_timeout_by_key_result",
                    Box::new(move || {
                        timed(
                            || {
                                paused.block_on(async {
                                    let s = ticker().chunks_timeout_by_key_result(
                                        hundred_keys,
                                        CAP,
                                        TIMER_TIMEOUT,
                                    );
                                    drain(s, pair_len).await
                                })
                            },
                            TIMER_ITEMS,
                        )
                    }),
                ),
                (
                    "hashmap_sleep_per_key",
                    Box::new(move || {
                        timed(
                            || {
                                paused.block_on(async {
                                    let s = HashMapSleepPerKey::new(
                                        ticker(),
                                        hundred_keys,
                                        CAP,
                                        TIMER_TIMEOUT,
                                    );
                                    drain(s, pair_len).await
                                })
                            },
                            TIMER_ITEMS,
                        )
                    }),
                ),
            ],
        },
    ]
}

/// The median over `PAIRED_ROUNDS` rounds of `time(a) / time(b)`, timed A B B A.
fn paired_ratio(group: &mut Group<'_>, a: usize, b: usize) -> f64 {
    let mut pass = |i: usize, reps: u32| {
        (0..reps)
            .map(|_| (group.contenders[i].1)().as_secs_f64())
            .sum::<f64>()
    };
    let warm_up = pass(a, 1).min(pass(b, 1));
    let reps = (PAIRED_SLOT.as_secs_f64() / warm_up)
        .ceil()
        .clamp(1.0, 1_000.0) as u32;
    let mut ratios: Vec<f64> = (0..PAIRED_ROUNDS)
        .map(|_| {
            let (a1, b1, b2, a2) = (pass(a, reps), pass(b, reps), pass(b, reps), pass(a, reps));
            (a1 + a2) / (b1 + b2)
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[PAIRED_ROUNDS / 2]
}

/// Where criterion writes its results (see `benches/batching.rs`).
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Path::new(&target).join("criterion");
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("criterion")))
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// The median time per pass, in nanoseconds, of one benchmark's latest criterion run.
fn median_ns(home: &Path, group: &str, function: &str) -> Option<f64> {
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

fn main() {
    let current = Builder::new_current_thread().enable_all().build().unwrap();
    let paused = Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let mut groups = groups(&current, &paused);
    let mut criterion = Criterion::default().configure_from_args();
    for group in &mut groups {
        let mut bench = criterion.benchmark_group(group.name);
        bench
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3))
            .sampling_mode(SamplingMode::Flat)
            .throughput(Throughput::Elements(group.items));
        for (name, pass) in &mut group.contenders {
            bench.bench_function(*name, |b| {
                b.iter_custom(|iters| (0..iters).map(|_| pass()).sum())
            });
        }
        bench.finish();
    }
    criterion.final_summary();

    // `cargo test --benches` runs this binary in test mode: no tables then.
    if std::env::args().any(|arg| arg == "--test" || arg == "--list") {
        return;
    }
    let home = criterion_home();
    println!("\n| group | contender | median | per value | ratio (criterion) | ratio (paired) |");
    println!("|---|---|---|---|---|---|");
    for group in &mut groups {
        let reference = group
            .contenders
            .iter()
            .position(|(name, _)| *name == group.reference)
            .expect("the reference is a contender");
        let reference_ns = median_ns(&home, group.name, group.reference);
        for i in 0..group.contenders.len() {
            let name = group.contenders[i].0;
            let Some(ns) = median_ns(&home, group.name, name) else {
                continue;
            };
            let ratio = reference_ns.map_or(f64::NAN, |r| ns / r);
            let paired = if i == reference {
                1.0
            } else {
                paired_ratio(group, i, reference)
            };
            println!(
                "| {} | {} | {:.2} ms | {:.2} ns | {:.2}x | {:.2}x |",
                group.name,
                name,
                ns / 1e6,
                ns / group.items as f64,
                ratio,
                paired
            );
        }
    }
}
