//! Attacks on the item engine of `for_each_compensated`: a compensation run twice or never,
//! a lost waker, a cancellation mid-backoff or mid-undo, a dropped future.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream;
use result_stream::{
    Backoff, CancellationToken, Cause, CompensationScope, ItemScope, ResultStreamExt, RetryPolicy,
};
use tokio::time::{Instant, sleep};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An (item, attempt) pair.
type Key = (u64, u32);

/// How often each registered compensation ran, by (item, attempt).
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<Vec<(Key, usize)>>>);

impl Runs {
    fn register(&self, scope: &ItemScope, key: (u64, u32)) {
        let runs = self.0.clone();
        runs.lock().unwrap().push((key, 0));
        scope.register(move || {
            let runs = runs.clone();
            async move {
                let mut runs = runs.lock().unwrap();
                let entry = runs.iter_mut().find(|(k, _)| *k == key).unwrap();
                entry.1 += 1;
                Ok::<(), std::io::Error>(())
            }
        });
    }
    fn of(&self, key: (u64, u32)) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap()
            .1
    }
    fn keys(&self) -> Vec<(u64, u32)> {
        self.0.lock().unwrap().iter().map(|(k, _)| *k).collect()
    }
}

/// A small deterministic generator, so that every seed can be replayed.
fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut x = seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

#[tokio::test(start_paused = true)]
async fn no_compensation_runs_twice_or_never_under_retries_skips_and_concurrency() {
    for seed in 0..60u64 {
        let runs = Runs::default();
        let attempts = Arc::new(Mutex::new(std::collections::HashMap::<u64, u32>::new()));
        let (runs2, attempts2) = (runs.clone(), attempts.clone());
        let concurrency = 1 + (seed % 8) as usize;
        let scope = CompensationScope::new();
        let done = stream::iter((0..40u64).map(Ok::<u64, String>))
            .for_each_compensated(scope.clone(), move |item, scope| {
                let attempt = {
                    let mut attempts = attempts2.lock().unwrap();
                    let n = attempts.entry(item).or_default();
                    *n += 1;
                    *n
                };
                runs2.register(&scope, (item, attempt));
                let roll = mix(seed, item, u64::from(attempt));
                async move {
                    sleep(ms(roll % 5)).await;
                    if roll % 3 == 0 {
                        Err(format!("item {item} attempt {attempt}"))
                    } else {
                        Ok(())
                    }
                }
            })
            .concurrency(concurrency)
            .retry(
                RetryPolicy::default()
                    .attempts(3)
                    .backoff(Backoff::Fixed(ms(2))),
            )
            .skip_failed_items(|_, error| assert!(error.is_rolled_back_cleanly()))
            .await
            .unwrap();
        assert_eq!(done.items() + done.skipped(), 40, "seed {seed}");
        for (item, attempt) in runs.keys() {
            let failed = mix(seed, item, u64::from(attempt)) % 3 == 0;
            let expected = usize::from(failed);
            assert_eq!(
                runs.of((item, attempt)),
                expected,
                "seed {seed}: item {item} attempt {attempt} (failed: {failed})"
            );
        }
        assert!(scope.is_empty(), "seed {seed}");
    }
}

#[test]
fn a_handler_woken_from_another_thread_is_never_lost() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    for concurrency in [1, 3, 8] {
        let done = rt.block_on(async {
            let run = stream::iter((0..300u64).map(Ok::<u64, String>))
                .for_each_compensated(CompensationScope::new(), |item, _scope| async move {
                    // Woken by another task, possibly on another thread, while the run
                    // may be scanning its slots.
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    tokio::spawn(async move {
                        if item % 2 == 0 {
                            tokio::task::yield_now().await;
                        }
                        tx.send(()).unwrap();
                    });
                    rx.await.unwrap();
                    // And a handler that wakes itself once.
                    tokio::task::yield_now().await;
                    Ok(())
                })
                .concurrency(concurrency);
            tokio::time::timeout(Duration::from_secs(20), run).await
        });
        assert_eq!(done.expect("no lost wake-up").unwrap().items(), 300);
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancellation_during_a_backoff_ends_the_run_at_once() {
    for concurrency in [1, 4] {
        let token = CancellationToken::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let (calls2, token2) = (calls.clone(), token.clone());
        tokio::spawn(async move {
            sleep(ms(1_000)).await;
            token2.cancel();
        });
        let start = Instant::now();
        let error = stream::iter((0..4u64).map(Ok::<u64, &'static str>))
            .for_each_compensated(CompensationScope::new(), move |_, _| {
                calls2.fetch_add(1, Ordering::SeqCst);
                async { Err("deadlock victim") }
            })
            .concurrency(concurrency)
            .retry(
                RetryPolicy::default()
                    .attempts(5)
                    .backoff(Backoff::Fixed(ms(60_000))),
            )
            .with_cancellation(token)
            .await
            .unwrap_err();
        assert!(error.cause().is_cancelled());
        assert_eq!(
            start.elapsed(),
            ms(1_000),
            "promptly, not after the backoff"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            concurrency,
            "no attempt after"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancellation_during_an_items_undo_lets_the_running_compensation_finish_once() {
    let ran: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let (ran2, token) = (ran.clone(), CancellationToken::new());
    let token2 = token.clone();
    let error = stream::iter(vec![Ok::<u64, &'static str>(0)])
        .for_each_compensated(CompensationScope::new(), move |_, scope| {
            for (name, took) in [("first", 0), ("slow", 100)] {
                let ran = ran2.clone();
                scope.register(move || {
                    let ran = ran.clone();
                    async move {
                        sleep(ms(took)).await;
                        ran.lock().unwrap().push(name);
                        Ok::<(), std::io::Error>(())
                    }
                });
            }
            let token = token2.clone();
            async move {
                // Cancelled while this attempt's undo runs "slow".
                tokio::spawn(async move {
                    sleep(ms(50)).await;
                    token.cancel();
                });
                Err("transient")
            }
        })
        .retry(RetryPolicy::default().attempts(2))
        .with_cancellation(token)
        .await
        .unwrap_err();
    assert!(error.cause().is_cancelled());
    assert_eq!(
        *ran.lock().unwrap(),
        vec!["slow", "first"],
        "each once, newest first"
    );
    assert_eq!(error.report().ran(), 2);
    assert!(error.is_rolled_back_cleanly());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_future_leaves_every_items_registrations_in_the_scope() {
    for concurrency in [1, 4] {
        let scope = CompensationScope::new();
        let runs = Runs::default();
        let runs2 = runs.clone();
        let run = stream::iter((0..10u64).map(Ok::<u64, &'static str>))
            .for_each_compensated(scope.clone(), move |item, scope| {
                runs2.register(&scope, (item, 1));
                async move {
                    if item == 0 {
                        return Ok(());
                    }
                    // Item 1 fails and its undo (retry) is running when the future drops.
                    if item == 1 {
                        return Err("transient");
                    }
                    std::future::pending().await
                }
            })
            .concurrency(concurrency)
            .retry(
                RetryPolicy::default()
                    .attempts(2)
                    .backoff(Backoff::Fixed(ms(10_000))),
            );
        assert!(tokio::time::timeout(ms(100), run).await.is_err());
        // Item 0 committed; item 1's first attempt undone (once), its second attempt not
        // started (backoff, holding its slot); the other slots hold items 2.. in flight,
        // with their registrations.
        let in_flight = concurrency as u64 - 1;
        assert_eq!(scope.len() as u64, in_flight, "concurrency {concurrency}");
        let report = scope.rollback(RetryPolicy::default()).await;
        assert_eq!(report.ran() as u64, in_flight);
        for key in runs.keys() {
            let expected = usize::from(key.0 >= 1);
            assert_eq!(
                runs.of(key),
                expected,
                "{key:?} at concurrency {concurrency}"
            );
        }
        assert!(scope.is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn a_skipped_item_whose_undo_is_incomplete_stops_a_concurrent_run() {
    let error = stream::iter((0..6u64).map(Ok::<u64, &'static str>))
        .for_each_compensated(CompensationScope::new(), |item, scope| async move {
            if item == 2 {
                scope.register(|| async { Err::<(), _>("undo refused") });
                return Err("poison");
            }
            sleep(ms(10 * item)).await;
            Ok(())
        })
        .concurrency(3)
        .skip_failed_items(|_, _| panic!("an incomplete undo is not a skip"))
        .await
        .unwrap_err();
    assert!(matches!(error.cause(), Cause::Handler("poison")));
    assert!(!error.is_rolled_back_cleanly());
    assert_eq!(error.report().failures().len(), 1);
}

/// What one run did: its outcome, and the log of writes and undos.
async fn scripted_run(seed: u64, general_path: bool) -> (Result<u64, String>, Vec<String>) {
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let log2 = log.clone();
    let mut items: Vec<Result<u64, String>> = (0..30u64).map(Ok).collect();
    if seed % 3 == 0 {
        items[(seed % 29) as usize] = Err("bad input".to_owned());
    }
    let run =
        stream::iter(items).for_each_compensated(CompensationScope::new(), move |item, scope| {
            let log = log2.clone();
            let roll = mix(seed, item, 0);
            async move {
                let undo_log = log.clone();
                scope.register(move || {
                    let log = undo_log.clone();
                    async move {
                        log.lock().unwrap().push(format!("undo {item}"));
                        Ok::<(), std::io::Error>(())
                    }
                });
                log.lock().unwrap().push(format!("write {item}"));
                sleep(ms(roll % 3)).await;
                if roll % 17 == 0 {
                    return Err(format!("item {item}"));
                }
                if roll % 5 == 0 {
                    scope.commit();
                }
                Ok(())
            }
        });
    let run = if seed % 2 == 0 {
        run.all_or_nothing()
    } else {
        run
    };
    // One attempt: the same rules, through the general item machinery.
    let run = if general_path {
        run.retry(RetryPolicy::default())
    } else {
        run
    };
    let outcome = run
        .await
        .map(|done| done.items())
        .map_err(|error| format!("{:?} / {}", error.cause(), error.report()));
    let log = log.lock().unwrap().clone();
    (outcome, log)
}

#[tokio::test(start_paused = true)]
async fn the_one_at_a_time_fast_path_and_the_general_path_agree() {
    for seed in 0..80u64 {
        let fast = scripted_run(seed, false).await;
        let general = scripted_run(seed, true).await;
        assert_eq!(fast, general, "seed {seed}");
    }
}
