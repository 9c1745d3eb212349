//! Timing rules of `chunks_timeout_result`, on a paused Tokio clock. The API around
//! them (`take_remainder`, construction, `size_hint`, `last_flush_reason`) is in
//! `chunks_api.rs`.

mod common;

use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use common::{batch, collect_tagged, error, ms, scheduled, secs};
use futures::channel::mpsc;
use futures::stream::{self, FusedStream, Stream};
use futures::{StreamExt, poll};
use result_stream::{FlushReason, ResultStreamExt};
use tokio::time::{Instant, advance};

type Item = Result<u32, &'static str>;

// ---------------------------------------------------------------------------------------
// Rule 2: the deadline
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn deadline_starts_at_first_value_and_is_not_extended_by_later_values() {
    let start = Instant::now();
    let rx = scheduled::<u32, &str>(
        start,
        vec![(ms(0), Ok(1)), (ms(1_500), Ok(2)), (ms(1_900), Ok(3))],
        secs(10),
    );
    let (outs, ended) = collect_tagged(rx.chunks_timeout_result(10, secs(2)), start).await;
    // Exactly 2 s after value 1, although values 2 and 3 came later.
    assert_eq!(
        outs,
        vec![batch(secs(2), vec![1, 2, 3], FlushReason::Deadline)]
    );
    assert_eq!(ended, secs(10));
}

#[tokio::test(start_paused = true)]
async fn next_batch_deadline_starts_at_its_own_first_value() {
    let start = Instant::now();
    let rx = scheduled::<u32, &str>(
        start,
        vec![
            (ms(0), Ok(1)),
            (ms(3_000), Ok(2)), // after batch [1] was flushed at 2 s
            (ms(4_900), Ok(3)),
            (ms(5_100), Ok(4)), // after batch [2, 3] was flushed at 5 s
            (ms(6_000), Ok(5)),
        ],
        secs(20),
    );
    let (outs, ended) = collect_tagged(rx.chunks_timeout_result(10, secs(2)), start).await;
    assert_eq!(
        outs,
        vec![
            batch(secs(2), vec![1], FlushReason::Deadline),
            batch(secs(5), vec![2, 3], FlushReason::Deadline),
            batch(ms(7_100), vec![4, 5], FlushReason::Deadline),
        ]
    );
    assert_eq!(ended, secs(20));
}

#[tokio::test(start_paused = true)]
async fn each_batch_gets_a_fresh_deadline_after_a_deadline_flush() {
    let start = Instant::now();
    let rx = scheduled::<u32, &str>(
        start,
        vec![
            (ms(0), Ok(1)),
            (ms(2_500), Ok(2)),
            (ms(4_000), Ok(3)),
            (ms(4_400), Ok(4)),
            (ms(7_000), Ok(5)),
        ],
        secs(8),
    );
    let (outs, ended) = collect_tagged(rx.chunks_timeout_result(10, secs(2)), start).await;
    assert_eq!(
        outs,
        vec![
            batch(ms(2_000), vec![1], FlushReason::Deadline),
            batch(ms(4_500), vec![2, 3, 4], FlushReason::Deadline),
            batch(ms(8_000), vec![5], FlushReason::End),
        ]
    );
    assert_eq!(ended, secs(8));
}

#[tokio::test(start_paused = true)]
async fn armed_deadline_is_first_value_plus_timeout() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_result(10, secs(2)));
    let start = Instant::now();
    assert_eq!(s.armed_deadline(), None);

    tx.unbounded_send(Ok(1)).unwrap();
    assert!(poll!(s.next()).is_pending());
    assert_eq!(s.armed_deadline(), Some(start + secs(2)));

    advance(ms(1_500)).await;
    tx.unbounded_send(Ok(2)).unwrap();
    assert!(poll!(s.next()).is_pending());
    // Not extended by value 2.
    assert_eq!(s.armed_deadline(), Some(start + secs(2)));
    assert_eq!(s.buffered_values(), &[1, 2]);

    advance(ms(499)).await;
    assert!(poll!(s.next()).is_pending());
    advance(ms(1)).await;
    assert_eq!(poll!(s.next()), Poll::Ready(Some(Ok(vec![1, 2]))));
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Deadline));
    assert_eq!(s.armed_deadline(), None);
}

// ---------------------------------------------------------------------------------------
// Rule 1: full batches
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn full_batch_yields_without_waiting_for_the_deadline() {
    let start = Instant::now();
    let rx = scheduled::<u32, &str>(
        start,
        vec![
            (ms(0), Ok(1)),
            (ms(100), Ok(2)),
            (ms(200), Ok(3)), // fills the batch long before the 10 s deadline
            (ms(300), Ok(4)),
            (ms(300), Ok(5)),
            (ms(300), Ok(6)), // a burst that fills a batch at once
            (ms(300), Ok(7)),
        ],
        secs(60),
    );
    let (outs, ended) = collect_tagged(rx.chunks_timeout_result(3, secs(10)), start).await;
    assert_eq!(
        outs,
        vec![
            batch(ms(200), vec![1, 2, 3], FlushReason::Full),
            batch(ms(300), vec![4, 5, 6], FlushReason::Full),
            batch(ms(10_300), vec![7], FlushReason::Deadline),
        ]
    );
    assert_eq!(ended, secs(60));
}

#[tokio::test(start_paused = true)]
async fn ready_upstream_fills_batches_without_arming_a_timer() {
    let mut s = pin!(stream::iter((1..=7).map(Ok::<u32, ()>)).chunks_timeout_result(3, secs(1)));
    let start = Instant::now();
    assert_eq!(s.next().await, Some(Ok(vec![1, 2, 3])));
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Full));
    assert_eq!(s.armed_deadline(), None);
    assert_eq!(s.next().await, Some(Ok(vec![4, 5, 6])));
    assert_eq!(s.armed_deadline(), None);
    assert_eq!(s.next().await, Some(Ok(vec![7])));
    assert_eq!(s.last_flush_reason(), Some(FlushReason::End));
    assert_eq!(s.next().await, None);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn max_items_one_yields_every_value_alone_at_once() {
    let start = Instant::now();
    let rx = scheduled::<u32, &str>(
        start,
        vec![(ms(0), Ok(1)), (ms(0), Ok(2)), (ms(700), Ok(3))],
        secs(1),
    );
    let (outs, _) = collect_tagged(rx.chunks_timeout_result(1, secs(5)), start).await;
    assert_eq!(
        outs,
        vec![
            batch(ms(0), vec![1], FlushReason::Full),
            batch(ms(0), vec![2], FlushReason::Full),
            batch(ms(700), vec![3], FlushReason::Full),
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Data wins
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn data_wins_when_full_batch_and_expired_deadline_are_ready_together() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_result(3, secs(2)));
    let start = Instant::now();

    tx.unbounded_send(Ok(1)).unwrap();
    assert!(poll!(s.next()).is_pending());
    advance(secs(1)).await;
    for v in 2..=7 {
        tx.unbounded_send(Ok(v)).unwrap();
    }
    // The deadline (2 s) has passed and six values are waiting: they are taken first,
    // capped at max_items.
    advance(secs(2)).await;
    assert_eq!(start.elapsed(), secs(3));
    assert_eq!(poll!(s.next()), Poll::Ready(Some(Ok(vec![1, 2, 3]))));
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Full));
    assert_eq!(poll!(s.next()), Poll::Ready(Some(Ok(vec![4, 5, 6]))));
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Full));

    // Value 7 starts a new batch with a deadline of its own.
    assert!(poll!(s.next()).is_pending());
    assert_eq!(s.buffered_values(), &[7]);
    assert_eq!(s.armed_deadline(), Some(start + secs(5)));
    advance(ms(1_999)).await;
    assert!(poll!(s.next()).is_pending());
    advance(ms(1)).await;
    assert_eq!(poll!(s.next()), Poll::Ready(Some(Ok(vec![7]))));
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Deadline));
}

#[tokio::test(start_paused = true)]
async fn expired_deadline_takes_every_available_value_into_the_batch() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_result(10, secs(2)));

    tx.unbounded_send(Ok(1)).unwrap();
    assert!(poll!(s.next()).is_pending());
    advance(secs(1)).await;
    tx.unbounded_send(Ok(2)).unwrap();
    tx.unbounded_send(Ok(3)).unwrap();
    advance(secs(2)).await;
    // Not [1] then [2, 3]: the values already available join the expiring batch.
    assert_eq!(poll!(s.next()), Poll::Ready(Some(Ok(vec![1, 2, 3]))));
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Deadline));
    assert!(poll!(s.next()).is_pending());
    assert_eq!(s.buffered_values(), &[] as &[u32]);
    assert_eq!(s.armed_deadline(), None);
}

// ---------------------------------------------------------------------------------------
// timeout == 0
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn zero_timeout_yields_as_soon_as_upstream_is_pending() {
    let start = Instant::now();
    let rx = scheduled::<u32, &str>(
        start,
        vec![
            (ms(0), Ok(1)),
            (ms(0), Ok(2)),
            (ms(0), Ok(3)),
            (ms(1_000), Ok(4)),
            (ms(1_500), Ok(5)),
            (ms(1_500), Ok(6)),
            (ms(1_500), Ok(7)),
        ],
        secs(3),
    );
    let (outs, ended) = collect_tagged(rx.chunks_timeout_result(2, Duration::ZERO), start).await;
    assert_eq!(
        outs,
        vec![
            batch(ms(0), vec![1, 2], FlushReason::Full),
            batch(ms(0), vec![3], FlushReason::Deadline),
            batch(ms(1_000), vec![4], FlushReason::Deadline),
            batch(ms(1_500), vec![5, 6], FlushReason::Full),
            batch(ms(1_500), vec![7], FlushReason::Deadline),
        ]
    );
    assert_eq!(ended, secs(3));
}

#[tokio::test(start_paused = true)]
async fn zero_timeout_batches_a_ready_burst_together() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_result(10, Duration::ZERO));
    assert!(poll!(s.next()).is_pending());
    for v in 1..=4 {
        tx.unbounded_send(Ok(v)).unwrap();
    }
    assert_eq!(poll!(s.next()), Poll::Ready(Some(Ok(vec![1, 2, 3, 4]))));
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Deadline));
    assert!(poll!(s.next()).is_pending());
}

// ---------------------------------------------------------------------------------------
// Rule 3: errors
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn error_mid_batch_yields_partial_batch_then_error_then_batching_continues() {
    let start = Instant::now();
    let rx = scheduled::<u32, &str>(
        start,
        vec![
            (ms(0), Ok(1)),
            (ms(500), Ok(2)),
            (ms(1_000), Err("bad frame")),
            (ms(1_200), Ok(3)),
            (ms(1_300), Ok(4)),
        ],
        secs(10),
    );
    let (outs, ended) = collect_tagged(rx.chunks_timeout_result(10, secs(2)), start).await;
    assert_eq!(
        outs,
        vec![
            batch(ms(1_000), vec![1, 2], FlushReason::Error),
            error(ms(1_000), "bad frame"),
            // A new batch with a new deadline: 2 s after value 3, not after value 1.
            batch(ms(3_200), vec![3, 4], FlushReason::Deadline),
        ]
    );
    assert_eq!(ended, secs(10));
}

#[tokio::test(start_paused = true)]
async fn error_is_held_back_until_the_next_poll() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_result(10, secs(2)));
    tx.unbounded_send(Ok(1)).unwrap();
    tx.unbounded_send(Err("e1")).unwrap();
    tx.unbounded_send(Ok(2)).unwrap();
    assert_eq!(poll!(s.next()), Poll::Ready(Some(Ok(vec![1]))));
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Error));
    // Value 2 is not pulled before the error has been yielded.
    assert_eq!(s.buffered_values(), &[] as &[u32]);
    assert_eq!(poll!(s.next()), Poll::Ready(Some(Err("e1"))));
    assert!(poll!(s.next()).is_pending());
    assert_eq!(s.buffered_values(), &[2]);
}

#[tokio::test(start_paused = true)]
async fn error_with_empty_buffer_passes_straight_through() {
    let start = Instant::now();
    let rx = scheduled::<u32, &str>(
        start,
        vec![
            (ms(500), Err("first")),
            (ms(600), Err("second")),
            (ms(700), Ok(1)),
            (ms(700), Ok(2)), // full batch at 700 ms: the buffer is empty again
            (ms(800), Err("third")),
        ],
        secs(5),
    );
    let (outs, ended) = collect_tagged(rx.chunks_timeout_result(2, secs(2)), start).await;
    assert_eq!(
        outs,
        vec![
            error(ms(500), "first"),
            error(ms(600), "second"),
            batch(ms(700), vec![1, 2], FlushReason::Full),
            error(ms(800), "third"),
        ]
    );
    assert_eq!(ended, secs(5));
}

#[tokio::test(start_paused = true)]
async fn error_between_values_in_one_burst_keeps_its_position() {
    let items: Vec<Item> = vec![Ok(1), Ok(2), Err("a"), Err("b"), Ok(3), Err("c"), Ok(4)];
    let outs: Vec<_> = stream::iter(items)
        .chunks_timeout_result(5, secs(1))
        .collect()
        .await;
    assert_eq!(
        outs,
        vec![
            Ok(vec![1, 2]),
            Err("a"),
            Err("b"),
            Ok(vec![3]),
            Err("c"),
            Ok(vec![4]),
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Rule 4: end of stream
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn end_of_stream_flushes_partial_batch_then_none_forever() {
    let start = Instant::now();
    let rx = scheduled::<u32, &str>(start, vec![(ms(0), Ok(1)), (ms(500), Ok(2))], secs(1));
    let mut s = pin!(rx.chunks_timeout_result(10, secs(2)));
    assert!(!s.is_terminated());
    assert_eq!(s.next().await, Some(Ok(vec![1, 2])));
    // At the end of the stream (1 s), not at the deadline (2 s).
    assert_eq!(start.elapsed(), secs(1));
    assert_eq!(s.last_flush_reason(), Some(FlushReason::End));
    assert!(s.is_terminated());
    assert_eq!(s.size_hint(), (0, Some(0)));
    assert_eq!(s.next().await, None);
    assert_eq!(s.next().await, None);
    assert!(s.is_terminated());
    assert_eq!(start.elapsed(), secs(1));
}

#[tokio::test(start_paused = true)]
async fn empty_stream_yields_none_and_is_terminated() {
    let mut s = pin!(stream::empty::<Item>().chunks_timeout_result(3, secs(1)));
    assert!(!s.is_terminated());
    assert_eq!(s.next().await, None);
    assert!(s.is_terminated());
    assert_eq!(s.next().await, None);
    assert_eq!(s.last_flush_reason(), None);
}

/// A stream that panics if it is polled again after it returned `None`.
struct PanicsAfterEnd {
    items: std::vec::IntoIter<Item>,
    ended: bool,
}

impl Stream for PanicsAfterEnd {
    type Item = Item;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Item>> {
        assert!(!self.ended, "upstream polled after it ended");
        let next = self.items.next();
        self.ended = next.is_none();
        Poll::Ready(next)
    }
}

#[tokio::test(start_paused = true)]
async fn upstream_is_not_polled_after_it_ended() {
    let upstream = PanicsAfterEnd {
        items: vec![Ok(1), Ok(2)].into_iter(),
        ended: false,
    };
    let mut s = pin!(upstream.chunks_timeout_result(5, secs(1)));
    assert_eq!(s.next().await, Some(Ok(vec![1, 2])));
    assert_eq!(s.next().await, None);
    assert_eq!(s.next().await, None);
    assert_eq!(s.next().await, None);
}

// ---------------------------------------------------------------------------------------
// Never an empty batch
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn stale_deadline_of_a_full_batch_never_yields_an_empty_batch() {
    let start = Instant::now();
    // Value 1 arms a deadline at 2 s; the batch fills at 1 s; nothing is buffered when the
    // stale timer would have fired.
    let rx = scheduled::<u32, &str>(
        start,
        vec![(ms(0), Ok(1)), (ms(1_000), Ok(2)), (ms(5_000), Ok(3))],
        secs(20),
    );
    let (outs, ended) = collect_tagged(rx.chunks_timeout_result(2, secs(2)), start).await;
    assert_eq!(
        outs,
        vec![
            batch(ms(1_000), vec![1, 2], FlushReason::Full),
            batch(ms(7_000), vec![3], FlushReason::Deadline),
        ]
    );
    assert_eq!(ended, secs(20));
}

#[tokio::test(start_paused = true)]
async fn deadline_passing_with_empty_buffer_yields_nothing() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_result(10, secs(2)));
    let start = Instant::now();
    tx.unbounded_send(Ok(1)).unwrap();
    assert!(poll!(s.next()).is_pending());
    assert_eq!(s.as_mut().take_remainder(), (vec![1], None));
    assert_eq!(s.armed_deadline(), None);

    advance(secs(3)).await; // past the abandoned batch's deadline
    assert!(poll!(s.next()).is_pending());
    assert!(poll!(s.next()).is_pending());

    tx.unbounded_send(Ok(2)).unwrap();
    assert!(poll!(s.next()).is_pending());
    assert_eq!(s.armed_deadline(), Some(start + secs(5)));
    advance(secs(2)).await;
    assert_eq!(poll!(s.next()), Poll::Ready(Some(Ok(vec![2]))));
    drop(tx);
    assert_eq!(poll!(s.next()), Poll::Ready(None));
}
