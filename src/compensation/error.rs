use std::error::Error;
use std::fmt;
use std::time::Duration;

use crate::RollbackReport;

/// Why a [`ForEachCompensated`](crate::ForEachCompensated) stopped and rolled back.
///
/// It keeps the user's own error type `E`, so callers can match on it. It may gain variants
/// (a match needs a `_` arm).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause<E> {
    /// The upstream stream yielded `Err`.
    Upstream(E),
    /// The handler returned `Err` for an item.
    Handler(E),
    /// The cancellation token fired.
    Cancelled,
    /// The handler's last attempt for an item ran past the time limit of the
    /// [retry policy](crate::ForEachCompensated::retry) and was dropped.
    TimedOut(Duration),
}

impl<E> Cause<E> {
    /// The error behind the cause, or `None` for a cancellation or a time-out.
    pub fn error(&self) -> Option<&E> {
        match self {
            Cause::Upstream(error) | Cause::Handler(error) => Some(error),
            Cause::Cancelled | Cause::TimedOut(_) => None,
        }
    }

    /// Takes the error behind the cause, or `None` for a cancellation or a time-out.
    pub fn into_error(self) -> Option<E> {
        match self {
            Cause::Upstream(error) | Cause::Handler(error) => Some(error),
            Cause::Cancelled | Cause::TimedOut(_) => None,
        }
    }

    /// `true` for [`Cause::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Cause::Cancelled)
    }
}

impl<E: fmt::Display> fmt::Display for Cause<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Upstream(error) => write!(f, "upstream error: {error}"),
            Cause::Handler(error) => write!(f, "handler error: {error}"),
            Cause::Cancelled => f.write_str("cancelled"),
            Cause::TimedOut(limit) => write!(f, "handler timed out after {limit:?}"),
        }
    }
}

/// The error of [`ForEachCompensated`](crate::ForEachCompensated): why it stopped, and what
/// the rollback that followed did. The callback of
/// [`skip_failed_items`](crate::ForEachCompensated::skip_failed_items) receives one too, for
/// an item that failed and was rolled back alone while the run went on.
///
/// ```
/// use result_stream::{Cause, CompensatedError};
///
/// fn explain(error: &CompensatedError<std::io::Error>) -> &'static str {
///     match (error.cause(), error.report().is_complete()) {
///         (Cause::Cancelled, true) => "cancelled, rolled back cleanly",
///         (_, true) => "failed, rolled back cleanly",
///         (_, false) => "failed, and some effects could not be undone",
///     }
/// }
/// # let _ = explain;
/// ```
#[derive(Debug)]
pub struct CompensatedError<E> {
    pub(crate) cause: Cause<E>,
    pub(crate) report: RollbackReport,
    /// The error of an item skipped while the run went on (not the run's own).
    skipped: bool,
}

impl<E> CompensatedError<E> {
    /// The run stopped for `cause`, and its rollback did `report`.
    pub(crate) fn stopped(cause: Cause<E>, report: RollbackReport) -> Self {
        Self {
            cause,
            report,
            skipped: false,
        }
    }

    /// An item failed for `cause` and was skipped, its own rollback did `report`.
    pub(crate) fn skipped(cause: Cause<E>, report: RollbackReport) -> Self {
        Self {
            cause,
            report,
            skipped: true,
        }
    }

    /// Why the run stopped (for a skipped item: why the item failed).
    pub fn cause(&self) -> &Cause<E> {
        &self.cause
    }

    /// What the rollback did.
    pub fn report(&self) -> &RollbackReport {
        &self.report
    }

    /// `true` when every pending compensation succeeded.
    pub fn is_rolled_back_cleanly(&self) -> bool {
        self.report.is_complete()
    }

    /// Takes the cause.
    pub fn into_cause(self) -> Cause<E> {
        self.cause
    }

    /// Takes the cause and the report.
    pub fn into_parts(self) -> (Cause<E>, RollbackReport) {
        (self.cause, self.report)
    }
}

/// `stopped by a handler error: <E>; rolled back cleanly (2 compensation(s) ran)`: the
/// cause's error (whether or not `E` is an [`Error`]) and the rollback's outcome. For a
/// skipped item (the run went on) it does not say "stopped":
/// `handler error: <E>; rolled back cleanly (1 compensation(s) ran)`.
///
/// The cause's error is part of this text, so [`source`](Error::source) skips it and
/// returns *its* source: an error-chain printer (`anyhow`'s `{:#}`, say) shows each message
/// once. The error itself is reached through [`cause`](Self::cause).
impl<E: fmt::Display> fmt::Display for CompensatedError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.skipped {
            return write!(f, "{}; {}", self.cause, self.report);
        }
        match &self.cause {
            Cause::Upstream(error) => write!(f, "stopped by an upstream error: {error}")?,
            Cause::Handler(error) => write!(f, "stopped by a handler error: {error}")?,
            Cause::Cancelled => f.write_str("cancelled")?,
            Cause::TimedOut(limit) => {
                write!(f, "stopped by a handler that timed out after {limit:?}")?
            }
        }
        write!(f, "; {}", self.report)
    }
}

impl<E: Error + 'static> Error for CompensatedError<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause.error().and_then(Error::source)
    }
}
