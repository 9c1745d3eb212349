//! An independent attack on the compensation engine: cancellation and drop at every await
//! point, a run polled only when woken, handlers woken from other threads, out-of-order
//! completion, counts and causes (more in `compensation_attack_review_scopes.rs`).
//! Every test here passes: each states a rule the engine keeps.

mod compensation_common;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use compensation_common::{AppError, Log, Table, lock};
use futures::stream;
use proptest::prelude::*;
use result_stream::{
    Backoff, CancellationToken, Cause, CompensationScope, ItemScope, ResultStreamExt, RetryPolicy,
};
use tokio::time::{Instant, sleep};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// (item, attempt, step) of one registration.
type Key = (u32, u32, u32);

/// Every registration, how often it ran, and which attempts returned `Ok`.
#[derive(Clone, Default)]
struct Ledger {
    runs: Arc<Mutex<HashMap<Key, usize>>>,
    ok: Arc<Mutex<HashSet<(u32, u32)>>>,
    attempts: Arc<Mutex<HashMap<u32, u32>>>,
}

impl Ledger {
    fn next_attempt(&self, item: u32) -> u32 {
        let mut attempts = lock(&self.attempts);
        let n = attempts.entry(item).or_default();
        *n += 1;
        *n
    }
    fn register(&self, scope: &ItemScope, key: Key) {
        lock(&self.runs).insert(key, 0);
        let runs = self.runs.clone();
        scope.register(move || {
            let runs = runs.clone();
            async move {
                *lock(&runs).get_mut(&key).unwrap() += 1;
                Ok::<(), std::io::Error>(())
            }
        });
    }
    /// A registration ran once if its attempt did not return `Ok`, never otherwise.
    fn check(&self, what: &str) {
        let ok = lock(&self.ok).clone();
        for (&(item, attempt, step), &ran) in lock(&self.runs).iter() {
            let expected = usize::from(!ok.contains(&(item, attempt)));
            assert_eq!(
                ran, expected,
                "{what}: item {item} attempt {attempt} step {step}"
            );
        }
    }
}

/// A handler with three await points; item 1's first attempt (and item 4's every attempt)
/// fails after its last step.
fn stepped(
    ledger: &Ledger,
) -> impl FnMut(u32, ItemScope) -> std::pin::Pin<Box<dyn Future<Output = Result<(), AppError>> + Send>>
{
    let ledger = ledger.clone();
    move |item, scope| {
        let ledger = ledger.clone();
        let attempt = ledger.next_attempt(item);
        Box::pin(async move {
            for step in 0..3 {
                ledger.register(&scope, (item, attempt, step));
                sleep(ms(1 + u64::from(item % 3))).await;
            }
            if (item == 1 && attempt == 1) || item == 4 {
                return Err(AppError::Write(item));
            }
            lock(&ledger.ok).insert((item, attempt));
            Ok(())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancellation_at_every_await_point_runs_each_pending_compensation_once() {
    for concurrency in [1, 3] {
        for retry in [false, true] {
            let mut cancelled = 0;
            for at in 0..30 {
                let (ledger, scope, token) = (
                    Ledger::default(),
                    CompensationScope::new(),
                    CancellationToken::new(),
                );
                let run = stream::iter((0..6u32).map(Ok::<u32, AppError>))
                    .for_each_compensated(scope.clone(), stepped(&ledger))
                    .concurrency(concurrency)
                    .with_cancellation(token.clone())
                    .skip_failed_items(|_, error| assert!(error.is_rolled_back_cleanly()));
                let run = if retry {
                    run.retry(
                        RetryPolicy::default()
                            .attempts(2)
                            .backoff(Backoff::Fixed(ms(2))),
                    )
                } else {
                    run
                };
                let canceller = tokio::spawn(async move {
                    sleep(ms(at)).await;
                    token.cancel();
                });
                let started = Instant::now();
                let what =
                    format!("concurrency {concurrency}, retry {retry}, cancelled at {at} ms");
                match run.await {
                    Ok(done) => assert_eq!(done.items() + done.skipped(), 6, "{what}"),
                    Err(error) => {
                        assert!(error.cause().is_cancelled(), "{what}");
                        cancelled += 1;
                        assert!(error.is_rolled_back_cleanly(), "{what}");
                        // Prompt: nothing waits for a handler or a backoff once it fired.
                        assert_eq!(started.elapsed(), ms(at), "{what}");
                    }
                }
                canceller.abort();
                ledger.check(&what);
                assert!(scope.is_empty(), "{what}");
            }
            assert!(
                cancelled >= 10,
                "concurrency {concurrency}, retry {retry}: {cancelled}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_future_dropped_at_every_await_point_leaves_each_pending_compensation_for_the_scope() {
    for concurrency in [1, 3] {
        for retry in [false, true] {
            for at in 0..30 {
                let (ledger, scope) = (Ledger::default(), CompensationScope::new());
                let run = stream::iter((0..6u32).map(Ok::<u32, AppError>))
                    .for_each_compensated(scope.clone(), stepped(&ledger))
                    .concurrency(concurrency)
                    .skip_failed_items(|_, _| {});
                let run = if retry {
                    run.retry(
                        RetryPolicy::default()
                            .attempts(2)
                            .backoff(Backoff::Fixed(ms(2))),
                    )
                } else {
                    run
                };
                let what = format!("concurrency {concurrency}, retry {retry}, dropped at {at} ms");
                let _ = tokio::time::timeout(ms(at), run).await;
                let report = scope.rollback(RetryPolicy::default()).await;
                assert!(report.is_complete(), "{what}");
                ledger.check(&what);
                assert!(scope.is_empty(), "{what}");
            }
        }
    }
}

/// A waker that counts its wakes and lets a thread wait for the next one.
#[derive(Default)]
struct Counting {
    wakes: Mutex<usize>,
    woken: Condvar,
}

impl Wake for Counting {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        *lock(&self.wakes) += 1;
        self.woken.notify_all();
    }
}

/// Polls `future` only after its waker was woken (once at first); a wake that never comes
/// is a lost waker. Returns the output and the number of polls.
fn poll_when_woken<F: Future>(future: F) -> (F::Output, usize) {
    let counting = Arc::new(Counting::default());
    let waker = Waker::from(counting.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    let mut polls = 0;
    loop {
        let seen = *lock(&counting.wakes);
        polls += 1;
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return (output, polls);
        }
        let (_wakes, timeout) = counting
            .woken
            .wait_timeout_while(lock(&counting.wakes), Duration::from_secs(10), |w| {
                *w == seen
            })
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "the run returned Pending and was never woken"
        );
    }
}

/// A future woken from a fresh OS thread after `micros`.
async fn woken_from_a_thread(micros: u64) {
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_micros(micros));
        let _ = tx.send(());
    });
    rx.await.unwrap();
}

#[test]
fn a_run_polled_only_when_woken_finishes_with_handlers_woken_from_other_threads() {
    for (concurrency, skip) in [(1, false), (1, true), (4, false), (4, true), (64, false)] {
        let (table, log) = (Table::default(), Log::default());
        let (t2, l2) = (table.clone(), log.clone());
        let run = stream::iter((0..200u32).map(Ok::<u32, AppError>))
            .for_each_compensated(CompensationScope::new(), move |item, scope| {
                let (table, log) = (t2.clone(), l2.clone());
                async move {
                    scope.register(table.delete(&log, item));
                    table.insert(item);
                    woken_from_a_thread(u64::from(item * 37 % 200)).await;
                    woken_from_a_thread(u64::from(item * 53 % 150)).await;
                    if item % 50 == 7 && skip {
                        return Err(AppError::Write(item));
                    }
                    Ok(())
                }
            })
            .concurrency(concurrency);
        let ((done, skipped), polls) = if skip {
            let (done, polls) = poll_when_woken(run.skip_failed_items(|_, _| {}));
            let done = done.unwrap();
            ((done.items(), done.skipped()), polls)
        } else {
            let (done, polls) = poll_when_woken(run);
            ((done.unwrap().items(), 0), polls)
        };
        let failed = if skip { 4 } else { 0 };
        assert_eq!(
            (done, skipped),
            (200 - failed, failed),
            "concurrency {concurrency}"
        );
        assert_eq!(table.rows().len() as u64, 200 - failed);
        // Two waits per item: a handful of polls each, never a busy loop.
        assert!(
            polls <= 200 * 3 + 2,
            "{polls} polls at concurrency {concurrency}"
        );
    }
}

#[test]
fn backoff_and_deadline_timers_wake_a_run_polled_only_when_woken() {
    // The run is polled on this thread, outside any task; the runtime's idle workers drive
    // the timers, whose wakes are all that ever gets the run polled again.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let _runtime = rt.enter();
    for concurrency in [1, 4] {
        let (table, log) = (Table::default(), Log::default());
        let (t2, l2) = (table.clone(), log.clone());
        let tries: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
        let run = stream::iter((0..12u32).map(Ok::<u32, AppError>))
            .for_each_compensated(CompensationScope::new(), move |item, scope| {
                let (table, log, tries) = (t2.clone(), l2.clone(), tries.clone());
                async move {
                    let attempt = *lock(&tries)
                        .entry(item)
                        .and_modify(|n| *n += 1)
                        .or_insert(1);
                    scope.register(table.delete(&log, item));
                    table.insert(item);
                    match (item % 3, attempt) {
                        // Fails once, is retried after its backoff.
                        (0, 1) => Err(AppError::Write(item)),
                        // Runs past the attempt's time limit once.
                        (1, 1) => {
                            sleep(ms(500)).await;
                            Ok(())
                        }
                        _ => Ok(()),
                    }
                }
            })
            .concurrency(concurrency)
            .retry(
                RetryPolicy::default()
                    .attempts(2)
                    .backoff(Backoff::Fixed(ms(3)))
                    .attempt_timeout(ms(20)),
            );
        let (done, _polls) = poll_when_woken(run);
        assert_eq!(done.unwrap().items(), 12, "concurrency {concurrency}");
        assert_eq!(table.rows(), (0..12).collect::<Vec<_>>());
        assert_eq!(log.entries().len(), 8, "one undo per failed attempt");
    }
}

#[tokio::test(start_paused = true)]
async fn handlers_that_sleep_once_are_each_polled_at_most_three_times() {
    for concurrency in [2, 8, 64] {
        let polls: Arc<Vec<AtomicUsize>> =
            Arc::new((0..256).map(|_| AtomicUsize::new(0)).collect());
        let p2 = polls.clone();
        stream::iter((0..256u32).map(Ok::<u32, AppError>))
            .for_each_compensated(CompensationScope::new(), move |item, _scope| {
                let polls = p2.clone();
                let mut sleep = Box::pin(sleep(ms(u64::from(item * 7919 % 97))));
                std::future::poll_fn(move |cx| {
                    polls[item as usize].fetch_add(1, Ordering::Relaxed);
                    sleep.as_mut().poll(cx).map(Ok)
                })
            })
            .concurrency(concurrency)
            .await
            .unwrap();
        let max = polls
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .max()
            .unwrap();
        assert!(
            max <= 3,
            "a handler polled {max} times at concurrency {concurrency}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_first_failure_in_time_is_the_cause_when_handlers_finish_out_of_order() {
    for concurrency in [2, 3, 5] {
        let (table, log) = (Table::default(), Log::default());
        let (t2, l2) = (table.clone(), log.clone());
        let error = stream::iter((0..5u32).map(Ok::<u32, AppError>))
            .for_each_compensated(CompensationScope::new(), move |item, scope| {
                let (table, log) = (t2.clone(), l2.clone());
                async move {
                    scope.register(table.delete(&log, item));
                    table.insert(item);
                    // Item 0 fails last, item 1 first; item 2 succeeds in between.
                    sleep(ms([30, 10, 5, 40, 40][item as usize])).await;
                    match item {
                        0 | 1 => Err(AppError::Write(item)),
                        _ => Ok(()),
                    }
                }
            })
            .concurrency(concurrency)
            .await
            .unwrap_err();
        assert_eq!(
            error.cause(),
            &Cause::Handler(AppError::Write(1)),
            "concurrency {concurrency}"
        );
        // Item 2 committed before the failure (at concurrency 3 and 5) and stays.
        let kept: Vec<u32> = if concurrency >= 3 { vec![2] } else { vec![] };
        assert_eq!(table.rows(), kept, "concurrency {concurrency}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_upstream_error_keeps_its_own_value_while_handlers_are_in_flight() {
    let (table, log) = (Table::default(), Log::default());
    let (t2, l2) = (table.clone(), log.clone());
    let items = vec![Ok(1), Ok(2), Err(AppError::Upstream("bad frame")), Ok(3)];
    let error = stream::iter(items)
        .for_each_compensated(CompensationScope::new(), move |item, scope| {
            let (table, log) = (t2.clone(), l2.clone());
            async move {
                scope.register(table.delete(&log, item));
                table.insert(item);
                sleep(ms(10)).await;
                Ok(())
            }
        })
        .concurrency(4)
        .await
        .unwrap_err();
    assert_eq!(
        error.cause(),
        &Cause::Upstream(AppError::Upstream("bad frame"))
    );
    assert_eq!(error.report().ran(), 2);
    assert!(table.rows().is_empty());
}

/// One stream entry: an upstream error, or an item whose attempts fail `fails` times.
#[derive(Debug, Clone)]
enum Entry {
    Upstream,
    Item { fails: u32, wait: u64 },
}

fn entry() -> impl Strategy<Value = Entry> {
    prop_oneof![
        1 => Just(Entry::Upstream),
        4 => (0u32..4, 0u64..6).prop_map(|(fails, wait)| Entry::Item { fails, wait }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn counts_rows_and_undos_agree_with_what_each_handler_did(
        entries in prop::collection::vec(entry(), 0..24),
        concurrency in 1usize..6,
        attempts in 1u32..4,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let (table, log, scope) = (Table::default(), Log::default(), CompensationScope::new());
            let plan: Vec<Entry> = entries.clone();
            let items = entries.iter().enumerate().map(|(at, entry)| match entry {
                Entry::Upstream => Err(AppError::Upstream("bad")),
                Entry::Item { .. } => Ok(at as u32),
            });
            let tries: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
            let skipped: Arc<Mutex<Vec<u64>>> = Arc::default();
            let (t2, l2, s2) = (table.clone(), log.clone(), skipped.clone());
            let done = stream::iter(items.collect::<Vec<_>>())
                .for_each_compensated(scope.clone(), move |at, scope| {
                    let (table, log, plan, tries) = (t2.clone(), l2.clone(), plan.clone(), tries.clone());
                    async move {
                        let Entry::Item { fails, wait } = plan[at as usize] else { unreachable!() };
                        let attempt = { let mut t = lock(&tries); let n = t.entry(at).or_default(); *n += 1; *n };
                        scope.register(table.delete(&log, at));
                        table.insert(at);
                        sleep(ms(wait)).await;
                        if attempt <= fails { Err(AppError::Write(at)) } else { Ok(()) }
                    }
                })
                .concurrency(concurrency)
                .retry(RetryPolicy::default().attempts(attempts).backoff(Backoff::Fixed(ms(1))))
                .skip_failed_items(move |index, error| {
                    assert!(error.is_rolled_back_cleanly());
                    lock(&s2).push(index);
                })
                .skip_upstream_errors(|_| {})
                .await
                .unwrap();
            let upstream = entries.iter().filter(|e| matches!(e, Entry::Upstream)).count() as u64;
            let mut expected_rows = Vec::new();
            let mut expected_skipped = Vec::new();
            let mut index = 0u64;
            for (at, entry) in entries.iter().enumerate() {
                if let Entry::Item { fails, .. } = entry {
                    if *fails < attempts { expected_rows.push(at as u32) } else { expected_skipped.push(index) }
                    index += 1;
                }
            }
            assert_eq!(done.upstream_errors(), upstream);
            assert_eq!(done.items(), expected_rows.len() as u64);
            assert_eq!(done.skipped(), expected_skipped.len() as u64);
            let mut skipped = lock(&skipped).clone();
            skipped.sort_unstable();
            assert_eq!(skipped, expected_skipped);
            assert_eq!(table.rows(), expected_rows);
            assert!(scope.is_empty());
        });
    }
}
