//! The `tracing` spans and events of `for_each_compensated` (target
//! `result_stream::for_each`). Without the `tracing` feature every function here is empty
//! and every span is `()`: nothing is compiled in.

use super::RollbackReport;

#[cfg(feature = "tracing")]
pub(crate) use tracing::Span;

/// Without the feature a span is nothing.
#[cfg(not(feature = "tracing"))]
pub(crate) type Span = ();

/// What a rollback event is about.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) enum Undone {
    /// The undo of one failed attempt of the item at this index.
    Attempt(u64),
    /// The run's rollback.
    Run,
}

/// A span that is not one (a free slot's).
#[inline(always)]
pub(crate) fn no_span() -> Span {
    #[cfg(feature = "tracing")]
    return Span::none();
}

/// The span of one run.
#[inline(always)]
pub(crate) fn run_span() -> Span {
    #[cfg(feature = "tracing")]
    return tracing::info_span!(target: "result_stream::for_each", "for_each_compensated");
}

/// The span of one attempt of the item at `index` (0 for the first item). When no
/// subscriber wants it, no span at all: a disabled span would still cost, per item, its
/// creation, two entries and exits and its drop, each a call into tracing's `log` fallback
/// (about 400 instructions per item when a dependency turns tracing's `log` feature on).
#[inline(always)]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn attempt_span(index: u64, attempt: u32) -> Span {
    #[cfg(feature = "tracing")]
    return match tracing::enabled!(
        kind: tracing::metadata::Kind::SPAN,
        target: "result_stream::for_each",
        tracing::Level::DEBUG
    ) {
        true => tracing::debug_span!(target: "result_stream::for_each", "item", index, attempt),
        false => Span::none(),
    };
}

/// A span entered until this is dropped.
#[cfg(feature = "tracing")]
pub(crate) type Entered = tracing::span::EnteredSpan;
#[cfg(not(feature = "tracing"))]
pub(crate) struct Entered;

/// Enters (a handle to) `span` until the returned guard is dropped.
#[inline(always)]
pub(crate) fn enter(span: &Span) -> Entered {
    #[cfg(feature = "tracing")]
    return span.clone().entered();
    #[cfg(not(feature = "tracing"))]
    {
        let _ = span;
        Entered
    }
}

/// Runs `f` inside `span`.
#[inline(always)]
pub(crate) fn in_span<R>(span: &Span, f: impl FnOnce() -> R) -> R {
    #[cfg(feature = "tracing")]
    let _entered = span.enter();
    #[cfg(not(feature = "tracing"))]
    let _ = span;
    f()
}

/// An item's handler returned `Ok` and its compensations were committed (or, all or
/// nothing, handed to the run).
#[inline(always)]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn commit(index: u64) {
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "result_stream::for_each", index, "commit");
}

/// A failed attempt was undone; attempt number `next` follows its backoff.
#[inline(always)]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn retry(index: u64, next: u32) {
    #[cfg(feature = "tracing")]
    tracing::info!(target: "result_stream::for_each", index, attempt = next, "retry");
}

/// An item that still failed was rolled back alone and skipped.
#[inline(always)]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn skip(index: u64) {
    #[cfg(feature = "tracing")]
    tracing::warn!(target: "result_stream::for_each", index, "skip");
}

/// A rollback resolved with `report`.
#[inline(always)]
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
pub(crate) fn rollback(what: Undone, report: &RollbackReport) {
    #[cfg(feature = "tracing")]
    {
        let (ran, failed, complete) = (report.ran(), report.failures().len(), report.is_complete());
        match what {
            Undone::Attempt(index) => tracing::info!(
                target: "result_stream::for_each", index, ran, failed, complete, "rollback"
            ),
            Undone::Run => tracing::warn!(
                target: "result_stream::for_each", ran, failed, complete, "rollback"
            ),
        }
    }
}
