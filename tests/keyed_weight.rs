//! `.max_weight(..)` and `.with_batch_info()` on `chunks_timeout_by_key_result`: the rules
//! of `chunks_timeout_result`'s weight cap and batch info, per key, on a paused Tokio clock.

mod common;

use std::cell::Cell;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use common::secs;
use futures::channel::mpsc;
use futures::{StreamExt, poll, stream};
use result_stream::{FlushReason, ResultStreamExt};
use tokio::time::{Instant, advance};

/// `(key, weight)`.
type Value = (char, usize);
type Item = Result<Value, &'static str>;

#[tokio::test(start_paused = true)]
async fn each_key_has_its_own_weight_total() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(
        rx.chunks_timeout_by_key_result(|v| v.0, 100, secs(2))
            .max_weight(10, |v| v.1)
    );
    // a: 6, b: 6 — neither is past 10, though together they would be.
    tx.unbounded_send(Ok(('a', 6))).unwrap();
    tx.unbounded_send(Ok(('b', 6))).unwrap();
    assert!(poll!(s.next()).is_pending());
    assert_eq!(s.open_keys(), 2);

    // a: 6 + 5 would pass 10: a's batch goes, ('a', 5) starts a's next one; b is untouched.
    tx.unbounded_send(Ok(('a', 5))).unwrap();
    assert_eq!(
        poll!(s.next()),
        Poll::Ready(Some(Ok(('a', vec![('a', 6)]))))
    );
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Weight));
    assert_eq!(s.buffered_values(&'a'), &[('a', 5)]);
    assert_eq!(s.buffered_values(&'b'), &[('b', 6)]);

    // b reaches exactly 10: yielded at once.
    tx.unbounded_send(Ok(('b', 4))).unwrap();
    assert_eq!(
        poll!(s.next()),
        Poll::Ready(Some(Ok(('b', vec![('b', 6), ('b', 4)]))))
    );
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Weight));
}

#[tokio::test(start_paused = true)]
async fn a_value_that_splits_its_keys_batch_starts_a_deadline_of_its_own() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(
        rx.chunks_timeout_by_key_result(|v| v.0, 100, secs(2))
            .max_weight(10, |v| v.1)
    );
    let start = Instant::now();
    tx.unbounded_send(Ok(('a', 8))).unwrap();
    assert!(poll!(s.next()).is_pending());
    advance(secs(1)).await;
    tx.unbounded_send(Ok(('a', 8))).unwrap();
    assert_eq!(
        poll!(s.next()),
        Poll::Ready(Some(Ok(('a', vec![('a', 8)]))))
    );
    assert_eq!(s.next_deadline(), Some(start + secs(3)));
    assert_eq!(s.next().await, Some(Ok(('a', vec![('a', 8)]))));
    assert_eq!(start.elapsed(), secs(3));
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Deadline));
}

#[tokio::test(start_paused = true)]
async fn a_value_heavier_than_max_weight_goes_alone_at_once_and_evicts_nothing() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(
        rx.chunks_timeout_by_key_result(|v| v.0, 100, secs(2))
            .max_weight(10, |v| v.1)
            .max_open_keys(1)
    );
    tx.unbounded_send(Ok(('a', 1))).unwrap();
    tx.unbounded_send(Ok(('b', 50))).unwrap(); // a new key, but alone it is closed
    assert_eq!(
        poll!(s.next()),
        Poll::Ready(Some(Ok(('b', vec![('b', 50)]))))
    );
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Weight));
    assert_eq!(s.open_keys_oldest_first().collect::<Vec<_>>(), [&'a']);

    // An oversize value of an open key: the open batch first, then the value alone.
    tx.unbounded_send(Ok(('a', 11))).unwrap();
    assert_eq!(
        poll!(s.next()),
        Poll::Ready(Some(Ok(('a', vec![('a', 1)]))))
    );
    assert_eq!(
        poll!(s.next()),
        Poll::Ready(Some(Ok(('a', vec![('a', 11)]))))
    );
    assert_eq!(s.last_flush_reason(), Some(FlushReason::Weight));
    assert_eq!(s.open_keys(), 0);
    assert!(poll!(s.next()).is_pending());
}

#[tokio::test(start_paused = true)]
async fn weigh_is_called_exactly_once_per_value() {
    let calls = Cell::new(0);
    let values = [('a', 3), ('b', 9), ('a', 9), ('b', 2), ('a', 20), ('c', 0)];
    let s = stream::iter(values.map(Ok::<Value, ()>))
        .chunks_timeout_by_key_result(|v| v.0, 2, secs(1))
        .max_weight(10, |v| {
            calls.set(calls.get() + 1);
            v.1
        });
    let out: Vec<_> = s.collect().await;
    assert_eq!(calls.get(), values.len());
    let flattened: usize = out.iter().map(|b| b.as_ref().unwrap().1.len()).sum();
    assert_eq!(flattened, values.len());
}

#[tokio::test(start_paused = true)]
async fn batch_info_tells_each_keys_reason_weight_and_age() {
    let (tx, rx) = mpsc::unbounded::<Item>();
    let mut s = pin!(
        rx.chunks_timeout_by_key_result(|v| v.0, 3, secs(4))
            .max_open_keys(2)
            .max_weight(100, |v| v.1)
            .with_batch_info()
    );
    let mut next = async || {
        let (key, (batch, info)) = s.next().await.unwrap().unwrap();
        (key, batch.len(), info.reason(), info.weight(), info.age())
    };
    tx.unbounded_send(Ok(('a', 1))).unwrap();
    tx.unbounded_send(Ok(('b', 2))).unwrap();
    advance(secs(1)).await;
    tx.unbounded_send(Ok(('b', 3))).unwrap();
    // Values are taken (and their batches opened) when the adapter is first polled: 1 s.
    tx.unbounded_send(Ok(('c', 4))).unwrap(); // a third key evicts a
    assert_eq!(
        next().await,
        ('a', 1, FlushReason::Eviction, Some(1), Duration::ZERO)
    );
    advance(secs(1)).await;
    tx.unbounded_send(Ok(('b', 5))).unwrap(); // b is full
    assert_eq!(next().await, ('b', 3, FlushReason::Full, Some(10), secs(1)));
    assert_eq!(
        next().await,
        ('c', 1, FlushReason::Deadline, Some(4), secs(4))
    );
    tx.unbounded_send(Ok(('d', 6))).unwrap();
    tx.unbounded_send(Err("boom")).unwrap();
    assert_eq!(
        next().await,
        ('d', 1, FlushReason::Error, Some(6), Duration::ZERO)
    );
    assert_eq!(s.next().await, Some(Err("boom")));
    tx.unbounded_send(Ok(('e', 7))).unwrap();
    advance(secs(1)).await;
    drop(tx);
    let (key, (_, info)) = s.next().await.unwrap().unwrap();
    assert_eq!(
        (key, info.reason(), info.weight(), info.age()),
        ('e', FlushReason::End, Some(7), Duration::ZERO)
    );
}

#[tokio::test(start_paused = true)]
async fn batch_info_without_a_weight_cap_reports_no_weight() {
    let s = stream::iter([('a', 1), ('a', 2)].map(Ok::<Value, ()>))
        .chunks_timeout_by_key_result(|v| v.0, 2, secs(1))
        .with_batch_info();
    let out: Vec<_> = s.collect().await;
    let (key, (batch, info)) = out[0].clone().unwrap();
    assert_eq!((key, batch.len()), ('a', 2));
    assert_eq!((info.reason(), info.weight()), (FlushReason::Full, None));
}

#[test]
#[should_panic(expected = "`max_weight` must be greater than zero")]
fn zero_max_weight_panics_naming_the_parameter() {
    let _ = stream::empty::<Item>()
        .chunks_timeout_by_key_result(|v| v.0, 1, secs(1))
        .max_weight(0, |v| v.1);
}

/// A sum past `usize::MAX` is past any cap: it never saturates into a batch "weighing"
/// `usize::MAX`.
#[tokio::test(start_paused = true)]
async fn an_overflowing_weight_sum_is_past_the_cap() {
    let values = [('a', usize::MAX - 1), ('a', 5), ('a', 0)].map(Ok::<Value, ()>);
    let out: Vec<_> = stream::iter(values)
        .chunks_timeout_by_key_result(|v| v.0, 10, secs(1))
        .max_weight(usize::MAX, |v| v.1)
        .with_batch_info()
        .map(|b| b.map(|(_, (batch, info))| (batch, info.reason(), info.weight())))
        .collect()
        .await;
    assert_eq!(
        out,
        vec![
            Ok((
                vec![('a', usize::MAX - 1)],
                FlushReason::Weight,
                Some(usize::MAX - 1)
            )),
            Ok((vec![('a', 5), ('a', 0)], FlushReason::End, Some(5))),
        ]
    );
}
