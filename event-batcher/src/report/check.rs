//! The consistency check: what the database and the broker must say after a run.
//!
//! # The consistency check
//!
//! Every row records the run and the batch that inserted it (`run_id`, `batch_seq`), and
//! every committed batch records which of its events its `INSERT … ON CONFLICT …
//! RETURNING` statements actually inserted and which they skipped as already present. At
//! the end of the run the database is asked, and the check holds when all of these are
//! true:
//! 1. the rows carrying this run's id and the number of a committed batch number exactly
//!    the rows inserted by committed batches: nothing acknowledged is missing, and nothing
//!    else of this run is there;
//! 2. no unclaimed row carries the number of a rolled-back batch: every compensation undid
//!    its partial write. A row of a rolled-back batch that another batch found present and
//!    claimed (only a batch about to commit claims, see [`crate::store`]) is kept on
//!    purpose (that batch acknowledges its event) and reported;
//! 3. every id skipped as already present has a row (`SELECT COUNT(*) … WHERE id IN (…)`,
//!    in chunks): an acknowledged event that was not inserted by this run is really stored.
//!    The ids are read back from a temporary file ([`already_present`](super::already_present)), so the run
//!    does not hold them in memory;
//! 4. inserted + already present == events acknowledged.
//!
//! Together: a row exists for every acknowledged event. It costs four indexed `COUNT(*)`
//! queries plus one per 1,000 skipped ids and rolled-back batches. Its memory does not grow
//! with the skipped ids (every id in a re-run of the same input): they are appended to an
//! unnamed temporary file as batches commit (about 4 bytes + the id each) and checked in
//! chunks of 1,000.
//!
//! For a NATS source the check also holds the broker to account, from the verdicts actually
//! sent (counted by the source's acknowledgement task after `NatsSource::close` waited for
//! them):
//! 5. per event (a message may carry several, one per NDJSON line): events acknowledged
//!    to the source == events acknowledged (written in committed batches), events nak'ed
//!    (+ events deliberately left for redelivery after `ack_wait`, when a rollback could not
//!    delete the rows, + events given up after `--max-deliveries`) == events in rolled-back
//!    batches, events given up == events written to the dead-letter file for them, events
//!    rejected == invalid records, and every event received got exactly one of those (or
//!    was given back unsettled);
//! 6. per message: every message received got exactly one verdict, sent once all its
//!    events had theirs: received == acked + nak'ed + rejected + dead-lettered + given back
//!    unsettled + left for redelivery, and no verdict failed to be sent.
//!
//! With several instances sharing a consumer, each checks its own run (its `run_id`); the
//! table as a whole is what the instances wrote together.

use crate::source::NatsStats;

/// Row counts read from the database at the end of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseRows {
    /// Rows in the table.
    pub total: u64,
    /// Rows inserted by the committed batches of this run.
    pub of_run: u64,
    /// Rows still carrying the number of a batch of this run that was rolled back, and not
    /// claimed by another batch: its compensation should have deleted them.
    pub left_by_rolled_back: u64,
    /// Rows of rolled-back batches of this run that its compensation left on purpose:
    /// another batch found them present and claimed them (it acknowledges their events).
    pub kept_claimed: u64,
    /// Ids of the acknowledged events that were skipped as already present (distinct per
    /// batch and per chunk of the check: an id skipped by two batches may count twice).
    pub skipped_ids: u64,
    /// Of those, the ids that have a row in the table.
    pub skipped_found: u64,
}

/// The result of the consistency check (see the [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Whether it holds.
    pub holds: bool,
    /// The numbers behind it, in one line.
    pub detail: String,
}

impl Check {
    /// Compares the counters of a run with the database.
    pub fn new(
        acknowledged: u64,
        inserted: u64,
        already_present: u64,
        rolled_back_batches: u64,
        rows: Result<DatabaseRows, String>,
    ) -> Check {
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                return Check {
                    holds: false,
                    detail: format!("could not count the rows: {error}"),
                };
            }
        };
        let holds = rows.of_run == inserted
            && rows.left_by_rolled_back == 0
            && rows.skipped_found == rows.skipped_ids
            && inserted + already_present == acknowledged;
        let detail = if holds {
            format!(
                "OK: rows for the acknowledged events ({} inserted by this run + {already_present} \
                 already present, all {} id(s) found) == events acknowledged ({acknowledged}); \
                 {rolled_back_batches} rolled-back batch(es) left 0 rows{}",
                rows.of_run,
                rows.skipped_ids,
                if rows.kept_claimed > 0 {
                    format!(
                        " ({} claimed row(s) kept: found present and acknowledged by another batch)",
                        rows.kept_claimed
                    )
                } else {
                    String::new()
                }
            )
        } else {
            format!(
                "FAILED: the database holds {} row(s) inserted by this run, committed batches \
                 inserted {inserted}; {} of {} id(s) skipped as already present found; \
                 {inserted} inserted + {already_present} already present vs {acknowledged} \
                 acknowledged; rolled-back batches left {} row(s)",
                rows.of_run, rows.skipped_found, rows.skipped_ids, rows.left_by_rolled_back
            )
        };
        Check { holds, detail }
    }

    /// Adds the broker's side (rules 5 and 6 of the [module documentation](self)).
    pub fn with_broker(
        mut self,
        nats: &NatsStats,
        acknowledged: u64,
        events_rolled_back: u64,
        dead_lettered: u64,
        invalid: u64,
    ) -> Check {
        let events = &nats.events;
        let returned = events.nacked + events.abandoned + events.dead_lettered;
        let settled = nats.settled();
        let holds = events.acked == acknowledged
            && returned == events_rolled_back
            && events.dead_lettered == dead_lettered
            && events.rejected == invalid
            && events.received == events.settled()
            && nats.received == settled
            && nats.send_failures == 0;
        let compare = |sent: u64, events: u64| if sent == events { "==" } else { "!=" };
        let mut naks = format!("naks {}", events.nacked);
        if events.abandoned > 0 {
            naks.push_str(&format!(
                " + {} left for redelivery (rows not deleted)",
                events.abandoned
            ));
        }
        if events.dead_lettered > 0 || dead_lettered > 0 {
            naks.push_str(&format!(
                " + {} given up ({} {} dead letters written)",
                events.dead_lettered,
                compare(events.dead_lettered, dead_lettered),
                dead_lettered
            ));
        }
        let mut detail = format!(
            "NATS verdicts {}: events: acks {} {} events acknowledged {acknowledged}, {naks} {} \
             events rolled back {events_rolled_back}, rejects {} {} invalid {invalid}, {} \
             received {} {} settled ({} given back unsettled); messages: {} received {} {settled} \
             verdicts ({} acked, {} nak'ed, {} rejected, {} dead-lettered, {} given back, {} \
             left for redelivery)",
            if holds { "OK" } else { "FAILED" },
            events.acked,
            compare(events.acked, acknowledged),
            compare(returned, events_rolled_back),
            events.rejected,
            compare(events.rejected, invalid),
            events.received,
            compare(events.received, events.settled()),
            events.settled(),
            events.given_back,
            nats.received,
            compare(nats.received, settled),
            nats.acked,
            nats.nacked,
            nats.rejected,
            nats.dead_lettered,
            nats.dropped_nacked,
            nats.abandoned,
        );
        if nats.send_failures > 0 {
            detail.push_str(&format!(
                ", {} verdict(s) could not be sent (those messages will be redelivered)",
                nats.send_failures
            ));
        }
        if !holds && self.holds {
            self.detail = format!(
                "FAILED (broker): {}",
                self.detail.trim_start_matches("OK: ")
            );
        }
        self.holds &= holds;
        self.detail = format!("{}; {detail}", self.detail);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::nats::EventCounts;

    fn rows(of_run: u64, left: u64) -> Result<DatabaseRows, String> {
        Ok(DatabaseRows {
            total: of_run,
            of_run,
            left_by_rolled_back: left,
            kept_claimed: 0,
            skipped_ids: 2,
            skipped_found: 2,
        })
    }

    #[test]
    fn check_holds_only_when_the_database_matches() {
        assert!(Check::new(10, 8, 2, 0, rows(8, 0)).holds);
        assert!(Check::new(10, 8, 2, 1, rows(8, 0)).detail.starts_with("OK"));
        // A committed row is missing.
        assert!(!Check::new(10, 8, 2, 0, rows(7, 0)).holds);
        // A rolled-back batch left rows behind.
        let check = Check::new(10, 8, 2, 1, rows(8, 3));
        assert!(!check.holds);
        assert!(check.detail.contains("left 3 row(s)"), "{}", check.detail);
        // An id skipped as already present has no row.
        let missing = rows(8, 0).map(|rows| DatabaseRows {
            skipped_found: 1,
            ..rows
        });
        let check = Check::new(10, 8, 2, 0, missing);
        assert!(!check.holds);
        assert!(check.detail.contains("1 of 2 id(s)"), "{}", check.detail);
        // The database could not be read.
        assert!(!Check::new(0, 0, 0, 0, Err("down".into())).holds);
    }

    #[test]
    fn broker_check_compares_verdicts_with_events() {
        // One event per message: the event and message counts are the same.
        let events = EventCounts {
            received: 12,
            acked: 8,
            nacked: 2,
            rejected: 1,
            given_back: 1,
            ..EventCounts::default()
        };
        let nats = NatsStats {
            received: 12,
            redelivered: 2,
            acked: 8,
            nacked: 2,
            rejected: 1,
            dropped_nacked: 1,
            events,
            ..NatsStats::default()
        };
        let check = Check::new(8, 8, 0, 1, rows(8, 0)).with_broker(&nats, 8, 2, 0, 1);
        assert!(check.holds, "{}", check.detail);
        assert!(
            check.detail.contains("NATS verdicts OK"),
            "{}",
            check.detail
        );
        // An ack missing (a hook dropped, or never sent).
        let short = NatsStats {
            events: EventCounts { acked: 7, ..events },
            ..nats
        };
        let check = Check::new(8, 8, 0, 1, rows(8, 0)).with_broker(&short, 8, 2, 0, 1);
        assert!(!check.holds);
        assert!(
            check.detail.starts_with("FAILED (broker)"),
            "{}",
            check.detail
        );
        assert!(check.detail.contains("acks 7 != events acknowledged 8"));
        // A verdict that could not be sent.
        let lost = NatsStats {
            acked: 7,
            send_failures: 1,
            ..nats
        };
        // An event whose hook was never called (lost inside the source).
        let unsettled = NatsStats {
            events: EventCounts {
                received: 13,
                ..events
            },
            ..nats
        };
        assert!(
            !Check::new(8, 8, 0, 1, rows(8, 0))
                .with_broker(&unsettled, 8, 2, 0, 1)
                .holds
        );
        assert!(
            !Check::new(8, 8, 0, 1, rows(8, 0))
                .with_broker(&lost, 8, 2, 0, 1)
                .holds
        );
        // The database part still counts.
        assert!(
            !Check::new(8, 8, 0, 1, rows(7, 0))
                .with_broker(&nats, 8, 2, 0, 1)
                .holds
        );
        // Of the 2 events rolled back, one nak'ed and one given up (+TERM) after its dead
        // letter was written: holds; a +TERM without its dead letter does not.
        let given_up = NatsStats {
            nacked: 1,
            dead_lettered: 1,
            events: EventCounts {
                nacked: 1,
                dead_lettered: 1,
                ..events
            },
            ..nats
        };
        let check = Check::new(8, 8, 0, 1, rows(8, 0)).with_broker(&given_up, 8, 2, 1, 1);
        assert!(check.holds, "{}", check.detail);
        assert!(
            check.detail.contains(
                "naks 1 + 1 given up (== 1 dead letters written) == events rolled back 2"
            ),
            "{}",
            check.detail
        );
        let check = Check::new(8, 8, 0, 1, rows(8, 0)).with_broker(&given_up, 8, 2, 0, 1);
        assert!(!check.holds, "{}", check.detail);
        assert!(
            check
                .detail
                .contains("1 given up (!= 0 dead letters written)")
        );
    }

    #[test]
    fn broker_check_counts_events_and_messages_apart() {
        // 3 messages of 4 events: 2 messages acked (8 events), one nak'ed because one of
        // its events was rolled back (3 committed, 1 rolled back).
        let nats = NatsStats {
            received: 3,
            acked: 2,
            nacked: 1,
            events: EventCounts {
                received: 12,
                acked: 11,
                nacked: 1,
                ..EventCounts::default()
            },
            ..NatsStats::default()
        };
        let check = Check::new(11, 11, 0, 1, rows(11, 0)).with_broker(&nats, 11, 1, 0, 0);
        assert!(check.holds, "{}", check.detail);
        assert!(
            check.detail.contains("messages: 3 received == 3 verdicts"),
            "{}",
            check.detail
        );
        // A message without a verdict fails the check even when every event has one.
        let silent = NatsStats { nacked: 0, ..nats };
        let check = Check::new(11, 11, 0, 1, rows(11, 0)).with_broker(&silent, 11, 1, 0, 0);
        assert!(!check.holds, "{}", check.detail);
    }
}
