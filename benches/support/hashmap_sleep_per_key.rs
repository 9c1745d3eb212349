//! The baseline of the keyed benchmarks (`benches/keyed.rs`, `benches/instructions.rs`): the
//! obvious per-key batcher a user would write by hand.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Sleep;

type E = std::io::Error;

/// The obvious per-key batcher: `HashMap<K, Vec<T>>` plus one `tokio::time::Sleep` per key,
/// boxed when the key is first seen, reset when the key's batch opens. When the upstream is
/// pending it polls the sleep of every key with an open batch.
pub struct HashMapSleepPerKey<S> {
    stream: S,
    key: fn(&u64) -> u64,
    keys: HashMap<u64, KeyState>,
    /// Batches closed and waiting to be yielded (a poll can expire several).
    ready: Vec<(u64, Vec<u64>)>,
    max_items: usize,
    timeout: Duration,
    done: bool,
}

struct KeyState {
    items: Vec<u64>,
    sleep: Pin<Box<Sleep>>,
}

impl<S> HashMapSleepPerKey<S> {
    pub fn new(stream: S, key: fn(&u64) -> u64, max_items: usize, timeout: Duration) -> Self {
        Self {
            stream,
            key,
            keys: HashMap::new(),
            ready: Vec::new(),
            max_items,
            timeout,
            done: false,
        }
    }
}

impl<S: Stream<Item = Result<u64, E>> + Unpin> Stream for HashMapSleepPerKey<S> {
    type Item = Result<(u64, Vec<u64>), E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(batch) = this.ready.pop() {
            return Poll::Ready(Some(Ok(batch)));
        }
        while !this.done {
            match this.stream.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(value))) => {
                    let key = (this.key)(&value);
                    let (max_items, timeout) = (this.max_items, this.timeout);
                    let state = this.keys.entry(key).or_insert_with(|| KeyState {
                        items: Vec::new(),
                        sleep: Box::pin(tokio::time::sleep(timeout)),
                    });
                    if state.items.is_empty() {
                        state.items = Vec::with_capacity(max_items);
                        let deadline = tokio::time::Instant::now() + timeout;
                        state.sleep.as_mut().reset(deadline);
                    }
                    state.items.push(value);
                    if state.items.len() >= max_items {
                        let batch = std::mem::take(&mut state.items);
                        return Poll::Ready(Some(Ok((key, batch))));
                    }
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => this.done = true,
                Poll::Pending => break,
            }
        }
        if this.done {
            let key = this
                .keys
                .iter()
                .find(|(_, state)| !state.items.is_empty())
                .map(|(&key, _)| key);
            return Poll::Ready(key.map(|key| {
                let state = this.keys.get_mut(&key).unwrap();
                Ok((key, std::mem::take(&mut state.items)))
            }));
        }
        for (&key, state) in &mut this.keys {
            if !state.items.is_empty() && state.sleep.as_mut().poll(cx).is_ready() {
                this.ready.push((key, std::mem::take(&mut state.items)));
            }
        }
        match this.ready.pop() {
            Some(batch) => Poll::Ready(Some(Ok(batch))),
            None => Poll::Pending,
        }
    }
}
