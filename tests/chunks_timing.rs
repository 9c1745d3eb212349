//! Timing rules of `chunks_timeout_result` (SPEC §2), on a paused Tokio clock.

mod common;

use std::cell::RefCell;
use std::pin::{Pin, pin};
use std::sync::Once;
use std::task::{Context, Poll};
use std::time::Duration;

use common::{Out, batch, collect_tagged, error, ms, scheduled, secs};
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

// ---------------------------------------------------------------------------------------
// take_remainder / into_parts
// ---------------------------------------------------------------------------------------

/// Every value and error sent comes back exactly once, in order, through what the adapter
/// yields and what `take_remainder` returns: `delivered` is built only from the adapter's
/// outputs, never from what the test sent.
#[tokio::test(start_paused = true)]
async fn take_remainder_after_losing_a_select_race_loses_nothing() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_result(10, secs(5)));
    let mut delivered: Vec<Item> = Vec::new();
    let keep = |delivered: &mut Vec<Item>, (values, held): (Vec<u32>, Option<&'static str>)| {
        delivered.extend(values.into_iter().map(Ok));
        delivered.extend(held.map(Err));
    };

    tx.unbounded_send(Ok(1)).unwrap();
    tx.unbounded_send(Ok(2)).unwrap();
    let won = tokio::select! {
        b = s.next() => Some(b),
        _ = tokio::time::sleep(secs(1)) => None,
    };
    assert_eq!(won, None, "the sleep wins: the batch deadline is 5 s");
    keep(&mut delivered, s.as_mut().take_remainder());
    assert_eq!(s.buffered_values(), &[] as &[u32]);

    // A held-back error is handed back as well, after the values yielded before it.
    tx.unbounded_send(Ok(3)).unwrap();
    tx.unbounded_send(Err("boom")).unwrap();
    tx.unbounded_send(Ok(4)).unwrap();
    let batch = s.next().await.expect("a batch before the error").unwrap();
    delivered.extend(batch.into_iter().map(Ok));
    keep(&mut delivered, s.as_mut().take_remainder());

    // The adapter stays usable and the value behind the error is still delivered, on its
    // own deadline.
    let start = Instant::now();
    let batch = s.next().await.expect("the value behind the error").unwrap();
    assert_eq!(start.elapsed(), secs(5));
    delivered.extend(batch.into_iter().map(Ok));
    drop(tx);
    while let Some(item) = s.next().await {
        delivered.push(item.map(|_| unreachable!("nothing left to batch")));
    }
    assert_eq!(delivered, vec![Ok(1), Ok(2), Ok(3), Err("boom"), Ok(4)]);
}

#[tokio::test(start_paused = true)]
async fn take_remainder_returns_values_buffered_across_polls_and_empties_the_adapter() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_result(10, secs(5)));
    tx.unbounded_send(Ok(1)).unwrap();
    assert!(poll!(s.next()).is_pending());
    tx.unbounded_send(Ok(2)).unwrap();
    assert!(poll!(s.next()).is_pending());
    assert_eq!(s.as_mut().take_remainder(), (vec![1, 2], None));
    assert_eq!(s.as_mut().take_remainder(), (vec![], None));
    // The batch's deadline was disarmed with it: nothing is yielded at 5 s.
    advance(secs(6)).await;
    assert!(poll!(s.next()).is_pending());
    drop(tx);
    assert_eq!(poll!(s.next()), Poll::Ready(None));
}

#[test]
fn into_parts_and_into_inner_return_the_stream_with_its_items() {
    let items: Vec<Item> = vec![Ok(1), Err("x"), Ok(2)];
    let adapter = stream::iter(items.clone()).chunks_timeout_result(3, secs(1));
    assert_eq!(adapter.get_ref().size_hint(), (3, Some(3)));
    assert_eq!(adapter.buffered_values(), &[] as &[u32]);
    let (inner, buffered, held) = adapter.into_parts();
    assert!(buffered.is_empty());
    assert!(held.is_none());
    assert_eq!(
        futures::executor::block_on_stream(inner).collect::<Vec<_>>(),
        items
    );

    let mut adapter = stream::iter(items.clone()).chunks_timeout_result(3, secs(1));
    assert_eq!(
        futures::executor::block_on(adapter.get_mut().next()),
        Some(Ok(1))
    );
    let inner = adapter.into_inner();
    assert_eq!(
        futures::executor::block_on_stream(inner).collect::<Vec<_>>(),
        items[1..].to_vec()
    );
}

#[tokio::test(start_paused = true)]
async fn get_pin_mut_reaches_the_upstream() {
    let mut s =
        pin!(stream::iter(vec![Ok::<u32, ()>(1), Ok(2), Ok(3)]).chunks_timeout_result(2, secs(1)));
    assert_eq!(s.as_mut().get_pin_mut().next().await, Some(Ok(1)));
    assert_eq!(s.next().await, Some(Ok(vec![2, 3])));
}

// ---------------------------------------------------------------------------------------
// Construction
// ---------------------------------------------------------------------------------------

#[test]
#[should_panic(expected = "max_items")]
fn zero_max_items_panics_naming_the_parameter() {
    let _ = stream::empty::<Item>().chunks_timeout_result(0, secs(1));
}

thread_local! {
    static LAST_PANIC: RefCell<Option<(String, u32)>> = const { RefCell::new(None) };
}

/// Installs, once for the whole test binary, a panic hook that records the location of the
/// current thread's last panic and then defers to the previous hook.
fn record_panic_locations() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(location) = info.location() {
                LAST_PANIC.with(|last| {
                    *last.borrow_mut() = Some((location.file().to_owned(), location.line()))
                });
            }
            previous(info);
        }));
    });
}

#[test]
fn zero_max_items_panic_points_at_the_caller() {
    record_panic_locations();
    let before = line!();
    let result = std::panic::catch_unwind(|| {
        let _ = stream::empty::<Item>().chunks_timeout_result(0, secs(1));
    });
    let after = line!();

    let payload = result.expect_err("max_items == 0 must panic");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .expect("a string panic message");
    assert!(message.contains("max_items"), "message: {message}");

    let (file, line) = LAST_PANIC
        .with(|last| last.borrow_mut().take())
        .expect("the hook saw the panic");
    assert!(
        file.ends_with("chunks_timing.rs"),
        "panic located in {file}:{line}, not in the caller"
    );
    assert!(before < line && line < after, "line {line}");
}

#[test]
fn construction_outside_a_runtime_does_not_panic() {
    assert!(tokio::runtime::Handle::try_current().is_err());
    let (tx, rx) = mpsc::unbounded::<Item>();
    let s = rx.chunks_timeout_result(4, secs(2));
    assert!(format!("{s:?}").contains("ChunksTimeoutResult"));
    assert_eq!(s.armed_deadline(), None);
    assert_eq!(s.last_flush_reason(), None);
    drop(s);
    drop(tx);
    let s = stream::iter(vec![Ok::<u32, ()>(1)]).chunks_timeout_result(1, Duration::ZERO);
    drop(s);
}

#[tokio::test(start_paused = true)]
async fn huge_timeout_does_not_panic_and_never_fires() {
    // tokio-stream's `chunks_timeout` and `tokio::time::sleep` treat a deadline past the
    // clock's range as "never"; a careful user expects the same here.
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_result(10, Duration::MAX));
    tx.unbounded_send(Ok(1)).unwrap();
    assert!(poll!(s.next()).is_pending());
    // Twenty years: past any stand-in for "never" shorter than the thirty years used.
    advance(secs(20 * 365 * 24 * 3_600)).await;
    assert!(poll!(s.next()).is_pending());
    drop(tx);
    assert_eq!(poll!(s.next()), Poll::Ready(Some(Ok(vec![1]))));
    assert_eq!(s.last_flush_reason(), Some(FlushReason::End));
}

// ---------------------------------------------------------------------------------------
// size_hint
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn size_hint_bounds_hold_at_every_step_on_iter_streams() {
    let patterns: Vec<Vec<Item>> = vec![
        vec![],
        vec![Ok(1)],
        vec![Err("e")],
        (1..=10).map(Ok).collect(),
        vec![Ok(1), Err("a"), Ok(2), Ok(3), Err("b"), Err("c"), Ok(4)],
        vec![Err("a"), Ok(1), Ok(2), Ok(3), Ok(4), Ok(5), Err("b")],
        vec![Ok(1), Ok(2), Ok(3), Ok(4), Ok(5), Ok(6), Ok(7), Err("z")],
    ];
    for pattern in patterns {
        for max in 1..=4 {
            let total = stream::iter(pattern.clone())
                .chunks_timeout_result(max, secs(1))
                .count()
                .await;
            let mut s = pin!(stream::iter(pattern.clone()).chunks_timeout_result(max, secs(1)));
            let mut produced = 0;
            loop {
                let (lower, upper) = s.size_hint();
                let remaining = total - produced;
                assert!(
                    lower <= remaining,
                    "{pattern:?} max {max}: lower {lower} > remaining {remaining}"
                );
                assert!(
                    upper.is_none_or(|upper| remaining <= upper),
                    "{pattern:?} max {max}: upper {upper:?} < remaining {remaining}"
                );
                match s.next().await {
                    Some(_) => produced += 1,
                    None => break,
                }
            }
            assert_eq!(produced, total);
            assert_eq!(s.size_hint(), (0, Some(0)));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn size_hint_is_tight_for_ok_only_iter_streams() {
    let s = stream::iter((1..=10).map(Ok::<u32, ()>)).chunks_timeout_result(3, secs(1));
    // 10 values in batches of at most 3: at least 4 batches.
    let (lower, upper) = s.size_hint();
    assert_eq!(lower, 4);
    assert!(upper.is_some_and(|u| u >= 4));
    let s = stream::iter((1..=9).map(Ok::<u32, ()>)).chunks_timeout_result(3, secs(1));
    assert_eq!(s.size_hint().0, 3);
}

#[tokio::test(start_paused = true)]
async fn size_hint_counts_buffered_values_and_held_error() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_result(10, secs(5)));
    tx.unbounded_send(Ok(1)).unwrap();
    assert!(poll!(s.next()).is_pending());
    // One batch is certain (value 1 is buffered), the channel may bring any number more.
    assert_eq!(s.size_hint().0, 1);
    tx.unbounded_send(Err("e")).unwrap();
    assert_eq!(poll!(s.next()), Poll::Ready(Some(Ok(vec![1]))));
    // The held-back error is certain.
    assert_eq!(s.size_hint().0, 1);
    drop(tx);
    assert_eq!(poll!(s.next()), Poll::Ready(Some(Err("e"))));
    assert_eq!(poll!(s.next()), Poll::Ready(None));
    assert_eq!(s.size_hint(), (0, Some(0)));
}

// ---------------------------------------------------------------------------------------
// last_flush_reason
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn last_flush_reason_reports_full_deadline_error_and_end() {
    let start = Instant::now();
    let rx = scheduled::<u32, &str>(
        start,
        vec![
            (ms(0), Ok(1)),
            (ms(0), Ok(2)), // Full at 0
            (ms(500), Ok(3)),
            // Deadline at 1.5 s
            (ms(2_000), Ok(4)),
            (ms(2_500), Err("e")), // Error at 2.5 s
            (ms(3_000), Ok(5)),
        ],
        ms(3_200), // End at 3.2 s
    );
    let adapter = rx.chunks_timeout_result(2, secs(1));
    assert_eq!(adapter.last_flush_reason(), None);
    let (outs, ended) = collect_tagged(adapter, start).await;
    let expected: Vec<Out<u32, &str>> = vec![
        batch(ms(0), vec![1, 2], FlushReason::Full),
        batch(ms(1_500), vec![3], FlushReason::Deadline),
        batch(ms(2_500), vec![4], FlushReason::Error),
        error(ms(2_500), "e"),
        batch(ms(3_200), vec![5], FlushReason::End),
    ];
    assert_eq!(outs, expected);
    assert_eq!(ended, ms(3_200));
}

#[tokio::test(start_paused = true)]
async fn batches_can_be_tagged_with_their_reason_through_poll_fn() {
    let start = Instant::now();
    let rx = scheduled::<u32, &str>(
        start,
        vec![(ms(0), Ok(1)), (ms(0), Ok(2)), (ms(10), Ok(3))],
        secs(1),
    );
    let mut batches = Box::pin(rx.chunks_timeout_result(2, ms(100)));
    let tagged = stream::poll_fn(move |cx| {
        batches
            .as_mut()
            .poll_next(cx)
            .map(|o| o.map(|r| r.map(|b| (b, batches.last_flush_reason().unwrap()))))
    });
    let got: Vec<_> = tagged.collect().await;
    assert_eq!(
        got,
        vec![
            Ok((vec![1, 2], FlushReason::Full)),
            Ok((vec![3], FlushReason::Deadline)),
        ]
    );
}
