//! The same end-to-end scenarios against PostgreSQL.
//!
//! Every test here is `#[ignore]`d: `cargo test` on a machine without PostgreSQL reports
//! them as ignored, never as passed. Run them with `cargo test -p event-batcher -- --ignored`
//! and `EVENT_BATCHER_POSTGRES_URL` set (e.g. `postgres://postgres@127.0.0.1:5432/test`);
//! run that way, a test FAILS when the variable is unset or the server cannot be reached.
//!
//! Each test writes to a table of its own (`eb_<test>_<pid>_<random>`), dropped at the end
//! even when the test fails, so parallel tests and reruns never collide.

mod common;

use common::{Db, POSTGRES_ENV, run_binary, scenarios, summary_value, texts};

/// The server URL; fails the test when it is not set.
fn postgres_url() -> String {
    common::required_env(POSTGRES_ENV, "postgres://postgres@127.0.0.1:5432/test")
}

/// A table name unique to this test and process; dropped on drop.
struct TestTable {
    url: String,
    name: String,
}

impl TestTable {
    fn new(url: &str, test: &str) -> Self {
        let name = format!("eb_{test}_{}_{:08x}", std::process::id(), fastrand::u32(..));
        Self {
            url: url.to_owned(),
            name,
        }
    }
}

impl Drop for TestTable {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // When the test already failed (e.g. no server), a failed cleanup adds nothing.
        let test_failed = std::thread::panicking();
        // Drop runs inside the test's runtime: clean up from a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async {
                match Db::try_open(&url).await {
                    Ok(db) => {
                        db.execute(format!("DROP TABLE IF EXISTS {name}")).await;
                        db.close().await;
                    }
                    Err(error) if !test_failed => panic!("cannot drop {name}: {error}"),
                    Err(_) => {}
                }
            });
        });
        if cleanup.join().is_err() && !test_failed {
            panic!("could not drop test table {}", self.name);
        }
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
async fn postgres_clean_run() {
    common::within(async {
        let url = postgres_url();
        let table = TestTable::new(&url, "clean");
        scenarios::clean_run(&url, &table.name).await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
async fn postgres_fail_every_with_skip_batch_leaves_no_row_of_a_failed_batch() {
    common::within(async {
        let url = postgres_url();
        let table = TestTable::new(&url, "skip");
        scenarios::rollback_skip_batch(&url, &table.name).await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
async fn postgres_concurrent_skip_batch_summary_matches_the_database() {
    common::within(async {
        let url = postgres_url();
        let table = TestTable::new(&url, "concurrent");
        scenarios::concurrent_skip_batch(&url, &table.name).await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
async fn postgres_transient_failures_are_retried_and_every_event_is_stored() {
    common::within(async {
        let url = postgres_url();
        for concurrency in [1, 4] {
            let table = TestTable::new(&url, "retried");
            scenarios::transient_failures_are_retried(&url, &table.name, concurrency).await;
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
async fn postgres_fail_every_with_stop_rolls_back_and_stops() {
    common::within(async {
        let url = postgres_url();
        let table = TestTable::new(&url, "stop");
        scenarios::rollback_stop(&url, &table.name).await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
async fn postgres_rerun_is_idempotent_and_rollback_spares_earlier_rows() {
    common::within(async {
        let url = postgres_url();
        let table = TestTable::new(&url, "rerun");
        scenarios::rerun_idempotent(&url, &table.name).await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: set EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
async fn postgres_duplicate_id_inside_one_batch_is_stored_once() {
    common::within(async {
        let url = postgres_url();
        let table = TestTable::new(&url, "dup");
        scenarios::duplicate_id_in_one_batch(&url, &table.name).await;
    })
    .await;
}

#[test]
#[ignore = "needs PostgreSQL: set EVENT_BATCHER_POSTGRES_URL and run with --ignored"]
fn postgres_binary_rollback_run() {
    let url = postgres_url();
    let table = TestTable::new(&url, "binary");
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--database",
        &url,
        "--table",
        &table.name,
        "--events",
        "2000",
        "--max-batch",
        "250",
        "--fail-every",
        "3",
        "--on-failure",
        "skip-batch",
    ];
    let output = run_binary(dir.path(), &args, None);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        summary_value(&stdout, "database").starts_with("PostgreSQL "),
        "{stdout}"
    );
    assert_eq!(
        summary_value(&stdout, "batches rolled back"),
        "2 (500 events)"
    );
    assert_eq!(
        summary_value(&stdout, "events acknowledged"),
        "1500 (1500 new rows, 0 already present)"
    );
    assert!(
        summary_value(&stdout, "consistency check").starts_with("OK"),
        "{stdout}"
    );
    assert!(stderr.contains("batch 3: injected failure"), "{stderr}");
    assert!(stderr.contains("batch 6: injected failure"), "{stderr}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stored = runtime.block_on(async {
        let db = Db::open(&url).await;
        let ids = db.ids(&table.name).await;
        db.close().await;
        ids
    });
    assert_eq!(stored, common::ids_of_surviving_batches(42, 2000, 250, 3));
}
