//! `CompensationScope` under concurrency: a randomized stress test over thousands of
//! seeds.
//!
//! Each seed runs, on a multi-thread runtime, up to three `for_each_compensated` runs that
//! share one scope (random items, unit of work, concurrency, rollback concurrency, handler
//! outcomes; some cancelled through their token, some dropped mid-item), next to an "owner" task that registers through the
//! scope's own handle, commits, and rolls back (some rollbacks dropped midway). Every
//! compensation is a probe that counts how often it started and finished and when it was
//! dropped. At the end (after a final owner rollback) the test checks:
//! - every probe was dropped exactly once and the scope is empty: nothing left behind;
//! - no probe succeeded twice, nor started again after it succeeded (each compensation that
//!   succeeded runs once); one started twice only in a seed where a rollback was dropped
//!   midway (the owner's, or a run's own when the run was dropped while rolling back), and
//!   finished twice only if it fails on purpose: the documented rerun of the interrupted
//!   compensation and of those that failed, which a dropped rollback returns to the scope;
//! - every probe that fails on purpose and was not committed is in exactly one report of a
//!   rollback that resolved (a run's error, the owner's rollbacks, the final one): a failure
//!   is never lost with a dropped rollback, nor reported by two;
//! - a run that succeeded had none of its compensations run (all committed);
//! - a run that failed or was cancelled ran, exactly once, every compensation of each item
//!   its handler did not complete (all of them in all-or-nothing mode), and none of a
//!   completed item's in per-item mode: the owner's commit and rollback, racing on other
//!   threads, never took a live run's entries;
//! - a run that was dropped mid-item never ran a completed item's compensations;
//! - the owner's `commit()` calls counted no more than the compensations that were kept
//!   (never run) among those the owner could commit (its own, which a run's success also
//!   commits, and what dropped runs left), and exactly those when no run succeeded: one a
//!   rollback was running is never counted as committed.
//!
//! The seed count is bounded so that the test stays well under 30 s in a debug build.
//!
//! # Why no `loom` model
//!
//! The scope's state is one `std::sync::Mutex` (every change is a single critical section,
//! so no interleaving inside a change exists to explore) plus a `tokio::sync::Mutex` that
//! makes rollbacks take turns, and the rollback is an `async` state machine driven by Tokio.
//! loom can only model `loom::sync` primitives, in a `loom::model` closure, without a Tokio
//! runtime: modelling the scope would mean swapping its mutexes for `loom` ones under
//! `cfg(loom)` and rewriting the rollback's turn-taking without Tokio, i.e. checking a
//! different program from the one shipped. The interleavings that matter here are between
//! critical sections (register / commit / start / finish / interrupt / end of a run), which
//! this test drives on real threads at random across thousands of seeds, checking the
//! outcome of every single compensation.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::{self, Either};
use futures::stream;
use result_stream::{
    BoxError, Compensation, CompensationScope, ResultStreamExt, RetryPolicy, RollbackReport,
    UnitOfWork,
};
use tokio::task::yield_now;
use tokio_util::sync::CancellationToken;

/// splitmix64: a small deterministic generator, one per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

async fn yields(n: u64) {
    for _ in 0..n {
        yield_now().await;
    }
}

/// What happened to one compensation.
#[derive(Default)]
struct Counts {
    started: AtomicU32,
    finished: AtomicU32,
    succeeded: AtomicU32,
    /// Starts after it had succeeded.
    rerun_after_success: AtomicU32,
    dropped: AtomicU32,
}

/// Who registered a probe: a run's item (run index, item) or the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registrar {
    Item { run: usize, item: usize },
    Owner,
}

#[derive(Default)]
struct Ledger {
    /// Who registered each probe, what happened to it, and whether it fails on purpose.
    probes: Mutex<Vec<(Registrar, Arc<Counts>, bool)>>,
}

impl Ledger {
    /// A new probe and its label (its index in the ledger).
    fn probe(&self, registrar: Registrar, yields: u64, fails: bool) -> (String, Probe) {
        let counts = Arc::new(Counts::default());
        let mut probes = self.probes.lock().unwrap();
        let label = probes.len().to_string();
        probes.push((registrar, counts.clone(), fails));
        (
            label,
            Probe {
                counts,
                yields,
                fails,
            },
        )
    }
}

/// The labels of the failures in `report`: the failing probes it took out of the scope.
fn failed_labels(report: &RollbackReport) -> Vec<String> {
    report
        .failures()
        .iter()
        .filter_map(|failure| failure.label().map(str::to_owned))
        .collect()
}

/// A compensation that records its starts, finishes and drop.
struct Probe {
    counts: Arc<Counts>,
    yields: u64,
    fails: bool,
}

#[result_stream::async_trait]
impl Compensation for Probe {
    async fn compensate(&self) -> Result<(), BoxError> {
        if self.counts.succeeded.load(Ordering::SeqCst) > 0 {
            self.counts
                .rerun_after_success
                .fetch_add(1, Ordering::SeqCst);
        }
        self.counts.started.fetch_add(1, Ordering::SeqCst);
        yields(self.yields).await;
        self.counts.finished.fetch_add(1, Ordering::SeqCst);
        if self.fails {
            return Err("probe failed on purpose".into());
        }
        self.counts.succeeded.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.counts.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// How one run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Succeeded,
    Failed,
    Dropped,
}

/// One run's plan, drawn from the seed before anything runs.
struct Plan {
    items: usize,
    unit: UnitOfWork,
    /// Per item: registrations, yields before the outcome, and whether it fails.
    steps: Vec<(u64, u64, bool)>,
    cancel_after: Option<u64>,
    drop_after: Option<u64>,
    concurrency: usize,
    policy: RetryPolicy,
}

fn plan(rng: &mut Rng) -> Plan {
    let items = rng.below(6) as usize;
    let steps = (0..items)
        .map(|_| (1 + rng.below(2), rng.below(4), rng.chance(15)))
        .collect();
    Plan {
        items,
        unit: if rng.chance(30) {
            UnitOfWork::Run
        } else {
            UnitOfWork::Item
        },
        steps,
        cancel_after: rng.chance(25).then(|| rng.below(12)),
        drop_after: rng.chance(20).then(|| rng.below(12)),
        concurrency: 1 + rng.below(3) as usize,
        policy: RetryPolicy::default().concurrent(1 + rng.below(3) as usize),
    }
}

async fn one_seed(seed: u64) {
    let mut rng = Rng(seed);
    let scope = CompensationScope::new();
    let ledger = Arc::new(Ledger::default());
    let interrupted = Arc::new(AtomicBool::new(false));

    let runs = 1 + rng.below(3) as usize;
    let mut tasks = Vec::new();
    let mut completed_items = Vec::new();
    let mut units = Vec::new();
    for run in 0..runs {
        let plan = plan(&mut rng);
        let completed: Arc<Vec<AtomicBool>> =
            Arc::new((0..plan.items).map(|_| AtomicBool::new(false)).collect());
        completed_items.push(completed.clone());
        units.push(plan.unit);
        let token = CancellationToken::new();
        if let Some(after) = plan.cancel_after {
            let token = token.clone();
            tokio::spawn(async move {
                yields(after).await;
                token.cancel();
            });
        }
        let (ledger, steps, probe_yields) = (ledger.clone(), plan.steps, rng.below(3));
        let future = stream::iter((0..plan.items).map(Ok::<usize, io::Error>))
            .for_each_compensated(scope.clone(), move |item, scope| {
                let (registrations, wait, fails) = steps[item];
                for _ in 0..registrations {
                    let (label, probe) =
                        ledger.probe(Registrar::Item { run, item }, probe_yields, false);
                    scope.register_labeled(label, probe);
                }
                let completed = completed.clone();
                async move {
                    yields(wait).await;
                    if fails {
                        return Err(io::Error::other("write failed"));
                    }
                    completed[item].store(true, Ordering::SeqCst);
                    Ok(())
                }
            })
            .unit_of_work(plan.unit)
            .concurrency(plan.concurrency)
            .rollback_policy(plan.policy)
            .with_cancellation(token);
        let drop_after = plan.drop_after;
        tasks.push(tokio::spawn(async move {
            let result = match drop_after {
                None => future.await,
                Some(after) => {
                    match future::select(Box::pin(future), Box::pin(yields(after))).await {
                        Either::Left((result, _)) => result,
                        Either::Right(((), _dropped)) => return (Ended::Dropped, None),
                    }
                }
            };
            match result {
                Ok(_) => (Ended::Succeeded, None),
                Err(error) => (
                    Ended::Failed,
                    Some((error.report().ran(), failed_labels(error.report()))),
                ),
            }
        }));
    }

    // The owner: registers, commits and rolls back through the scope's own handle.
    let owner_actions: Vec<(u64, u64)> = (0..rng.below(6))
        .map(|_| (rng.below(4), rng.below(8)))
        .collect();
    let owner = {
        let (scope, ledger, interrupted) = (scope.clone(), ledger.clone(), interrupted.clone());
        tokio::spawn(async move {
            let mut committed = 0;
            let mut reported = Vec::new();
            for (action, wait) in owner_actions {
                yields(wait).await;
                match action {
                    0 => {
                        let (label, probe) = ledger.probe(Registrar::Owner, wait % 3, wait == 7);
                        scope.register_labeled(label, probe);
                    }
                    1 => committed += scope.commit(),
                    2 => {
                        let report = scope.rollback(RetryPolicy::default()).await;
                        reported.extend(failed_labels(&report));
                    }
                    _ => {
                        let rollback = scope.rollback(RetryPolicy::default());
                        match future::select(rollback, Box::pin(yields(wait))).await {
                            Either::Left((report, _)) => reported.extend(failed_labels(&report)),
                            Either::Right(_) => interrupted.store(true, Ordering::SeqCst),
                        }
                    }
                }
            }
            (committed, reported)
        })
    };

    let mut ended = Vec::new();
    for task in tasks {
        ended.push(task.await.expect("no run panicked"));
    }
    let (owner_committed, mut reported) = owner.await.expect("the owner did not panic");

    // What is left (dropped runs, the owner's) is the owner's to roll back.
    let last = scope.rollback(RetryPolicy::default()).await;
    reported.extend(failed_labels(&last));
    drop(last); // its failures hold probes
    assert!(scope.is_empty(), "seed {seed}: {} left", scope.len());
    for (_, run_report) in &ended {
        if let Some((_, labels)) = run_report {
            reported.extend(labels.iter().cloned());
        }
    }

    // A run dropped while rolling back interrupts its rollback too.
    let interrupted =
        interrupted.load(Ordering::SeqCst) || ended.iter().any(|(how, _)| *how == Ended::Dropped);
    let probes = ledger.probes.lock().unwrap();
    // Probes the owner's `commit` could have committed (its own, and what dropped runs
    // left): those it counted were never run; so were those a run's success committed.
    let mut kept_by_owner = 0;
    for (index, (registrar, counts, fails)) in probes.iter().enumerate() {
        let started = counts.started.load(Ordering::SeqCst);
        let finished = counts.finished.load(Ordering::SeqCst);
        let dropped = counts.dropped.load(Ordering::SeqCst);
        let what = format!("seed {seed}, {registrar:?}: started {started}, finished {finished}");
        assert_eq!(dropped, 1, "{what}: dropped {dropped} times");
        assert!(
            counts.succeeded.load(Ordering::SeqCst) <= 1,
            "{what}: succeeded twice"
        );
        assert_eq!(
            counts.rerun_after_success.load(Ordering::SeqCst),
            0,
            "{what}: ran again after it succeeded"
        );
        assert!(
            finished <= 1 || (*fails && interrupted),
            "{what}: ran twice"
        );
        assert!(
            started <= 1 || interrupted,
            "{what}: rerun with no interrupted rollback"
        );
        let label = index.to_string();
        let reports = reported.iter().filter(|l| **l == label).count();
        if !*fails {
            assert_eq!(reports, 0, "{what}: reported as failed");
        } else {
            assert!(reports <= 1, "{what}: in {reports} reports");
            assert!(
                finished == 0 || reports == 1 || interrupted,
                "{what}: failed, in no report, with no interrupted rollback"
            );
        }
        let Registrar::Item { run, item } = *registrar else {
            // A failing probe left the scope by a resolved rollback (in its report), or
            // was committed; any other by succeeding, or was committed.
            let kept = if *fails {
                reports == 0
            } else {
                counts.succeeded.load(Ordering::SeqCst) == 0
            };
            kept_by_owner += usize::from(kept);
            continue;
        };
        let completed = completed_items[run][item].load(Ordering::SeqCst);
        let kept = match (ended[run].0, units[run]) {
            (Ended::Succeeded, _) => Some(true),
            (Ended::Failed, UnitOfWork::Run) => Some(false),
            (Ended::Failed, _) => Some(completed),
            (Ended::Dropped, UnitOfWork::Item) if completed => Some(true),
            // Left in the scope: the owner may have committed it, or rolled it back.
            (Ended::Dropped, _) => None,
        };
        match kept {
            Some(true) => assert_eq!(finished, 0, "{what}: a committed item was undone"),
            Some(false) => assert_eq!(finished, 1, "{what}: an item was not undone"),
            None => kept_by_owner += usize::from(finished == 0),
        }
    }
    let what = format!("seed {seed}: the owner's commits counted {owner_committed}");
    if ended.iter().any(|(how, _)| *how == Ended::Succeeded) {
        assert!(
            owner_committed <= kept_by_owner,
            "{what}, kept {kept_by_owner}"
        );
    } else {
        assert_eq!(
            owner_committed, kept_by_owner,
            "{what}, kept {kept_by_owner}"
        );
    }
    for (run, (how, ran)) in ended.iter().enumerate() {
        if let (Ended::Failed, Some((ran, _))) = (how, ran) {
            let own = probes
                .iter()
                .filter(|(registrar, counts, _)| {
                    matches!(registrar, Registrar::Item { run: r, .. } if *r == run)
                        && counts.finished.load(Ordering::SeqCst) == 1
                })
                .count();
            assert!(
                *ran >= own,
                "seed {seed}: run {run} reported {ran}, ran {own}"
            );
        }
    }
}

#[test]
fn runs_sharing_a_scope_commit_or_undo_each_compensation_exactly_once() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let seeds: u64 = std::env::var("STRESS_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    for seed in 0..seeds {
        runtime.block_on(one_seed(seed));
    }
}
