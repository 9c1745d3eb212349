//! `chunks_timeout_by_key_result` beyond plain deadlines, on a paused Tokio clock: a new key
//! beyond `max_open_keys` evicts the oldest open batch first; `take_remainder` after losing a
//! `select!` race loses nothing; the adapter's one timer leaves no stale wake-up behind and
//! still fires when polled on a second runtime.
//!
//! Values are `(key, n)` pairs keyed by their first field; each expected batch is written
//! with the time (since the start) at which it must be yielded.

mod common;

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use common::keyed::*;
use common::wakers::CountingWaker;
use common::{ms, paused_runtime, secs};
use futures::channel::mpsc;
use futures::stream::{self, Stream};
use futures::{StreamExt, poll};
use result_stream::ResultStreamExt;
use tokio::time::{Instant, advance};

// ---------------------------------------------------------------------------------------
// max_open_keys: eviction
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_new_key_beyond_max_open_keys_evicts_the_oldest_open_batch_first() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(
        rx.chunks_timeout_by_key_result(key, 10, secs(2))
            .max_open_keys(2)
    );
    let start = Instant::now();
    tx.unbounded_send(Ok(('a', 1))).unwrap();
    tx.unbounded_send(Ok(('b', 1))).unwrap();
    tx.unbounded_send(Ok(('a', 2))).unwrap();
    assert!(poll!(s.next()).is_pending());
    assert_eq!(s.open_keys(), 2);

    advance(ms(500)).await;
    tx.unbounded_send(Ok(('c', 1))).unwrap();
    // a opened first: it goes, with every value it had.
    assert_eq!(
        poll!(s.next()),
        Poll::Ready(Some(Ok(('a', vec![('a', 1), ('a', 2)]))))
    );
    assert_eq!(s.open_keys(), 2);
    assert_eq!(s.open_keys_oldest_first().collect::<Vec<_>>(), [&'b', &'c']);

    // An open key's value evicts nothing.
    tx.unbounded_send(Ok(('b', 2))).unwrap();
    assert!(poll!(s.next()).is_pending());
    tx.unbounded_send(Ok(('a', 3))).unwrap();
    assert_eq!(
        poll!(s.next()),
        Poll::Ready(Some(Ok(('b', vec![('b', 1), ('b', 2)]))))
    );
    assert_eq!(s.open_keys_oldest_first().collect::<Vec<_>>(), [&'c', &'a']);

    // The rest keep their own deadlines: c's at 2.5 s, the new a's at 2.5 s too.
    assert_eq!(s.next_deadline(), Some(start + ms(2_500)));
    assert_eq!(s.next().await, Some(Ok(('c', vec![('c', 1)]))));
    assert_eq!(s.next().await, Some(Ok(('a', vec![('a', 3)]))));
    assert_eq!(start.elapsed(), ms(2_500));
}

#[tokio::test(start_paused = true)]
async fn eviction_order_is_first_value_order_over_a_schedule() {
    let (outs, _) = run(
        vec![
            v(0, 'a', 1),
            v(100, 'b', 1),
            v(200, 'c', 1), // evicts a
            v(300, 'b', 2),
            v(400, 'd', 1), // evicts b (opened before c)
            v(500, 'a', 2), // evicts c
        ],
        10_000,
        |rx| by_key(10, secs(2))(rx).max_open_keys(2),
    )
    .await;
    assert_eq!(
        outs,
        vec![
            b(200, 'a', &[1]),
            b(400, 'b', &[1, 2]),
            b(500, 'c', &[1]),
            b(2_400, 'd', &[1]),
            b(2_500, 'a', &[2]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn with_max_items_one_a_value_evicts_nothing() {
    let s = stream::iter(['a', 'b', 'c'].map(|k| Ok::<Value, ()>((k, 1))))
        .chunks_timeout_by_key_result(key, 1, secs(1))
        .max_open_keys(1);
    let out: Vec<_> = s.collect().await;
    assert_eq!(
        out,
        vec![
            Ok(('a', vec![('a', 1)])),
            Ok(('b', vec![('b', 1)])),
            Ok(('c', vec![('c', 1)]))
        ]
    );
}

// ---------------------------------------------------------------------------------------
// take_remainder
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn take_remainder_after_losing_a_select_race_loses_nothing() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_by_key_result(key, 10, secs(5)));
    for item in [Ok(('b', 1)), Ok(('a', 1)), Ok(('b', 2))] {
        tx.unbounded_send(item).unwrap();
    }
    let won = tokio::select! {
        batch = s.next() => Some(batch),
        _ = tokio::time::sleep(secs(1)) => None,
    };
    assert_eq!(won, None, "the sleep wins: the deadlines are 5 s");
    assert_eq!(
        s.as_mut().take_remainder(),
        (
            vec![('b', vec![('b', 1), ('b', 2)]), ('a', vec![('a', 1)])],
            None
        ),
        "every key's values, oldest batch first"
    );
    assert_eq!(s.open_keys(), 0);
    assert_eq!(s.next_deadline(), None);

    // A held-back error comes back too, behind the values.
    for item in [Ok(('a', 2)), Ok(('c', 1)), Err("boom"), Ok(('a', 3))] {
        tx.unbounded_send(item).unwrap();
    }
    assert_eq!(s.next().await, Some(Ok(('a', vec![('a', 2)]))));
    assert_eq!(
        s.as_mut().take_remainder(),
        (vec![('c', vec![('c', 1)])], Some("boom"))
    );

    // The adapter stays usable; the value behind the error has a fresh deadline.
    let start = Instant::now();
    assert_eq!(s.next().await, Some(Ok(('a', vec![('a', 3)]))));
    assert_eq!(start.elapsed(), secs(5));
    drop(tx);
    assert_eq!(s.next().await, None);
}

// ---------------------------------------------------------------------------------------
// The one timer: no stale wake-ups, a second runtime
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_batch_that_closes_before_its_deadline_leaves_no_wake_up_behind() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_by_key_result(key, 2, secs(2)));
    let wakes = Arc::new(CountingWaker::default());
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    let woken = || wakes.0.load(Ordering::SeqCst);

    tx.unbounded_send(Ok(('a', 1))).unwrap();
    assert!(s.as_mut().poll_next(&mut cx).is_pending()); // the timer is armed at 2 s
    advance(ms(500)).await;
    tx.unbounded_send(Ok(('b', 1))).unwrap(); // b's deadline: 2.5 s
    tx.unbounded_send(Ok(('a', 2))).unwrap();
    assert!(matches!(
        s.as_mut().poll_next(&mut cx),
        Poll::Ready(Some(Ok(('a', _))))
    ));
    // The consumer is busy with a's batch and does not poll. a's deadline passes: nothing
    // wakes the task; b's does.
    let before = woken();
    advance(ms(1_600)).await;
    assert_eq!(woken(), before, "at 2.1 s");
    advance(ms(500)).await;
    assert_eq!(woken(), before + 1, "at 2.6 s");
    assert_eq!(
        s.as_mut().poll_next(&mut cx),
        Poll::Ready(Some(Ok(('b', vec![('b', 1)]))))
    );

    // The only open batch fills after its timer was armed: with no batch left open, the
    // timer goes, and nothing wakes the task at the old deadline.
    tx.unbounded_send(Ok(('c', 1))).unwrap();
    assert!(s.as_mut().poll_next(&mut cx).is_pending()); // armed at 4.6 s
    tx.unbounded_send(Ok(('c', 2))).unwrap();
    assert!(matches!(
        s.as_mut().poll_next(&mut cx),
        Poll::Ready(Some(Ok(('c', _))))
    ));
    let before = woken();
    advance(secs(10)).await;
    assert_eq!(woken(), before);
}

#[test]
fn a_deadline_still_fires_when_polled_on_a_second_runtime_after_the_first_was_dropped() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = Box::pin(rx.chunks_timeout_by_key_result(key, 10, secs(2)));

    let first = paused_runtime();
    first.block_on(async {
        tx.unbounded_send(Ok(('a', 1))).unwrap();
        assert!(poll!(s.next()).is_pending()); // the timer belongs to `first`
        advance(secs(1)).await;
    });
    drop(first);

    let second = paused_runtime();
    second.block_on(async {
        tx.unbounded_send(Ok(('b', 1))).unwrap();
        let start = Instant::now();
        // The old deadline was stamped on the first runtime's clock; on this one it has
        // passed or is due at once: a's batch goes without a panic, then b's in 2 s.
        assert_eq!(s.next().await, Some(Ok(('a', vec![('a', 1)]))));
        assert_eq!(s.next().await, Some(Ok(('b', vec![('b', 1)]))));
        assert!(start.elapsed() <= secs(2));
    });
}
