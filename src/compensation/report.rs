use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::stack::Entry;
use super::{BoxError, Compensation};

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
/// Once its rollback has resolved, it has left the scope, but not the program: [`retry`](Self::retry) runs it again (say,
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

/// The compensation's own error is part of the [`Display`](fmt::Display) text (a report
/// lists its failures in its own text), so [`source`](Error::source) skips it and returns
/// *its* source: an error-chain printer shows each message once. The error itself is in
/// [`kind`](Self::kind).
impl Error for CompensationFailure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.kind {
            FailureKind::Error(error) => error.source(),
            _ => None,
        }
    }
}

/// `compensation #<order> (<label>) failed after <n> attempt(s): <how>`.
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

    /// Records the outcome of the compensation that ran `order`th.
    pub(crate) fn record(
        &mut self,
        order: usize,
        entry: &Entry,
        outcome: Result<(), (u32, FailureKind)>,
    ) {
        if let Err((attempts, kind)) = outcome {
            self.failures.push(CompensationFailure {
                order,
                label: entry.label.clone(),
                attempts,
                kind,
                action: entry.action.clone(),
            });
        }
    }

    /// Puts `earlier`'s compensations before this report's, as if one rollback had run them
    /// all.
    pub(crate) fn after(mut self, earlier: RollbackReport) -> Self {
        let offset = earlier.ran;
        for failure in &mut self.failures {
            failure.order += offset;
        }
        let mut failures = earlier.failures;
        failures.append(&mut self.failures);
        Self {
            ran: offset + self.ran,
            failures,
        }
    }

    /// Takes the failures, in the order they ran, to retry or register them again.
    pub fn into_failures(self) -> Vec<CompensationFailure> {
        self.failures
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
