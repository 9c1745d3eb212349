//! The type-state builders of [`ChunksTimeoutResult`]: `.max_weight(..)` and
//! `.with_batch_info()`.

use futures_core::stream::TryStream;

use super::ChunksTimeoutResult;
#[cfg(doc)]
use crate::adapters::batch::FlushReason;
use crate::adapters::batch::{MaxWeight, NoInfo, NoWeight, Weigh, WithInfo};

impl<St: TryStream, I> ChunksTimeoutResult<St, NoWeight, I> {
    /// Adds a weight cap: each value is weighed once by `weigh`, and a batch holds at most
    /// `max_weight` in total (bytes, bind parameters, anything additive).
    ///
    /// Rules, on top of those of
    /// [`chunks_timeout_result`](crate::ResultStreamExt::chunks_timeout_result):
    /// - `weigh` is called exactly once per value, when the value arrives;
    /// - when a value would push the batch's total past `max_weight`, the batch is yielded
    ///   ([`FlushReason::Weight`]) and that value starts the next batch;
    /// - a batch whose total reaches `max_weight` is yielded at once;
    /// - a value heavier than `max_weight` is yielded alone, at once: never held for the
    ///   deadline, never dropped, never an error;
    /// - weight 0 is allowed (such values are limited by `max_items` only);
    /// - `max_items`, the deadline, the error and end flushes and
    ///   [`take_remainder`](Self::take_remainder) work as before. A value that starts the next
    ///   batch this way is buffered: `take_remainder` returns it, and its batch's deadline is
    ///   `timeout` after the poll in which it arrived (the one that yielded the previous
    ///   batch), however long the consumer takes to poll again; the clock is read once for
    ///   it. Totals saturate at `usize::MAX`.
    ///
    /// On a ready upstream each batch is the longest run of values that fits both caps
    /// (greedy packing).
    ///
    /// # Panics
    ///
    /// Panics, at the caller's location, if `max_weight` is zero.
    ///
    /// ```
    /// use std::time::Duration;
    /// use futures::{StreamExt, stream};
    /// use result_stream::ResultStreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let rows = stream::iter(["ab", "cde", "f", "ghijklmnop", "qr"].map(Ok::<_, ()>));
    /// let batches: Vec<_> = rows
    ///     .chunks_timeout_result(100, Duration::from_secs(1))
    ///     .max_weight(6, |row: &&str| row.len())
    ///     .collect()
    ///     .await;
    /// assert_eq!(batches, vec![
    ///     Ok(vec!["ab", "cde", "f"]), // 6 bytes: full by weight
    ///     Ok(vec!["ghijklmnop"]),     // heavier than 6 on its own: alone, at once
    ///     Ok(vec!["qr"]),             // the end
    /// ]);
    /// # }
    /// ```
    #[track_caller]
    pub fn max_weight<F>(
        self,
        max_weight: usize,
        weigh: F,
    ) -> ChunksTimeoutResult<St, MaxWeight<F>, I>
    where
        F: FnMut(&St::Ok) -> usize,
    {
        let weigher = MaxWeight::new("chunks_timeout_result", max_weight, weigh);
        ChunksTimeoutResult {
            stream: self.stream,
            items: self.items,
            total: 0,
            pending_error: self.pending_error,
            deadline: self.deadline,
            timer_runtime: self.timer_runtime,
            started: self.started,
            upstream_done: self.upstream_done,
            last_flush: self.last_flush,
            limiter: self.limiter.with_weigher(weigher),
            output: self.output,
            timeout: self.timeout,
        }
    }
}

impl<St: TryStream, W: Weigh<St::Ok>> ChunksTimeoutResult<St, W, NoInfo> {
    /// Yields each batch with a [`BatchInfo`](crate::BatchInfo): `Ok((batch, info))`.
    ///
    /// `info` tells why the batch closed ([`FlushReason`]), its total weight (`None` without
    /// [`max_weight`](Self::max_weight)) and its age: the time from its first value's arrival
    /// to its closing. The `tokio::time` clock is read twice per batch for the age (at its
    /// first value and when it closes), and only in this mode: tens of nanoseconds per read,
    /// which dominates batches of a few values from a ready upstream (see BENCHMARKS.md);
    /// where only the reason is needed, [`last_flush_reason`](Self::last_flush_reason) costs
    /// nothing. Errors pass through as before.
    ///
    /// ```
    /// use std::time::Duration;
    /// use futures::{SinkExt, StreamExt};
    /// use result_stream::{FlushReason, ResultStreamExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let (mut tx, rx) = futures::channel::mpsc::unbounded::<Result<u32, String>>();
    /// let mut batches = std::pin::pin!(
    ///     rx.chunks_timeout_result(2, Duration::from_secs(5)).with_batch_info()
    /// );
    /// for v in 1..=3 { tx.send(Ok(v)).await.unwrap(); }
    ///
    /// let (batch, info) = batches.next().await.unwrap().unwrap();
    /// assert_eq!((batch, info.reason(), info.age()), (vec![1, 2], FlushReason::Full, Duration::ZERO));
    ///
    /// let (batch, info) = batches.next().await.unwrap().unwrap(); // waits for the deadline
    /// assert_eq!((batch, info.reason(), info.age()), (vec![3], FlushReason::Deadline, Duration::from_secs(5)));
    /// assert_eq!(info.weight(), None); // no `.max_weight(..)`
    /// # }
    /// ```
    pub fn with_batch_info(self) -> ChunksTimeoutResult<St, W, WithInfo> {
        ChunksTimeoutResult {
            stream: self.stream,
            items: self.items,
            total: self.total,
            pending_error: self.pending_error,
            deadline: self.deadline,
            timer_runtime: self.timer_runtime,
            started: self.started,
            upstream_done: self.upstream_done,
            last_flush: self.last_flush,
            limiter: self.limiter,
            output: WithInfo::default(),
            timeout: self.timeout,
        }
    }
}
