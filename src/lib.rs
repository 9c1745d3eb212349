//! Batch a stream of `Result`s by size or time and persist each batch with rollback,
//! composed like iterator calls.
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//!
//! use futures::stream;
//! use result_stream::{CompensationScope, ResultStreamExt};
//!
//! #[derive(Debug, Clone)]
//! struct Event { id: u64, payload: String }
//!
//! #[derive(Debug)]
//! enum Error { Parse(String), Store(&'static str) }
//!
//! /// An in-memory table standing in for a database.
//! #[derive(Clone, Default)]
//! struct Store(Arc<Mutex<BTreeMap<u64, String>>>);
//!
//! impl Store {
//!     async fn write_batch(&self, batch: &[Event]) -> Result<(), Error> {
//!         let mut rows = self.0.lock().unwrap();
//!         for event in batch {
//!             if event.payload == "poison" {
//!                 return Err(Error::Store("constraint violated")); // after a partial write
//!             }
//!             rows.insert(event.id, event.payload.clone());
//!         }
//!         Ok(())
//!     }
//!
//!     async fn delete_batch(self, ids: Vec<u64>) -> Result<(), std::io::Error> {
//!         let mut rows = self.0.lock().unwrap();
//!         ids.iter().for_each(|id| { rows.remove(id); });
//!         Ok(())
//!     }
//! }
//!
//! async fn enrich(event: Event) -> Result<Event, Error> {
//!     Ok(Event { payload: event.payload.to_uppercase(), ..event })
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = Store::default();
//! let events = stream::iter((0..1_200u64).map(|id| Ok::<_, Error>(Event {
//!     id,
//!     payload: format!("event {id}"),
//! })));
//!
//! let scope = CompensationScope::new();
//! let done = events
//!     .map_ok_stream(|e| async move { enrich(e).await })
//!     .chunks_timeout_result(500, Duration::from_secs(2))
//!     .for_each_compensated(scope, |batch, scope| {
//!         let store = store.clone();
//!         async move {
//!             let ids: Vec<u64> = batch.iter().map(|e| e.id).collect();
//!             let undo = store.clone();
//!             scope.register(move || undo.clone().delete_batch(ids.clone()));
//!             store.write_batch(&batch).await // atomic, or undone by the line above
//!         }
//!     })
//!     .await
//!     .expect("every batch written");
//!
//! assert_eq!(done.items(), 3); // batches of 500, 500 and 200
//! assert_eq!(store.0.lock().unwrap().len(), 1_200);
//! # }
//! ```
//!
//! The adapters, all on [`ResultStreamExt`]:
//! - [`map_ok_stream`](ResultStreamExt::map_ok_stream): an async map over the `Ok` values,
//!   one at a time, errors passed through;
//! - [`chunks_timeout_result`](ResultStreamExt::chunks_timeout_result): batches of up to
//!   `max_items`, flushed by size, by a per-batch deadline, before an error, and at the end;
//!   optionally capped by weight too ([`max_weight`](ChunksTimeoutResult::max_weight)) and
//!   tagged with why and when each batch closed
//!   ([`with_batch_info`](ChunksTimeoutResult::with_batch_info));
//! - [`chunks_timeout_by_key_result`](ResultStreamExt::chunks_timeout_by_key_result): one
//!   open batch per key, each with its own deadline, the same caps and an optional bound on
//!   the open keys ([`max_open_keys`](ChunksTimeoutByKeyResult::max_open_keys));
//! - [`for_each_compensated`](ResultStreamExt::for_each_compensated): the terminal step,
//!   persisting each item with compensations that are rolled back, newest first, when a
//!   handler fails, the upstream fails, or a [`CancellationToken`]
//!   fires; with up to `n` items in flight
//!   ([`concurrency`](ForEachCompensated::concurrency)), failed attempts undone and retried
//!   ([`retry`](ForEachCompensated::retry)), or items that still fail undone and skipped
//!   ([`skip_failed_items`](ForEachCompensated::skip_failed_items)).
//!
//! Every adapter is a hand-written, pin-projected `Stream` or `Future`, timed by `tokio::time`
//! (so a paused test clock makes it deterministic) and constructible without a runtime.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms)]

mod adapters;
mod compensation;
mod ext;

pub use adapters::batch;
pub use adapters::{
    BatchInfo, ChunksTimeoutByKeyResult, ChunksTimeoutResult, FlushReason, MapOkStream,
};
pub use compensation::{
    Backoff, BoxError, Cause, ChildScope, CompensatedError, Compensation, CompensationFailure,
    CompensationScope, Completion, FailureKind, ForEachCompensated, ItemScope, RetryPolicy,
    Rollback, RollbackReport, UnitOfWork,
};
pub use ext::ResultStreamExt;

/// Re-exported so that [`with_cancellation`](ForEachCompensated::with_cancellation) needs
/// no extra dependency.
pub use tokio_util::sync::CancellationToken;

/// Re-exported so that implementing [`Compensation`] for a type of your own needs no extra
/// dependency: `#[result_stream::async_trait]`.
pub use async_trait::async_trait;

// The README's "Use it in your crate" example runs as a doctest, so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExample;
