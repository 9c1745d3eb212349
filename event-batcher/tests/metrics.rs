//! `--metrics ADDR` and `--log-format`: scraped over real TCP connections (a raw HTTP/1.1
//! GET), during and after runs of the binary and of the library, and compared with the
//! summary of the same run; bad addresses, a port in use, scrapers that never send or never
//! read, a run that stops mid-way; the README's sample scrape against a real one; the JSON
//! log lines.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Killed, TEST_TIMEOUT, TempSqlite, failing, lines_of, run_binary, summary_value, synthetic,
    texts,
};
use event_batcher::Pipeline;
use event_batcher::metrics::{CONNECTION_TIMEOUT, MAX_CONNECTIONS, MetricsServer, parse_addr};
use event_batcher::pipeline::OnFailure;
use event_batcher::report::{Outcome, Summary};
use event_batcher::source::{Input, SourceSpec};

const BIN: &str = env!("CARGO_BIN_EXE_event-batcher");

/// `GET /metrics` on a fresh connection: the body, after checking the status line, the
/// content type and the length.
fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n")
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the answer");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    assert!(
        head.contains(&format!("\r\nContent-Length: {}", body.len())),
        "{head}"
    );
    body.to_owned()
}

/// The samples of a scrape: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (key, value) = line.rsplit_once(' ').expect("name and value");
            (key.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// The value of `key` in `samples`, which must hold it, as an integer.
fn get(samples: &BTreeMap<String, f64>, key: &str) -> u64 {
    let value = samples
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {samples:#?}"));
    *value as u64
}

/// Every counter of the final scrape equals the summary's number for it.
fn assert_agrees(summary: &Summary, scraped: &str) {
    let s = samples(scraped);
    let incomplete = summary
        .failed_batches
        .iter()
        .filter(|b| !b.rolled_back_cleanly)
        .count() as u64;
    let b = &summary.batches;
    let reasons = [
        ("size", b.size),
        ("weight", b.weight),
        ("deadline", b.deadline),
        ("end", b.end),
        ("eviction", b.eviction),
        ("error", b.before_error),
    ];
    let by_reason = reasons.map(|(reason, n)| {
        (
            format!(r#"event_batcher_batches_total{{reason="{reason}"}}"#),
            n,
        )
    });
    let rollbacks = [
        ("complete", summary.batches_rolled_back - incomplete),
        ("incomplete", incomplete),
    ]
    .map(|(outcome, n)| {
        let key = format!(r#"event_batcher_batch_rollbacks_total{{outcome="{outcome}"}}"#);
        (key, n)
    });
    let totals = [
        ("events_read_total", summary.events_read),
        ("events_invalid_total", summary.invalid),
        ("events_acknowledged_total", summary.acknowledged),
        ("events_rolled_back_total", summary.events_rolled_back),
        ("events_dead_lettered_total", summary.events_dead_lettered),
        ("write_retries_total", summary.write_retries),
        ("batches_in_flight", 0),
        ("batch_age_seconds_count", b.total()),
        // Every attempt ended: each committed, or failed and was rolled back (then
        // retried, or its batch rolled back for good).
        (
            "batch_write_seconds_count",
            b.total() + summary.write_retries + summary.batches_rolled_back,
        ),
    ]
    .map(|(name, n)| (format!("event_batcher_{name}"), n));
    for (key, expected) in totals.into_iter().chain(by_reason).chain(rollbacks) {
        let key = key.as_str();
        assert_eq!(get(&s, key), expected, "{key}\n{summary}\n{scraped}");
    }
}

/// A run of `config` through the library, its metrics served on a free port: the summary
/// and a scrape taken over TCP once it has ended.
async fn run_and_scrape(config: event_batcher::Config) -> (Summary, String) {
    let server = MetricsServer::bind(parse_addr("127.0.0.1:0").unwrap())
        .await
        .unwrap();
    let summary = Pipeline::new(config)
        .metrics(server.handle())
        .run()
        .await
        .expect("the run starts");
    let addr = server.local_addr();
    let scraped = tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .unwrap();
    (summary, scraped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skip_batch_run_with_retries_and_invalid_lines_agrees_with_its_summary() {
    common::within(async {
        let db = TempSqlite::new();
        let input = tempfile::NamedTempFile::new().unwrap();
        let lines: String = (0..1000)
            .map(|n| match n % 97 {
                13 => "not json\n".to_owned(),
                _ => format!(
                    r#"{{"id":"m-{n}","tenant":"t{}","ts":1714564800000,"payload":{{"n":{n}}}}}"#,
                    n % 3
                ) + "\n",
            })
            .collect();
        std::fs::write(input.path(), lines).unwrap();
        let mut config = failing(
            synthetic(&db.url, "events", 0, 64, 5),
            4,
            OnFailure::SkipBatch,
        );
        config.source = SourceSpec::Ndjson(Input::File(input.path().to_owned()));
        config.write_retry.retries = 1;
        config.write_retry.backoff = Duration::ZERO;
        let (summary, scraped) = run_and_scrape(config).await;
        assert_eq!(summary.outcome, Outcome::Finished, "{summary}");
        assert!(
            summary.invalid > 0 && summary.write_retries > 0,
            "{summary}"
        );
        assert!(summary.batches_rolled_back > 0, "{summary}");
        assert_agrees(&summary, &scraped);
    })
    .await;
}

/// A run that stops mid-way on a batch whose rollback cannot complete: the counters say
/// what happened, nothing more, nothing less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_stops_mid_way_leaves_honest_counters() {
    common::within(async {
        let db = TempSqlite::new();
        let mut config = failing(
            synthetic(&db.url, "events", 2_000, 100, 8),
            6,
            OnFailure::Stop,
        );
        config.rollback.attempts = 1;
        config.faults.fail_rollback_attempts = 1;
        let (summary, scraped) = run_and_scrape(config).await;
        let Outcome::Stopped {
            rolled_back_cleanly: false,
            ..
        } = summary.outcome
        else {
            panic!("expected a run stopped with an incomplete rollback:\n{summary}");
        };
        assert_eq!(summary.acknowledged, 500, "{summary}");
        assert_agrees(&summary, &scraped);
        let s = samples(&scraped);
        assert_eq!(
            get(
                &s,
                r#"event_batcher_batch_rollbacks_total{outcome="incomplete"}"#
            ),
            1
        );
    })
    .await;
}

/// The number right after `label` in `text`.
fn number_after(text: &str, label: &str) -> u64 {
    let rest = text
        .split_once(label)
        .map_or("", |(_, rest)| rest.trim_start());
    let digits = &rest[..rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len())];
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {label:?} in {text}"))
}

#[test]
fn the_binary_serves_live_counters_and_after_the_summary_exactly_its_values() {
    let db = TempSqlite::new();
    let mut child = Killed(
        Command::new(BIN)
            .args(["--events", "6000", "--rate", "3000", "--max-batch", "200"])
            .args(["--fail-every", "4", "--on-failure", "skip-batch"])
            .args(["--write-retries", "1", "--write-backoff", "0s"])
            .args(["--database", &db.url, "--progress", "plain"])
            .args(["--metrics", "127.0.0.1:0", "--metrics-linger", "60s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the binary"),
    );
    let stderr = lines_of(child.0.stderr.take().unwrap());
    let stdout = lines_of(child.0.stdout.take().unwrap());
    let first = stderr
        .recv_timeout(TEST_TIMEOUT)
        .expect("a first stderr line");
    let addr: SocketAddr = first
        .strip_prefix("event-batcher: metrics at http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("the address line first: {first}"))
        .parse()
        .unwrap();

    // Scrapes while the run goes on, until the summary is complete.
    let deadline = Instant::now() + TEST_TIMEOUT;
    let (mut summary, mut during) = (String::new(), Vec::new());
    while !summary.contains("\n  consistency check") {
        assert!(Instant::now() < deadline, "no summary:\n{summary}");
        during.push(samples(&scrape(addr)));
        while let Ok(line) = stdout.try_recv() {
            summary += &line;
            summary.push('\n');
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let last = scrape(addr);
    // Counters never go down; some scrape saw the run half-way.
    for pair in during.windows(2) {
        for (key, value) in &pair[0] {
            if !key.contains("in_flight") {
                assert!(pair[1][key] >= *value, "{key} went down");
            }
        }
    }
    let read = "event_batcher_events_read_total";
    assert!(
        during.iter().any(|s| (1..6000).contains(&get(s, read))),
        "no scrape while the run went on"
    );
    let s = samples(&last);
    assert_eq!(get(&s, read), number_after(&summary, "events read"));
    for (key, label) in [
        ("event_batcher_events_invalid_total", "invalid lines"),
        (
            "event_batcher_events_acknowledged_total",
            "events acknowledged",
        ),
        ("event_batcher_write_retries_total", "write retries"),
    ] {
        assert_eq!(get(&s, key), number_after(&summary, label), "{key}");
    }
    let rolled_back = number_after(&summary, "batches rolled back");
    assert_eq!(
        get(
            &s,
            r#"event_batcher_batch_rollbacks_total{outcome="complete"}"#
        ),
        rolled_back
    );
    let written = summary_value(&summary, "batches written");
    for reason in ["size", "weight", "deadline", "end", "eviction"] {
        let key = format!(r#"event_batcher_batches_total{{reason="{reason}"}}"#);
        assert_eq!(get(&s, &key), number_after(written, &format!("{reason} ")));
    }

    // SIGTERM ends the linger; the exit code is the run's.
    let pid = child.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the linger did not end on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{summary}");
}

#[test]
fn a_bad_address_or_a_port_in_use_exits_2_before_anything_is_written() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for (addr, says) in [
        ("9464", "no port"),
        ("127.0.0.1:http", "the port is not a number"),
        ("example.com:9464", "not an IP address"),
        (taken.as_str(), "cannot listen"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let args =
            format!("--events 10 --database sqlite://db --rejects r.ndjson --metrics {addr}");
        let args: Vec<&str> = args.split(' ').collect();
        let output = run_binary(dir.path(), &args, None);
        let (stdout, stderr) = texts(&output);
        assert_eq!(output.status.code(), Some(2), "{addr}: {stdout}\n{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{addr}: {stderr}");
        assert!(
            stderr.starts_with("event-batcher: error: --metrics ") && stderr.contains(says),
            "{addr}: {stderr}"
        );
        assert!(stdout.is_empty(), "{addr}: {stdout}");
        let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(written.is_empty(), "{addr}: written: {written:?}");
    }
}

/// Clients that connect and never send, or send and never read: the run is not held up,
/// their connections are closed after the timeout, and the endpoint answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapers_that_never_send_or_never_read_do_not_stall_the_run() {
    common::within(async {
        let server = MetricsServer::bind(parse_addr("127.0.0.1:0").unwrap())
            .await
            .unwrap();
        let addr = server.local_addr();
        let idle: Vec<TcpStream> = tokio::task::spawn_blocking(move || {
            (0..MAX_CONNECTIONS + 8)
                .map(|n| {
                    let mut stream = TcpStream::connect(addr).unwrap();
                    if n % 2 == 0 {
                        stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
                    }
                    stream
                })
                .collect()
        })
        .await
        .unwrap();
        let db = TempSqlite::new();
        let started = Instant::now();
        let summary = Pipeline::new(synthetic(&db.url, "events", 2_000, 100, 3))
            .metrics(server.handle())
            .run()
            .await
            .unwrap();
        assert!(summary.is_success(), "{summary}");
        assert!(
            started.elapsed() < CONNECTION_TIMEOUT,
            "the run waited for the scrapers: {:?}",
            started.elapsed()
        );
        // The server closes every one of them by the timeout (EOF, or a reset).
        let scraped = tokio::task::spawn_blocking(move || {
            for mut stream in idle {
                stream
                    .set_read_timeout(Some(CONNECTION_TIMEOUT * 2))
                    .unwrap();
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink);
            }
            scrape(addr)
        })
        .await
        .unwrap();
        assert_agrees(&summary, &scraped);
    })
    .await;
}

/// The `## Metrics and logs` section of the README: its sample scrape has the lines of a
/// real scrape, numbers masked, and its list names every metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_sample_is_a_real_scrape() {
    common::within(async {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("the README");
        let section = readme
            .split_once("\n## Metrics and logs\n")
            .expect("a Metrics and logs section")
            .1;
        let sample = section
            .split_once("```text\n# HELP")
            .map(|(_, rest)| format!("# HELP{}", rest.split_once("```").expect("closed").0))
            .expect("a sample scrape");
        let db = TempSqlite::new();
        let (_, scraped) = run_and_scrape(synthetic(&db.url, "events", 1_000, 100, 2)).await;
        let mask = |text: &str| -> Vec<String> {
            text.lines()
                .map(|line| match line.rsplit_once(' ') {
                    Some((key, _)) if !line.starts_with('#') => format!("{key} N"),
                    _ => line.to_owned(),
                })
                .collect()
        };
        // The sample is an excerpt: its lines appear in the scrape in this order, and a line
        // that is only `…` stands for lines left out.
        let scraped_lines = mask(&scraped);
        let mut rest = scraped_lines.iter();
        for line in mask(&sample).iter().filter(|line| line.trim() != "…") {
            assert!(
                rest.any(|real| real == line),
                "README sample line {line:?} is not in the scrape (in order):\n{scraped}"
            );
        }
        assert!(sample.lines().count() >= 5, "the sample shows a few lines");
        // The list: every metric named in the prose before the sample, the NATS ones included.
        let prose = section.split_once("```text").expect("a sample").0;
        let listed: Vec<&str> = prose
            .split("`event_batcher_")
            .skip(1)
            .filter_map(|rest| rest.split(['`', '{']).next())
            .collect();
        for line in scraped.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            let name = name.strip_prefix("event_batcher_").unwrap();
            assert!(listed.contains(&name), "{name} is not listed: {listed:?}");
        }
        for nats in ["nats_messages_total", "nats_redeliveries_total"] {
            assert!(listed.contains(&nats), "{nats} is not listed");
        }
    })
    .await;
}

#[test]
fn json_logs_are_one_object_per_line_and_rust_log_filters_them() {
    let dir = tempfile::tempdir().unwrap();
    let valid = |id: &str| format!(r#"{{"id":"{id}","tenant":"t","ts":1,"payload":{{}}}}"#);
    let input = format!("{}\nnot json\n{}\n", valid("a"), valid("b"));
    let run = |format: &str, rust_log: &str| {
        let mut command = Command::new(BIN);
        command
            .args(["--input", "-", "--database", "sqlite://events.db"])
            .args(["--log-format", format, "--metrics", "127.0.0.1:0"])
            .env("RUST_LOG", rust_log)
            .current_dir(dir.path());
        common::output_within(&mut command, Some(input.as_bytes()), TEST_TIMEOUT)
    };
    let output = run("json", "");
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("event-batcher summary\n"), "{stdout}");
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let fields = |e: &serde_json::Value| {
        let field = |name: &str| e[name].as_str().unwrap_or_default().to_owned();
        (field("level"), field("target"), field("message"))
    };
    let (level, target, message) = fields(&events[0]);
    assert_eq!((level.as_str(), target.as_str()), ("INFO", "event_batcher"));
    assert!(
        message.starts_with("metrics at http://127.0.0.1:"),
        "{message}"
    );
    let (level, _, message) = fields(&events[1]);
    assert_eq!(level, "WARN");
    assert!(message.starts_with("invalid line 2: "), "{message}");
    let stamped = events.iter().all(|e| e["timestamp"].is_string());
    assert!(stamped, "{stderr}");

    // Text, as it always was; RUST_LOG=error leaves only errors (there are none).
    let (_, stderr) = texts(&run("text", "event_batcher=info"));
    let second = stderr.lines().nth(1).unwrap_or_default();
    assert!(
        second.starts_with("event-batcher: invalid line 2: "),
        "{stderr}"
    );
    let (stdout, stderr) = texts(&run("text", "error"));
    assert!(stderr.is_empty(), "{stderr}");
    assert!(stdout.starts_with("event-batcher summary\n"), "{stdout}");
}

/// A NATS run (nak'ed batches redelivered, malformed messages terminated): the `nats`
/// metrics equal the summary's NATS line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS JetStream server: EVENT_BATCHER_NATS_URL=nats://127.0.0.1:4222"]
async fn a_nats_run_counts_its_verdicts_as_the_summary_does() {
    use event_batcher::source::nats::{self, NatsOptions};
    common::within(async {
        let url = common::required_env("EVENT_BATCHER_NATS_URL", "nats://127.0.0.1:4222");
        let unique = format!("{}_{:08x}", std::process::id(), fastrand::u32(..));
        let (stream, subject) = (
            format!("EB_METRICS_{unique}"),
            format!("eb.metrics.{unique}"),
        );
        let mut options =
            NatsOptions::new(&url, &stream, &subject, "eb-metrics").for_pipeline(50, 1);
        options.idle_exit = Some(Duration::from_secs(2));
        options.nak_delay = Duration::from_millis(50);
        let client = nats::connect(&options).await.expect("NATS is reachable");
        let js = nats::jetstream_context(client, &options);
        nats::ensure_stream(&js, &options).await.unwrap();
        let events = event_batcher::source::synthetic::events(7, 400)
            .map(|event| (event.id.clone(), serde_json::to_vec(&event).unwrap()));
        let malformed = (0..3).map(|n| (format!("bad-{n}"), b"not an event".to_vec()));
        nats::publish(&js, &subject, events.chain(malformed), 64)
            .await
            .unwrap();
        let db = TempSqlite::new();
        let mut config = failing(
            synthetic(&db.url, "events", 0, 50, 7),
            3,
            OnFailure::SkipBatch,
        );
        config.source = SourceSpec::Nats(Box::new(options));
        let (summary, scraped) = run_and_scrape(config).await;
        let _ = js.delete_stream(&stream).await;
        assert!(summary.is_success(), "{summary}");
        let nats = summary.nats.expect("NATS counters");
        assert!(
            nats.redelivered > 0 && nats.nacked > 0 && nats.rejected == 3,
            "{summary}"
        );
        assert_agrees(&summary, &scraped);
        let s = samples(&scraped);
        let outcome = |name: &str| {
            get(
                &s,
                &format!(r#"event_batcher_nats_messages_total{{outcome="{name}"}}"#),
            )
        };
        assert_eq!(
            get(&s, "event_batcher_nats_messages_received_total"),
            nats.received
        );
        assert_eq!(
            get(&s, "event_batcher_nats_redeliveries_total"),
            nats.redelivered
        );
        assert_eq!(
            get(&s, "event_batcher_nats_pull_failures_total"),
            nats.broker_errors
        );
        for (name, expected) in [
            ("acked", nats.acked),
            ("nacked", nats.nacked),
            ("terminated", nats.rejected),
            ("dead_lettered", nats.dead_lettered),
            ("given_back", nats.dropped_nacked),
            ("abandoned", nats.abandoned),
            ("unsent", nats.send_failures),
        ] {
            assert_eq!(outcome(name), expected, "{name}\n{summary}");
        }
    })
    .await;
}
