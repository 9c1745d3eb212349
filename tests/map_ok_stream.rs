//! `map_ok_stream`: order, one future at a time, errors pass through, the stream
//! goes on after errors, and the `futures` conventions.
//!
//! Mutation testing: `cargo mutants --test-tool cargo --file src/adapters/map_ok_stream.rs --
//! -p result-stream --test map_ok_stream --test alloc_counts --test send_sync`
//! (cargo-mutants 27.1, 2026-12-01): 24 mutants, 11 caught, 13 unviable, none missed.

mod common;

use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use common::ms;
use futures::stream::{self, FusedStream, Stream};
use futures::{StreamExt, poll};
use result_stream::ResultStreamExt;
use tokio::time::{Instant, sleep};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long value `i`'s future sleeps: uneven, so later futures often take less time than
/// earlier ones and would finish first if they ran concurrently.
fn duration_of(i: u32) -> Duration {
    ms(u64::from((i * 37) % 11 + 1) * 10)
}

#[tokio::test(start_paused = true)]
async fn output_order_is_input_order_even_when_later_futures_are_faster() {
    let start = Instant::now();
    let finished: Arc<Mutex<Vec<(u32, Duration)>>> = Arc::default();
    let finished2 = finished.clone();
    let out: Vec<Result<u32, ()>> = stream::iter((0..20).map(Ok))
        .map_ok_stream(move |i| {
            let finished = finished2.clone();
            async move {
                sleep(duration_of(i)).await;
                lock(&finished).push((i, start.elapsed()));
                Ok(i * 10)
            }
        })
        .collect()
        .await;
    assert_eq!(out, (0..20).map(|i| Ok(i * 10)).collect::<Vec<_>>());

    // One after the other: each future finishes exactly its own duration after the previous.
    let mut expected_at = Duration::ZERO;
    let finished = lock(&finished).clone();
    assert_eq!(finished.len(), 20);
    for (i, at) in finished {
        expected_at += duration_of(i);
        assert_eq!(at, expected_at, "future {i}");
    }
    assert_eq!(start.elapsed(), expected_at);
}

/// Decrements the in-flight counter when the future it lives in finishes or is dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn only_one_future_is_in_flight_at_a_time() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (in_flight2, max_seen2, calls2) = (in_flight.clone(), max_seen.clone(), calls.clone());
    let out: Vec<Result<u32, &str>> = stream::iter(vec![Ok(5), Ok(1), Err("x"), Ok(3), Ok(0)])
        .map_ok_stream(move |i: u32| {
            calls2.fetch_add(1, Ordering::SeqCst);
            let now = in_flight2.fetch_add(1, Ordering::SeqCst) + 1;
            assert_eq!(
                now, 1,
                "f called while the previous future was still running"
            );
            max_seen2.fetch_max(now, Ordering::SeqCst);
            let guard = InFlight(in_flight2.clone());
            async move {
                sleep(ms(u64::from(i) * 100)).await;
                drop(guard);
                Ok(i + 1)
            }
        })
        .collect()
        .await;
    assert_eq!(out, vec![Ok(6), Ok(2), Err("x"), Ok(4), Ok(1)]);
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(max_seen.load(Ordering::SeqCst), 1);
    assert_eq!(in_flight.load(Ordering::SeqCst), 0);
}

/// A stream that counts how often it is polled.
struct Counted<S> {
    inner: S,
    polls: Arc<AtomicUsize>,
}

impl<S: Stream + Unpin> Stream for Counted<S> {
    type Item = S::Item;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        self.inner.poll_next_unpin(cx)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

#[tokio::test(start_paused = true)]
async fn upstream_is_not_polled_while_a_future_is_in_flight() {
    let polls = Arc::new(AtomicUsize::new(0));
    let upstream = Counted {
        inner: stream::iter(vec![Ok::<u32, ()>(1), Ok(2)]),
        polls: polls.clone(),
    };
    let mut s = pin!(upstream.map_ok_stream(|i| async move {
        sleep(ms(100)).await;
        Ok::<_, ()>(i)
    }));
    assert!(poll!(s.next()).is_pending());
    assert_eq!(polls.load(Ordering::SeqCst), 1);
    assert!(poll!(s.next()).is_pending());
    assert!(poll!(s.next()).is_pending());
    assert_eq!(
        polls.load(Ordering::SeqCst),
        1,
        "upstream polled while the future of value 1 was pending"
    );
    assert_eq!(s.next().await, Some(Ok(1)));
    assert_eq!(polls.load(Ordering::SeqCst), 1);
    assert_eq!(s.next().await, Some(Ok(2)));
    assert_eq!(s.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn upstream_errors_pass_through_untouched_and_f_is_not_called_for_them() {
    #[derive(Debug, PartialEq)]
    enum E {
        Upstream(&'static str),
    }
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let seen2 = seen.clone();
    let input = vec![
        Ok(1),
        Err(E::Upstream("a")),
        Ok(2),
        Err(E::Upstream("b")),
        Err(E::Upstream("c")),
        Ok(3),
    ];
    let out: Vec<Result<String, E>> = stream::iter(input)
        .map_ok_stream(move |v: u32| {
            lock(&seen2).push(v);
            async move { Ok(format!("<{v}>")) }
        })
        .collect()
        .await;
    assert_eq!(
        out,
        vec![
            Ok("<1>".to_string()),
            Err(E::Upstream("a")),
            Ok("<2>".to_string()),
            Err(E::Upstream("b")),
            Err(E::Upstream("c")),
            Ok("<3>".to_string()),
        ]
    );
    assert_eq!(*lock(&seen), vec![1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn stream_goes_on_after_errors_from_upstream_and_from_f() {
    let start = Instant::now();
    let input = vec![Ok(1), Ok(2), Err("upstream"), Ok(3), Ok(4)];
    let mut s = pin!(stream::iter(input).map_ok_stream(|v: u32| async move {
        sleep(ms(10)).await;
        if v % 2 == 0 { Err("even") } else { Ok(v) }
    }));
    let mut out = Vec::new();
    while let Some(item) = s.next().await {
        out.push((item, start.elapsed()));
    }
    assert_eq!(
        out,
        vec![
            (Ok(1), ms(10)),
            (Err("even"), ms(20)),
            (Err("upstream"), ms(20)), // passes through without waiting
            (Ok(3), ms(30)),
            (Err("even"), ms(40)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn size_hint_counts_upstream_items_and_the_future_in_flight() {
    let input = vec![Ok::<u32, ()>(1), Ok(2), Ok(3), Ok(4), Ok(5)];
    let mut s = pin!(stream::iter(input).map_ok_stream(|v| async move {
        sleep(ms(10)).await;
        Ok::<_, ()>(v)
    }));
    assert_eq!(s.size_hint(), (5, Some(5)));
    assert_eq!(s.next().await, Some(Ok(1)));
    assert_eq!(s.size_hint(), (4, Some(4)));
    assert!(poll!(s.next()).is_pending()); // value 2 in flight, 3 left upstream
    assert_eq!(s.size_hint(), (4, Some(4)));
    let mut remaining = 4;
    while s.next().await.is_some() {
        remaining -= 1;
        assert_eq!(s.size_hint(), (remaining, Some(remaining)));
    }
    assert_eq!(remaining, 0);

    // An upstream with no upper bound keeps none.
    let (_tx, rx) = futures::channel::mpsc::unbounded::<Result<u32, ()>>();
    let s = rx.map_ok_stream(|v| async move { Ok::<_, ()>(v) });
    assert_eq!(s.size_hint().1, None);
}

#[tokio::test(start_paused = true)]
async fn fused_stream_is_terminated_only_after_the_end() {
    let mut s = pin!(
        stream::iter(vec![Ok::<u32, ()>(1), Err(()), Ok(2)])
            .fuse()
            .map_ok_stream(|v| async move {
                sleep(ms(5)).await;
                Ok::<_, ()>(v)
            })
    );
    assert!(!s.is_terminated());
    assert!(poll!(s.next()).is_pending());
    assert!(!s.is_terminated(), "a future is in flight");
    assert_eq!(s.next().await, Some(Ok(1)));
    assert_eq!(s.next().await, Some(Err(())));
    assert_eq!(s.next().await, Some(Ok(2)));
    assert!(!s.is_terminated());
    assert_eq!(s.next().await, None);
    assert!(s.is_terminated());
    assert_eq!(s.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn accessors_reach_the_underlying_stream() {
    let input = vec![Ok::<u32, ()>(1), Ok(2), Ok(3), Ok(4), Ok(5)];
    let mut s = stream::iter(input).map_ok_stream(|v| async move {
        sleep(ms(1)).await;
        Ok::<_, ()>(v * 10)
    });
    assert_eq!(s.get_ref().size_hint(), (5, Some(5)));
    // get_mut bypasses the adapter.
    assert_eq!(s.get_mut().next().await, Some(Ok(1)));
    assert_eq!(s.get_ref().size_hint(), (4, Some(4)));

    let mut s = Box::pin(s);
    assert_eq!(s.next().await, Some(Ok(20)));
    assert_eq!(s.as_mut().get_pin_mut().next().await, Some(Ok(3)));
    assert_eq!(s.get_ref().size_hint(), (2, Some(2)));
    assert_eq!(s.next().await, Some(Ok(40)));
    assert_eq!(s.next().await, Some(Ok(50)));
    assert_eq!(s.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn into_inner_drops_the_future_in_flight_and_returns_the_rest() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let in_flight2 = in_flight.clone();
    let input = vec![Ok::<u32, ()>(1), Ok(2), Ok(3)];
    // Boxed futures make the adapter Unpin, so it can be moved out after being polled.
    let mut s = stream::iter(input).map_ok_stream(move |v| {
        in_flight2.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(in_flight2.clone());
        Box::pin(async move {
            sleep(ms(10)).await;
            drop(guard);
            Ok::<_, ()>(v)
        })
    });
    assert!(poll!(s.next()).is_pending());
    assert_eq!(in_flight.load(Ordering::SeqCst), 1);
    let inner = s.into_inner();
    assert_eq!(
        in_flight.load(Ordering::SeqCst),
        0,
        "the in-flight future was dropped"
    );
    assert_eq!(inner.collect::<Vec<_>>().await, vec![Ok(2), Ok(3)]);
}

#[test]
fn construction_is_lazy_and_needs_no_runtime() {
    assert!(tokio::runtime::Handle::try_current().is_err());
    let calls = Arc::new(AtomicUsize::new(0));
    let calls2 = calls.clone();
    let s = stream::iter(vec![Ok::<u32, ()>(1)]).map_ok_stream(move |v| {
        calls2.fetch_add(1, Ordering::SeqCst);
        futures::future::ready(Ok::<_, ()>(v))
    });
    assert!(format!("{s:?}").contains("MapOkStream"));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "f called before the stream was polled"
    );
    // Without any timer it runs on any executor.
    let out: Vec<_> = futures::executor::block_on_stream(s).collect();
    assert_eq!(out, vec![Ok(1)]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn composes_with_chunks_timeout_result() {
    let start = Instant::now();
    let out: Vec<Result<Vec<u32>, &str>> = stream::iter(vec![Ok(1), Ok(2), Err("bad"), Ok(3)])
        .map_ok_stream(|v: u32| async move {
            sleep(ms(100)).await;
            Ok(v * 2)
        })
        .chunks_timeout_result(10, ms(150))
        .collect()
        .await;
    // Value 2 arrives at 100 ms (deadline 250 ms), value 4 at 200 ms, then the error
    // flushes [2, 4]; value 6 arrives at 300 ms and the end flushes it.
    assert_eq!(out, vec![Ok(vec![2, 4]), Err("bad"), Ok(vec![6])]);
    assert_eq!(start.elapsed(), ms(300));
}
