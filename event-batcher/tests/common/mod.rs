//! Helpers shared by the integration tests: configurations, the binary, and direct reads of
//! the database (with sqlx, independently of the crate's own store).

#![allow(dead_code)] // Each test file uses a different subset.

pub mod instance;
pub mod nats;
pub mod private_postgres;
pub mod scenarios;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::Duration;

use event_batcher::Config;
use event_batcher::pipeline::{Faults, OnFailure, RollbackSettings};
use event_batcher::report::ProgressMode;
use event_batcher::source::synthetic::event_id;
use event_batcher::source::{SourceSpec, SyntheticSpec};
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::{AssertSqlSafe, Row};

/// The environment variable that names the PostgreSQL server of the `#[ignore]`d tests.
pub const POSTGRES_ENV: &str = "EVENT_BATCHER_POSTGRES_URL";

/// The value of `name`, for a test that needs a server; the test fails (never skips) when it
/// is unset or empty: such tests are `#[ignore]`d, so they run only when asked for.
pub fn required_env(name: &str, example: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => panic!(
            "this test needs a server: set {name} (e.g. {example}); see event-batcher/README.md, Tests"
        ),
    }
}

/// A synthetic run of `events` events in batches of `max_batch` into `database`/`table`,
/// without progress output and with immediate compensation retries.
pub fn synthetic(database: &str, table: &str, events: u64, max_batch: usize, seed: u64) -> Config {
    Config {
        source: SourceSpec::Synthetic(SyntheticSpec {
            events,
            rate: 0.0,
            seed,
        }),
        database: database.to_owned(),
        table: table.to_owned(),
        max_batch,
        rollback: RollbackSettings {
            backoff: Duration::ZERO,
            ..RollbackSettings::default()
        },
        faults: Faults {
            seed,
            ..Faults::default()
        },
        progress: ProgressMode::None,
        ..Config::default()
    }
}

/// `config` with every `n`th batch failing and the given policy.
pub fn failing(mut config: Config, n: u64, policy: OnFailure) -> Config {
    config.faults.fail_every = Some(n);
    config.on_failure = policy;
    config
}

/// The ids of synthetic events `from..=to` for `seed`.
pub fn ids(seed: u64, from: u64, to: u64) -> BTreeSet<String> {
    (from..=to).map(|n| event_id(seed, n)).collect()
}

/// The ids of the synthetic events of the batches (1-based, `max_batch` events each) that
/// are not multiples of `fail_every`, out of `events` events.
pub fn ids_of_surviving_batches(
    seed: u64,
    events: u64,
    max_batch: u64,
    fail_every: u64,
) -> BTreeSet<String> {
    (1..=events)
        .filter(|n| !((n - 1) / max_batch + 1).is_multiple_of(fail_every))
        .map(|n| event_id(seed, n))
        .collect()
}

/// A temporary SQLite database; the directory is removed on drop.
pub struct TempSqlite {
    pub dir: tempfile::TempDir,
    pub url: String,
}

impl TempSqlite {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("events.db").display());
        Self { dir, url }
    }
}

/// Read access to a test database, independent of the crate's store.
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Db {
    pub async fn open(url: &str) -> Db {
        Db::try_open(url).await.expect("open the test database")
    }

    pub async fn try_open(url: &str) -> Result<Db, sqlx::Error> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?;
            Ok(Db::Sqlite(SqlitePool::connect_with(options).await?))
        } else {
            Ok(Db::Postgres(PgPool::connect(url).await?))
        }
    }

    /// Every id in `table`.
    pub async fn ids(&self, table: &str) -> BTreeSet<String> {
        let sql = format!("SELECT id FROM {table}");
        match self {
            Db::Sqlite(pool) => sqlx::query(AssertSqlSafe(sql))
                .fetch_all(pool)
                .await
                .expect("select ids")
                .into_iter()
                .map(|row| row.get::<String, _>(0))
                .collect(),
            Db::Postgres(pool) => sqlx::query(AssertSqlSafe(sql))
                .fetch_all(pool)
                .await
                .expect("select ids")
                .into_iter()
                .map(|row| row.get::<String, _>(0))
                .collect(),
        }
    }

    /// The stored payload of event `id`.
    pub async fn payload(&self, table: &str, id: &str) -> String {
        let sql = format!("SELECT payload FROM {table} WHERE id = ");
        match self {
            Db::Sqlite(pool) => sqlx::query_scalar(AssertSqlSafe(format!("{sql}?")))
                .bind(id)
                .fetch_one(pool)
                .await
                .expect("select payload"),
            Db::Postgres(pool) => sqlx::query_scalar(AssertSqlSafe(format!("{sql}$1")))
                .bind(id)
                .fetch_one(pool)
                .await
                .expect("select payload"),
        }
    }

    /// Rows of `table` that run `run_id` inserted.
    pub async fn rows_of_run(&self, table: &str, run_id: i64) -> u64 {
        let count: i64 = match self {
            Db::Sqlite(pool) => sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM {table} WHERE run_id = ?"
            )))
            .bind(run_id)
            .fetch_one(pool)
            .await
            .expect("count"),
            Db::Postgres(pool) => sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM {table} WHERE run_id = $1"
            )))
            .bind(run_id)
            .fetch_one(pool)
            .await
            .expect("count"),
        };
        u64::try_from(count).expect("a count is not negative")
    }

    /// The rows run `run_id` left in `table`, by batch number: how many, and their
    /// distinct tenants.
    pub async fn batches(
        &self,
        table: &str,
        run_id: i64,
    ) -> std::collections::BTreeMap<i64, (u64, BTreeSet<String>)> {
        let sql = format!("SELECT batch_seq, tenant FROM {table} WHERE run_id = ");
        let rows: Vec<(i64, String)> = match self {
            Db::Sqlite(pool) => sqlx::query_as(AssertSqlSafe(format!("{sql}?")))
                .bind(run_id)
                .fetch_all(pool)
                .await
                .expect("select batches"),
            Db::Postgres(pool) => sqlx::query_as(AssertSqlSafe(format!("{sql}$1")))
                .bind(run_id)
                .fetch_all(pool)
                .await
                .expect("select batches"),
        };
        let mut batches = std::collections::BTreeMap::<i64, (u64, BTreeSet<String>)>::new();
        for (seq, tenant) in rows {
            let batch = batches.entry(seq).or_default();
            batch.0 += 1;
            batch.1.insert(tenant);
        }
        batches
    }

    pub async fn execute(&self, sql: String) {
        match self {
            Db::Sqlite(pool) => sqlx::query(AssertSqlSafe(sql))
                .execute(pool)
                .await
                .map(drop),
            Db::Postgres(pool) => sqlx::query(AssertSqlSafe(sql))
                .execute(pool)
                .await
                .map(drop),
        }
        .expect("execute");
    }

    pub async fn close(self) {
        match self {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }
}

/// Longest run of one test (async test bodies, binary runs): generous, so that only a hang
/// trips it, never a slow CI machine.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `test` and fails if it takes longer than [`TEST_TIMEOUT`] (a hang would otherwise
/// block CI forever).
pub async fn within<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {TEST_TIMEOUT:?}"));
}

/// Runs the `event-batcher` binary with `args` in `dir`, stdin from `stdin`; killed (by PID)
/// and failed after [`TEST_TIMEOUT`].
pub fn run_binary(dir: &std::path::Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_event-batcher"));
    command.args(args).current_dir(dir);
    output_within(&mut command, stdin, TEST_TIMEOUT)
}

/// Runs `command` to its end, like `Command::output` but with `stdin` and a deadline: after
/// `timeout` the child is killed (by PID) and the test fails with what it printed so far.
pub fn output_within(command: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> Output {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the command");
    // Pipes are written and read by threads of their own: a child blocked on a full pipe
    // cannot block the deadline.
    let writer = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
    });
    let read = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout pipe")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr pipe")));
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr.join().unwrap_or_default();
            panic!(
                "{command:?} did not exit within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// stdout and stderr of `output`, as text, for assertions and failure messages.
pub fn texts(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The value of the summary line starting with `label` (e.g. `"events read"`).
pub fn summary_value<'a>(stdout: &'a str, label: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label:?} line in the summary:\n{stdout}"))
}

/// One valid NDJSON event line with id `id`.
pub fn event_line(id: &str) -> String {
    format!("{{\"id\":\"{id}\",\"tenant\":\"t\",\"ts\":1,\"payload\":{{\"n\":1}}}}\n")
}

/// The NDJSON input of one event line per id.
pub fn input_of(ids: &[&str]) -> String {
    ids.iter().map(|id| event_line(id)).collect()
}

/// Kills the child when dropped (a failed assertion leaves no process behind).
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Each line of `pipe`, sent on a channel by a thread of its own.
pub fn lines_of(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
