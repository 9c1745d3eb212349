//! The type-state builders of [`ChunksTimeoutResult`].

use futures_core::stream::TryStream;

use super::ChunksTimeoutResult;
#[cfg(doc)]
use crate::adapters::batch::FlushReason;
use crate::adapters::batch::{BatchOutput, MaxWeight, NoInfo, NoWeight, Weigh, WithInfo};

impl<St: TryStream, I: BatchOutput<St::Ok>> ChunksTimeoutResult<St, NoWeight, I> {
    /// Adds a weight cap: a batch holds at most `max_weight` in total (bytes, bind
    /// parameters, anything additive), each value weighing `weigh(&value)`.
    ///
    /// Rules, on top of those of
    /// [`chunks_timeout_result`](crate::ResultStreamExt::chunks_timeout_result):
    /// - `weigh` is called exactly once per value, when it arrives;
    /// - a value that would push the batch's total past `max_weight` closes the batch
    ///   ([`FlushReason::Weight`]) and starts the next one; a total that would overflow
    ///   `usize` is past any cap;
    /// - a batch whose total reaches `max_weight` is yielded at once;
    /// - a value heavier than `max_weight` is yielded alone, at once: never held for the
    ///   deadline, never dropped, never an error; weight 0 is allowed;
    /// - a value that starts the next batch this way is buffered (so
    ///   [`take_remainder`](Self::take_remainder) returns it), and its batch's deadline is
    ///   `timeout` after the poll in which it arrived;
    /// - on a ready upstream each batch is the longest run of values that fits both caps.
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
        self.weighed(MaxWeight::new("chunks_timeout_result", max_weight, weigh))
    }

    /// [`max_weight`](Self::max_weight) for a cap known only at run time (a command-line
    /// flag): `Some(max_weight)` applies its rules, `None` weighs nothing (`weigh` is never
    /// called) and caps nothing, and both give the same type, so one chain serves both.
    ///
    /// # Panics
    ///
    /// Panics, at the caller's location, if `max_weight` is `Some(0)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use futures::{StreamExt, stream};
    /// use result_stream::ResultStreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// for (cap, expected) in [(Some(6), vec![vec!["ab", "cde"], vec!["fghi"]]), (None, vec![vec!["ab", "cde", "fghi"]])] {
    ///     let rows = stream::iter(["ab", "cde", "fghi"].map(Ok::<_, ()>));
    ///     let batches: Vec<_> = rows
    ///         .chunks_timeout_result(100, Duration::from_secs(1))
    ///         .max_weight_opt(cap, |row: &&str| row.len())
    ///         .map(Result::unwrap)
    ///         .collect()
    ///         .await;
    ///     assert_eq!(batches, expected);
    /// }
    /// # }
    /// ```
    #[track_caller]
    pub fn max_weight_opt<F>(
        self,
        max_weight: Option<usize>,
        weigh: F,
    ) -> ChunksTimeoutResult<St, Option<MaxWeight<F>>, I>
    where
        F: FnMut(&St::Ok) -> usize,
    {
        // A `match`, not `Option::map`: `#[track_caller]` does not reach into a closure.
        #[allow(clippy::manual_map)]
        let weigher = match max_weight {
            Some(max) => Some(MaxWeight::new("chunks_timeout_result", max, weigh)),
            None => None,
        };
        self.weighed(weigher)
    }

    fn weighed<V: Weigh<St::Ok, Weight = usize>>(
        self,
        weigher: V,
    ) -> ChunksTimeoutResult<St, V, I> {
        let state =
            (self.state).rebuild(|limiter, _, output| (limiter.with_weigher(weigher), 0, output));
        ChunksTimeoutResult {
            stream: self.stream,
            timer: self.timer,
            state,
            pending_error: self.pending_error,
            timeout: self.timeout,
        }
    }
}

impl<St: TryStream, W: Weigh<St::Ok>> ChunksTimeoutResult<St, W, NoInfo> {
    /// Yields each batch with a [`BatchInfo`](crate::BatchInfo): `Ok((batch, info))`.
    ///
    /// - `info.reason()`: why the batch closed ([`FlushReason`]);
    /// - `info.weight()`: its total weight, `None` without a weight cap;
    /// - `info.age()`: from its first value's arrival to its closing, on the `tokio::time`
    ///   clock, which is read twice per batch for it, and only in this mode (where only the
    ///   reason is needed, [`last_flush_reason`](Self::last_flush_reason) reads no clock);
    /// - errors pass through as before.
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
        let state = self
            .state
            .rebuild(|limiter, total, _| (limiter, total, WithInfo::default()));
        ChunksTimeoutResult {
            stream: self.stream,
            timer: self.timer,
            state,
            pending_error: self.pending_error,
            timeout: self.timeout,
        }
    }
}
