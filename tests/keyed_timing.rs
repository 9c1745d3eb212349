//! Timing rules of `chunks_timeout_by_key_result`, on a paused Tokio clock: one deadline
//! per key, from its own first value and never extended; data wins ties, and a flood of one
//! key does not hold back another key's deadline; an error flushes every open batch oldest
//! first, then is yielded; the end of the stream flushes every open batch oldest first.
//!
//! Values are `(key, n)` pairs keyed by their first field; each expected batch is written
//! with the time (since the start) at which it must be yielded.

mod common;

use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use common::keyed::*;
use common::{ms, secs};
use futures::channel::mpsc;
use futures::stream::{self, FusedStream, Stream};
use futures::{StreamExt, poll};
use result_stream::{FlushReason, ResultStreamExt};
use tokio::time::{Instant, advance};

// ---------------------------------------------------------------------------------------
// Deadlines: one per key, from its own first value, never extended
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn two_keys_with_overlapping_deadlines_each_flush_at_their_own() {
    let (outs, ended) = run(
        vec![
            v(0, 'a', 1),
            v(1_000, 'b', 1),
            v(1_500, 'a', 2),
            v(2_500, 'b', 2),
        ],
        10_000,
        by_key(10, secs(2)),
    )
    .await;
    assert_eq!(
        outs,
        vec![b(2_000, 'a', &[1, 2]), b(3_000, 'b', &[1, 2])],
        "a's deadline is 0 + 2 s, b's 1 s + 2 s"
    );
    assert_eq!(ended, secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_keys_later_values_do_not_extend_its_deadline() {
    let (outs, _) = run(
        vec![
            v(0, 'a', 1),
            v(1_000, 'a', 2),
            v(1_999, 'a', 3),
            v(2_000, 'a', 4), // after the flush at 2 s: a new batch, due at 4 s
        ],
        10_000,
        by_key(10, secs(2)),
    )
    .await;
    assert_eq!(outs, vec![b(2_000, 'a', &[1, 2, 3]), b(4_000, 'a', &[4])]);
}

#[tokio::test(start_paused = true)]
async fn other_keys_values_do_not_extend_a_deadline() {
    // b's values arrive all along; a's single value still goes at 2 s.
    let mut schedule = vec![v(0, 'a', 1)];
    schedule.extend((1..=9).map(|n| v(u64::from(n) * 300, 'b', n)));
    let (outs, _) = run(schedule, 5_000, by_key(100, secs(2))).await;
    assert_eq!(
        outs,
        vec![
            b(2_000, 'a', &[1]),
            b(2_300, 'b', &[1, 2, 3, 4, 5, 6, 7]),
            b(4_400, 'b', &[8, 9]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_closes_at_once_and_only_its_own_key() {
    let (outs, _) = run(
        vec![
            v(0, 'a', 1),
            v(100, 'b', 1),
            v(200, 'a', 2),
            v(300, 'a', 3),
            v(400, 'a', 4),
        ],
        10_000,
        by_key(2, secs(2)),
    )
    .await;
    assert_eq!(
        outs,
        vec![
            b(200, 'a', &[1, 2]),
            b(400, 'a', &[3, 4]),
            b(2_100, 'b', &[1]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn batches_are_yielded_in_the_order_they_close() {
    // b opens after a but fills first; c's deadline comes before a's second batch.
    let (outs, _) = run(
        vec![
            v(0, 'a', 1),
            v(10, 'b', 1),
            v(20, 'c', 1),
            v(30, 'b', 2),
            v(40, 'b', 3),
        ],
        10_000,
        by_key(3, secs(1)),
    )
    .await;
    assert_eq!(
        outs,
        vec![
            b(40, 'b', &[1, 2, 3]),
            b(1_000, 'a', &[1]),
            b(1_020, 'c', &[1]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn zero_timeout_yields_every_open_batch_oldest_first_when_the_upstream_is_pending() {
    let (outs, _) = run(
        vec![v(0, 'a', 1), v(0, 'b', 1), v(0, 'a', 2), v(500, 'b', 2)],
        1_000,
        by_key(10, Duration::ZERO),
    )
    .await;
    assert_eq!(
        outs,
        vec![b(0, 'a', &[1, 2]), b(0, 'b', &[1]), b(500, 'b', &[2])]
    );
}

#[tokio::test(start_paused = true)]
async fn huge_timeout_never_fires() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_by_key_result(key, 10, Duration::MAX));
    tx.unbounded_send(Ok(('a', 1))).unwrap();
    assert!(poll!(s.next()).is_pending());
    advance(secs(365 * 24 * 3_600)).await;
    assert!(poll!(s.next()).is_pending());
    drop(tx);
    assert_eq!(
        poll!(s.next()),
        Poll::Ready(Some(Ok(('a', vec![('a', 1)]))))
    );
}

// ---------------------------------------------------------------------------------------
// Data wins ties, and a flood does not hold back another key's deadline
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn data_wins_an_expired_batch_takes_its_keys_available_values() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_by_key_result(key, 10, secs(2)));
    let start = Instant::now();
    tx.unbounded_send(Ok(('a', 1))).unwrap();
    assert!(poll!(s.next()).is_pending());
    advance(secs(1)).await;
    tx.unbounded_send(Ok(('a', 2))).unwrap();
    tx.unbounded_send(Ok(('b', 1))).unwrap();
    tx.unbounded_send(Ok(('a', 3))).unwrap();
    advance(secs(2)).await; // a's deadline (2 s) has passed
    // Not [1] then [2, 3]: the values already available join a's expiring batch.
    assert_eq!(
        poll!(s.next()),
        Poll::Ready(Some(Ok(('a', vec![('a', 1), ('a', 2), ('a', 3)]))))
    );
    // b was sent at 1 s but taken at 3 s: its deadline counts from then.
    assert_eq!(s.open_keys(), 1);
    assert_eq!(s.buffered_values(&'b'), &[('b', 1)]);
    assert_eq!(s.next_deadline(), Some(start + secs(5)));
    advance(secs(2)).await;
    assert_eq!(
        poll!(s.next()),
        Poll::Ready(Some(Ok(('b', vec![('b', 1)]))))
    );
    assert!(poll!(s.next()).is_pending());
}

#[tokio::test(start_paused = true)]
async fn data_wins_a_full_batch_comes_before_an_expired_deadline() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_by_key_result(key, 2, secs(2)));
    tx.unbounded_send(Ok(('b', 1))).unwrap();
    assert!(poll!(s.next()).is_pending());
    advance(secs(3)).await; // b's deadline has passed
    for n in 1..=4 {
        tx.unbounded_send(Ok(('a', n))).unwrap();
    }
    // The values ready are taken first, also right after a full batch: a's batches fill...
    assert_eq!(
        poll!(s.next()),
        Poll::Ready(Some(Ok(('a', vec![('a', 1), ('a', 2)]))))
    );
    assert_eq!(
        poll!(s.next()),
        Poll::Ready(Some(Ok(('a', vec![('a', 3), ('a', 4)]))))
    );
    // ...then the upstream has nothing ready, and the expired batch goes.
    assert_eq!(
        poll!(s.next()),
        Poll::Ready(Some(Ok(('b', vec![('b', 1)]))))
    );
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Deadline));
    assert!(poll!(s.next()).is_pending());
    assert_eq!(s.open_keys(), 0);
}

#[tokio::test(start_paused = true)]
async fn batches_that_expire_together_are_yielded_together_before_more_data() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_by_key_result(key, 10, secs(2)));
    let start = Instant::now();
    tx.unbounded_send(Ok(('a', 1))).unwrap();
    tx.unbounded_send(Ok(('b', 1))).unwrap();
    assert!(poll!(s.next()).is_pending()); // both deadlines: 2 s
    assert_eq!(s.next().await, Some(Ok(('a', vec![('a', 1)]))));
    assert_eq!(start.elapsed(), secs(2));
    // A value of b arrives after the upstream was found empty at b's deadline: it does not
    // join b's expired batch, which goes first.
    tx.unbounded_send(Ok(('b', 2))).unwrap();
    assert_eq!(
        poll!(s.next()),
        Poll::Ready(Some(Ok(('b', vec![('b', 1)]))))
    );
    assert!(poll!(s.next()).is_pending());
    assert_eq!(s.buffered_values(&'b'), &[('b', 2)]);
    assert_eq!(s.next_deadline(), Some(start + secs(4)));
}

#[tokio::test(start_paused = true)]
async fn a_never_pending_flood_of_one_key_does_not_starve_another_keys_deadline() {
    // An upstream that is always ready: one value of b, then key a without end. The
    // consumer takes 300 ms per batch, so the clock moves while the upstream never pends.
    let start = Instant::now();
    let flood = stream::iter(std::iter::once(('b', 0)).chain((1..).map(|n| ('a', n))))
        .map(Ok::<Value, &str>);
    let mut s = pin!(flood.chunks_timeout_by_key_result(key, 5, secs(1)));
    let mut a_values_after_b_expired = 0;
    loop {
        let (k, batch) = s.next().await.unwrap().unwrap();
        if k == 'b' {
            assert_eq!(s.last_flush_reason(), Some(FlushReason::Deadline));
            break;
        }
        assert_eq!(batch.len(), 5);
        if start.elapsed() >= secs(1) {
            a_values_after_b_expired += batch.len();
        }
        advance(ms(300)).await;
    }
    // b's deadline (1 s) passes while a fills its fourth batch; a's values keep winning
    // (data first) for at most one budget of 4,096 values, then b goes.
    assert!(
        (1..=4_096).contains(&a_values_after_b_expired),
        "{a_values_after_b_expired} values of a after b expired"
    );
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_error_flushes_every_open_batch_oldest_first_then_is_yielded_then_batching_goes_on() {
    let (outs, _) = run(
        vec![
            v(0, 'a', 1),
            v(100, 'b', 1),
            v(200, 'c', 1),
            v(300, 'a', 2),
            (ms(500), Err("bad frame")),
            v(600, 'b', 2),
            v(700, 'a', 3),
        ],
        10_000,
        by_key(10, secs(2)),
    )
    .await;
    assert_eq!(
        outs,
        vec![
            b(500, 'a', &[1, 2]),
            b(500, 'b', &[1]),
            b(500, 'c', &[1]),
            e(500, "bad frame"),
            b(2_600, 'b', &[2]),
            b(2_700, 'a', &[3]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_error_with_nothing_open_passes_straight_through() {
    let (outs, _) = run(
        vec![
            (ms(0), Err("first")),
            v(10, 'a', 1),
            (ms(10), Err("second")),
        ],
        1_000,
        by_key(10, secs(2)),
    )
    .await;
    assert_eq!(outs, vec![e(0, "first"), b(10, 'a', &[1]), e(10, "second")]);
}

#[tokio::test(start_paused = true)]
async fn the_upstream_is_not_polled_while_an_error_is_held_back() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_by_key_result(key, 10, secs(2)));
    for item in [Ok(('a', 1)), Ok(('b', 1)), Err("boom"), Ok(('a', 2))] {
        tx.unbounded_send(item).unwrap();
    }
    assert_eq!(
        poll!(s.next()),
        Poll::Ready(Some(Ok(('a', vec![('a', 1)]))))
    );
    // ('a', 2) came after the error: it is not in any batch before the error.
    assert_eq!(s.buffered_values(&'a'), &[] as &[Value]);
    assert_eq!(
        poll!(s.next()),
        Poll::Ready(Some(Ok(('b', vec![('b', 1)]))))
    );
    assert_eq!(poll!(s.next()), Poll::Ready(Some(Err("boom"))));
    assert!(poll!(s.next()).is_pending());
    assert_eq!(s.buffered_values(&'a'), &[('a', 2)]);
}

// ---------------------------------------------------------------------------------------
// End of stream
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_end_flushes_every_open_batch_oldest_first_then_none_forever() {
    let (outs, ended) = run(
        vec![v(0, 'c', 1), v(100, 'a', 1), v(200, 'b', 1), v(300, 'a', 2)],
        1_000,
        by_key(10, secs(2)),
    )
    .await;
    assert_eq!(
        outs,
        vec![
            b(1_000, 'c', &[1]),
            b(1_000, 'a', &[1, 2]),
            b(1_000, 'b', &[1]),
        ]
    );
    assert_eq!(ended, secs(1));

    let mut s = pin!(
        stream::iter(vec![Ok::<Value, ()>(('x', 1))]).chunks_timeout_by_key_result(
            key,
            10,
            secs(1)
        )
    );
    assert_eq!(s.next().await, Some(Ok(('x', vec![('x', 1)]))));
    assert!(s.is_terminated());
    assert_eq!(s.next().await, None);
    assert_eq!(s.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn the_upstream_is_not_polled_after_it_ended() {
    struct EndsOnce(bool);
    impl Stream for EndsOnce {
        type Item = Item;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Item>> {
            assert!(!self.0, "polled after it ended");
            self.0 = true;
            Poll::Ready(None)
        }
    }
    let mut s = pin!(EndsOnce(false).chunks_timeout_by_key_result(key, 10, secs(1)));
    assert_eq!(s.next().await, None);
    assert!(s.is_terminated());
    assert_eq!(s.next().await, None);
}
