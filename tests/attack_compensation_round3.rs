//! Round-3 attack on the rewritten engine of `for_each_compensated`: a model check over
//! random schedules of items (register, sleep, commit, roll back, child scopes, the run's
//! handle, kept handles, ok or fail, retries, time limits, skips, upstream errors,
//! cancellation) at concurrency 1..4: every compensation runs exactly once or is committed.

mod compensation_common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use compensation_common::lock;
use futures::stream;
use proptest::prelude::*;
use result_stream::{
    Backoff, Cause, Compensation, CompensationScope, ItemScope, ResultStreamExt, RetryPolicy,
};
use tokio_util::sync::CancellationToken;

type Err = String;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------------------
// The ledger: what each compensation is, who owns it in the model, and how often it ran.
// ---------------------------------------------------------------------------------------

/// Where a compensation stands in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Registered by an attempt that never finished (dropped by a stop).
    Pending,
    /// Committed through the item's handle or a child's `commit`: never runs.
    Committed,
    /// Run by the handler's own `rollback` (item or child): ran once, then.
    RolledBack,
    /// Its attempt returned `Ok`: committed with the item (or, all or nothing, the run's).
    AttemptOk,
    /// Its attempt returned `Err`: the attempt's undo or the run's rollback runs it.
    AttemptFailed,
    /// Registered through the run's own handle: the run's.
    Run,
    /// Registered through a kept clone of an ended item's handle while the run is live:
    /// the run's.
    Late,
    /// The same, after the run resolved: the scope's, for its own handles.
    AfterRun,
}

struct Record {
    item: u32,
    fate: Fate,
    started: usize,
    ran: usize,
    dropped: bool,
}

#[derive(Default)]
struct Ledger {
    records: Mutex<Vec<Record>>,
    /// Completed compensations in order, and `u64::MAX` when the run was told to stop.
    log: Mutex<Vec<u64>>,
    /// Set as soon as the run resolved.
    resolved: std::sync::atomic::AtomicBool,
    /// The tasks that register through kept handles.
    late: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The items whose last attempt returned `Ok`.
    succeeded: Mutex<std::collections::BTreeSet<u32>>,
}

/// Marks its compensation dropped (committed, or done with after running).
struct Dropped(Arc<Ledger>, usize);

impl Drop for Dropped {
    fn drop(&mut self) {
        lock(&self.0.records)[self.1].dropped = true;
    }
}

impl Ledger {
    /// A new compensation of `item`, recorded as `fate`; it sleeps `sleep` ms when run.
    fn undo(
        self: &Arc<Self>,
        item: u32,
        fate: Fate,
        sleep: (u64, bool),
    ) -> (usize, impl Compensation + use<>) {
        let id = {
            let mut records = lock(&self.records);
            records.push(Record {
                item,
                fate,
                started: 0,
                ran: 0,
                dropped: false,
            });
            records.len() - 1
        };
        let guard = Dropped(self.clone(), id);
        let ledger = self.clone();
        let action = move || {
            let _keep = &guard;
            let ledger = ledger.clone();
            async move {
                lock(&ledger.records)[id].started += 1;
                if sleep.0 > 0 {
                    pause(sleep.0, sleep.1).await;
                }
                lock(&ledger.records)[id].ran += 1;
                lock(&ledger.log).push(id as u64);
                Ok::<(), std::io::Error>(())
            }
        };
        (id, action)
    }

    fn set(&self, ids: &[usize], fate: Fate) {
        let mut records = lock(&self.records);
        ids.iter().for_each(|&id| records[id].fate = fate);
    }

    fn stop_marker(&self) {
        lock(&self.log).push(u64::MAX);
    }
}

// ---------------------------------------------------------------------------------------
// The plan of a run.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    /// Register `k` compensations through the item's handle.
    Reg(u8),
    Sleep(u8),
    Yield,
    /// `ItemScope::commit`: drops exactly what this item registered and did not end.
    Commit,
    /// `ItemScope::rollback`: runs exactly that.
    Rollback,
    /// A child of the item: register `k` (a sleep between each), then commit (0), roll back
    /// (1) or absorb (2).
    Child(u8, u8),
    /// Register through a clone of the run's own handle.
    RunReg,
    /// Keep a clone of the handle: once the handler's future is dropped, a task registers
    /// `k` through it (only with one attempt and no skip: the item then has one end).
    Late(u8),
}

#[derive(Debug, Clone)]
struct Attempt {
    steps: Vec<Step>,
    ok: bool,
}

#[derive(Debug, Clone)]
struct Plan {
    items: Vec<Vec<Attempt>>,
    concurrency: usize,
    attempts: u32,
    backoff: u8,
    skip: bool,
    all_or_nothing: bool,
    cancel_at: Option<u16>,
    /// A time limit on each attempt (a timed-out attempt is dropped where it is).
    time_limit: Option<u8>,
    undo_sleep: u8,
    undo_concurrent: bool,
    /// An upstream `Err` before this item, and whether it is handed to a callback.
    upstream_err: Option<(usize, bool)>,
    /// On a multi-threaded runtime, every wait woken from another OS thread (real time).
    threads: bool,
}

/// Waits `n` units: `n` ms of the paused clock, or `20 * n` µs woken from an OS thread.
async fn pause(n: u64, threads: bool) {
    if !threads {
        return tokio::time::sleep(ms(n)).await;
    }
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_micros(20 * n));
        let _ = tx.send(());
    });
    rx.await.unwrap();
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1..4u8).prop_map(Step::Reg),
        3 => (0..20u8).prop_map(Step::Sleep),
        1 => Just(Step::Yield),
        1 => Just(Step::Commit),
        1 => Just(Step::Rollback),
        1 => (0..3u8, 0..3u8).prop_map(|(k, end)| Step::Child(k, end)),
        1 => Just(Step::RunReg),
        1 => (1..3u8).prop_map(Step::Late),
    ]
}

fn attempt() -> impl Strategy<Value = Attempt> {
    (
        prop::collection::vec(step(), 0..6),
        prop::bool::weighted(0.75),
    )
        .prop_map(|(steps, ok)| Attempt { steps, ok })
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        prop::collection::vec(prop::collection::vec(attempt(), 1..3), 0..9),
        1..5usize,
        1..4u32,
        0..5u8,
        (any::<bool>(), any::<bool>()),
        (
            prop::option::weighted(0.3, 0..80u16),
            prop::option::weighted(0.3, 3..30u8),
        ),
        (prop_oneof![Just(0u8), 1..4u8], any::<bool>()),
        prop::option::weighted(0.2, (0..9usize, any::<bool>())),
    )
        .prop_map(
            |(
                items,
                concurrency,
                attempts,
                backoff,
                (skip, aon),
                (cancel_at, time_limit),
                undo,
                upstream_err,
            )| {
                Plan {
                    items,
                    concurrency,
                    attempts,
                    backoff,
                    skip,
                    all_or_nothing: aon && !skip,
                    cancel_at,
                    time_limit,
                    undo_sleep: undo.0,
                    undo_concurrent: undo.1,
                    upstream_err,
                    threads: false,
                }
            },
        )
}

/// One attempt of one item, as the plan says; keeps the model in the ledger.
async fn handle(
    ledger: Arc<Ledger>,
    plan: Arc<Plan>,
    run: CompensationScope,
    item: u32,
    attempt: usize,
    scope: ItemScope,
) -> Result<(), Err> {
    let script = &plan.items[item as usize];
    let Attempt { steps, ok } = &script[attempt.min(script.len() - 1)];
    let sleep = (u64::from(plan.undo_sleep), plan.threads);
    // What this attempt registered through its handle and has not ended.
    let mut mine = Vec::new();
    // Dropped with the handler's future: tells the kept handles' tasks the item ended.
    let mut ended = Vec::new();
    for step in steps {
        match *step {
            Step::Reg(k) => {
                for _ in 0..k {
                    let (id, undo) = ledger.undo(item, Fate::Pending, sleep);
                    scope.register(undo);
                    mine.push(id);
                }
            }
            Step::Sleep(n) => pause(u64::from(n), plan.threads).await,
            Step::Yield => tokio::task::yield_now().await,
            Step::Commit => {
                let committed = scope.commit();
                assert_eq!(committed, mine.len(), "item {item}: commit took others'");
                ledger.set(&mine, Fate::Committed);
                mine.clear();
            }
            Step::Rollback => {
                let report = scope.rollback(RetryPolicy::default()).await;
                assert_eq!(
                    report.ran(),
                    mine.len(),
                    "item {item}: rollback ran others'"
                );
                ledger.set(&mine, Fate::RolledBack);
                mine.clear();
            }
            Step::Child(k, end) => {
                let child = scope.child();
                let mut its = Vec::new();
                for _ in 0..k {
                    let (id, undo) = ledger.undo(item, Fate::Pending, sleep);
                    child.register(undo);
                    its.push(id);
                    // Dropped here by a stop, the child is absorbed into the item.
                    mine.push(id);
                    pause(1, plan.threads).await;
                }
                mine.truncate(mine.len() - its.len());
                match end {
                    0 => {
                        assert_eq!(child.commit(), its.len(), "item {item}: child commit");
                        ledger.set(&its, Fate::Committed);
                    }
                    1 => {
                        let report = child.rollback(RetryPolicy::default()).await;
                        assert_eq!(report.ran(), its.len(), "item {item}: child rollback");
                        ledger.set(&its, Fate::RolledBack);
                    }
                    _ => {
                        child.absorb();
                        mine.extend(its);
                    }
                }
            }
            Step::Late(k) if plan.attempts == 1 && !plan.skip && !plan.threads => {
                let (tx, rx) = futures::channel::oneshot::channel::<()>();
                ended.push(tx);
                let (kept, l) = (scope.clone(), ledger.clone());
                let task = tokio::spawn(async move {
                    let (_, ledger) = (rx.await, l);
                    let fate = match ledger.resolved.load(std::sync::atomic::Ordering::SeqCst) {
                        true => Fate::AfterRun,
                        false => Fate::Late,
                    };
                    for _ in 0..k {
                        let (_, undo) = ledger.undo(item, fate, sleep);
                        kept.register(undo);
                    }
                });
                lock(&ledger.late).push(task);
            }
            Step::Late(_) => {}
            Step::RunReg => {
                let (_, undo) = ledger.undo(item, Fate::Run, sleep);
                run.register(undo);
            }
        }
    }
    if *ok {
        ledger.set(&mine, Fate::AttemptOk);
        lock(&ledger.succeeded).insert(item);
        Ok(())
    } else {
        ledger.set(&mine, Fate::AttemptFailed);
        let last = attempt + 1 >= plan.attempts as usize;
        if last && !plan.skip {
            // The run stops in this very poll: no handler code runs after this.
            ledger.stop_marker();
        }
        Err(format!("item {item} attempt {attempt}"))
    }
}

/// Runs `plan` on a paused clock and checks every compensation against the model.
fn check(plan: Plan) {
    let rt = match plan.threads {
        true => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build(),
        false => tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build(),
    };
    rt.unwrap().block_on(async move {
        let plan = Arc::new(plan);
        let ledger = Arc::new(Ledger::default());
        let scope = CompensationScope::new();
        let run_handle = Arc::new(OnceLock::<CompensationScope>::new());
        let tries = Arc::new(Mutex::new(BTreeMap::<u32, usize>::new()));
        let skipped = Arc::new(Mutex::new(Vec::new()));
        let mut values: Vec<Result<u32, Err>> = (0..plan.items.len() as u32).map(Ok).collect();
        if let Some((at, _)) = plan.upstream_err {
            values.insert(at.min(values.len()), Err("upstream".to_owned()));
        }
        let (l, p, r, t) = (
            ledger.clone(),
            plan.clone(),
            run_handle.clone(),
            tries.clone(),
        );
        let mut fut = stream::iter(values)
            .for_each_compensated(scope.clone(), move |item: u32, scope| {
                let attempt = {
                    let mut tries = lock(&t);
                    let n = tries.entry(item).or_default();
                    *n += 1;
                    *n - 1
                };
                let run = r.get().expect("set before the first poll").clone();
                handle(l.clone(), p.clone(), run, item, attempt, scope)
            })
            .concurrency(plan.concurrency)
            .rollback_policy(match plan.undo_concurrent {
                true => RetryPolicy::default().concurrent(3),
                false => RetryPolicy::default(),
            });
        if plan.attempts > 1 || plan.time_limit.is_some() {
            let backoff = Backoff::Fixed(ms(u64::from(plan.backoff)));
            let mut policy = RetryPolicy::default()
                .attempts(plan.attempts)
                .backoff(backoff);
            if let Some(limit) = plan.time_limit {
                policy = policy.attempt_timeout(ms(u64::from(limit)));
            }
            fut = fut.retry(policy);
        }
        if plan.skip {
            let skipped = skipped.clone();
            fut = fut.skip_failed_items(move |index, error| {
                assert!(error.is_rolled_back_cleanly());
                lock(&skipped).push(index);
            });
        }
        if plan.all_or_nothing {
            fut = fut.all_or_nothing();
        }
        if let Some((_, true)) = plan.upstream_err {
            fut = fut.skip_upstream_errors(|_| {});
        }
        if let Some(at) = plan.cancel_at {
            let token = CancellationToken::new();
            fut = fut.with_cancellation(token.clone());
            let (ledger, threads) = (ledger.clone(), plan.threads);
            tokio::spawn(async move {
                pause(u64::from(at), threads).await;
                ledger.stop_marker();
                token.cancel();
            });
        }
        run_handle.set(fut.scope().clone()).ok().unwrap();
        let result = tokio::time::timeout(Duration::from_secs(60), fut)
            .await
            .expect("the run hung");
        ledger
            .resolved
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let failed = result.is_err();
        let late = std::mem::take(&mut *lock(&ledger.late));
        for task in late {
            task.await.unwrap();
        }
        let after = lock(&ledger.records)
            .iter()
            .filter(|r| r.fate == Fate::AfterRun)
            .count();
        assert_eq!(
            scope.len(),
            after,
            "only what kept handles registered late is left"
        );
        // The run's log ends here: what follows is the scope's own rollback.
        let logged = lock(&ledger.log).len();
        let report = scope.rollback(RetryPolicy::default()).await;
        assert_eq!(report.ran(), after);
        // What each item did, in the model.
        let succeeded = lock(&ledger.succeeded).clone();
        let final_ok = |item: u32| succeeded.contains(&item);
        match &result {
            Ok(done) => {
                let ok = (0..plan.items.len() as u32)
                    .filter(|&i| final_ok(i))
                    .count();
                assert_eq!(done.items(), ok as u64, "items");
                assert_eq!(done.skipped() as usize, lock(&skipped).len(), "skipped");
                assert!(
                    plan.skip || ok == plan.items.len(),
                    "a failed item did not stop"
                );
            }
            Err(error) => {
                assert!(error.is_rolled_back_cleanly(), "{error}");
                match error.cause() {
                    Cause::Cancelled => assert!(plan.cancel_at.is_some()),
                    Cause::Upstream(_) => assert!(matches!(plan.upstream_err, Some((_, false)))),
                    Cause::Handler(_) => assert!(!plan.skip),
                    Cause::TimedOut(_) => assert!(!plan.skip && plan.time_limit.is_some()),
                    other => panic!("unexpected cause {other:?}"),
                }
            }
        }
        let records = lock(&ledger.records);
        for (id, r) in records.iter().enumerate() {
            let expect = match r.fate {
                Fate::Committed => 0,
                Fate::RolledBack | Fate::AttemptFailed => 1,
                Fate::AttemptOk => usize::from(plan.all_or_nothing && failed),
                // Its attempt was dropped: by a stop, or by its time limit (then its undo
                // ran it).
                Fate::Pending => 1,
                Fate::Run | Fate::Late => usize::from(failed),
                Fate::AfterRun => 1,
            };
            assert_eq!(
                r.ran, expect,
                "compensation {id} of item {} ({:?}) ran {} times (failed run: {failed})",
                r.item, r.fate, r.ran
            );
            assert!(r.dropped, "compensation {id} ({:?}) is still held", r.fate);
        }
        assert!(scope.is_empty(), "{} left in the scope", scope.len());
        // Newest first: with no undo of its own in progress, the run's rollback runs what is
        // left in registration order reversed.
        let log = lock(&ledger.log)[..logged].to_vec();
        let cancel_races = plan.threads && plan.cancel_at.is_some();
        if failed && plan.attempts == 1 && !plan.skip && !plan.undo_concurrent && !cancel_races {
            if let Some(stop) = log.iter().position(|&id| id == u64::MAX) {
                let after: Vec<u64> = log[stop + 1..]
                    .iter()
                    .copied()
                    // A kept handle may register while the rollback runs: it is picked
                    // up then, after older ones; leave those out.
                    .filter(|&id| id != u64::MAX && records[id as usize].fate != Fate::Late)
                    .collect();
                let mut newest_first = after.clone();
                newest_first.sort_unstable_by(|a, b| b.cmp(a));
                assert_eq!(
                    after, newest_first,
                    "the run's rollback is not newest first"
                );
            }
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    /// Rules: every compensation runs exactly once or is committed; an item's handle
    /// commits and rolls back only its own; the run's rollback runs every uncommitted one
    /// (failed or in-flight items, the run's handle), newest first; all or nothing absorbs;
    /// retries undo their attempt; skips roll back alone; nothing is left in the scope.
    #[test]
    fn every_compensation_runs_exactly_once_or_is_committed(plan in plan()) {
        check(plan);
    }

    /// The same on a multi-threaded runtime, every handler and compensation woken from
    /// another OS thread, and the run polled on whichever worker: no wake is lost (the run
    /// would hang), and the same exactly-once rules hold.
    #[test]
    fn every_compensation_runs_exactly_once_with_wakes_from_other_threads(plan in plan()) {
        check(Plan { threads: true, ..plan });
    }
}

/// Rule (`for_each_compensated` rustdoc): "if this future is dropped, or `f` panics, in the
/// middle of an item, the compensations registered so far stay in `scope`". Pinned here
/// where nothing else pins it: a panic in one item while another item's failed attempt is
/// being undone (general path, retry): the undo in progress is dropped with the future and
/// what it had not finished goes back to the scope; the scope's rollback then completes
/// every compensation exactly once.
#[tokio::test(start_paused = true)]
async fn a_panic_during_another_items_undo_leaves_everything_for_the_scope() {
    use futures::FutureExt as _;
    let ledger = Arc::new(Ledger::default());
    let scope = CompensationScope::new();
    let l = ledger.clone();
    let run = stream::iter((0..2u32).map(Ok::<u32, Err>))
        .for_each_compensated(scope.clone(), move |item, scope| {
            let ledger = l.clone();
            async move {
                for _ in 0..2 {
                    scope.register(ledger.undo(item, Fate::Pending, (5, false)).1);
                }
                if item == 0 {
                    return Err("first attempt".to_owned());
                }
                tokio::time::sleep(ms(7)).await;
                panic!("handler bug");
            }
        })
        .concurrency(2)
        .retry(RetryPolicy::default().attempts(2));
    let panicked = std::panic::AssertUnwindSafe(run).catch_unwind().await;
    assert!(panicked.is_err());
    let report = scope.rollback(RetryPolicy::default()).await;
    assert!(report.is_complete());
    for (id, r) in lock(&ledger.records).iter().enumerate() {
        assert_eq!(
            r.ran, 1,
            "compensation {id} of item {} ran {} times",
            r.item, r.ran
        );
        assert!(r.dropped);
    }
    assert!(scope.is_empty());
}
