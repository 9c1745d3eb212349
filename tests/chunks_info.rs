//! `chunks_timeout_result(..).with_batch_info()`: each batch with why it closed, its
//! total weight and its age, on a paused Tokio clock.

mod common;

use std::pin::pin;
use std::time::Duration;

use common::{ms, scheduled, secs};
use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream;
use result_stream::{BatchInfo, FlushReason, ResultStreamExt};
use tokio::time::{Instant, advance};

type V = (u32, usize);

/// One output: the time it came, and the batch with its info or the error.
type Tagged = (
    Duration,
    Result<(Vec<u32>, FlushReason, Option<usize>, Duration), &'static str>,
);

fn tag(at: Duration, item: Result<(Vec<V>, BatchInfo), &'static str>) -> Tagged {
    let item = item.map(|(batch, info)| {
        let ids = batch.into_iter().map(|(id, _)| id).collect();
        (ids, info.reason(), info.weight(), info.age())
    });
    (at, item)
}

#[tokio::test(start_paused = true)]
async fn info_tells_reason_weight_and_age_of_every_kind_of_flush() {
    let start = Instant::now();
    let rx = scheduled::<V, &str>(
        start,
        vec![
            (ms(0), Ok((1, 2))),
            (ms(100), Ok((2, 2))),
            (ms(250), Ok((3, 2))), // full by count (3 values)
            (ms(1_000), Ok((4, 4))),
            (ms(1_200), Ok((5, 7))), // 4 + 7 > 10: weight, 5 starts the next batch
            (ms(4_000), Ok((6, 1))),
            (ms(4_500), Err("bad")),
            (ms(6_000), Ok((7, 1))),
        ],
        secs(7),
    );
    let mut s = pin!(
        rx.chunks_timeout_result(3, secs(2))
            .max_weight(10, |v: &V| v.1)
            .with_batch_info()
    );
    let mut outs = Vec::new();
    while let Some(item) = s.next().await {
        outs.push(tag(start.elapsed(), item));
    }
    assert_eq!(
        outs,
        vec![
            (
                ms(250),
                Ok((vec![1, 2, 3], FlushReason::Full, Some(6), ms(250)))
            ),
            (
                ms(1_200),
                Ok((vec![4], FlushReason::Weight, Some(4), ms(200)))
            ),
            (
                ms(3_200),
                Ok((vec![5], FlushReason::Deadline, Some(7), secs(2)))
            ),
            (
                ms(4_500),
                Ok((vec![6], FlushReason::Error, Some(1), ms(500)))
            ),
            (ms(4_500), Err("bad")),
            (ms(7_000), Ok((vec![7], FlushReason::End, Some(1), secs(1)))),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn without_max_weight_the_weight_is_none() {
    let mut s = pin!(
        stream::iter((0..5u32).map(Ok::<u32, ()>))
            .chunks_timeout_result(2, secs(1))
            .with_batch_info()
    );
    let mut reasons = Vec::new();
    while let Some(item) = s.next().await {
        let (batch, info) = item.unwrap();
        assert_eq!(info.weight(), None);
        assert_eq!(
            info.age(),
            Duration::ZERO,
            "a ready upstream: no time passes"
        );
        reasons.push((batch, info.reason()));
    }
    assert_eq!(
        reasons,
        vec![
            (vec![0, 1], FlushReason::Full),
            (vec![2, 3], FlushReason::Full),
            (vec![4], FlushReason::End),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn age_runs_from_the_first_value_not_from_the_last_batch() {
    let (tx, rx) = mpsc::unbounded::<Result<V, &str>>();
    let mut s = pin!(
        rx.chunks_timeout_result(2, secs(60))
            .max_weight(10, |v: &V| v.1)
            .with_batch_info()
    );
    tx.unbounded_send(Ok((1, 1))).unwrap();
    tx.unbounded_send(Ok((2, 1))).unwrap();
    let (_, info) = s.next().await.unwrap().unwrap();
    assert_eq!(info.age(), Duration::ZERO);

    // Idle time between batches does not count: the next batch's age starts at its value.
    advance(secs(5)).await;
    tx.unbounded_send(Ok((3, 1))).unwrap();
    assert!(futures::poll!(s.next()).is_pending());
    advance(secs(3)).await;
    tx.unbounded_send(Ok((4, 1))).unwrap();
    let (batch, info) = s.next().await.unwrap().unwrap();
    assert_eq!(
        (batch, info.reason(), info.age()),
        (vec![(3, 1), (4, 1)], FlushReason::Full, secs(3))
    );

    // A value carried into the next batch by the weight cap starts that batch's age.
    tx.unbounded_send(Ok((5, 6))).unwrap();
    assert!(futures::poll!(s.next()).is_pending());
    advance(secs(1)).await;
    tx.unbounded_send(Ok((6, 6))).unwrap();
    let (batch, info) = s.next().await.unwrap().unwrap();
    assert_eq!(
        (batch, info.reason(), info.age()),
        (vec![(5, 6)], FlushReason::Weight, secs(1))
    );
    advance(secs(2)).await;
    drop(tx);
    let (batch, info) = s.next().await.unwrap().unwrap();
    assert_eq!(
        (batch, info.reason(), info.age()),
        (vec![(6, 6)], FlushReason::End, secs(2))
    );
}

#[tokio::test(start_paused = true)]
async fn after_take_remainder_the_age_starts_at_the_next_first_value() {
    let (tx, rx) = mpsc::unbounded::<Result<u32, &str>>();
    let mut s = pin!(rx.chunks_timeout_result(2, secs(60)).with_batch_info());
    tx.unbounded_send(Ok(1)).unwrap();
    assert!(futures::poll!(s.next()).is_pending());
    advance(secs(10)).await;
    assert_eq!(s.as_mut().take_remainder(), (vec![1], None));
    tx.unbounded_send(Ok(2)).unwrap();
    assert!(futures::poll!(s.next()).is_pending());
    advance(secs(1)).await;
    tx.unbounded_send(Ok(3)).unwrap();
    let (batch, info) = s.next().await.unwrap().unwrap();
    assert_eq!((batch, info.age()), (vec![2, 3], secs(1)));
}

#[tokio::test(start_paused = true)]
async fn works_in_a_plain_combinator_chain() {
    // Tag, filter and count without `poll_fn` or reading the adapter between polls.
    let weights: Vec<usize> = stream::iter((0..20u32).map(Ok::<u32, ()>))
        .chunks_timeout_result(4, secs(1))
        .max_weight(12, |v: &u32| *v as usize % 5)
        .with_batch_info()
        .filter_map(|item| async move { item.ok() })
        .map(|(batch, info)| {
            assert_eq!(
                info.weight(),
                Some(batch.iter().map(|v| *v as usize % 5).sum())
            );
            info.weight().unwrap()
        })
        .collect()
        .await;
    assert_eq!(weights.iter().sum::<usize>(), (0..20).map(|v| v % 5).sum());
}

/// Zero-sized values never fill their `Vec`'s capacity, so their batches start another way;
/// their age is still measured from the first value.
#[tokio::test(start_paused = true)]
async fn zero_sized_values_get_their_age_too() {
    let (tx, rx) = mpsc::unbounded::<Result<(), &str>>();
    let mut s = pin!(rx.chunks_timeout_result(3, secs(60)).with_batch_info());
    tx.unbounded_send(Ok(())).unwrap();
    assert!(futures::poll!(s.next()).is_pending());
    advance(secs(4)).await;
    tx.unbounded_send(Ok(())).unwrap();
    tx.unbounded_send(Ok(())).unwrap();
    let (batch, info) = s.next().await.unwrap().unwrap();
    assert_eq!(
        (batch.len(), info.reason(), info.age()),
        (3, FlushReason::Full, secs(4))
    );
}
