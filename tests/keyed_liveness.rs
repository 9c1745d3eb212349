//! Liveness of both batchers under an upstream that never returns `Pending`: a `poll_next`
//! returns after a bounded number of upstream values (a cooperative yield: the task is woken
//! and `Pending` returned), and a deadline that has passed is honoured, with reason
//! `Deadline`, after a bounded amount of work, whatever the keys.

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::paused_runtime;
use common::wakers::CountingWaker;
use futures::stream::{self, Stream, StreamExt};
use result_stream::{FlushReason, ResultStreamExt};

/// The most upstream values one `poll_next` takes (the documented budget).
const BUDGET: u64 = 4_096;

type E = std::io::Error;

/// Values of the flood: far more than any budget (and finite, so that an adapter without a
/// budget fails these tests instead of hanging them).
const FLOOD: u64 = 1_000_000;

/// A ready upstream: `first`, then `1, 2, 3, ...`, counting what is pulled.
fn flood(first: u64, pulled: Arc<AtomicU64>) -> impl Stream<Item = Result<u64, E>> {
    stream::iter(std::iter::once(first).chain(1..FLOOD)).map(move |v| {
        pulled.fetch_add(1, Ordering::Relaxed);
        Ok(v)
    })
}

/// Polls once with a counting waker; returns the poll and how many wakes it caused.
fn poll_once<S: Stream + ?Sized>(s: Pin<&mut S>) -> (Poll<Option<S::Item>>, usize) {
    let waker = Arc::new(CountingWaker::default());
    let polled = s.poll_next(&mut Context::from_waker(&Waker::from(waker.clone())));
    (polled, waker.0.load(Ordering::Relaxed))
}

#[test]
fn keyed_poll_returns_after_a_bounded_number_of_values_of_new_keys() {
    let rt = paused_runtime();
    let _guard = rt.enter();
    let pulled = Arc::new(AtomicU64::new(0));
    let mut s = Box::pin(flood(0, pulled.clone()).chunks_timeout_by_key_result(
        |&v| v,
        10,
        Duration::from_secs(2),
    ));
    for round in 1..=3 {
        let (polled, wakes) = poll_once(s.as_mut());
        assert!(polled.is_pending(), "round {round}: {polled:?}");
        assert_eq!(wakes, 1, "a cooperative yield wakes its task");
        assert!(pulled.load(Ordering::Relaxed) <= round * BUDGET);
    }
    assert_eq!(s.open_keys() as u64, pulled.load(Ordering::Relaxed));
}

#[test]
fn keyed_expired_deadline_is_honoured_during_a_flood_of_new_keys() {
    let rt = paused_runtime();
    rt.block_on(async {
        let pulled = Arc::new(AtomicU64::new(0));
        let mut s = Box::pin(
            flood(0, pulled.clone())
                .chunks_timeout_by_key_result(|&v| v, 10, Duration::from_secs(2))
                .with_batch_info(),
        );
        let (polled, _) = poll_once(s.as_mut());
        assert!(polled.is_pending());
        tokio::time::advance(Duration::from_secs(4)).await;
        let before = pulled.load(Ordering::Relaxed);
        let (key, (batch, info)) = s.next().await.unwrap().unwrap();
        assert_eq!((key, batch), (0, vec![0]));
        assert_eq!(info.reason(), FlushReason::Deadline);
        assert!(pulled.load(Ordering::Relaxed) - before <= BUDGET);
    });
}

#[test]
fn keyed_hot_key_with_a_huge_cap_yields_after_a_bounded_number_of_values() {
    let rt = paused_runtime();
    rt.block_on(async {
        let pulled = Arc::new(AtomicU64::new(0));
        let mut s = Box::pin(
            flood(0, pulled.clone())
                .map(|v| v.map(|v| v % 2))
                .chunks_timeout_by_key_result(|&v| v, usize::MAX, Duration::from_secs(2)),
        );
        let (polled, wakes) = poll_once(s.as_mut());
        assert!(polled.is_pending() && wakes == 1);
        assert!(pulled.load(Ordering::Relaxed) <= BUDGET);
        tokio::time::advance(Duration::from_secs(2)).await;
        let (key, batch) = s.next().await.unwrap().unwrap();
        assert_eq!(s.last_flush_reason(), Some(FlushReason::Deadline));
        assert_eq!(key, 0, "the key whose batch opened first");
        assert!(batch.len() as u64 <= 2 * BUDGET, "{}", batch.len());
    });
}

#[test]
fn poll_returns_after_a_bounded_number_of_values_with_a_huge_cap() {
    let rt = paused_runtime();
    let _guard = rt.enter();
    let pulled = Arc::new(AtomicU64::new(0));
    let mut s = Box::pin(
        flood(0, pulled.clone()).chunks_timeout_result(usize::MAX, Duration::from_secs(2)),
    );
    for round in 1..=3 {
        let (polled, wakes) = poll_once(s.as_mut());
        assert!(polled.is_pending(), "round {round}");
        assert_eq!(wakes, 1, "a cooperative yield wakes its task");
        assert!(pulled.load(Ordering::Relaxed) <= round * BUDGET);
    }
    assert_eq!(
        s.buffered_values().len() as u64,
        pulled.load(Ordering::Relaxed)
    );
}

#[test]
fn expired_deadline_is_honoured_on_an_endless_ready_upstream() {
    let rt = paused_runtime();
    rt.block_on(async {
        let pulled = Arc::new(AtomicU64::new(0));
        let mut s = Box::pin(
            flood(0, pulled.clone())
                .chunks_timeout_result(usize::MAX, Duration::from_secs(2))
                .with_batch_info(),
        );
        let (polled, _) = poll_once(s.as_mut());
        assert!(polled.is_pending());
        tokio::time::advance(Duration::from_secs(2)).await;
        let (batch, info) = s.next().await.unwrap().unwrap();
        assert_eq!(info.reason(), FlushReason::Deadline);
        assert_eq!(batch.len() as u64, pulled.load(Ordering::Relaxed));
        assert!(batch.len() as u64 <= 2 * BUDGET, "{}", batch.len());
        assert!(
            batch
                .iter()
                .copied()
                .eq((0..batch.len() as u64).map(|v| v.min(1) * v))
        );
    });
}
