//! The errors of the NATS source's setup and of publishing.

/// Setup / publish errors; `Display` is one line, meant for the CLI.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The `--source` value is not a NATS URL.
    #[error("invalid NATS URL {url:?}: {reason} (expected nats://HOST:PORT)")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server cannot be reached (refused, DNS, timeout, TLS, auth).
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// The client's error.
        reason: String,
    },
    /// The stream cannot be created or read, or captures other subjects.
    #[error("JetStream stream {stream:?}: {reason}")]
    Stream {
        /// The stream name.
        stream: String,
        /// What went wrong (e.g. JetStream not enabled on the server).
        reason: String,
    },
    /// The durable consumer cannot be created or used.
    #[error("JetStream consumer {consumer:?} on stream {stream:?}: {reason}")]
    Consumer {
        /// The stream name.
        stream: String,
        /// The consumer name.
        consumer: String,
        /// What went wrong.
        reason: String,
    },
    /// A publish was not stored (no stream for the subject, timeout, ...).
    #[error("publish to {subject:?} failed: {reason}")]
    Publish {
        /// The subject.
        subject: String,
        /// What went wrong.
        reason: String,
    },
}

/// An error and its sources on one line, without repeating what the outer message says.
pub(crate) fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        src = s.source();
    }
    out.replace('\n', " ")
}
