//! A PostgreSQL server of the test's own (a temporary data directory, a free port), so that
//! it can be SIGKILLed and restarted without disturbing anything else; killed on drop.
//!
//! The server binaries come from `$EVENT_BATCHER_PG_BIN` or the newest
//! `/usr/lib/postgresql/*/bin` (Debian's layout). `initdb` and `postgres` refuse to run as
//! root: as root they run as the `postgres` user (`runuser -u postgres --`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming the directory of `initdb`, `postgres` and `pg_isready`.
pub const PG_BIN_ENV: &str = "EVENT_BATCHER_PG_BIN";

/// A private PostgreSQL server.
pub struct PrivatePostgres {
    bin: PathBuf,
    port: u16,
    /// Holds `data/` and the socket; owned by `postgres` when run as root.
    dir: tempfile::TempDir,
    as_postgres: bool,
    /// `postgres` itself, or `runuser` running it.
    child: Option<Child>,
}

impl PrivatePostgres {
    /// Initialises a cluster (trust authentication, user `postgres`) and starts it; fails the
    /// test when the binaries are missing or the server does not start.
    pub fn start() -> PrivatePostgres {
        let bin = pg_bin();
        let as_postgres = running_as_root();
        let dir = tempfile::tempdir().expect("a directory for the cluster");
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("run chown");
            assert!(status.success(), "chown the cluster directory to postgres");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut server = PrivatePostgres {
            bin,
            port,
            dir,
            as_postgres,
            child: None,
        };
        let data = server.data();
        let output = server
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        server.run();
        server
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `program` from the server binaries, as the `postgres` user when run as root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    /// Starts the server on the same port and data, and waits until it accepts queries.
    pub fn run(&mut self) {
        let log = std::fs::File::create(
            std::env::temp_dir().join(format!("event-batcher-private-postgres-{}.log", self.port)),
        )
        .expect("a log file");
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|status| status.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the private PostgreSQL did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL of the server and its backends: a crash, nothing shut down cleanly.
    pub fn kill(&mut self) {
        if let Some(pid) = postmaster_pid(&self.data()) {
            let mut pids = vec![pid];
            pids.extend(children_of(pid));
            for pid in pids {
                // Its backends may already have gone.
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Until every backend is gone, a new server would refuse the old shared memory.
        let deadline = Instant::now() + Duration::from_secs(20);
        while postmaster_pid(&self.data())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
        {
            assert!(Instant::now() < deadline, "postgres did not die");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.kill();
    }
}

fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var(PG_BIN_ENV)
        && !dir.trim().is_empty()
    {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "this test runs a PostgreSQL server of its own: install the server binaries \
             (Debian: postgresql) or set {PG_BIN_ENV} to the directory of initdb and postgres"
        )
    })
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace().nth(1).map(|uid| uid == "0")
        })
        .unwrap_or(false)
}

/// The postmaster's PID, from the first line of `postmaster.pid`.
fn postmaster_pid(data: &Path) -> Option<u32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The PIDs whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (_, after_name) = stat.rsplit_once(')')?;
            let ppid: u32 = after_name.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}
