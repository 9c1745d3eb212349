//! Stopping a NATS consumer: SIGTERM finishes the batch in flight and gives the rest back at
//! once; the library's stop token does the same; bad setups stop before anything is written.
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

use common::TempSqlite;
use common::instance::wait_until;
use common::nats::{EVENTS, EXIT_TIMEOUT, Setup};
use event_batcher::source::nats::{self, NatsOptions};

/// SIGTERM: the instance stops pulling, finishes the batch in flight (commit + ack), gives
/// back what it had prefetched, prints its summary and exits 0; the next instance takes the
/// rest at once (not after the 30 s ack wait), and the table is exact.
#[test]
#[ignore = "needs NATS JetStream and PostgreSQL: set EVENT_BATCHER_NATS_URL and EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
fn nats_sigterm_finishes_the_batch_in_flight_and_gives_the_rest_back() {
    sigterm_finishes_the_batch_in_flight_and_gives_the_rest_back(1);
}

/// The same with 7 events per message (NDJSON) in batches of 50, so that messages straddle
/// batches: the stop hands out the rest of a message it had begun, and the last batch is
/// written, so every message received is acknowledged whole or given back whole.
#[test]
#[ignore = "needs NATS JetStream and PostgreSQL: set EVENT_BATCHER_NATS_URL and EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
fn nats_sigterm_with_seven_events_per_message_acks_or_gives_back_whole_messages() {
    sigterm_finishes_the_batch_in_flight_and_gives_the_rest_back(7);
}

fn sigterm_finishes_the_batch_in_flight_and_gives_the_rest_back(per_message: u64) {
    let setup = Setup::new(&format!("sigterm{per_message}"));
    let seed = 15;
    setup.publish_grouped(EVENTS, seed, 0, per_message);
    let first = setup.instance("first", &["--max-batch", "50", "--flush-every", "5s"]);
    wait_until(Duration::from_secs(30), "the first rows", || {
        setup.rows_so_far() >= 500
    });
    first.signal("TERM");
    let first = first.wait(Duration::from_secs(20));
    first.assert_ok();
    eprintln!("{}", first.stdout);
    assert!(
        first.stderr.contains("SIGTERM: stopping"),
        "{}",
        first.stderr
    );
    assert!(
        first.value("source ended").starts_with("stop requested"),
        "{}",
        first.stdout
    );
    let acknowledged = first.number("events acknowledged");
    assert!(
        acknowledged < EVENTS,
        "the first instance read everything before SIGTERM"
    );
    assert_eq!(first.number("batches rolled back"), 0);
    assert_eq!(setup.rows_of_run(first.run_id()), acknowledged);
    // Every message it received was settled: acked, or given back with an immediate -NAK
    // (messages of the open pull request that arrived after the signal; how many depends on
    // timing, often none). None was left to the 30 s ack wait.
    let given_back = first.nats("given back unsettled");
    assert_eq!(first.nats("left for redelivery"), 0, "{}", first.stdout);
    let acked = first.nats("acked");
    assert_eq!(
        first.nats("received"),
        acked + given_back,
        "{}",
        first.stdout
    );
    // Whole messages only: none was acknowledged with part of its events.
    assert_eq!(acknowledged, acked * per_message, "{}", first.stdout);
    // The server applies verdicts asynchronously, so allow it a moment. A message given back
    // with -NAK stays in `num_ack_pending` until it is redelivered (nats-server keeps it
    // pending, queued for redelivery), so exactly the given-back messages remain there.
    wait_until(
        Duration::from_secs(30),
        "the first instance's acks to be applied",
        || setup.consumer_info().num_ack_pending as u64 == given_back,
    );

    // The next instance gets the given-back messages at once: with a 2 s idle exit it would
    // end without them if they waited for the 30 s ack wait.
    let second = setup
        .instance("second", &["--flush-every", "300ms", "--idle-exit", "2s"])
        .wait(EXIT_TIMEOUT);
    second.assert_ok();
    assert_eq!(
        second.number("events acknowledged"),
        EVENTS - acknowledged,
        "{}",
        second.stdout
    );
    assert_eq!(second.nats("redelivered"), given_back, "{}", second.stdout);
    setup.assert_exact(seed, EVENTS);
    setup.assert_drained();
}

/// The give-back path of a graceful stop, made deterministic through the library: the source
/// pulls 100 messages in one request, the pipeline takes 10 and acks them, then the stop token
/// fires. The other 90 (delivered to the open request, never handed out) are given back with
/// an immediate `-NAK`, the stream ends, and a new reader gets exactly those 90 at once as
/// redeliveries, far inside the 30 s ack wait.
#[test]
#[ignore = "needs NATS JetStream and PostgreSQL: set EVENT_BATCHER_NATS_URL and EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
fn nats_source_stop_gives_back_the_open_request_at_once() {
    use futures::StreamExt;
    use tokio_util::sync::CancellationToken;

    let setup = Setup::new("giveback");
    let seed = 21;
    setup.publish(100, seed, 0);
    let mut options = NatsOptions::new(
        &setup.nats_url,
        &setup.stream,
        &setup.subject,
        &setup.consumer,
    );
    options.pull_batch = 100;
    setup.rt.block_on(async {
        let source = nats::NatsSource::connect(options.clone())
            .await
            .expect("source");
        assert_eq!(source.ack_wait(), Duration::from_secs(30));
        let stop = CancellationToken::new();
        let mut records = source.records(stop.clone());
        for _ in 0..10 {
            let record = records.next().await.expect("a record").expect("no error");
            record.ack.expect("an ack hook").ack().await.expect("ack");
        }
        stop.cancel();
        let after_stop = tokio::time::timeout(Duration::from_secs(10), async {
            let mut n = 0;
            while let Some(record) = records.next().await {
                record.expect("no error");
                n += 1;
            }
            n
        })
        .await
        .expect("the stream ends after the stop");
        assert_eq!(after_stop, 0, "records handed out after the stop");
        drop(records);
        let stats = source.close().await;
        assert_eq!(stats.received, 100, "{stats:?}");
        assert_eq!(stats.acked, 10, "{stats:?}");
        assert_eq!(stats.dropped_nacked, 90, "{stats:?}");
        assert_eq!(stats.settled(), 100, "{stats:?}");

        // A -NAK'ed message stays in num_ack_pending until it is redelivered. (The server may
        // apply the acks a moment after its reply to `close`'s request.)
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = setup.consumer_info_async().await;
            if (info.num_ack_pending, info.num_pending) == (90, 0) {
                break;
            }
            assert!(Instant::now() < deadline, "consumer state: {info:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let started = Instant::now();
        let again = nats::NatsSource::connect(options).await.expect("source");
        let mut records = again.records(CancellationToken::new());
        for _ in 0..90 {
            let record = tokio::time::timeout(Duration::from_secs(10), records.next())
                .await
                .expect("given-back messages come back at once")
                .expect("a record")
                .expect("no error");
            record.ack.expect("an ack hook").ack().await.expect("ack");
        }
        assert!(started.elapsed() < Duration::from_secs(20));
        drop(records);
        let stats = again.close().await;
        assert_eq!((stats.received, stats.redelivered), (90, 90), "{stats:?}");
    });
    setup.assert_drained();
}

/// Needs no server: an unreachable NATS server, or bad NATS options, stop the run before
/// anything is written (exit code 2, one line on stderr).
#[test]
fn nats_setup_errors_exit_2_with_one_line() {
    let db = TempSqlite::new();
    let cases: [&[&str]; 6] = [
        &["--source", "nats://127.0.0.1:1", "--database", &db.url],
        &["publish", "--source", "nats://127.0.0.1:1"],
        &["--source", "http://127.0.0.1:4222", "--database", &db.url],
        &[
            "--source",
            "nats://127.0.0.1:1",
            "--idle-exit",
            "500ms",
            "--nak-delay",
            "1s",
        ],
        &["--source", "nats://127.0.0.1:1", "--max-deliveries", "3"],
        &[
            "--source",
            "nats://127.0.0.1:1",
            "--dead-letter",
            "dead.ndjson",
        ],
    ];
    let expected = [
        "cannot connect to NATS at nats://127.0.0.1:1",
        "cannot connect to NATS at nats://127.0.0.1:1",
        "invalid NATS URL",
        "--idle-exit (500ms) must be longer than --nak-delay (1s)",
        "--max-deliveries needs --dead-letter PATH",
        "receives the events given up after --max-deliveries",
    ];
    for (args, expected) in cases.iter().zip(expected) {
        let started = Instant::now();
        let output = common::run_binary(db.dir.path(), args, None);
        let (stdout, stderr) = common::texts(&output);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {stdout}\n{stderr}"
        );
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    // Nothing was written: the database was never created.
    assert!(!db.dir.path().join("events.db").exists());
    assert!(!db.dir.path().join("dead.ndjson").exists());
    // NATS-only options need --source.
    let output = common::run_binary(db.dir.path(), &["--idle-exit", "2s"], None);
    assert_eq!(output.status.code(), Some(2));
}
