//! Helpers shared by the integration tests: scheduled channels on a paused Tokio clock and
//! collectors that record when (and why) each batch was yielded. The submodules hold a
//! counting waker, a panic hook that records where a panic happened, and what the per-key
//! reference models share (their values and errors, and the replay of a schedule).
#![allow(dead_code)]

pub mod keyed;
pub mod keyed_model;
pub mod panics;
pub mod wakers;

use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc;
use futures::stream::Stream;
use result_stream::batch::Weigh;
use result_stream::{ChunksTimeoutResult, FlushReason};
use tokio::time::Instant;

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `n` seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A current-thread Tokio runtime with a timer, its clock paused.
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// Spawns a task that sends each `(offset, item)` when `start + offset` is reached (at once,
/// without yielding, when that instant is already here), then closes the channel at
/// `start + end`.
///
/// Items with the same offset are sent back to back, so the receiver sees them as one burst.
pub fn scheduled<T, E>(
    start: Instant,
    schedule: Vec<(Duration, Result<T, E>)>,
    end: Duration,
) -> mpsc::UnboundedReceiver<Result<T, E>>
where
    T: Send + 'static,
    E: Send + 'static,
{
    let (tx, rx) = mpsc::unbounded();
    tokio::spawn(async move {
        for (offset, item) in schedule {
            sleep_until_not_before(start + offset).await;
            tx.unbounded_send(item).expect("receiver alive");
        }
        sleep_until_not_before(start + end).await;
        drop(tx);
    });
    rx
}

/// Sleeps until `at`, or does nothing (not even yield) when `at` is already here.
pub async fn sleep_until_not_before(at: Instant) {
    if Instant::now() < at {
        tokio::time::sleep_until(at).await;
    }
}

/// One output of a [`ChunksTimeoutResult`], with the time since `start` at which it was
/// yielded and, for a batch, the adapter's [`FlushReason`] read right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out<T, E> {
    pub at: Duration,
    pub item: Result<Vec<T>, E>,
    pub reason: Option<FlushReason>,
}

/// Shorthand for an expected batch.
pub fn batch<T, E>(at: Duration, values: Vec<T>, reason: FlushReason) -> Out<T, E> {
    Out {
        at,
        item: Ok(values),
        reason: Some(reason),
    }
}

/// Shorthand for an expected error.
pub fn error<T, E>(at: Duration, error: E) -> Out<T, E> {
    Out {
        at,
        item: Err(error),
        reason: None,
    }
}

/// Drives `stream` to its end, recording each output with its time since `start`, and
/// returns the outputs and the time at which `None` came.
pub async fn collect_tagged<St, W, T, E>(
    stream: ChunksTimeoutResult<St, W>,
    start: Instant,
) -> (Vec<Out<T, E>>, Duration)
where
    St: Stream<Item = Result<T, E>>,
    W: Weigh<T>,
{
    let mut stream = Box::pin(stream);
    let mut outs = Vec::new();
    while let Some(item) = stream.next().await {
        let at = start.elapsed();
        let reason = match item {
            Ok(_) => stream.last_flush_reason(),
            Err(_) => None,
        };
        outs.push(Out { at, item, reason });
    }
    (outs, start.elapsed())
}
