//! Hostile tests of both batchers around the cooperative budget (4,096 values per poll),
//! the shared timer's waker bookkeeping, the weight arithmetic and the memory kept for keys
//! whose batches fill: values lost or reordered under random schedules, a waker left
//! unregistered, a batch over a limit, an error overtaking values.

mod common;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::paused_runtime;
use common::wakers::CountingWaker;
use futures::stream::{self, Stream, StreamExt};
use proptest::prelude::*;
use result_stream::ResultStreamExt;

type E = &'static str;

/// Drains `s` by hand: every `Pending` must come with a wake of the waker it was given
/// (the upstream here never pends, so only a cooperative yield or a timer returns
/// `Pending`, and the test advances no clock), or the run would hang.
fn drain<S: Stream + Unpin>(mut s: S) -> Vec<S::Item> {
    let waker = Arc::new(CountingWaker::default());
    let as_waker = Waker::from(waker.clone());
    let mut cx = Context::from_waker(&as_waker);
    let mut out = Vec::new();
    loop {
        let before = waker.0.load(Ordering::SeqCst);
        match Pin::new(&mut s).poll_next(&mut cx) {
            Poll::Ready(Some(item)) => out.push(item),
            Poll::Ready(None) => return out,
            Poll::Pending => assert!(
                waker.0.load(Ordering::SeqCst) > before,
                "Pending without a wake after {} items",
                out.len()
            ),
        }
    }
}

/// `n` values `0..n` keyed `v % keys`, with an error after `error_at` values if given.
fn input(n: u64, error_at: Option<u64>) -> Vec<Result<u64, E>> {
    let mut items: Vec<Result<u64, E>> = (0..n).map(Ok).collect();
    if let Some(at) = error_at {
        items.insert(at.min(n) as usize, Err("boom"));
    }
    items
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// A ready upstream far longer than the budget, many or few keys, small or huge caps,
    /// and an error somewhere: every value comes out once, in order within its key, every
    /// batch within `max_items`, and no value that came before the error comes after it.
    #[test]
    fn keyed_budget_yields_lose_and_reorder_nothing(
        n in 1u64..12_000,
        keys in prop::sample::select(vec![1u64, 3, 5_000, 20_000]),
        max_items in prop::sample::select(vec![1usize, 7, 4_096, 5_000, usize::MAX]),
        error_at in prop::option::of(0u64..12_000),
    ) {
        let rt = paused_runtime();
        let _guard = rt.enter();
        let s = Box::pin(
            stream::iter(input(n, error_at))
                .chunks_timeout_by_key_result(move |v| v % keys, max_items, Duration::from_secs(60)),
        );
        let out = drain(s);
        let mut seen: HashMap<u64, Vec<u64>> = HashMap::new();
        let mut error_seen = false;
        for item in out {
            match item {
                Ok((key, batch)) => {
                    prop_assert!(!batch.is_empty() && batch.len() <= max_items);
                    for v in batch {
                        prop_assert_eq!(v % keys, key);
                        if let Some(at) = error_at {
                            prop_assert_eq!(v < at.min(n), !error_seen, "value {} vs the error", v);
                        }
                        seen.entry(key).or_default().push(v);
                    }
                }
                Err(_) => error_seen = true,
            }
        }
        prop_assert_eq!(error_seen, error_at.is_some());
        let total: usize = seen.values().map(Vec::len).sum();
        prop_assert_eq!(total as u64, n);
        for values in seen.values() {
            prop_assert!(values.windows(2).all(|w| w[0] < w[1]), "order within a key");
        }
    }

    /// The same for the single batcher, with a weight cap near `usize::MAX`: batches within
    /// both caps (a sum that would overflow is past the cap), everything once and in order.
    #[test]
    fn budget_yields_and_huge_weights_lose_nothing_and_break_no_cap(
        n in 1u64..12_000,
        max_items in prop::sample::select(vec![1usize, 7, 4_097, usize::MAX]),
        max_weight in prop::sample::select(vec![usize::MAX, usize::MAX / 2, 10]),
        heavy_every in 1u64..50,
        error_at in prop::option::of(0u64..12_000),
    ) {
        let rt = paused_runtime();
        let _guard = rt.enter();
        let weigh = move |v: &u64| if v % heavy_every == 0 { usize::MAX / 3 } else { (*v % 4) as usize };
        let s = Box::pin(
            stream::iter(input(n, error_at))
                .chunks_timeout_result(max_items, Duration::from_secs(60))
                .max_weight(max_weight, weigh),
        );
        let mut all = Vec::new();
        let mut error_seen = false;
        for item in drain(s) {
            match item {
                Ok(batch) => {
                    prop_assert!(!batch.is_empty() && batch.len() <= max_items);
                    if batch.len() > 1 {
                        let sum = batch.iter().try_fold(0usize, |sum, v| sum.checked_add(weigh(v)));
                        prop_assert!(sum.is_some_and(|sum| sum <= max_weight), "{:?}", sum);
                    }
                    for v in batch {
                        if let Some(at) = error_at {
                            prop_assert_eq!(v < at.min(n), !error_seen);
                        }
                        all.push(v);
                    }
                }
                Err(_) => error_seen = true,
            }
        }
        prop_assert_eq!(all, (0..n).collect::<Vec<_>>());
    }
}

/// The timer is set by one task, then the adapter is polled by another (a different waker):
/// the deadline must wake the task that polled last, not only the first.
#[test]
fn the_deadline_wakes_the_task_that_polled_last() {
    let rt = paused_runtime();
    rt.block_on(async {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<u32, E>>();
        let mut single = Box::pin(rx.chunks_timeout_result(10, Duration::from_secs(1)));
        let (ktx, krx) = futures::channel::mpsc::unbounded::<Result<u32, E>>();
        let mut keyed =
            Box::pin(krx.chunks_timeout_by_key_result(|v| v % 2, 10, Duration::from_secs(1)));
        tx.unbounded_send(Ok(1)).unwrap();
        ktx.unbounded_send(Ok(1)).unwrap();
        let (first, second) = (
            Arc::new(CountingWaker::default()),
            Arc::new(CountingWaker::default()),
        );
        for waker in [&first, &second] {
            let waker = Waker::from(Arc::clone(waker));
            let mut cx = Context::from_waker(&waker);
            assert!(single.as_mut().poll_next(&mut cx).is_pending());
            assert!(keyed.as_mut().poll_next(&mut cx).is_pending());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            second.0.load(Ordering::SeqCst),
            2,
            "one wake from each adapter"
        );
        assert_eq!(single.next().await, Some(Ok(vec![1])));
        assert_eq!(keyed.next().await, Some(Ok((1, vec![1]))));
    });
}

/// A key whose batches fill keeps an empty entry (so that its next batch reserves its full
/// size); that memory must not turn into lost or duplicated values when the key's batches
/// then close by deadline, error or end, or when many such keys are forgotten at once.
#[test]
fn keys_remembered_as_filling_lose_nothing_when_forgotten() {
    let rt = paused_runtime();
    rt.block_on(async {
        // 3,000 keys fill a batch of 2 each, then each gets one more value (closed at the
        // end), then an error, then 3,000 more keys fill again: past 1,024 remembered keys
        // the memory is dropped.
        let mut items: Vec<Result<(u32, u32), E>> = Vec::new();
        for round in 0..2 {
            for key in 0..3_000 {
                items.push(Ok((key, round * 2)));
                items.push(Ok((key, round * 2 + 1)));
            }
        }
        for key in 0..3_000 {
            items.push(Ok((key, 4)));
        }
        items.push(Err("boom"));
        for key in 3_000..6_000 {
            items.push(Ok((key, 0)));
            items.push(Ok((key, 1)));
        }
        let expected = items.iter().filter(|item| item.is_ok()).count();
        let out: Vec<_> = stream::iter(items)
            .chunks_timeout_by_key_result(|v| v.0, 2, Duration::from_secs(60))
            .collect()
            .await;
        let mut per_key: HashMap<u32, Vec<u32>> = HashMap::new();
        for item in out.iter().filter_map(|item| item.as_ref().ok()) {
            for &(key, v) in &item.1 {
                assert_eq!(key, item.0);
                per_key.entry(key).or_default().push(v);
            }
        }
        assert_eq!(per_key.values().map(Vec::len).sum::<usize>(), expected);
        assert_eq!(per_key[&7], vec![0, 1, 2, 3, 4]);
        assert_eq!(per_key[&5_000], vec![0, 1]);
        assert_eq!(out.iter().filter(|item| item.is_err()).count(), 1);
    });
}

/// On a multi-thread runtime, a batch polled `Pending` several times by the same task (its
/// timer polled once, then only checked) must still be yielded when its deadline passes:
/// the timer's "has it fired" must not depend on the time driver's bookkeeping. (Real
/// clock: a multi-thread runtime cannot be paused; the 10 s limit only catches a hang.)
#[test]
fn a_deadline_fires_on_a_multi_thread_runtime_after_repeated_pending_polls() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<u32, E>>();
        let (ktx, krx) = futures::channel::mpsc::unbounded::<Result<u32, E>>();
        let single = tokio::spawn(async move {
            let mut s = std::pin::pin!(rx.chunks_timeout_result(10, Duration::from_millis(200)));
            s.next().await
        });
        let keyed = tokio::spawn(async move {
            let mut s = std::pin::pin!(krx.chunks_timeout_by_key_result(
                |v| v % 2,
                10,
                Duration::from_millis(200)
            ));
            s.next().await
        });
        for v in [1, 3, 5] {
            tx.unbounded_send(Ok(v)).unwrap();
            ktx.unbounded_send(Ok(v)).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let limit = Duration::from_secs(10);
        let single = tokio::time::timeout(limit, single).await.expect("yielded");
        let keyed = tokio::time::timeout(limit, keyed).await.expect("yielded");
        assert_eq!(single.unwrap(), Some(Ok(vec![1, 3, 5])));
        assert_eq!(keyed.unwrap(), Some(Ok((1, vec![1, 3, 5]))));
    });
}

/// A timer first polled when the task is out of tokio's cooperative budget is not
/// registered (the `Sleep` returns `Pending` at once): the next poll by the same task must
/// poll it again, or the deadline never wakes anyone.
#[tokio::test(start_paused = true)]
async fn a_timer_first_polled_out_of_coop_budget_still_fires() {
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<u32, E>>();
    let mut single = std::pin::pin!(rx.chunks_timeout_result(10, Duration::from_secs(1)));
    let (ktx, krx) = futures::channel::mpsc::unbounded::<Result<u32, E>>();
    let mut keyed =
        std::pin::pin!(krx.chunks_timeout_by_key_result(|v| v % 2, 10, Duration::from_secs(1)));
    tx.unbounded_send(Ok(1)).unwrap();
    ktx.unbounded_send(Ok(1)).unwrap();
    let (budget_tx, mut budget_rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    for v in 0..1_000 {
        budget_tx.send(v).unwrap();
    }
    futures::future::poll_fn(|cx| {
        // Each ready receive spends a unit of the task's budget, until it is out.
        while let Poll::Ready(Some(_)) = budget_rx.poll_recv(cx) {}
        assert!(single.as_mut().poll_next(cx).is_pending());
        assert!(keyed.as_mut().poll_next(cx).is_pending());
        Poll::Ready(())
    })
    .await;
    let limit = Duration::from_secs(5);
    let single = tokio::time::timeout(limit, single.next()).await;
    assert_eq!(single, Ok(Some(Ok(vec![1]))));
    let keyed = tokio::time::timeout(limit, keyed.next()).await;
    assert_eq!(keyed, Ok(Some(Ok((1, vec![1])))));
}
