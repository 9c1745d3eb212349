//! The database dies mid-run: a PostgreSQL server of the test's own is SIGKILLed while a
//! run writes to it, and restarted. (The NATS variant, where the instance keeps going, is
//! `tests/nats.rs::nats_database_killed_mid_run_the_instance_keeps_going`.)
//!
//! `#[ignore]`d: it needs the PostgreSQL server binaries (see
//! [`common::private_postgres`]); run with `cargo test -p event-batcher -- --ignored`.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::private_postgres::PrivatePostgres;
use common::{Db, ids, summary_value, texts};

/// Rows in `table` of the database at `url`, 0 when it cannot be read (yet).
fn rows(runtime: &tokio::runtime::Runtime, url: &str, table: &str) -> u64 {
    runtime.block_on(async {
        match Db::try_open(url).await {
            Ok(db) => {
                let sql = format!("SELECT COUNT(*) FROM {table}");
                let count = match &db {
                    Db::Postgres(pool) => sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                        .fetch_one(pool)
                        .await
                        .unwrap_or(0),
                    Db::Sqlite(_) => unreachable!("a PostgreSQL URL"),
                };
                db.close().await;
                u64::try_from(count).unwrap_or(0)
            }
            Err(_) => 0,
        }
    })
}

/// A synthetic run is stopped by the outage: it waits for the database to come back, rolls
/// the batch in flight back, and exits 1 with one error line naming the database error; the
/// table holds exactly the acknowledged events, and the same command again completes.
#[test]
#[ignore = "needs the PostgreSQL server binaries (initdb, postgres): run with --ignored"]
fn postgres_killed_mid_run_stops_a_synthetic_run_cleanly_and_a_rerun_completes() {
    let mut server = PrivatePostgres::start();
    let url = server.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let table = "outage";
    let events = 20_000u64;
    let args = [
        "--database",
        url.as_str(),
        "--table",
        table,
        "--events",
        "20000",
        "--max-batch",
        "200",
        // An outage shorter than this is absorbed by the connection pool (a statement waits
        // for a connection): the outage below is longer.
        "--connect-timeout",
        "1s",
        "-q",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_event-batcher"))
        .args(args)
        .args(["--rate", "4000"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));

    let deadline = Instant::now() + Duration::from_secs(60);
    while rows(&runtime, &url, table) < 2_000 {
        assert!(Instant::now() < deadline, "no rows written");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.kill();
    std::thread::sleep(Duration::from_secs(3));
    server.run();

    let deadline = Instant::now() + common::TEST_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run did not end");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("event-batcher: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].starts_with("event-batcher: error: run stopped: batch ")
            && errors[0].contains(": database write failed: ")
            && errors[0].contains("rolled back cleanly"),
        "{stderr}"
    );
    let acknowledged: u64 = summary_value(&stdout, "events acknowledged")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(acknowledged >= 2_000 && acknowledged < events, "{stdout}");
    assert!(
        summary_value(&stdout, "consistency check").starts_with("OK"),
        "{stdout}"
    );
    assert_eq!(
        rows(&runtime, &url, table),
        acknowledged,
        "rows == acknowledged"
    );

    // The same command again (at full speed) writes the rest and skips what is there.
    let output = common::run_binary(dir.path(), &args, None);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        summary_value(&stdout, "events acknowledged"),
        format!(
            "{events} ({} new rows, {acknowledged} already present)",
            events - acknowledged
        )
    );
    let stored = runtime.block_on(async {
        let db = Db::open(&url).await;
        let stored = db.ids(table).await;
        db.close().await;
        stored
    });
    assert_eq!(stored, ids(42, 1, events));
}

/// With `--write-retries`, a synthetic run rides through the outage: the batch whose write
/// failed waits for the database, is rolled back, backed off and written again, and the
/// run finishes (exit 0) with every event stored once, at `--concurrency 2`.
#[test]
#[ignore = "needs the PostgreSQL server binaries (initdb, postgres): run with --ignored"]
fn postgres_killed_mid_run_a_synthetic_run_with_write_retries_rides_through() {
    let mut server = PrivatePostgres::start();
    let url = server.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let table = "outage_retried";
    let events = 20_000u64;
    let mut child = Command::new(env!("CARGO_BIN_EXE_event-batcher"))
        .args([
            "--database",
            url.as_str(),
            "--table",
            table,
            "--events",
            "20000",
            "--max-batch",
            "200",
            "--connect-timeout",
            "1s",
            "--concurrency",
            "2",
            "--write-retries",
            "3",
            "--write-backoff",
            "200ms",
            "--rate",
            "4000",
            "-q",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));

    let deadline = Instant::now() + Duration::from_secs(60);
    while rows(&runtime, &url, table) < 2_000 {
        assert!(Instant::now() < deadline, "no rows written");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.kill();
    std::thread::sleep(Duration::from_secs(3));
    server.run();

    let deadline = Instant::now() + common::TEST_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the run did not end");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("the database is unavailable"),
        "the outage was seen: {stderr}"
    );
    let retries: u64 = summary_value(&stdout, "write retries")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retries >= 1, "{stdout}");
    assert_eq!(
        summary_value(&stdout, "events acknowledged"),
        format!("{events} ({events} new rows, 0 already present)"),
        "{stdout}"
    );
    assert!(
        summary_value(&stdout, "consistency check").starts_with("OK"),
        "{stdout}"
    );
    let stored = runtime.block_on(async {
        let db = Db::open(&url).await;
        let stored = db.ids(table).await;
        db.close().await;
        stored
    });
    assert_eq!(stored, ids(42, 1, events));
}
