//! The upstream of a batcher, fused.

use core::ops::ControlFlow;
use core::pin::Pin;
use core::task::{Context, Poll};

use futures_core::stream::TryStream;
use pin_project_lite::pin_project;

pin_project! {
    /// A batcher's upstream, fused: once it has ended it is never polled again. Unlike
    /// `futures::stream::Fuse`, its [`poll_each`](Self::poll_each) loop checks the end once
    /// per call, not once per value.
    #[derive(Debug)]
    pub(crate) struct Upstream<St> {
        #[pin]
        stream: St,
        ended: bool,
    }
}

/// Why [`Upstream::poll_each`] returned.
pub(crate) enum Drained<B> {
    /// The consumer stopped, with this.
    Break(B),
    /// Nothing more is ready.
    Pending,
    /// The upstream has ended (now or before).
    Ended,
}

impl<St: TryStream> Upstream<St> {
    pub(crate) fn new(stream: St) -> Self {
        Self {
            stream,
            ended: false,
        }
    }

    pub(crate) fn get_ref(&self) -> &St {
        &self.stream
    }

    pub(crate) fn get_mut(&mut self) -> &mut St {
        &mut self.stream
    }

    pub(crate) fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut St> {
        self.project().stream
    }

    pub(crate) fn into_inner(self) -> St {
        self.stream
    }

    pub(crate) fn is_terminated(&self) -> bool {
        self.ended
    }

    pub(crate) fn size_hint(&self) -> (usize, Option<usize>) {
        if self.ended {
            (0, Some(0))
        } else {
            self.stream.size_hint()
        }
    }

    /// Polls for one item; `None` once the upstream has ended.
    #[inline(always)]
    pub(crate) fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<St::Ok, St::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        let item = this.stream.try_poll_next(cx);
        if let Poll::Ready(None) = item {
            *this.ended = true;
        }
        item
    }

    /// Hands each ready item to `each` until it breaks, the upstream is pending, or it ends.
    #[inline(always)]
    pub(crate) fn poll_each<B>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut each: impl FnMut(Result<St::Ok, St::Error>) -> ControlFlow<B>,
    ) -> Drained<B> {
        let this = self.project();
        if *this.ended {
            return Drained::Ended;
        }
        let mut stream = this.stream;
        loop {
            match stream.as_mut().try_poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    if let ControlFlow::Break(stop) = each(item) {
                        return Drained::Break(stop);
                    }
                }
                Poll::Ready(None) => {
                    *this.ended = true;
                    return Drained::Ended;
                }
                Poll::Pending => return Drained::Pending,
            }
        }
    }
}
