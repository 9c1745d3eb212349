//! Crashes around a NATS consumer: an instance SIGKILLed or frozen while it holds messages,
//! the database killed mid-run, the broker killed and restarted. Nothing is lost, nothing is
//! stored twice.
//!
//! The tests that need servers are `#[ignore]`d: `cargo test` on a machine without them reports
//! them as ignored, never as passed. Run them with `cargo test -p event-batcher -- --ignored`
//! and both `EVENT_BATCHER_NATS_URL` (e.g. `nats://127.0.0.1:4222`, a server with JetStream)
//! and `EVENT_BATCHER_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`) set; run
//! that way, a test FAILS when a variable is unset, a server cannot be reached or NATS has no
//! JetStream.
//!
//! Every test uses a stream, subject, consumer and table of its own, deleted at the end even
//! when the test fails, and kills (by PID) any instance it started that is still running.
//! The tests drive the real binary; the database and the broker are read directly.

mod common;

use std::time::{Duration, Instant};

use common::instance::{Exited, PrivateNats, is_stopped, wait_until};
use common::nats::{EVENTS, EXIT_TIMEOUT, SERIAL, Setup, services};

/// The second test: one of three instances hangs after writing its second batch
/// (written, committed to the table, not acknowledged). While it hangs its messages are kept
/// alive (no redelivery even after 1.5 × ack wait). The two others start, and the victim is
/// SIGKILLed while they are mid-run: its messages are redelivered to them once the ack wait
/// (4 s here) has passed; the batch it had written is found already present, and the table is
/// still exact.
#[test]
#[ignore = "needs NATS JetStream and PostgreSQL: set EVENT_BATCHER_NATS_URL and EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
fn nats_sigkilled_instance_messages_are_redelivered_to_the_others() {
    sigkilled_instance_messages_are_redelivered_to_the_others(1);
}

/// The same with 10 events per message (NDJSON): a message is redelivered whole, its events
/// committed by the victim found present.
#[test]
#[ignore = "needs NATS JetStream and PostgreSQL: set EVENT_BATCHER_NATS_URL and EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
fn nats_sigkilled_instance_messages_are_redelivered_to_the_others_ten_events_per_message() {
    sigkilled_instance_messages_are_redelivered_to_the_others(10);
}

fn sigkilled_instance_messages_are_redelivered_to_the_others(per_message: u64) {
    let setup = Setup::new(&format!("kill{per_message}"));
    let seed = 12;
    setup.publish_grouped(EVENTS, seed, 0, per_message);
    // Long enough for a loaded CI machine to send the keep-alives in time (every 1/3 of
    // it); the idle exit leaves the others time to get the victim's messages once its ack
    // wait has passed.
    let ack_wait = Duration::from_secs(6);
    let common = [
        "--max-batch",
        "250",
        "--flush-every",
        "500ms",
        "--ack-wait",
        "6s",
        "--idle-exit",
        "10s",
    ];
    let mut victim = setup.instance("victim", &[&common[..], &["--hang-at-batch", "2"]].concat());
    wait_until(Duration::from_secs(30), "the victim to hang", || {
        assert!(!victim.has_exited(), "the victim exited early");
        victim.stderr_contains("hanging before acknowledging it")
    });
    // Keep-alive: a live (even stuck) instance keeps its messages past the ack wait.
    std::thread::sleep(ack_wait * 3 / 2);
    let before = setup.consumer_info();
    assert_eq!(
        before.num_redelivered, 0,
        "a live instance's messages were redelivered: {before:?}"
    );
    // The others start, and the victim is killed while they are mid-run.
    let others = [setup.instance("a", &common), setup.instance("b", &common)];
    wait_until(Duration::from_secs(30), "the others' first rows", || {
        setup.rows_so_far() >= 1_500
    });
    let at_kill = setup.consumer_info();
    assert!(
        at_kill.num_pending > 0,
        "the others finished before the kill: not mid-run ({at_kill:?})"
    );
    victim.kill();
    let killed_at = Instant::now();
    let victim = victim.wait(Duration::from_secs(10));
    assert_eq!(victim.status.code(), None, "killed by a signal");
    let exited: Vec<Exited> = others.into_iter().map(|i| i.wait(EXIT_TIMEOUT)).collect();
    eprintln!(
        "the others finished {:?} after the kill",
        killed_at.elapsed()
    );
    let mut already_present = 0;
    let mut redelivered = 0;
    let mut runs = Vec::new();
    for instance in &exited {
        instance.assert_ok();
        eprintln!("{}: {}", instance.name, instance.value("NATS messages"));
        already_present += instance.inserted_and_present().1;
        redelivered += instance.nats("redelivered");
        runs.push(instance.run_id());
    }
    // The victim's hung batch 2 was written and never acked: its messages were redelivered
    // to the others, which found every one of its rows already present; its unwritten
    // prefetch (if any) was written normally. (More than that only if a or b stalled past
    // the ack wait themselves: at-least-once delivery, absorbed by the idempotent insert.)
    let hung = setup.count_where(&format!(
        "run_id NOT IN ({}, {}) AND batch_seq = 2",
        runs[0], runs[1]
    ));
    assert!(hung > 0, "the victim's hung batch is not in the table");
    assert!(already_present >= hung, "{already_present} already present");
    assert!(
        redelivered * per_message >= hung,
        "{redelivered} message(s) redelivered"
    );
    setup.assert_exact(seed, EVENTS);
    setup.assert_drained();
}

/// Fencing: an instance frozen in the middle of a batch (its first half written) for longer
/// than the ack wait loses its messages to the two others, which find those rows present,
/// claim them and acknowledge them. Continued, the frozen instance fails that batch and rolls
/// it back: its compensating DELETE matches none of the claimed rows, so the table still
/// holds exactly the published events, and every instance's check holds.
#[test]
#[ignore = "needs NATS JetStream and PostgreSQL: set EVENT_BATCHER_NATS_URL and EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
fn nats_frozen_instance_rolled_back_late_deletes_no_acknowledged_row() {
    frozen_instance_rolled_back_late_deletes_no_acknowledged_row(1);
}

/// The same with 10 events per message (NDJSON): the frozen batch holds whole messages, which
/// the others get, find partly present and acknowledge.
#[test]
#[ignore = "needs NATS JetStream and PostgreSQL: set EVENT_BATCHER_NATS_URL and EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
fn nats_frozen_instance_rolled_back_late_deletes_no_acknowledged_row_ten_events_per_message() {
    frozen_instance_rolled_back_late_deletes_no_acknowledged_row(10);
}

fn frozen_instance_rolled_back_late_deletes_no_acknowledged_row(per_message: u64) {
    let setup = Setup::new(&format!("freeze{per_message}"));
    let seed = 31;
    let events = 3_000;
    setup.publish_grouped(events, seed, 0, per_message);
    let common = [
        "--max-batch",
        "100",
        "--flush-every",
        "500ms",
        "--ack-wait",
        "2s",
        "--idle-exit",
        "6s",
    ];
    // Started alone, so that it creates the consumer (2 s ack wait) and its batch 2 is the
    // only one in the table when it freezes.
    let frozen_args = ["--freeze-at-batch", "2", "--on-failure", "skip-batch"];
    let frozen = setup.instance("frozen", &[&common[..], &frozen_args].concat());
    wait_until(Duration::from_secs(30), "the instance to freeze", || {
        frozen.stderr_contains("stopping this process (SIGSTOP)") && is_stopped(frozen.pid())
    });
    assert_eq!(
        setup.count_where("batch_seq = 2"),
        50,
        "the frozen batch's first half is in the table"
    );
    // The others get everything, the frozen instance's messages once their ack wait has
    // passed (its keep-alive is frozen too), and find its 50 rows present.
    let others = [setup.instance("a", &common), setup.instance("b", &common)];
    let exited: Vec<Exited> = others.into_iter().map(|i| i.wait(EXIT_TIMEOUT)).collect();
    let mut already_present = 0;
    for instance in &exited {
        instance.assert_ok();
        already_present += instance.inserted_and_present().1;
    }
    assert!(already_present >= 50, "{already_present} already present");
    let runs = format!("{}, {}", exited[0].run_id(), exited[1].run_id());
    assert_eq!(
        setup.count_where(&format!(
            "run_id NOT IN ({runs}) AND batch_seq = 2 AND claimed <> 0"
        )),
        50,
        "the others claimed the frozen batch's rows"
    );
    setup.assert_exact(seed, events);

    // Continued: batch 2 fails and is rolled back, long after its events were acknowledged.
    frozen.signal("CONT");
    let frozen = frozen.wait(EXIT_TIMEOUT);
    frozen.assert_ok();
    assert!(
        frozen
            .stderr
            .contains("batch 2: injected failure after writing the first 50"),
        "{}",
        frozen.describe()
    );
    assert!(frozen.events_rolled_back() >= 100, "{}", frozen.describe());
    assert!(
        frozen
            .value("consistency check")
            .contains("50 claimed row(s) kept"),
        "{}",
        frozen.describe()
    );
    // Nothing acknowledged is gone.
    setup.assert_exact(seed, events);
    setup.assert_drained();
}

/// The database dies mid-run: a PostgreSQL server of the test's own is SIGKILLed while an
/// instance writes to it, and restarted 3 s later. The instance waits for it, rolls the
/// batch in flight back, gives its messages back (nak), and goes on: it exits 0 with its
/// check OK, and the table holds exactly the published events.
#[test]
#[ignore = "needs NATS JetStream and the PostgreSQL server binaries: set EVENT_BATCHER_NATS_URL and EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
fn nats_database_killed_mid_run_the_instance_keeps_going() {
    let (nats_url, _) = services();
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Declared first, dropped last: the setup drops its table through it.
    let mut server = common::private_postgres::PrivatePostgres::start();
    let setup = Setup::on("pgkill", nats_url, server.url(), serial);
    let seed = 33;
    setup.publish(EVENTS, seed, 0);
    let instance = setup.instance(
        "survivor",
        &[
            "--max-batch",
            "250",
            "--flush-every",
            "500ms",
            "--idle-exit",
            "6s",
            // Shorter than the outage (which the pool would absorb otherwise).
            "--connect-timeout",
            "1s",
        ],
    );
    wait_until(Duration::from_secs(60), "the first rows", || {
        setup.rows_so_far() >= 3_000
    });
    server.kill();
    std::thread::sleep(Duration::from_secs(3));
    server.run();
    let exited = instance.wait(EXIT_TIMEOUT);
    exited.assert_ok();
    assert!(
        exited.stderr.contains("the database is unavailable")
            && exited.stderr.contains("the database is back"),
        "{}",
        exited.describe()
    );
    assert!(exited.events_rolled_back() > 0, "{}", exited.describe());
    setup.assert_exact(seed, EVENTS);
    setup.assert_drained();
}

/// The broker crashes (SIGKILL) mid-run and comes back on the same port and store: the
/// instance keeps its batch in flight, reconnects by itself, pulls again, and the table ends
/// exact. Acks the server had not yet stored when it died are replayed as redeliveries of
/// rows already present (absorbed by the idempotent insert), never as duplicates.
#[test]
#[ignore = "needs NATS JetStream and PostgreSQL: set EVENT_BATCHER_NATS_URL and EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
fn nats_broker_crash_and_restart_loses_and_duplicates_nothing() {
    broker_crash_and_restart_loses_and_duplicates_nothing(1);
}

/// The same with 10 events per message (NDJSON).
#[test]
#[ignore = "needs NATS JetStream and PostgreSQL: set EVENT_BATCHER_NATS_URL and EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
fn nats_broker_crash_and_restart_loses_and_duplicates_nothing_ten_events_per_message() {
    broker_crash_and_restart_loses_and_duplicates_nothing(10);
}

fn broker_crash_and_restart_loses_and_duplicates_nothing(per_message: u64) {
    let (_, pg_url) = services();
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Declared first, dropped last: the setup deletes its stream through it.
    let mut server = PrivateNats::start();
    let setup = Setup::on(
        &format!("restart{per_message}"),
        server.url(),
        pg_url,
        serial,
    );
    let seed = 16;
    setup.publish_grouped(EVENTS, seed, 0, per_message);
    let instance = setup.instance(
        "survivor",
        &[
            "--max-batch",
            "250",
            "--flush-every",
            "500ms",
            "--ack-wait",
            "5s",
            // Longer than the 10 s (pull expiry + 5 s) after which a pull request lost in
            // the restart is noticed and made again.
            "--idle-exit",
            "15s",
        ],
    );
    wait_until(Duration::from_secs(30), "the first rows", || {
        setup.rows_so_far() >= 2_000
    });
    let mut instance = instance;
    assert!(
        !instance.has_exited(),
        "the instance exited before the crash"
    );
    server.kill();
    let rows_at_crash = setup.rows_so_far();
    assert!(rows_at_crash < EVENTS, "the run ended before the crash");
    std::thread::sleep(Duration::from_secs(2));
    server.run();
    let exited = instance.wait(EXIT_TIMEOUT);
    exited.assert_ok();
    eprintln!(
        "rows at the crash: {rows_at_crash}; {}",
        exited.value("NATS messages")
    );
    // The acks of the last moments before the crash may not have been stored: those
    // messages come back, their rows are found present, and they are acked again. (After a
    // crash the broker may even deliver them as first deliveries, so the "redelivered" count
    // can be lower than the rows found present.)
    let (inserted, _) = exited.inserted_and_present();
    assert_eq!(inserted, EVENTS, "{}", exited.stdout);
    setup.assert_exact(seed, EVENTS);
    // Everything the instance acknowledged after the restart reached the server.
    setup.assert_drained();
}
