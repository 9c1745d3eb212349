//! The database went away in the middle of a batch: wait (bounded) for it to come back, so
//! that the batch can be rolled back.

use std::time::Duration;

use tokio::time::Instant;

use super::batch::Ctx;
use super::error::PipelineError;

/// First pause between two probes of the database; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause between two probes.
const MAX_PAUSE: Duration = Duration::from_secs(1);

impl Ctx {
    /// Probes the database (`SELECT 1`) until it answers or `--database-outage` has passed;
    /// whether it answered. Says on the console that it waits, and when the database is
    /// back.
    pub(super) async fn await_database(&self, seq: u64, error: &PipelineError) -> bool {
        let limit = self.database_outage;
        if limit.is_zero() {
            return false;
        }
        self.console.warn(format!(
            "event-batcher: {error}: the database is unavailable; waiting up to {limit:?} for \
             it, to roll batch {seq} back"
        ));
        let started = Instant::now();
        let mut pause = FIRST_PAUSE;
        loop {
            if self.store.ping().await.is_ok() {
                self.console.println(format!(
                    "event-batcher: the database is back after {:.1} s",
                    started.elapsed().as_secs_f64()
                ));
                return true;
            }
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                return false;
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}
