//! Messages whose batch never commits: given up after `--max-deliveries`, written to the
//! dead-letter file, and replayable from it.
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

use std::collections::BTreeSet;

use common::ids;
use common::instance::Instance;
use common::nats::{EXIT_TIMEOUT, Setup};

/// A batch the database never accepts is not redelivered forever: with `--max-deliveries 2`
/// every message is nak'ed after its first failed batch and, failing again, written to the
/// dead-letter file (synced) and terminated. Nothing is lost: the file, replayed with
/// `--input`, stores every event.
#[test]
#[ignore = "needs NATS JetStream and PostgreSQL: set EVENT_BATCHER_NATS_URL and EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
fn nats_messages_given_up_after_max_deliveries_go_to_the_dead_letter_file() {
    messages_given_up_after_max_deliveries_go_to_the_dead_letter_file(1);
}

/// The same with 10 events per message (NDJSON): a message is given up, and each of its events
/// written to the dead-letter file, once.
#[test]
#[ignore = "needs NATS JetStream and PostgreSQL: set EVENT_BATCHER_NATS_URL and EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
fn nats_messages_given_up_after_max_deliveries_go_to_the_dead_letter_file_ten_events_per_message() {
    messages_given_up_after_max_deliveries_go_to_the_dead_letter_file(10);
}

fn messages_given_up_after_max_deliveries_go_to_the_dead_letter_file(per_message: u64) {
    let setup = Setup::new(&format!("poison{per_message}"));
    let seed = 17;
    let events = 300;
    let messages = events / per_message;
    setup.publish_grouped(events, seed, 0, per_message);
    let dir = tempfile::tempdir().unwrap();
    let dead_letter = dir.path().join("given-up.ndjson");
    // A dead letter of an earlier run: appended to, never truncated.
    let earlier = ids(seed, 1, 1).into_iter().next().unwrap();
    let earlier_line = format!(r#"{{"id":"{earlier}","tenant":"earlier","ts":0,"payload":{{}}}}"#);
    std::fs::write(&dead_letter, format!("{earlier_line}\n")).unwrap();
    let exited = setup
        .instance(
            "always failing",
            &[
                "--max-batch",
                "100",
                "--flush-every",
                "300ms",
                "--fail-every",
                "1",
                "--on-failure",
                "skip-batch",
                "--max-deliveries",
                "2",
                "--dead-letter",
                dead_letter.to_str().unwrap(),
                "--nak-delay",
                "200ms",
                "--idle-exit",
                "4s",
            ],
        )
        .wait(EXIT_TIMEOUT);
    exited.assert_ok();
    eprintln!("{}", exited.stdout);
    assert_eq!(exited.number("events acknowledged"), 0);
    // Each message: delivered, rolled back, nak'ed; redelivered, rolled back, given up.
    assert_eq!(exited.nats("received"), 2 * messages, "{}", exited.stdout);
    assert_eq!(exited.nats("redelivered"), messages);
    assert_eq!(exited.nats("nak'ed after rollback"), messages);
    assert_eq!(exited.nats("dead-lettered"), messages);
    assert_eq!(exited.events_rolled_back(), 2 * events);
    assert!(
        exited
            .value("batches rolled back")
            .contains(&format!("{events} given up after --max-deliveries")),
        "{}",
        exited.stdout
    );
    assert_eq!(setup.rows_so_far(), 0);
    setup.assert_drained();

    // The dead letters: the earlier line kept, then every event once, replayable.
    let text = std::fs::read_to_string(&dead_letter).unwrap();
    assert_eq!(text.lines().next(), Some(earlier_line.as_str()));
    let lines: Vec<String> = text
        .lines()
        .skip(1)
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            event["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(lines.len() as u64, events);
    let distinct: BTreeSet<String> = lines.into_iter().collect();
    assert_eq!(distinct, ids(seed, 1, events));
    let replay = Instance::spawn(
        "replay",
        &[
            "--input",
            dead_letter.to_str().unwrap(),
            "--database",
            &setup.pg_url,
            "--table",
            &setup.table,
            "-q",
        ]
        .map(String::from),
    )
    .wait(EXIT_TIMEOUT);
    assert_eq!(replay.status.code(), Some(0), "{}", replay.describe());
    assert_eq!(replay.number("events acknowledged"), events + 1);
    assert_eq!(replay.inserted_and_present(), (events, 1));
    setup.assert_exact(seed, events);
}
