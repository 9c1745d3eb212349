//! The errors of the NATS source's setup and of publishing.

use result_stream::BoxError;

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
    /// The server cannot be reached (refused, DNS, TLS, auth).
    #[error("cannot connect to NATS at {url}: {}", one_line(.source))]
    Connect {
        /// The URL.
        url: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The server did not complete the connection in time.
    #[error("cannot connect to NATS at {url}: timed out after {timeout:?}")]
    ConnectTimeout {
        /// The URL.
        url: String,
        /// The connect timeout.
        timeout: std::time::Duration,
    },
    /// The stream cannot be created or read (e.g. JetStream not enabled on the server).
    #[error("JetStream stream {stream:?}: {}", boxed_line(.source))]
    Stream {
        /// The stream name.
        stream: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The stream exists but does not capture the subject (it is never changed).
    #[error("JetStream stream {stream:?}: exists but captures {subjects:?}, not {subject:?}")]
    StreamSubjects {
        /// The stream name.
        stream: String,
        /// The subjects it captures.
        subjects: Vec<String>,
        /// The subject it should capture.
        subject: String,
    },
    /// The durable consumer cannot be created or read.
    #[error("JetStream consumer {consumer:?} on stream {stream:?}: {}", boxed_line(.source))]
    Consumer {
        /// The stream name.
        stream: String,
        /// The consumer name.
        consumer: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The durable consumer exists with settings that break ack-after-commit.
    #[error("JetStream consumer {consumer:?} on stream {stream:?}: {reason}")]
    ConsumerSettings {
        /// The stream name.
        stream: String,
        /// The consumer name.
        consumer: String,
        /// Which setting, and what it should be.
        reason: String,
    },
    /// A publish was not stored (no stream for the subject, timeout, ...).
    #[error("publish to {subject:?} failed: {}", boxed_line(.source))]
    Publish {
        /// The subject.
        subject: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
}

/// [`one_line`] of a boxed error.
fn boxed_line(error: &BoxError) -> String {
    one_line(&**error)
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
