//! Scaling out: several `event-batcher` processes share one NATS JetStream durable consumer and
//! write to one PostgreSQL table, with ack after commit and nak after rollback; concurrent
//! writers; malformed payloads.
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

use std::time::Instant;

use common::instance::{Exited, leading_number};
use common::nats::{EVENTS, EXIT_TIMEOUT, Setup};

/// The first test: 20,000 events, three concurrent instances, one of them failing
/// every third batch (skip-batch: rolled back, nak'ed, redelivered): the table ends with
/// exactly the 20,000 events, none missing, none twice, and each message was acked once.
#[test]
#[ignore = "needs NATS JetStream and PostgreSQL: set EVENT_BATCHER_NATS_URL and EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
fn nats_three_instances_one_failing_store_every_event_exactly_once() {
    let setup = Setup::new("three");
    let seed = 11;
    setup.publish(EVENTS, seed, 0);
    let common = [
        "--max-batch",
        "250",
        "--flush-every",
        "500ms",
        "--nak-delay",
        "300ms",
        "--idle-exit",
        "5s",
    ];
    let started = Instant::now();
    let instances = [
        setup.instance("a", &common),
        setup.instance("b", &common),
        setup.instance(
            "c (fails every 3rd batch)",
            &[
                &common[..],
                &["--fail-every", "3", "--on-failure", "skip-batch"],
            ]
            .concat(),
        ),
    ];
    let exited: Vec<Exited> = instances
        .into_iter()
        .map(|instance| instance.wait(EXIT_TIMEOUT))
        .collect();
    eprintln!("three instances done in {:?}", started.elapsed());
    let mut acknowledged = 0;
    let mut inserted = 0;
    for instance in &exited {
        instance.assert_ok();
        eprintln!("{}: {}", instance.name, instance.value("NATS messages"));
        let (new_rows, present) = instance.inserted_and_present();
        // Each instance's own rows are in the table, under its run id.
        assert_eq!(setup.rows_of_run(instance.run_id()), new_rows);
        assert_eq!(present, 0, "no event was written twice");
        assert!(
            instance.number("events acknowledged") > 0,
            "{} got no work",
            instance.name
        );
        assert_eq!(
            instance.nats("acked"),
            instance.number("events acknowledged")
        );
        acknowledged += instance.number("events acknowledged");
        inserted += new_rows;
    }
    let failing = &exited[2];
    let rolled_back = leading_number(
        failing
            .value("batches rolled back")
            .split_once('(')
            .expect("(N events)")
            .1,
    );
    assert!(rolled_back > 0, "{}", failing.describe());
    assert_eq!(failing.nats("nak'ed after rollback"), rolled_back);
    let redelivered: u64 = exited.iter().map(|i| i.nats("redelivered")).sum();
    assert!(
        redelivered >= rolled_back,
        "{redelivered} redelivered < {rolled_back} nak'ed"
    );
    assert_eq!(
        acknowledged, EVENTS,
        "every event acknowledged exactly once"
    );
    assert_eq!(inserted, EVENTS);
    setup.assert_exact(seed, EVENTS);
    setup.assert_drained();
}

/// The third test: a rolled-back batch's messages come back (nak with delay) and are
/// eventually written. One instance, every 4th batch failing after writing its first half.
#[test]
#[ignore = "needs NATS JetStream and PostgreSQL: set EVENT_BATCHER_NATS_URL and EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
fn nats_rolled_back_batch_messages_come_back_and_are_written() {
    let setup = Setup::new("rollback");
    let seed = 13;
    let events = 1_000;
    setup.publish(events, seed, 0);
    let exited = setup
        .instance(
            "single",
            &[
                "--max-batch",
                "100",
                "--flush-every",
                "300ms",
                "--fail-every",
                "4",
                "--on-failure",
                "skip-batch",
                "--nak-delay",
                "500ms",
                "--idle-exit",
                "5s",
            ],
        )
        .wait(EXIT_TIMEOUT);
    exited.assert_ok();
    eprintln!("{}", exited.stdout);
    let rolled_back_batches = exited.number("batches rolled back");
    assert!(rolled_back_batches >= 2, "{}", exited.describe());
    let rolled_back = exited.events_rolled_back();
    assert!(rolled_back >= 200, "{}", exited.describe());
    assert_eq!(exited.nats("nak'ed after rollback"), rolled_back);
    // Alone on the consumer, this instance got every nak'ed message back, once per nak.
    assert_eq!(exited.nats("redelivered"), rolled_back);
    assert_eq!(exited.nats("acked"), events);
    assert_eq!(exited.number("events acknowledged"), events);
    // Every event, those of the rolled-back batches included, is in the table once.
    setup.assert_exact(seed, events);
    setup.assert_drained();
}

/// `--concurrency 4`: four batches written at once, each acked after its own commit and
/// each rolled-back one nak'ed after its own rollback; the table ends exact. With
/// `--write-retries 1` and failures of the first attempt only, nothing is nak'ed at all:
/// a retried batch keeps its messages and acks them once it commits.
#[test]
#[ignore = "needs NATS JetStream and PostgreSQL: set EVENT_BATCHER_NATS_URL and EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
fn nats_concurrent_writers_ack_and_nak_each_batch_on_its_own() {
    for retries in [false, true] {
        let setup = Setup::new(if retries { "concretry" } else { "concurrent" });
        let seed = 21;
        let events = 2_000;
        setup.publish(events, seed, 0);
        let mut args = vec![
            "--max-batch",
            "100",
            "--flush-every",
            "300ms",
            "--concurrency",
            "4",
            "--fail-every",
            "4",
            "--on-failure",
            "skip-batch",
            "--nak-delay",
            "500ms",
            "--idle-exit",
            "5s",
        ];
        if retries {
            args.extend(["--write-retries", "1", "--write-backoff", "50ms"]);
            args.extend(["--fail-attempts", "1"]);
        }
        let exited = setup.instance("single", &args).wait(EXIT_TIMEOUT);
        exited.assert_ok();
        let rolled_back = exited.events_rolled_back();
        if retries {
            assert_eq!(rolled_back, 0, "{}", exited.describe());
            assert!(exited.number("write retries") >= 5, "{}", exited.describe());
            assert_eq!(exited.nats("redelivered"), 0, "{}", exited.describe());
        } else {
            assert!(rolled_back >= 500, "{}", exited.describe());
            assert_eq!(exited.nats("redelivered"), rolled_back);
        }
        assert_eq!(exited.nats("nak'ed after rollback"), rolled_back);
        assert_eq!(exited.nats("acked"), events);
        assert_eq!(exited.number("events acknowledged"), events);
        setup.assert_exact(seed, events);
        setup.assert_drained();
    }
}

/// A malformed payload is an invalid record: counted, reported, and terminated (`+TERM`), so
/// it is never redelivered, even with an ack wait shorter than the run.
#[test]
#[ignore = "needs NATS JetStream and PostgreSQL: set EVENT_BATCHER_NATS_URL and EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
fn nats_malformed_payload_is_rejected_not_redelivered() {
    let setup = Setup::new("malformed");
    let seed = 14;
    setup.publish(100, seed, 3);
    let exited = setup
        .instance(
            "single",
            &[
                "--ack-wait",
                "6s",
                "--nak-delay",
                "200ms",
                "--flush-every",
                "200ms",
                // Longer than the ack wait, so that the run outlasts it.
                "--idle-exit",
                "8s",
            ],
        )
        .wait(EXIT_TIMEOUT);
    exited.assert_ok();
    assert_eq!(exited.number("invalid lines"), 3, "{}", exited.stdout);
    assert!(
        exited.stderr.contains("invalid event 101: invalid event"),
        "{}",
        exited.stderr
    );
    assert_eq!(exited.nats("rejected"), 3);
    // 103 messages, each delivered once although the run lasted longer than the ack wait.
    assert_eq!(exited.nats("received"), 103);
    assert_eq!(exited.nats("redelivered"), 0);
    assert_eq!(exited.number("events acknowledged"), 100);
    setup.assert_exact(seed, 100);
    setup.assert_drained();
}
