//! The connection, the stream and the durable pull consumer.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
    stream::{self, StorageType},
};
use async_nats::{Client, ConnectOptions, ServerAddr};

use result_stream::BoxError;

use super::error::NatsError;
use super::options::NatsOptions;

/// Validates the URL and connects once (no retry loop on the initial connect, so a wrong address
/// fails fast). After that the client reconnects by itself, forever.
pub async fn connect(opts: &NatsOptions) -> Result<Client, NatsError> {
    let url = opts.url.trim();
    let invalid = |reason: String| NatsError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let addr: ServerAddr = url
        .parse()
        .map_err(|e: std::io::Error| invalid(e.to_string()))?;
    if !matches!(addr.scheme(), "nats" | "tls") {
        return Err(invalid(format!("unsupported scheme {:?}", addr.scheme())));
    }
    if addr.host().is_empty() {
        return Err(invalid("missing host".into()));
    }
    let connecting = ConnectOptions::new()
        .name("event-batcher")
        .connection_timeout(opts.connect_timeout)
        .request_timeout(Some(opts.request_timeout))
        .connect(addr);
    // connection_timeout covers TCP connect; bound the handshake as well.
    match tokio::time::timeout(opts.connect_timeout + Duration::from_secs(1), connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(source)) => Err(NatsError::Connect {
            url: url.to_string(),
            source,
        }),
        Err(_) => Err(NatsError::ConnectTimeout {
            url: url.to_string(),
            timeout: opts.connect_timeout,
        }),
    }
}

/// A JetStream context whose API requests and publish acks time out after `request_timeout`.
pub fn jetstream_context(client: Client, opts: &NatsOptions) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(opts.request_timeout)
        .build(client)
}

/// Gets the stream or creates it (file storage, capturing `opts.subject`). An existing stream
/// that does not capture the subject is an error (someone else's stream is never changed).
pub async fn ensure_stream(
    js: &jetstream::Context,
    opts: &NatsOptions,
) -> Result<stream::Stream, NatsError> {
    let err = |source: BoxError| NatsError::Stream {
        stream: opts.stream.clone(),
        source,
    };
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: opts.stream.clone(),
            subjects: vec![opts.subject.clone()],
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.into()))?;
    let info = stream.info().await.map_err(|e| err(e.into()))?;
    let subjects = &info.config.subjects;
    if !subjects.iter().any(|s| subject_matches(s, &opts.subject)) {
        return Err(NatsError::StreamSubjects {
            stream: opts.stream.clone(),
            subjects: subjects.clone(),
            subject: opts.subject.clone(),
        });
    }
    Ok(stream)
}

/// Gets the durable pull consumer or creates it with explicit acks. An existing consumer keeps
/// its configuration; one that cannot give ack-after-commit (not explicit acks) is an error.
pub async fn ensure_consumer(
    stream: &stream::Stream,
    opts: &NatsOptions,
) -> Result<PullConsumer, NatsError> {
    let err = |reason: String| NatsError::ConsumerSettings {
        stream: opts.stream.clone(),
        consumer: opts.consumer.clone(),
        reason,
    };
    let config = pull::Config {
        durable_name: Some(opts.consumer.clone()),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: opts.ack_wait,
        max_deliver: opts.max_deliver,
        max_ack_pending: opts.max_ack_pending,
        filter_subject: opts.subject.clone(),
        ..Default::default()
    };
    let consumer: PullConsumer = stream
        .get_or_create_consumer(&opts.consumer, config)
        .await
        .map_err(|e| NatsError::Consumer {
            stream: opts.stream.clone(),
            consumer: opts.consumer.clone(),
            source: e.into(),
        })?;
    let cfg = &consumer.cached_info().config;
    if cfg.ack_policy != AckPolicy::Explicit {
        return Err(err(format!(
            "exists with ack policy {:?}; ack-after-commit needs Explicit",
            cfg.ack_policy
        )));
    }
    if !cfg.filter_subject.is_empty() && cfg.filter_subject != opts.subject {
        return Err(err(format!(
            "exists with filter subject {:?}, not {:?}",
            cfg.filter_subject, opts.subject
        )));
    }
    Ok(consumer)
}

/// Settings of an existing consumer that work but are worth a warning in the summary.
pub fn consumer_warnings(consumer: &PullConsumer, opts: &NatsOptions) -> Vec<String> {
    let cfg = &consumer.cached_info().config;
    let mut warnings = Vec::new();
    if cfg.max_ack_pending > 0 && (cfg.max_ack_pending as usize) < opts.pull_batch {
        warnings.push(format!(
            "NATS consumer {:?} allows {} unacknowledged messages, fewer than a batch of {}: \
             batches will only be flushed on the deadline",
            opts.consumer, cfg.max_ack_pending, opts.pull_batch
        ));
    }
    if cfg.ack_wait != opts.ack_wait {
        warnings.push(format!(
            "NATS consumer {:?} already exists with ack wait {:?} (not {:?}); its value applies",
            opts.consumer, cfg.ack_wait, opts.ack_wait
        ));
    }
    if cfg.max_deliver > 0 {
        warnings.push(format!(
            "NATS consumer {:?} drops a message after {} failed deliveries",
            opts.consumer, cfg.max_deliver
        ));
    }
    warnings
}

/// Does the stream subject pattern `pattern` capture `subject`?
fn subject_matches(pattern: &str, subject: &str) -> bool {
    if pattern == subject {
        return true;
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let s: Vec<&str> = subject.split('.').collect();
    for (i, pt) in p.iter().enumerate() {
        match *pt {
            ">" => return s.len() > i,
            "*" => {
                if i >= s.len() || s[i] == ">" {
                    return false;
                }
            }
            lit => {
                if s.get(i) != Some(&lit) {
                    return false;
                }
            }
        }
    }
    p.len() == s.len()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn subject_patterns() {
        assert!(subject_matches("events.ingest", "events.ingest"));
        assert!(subject_matches("events.>", "events.ingest"));
        assert!(subject_matches("events.>", "events.a.b"));
        assert!(subject_matches("events.*", "events.a"));
        assert!(!subject_matches("events.*", "events.a.b"));
        assert!(!subject_matches("events.ingest", "events.other"));
        assert!(!subject_matches("events.>", "events"));
    }

    #[tokio::test]
    async fn bad_url_is_a_clear_error() {
        for url in [
            "http://127.0.0.1:4222",
            "nats://",
            "nats://host:notaport",
            "::::",
        ] {
            let o = NatsOptions::new(url, "s", "e", "c");
            let e = connect(&o).await.unwrap_err();
            assert!(matches!(e, NatsError::InvalidUrl { .. }), "{url}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[tokio::test]
    async fn unreachable_server_fails_fast() {
        let mut o = NatsOptions::new("nats://127.0.0.1:1", "s", "e", "c");
        o.connect_timeout = Duration::from_secs(2);
        let t = Instant::now();
        let e = connect(&o).await.unwrap_err();
        assert!(matches!(e, NatsError::Connect { .. }), "{e}");
        assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    }
}
