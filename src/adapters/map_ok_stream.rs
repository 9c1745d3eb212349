use core::fmt;
use core::pin::Pin;
use core::task::{Context, Poll, ready};
use std::future::Future;

use futures_core::stream::{FusedStream, Stream};
use pin_project_lite::pin_project;

pin_project! {
    /// Stream for [`ResultStreamExt::map_ok_stream`](crate::ResultStreamExt::map_ok_stream).
    ///
    /// Runs at most one future at a time; output order is input order. Upstream errors pass
    /// through untouched and never stop the stream.
    ///
    /// This is the shape of futures' [`TryStreamExt::and_then`](futures_util::TryStreamExt::and_then)
    /// (same rules, same cost, measured at parity in BENCHMARKS.md). It exists so that the
    /// pipeline (transform each value, batch, write each batch with compensation) reads as one chain from one import, [`ResultStreamExt`](crate::ResultStreamExt),
    /// on any `Stream<Item = Result<T, E>>`, with its contract (errors pass through, `f` is
    /// not called for them, the stream does not stop at an error) stated and tested here
    /// rather than inherited. Prefer `and_then` where `TryStreamExt` is already in use.
    #[doc(alias = "and_then")]
    #[must_use = "streams do nothing unless polled"]
    pub struct MapOkStream<St, Fut, F> {
        #[pin]
        stream: St,
        f: F,
        #[pin]
        pending: Option<Fut>,
    }
}

impl<St, Fut, F> fmt::Debug for MapOkStream<St, Fut, F>
where
    St: fmt::Debug,
    Fut: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapOkStream")
            .field("stream", &self.stream)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl<St, Fut, F> MapOkStream<St, Fut, F> {
    pub(crate) fn new(stream: St, f: F) -> Self {
        Self {
            stream,
            f,
            pending: None,
        }
    }

    /// Acquires a reference to the underlying stream.
    pub fn get_ref(&self) -> &St {
        &self.stream
    }

    /// Acquires a mutable reference to the underlying stream.
    ///
    /// Pulling items out of it directly bypasses this adapter.
    pub fn get_mut(&mut self) -> &mut St {
        &mut self.stream
    }

    /// Acquires a pinned mutable reference to the underlying stream.
    pub fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut St> {
        self.project().stream
    }

    /// Consumes the adapter and returns the underlying stream.
    ///
    /// A future that is in progress (an `Ok` value already taken from the stream) is dropped
    /// with it; call this only between items if that value matters.
    pub fn into_inner(self) -> St {
        self.stream
    }
}

impl<St, Fut, F, T, U, E> Stream for MapOkStream<St, Fut, F>
where
    St: Stream<Item = Result<T, E>>,
    F: FnMut(T) -> Fut,
    Fut: Future<Output = Result<U, E>>,
{
    type Item = Result<U, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if let Some(fut) = this.pending.as_mut().as_pin_mut() {
                let output = ready!(fut.poll(cx));
                this.pending.set(None);
                return Poll::Ready(Some(output));
            }
            match ready!(this.stream.as_mut().poll_next(cx)) {
                Some(Ok(value)) => this.pending.set(Some((this.f)(value))),
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => return Poll::Ready(None),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let in_flight = usize::from(self.pending.is_some());
        let (lower, upper) = self.stream.size_hint();
        (
            lower.saturating_add(in_flight),
            upper.and_then(|upper| upper.checked_add(in_flight)),
        )
    }
}

impl<St, Fut, F, T, U, E> FusedStream for MapOkStream<St, Fut, F>
where
    St: FusedStream<Item = Result<T, E>>,
    F: FnMut(T) -> Fut,
    Fut: Future<Output = Result<U, E>>,
{
    fn is_terminated(&self) -> bool {
        self.pending.is_none() && self.stream.is_terminated()
    }
}
