//! The binary end to end against SQLite (a temporary file per test): exit codes, stdout and
//! stderr (one-line errors, the summary, progress lines), the dead-letter and rejects files,
//! invalid NDJSON lines, and output files never truncated by a run that cannot start, always
//! reading the database back directly.

mod common;

use common::{Db, run_binary, summary_value, texts};

#[test]
fn default_command_writes_events_db_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_binary(dir.path(), &[], None);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(dir.path().join("events.db").exists());
    assert_eq!(summary_value(&stdout, "events read"), "10000");
    assert_eq!(summary_value(&stdout, "invalid lines"), "0");
    assert_eq!(
        summary_value(&stdout, "events acknowledged"),
        "10000 (10000 new rows, 0 already present)"
    );
    assert_eq!(
        summary_value(&stdout, "batches written"),
        "20 (size 20, weight 0, deadline 0, end 0, eviction 0)"
    );
    assert_eq!(
        summary_value(&stdout, "batches rolled back"),
        "0 (0 events)"
    );
    assert!(summary_value(&stdout, "rows in database").starts_with("10000 in table events"));
    assert!(summary_value(&stdout, "consistency check").starts_with("OK"));
}

#[test]
fn stop_mode_exits_1_with_a_one_line_error_and_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--events", "300", "--max-batch", "100", "--fail-every", "2"];
    let output = run_binary(dir.path(), &args, None);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].starts_with(
            "event-batcher: error: run stopped: batch 2: injected failure after writing the first 50 of 100 events; rolled back cleanly"
        ),
        "{stderr}"
    );
    assert_eq!(
        summary_value(&stdout, "batches rolled back"),
        "1 (100 events)"
    );
    assert!(summary_value(&stdout, "rows in database").starts_with("100 in table events"));
    assert!(summary_value(&stdout, "consistency check").starts_with("OK"));
}

#[test]
fn skip_batch_mode_exits_0_and_writes_the_dead_letter_file() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--events",
        "1000",
        "--max-batch",
        "100",
        "--fail-every",
        "4",
        "--on-failure",
        "skip-batch",
        "--dead-letter",
        "dead.ndjson",
    ];
    let output = run_binary(dir.path(), &args, None);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        summary_value(&stdout, "batches rolled back"),
        "2 (200 events)"
    );
    // The dead letters are the events of batches 4 and 8, replayable as input.
    let dead = std::fs::read_to_string(dir.path().join("dead.ndjson")).unwrap();
    let dead_ids: Vec<String> = dead
        .lines()
        .map(|l| {
            serde_json::from_str::<event_batcher::event::Event>(l)
                .unwrap()
                .id
        })
        .collect();
    let expected: Vec<String> = common::ids(42, 301, 400)
        .into_iter()
        .chain(common::ids(42, 701, 800))
        .collect();
    assert_eq!(dead_ids, expected);
    let replay = run_binary(dir.path(), &["--input", "dead.ndjson"], None);
    let (stdout, stderr) = texts(&replay);
    assert_eq!(replay.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        summary_value(&stdout, "events acknowledged"),
        "200 (200 new rows, 0 already present)"
    );
    assert!(summary_value(&stdout, "rows in database").starts_with("1000 in table events"));
}

const NDJSON: &str = r#"{"id":"n1","tenant":"acme","ts":1714564800000,"payload":{"k":1}}
this is not json
{"id":"n2","tenant":"acme","ts":1714564800001,"payload":null}
{"id":"n3","tenant":"globex","ts":1714564800002,"payload":[1,2]}
{"id":"n4","tenant":"","ts":1,"payload":1}
{"id":"n5","tenant":"hooli","ts":3,"payload":"x"}

{"id":"n6","tenant":"hooli","ts":4,"payload":{},"extra":true}
{"id":"n7","tenant":"hooli","ts":5,"payload":{}}
"#;

#[test]
fn invalid_ndjson_lines_are_counted_reported_by_line_and_written_to_rejects() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.ndjson"), NDJSON).unwrap();
    let args = [
        "--input",
        "in.ndjson",
        "--rejects",
        "rejects.ndjson",
        "--max-batch",
        "2",
    ];
    let output = run_binary(dir.path(), &args, None);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(summary_value(&stdout, "events read"), "9");
    assert_eq!(summary_value(&stdout, "invalid lines"), "4");
    for (line, reason) in [
        (2, "invalid event"),
        (5, "field `tenant` is empty"),
        (7, "empty line"),
        (8, "invalid event: unknown field `extra`"),
    ] {
        let reported = format!("event-batcher: invalid line {line}: {reason}");
        assert!(stderr.contains(&reported), "{reported:?} not in:\n{stderr}");
        assert!(
            stdout.contains(&format!("    line {line}: {reason}")),
            "{stdout}"
        );
    }
    let rejects = std::fs::read_to_string(dir.path().join("rejects.ndjson")).unwrap();
    let lines: Vec<u64> = rejects
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["line"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(lines, [2, 5, 7, 8]);
    assert!(rejects.contains(r#""raw":"this is not json""#), "{rejects}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ids = runtime.block_on(async {
        let url = format!("sqlite://{}", dir.path().join("events.db").display());
        let db = Db::open(&url).await;
        let ids = db.ids("events").await;
        db.close().await;
        ids
    });
    let expected: std::collections::BTreeSet<String> =
        ["n1", "n2", "n3", "n5", "n7"].map(String::from).into();
    assert_eq!(ids, expected);
}

#[test]
fn strict_stops_at_the_first_invalid_line_read_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_binary(
        dir.path(),
        &["--input", "-", "--strict"],
        Some(NDJSON.as_bytes()),
    );
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("event-batcher: error: run stopped: invalid input at line 2:"),
        "{stderr}"
    );
    assert!(stderr.contains("(--strict)"), "{stderr}");
    // The batch formed before the invalid line (line 1) is written, nothing after it.
    assert_eq!(summary_value(&stdout, "events read"), "2");
    assert_eq!(
        summary_value(&stdout, "events acknowledged"),
        "1 (1 new rows, 0 already present)"
    );
    assert!(summary_value(&stdout, "batches written").contains("before an input error 1"));
    assert!(summary_value(&stdout, "rows in database").starts_with("1 in table events"));
}

#[test]
fn setup_errors_exit_2_with_one_line_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["--database", "mysql://localhost/db"],
            "bad database URL mysql://localhost/db",
        ),
        (
            // Port 1: nothing listens there.
            &["--database", "postgres://postgres:secret@127.0.0.1:1/test"],
            "cannot connect to postgres://postgres:***@127.0.0.1:1/test",
        ),
        (
            &["--database", "sqlite:///nonexistent-dir/x/events.db"],
            "cannot create the SQLite file /nonexistent-dir/x/events.db: its directory \
             /nonexistent-dir/x does not exist",
        ),
        (
            &["--input", "missing.ndjson"],
            "cannot read input missing.ndjson",
        ),
        (&["--table", "events; DROP TABLE x"], "invalid table name"),
    ];
    for (args, expected) in cases {
        let output = run_binary(dir.path(), args, None);
        let (stdout, stderr) = texts(&output);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {stdout}\n{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with(&format!("event-batcher: error: {expected}")),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("secret"), "{stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
    assert!(!dir.path().join("events.db").exists());
}

#[test]
fn plain_progress_lines_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--events", "600", "--rate", "200", "--flush-every", "200ms"];
    let output = run_binary(dir.path(), &args, None);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    // 600 events at 200/s take 3 s: at least one line every 2 s, no terminal escapes.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("progress: "))
        .collect();
    assert!(!lines.is_empty(), "{stderr}");
    assert!(lines[0].contains("events read"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
    // At 200 events/s a batch never fills up to 500: the deadline flushes them.
    let deadline: u64 = summary_value(&stdout, "batches written")
        .split("deadline ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .expect("a deadline count");
    // (How many depends on how long each write takes on a loaded machine: the source catches
    // up after a slow write and fills the next batch faster.)
    assert!(deadline >= 1, "{stdout}");
}

#[test]
fn output_files_are_never_truncated_by_a_run_that_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let keep = "{\"id\":\"k1\",\"tenant\":\"t\",\"ts\":1,\"payload\":1}\n";
    std::fs::write(dir.path().join("dead.ndjson"), keep).unwrap();
    std::fs::write(dir.path().join("rejects.ndjson"), keep).unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--input", "dead.ndjson", "--dead-letter", "dead.ndjson"],
            "--dead-letter dead.ndjson is the --input file",
        ),
        (
            &["--input", "./dead.ndjson", "--rejects", "dead.ndjson"],
            "--rejects dead.ndjson is the --input file",
        ),
        (
            // The input cannot be read: the outputs are not touched.
            &[
                "--input",
                "missing.ndjson",
                "--rejects",
                "rejects.ndjson",
                "--dead-letter",
                "dead.ndjson",
            ],
            "cannot read input missing.ndjson",
        ),
        (&["--rollback-timeout", "0s"], "--rollback-timeout must be"),
    ];
    for (args, expected) in cases {
        let output = run_binary(dir.path(), args, None);
        let (stdout, stderr) = texts(&output);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {stdout}\n{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        for file in ["dead.ndjson", "rejects.ndjson"] {
            let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
            assert_eq!(text, keep, "{args:?} changed {file}");
        }
    }
    assert!(!dir.path().join("events.db").exists());
}
