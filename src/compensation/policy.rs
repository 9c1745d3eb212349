use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

/// How long to wait between attempts of a failing compensation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backoff {
    /// Retry at once.
    #[default]
    None,
    /// Wait the same time before every retry.
    Fixed(Duration),
    /// Wait `initial` before the first retry, then double the wait each time, never more
    /// than `max`.
    Exponential {
        /// The wait before the first retry.
        initial: Duration,
        /// The longest wait.
        max: Duration,
    },
}

impl Backoff {
    /// The wait before retry number `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        match *self {
            Backoff::None => Duration::ZERO,
            Backoff::Fixed(wait) => wait,
            Backoff::Exponential { initial, max } => {
                let factor = 1u32
                    .checked_shl(retry.saturating_sub(1))
                    .unwrap_or(u32::MAX);
                initial.saturating_mul(factor).min(max)
            }
        }
    }
}

/// How a rollback runs each compensation, and how
/// [`ForEachCompensated::retry`](crate::ForEachCompensated::retry) retries a handler.
///
/// Whatever the policy, compensations start newest first, and a compensation that still
/// fails after its last attempt never stops the others: it is recorded in the
/// [`RollbackReport`](crate::RollbackReport) and the rollback goes on.
///
/// The default runs every compensation once, one at a time, with no backoff and no time
/// limit. [`concurrent`](Self::concurrent) opts in to running independent compensations
/// at the same time.
///
/// ```
/// use std::time::Duration;
/// use result_stream::{Backoff, RetryPolicy};
///
/// let policy = RetryPolicy::default()
///     .attempts(5)
///     .backoff(Backoff::Exponential {
///         initial: Duration::from_millis(50),
///         max: Duration::from_secs(2),
///     })
///     .attempt_timeout(Duration::from_secs(10));
/// assert_eq!(policy.max_attempts(), 5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: NonZeroU32,
    concurrent: NonZeroUsize,
    backoff: Backoff,
    attempt_timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: NonZeroU32::MIN,
            concurrent: NonZeroUsize::MIN,
            backoff: Backoff::None,
            attempt_timeout: None,
        }
    }
}

impl RetryPolicy {
    /// The default policy: every compensation once, newest first.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how many times a compensation is tried in all (the first attempt included).
    ///
    /// # Panics
    ///
    /// Panics if `attempts` is zero: a rollback always tries every compensation.
    #[track_caller]
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = NonZeroU32::new(attempts)
            .expect("RetryPolicy::attempts: `attempts` must be at least 1");
        self
    }

    /// Sets the wait between attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Bounds each attempt: one that has not finished after `limit` is dropped and counts as
    /// failed (and is retried if attempts remain).
    pub fn attempt_timeout(mut self, limit: Duration) -> Self {
        self.attempt_timeout = Some(limit);
        self
    }

    /// Runs up to `n` compensations at the same time (default 1), for compensations that do
    /// not depend on each other (as Temporal's `parallelCompensation`). They still start
    /// newest first, and every failure is reported, in the order the compensations started.
    /// A handler's [`retry`](crate::ForEachCompensated::retry) policy does not use it: the
    /// undo of a failed attempt runs under the run's
    /// [`rollback_policy`](crate::ForEachCompensated::rollback_policy), with that policy's
    /// concurrency.
    ///
    /// # Panics
    ///
    /// Panics if `n` is zero.
    #[track_caller]
    pub fn concurrent(mut self, n: usize) -> Self {
        self.concurrent =
            NonZeroUsize::new(n).expect("RetryPolicy::concurrent: `n` must be at least 1");
        self
    }

    /// How many compensations may run at the same time.
    pub fn concurrency_limit(&self) -> usize {
        self.concurrent.get()
    }

    /// How many times a compensation is tried in all.
    pub fn max_attempts(&self) -> u32 {
        self.attempts.get()
    }

    /// The wait between attempts.
    pub fn backoff_strategy(&self) -> Backoff {
        self.backoff
    }

    /// The time limit of each attempt, if any.
    pub fn attempt_time_limit(&self) -> Option<Duration> {
        self.attempt_timeout
    }
}
