//! The sample outputs shown in `README.md` and `event-batcher/README.md`, produced again by
//! the binary and compared, so that no sample can go stale.
//!
//! # The marker convention
//!
//! In both READMEs every fenced block whose info string is `text` is a sample of what the
//! binary prints, and the line right before its opening fence names it:
//!
//! ````text
//! <!-- sample: sqlite-default -->
//! ```text
//! event-batcher summary
//! …
//! ```
//! ````
//!
//! Other literal blocks (diagrams, layouts) use a bare fence or another info string. [`SAMPLES`]
//! gives each name the commands that produce it, exactly as the README shows them (each must
//! appear in the README that shows the sample), the stream shown, the exit code and the
//! server it needs. Several blocks may show the same sample. A sample that another test
//! produces says so, and that test file must read the README:
//! `<!-- sample: metrics-scrape, checked by tests/metrics.rs -->`.
//!
//! # How a block is compared with the real output
//!
//! - Lines are compared exactly: labels, words and numbers, but for the values that vary
//!   from run to run. On the lines labelled `run id`, `elapsed` and `batch age` every number is
//!   masked; a NATS sample masks every number (how events split into batches and
//!   redeliveries depends on timing) and its stream, consumer and table names.
//! - A line that is only `…` stands for any number of omitted lines. A block without one is
//!   the whole output. With them, each run of lines between them appears in the output
//!   contiguously and in order; the first starts the output unless the block starts with
//!   `…`, the last ends it unless the block ends with `…`.
//! - On stderr, the plain progress lines (`progress: …`) are left out: they depend on timing.
//!
//! The samples that need PostgreSQL and NATS run in `#[ignore = "needs …"]` tests, with the
//! servers named by `EVENT_BATCHER_POSTGRES_URL` and `EVENT_BATCHER_NATS_URL`, on a stream,
//! consumer and table of their own (deleted afterwards), named back as in the README before
//! the comparison.
//!
//! Also checked here: event-batcher/README.md names every option `--help` lists and no other,
//! and README.md, event-batcher/README.md and BENCHMARKS.md stay within their size budgets.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// Where the binary's output of a sample is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// A server a sample needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Nothing,
    NatsAndPostgres,
}

/// One sample: the commands that produce it, as the README shows them (the output of the last
/// one is the sample).
#[derive(Debug)]
struct Sample {
    name: &'static str,
    commands: &'static [&'static str],
    stream: Stream,
    exit_code: i32,
    needs: Needs,
}

/// The command prefix a README gives for the binary; what follows ` -- ` are its arguments.
const CARGO_RUN: &str = "cargo run --release -p event-batcher";

/// Names the README's NATS sample uses for its stream, subject, consumer and table.
const NATS_NAMES: [&str; 4] = ["DEMO", "demo.events", "demo", "demo"];
const README_NATS_URL: &str = "nats://127.0.0.1:4222";
const README_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

const SAMPLES: &[Sample] = &[
    Sample {
        name: "sqlite-default",
        commands: &[CARGO_RUN],
        stream: Stream::Stdout,
        exit_code: 0,
        needs: Needs::Nothing,
    },
    Sample {
        name: "sqlite-failures",
        commands: &[
            "cargo run --release -p event-batcher -- --database sqlite://demo-failures.db --fail-every 4 --on-failure skip-batch",
        ],
        stream: Stream::Stdout,
        exit_code: 0,
        needs: Needs::Nothing,
    },
    Sample {
        name: "sqlite-stop",
        commands: &[
            "cargo run --release -p event-batcher -- --database sqlite://demo-stop.db --fail-every 4",
        ],
        stream: Stream::Stderr,
        exit_code: 1,
        needs: Needs::Nothing,
    },
    Sample {
        name: "nats-one-instance",
        commands: &[
            "cargo run --release -p event-batcher -- publish --stream DEMO --subject demo.events --events 5000",
            "cargo run --release -p event-batcher -- --source nats://127.0.0.1:4222 --stream DEMO --subject demo.events --consumer demo --database postgres://postgres@127.0.0.1:5432/test --table demo --fail-every 4 --on-failure skip-batch --idle-exit 2s -q",
        ],
        stream: Stream::Stdout,
        exit_code: 0,
        needs: Needs::NatsAndPostgres,
    },
];

/// The READMEs that show samples, relative to the workspace root.
const READMES: [&str; 2] = ["README.md", "event-batcher/README.md"];

/// Size budgets of the documents, in bytes: a reader gets the whole picture in one sitting.
const BUDGETS: [(&str, usize); 3] = [
    ("README.md", 10 * 1024),
    ("event-batcher/README.md", 16 * 1024),
    ("BENCHMARKS.md", 12 * 1024),
];

/// Options of cargo itself, which the manual's commands use.
const CARGO_OPTIONS: [&str; 4] = ["--release", "--ignored", "--workspace", "--features"];

/// Labels of the summary lines whose numbers change from run to run.
const VOLATILE_LABELS: [&str; 3] = ["run id", "elapsed", "batch age"];

/// A sample block found in a README.
#[derive(Debug)]
struct Block {
    readme: &'static str,
    /// 1-based line of the opening fence.
    line: usize,
    name: String,
    /// The test file that checks it, when not this one (`checked by tests/FILE.rs`).
    checked_by: Option<String>,
    lines: Vec<String>,
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("event-batcher is a member of the workspace")
}

fn read(readme: &str) -> String {
    std::fs::read_to_string(workspace_root().join(readme))
        .unwrap_or_else(|e| panic!("cannot read {readme}: {e}"))
}

/// Every `text` block of `readme`, with the sample name of its marker; a block without a
/// marker fails the test.
fn blocks(readme: &'static str) -> Vec<Block> {
    let text = read(readme);
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let fence = lines[index].trim_end();
        if !fence.starts_with("```") {
            index += 1;
            continue;
        }
        let info = fence.trim_start_matches('`').trim();
        let end = (index + 1..lines.len())
            .find(|&i| lines[i].trim_end() == "```")
            .unwrap_or_else(|| panic!("{readme}:{}: the block is never closed", index + 1));
        if info == "text" {
            let marker = index
                .checked_sub(1)
                .map(|i| lines[i].trim())
                .and_then(|m| m.strip_prefix("<!-- sample:"))
                .and_then(|m| m.strip_suffix("-->"))
                .unwrap_or_else(|| {
                    panic!(
                        "{readme}:{}: a `text` block is a sample output and needs a marker line \
                         `<!-- sample: NAME -->` right before it (use a bare fence for other blocks)",
                        index + 1
                    )
                });
            found.push(Block {
                readme,
                line: index + 1,
                name: marker
                    .split(',')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
                checked_by: marker
                    .split_once(", checked by ")
                    .map(|(_, file)| file.trim().to_owned()),
                lines: lines[index + 1..end]
                    .iter()
                    .map(|l| l.to_string())
                    .collect(),
            });
        }
        index = end + 1;
    }
    found
}

fn all_blocks() -> Vec<Block> {
    READMES.into_iter().flat_map(blocks).collect()
}

fn sample(name: &str) -> &'static Sample {
    SAMPLES
        .iter()
        .find(|sample| sample.name == name)
        .unwrap_or_else(|| panic!("no sample named {name:?} in SAMPLES"))
}

/// The arguments of a README command line: what follows ` -- `, split at spaces.
fn arguments(command: &str) -> Vec<String> {
    let rest = command
        .strip_prefix(CARGO_RUN)
        .unwrap_or_else(|| panic!("a sample command starts with `{CARGO_RUN}`: {command}"));
    match rest.trim().strip_prefix("--") {
        Some(args) => args.split_whitespace().map(str::to_owned).collect(),
        None if rest.trim().is_empty() => Vec::new(),
        None => panic!("arguments follow ` -- `: {command}"),
    }
}

/// `line` with every run of digits (and the decimal point inside one) replaced by `#`.
fn mask_numbers(line: &str) -> String {
    let mut masked = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars
                .peek()
                .is_some_and(|&next| next.is_ascii_digit() || next == '.')
            {
                chars.next();
            }
            masked.push('#');
        } else {
            masked.push(c);
        }
    }
    masked
}

/// `line` with the values that vary from run to run masked.
fn normalize(line: &str, needs: Needs) -> String {
    let line = line.trim_end();
    let volatile = VOLATILE_LABELS
        .iter()
        .any(|label| line.trim_start().starts_with(label));
    if volatile || needs == Needs::NatsAndPostgres {
        mask_numbers(line)
    } else {
        line.to_owned()
    }
}

/// Where `shown` (a block, `…` lines included) fails to match `actual`, if it does.
fn mismatch(shown: &[String], actual: &[String]) -> Option<String> {
    let segments: Vec<&[String]> = shown.split(|line| line.trim() == "…").collect();
    let open_start = shown.first().is_some_and(|l| l.trim() == "…");
    let open_end = shown.last().is_some_and(|l| l.trim() == "…");
    let mut from = 0;
    for (index, segment) in segments.iter().enumerate() {
        if segment.is_empty() {
            continue;
        }
        let anchored_start = index == 0 && !open_start;
        let anchored_end = index == segments.len() - 1 && !open_end;
        let fits = |at: usize| {
            actual.len() >= at + segment.len()
                && actual[at..at + segment.len()] == **segment
                && (!anchored_end || at + segment.len() == actual.len())
        };
        let at = if anchored_start {
            Some(from).filter(|&at| fits(at))
        } else {
            (from..actual.len()).find(|&at| fits(at))
        };
        match at {
            Some(at) => from = at + segment.len(),
            None => {
                return Some(format!(
                    "these lines do not appear{}:\n{}",
                    if anchored_start && anchored_end {
                        " as the whole output"
                    } else {
                        " in this order"
                    },
                    segment.join("\n")
                ));
            }
        }
    }
    None
}

/// Compares every block showing `sample` with `output`.
fn compare(sample: &Sample, output: &Output, rename: &[(String, &str)]) {
    let text = String::from_utf8_lossy(match sample.stream {
        Stream::Stdout => &output.stdout,
        Stream::Stderr => &output.stderr,
    })
    .into_owned();
    let (stdout, stderr) = common::texts(output);
    assert_eq!(
        output.status.code(),
        Some(sample.exit_code),
        "sample {}: exit status\nstdout:\n{stdout}\nstderr:\n{stderr}",
        sample.name
    );
    let text = rename
        .iter()
        .fold(text, |text, (actual, shown)| text.replace(actual, shown));
    let actual: Vec<String> = text
        .lines()
        .filter(|line| sample.stream == Stream::Stdout || !line.contains("progress: "))
        .map(|line| normalize(line, sample.needs))
        .collect();
    let shown: Vec<Block> = all_blocks()
        .into_iter()
        .filter(|block| block.name == sample.name && block.checked_by.is_none())
        .collect();
    assert!(!shown.is_empty(), "no README shows sample {}", sample.name);
    for block in shown {
        let readme = read(block.readme);
        for command in sample.commands {
            assert!(
                readme.contains(command),
                "{} shows sample {} but not its command `{command}`",
                block.readme,
                sample.name
            );
        }
        let lines: Vec<String> = block
            .lines
            .iter()
            .map(|line| normalize(line, sample.needs))
            .collect();
        if let Some(problem) = mismatch(&lines, &actual) {
            panic!(
                "{}:{}: sample {} is stale: {problem}\n\nthe real output (masked):\n{}",
                block.readme,
                block.line,
                sample.name,
                actual.join("\n")
            );
        }
    }
}

/// Runs `args` in `dir`; killed and failed after two minutes.
fn run(dir: &Path, args: &[String]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_event-batcher"));
    command.args(args).current_dir(dir);
    common::output_within(&mut command, None, Duration::from_secs(120))
}

/// Runs a sample that needs no server, in an empty directory, and compares.
fn check_local(name: &str) {
    let sample = sample(name);
    assert_eq!(sample.needs, Needs::Nothing);
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut output = None;
    for command in sample.commands {
        output = Some(run(dir.path(), &arguments(command)));
    }
    compare(sample, &output.expect("a sample has a command"), &[]);
}

#[test]
fn every_text_block_is_a_known_sample_and_every_sample_is_shown() {
    let blocks = all_blocks();
    for block in &blocks {
        match &block.checked_by {
            None => drop(sample(&block.name)),
            Some(file) => {
                let where_ = format!("{}:{}", block.readme, block.line);
                let test = read(&format!("event-batcher/{file}"));
                let name = &block.name;
                assert!(
                    test.contains("README.md"),
                    "{where_}: sample {name} is checked by {file}, which does not read README.md"
                );
            }
        }
    }
    for sample in SAMPLES {
        assert!(
            blocks.iter().any(|block| block.name == sample.name),
            "sample {} is in SAMPLES but no README shows it",
            sample.name
        );
    }
}

#[test]
fn documents_stay_within_their_size_budget() {
    for (document, budget) in BUDGETS {
        let size = read(document).len();
        assert!(
            size <= budget,
            "{document} is {size} bytes, over its budget of {budget}: move detail to rustdoc \
             or the other README, or drop history (git keeps it)"
        );
    }
}

/// Every `--option` the binary accepts is described in event-batcher/README.md, and every
/// option the README names exists.
#[test]
fn the_manual_names_every_option_and_only_real_ones() {
    let options = |text: &str| -> std::collections::BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|word| word.starts_with("--") && word.len() > 3)
            .filter(|word| word.as_bytes()[2].is_ascii_lowercase())
            .map(str::to_owned)
            .collect()
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut accepted = std::collections::BTreeSet::new();
    for args in [&["--help"][..], &["publish", "--help"]] {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let output = run(dir.path(), &args);
        assert!(output.status.success(), "{args:?} fails");
        accepted.extend(options(&String::from_utf8_lossy(&output.stdout)));
    }
    let mut manual = options(&read("event-batcher/README.md"));
    for cargo_option in CARGO_OPTIONS {
        manual.remove(cargo_option);
    }
    let undocumented: Vec<_> = accepted.difference(&manual).collect();
    let unknown: Vec<_> = manual.difference(&accepted).collect();
    assert!(
        undocumented.is_empty(),
        "event-batcher/README.md does not describe {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "event-batcher/README.md names options the binary does not have: {unknown:?}"
    );
}

#[test]
fn sample_sqlite_default() {
    check_local("sqlite-default");
}

#[test]
fn sample_sqlite_failures() {
    check_local("sqlite-failures");
}

#[test]
fn sample_sqlite_stop() {
    check_local("sqlite-stop");
}

#[test]
#[ignore = "needs NATS JetStream and PostgreSQL: set EVENT_BATCHER_NATS_URL and EVENT_BATCHER_POSTGRES_URL"]
fn sample_nats_one_instance() {
    let sample = sample("nats-one-instance");
    let nats_url = common::required_env("EVENT_BATCHER_NATS_URL", README_NATS_URL);
    let pg_url = common::required_env(common::POSTGRES_ENV, README_POSTGRES_URL);
    let unique = format!("{}_{:08x}", std::process::id(), fastrand::u32(..));
    let names = [
        format!("EB_README_{unique}"),
        format!("eb.readme.{unique}"),
        format!("eb-readme-{unique}"),
        format!("eb_readme_{unique}"),
    ];
    let _cleanup = NatsCleanup {
        nats_url: nats_url.clone(),
        pg_url: pg_url.clone(),
        stream: names[0].clone(),
        table: names[3].clone(),
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut output = None;
    for command in sample.commands {
        let mut args = arguments(command);
        // Each name follows its option: `--table demo` and `--consumer demo` differ.
        for index in 1..args.len() {
            let (option, value) = (args[index - 1].as_str(), args[index].as_str());
            args[index] = match (option, value) {
                ("--stream", v) if v == NATS_NAMES[0] => names[0].clone(),
                ("--subject", v) if v == NATS_NAMES[1] => names[1].clone(),
                ("--consumer", v) if v == NATS_NAMES[2] => names[2].clone(),
                ("--table", v) if v == NATS_NAMES[3] => names[3].clone(),
                ("--source", README_NATS_URL) => nats_url.clone(),
                ("--database", README_POSTGRES_URL) => pg_url.clone(),
                _ => args[index].clone(),
            };
        }
        if args.first().is_some_and(|a| a == "publish") && !args.contains(&"--source".into()) {
            args.extend(["--source".to_owned(), nats_url.clone()]);
        }
        output = Some(run(dir.path(), &args));
    }
    let mut rename = vec![
        (pg_url.clone(), README_POSTGRES_URL),
        (nats_url.clone(), README_NATS_URL),
    ];
    rename.extend(names.iter().cloned().zip(NATS_NAMES));
    compare(sample, &output.expect("a sample has commands"), &rename);
}

/// Deletes the NATS sample's stream (and its consumer) and drops its table, also when the
/// test fails.
struct NatsCleanup {
    nats_url: String,
    pg_url: String,
    stream: String,
    table: String,
}

impl Drop for NatsCleanup {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            if let Ok(client) = async_nats::connect(self.nats_url.as_str()).await {
                let _ = async_nats::jetstream::new(client)
                    .delete_stream(&self.stream)
                    .await;
            }
            if let Ok(pool) = sqlx::postgres::PgPool::connect(&self.pg_url).await {
                let drop = format!("DROP TABLE IF EXISTS {}", self.table);
                let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&pool).await;
                pool.close().await;
            }
        });
    }
}

#[test]
fn the_comparison_catches_a_stale_sample() {
    let lines = |text: &str| -> Vec<String> { text.lines().map(str::to_owned).collect() };
    let actual = lines("a\nb\nc\nd");
    assert_eq!(mismatch(&lines("a\nb\nc\nd"), &actual), None);
    assert!(
        mismatch(&lines("a\nb\nc"), &actual).is_some(),
        "a line missing"
    );
    assert!(
        mismatch(&lines("a\nb\nx\nd"), &actual).is_some(),
        "a line changed"
    );
    assert_eq!(mismatch(&lines("a\n…\nd"), &actual), None);
    assert_eq!(mismatch(&lines("…\nb\nc\n…"), &actual), None);
    assert!(
        mismatch(&lines("…\nc\nb\n…"), &actual).is_some(),
        "reordered"
    );
    assert!(
        mismatch(&lines("b\n…"), &actual).is_some(),
        "not at the start"
    );
    assert!(
        mismatch(&lines("…\nc"), &actual).is_some(),
        "not at the end"
    );
    assert_eq!(
        normalize(
            "  elapsed              0.20 s (49659 events/s read)",
            Needs::Nothing
        ),
        "  elapsed              # s (# events/s read)"
    );
    assert_eq!(
        normalize("  events read          10000", Needs::Nothing),
        "  events read          10000"
    );
    assert_eq!(arguments(CARGO_RUN), Vec::<String>::new());
    assert_eq!(
        arguments("cargo run --release -p event-batcher -- -q"),
        ["-q"]
    );
}
