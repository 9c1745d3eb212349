//! The adapter's API around the batching rules of `chunks_timeout_result`:
//! taking buffered values back out, construction and its panics, `size_hint`, and
//! `last_flush_reason`, on a paused Tokio clock.

mod common;

use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use common::panics::{record_panics, take_panic_location};
use common::{Out, batch, collect_tagged, error, ms, scheduled, secs};
use futures::channel::mpsc;
use futures::stream::{self, Stream};
use futures::{StreamExt, poll};
use result_stream::{FlushReason, ResultStreamExt};
use tokio::time::{Instant, advance};

type Item = Result<u32, &'static str>;

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

#[test]
fn zero_max_items_panic_points_at_the_caller() {
    record_panics();
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

    let (file, line) = take_panic_location().expect("the hook saw the panic");
    assert!(
        file.ends_with("chunks_api.rs"),
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
