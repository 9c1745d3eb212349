//! Failures injected on purpose (`--fail-every`, `--fail-rate`, `--fail-rollback-attempts`,
//! `--hang-at-batch`), for demonstrations and tests.

use std::sync::Mutex;

use super::config::Faults;
use crate::console::Console;
use crate::mutex::lock;

/// Decides which batches fail, from [`Faults`] and a generator seeded with its seed.
#[derive(Debug)]
pub(super) struct FaultInjector {
    faults: Faults,
    rng: Mutex<fastrand::Rng>,
}

impl FaultInjector {
    pub(super) fn new(faults: Faults) -> Self {
        Self {
            faults,
            rng: Mutex::new(fastrand::Rng::with_seed(faults.seed)),
        }
    }

    /// Whether attempt `attempt` (1 for the first) of batch `seq` gets an injected failure:
    /// a batch chosen by `--fail-every` or `--fail-rate` fails its first `--fail-attempts`
    /// attempts (all of them by default).
    pub(super) fn should_fail(&self, seq: u64, attempt: u32) -> bool {
        if self.faults.fail_attempts.is_some_and(|n| attempt > n) {
            return false;
        }
        self.faults
            .fail_every
            .is_some_and(|n| seq.is_multiple_of(n))
            || (self.faults.fail_rate > 0.0 && lock(&self.rng).f64() < self.faults.fail_rate)
    }

    /// How many attempts of every row-deleting compensation fail first.
    pub(super) fn failing_rollback_attempts(&self) -> u32 {
        self.faults.fail_rollback_attempts
    }

    /// Whether the process freezes in the middle of batch `seq` (and the batch then fails).
    pub(super) fn freezes_at(&self, seq: u64) -> bool {
        self.faults.freeze_at_batch == Some(seq)
    }

    /// `--freeze-at-batch`: stops the whole process (SIGSTOP to itself, sent by `kill`, so
    /// that every thread stops at once, keep-alives included) and returns once it has been
    /// continued.
    pub(super) async fn freeze(&self, seq: u64, console: &Console) {
        console.println(format!(
            "event-batcher: batch {seq}: first half written; stopping this process \
             (SIGSTOP) until it is continued (--freeze-at-batch)"
        ));
        let pid = std::process::id().to_string();
        let stopped = tokio::task::spawn_blocking(move || {
            std::process::Command::new("kill")
                .args(["-STOP", &pid])
                .status()
        })
        .await;
        match stopped {
            Ok(Ok(status)) if status.success() => {
                console.println(format!("event-batcher: batch {seq}: continued"));
            }
            other => console.println(format!(
                "event-batcher: batch {seq}: could not stop this process ({other:?}); failing \
                 the batch without a freeze"
            )),
        }
    }

    /// Whether the run hangs after writing batch `seq`.
    pub(super) fn hangs_at(&self, seq: u64) -> bool {
        self.faults.hang_at_batch == Some(seq)
    }

    /// `--hang-at-batch`: never returns; the run can only be cancelled (the batch is then
    /// rolled back) or the process killed (the batch stays written, unacknowledged).
    pub(super) async fn hang(&self, seq: u64, console: &Console) {
        console.println(format!(
            "event-batcher: batch {seq} written; hanging before acknowledging it (--hang-at-batch)"
        ));
        std::future::pending::<()>().await;
    }
}
