use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{BoxError, Compensation};

/// Why a [`ForEachCompensated`](crate::ForEachCompensated) stopped and rolled back.
///
/// It keeps the user's own error type `E`, so callers can match on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause<E> {
    /// The upstream stream yielded `Err`.
    Upstream(E),
    /// The handler returned `Err` for an item.
    Handler(E),
    /// The cancellation token fired.
    Cancelled,
}

impl<E> Cause<E> {
    /// The error behind the cause, or `None` for a cancellation.
    pub fn error(&self) -> Option<&E> {
        match self {
            Cause::Upstream(error) | Cause::Handler(error) => Some(error),
            Cause::Cancelled => None,
        }
    }

    /// Takes the error behind the cause, or `None` for a cancellation.
    pub fn into_error(self) -> Option<E> {
        match self {
            Cause::Upstream(error) | Cause::Handler(error) => Some(error),
            Cause::Cancelled => None,
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
        }
    }
}

/// How the last attempt of a compensation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum FailureKind {
    /// The compensation returned an error.
    Error(BoxError),
    /// The attempt ran past the policy's time limit and was dropped.
    TimedOut(Duration),
    /// The compensation panicked; the panic was caught (with its message, when it had one)
    /// so that the rollback could go on.
    Panicked(String),
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureKind::Error(error) => error.fmt(f),
            FailureKind::TimedOut(limit) => write!(f, "timed out after {limit:?}"),
            FailureKind::Panicked(message) => write!(f, "panicked: {message}"),
        }
    }
}

/// A compensation that still failed after its last attempt.
///
/// It has left the scope, but not the program: [`retry`](Self::retry) runs it again (say,
/// once the database is back), and [`action`](Self::action) hands it out to be registered
/// again or run elsewhere.
pub struct CompensationFailure {
    pub(crate) order: usize,
    pub(crate) label: Option<Cow<'static, str>>,
    pub(crate) attempts: u32,
    pub(crate) kind: FailureKind,
    pub(crate) action: Arc<dyn Compensation>,
}

impl fmt::Debug for CompensationFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompensationFailure")
            .field("order", &self.order)
            .field("label", &self.label)
            .field("attempts", &self.attempts)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl CompensationFailure {
    /// Its place in the rollback: 0 for the first compensation run (the newest).
    pub fn order(&self) -> usize {
        self.order
    }

    /// The label it was registered with, if any.
    pub fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }

    /// How many attempts were made.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How the last attempt failed.
    pub fn kind(&self) -> &FailureKind {
        &self.kind
    }

    /// The compensation itself.
    pub fn action(&self) -> &Arc<dyn Compensation> {
        &self.action
    }

    /// Runs the compensation once more (no policy: one attempt, no time limit).
    pub async fn retry(&self) -> Result<(), BoxError> {
        self.action.compensate().await
    }
}

impl Error for CompensationFailure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.kind {
            FailureKind::Error(error) => Some(error.as_ref()),
            _ => None,
        }
    }
}

impl fmt::Display for CompensationFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "compensation #{}", self.order)?;
        if let Some(label) = &self.label {
            write!(f, " ({label})")?;
        }
        write!(
            f,
            " failed after {} attempt(s): {}",
            self.attempts, self.kind
        )
    }
}

/// What a rollback did: how many compensations ran and which ones still failed.
#[derive(Debug, Default)]
pub struct RollbackReport {
    pub(crate) ran: usize,
    pub(crate) failures: Vec<CompensationFailure>,
}

impl RollbackReport {
    /// How many compensations were run (each counted once, whatever its attempts).
    pub fn ran(&self) -> usize {
        self.ran
    }

    /// How many compensations succeeded.
    pub fn succeeded(&self) -> usize {
        self.ran - self.failures.len()
    }

    /// The compensations that still failed after their retries, in the order they ran.
    pub fn failures(&self) -> &[CompensationFailure] {
        &self.failures
    }

    /// `true` when every compensation succeeded (or there was none): the effects they
    /// guarded are undone.
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty()
    }
}

impl fmt::Display for RollbackReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_complete() {
            write!(f, "rolled back cleanly ({} compensation(s) ran)", self.ran)
        } else {
            write!(
                f,
                "rollback incomplete: {} of {} compensation(s) failed",
                self.failures.len(),
                self.ran
            )?;
            for failure in &self.failures {
                write!(f, "; {failure}")?;
            }
            Ok(())
        }
    }
}

/// The error of [`ForEachCompensated`](crate::ForEachCompensated): why it stopped, and what
/// the rollback that followed did.
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
}

impl<E> CompensatedError<E> {
    /// Why the run stopped.
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

/// Names the cause's kind and the rollback's outcome; the cause's own error is the
/// [`source`](Error::source), so error-chain printers (`anyhow`'s `{:#}`, say) show it once.
impl<E> fmt::Display for CompensatedError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stopped_by = match self.cause {
            Cause::Upstream(_) => "stopped by an upstream error",
            Cause::Handler(_) => "stopped by a handler error",
            Cause::Cancelled => "cancelled",
        };
        write!(f, "{stopped_by}; {}", self.report)
    }
}

impl<E: Error + 'static> Error for CompensatedError<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause
            .error()
            .map(|error| error as &(dyn Error + 'static))
    }
}
