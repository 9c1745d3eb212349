//! The `tracing` feature's one event per flushed batch: target `result_stream::batch`,
//! level `DEBUG`, fields `reason`, `len`, `weight` (with a weight cap), `age_ms` (when the
//! batch's first arrival was timed) and `key` (`Debug`, for keyed batches). Without the
//! feature every function here is empty and inlined away.

#[cfg(feature = "tracing")]
use core::fmt::Debug;

use tokio::time::Instant;

use super::FlushReason;

/// What a per-key batcher needs of its keys for the `tracing` feature's events: `Debug`
/// with the feature on, nothing with it off (so, with the feature on, keys must be `Debug`,
/// as `String`, integers and tuples of them are).
#[cfg(feature = "tracing")]
pub trait TracedKey: Debug {}
#[cfg(feature = "tracing")]
impl<K: Debug + ?Sized> TracedKey for K {}

/// What a per-key batcher needs of its keys for the `tracing` feature's events: `Debug`
/// with the feature on, nothing with it off.
#[cfg(not(feature = "tracing"))]
pub trait TracedKey {}
#[cfg(not(feature = "tracing"))]
impl<K: ?Sized> TracedKey for K {}

/// Whether a subscriber wants batch events: the first value of a batch is then timed, for
/// the event's `age_ms`.
#[cfg(feature = "tracing")]
#[inline(always)]
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: "result_stream::batch", tracing::Level::DEBUG)
}

/// Emits the event of a batch of `len` values closed for `reason`, whose first value
/// arrived at `opened` (if timed), with its key if it has one.
#[inline(always)]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn flushed<K: TracedKey + ?Sized>(
    reason: FlushReason,
    len: usize,
    weight: Option<usize>,
    opened: Option<Instant>,
    key: Option<&K>,
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
