//! The NATS tests' setup: a stream, subject, consumer and table of the test's own, the
//! publisher, and direct reads of the table and of the consumer.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use event_batcher::source::nats::{self, NatsOptions};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Row};

use super::instance::Instance;
use super::{POSTGRES_ENV, ids};
/// The environment variable that selects the NATS tests.
pub const NATS_ENV: &str = "EVENT_BATCHER_NATS_URL";
pub const BIN: &str = env!("CARGO_BIN_EXE_event-batcher");
/// Longest wait for an instance to exit by itself.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(90);
/// Events published by the larger scenarios.
pub const EVENTS: u64 = 20_000;

/// Both server URLs; fails the test when one is not set.
pub fn services() -> (String, String) {
    (
        super::required_env(NATS_ENV, "nats://127.0.0.1:4222"),
        super::required_env(POSTGRES_ENV, "postgres://postgres@127.0.0.1:5432/test"),
    )
}

/// Taken by [`Setup::new`] for the whole test: the NATS tests run one at a time. Each starts
/// up to three instances with short ack waits and idle exits; on a loaded 2-core CI machine
/// several of them at once starve each other past those timings.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// A stream, subject, consumer and table unique to one test; the stream is deleted and the
/// table dropped on drop. Creating it fails the test when a server is unusable.
pub struct Setup {
    pub rt: tokio::runtime::Runtime,
    pub nats_url: String,
    pub pg_url: String,
    pub stream: String,
    pub subject: String,
    pub consumer: String,
    pub table: String,
    pub js: jetstream::Context,
    pub pg: PgPool,
    /// Held until the test's cleanup is done (see [`SERIAL`]).
    pub _serial: std::sync::MutexGuard<'static, ()>,
}

impl Setup {
    pub fn new(tag: &str) -> Setup {
        let (nats_url, pg_url) = services();
        // Poison-tolerant: a failed test must not fail the ones after it.
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        Setup::on(tag, nats_url, pg_url, serial)
    }

    /// A setup on the NATS server at `nats_url` (e.g. a [`PrivateNats`]).
    pub fn on(
        tag: &str,
        nats_url: String,
        pg_url: String,
        serial: std::sync::MutexGuard<'static, ()>,
    ) -> Setup {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test runtime");
        let unique = format!("{tag}_{}_{:08x}", std::process::id(), fastrand::u32(..));
        let stream = format!("EB_TEST_{unique}");
        let subject = format!("eb.test.{unique}");
        let options = NatsOptions::new(&nats_url, &stream, &subject, "unused");
        let js = rt.block_on(async {
            let client = nats::connect(&options)
                .await
                .unwrap_or_else(|e| panic!("{NATS_ENV}={nats_url} is set but: {e}"));
            let js = nats::jetstream_context(client, &options);
            // (async-nats' query_account() cannot decode nats-server 2.9's reply.)
            let info: serde_json::Value = js
                .request("INFO", &())
                .await
                .unwrap_or_else(|e| panic!("NATS at {nats_url}: JetStream API unreachable: {e}"));
            assert!(
                info.get("error").is_none(),
                "NATS at {nats_url} has no JetStream: {info}"
            );
            js
        });
        let pg = rt.block_on(async {
            PgPool::connect(&pg_url)
                .await
                .unwrap_or_else(|e| panic!("{POSTGRES_ENV}={pg_url} is set but: {e}"))
        });
        Setup {
            rt,
            nats_url,
            pg_url,
            stream,
            subject,
            consumer: format!("eb-{tag}"),
            table: format!("eb_nats_{unique}"),
            js,
            pg,
            _serial: serial,
        }
    }

    /// `--source … --stream … --subject … --consumer … --database … --table … -q`.
    pub fn run_args(&self) -> Vec<String> {
        [
            "--source",
            &self.nats_url,
            "--stream",
            &self.stream,
            "--subject",
            &self.subject,
            "--consumer",
            &self.consumer,
            "--database",
            &self.pg_url,
            "--table",
            &self.table,
            "-q",
        ]
        .map(String::from)
        .to_vec()
    }

    /// `event-batcher publish` of `events` synthetic events (seed `seed`) and `malformed`
    /// malformed messages.
    pub fn publish(&self, events: u64, seed: u64, malformed: u64) {
        self.publish_grouped(events, seed, malformed, 1);
    }

    /// [`publish`](Self::publish) with `per_message` events to a message (NDJSON above 1;
    /// the malformed ones are then lines inside the first messages).
    pub fn publish_grouped(&self, events: u64, seed: u64, malformed: u64, per_message: u64) {
        let mut command = Command::new(BIN);
        command
            .args([
                "publish",
                "--source",
                &self.nats_url,
                "--stream",
                &self.stream,
            ])
            .args(["--subject", &self.subject, "--events", &events.to_string()])
            .args(["--seed", &seed.to_string()])
            .args(["--malformed", &malformed.to_string()])
            .args(["--events-per-message", &per_message.to_string()]);
        let output = super::output_within(&mut command, None, super::TEST_TIMEOUT);
        let (stdout, stderr) = super::texts(&output);
        assert!(
            output.status.success(),
            "publish failed: {stdout}\n{stderr}"
        );
        let messages = if per_message == 1 {
            events + malformed
        } else {
            let grouped = events.div_ceil(per_message);
            grouped + malformed.saturating_sub(grouped)
        };
        let expected = format!("published {messages} new + 0 duplicate");
        assert!(stdout.contains(&expected), "{stdout}");
        eprintln!("{}", stdout.trim());
    }

    /// Starts one consuming instance with the common arguments and `extra`.
    pub fn instance(&self, name: &str, extra: &[&str]) -> Instance {
        let mut args = self.run_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        Instance::spawn(name, &args)
    }

    /// (rows, distinct ids) in the table.
    pub fn counts(&self) -> (u64, u64) {
        let sql = format!("SELECT COUNT(*), COUNT(DISTINCT id) FROM {}", self.table);
        let row = self.rt.block_on(async {
            sqlx::query(AssertSqlSafe(sql))
                .fetch_one(&self.pg)
                .await
                .expect("count rows")
        });
        let get = |i| u64::try_from(row.get::<i64, _>(i)).expect("a count");
        (get(0), get(1))
    }

    /// Rows in the table, 0 if it does not exist yet.
    pub fn rows_so_far(&self) -> u64 {
        let sql = format!("SELECT COUNT(*) FROM {}", self.table);
        self.rt.block_on(async {
            sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
                .fetch_one(&self.pg)
                .await
                .map_or(0, |n| u64::try_from(n).unwrap_or(0))
        })
    }

    pub fn stored_ids(&self) -> BTreeSet<String> {
        let sql = format!("SELECT id FROM {}", self.table);
        self.rt.block_on(async {
            sqlx::query_scalar::<_, String>(AssertSqlSafe(sql))
                .fetch_all(&self.pg)
                .await
                .expect("select ids")
                .into_iter()
                .collect()
        })
    }

    /// Rows matching the SQL condition `condition`.
    pub fn count_where(&self, condition: &str) -> u64 {
        let sql = format!("SELECT COUNT(*) FROM {} WHERE {condition}", self.table);
        self.rt.block_on(async {
            let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
                .fetch_one(&self.pg)
                .await
                .expect("count rows");
            u64::try_from(n).expect("a count")
        })
    }

    pub fn rows_of_run(&self, run_id: i64) -> u64 {
        let sql = format!("SELECT COUNT(*) FROM {} WHERE run_id = $1", self.table);
        self.rt.block_on(async {
            let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(run_id)
                .fetch_one(&self.pg)
                .await
                .expect("count rows of a run");
            u64::try_from(n).expect("a count")
        })
    }

    /// The durable consumer as the server has it.
    pub fn consumer_info(&self) -> jetstream::consumer::Info {
        self.rt.block_on(self.consumer_info_async())
    }

    pub async fn consumer_info_async(&self) -> jetstream::consumer::Info {
        let stream = self.js.get_stream(&self.stream).await.expect("the stream");
        stream
            .consumer_info(&self.consumer)
            .await
            .expect("the consumer")
    }

    /// Asserts the consumer has nothing left: no message pending or awaiting an ack. The
    /// server applies acks asynchronously (a queue per consumer, not ordered with the info
    /// request), so the last acks of an instance may land a moment after it exited: poll.
    pub fn assert_drained(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let info = self.consumer_info();
            if (info.num_pending, info.num_ack_pending) == (0, 0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "messages left in the consumer: {info:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asserts the table holds exactly the synthetic events 1..=n of `seed`, once each.
    pub fn assert_exact(&self, seed: u64, n: u64) {
        let (rows, distinct) = self.counts();
        assert_eq!((rows, distinct), (n, n), "count(*), count(distinct id)");
        let stored = self.stored_ids();
        let expected = ids(seed, 1, n);
        let missing: Vec<_> = expected.difference(&stored).take(5).collect();
        let unexpected: Vec<_> = stored.difference(&expected).take(5).collect();
        assert!(
            missing.is_empty() && unexpected.is_empty(),
            "missing {missing:?}, unexpected {unexpected:?}"
        );
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let cleanup = self.rt.block_on(async {
            let stream = self.js.delete_stream(&self.stream).await.map(drop);
            let table = sqlx::query(AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS {}",
                self.table
            )))
            .execute(&self.pg)
            .await
            .map(drop);
            self.pg.close().await;
            (stream, table)
        });
        if !std::thread::panicking() {
            // The stream exists once publish ran (every test publishes).
            cleanup.0.expect("delete the test stream");
            cleanup.1.expect("drop the test table");
        }
    }
}
