//! The error texts of a run that failed: a cause that is not an error is shown by `Display`,
//! and an error-chain printer shows each message of the cause and of its sources once.

mod common;
mod compensation_common;

use std::error::Error;
use std::io;

use futures::stream;
use result_stream::{Cause, CompensationScope, ResultStreamExt};

/// The messages of `error` and of its sources, outermost first, as an error-chain printer
/// (`anyhow`'s `{:#}`) shows them.
fn chain(error: &(dyn Error + 'static)) -> Vec<String> {
    let mut messages = vec![error.to_string()];
    let mut next = error.source();
    while let Some(error) = next {
        messages.push(error.to_string());
        next = error.source();
    }
    messages
}

#[tokio::test(start_paused = true)]
async fn a_cause_that_is_not_an_error_is_shown_by_display() {
    let error = stream::iter(vec![Ok::<u32, &'static str>(1)])
        .for_each_compensated(CompensationScope::new(), |_, _| async { Err("disk full") })
        .await
        .unwrap_err();
    assert!(matches!(error.cause(), Cause::Handler("disk full")));
    let text = error.to_string();
    assert!(
        text.contains("handler error") && text.contains("disk full"),
        "{text}"
    );
    assert!(text.contains("rolled back cleanly"), "{text}");

    let upstream = stream::iter(vec![Err::<u32, _>("socket closed")])
        .for_each_compensated(CompensationScope::new(), |_, _| async { Ok(()) })
        .await
        .unwrap_err();
    let text = upstream.to_string();
    assert!(
        text.contains("upstream error") && text.contains("socket closed"),
        "{text}"
    );
}

/// A write error with an underlying cause of its own.
#[derive(Debug)]
struct WriteError(io::Error);

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("write of batch 3 failed")
    }
}

impl Error for WriteError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

#[tokio::test(start_paused = true)]
async fn an_error_chain_prints_each_message_once() {
    let error = stream::iter(vec![Ok::<u32, WriteError>(3)])
        .for_each_compensated(CompensationScope::new(), |_, scope| {
            scope.register_labeled("delete batch 3", || async {
                Err::<(), _>(WriteError(io::Error::other("connection reset")))
            });
            async { Err(WriteError(io::Error::other("constraint violated"))) }
        })
        .await
        .unwrap_err();
    let messages = chain(&error);
    let all = messages.join(" | ");
    assert_eq!(all.matches("write of batch 3 failed").count(), 2, "{all}"); // cause + failure
    assert_eq!(all.matches("constraint violated").count(), 1, "{all}");
    assert!(all.contains("delete batch 3"), "{all}");

    // A failed compensation: its error is in its text, its error's source comes next.
    let failure = &error.report().failures()[0];
    let messages = chain(failure);
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].contains("write of batch 3 failed"),
        "{messages:?}"
    );
    assert_eq!(messages[1], "connection reset");
}
