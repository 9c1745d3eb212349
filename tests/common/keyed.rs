//! Helpers of the per-key timing tests: values are `(key, n)` pairs keyed by their first
//! field, and each expected batch is written with the time (since the start) at which it
//! must be yielded.

use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::Stream;
use result_stream::{ChunksTimeoutByKeyResult, ResultStreamExt};
use tokio::time::Instant;

use super::{ms, scheduled};

pub type Value = (char, u32);
pub type Item = Result<Value, &'static str>;
pub type Out = (Duration, Result<(char, Vec<u32>), &'static str>);

pub fn key(value: &Value) -> char {
    value.0
}

/// `Ok((key, n))` at `at` milliseconds.
pub fn v(at: u64, key: char, n: u32) -> (Duration, Item) {
    (ms(at), Ok((key, n)))
}

/// An expected batch: `key`'s values `ns`, yielded at `at` milliseconds.
pub fn b(at: u64, key: char, ns: &[u32]) -> Out {
    (ms(at), Ok((key, ns.to_vec())))
}

/// An expected error, yielded at `at` milliseconds.
pub fn e(at: u64, error: &'static str) -> Out {
    (ms(at), Err(error))
}

/// Drives `stream` to its end and records each output (values reduced to their numbers)
/// with its time since `start`; also returns the time at which `None` came.
pub async fn collect<St>(stream: St, start: Instant) -> (Vec<Out>, Duration)
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

pub type Rx = mpsc::UnboundedReceiver<Item>;
pub type ByKey = ChunksTimeoutByKeyResult<Rx, char, fn(&Value) -> char>;

pub async fn run(
    schedule: Vec<(Duration, Item)>,
    end: u64,
    adapt: impl FnOnce(Rx) -> ByKey,
) -> (Vec<Out>, Duration) {
    let start = Instant::now();
    let rx = scheduled(start, schedule, ms(end));
    collect(adapt(rx), start).await
}

pub fn by_key(max_items: usize, timeout: Duration) -> impl FnOnce(Rx) -> ByKey {
    move |rx| rx.chunks_timeout_by_key_result(key as fn(&Value) -> char, max_items, timeout)
}
