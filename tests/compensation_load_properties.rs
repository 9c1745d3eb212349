//! A randomized test of `for_each_compensated` under load: random item counts,
//! handler durations and outcomes per attempt, concurrency, retry counts, skipping,
//! all-or-nothing and cancellation times, on a paused clock.
//!
//! For every case it checks that:
//! - every item is committed, skipped, or part of the final rollback;
//! - every compensation of an attempt that did not commit runs exactly once (undone by the
//!   retry, by the skip, or by the final rollback);
//! - none of a committed attempt runs (unless the all-or-nothing run failed, when all run);
//! - on success, `items() + skipped()` is the item count and `on_skip` saw each skip;
//! - the scope is empty at the end.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream;
use proptest::prelude::*;
use result_stream::{CompensationScope, ResultStreamExt, RetryPolicy};
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
struct Case {
    /// Per item, per attempt: (duration in 10 ms units, succeeds).
    script: Vec<Vec<(u64, bool)>>,
    concurrency: usize,
    attempts: Option<u32>,
    skip: bool,
    all_or_nothing: bool,
    cancel_at: Option<u64>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(
            prop::collection::vec((0u64..5, prop::bool::weighted(0.7)), 4),
            0..12,
        ),
        1usize..5,
        prop::option::of(1u32..4),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(0u64..30),
    )
        .prop_map(
            |(script, concurrency, attempts, skip, all_or_nothing, cancel_at)| Case {
                script,
                concurrency,
                attempts,
                skip: skip && !all_or_nothing,
                all_or_nothing,
                cancel_at,
            },
        )
}

/// What happened to one attempt.
#[derive(Default)]
struct Attempt {
    committed: bool,
    undone: u32,
}

type Attempts = Arc<Mutex<HashMap<(usize, u32), Attempt>>>;

fn run_case(case: Case) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let attempts: Attempts = Arc::default();
        let counters: Arc<Vec<AtomicU32>> =
            Arc::new((0..case.script.len()).map(|_| AtomicU32::new(0)).collect());
        let scope = CompensationScope::new();
        let skipped_seen = Arc::new(AtomicU64::new(0));
        let token = CancellationToken::new();
        if let Some(at) = case.cancel_at {
            let token = token.clone();
            tokio::spawn(async move {
                sleep(Duration::from_millis(at * 10)).await;
                token.cancel();
            });
        }

        let (script, attempts2, counters2) = (
            Arc::new(case.script.clone()),
            attempts.clone(),
            counters.clone(),
        );
        let mut run = stream::iter((0..case.script.len()).map(Ok::<usize, io::Error>))
            .for_each_compensated(scope.clone(), move |item, scope| {
                let attempt = counters2[item].fetch_add(1, Ordering::SeqCst) + 1;
                let (wait, succeeds) = script[item][(attempt as usize - 1).min(3)];
                attempts2
                    .lock()
                    .unwrap()
                    .insert((item, attempt), Attempt::default());
                let undo_log = attempts2.clone();
                scope.register(move || {
                    let log = undo_log.clone();
                    async move {
                        log.lock()
                            .unwrap()
                            .get_mut(&(item, attempt))
                            .expect("registered")
                            .undone += 1;
                        Ok::<(), io::Error>(())
                    }
                });
                let log = attempts2.clone();
                async move {
                    sleep(Duration::from_millis(wait * 10)).await;
                    if !succeeds {
                        return Err(io::Error::other("write failed"));
                    }
                    log.lock()
                        .unwrap()
                        .get_mut(&(item, attempt))
                        .expect("registered")
                        .committed = true;
                    Ok(())
                }
            })
            .concurrency(case.concurrency)
            .with_cancellation(token);
        if let Some(attempts) = case.attempts {
            run = run.retry(RetryPolicy::default().attempts(attempts));
        }
        if case.all_or_nothing {
            run = run.all_or_nothing();
        }
        if case.skip {
            let seen = skipped_seen.clone();
            run = run.skip_failed_items(move |_, error| {
                assert!(error.is_rolled_back_cleanly());
                seen.fetch_add(1, Ordering::SeqCst);
            });
        }
        let result = run.await;

        prop_assert!(scope.is_empty(), "{} left in the scope", scope.len());
        let attempts = attempts.lock().unwrap();
        let run_failed = result.is_err();
        for (&(item, attempt), what) in attempts.iter() {
            let expected_undos = if what.committed && !(case.all_or_nothing && run_failed) {
                0
            } else {
                1
            };
            prop_assert_eq!(
                what.undone,
                expected_undos,
                "item {} attempt {}: committed {}, undone {} times",
                item,
                attempt,
                what.committed,
                what.undone
            );
        }
        match result {
            Ok(done) => {
                let committed = (0..case.script.len())
                    .filter(|item| {
                        attempts
                            .iter()
                            .any(|(&(i, _), a)| i == *item && a.committed)
                    })
                    .count() as u64;
                prop_assert_eq!(done.items(), committed);
                prop_assert_eq!(done.items() + done.skipped(), case.script.len() as u64);
                prop_assert_eq!(done.skipped(), skipped_seen.load(Ordering::SeqCst));
            }
            Err(error) => {
                let cancelled = error.cause().is_cancelled();
                prop_assert!(cancelled || error.cause().error().is_some());
                prop_assert!(error.is_rolled_back_cleanly());
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn every_attempt_is_committed_or_undone_exactly_once(case in case()) {
        run_case(case)?;
    }
}
