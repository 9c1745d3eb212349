//! The `tracing` feature's one event per flushed batch: target `result_stream::batch`,
//! level `DEBUG`, fields `reason`, `len`, `weight` (with a weight cap), `age_ms` (when the
//! batch's first arrival was timed) and `key` (for keyed batches given a key formatter).
//! Without the feature every function here is empty and inlined away.

use core::fmt;

use tokio::time::Instant;

use super::FlushReason;

/// How a per-key batcher shows a key in its events: a user-supplied formatter, so that no
/// bound on the key depends on the feature.
pub(crate) type KeyFormatter<K> = fn(&K, &mut fmt::Formatter<'_>) -> fmt::Result;

/// A key with its formatter, for the event's `key` field.
pub(crate) struct Shown<'a, K>(pub(crate) &'a K, pub(crate) KeyFormatter<K>);

impl<K> fmt::Debug for Shown<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.1)(self.0, f)
    }
}

/// Whether a subscriber wants batch events: the first value of a batch is then timed, for
/// the event's `age_ms`.
#[cfg(feature = "tracing")]
#[inline(always)]
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: "result_stream::batch", tracing::Level::DEBUG)
}

/// Emits the event of a batch of `len` values closed for `reason`, whose first value
/// arrived at `opened` (if timed), with its key if it is shown.
#[inline(always)]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn flushed(
    reason: FlushReason,
    len: usize,
    weight: Option<usize>,
    opened: Option<Instant>,
    key: Option<&dyn fmt::Debug>,
) {
    #[cfg(feature = "tracing")]
    {
        let age_ms = opened.map(|opened| {
            u64::try_from(Instant::now().saturating_duration_since(opened).as_millis())
                .unwrap_or(u64::MAX)
        });
        match key {
            Some(key) => tracing::debug!(
                target: "result_stream::batch",
                reason = ?reason, len, weight, age_ms, key = ?key,
                "batch flushed"
            ),
            None => tracing::debug!(
                target: "result_stream::batch",
                reason = ?reason, len, weight, age_ms,
                "batch flushed"
            ),
        }
    }
}
