//! Rules of `chunks_timeout_by_key_result`, on a paused Tokio clock.
//!
//! Values are `(key, n)` pairs keyed by their first field; each expected batch is written
//! with the time (since the start) at which it must be yielded.

mod common;

use std::cell::RefCell;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::{ms, scheduled, secs};
use futures::channel::mpsc;
use futures::stream::{self, FusedStream, Stream};
use futures::{StreamExt, poll};
use result_stream::{ChunksTimeoutByKeyResult, FlushReason, ResultStreamExt};
use tokio::time::{Instant, advance};

type Value = (char, u32);
type Item = Result<Value, &'static str>;
type Out = (Duration, Result<(char, Vec<u32>), &'static str>);

fn key(value: &Value) -> char {
    value.0
}

/// `Ok((key, n))` at `at` milliseconds.
fn v(at: u64, key: char, n: u32) -> (Duration, Item) {
    (ms(at), Ok((key, n)))
}

/// An expected batch: `key`'s values `ns`, yielded at `at` milliseconds.
fn b(at: u64, key: char, ns: &[u32]) -> Out {
    (ms(at), Ok((key, ns.to_vec())))
}

/// An expected error, yielded at `at` milliseconds.
fn e(at: u64, error: &'static str) -> Out {
    (ms(at), Err(error))
}

/// Drives `stream` to its end and records each output (values reduced to their numbers)
/// with its time since `start`; also returns the time at which `None` came.
async fn collect<St>(stream: St, start: Instant) -> (Vec<Out>, Duration)
where
    St: Stream<Item = Result<(char, Vec<Value>), &'static str>>,
{
    let mut stream = pin!(stream);
    let mut outs = Vec::new();
    while let Some(item) = stream.next().await {
        let item = item.map(|(k, batch)| {
            assert!(batch.iter().all(|value| value.0 == k), "a batch of one key");
            (k, batch.into_iter().map(|value| value.1).collect())
        });
        outs.push((start.elapsed(), item));
    }
    (outs, start.elapsed())
}

type Rx = mpsc::UnboundedReceiver<Item>;
type ByKey = ChunksTimeoutByKeyResult<Rx, char, fn(&Value) -> char>;

async fn run(
    schedule: Vec<(Duration, Item)>,
    end: u64,
    adapt: impl FnOnce(Rx) -> ByKey,
) -> (Vec<Out>, Duration) {
    let start = Instant::now();
    let rx = scheduled(start, schedule, ms(end));
    collect(adapt(rx), start).await
}

fn by_key(max_items: usize, timeout: Duration) -> impl FnOnce(Rx) -> ByKey {
    move |rx| rx.chunks_timeout_by_key_result(key as fn(&Value) -> char, max_items, timeout)
}

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

#[derive(Default)]
struct CountWakes(AtomicUsize);

impl Wake for CountWakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_that_closes_before_its_deadline_leaves_no_wake_up_behind() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_by_key_result(key, 2, secs(2)));
    let wakes = Arc::new(CountWakes::default());
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
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = Box::pin(rx.chunks_timeout_by_key_result(key, 10, secs(2)));

    let first = paused();
    first.block_on(async {
        tx.unbounded_send(Ok(('a', 1))).unwrap();
        assert!(poll!(s.next()).is_pending()); // the timer belongs to `first`
        advance(secs(1)).await;
    });
    drop(first);

    let second = paused();
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

// ---------------------------------------------------------------------------------------
// Panics, construction, size_hint, Debug
// ---------------------------------------------------------------------------------------

#[test]
#[should_panic(expected = "`max_items` must be greater than zero")]
fn zero_max_items_panics_naming_the_parameter() {
    let _ = stream::empty::<Item>().chunks_timeout_by_key_result(key, 0, secs(1));
}

#[test]
#[should_panic(expected = "`max_open_keys` must be greater than zero")]
fn zero_max_open_keys_panics_naming_the_parameter() {
    let _ = stream::empty::<Item>()
        .chunks_timeout_by_key_result(key, 1, secs(1))
        .max_open_keys(0);
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

/// Runs `f`, which must panic, and returns the line of the panic in this file.
fn panic_line(f: impl FnOnce() + std::panic::UnwindSafe) -> u32 {
    record_panic_locations();
    std::panic::catch_unwind(f).expect_err("must panic");
    let (file, line) = LAST_PANIC
        .with(|last| last.borrow_mut().take())
        .expect("the hook saw the panic");
    assert!(file.ends_with("keyed_timing.rs"), "panic located in {file}");
    line
}

#[test]
fn zero_size_panics_point_at_the_caller() {
    let before = line!();
    let line = panic_line(|| {
        let _ = stream::empty::<Item>().chunks_timeout_by_key_result(key, 0, secs(1));
    });
    assert!(before < line && line < before + 6, "line {line}");

    let before = line!();
    let line = panic_line(|| {
        let s = stream::empty::<Item>().chunks_timeout_by_key_result(key, 1, secs(1));
        let _ = s.max_open_keys(0);
    });
    assert!(before + 2 < line && line < before + 6, "line {line}");
}

#[test]
fn construction_outside_a_runtime_does_not_panic() {
    assert!(tokio::runtime::Handle::try_current().is_err());
    let (tx, rx) = mpsc::unbounded::<Item>();
    let s = rx
        .chunks_timeout_by_key_result(key, 4, secs(2))
        .max_open_keys(8);
    assert!(format!("{s:?}").contains("ChunksTimeoutByKeyResult"));
    assert_eq!(s.next_deadline(), None);
    assert_eq!(s.open_keys(), 0);
    drop(s);
    drop(tx);
}

#[test]
fn a_ready_upstream_needs_no_runtime() {
    let values = (0..10u32).map(|n| Ok::<Value, ()>((if n % 2 == 0 { 'a' } else { 'b' }, n)));
    let s = stream::iter(values).chunks_timeout_by_key_result(key, 2, secs(1));
    let out: Vec<_> = futures::executor::block_on(s.collect());
    let batch = |k: char, ns: &[u32]| Ok((k, ns.iter().map(|&n| (k, n)).collect::<Vec<_>>()));
    assert_eq!(
        out,
        vec![
            batch('a', &[0, 2]),
            batch('b', &[1, 3]),
            batch('a', &[4, 6]),
            batch('b', &[5, 7]),
            batch('a', &[8]), // the end: a's last batch opened first
            batch('b', &[9]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn size_hint_bounds_hold_at_every_step_on_iter_streams() {
    let patterns: Vec<Vec<Item>> = vec![
        vec![],
        vec![Ok(('a', 1))],
        vec![Err("e")],
        vec![Ok(('a', 1)), Ok(('b', 1)), Err("e"), Ok(('a', 2))],
        (0..9).map(|n| Ok((['a', 'b', 'c'][n % 3], 0))).collect(),
        vec![Ok(('a', 1)), Ok(('a', 2)), Ok(('a', 3)), Err("e"), Err("f")],
    ];
    for pattern in patterns {
        for max_items in 1..=3 {
            let mut s = pin!(stream::iter(pattern.clone()).chunks_timeout_by_key_result(
                key,
                max_items,
                secs(1)
            ));
            let mut remaining = {
                let copy = stream::iter(pattern.clone()).chunks_timeout_by_key_result(
                    key,
                    max_items,
                    secs(1),
                );
                copy.collect::<Vec<_>>().await.len()
            };
            loop {
                let (lower, upper) = s.size_hint();
                assert!(
                    lower <= remaining,
                    "{pattern:?}/{max_items}: {lower} > {remaining}"
                );
                assert!(
                    upper.is_none_or(|upper| remaining <= upper),
                    "{pattern:?}/{max_items}: {upper:?} < {remaining}"
                );
                if s.next().await.is_none() {
                    break;
                }
                remaining -= 1;
            }
            assert_eq!(remaining, 0);
            assert_eq!(s.size_hint(), (0, Some(0)));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn debug_shows_the_open_batches_oldest_first() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(rx.chunks_timeout_by_key_result(key, 10, secs(2)));
    tx.unbounded_send(Ok(('z', 1))).unwrap();
    tx.unbounded_send(Ok(('y', 7))).unwrap();
    assert!(poll!(s.next()).is_pending());
    let debug = format!("{s:?}");
    let z = debug.find("('z', 1)").expect("z's value");
    let y = debug.find("('y', 7)").expect("y's value");
    assert!(z < y, "{debug}");
}

#[tokio::test(start_paused = true)]
async fn the_key_function_is_called_exactly_once_per_value() {
    let calls = std::cell::Cell::new(0);
    let values: Vec<Item> = (0..20u32)
        .map(|n| Ok((['a', 'a', 'b', 'c'][n as usize % 4], n)))
        .collect();
    let s = stream::iter(values).chunks_timeout_by_key_result(
        |v: &Value| {
            calls.set(calls.get() + 1);
            v.0
        },
        3,
        secs(1),
    );
    let batches: Vec<_> = s.collect().await;
    let values: usize = batches.iter().map(|b| b.as_ref().unwrap().1.len()).sum();
    assert_eq!((calls.get(), values), (20, 20));
}

#[test]
fn the_adapter_is_send_and_sync_in_every_type_state() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    let plain = stream::iter(Vec::<Item>::new()).chunks_timeout_by_key_result(key, 2, secs(1));
    send_sync(&plain);
    let full = stream::iter(Vec::<Item>::new())
        .chunks_timeout_by_key_result(key, 2, secs(1))
        .max_open_keys(4)
        .max_weight(10, |v: &Value| v.1 as usize)
        .with_batch_info();
    send_sync(&full);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_pipeline_batches_per_key() {
    let values: Vec<Item> = (0..100u32)
        .map(|n| Ok((['a', 'b'][n as usize % 2], n)))
        .collect();
    let handle = tokio::spawn(async move {
        stream::iter(values)
            .chunks_timeout_by_key_result(key, 10, secs(1))
            .collect::<Vec<_>>()
            .await
    });
    let batches = handle.await.unwrap();
    assert_eq!(batches.len(), 10);
    assert!(batches.iter().all(|b| b.as_ref().unwrap().1.len() == 10));
}
