//! The attack on both batchers, continued: `timeout == 0`, the empty stream, `size_hint`
//! and `FusedStream` at every step, and the zero caps' panics at the caller. Every test here
//! holds.

mod common;

use std::pin::pin;
use std::time::Duration;

use common::panics::panic_file;
use common::{ms, paused_runtime};
use futures::channel::mpsc;
use futures::stream::{self, FusedStream, Stream, StreamExt};
use result_stream::{FlushReason, ResultStreamExt};

type E = &'static str;

#[tokio::test(start_paused = true)]
async fn zero_timeout_and_the_empty_stream() {
    let s = stream::empty::<Result<u8, E>>().chunks_timeout_result(3, Duration::ZERO);
    assert_eq!(s.size_hint(), (0, Some(0)));
    assert_eq!(s.collect::<Vec<_>>().await, vec![]);
    let k =
        stream::empty::<Result<u8, E>>().chunks_timeout_by_key_result(|&v| v, 3, Duration::ZERO);
    assert_eq!(k.size_hint(), (0, Some(0)));
    assert_eq!(k.collect::<Vec<_>>().await, vec![]);

    let (tx, rx) = mpsc::unbounded::<Result<u8, E>>();
    let mut s = pin!(rx.chunks_timeout_result(3, Duration::ZERO));
    tx.unbounded_send(Ok(1)).unwrap();
    tx.unbounded_send(Ok(2)).unwrap();
    assert_eq!(s.next().await, Some(Ok(vec![1, 2])));
    let (tx, rx) = mpsc::unbounded::<Result<u8, E>>();
    let mut k = pin!(rx.chunks_timeout_by_key_result(|&v| v % 2, 3, Duration::ZERO));
    for v in [1, 2, 3] {
        tx.unbounded_send(Ok(v)).unwrap();
    }
    assert_eq!(k.next().await, Some(Ok((1, vec![1, 3]))));
    assert_eq!(k.next().await, Some(Ok((0, vec![2]))));
    assert_eq!(k.last_flush_reason(), Some(FlushReason::Deadline));
}

#[test]
fn size_hint_bounds_hold_at_every_step_and_fused_after_the_end() {
    let input: Vec<Result<u32, E>> = vec![
        Ok(1),
        Ok(2),
        Err("x"),
        Ok(3),
        Ok(4),
        Ok(5),
        Err("y"),
        Err("z"),
        Ok(6),
    ];
    let check = |hints: Vec<(usize, Option<usize>)>, left: Vec<usize>| {
        for ((lower, upper), left) in hints.into_iter().zip(left) {
            assert!(
                lower <= left && upper.is_none_or(|u| left <= u),
                "{lower} {upper:?} vs {left}"
            );
        }
    };
    paused_runtime().block_on(async {
        let mut s = pin!(stream::iter(input.clone()).chunks_timeout_result(2, ms(10)));
        let (mut hints, mut n) = (vec![s.size_hint()], 0);
        while s.next().await.is_some() {
            n += 1;
            hints.push(s.size_hint());
        }
        assert!(s.is_terminated());
        assert_eq!(s.next().await, None);
        check(hints, (0..=n).rev().collect());

        let mut k =
            pin!(stream::iter(input.clone()).chunks_timeout_by_key_result(|v| v % 2, 2, ms(10)));
        let (mut hints, mut n) = (vec![k.size_hint()], 0);
        while k.next().await.is_some() {
            n += 1;
            hints.push(k.size_hint());
        }
        assert!(k.is_terminated());
        assert_eq!(k.next().await, None);
        check(hints, (0..=n).rev().collect());
    });
}

#[test]
fn zero_caps_panic_at_the_caller() {
    let here = file!();
    let empty = stream::empty::<Result<usize, E>>;
    assert_eq!(
        panic_file(|| drop(
            empty()
                .chunks_timeout_result(1, ms(1))
                .max_weight(0, |&w| w)
        )),
        here
    );
    assert_eq!(
        panic_file(|| drop(empty().chunks_timeout_by_key_result(|&v| v, 0, ms(1)))),
        here
    );
    assert_eq!(
        panic_file(|| drop(
            empty()
                .chunks_timeout_by_key_result(|&v| v, 1, ms(1))
                .max_open_keys(0)
        )),
        here
    );
    assert_eq!(
        panic_file(|| drop(
            empty()
                .chunks_timeout_by_key_result(|&v| v, 1, ms(1))
                .max_weight(0, |&w| w)
        )),
        here
    );
}

struct Noop;

impl std::task::Wake for Noop {
    fn wake(self: std::sync::Arc<Self>) {}
}

/// The control of the same-waker runtime defects: with a new waker on the second runtime
/// (as a task of that runtime has), both batchers honour their deadline there, while the
/// first runtime is still alive and never driven again.
#[test]
fn a_deadline_is_honoured_on_a_second_live_runtime_with_a_new_waker() {
    use std::task::{Context, Poll, Waker};
    let new_waker = || Waker::from(std::sync::Arc::new(Noop));
    let (tx, rx) = mpsc::unbounded::<Result<u32, E>>();
    let mut s = Box::pin(rx.chunks_timeout_result(10, ms(100)));
    let (ktx, krx) = mpsc::unbounded::<Result<u32, E>>();
    let mut k = Box::pin(krx.chunks_timeout_by_key_result(|&v| v, 10, ms(100)));
    let first = paused_runtime();
    first.block_on(async {
        let waker = new_waker();
        let mut cx = Context::from_waker(&waker);
        tx.unbounded_send(Ok(1)).unwrap();
        ktx.unbounded_send(Ok(1)).unwrap();
        assert!(s.as_mut().poll_next(&mut cx).is_pending());
        assert!(k.as_mut().poll_next(&mut cx).is_pending());
    });
    paused_runtime().block_on(async {
        let waker = new_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(s.as_mut().poll_next(&mut cx).is_pending());
        assert!(k.as_mut().poll_next(&mut cx).is_pending());
        tokio::time::advance(ms(150)).await;
        assert_eq!(
            s.as_mut().poll_next(&mut cx),
            Poll::Ready(Some(Ok(vec![1])))
        );
        assert_eq!(
            k.as_mut().poll_next(&mut cx),
            Poll::Ready(Some(Ok((1, vec![1]))))
        );
        assert_eq!(s.last_flush_reason(), Some(FlushReason::Deadline));
    });
    drop(first);
}

/// `weigh` (and, per key, `key`) is called exactly once per value, through splits, values
/// heavier than the cap, evictions, errors and the end.
#[test]
fn weigh_and_key_are_called_once_per_value() {
    use std::cell::Cell;
    let input = || {
        let weights = [3usize, 4, 9, 0, 5, 1, 2, 7, 7, 1];
        stream::iter(weights.into_iter().enumerate().flat_map(|(i, w)| {
            let error = (i % 4 == 3).then_some(Err("e"));
            std::iter::once(Ok((i % 3, w))).chain(error)
        }))
    };
    let (weighed, keyed) = (Cell::new(0), Cell::new(0));
    let single: Vec<_> = paused_runtime().block_on(
        input()
            .chunks_timeout_result(3, ms(5))
            .max_weight(6, |v: &(usize, usize)| {
                weighed.set(weighed.get() + 1);
                v.1
            })
            .collect(),
    );
    assert_eq!(weighed.replace(0), 10);
    assert_eq!(single.iter().flatten().map(Vec::len).sum::<usize>(), 10);
    let by_key: Vec<_> = paused_runtime().block_on(
        input()
            .chunks_timeout_by_key_result(
                |v: &(usize, usize)| {
                    keyed.set(keyed.get() + 1);
                    v.0
                },
                3,
                ms(5),
            )
            .max_open_keys(2)
            .max_weight(6, |v: &(usize, usize)| {
                weighed.set(weighed.get() + 1);
                v.1
            })
            .collect(),
    );
    assert_eq!((weighed.get(), keyed.get()), (10, 10));
    assert_eq!(
        by_key.iter().flatten().map(|b| b.1.len()).sum::<usize>(),
        10
    );
}
