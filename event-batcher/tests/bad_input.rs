//! Bad input, one test per row of the README's "bad input → what happens" table: each case
//! gets a clear message and either a counted reject (the run goes on, exit code 0) or a
//! refusal to start (exit code 2); never a panic, never a lost valid event, memory bounded.
//!
//! Two rows are backed by `tests/sqlite_binary.rs::setup_errors_exit_2_with_one_line_and_write_nothing`
//! as well (wrong database URLs, a table name that is SQL, through the binary).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Db, TempSqlite, scenarios, summary_value, texts};
use event_batcher::report::{Outcome, Summary};
use event_batcher::source::{Input, SourceSpec};
use event_batcher::{Config, SetupError};

/// A valid NDJSON line for event `id`.
fn valid(id: &str) -> String {
    format!(r#"{{"id":"{id}","tenant":"t","ts":1714564800000,"payload":{{"n":1}}}}"#)
}

/// Runs `input` (NDJSON bytes) through the library into a fresh SQLite database; returns
/// the summary and the ids stored.
async fn run_ndjson(input: &[u8]) -> (Summary, BTreeSet<String>) {
    let db = TempSqlite::new();
    let path = db.dir.path().join("in.ndjson");
    std::fs::write(&path, input).unwrap();
    let config = Config {
        source: SourceSpec::Ndjson(Input::File(path)),
        ..common::synthetic(&db.url, "events", 0, 500, 1)
    };
    let summary = event_batcher::run(config).await.expect("the run starts");
    let db_read = Db::open(&db.url).await;
    let ids = db_read.ids("events").await;
    db_read.close().await;
    (summary, ids)
}

/// NDJSON: the bad `middle` line(s) between two valid events `a` and `b`.
fn around(middle: &[u8]) -> Vec<u8> {
    let mut input = valid("a").into_bytes();
    input.push(b'\n');
    input.extend_from_slice(middle);
    input.push(b'\n');
    input.extend_from_slice(valid("b").as_bytes());
    input.push(b'\n');
    input
}

/// The run finished, `invalid` records were counted, each with a reason containing the
/// matching `reasons` entry, and every valid event is stored.
fn assert_counted_rejects(
    summary: &Summary,
    ids: &BTreeSet<String>,
    reasons: &[&str],
    valid: &[&str],
) {
    assert_eq!(summary.outcome, Outcome::Finished, "{summary}");
    assert_eq!(summary.invalid, reasons.len() as u64, "{summary}");
    for (note, reason) in summary.rejects.iter().zip(reasons) {
        assert!(
            note.reason.contains(reason),
            "{:?} lacks {reason:?}",
            note.reason
        );
        assert!(!note.reason.contains('\n'), "{:?}", note.reason);
    }
    let expected: BTreeSet<String> = valid.iter().map(|id| id.to_string()).collect();
    assert_eq!(*ids, expected, "{summary}");
    assert_eq!(summary.acknowledged, valid.len() as u64);
    assert!(summary.check.holds, "{summary}");
    assert_eq!(summary.exit_code(), 0);
}

#[tokio::test]
async fn invalid_utf8_is_a_counted_reject() {
    let (summary, ids) = run_ndjson(&around(
        b"{\"id\":\"\xff\xfe\",\"tenant\":\"t\",\"ts\":1,\"payload\":1}",
    ))
    .await;
    assert_counted_rejects(&summary, &ids, &["invalid event"], &["a", "b"]);
}

/// Peak resident memory of process `pid` so far (`VmHWM`), in KiB, while it runs.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_100_mb_line_is_rejected_in_bounded_memory() {
    const LINE_BYTES: usize = 100 << 20;
    let dir = tempfile::tempdir().unwrap();
    let mut big = br#"{"id":"big","tenant":"t","ts":1,"payload":""#.to_vec();
    big.resize(LINE_BYTES - 2, b'x');
    big.extend_from_slice(b"\"}");
    std::fs::write(dir.path().join("in.ndjson"), around(&big)).unwrap();
    drop(big);

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_event-batcher"))
        .args(["--input", "in.ndjson", "--rejects", "rejects.ndjson", "-q"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // VmHWM is the peak so far: sampled until the process exits, the last sample covers
    // everything but its last few milliseconds (printing the summary).
    let deadline = Instant::now() + common::TEST_TIMEOUT;
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the run did not finish");
        peak = peak_rss_kib(child.id()).unwrap_or(peak).max(peak);
        std::thread::sleep(Duration::from_millis(2));
    }
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "invalid line 2: line is {LINE_BYTES} bytes long, at most 1048576 allowed"
        )),
        "{stderr}"
    );
    assert_eq!(
        summary_value(&stdout, "invalid lines").lines().next(),
        Some("1")
    );
    assert!(summary_value(&stdout, "events acknowledged").starts_with("2 "));
    // Well below the line: it was never held whole (a debug build's peak is about 20 MB).
    assert!(peak > 0, "no memory sample taken");
    assert!(
        peak < 64 * 1024,
        "peak RSS {peak} KiB for a {LINE_BYTES}-byte line"
    );
    // The rejects file holds the line's first MiB, not the whole line.
    let rejects = std::fs::metadata(dir.path().join("rejects.ndjson")).unwrap();
    assert!(rejects.len() < 2 << 20, "{} bytes", rejects.len());
}

#[tokio::test]
async fn a_json_nesting_bomb_is_a_counted_reject() {
    let depth = 100_000;
    let mut bomb = br#"{"id":"bomb","tenant":"t","ts":1,"payload":"#.to_vec();
    bomb.extend(std::iter::repeat_n(b'[', depth));
    bomb.extend(std::iter::repeat_n(b']', depth));
    bomb.push(b'}');
    let (summary, ids) = run_ndjson(&around(&bomb)).await;
    assert_counted_rejects(&summary, &ids, &["recursion limit exceeded"], &["a", "b"]);
}

#[tokio::test]
async fn an_empty_id_is_a_counted_reject() {
    let (summary, ids) = run_ndjson(&around(br#"{"id":"","tenant":"t","ts":1,"payload":1}"#)).await;
    assert_counted_rejects(&summary, &ids, &["field `id` is empty"], &["a", "b"]);
}

#[tokio::test]
async fn an_over_long_id_or_tenant_is_a_counted_reject() {
    let long_id = format!(
        r#"{{"id":"{}","tenant":"t","ts":1,"payload":1}}"#,
        "i".repeat(129)
    );
    let long_tenant = format!(
        r#"{{"id":"c","tenant":"{}","ts":1,"payload":1}}"#,
        "t".repeat(65)
    );
    let middle = format!("{long_id}\n{long_tenant}");
    let (summary, ids) = run_ndjson(&around(middle.as_bytes())).await;
    assert_counted_rejects(
        &summary,
        &ids,
        &[
            "field `id` is 129 bytes long, at most 128 allowed",
            "field `tenant` is 65 bytes long, at most 64 allowed",
        ],
        &["a", "b"],
    );
}

#[tokio::test]
async fn a_duplicated_id_inside_one_batch_is_stored_once() {
    let db = TempSqlite::new();
    scenarios::duplicate_id_in_one_batch(&db.url, "events").await;
}

#[tokio::test]
async fn a_timestamp_out_of_range_is_a_counted_reject() {
    let middle = [
        r#"{"id":"neg","tenant":"t","ts":-1,"payload":1}"#,
        r#"{"id":"y10k","tenant":"t","ts":253402300800000,"payload":1}"#,
        r#"{"id":"huge","tenant":"t","ts":1e300,"payload":1}"#,
        r#"{"id":"big","tenant":"t","ts":99999999999999999999,"payload":1}"#,
    ]
    .join("\n");
    let (summary, ids) = run_ndjson(&around(middle.as_bytes())).await;
    assert_counted_rejects(
        &summary,
        &ids,
        &[
            "field `ts` is -1",
            "field `ts` is 253402300800000",
            "invalid type: floating point",
            "invalid type: floating point",
        ],
        &["a", "b"],
    );
}

#[tokio::test]
async fn a_truncated_last_line_is_a_counted_reject() {
    // Two valid events, then a last line cut short, without a newline.
    let input = format!(
        "{}\n{}\n{}",
        valid("a"),
        valid("b"),
        r#"{"id":"c","tenant":"t","ts":17145"#
    );
    let (summary, ids) = run_ndjson(input.as_bytes()).await;
    assert_counted_rejects(&summary, &ids, &["EOF while parsing"], &["a", "b"]);
    assert_eq!(summary.rejects[0].position.to_string(), "line 3");
}

#[tokio::test]
async fn a_wrong_database_url_refuses_to_start_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing_dir = format!("sqlite://{}/no/such/dir/e.db", dir.path().display());
    let cases = [
        (
            "mysql://localhost/db",
            "bad database URL mysql://localhost/db",
        ),
        ("events.db", "bad database URL events.db"),
        (
            "postgres://u:secret@127.0.0.1:1/test",
            "cannot connect to postgres://u:***@127.0.0.1:1/test",
        ),
        (missing_dir.as_str(), "cannot create the SQLite file "),
    ];
    for (url, expected) in cases {
        let config = common::synthetic(url, "events", 10, 5, 1);
        let started = Instant::now();
        let error = event_batcher::run(config).await.unwrap_err();
        assert!(matches!(error, SetupError::Database(_)), "{url}: {error:?}");
        let message = error.to_string();
        assert!(message.starts_with(expected), "{url}: {message}");
        assert!(!message.contains("secret") && !message.contains('\n'));
        assert!(started.elapsed() < Duration::from_secs(10), "{url}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_table_name_that_is_sql_refuses_to_start_and_touches_nothing() {
    let db = TempSqlite::new();
    let first = event_batcher::run(common::synthetic(&db.url, "events", 10, 5, 1))
        .await
        .unwrap();
    assert!(first.is_success(), "{first}");
    for table in [
        "events; DROP TABLE events",
        "events --",
        "\"events\"",
        "e vents",
        "events)",
    ] {
        let error = event_batcher::run(common::synthetic(&db.url, table, 10, 5, 1))
            .await
            .unwrap_err();
        assert!(matches!(error, SetupError::Config(_)), "{table}: {error:?}");
        assert!(error.to_string().contains("invalid table name"), "{error}");
    }
    let read = Db::open(&db.url).await;
    assert_eq!(read.ids("events").await.len(), 10);
    read.close().await;
    assert!(Path::new(&db.dir.path().join("events.db")).exists());
}

/// A SQLite file in a directory that does not exist: the message names the file and the
/// missing directory (SQLite itself says only "unable to open database file (code 14)"),
/// the binary exits 2 and creates nothing.
#[test]
fn a_missing_sqlite_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no").join("such");
    let file = missing.join("events.db");
    let url = format!("sqlite://{}", file.display());
    let output = common::run_binary(dir.path(), &["--database", &url, "-q"], None);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(2), "{stdout}\n{stderr}");
    let expected = format!(
        "cannot create the SQLite file {}: its directory {} does not exist (create the \
         directory first, or choose another path)",
        file.display(),
        missing.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains("code 14"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A line that is not JSON: the message says it is not a JSON object and what an event
/// looks like (serde_json would say "expected ident (column 2)"), with its line number and
/// an excerpt of the line; the run goes on.
#[test]
fn a_line_that_is_not_json_says_what_an_event_is() {
    let db = TempSqlite::new();
    let mut input = around(b"hello world, this is not an event");
    input.extend_from_slice(b"[1, 2, 3]\n");
    std::fs::write(db.dir.path().join("in.ndjson"), input).unwrap();
    let args = ["--database", &db.url, "--input", "in.ndjson", "-q"];
    let output = common::run_binary(db.dir.path(), &args, None);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let object = r#"invalid event: not a JSON object (an event is one object per line: {"id":"…","tenant":"…","ts":<milliseconds>,"payload":<any JSON>})"#;
    for (line, excerpt) in [(2, "hello world, this is not an event"), (4, "[1, 2, 3]")] {
        let reported = format!("event-batcher: invalid line {line}: {object} (in {excerpt:?})");
        assert!(stderr.contains(&reported), "{reported}\nnot in:\n{stderr}");
    }
    assert!(!stderr.contains("expected ident"), "{stderr}");
    assert_eq!(
        summary_value(&stdout, "invalid lines").lines().next(),
        Some("2")
    );
}
