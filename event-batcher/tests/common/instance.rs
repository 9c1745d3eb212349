//! Processes of the NATS tests: an instance of the binary (its output, signals, its
//! summary), and a nats-server of the test's own.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::nats::BIN;
use super::summary_value;
/// A running instance; killed (SIGKILL, by PID) on drop if still running.
pub struct Instance {
    pub name: String,
    pub child: Option<Child>,
    pub stdout: Option<JoinHandle<String>>,
    pub stderr: Arc<Mutex<String>>,
    pub stderr_reader: Option<JoinHandle<()>>,
}

/// How an instance ended.
pub struct Exited {
    pub name: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Instance {
    pub fn spawn(name: &str, args: &[String]) -> Instance {
        let mut child = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn event-batcher");
        let mut stdout = child.stdout.take().expect("stdout");
        let stderr_pipe = child.stderr.take().expect("stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let collected = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines() {
                let Ok(line) = line else { break };
                let mut all = collected.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        Instance {
            name: name.to_owned(),
            child: Some(child),
            stdout: Some(stdout),
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn stderr_contains(&self, needle: &str) -> bool {
        self.stderr.lock().unwrap().contains(needle)
    }

    pub fn has_exited(&mut self) -> bool {
        let child = self.child.as_mut().expect("running");
        child.try_wait().expect("try_wait").is_some()
    }

    /// Sends `signal` (e.g. `TERM`) to this instance, by PID.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let child = self.child.as_mut().expect("running");
        child.kill().expect("SIGKILL");
    }

    /// Waits (at most `timeout`, then kills it and fails) for the instance to exit.
    pub fn wait(mut self, timeout: Duration) -> Exited {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not exit within {timeout:?}; stderr:\n{}",
                    self.name,
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        let stdout = self.stdout.take().unwrap().join().unwrap_or_default();
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        let stderr = self.stderr.lock().unwrap().clone();
        Exited {
            name: self.name.clone(),
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Exited {
    /// Asserts exit code 0 and a consistency check that holds (database and broker).
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.status.code(), Some(0), "{}", self.describe());
        let check = summary_value(&self.stdout, "consistency check");
        assert!(
            check.starts_with("OK") && check.contains("NATS verdicts OK"),
            "{}",
            self.describe()
        );
        self
    }

    pub fn describe(&self) -> String {
        format!(
            "--- {} ({}) stdout:\n{}\n--- stderr:\n{}",
            self.name, self.status, self.stdout, self.stderr
        )
    }

    pub fn value(&self, label: &str) -> &str {
        summary_value(&self.stdout, label)
    }

    /// The first number of the summary line `label`.
    pub fn number(&self, label: &str) -> u64 {
        leading_number(self.value(label))
    }

    /// A count on the `NATS messages` line, e.g. `nats("acked")`.
    pub fn nats(&self, what: &str) -> u64 {
        let line = self.value("NATS messages");
        let at = line
            .find(&format!(" {what}"))
            .unwrap_or_else(|| panic!("no {what:?} in {line:?}"));
        let before = line[..at].trim_end();
        let start = before
            .rfind(|c: char| !c.is_ascii_digit())
            .map_or(0, |i| i + 1);
        before[start..].parse().expect("a count")
    }

    /// The events of the rolled-back batches: `batches rolled back  N (M events…)`.
    pub fn events_rolled_back(&self) -> u64 {
        let value = self.value("batches rolled back");
        let (_, inside) = value.split_once('(').expect("(M events)");
        leading_number(inside)
    }

    pub fn run_id(&self) -> i64 {
        self.value("run id").parse().expect("a run id")
    }

    /// `(new rows, already present)` of `events acknowledged`.
    pub fn inserted_and_present(&self) -> (u64, u64) {
        let value = self.value("events acknowledged");
        let inside = value
            .split_once('(')
            .map(|(_, rest)| rest)
            .expect("(… new rows, … already present)");
        let mut numbers = inside
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u64>().unwrap());
        (numbers.next().unwrap(), numbers.next().unwrap())
    }
}

/// A nats-server with JetStream of the test's own (a free port, a temporary store), so that
/// it can be killed and restarted without disturbing anything else. Killed on drop.
pub struct PrivateNats {
    pub binary: String,
    pub port: u16,
    pub store: tempfile::TempDir,
    pub child: Option<Child>,
}

impl PrivateNats {
    /// `$EVENT_BATCHER_NATS_SERVER`, else `nats-server` on the `PATH`, else
    /// `/usr/sbin/nats-server` (Debian's package); fails the test if none runs.
    pub fn start() -> PrivateNats {
        let binary = std::env::var("EVENT_BATCHER_NATS_SERVER")
            .ok()
            .filter(|b| !b.trim().is_empty())
            .or_else(|| {
                ["nats-server", "/usr/sbin/nats-server"]
                    .into_iter()
                    .find(|b| {
                        Command::new(b)
                            .arg("--version")
                            .output()
                            .is_ok_and(|o| o.status.success())
                    })
                    .map(String::from)
            })
            .unwrap_or_else(|| {
                panic!(
                    "the broker-restart test needs a nats-server binary of its own: put \
                     nats-server on the PATH or set EVENT_BATCHER_NATS_SERVER"
                )
            });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut server = PrivateNats {
            binary,
            port,
            store: tempfile::tempdir().expect("a store directory"),
            child: None,
        };
        server.run();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server on the same port and store, and waits until it accepts connections.
    pub fn run(&mut self) {
        let child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary));
        self.child = Some(child);
        wait_until(Duration::from_secs(20), "the private nats-server", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    /// SIGKILL: a crash, nothing flushed or shut down cleanly.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL the nats-server");
        child.wait().expect("reap the nats-server");
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn leading_number(text: &str) -> u64 {
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number in {text:?}"))
}

/// Waits until `ready` holds, failing after `timeout` with `what`.
pub fn wait_until(timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` is stopped (state `T` in `/proc/PID/stat`).
pub fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, after_name) = stat.rsplit_once(')')?;
            after_name
                .split_whitespace()
                .next()
                .map(|state| state == "T")
        })
        .unwrap_or(false)
}
