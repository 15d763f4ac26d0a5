//! The events route's response body: the inner service's, an event stream,
//! or a short answer of the route's own.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::coalesce::Coalesce;
use super::hook::StreamGuard;
use super::streams::StreamSlot;
use crate::broker::{Frames, Subscription};
use crate::metrics::StreamMetrics;
use crate::wire;

pin_project! {
    /// Response body of [`Sse`](crate::sse::Sse): the inner service's body,
    /// an event stream, or a short answer of the events route (a refusal,
    /// a back-off stream).
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Events { stream: EventStream },
        Full { data: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn events(stream: EventStream) -> Self {
        Self {
            kind: Kind::Events { stream },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }
}

/// An empty body: what layers outside this one (tower-http's `Cors`,
/// `Timeout`, `ValidateRequestHeader`) answer with when they answer first.
impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::full(Bytes::new())
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Events { stream } => stream.poll_frame(cx).map(|frame| frame.map(Ok)),
            KindProj::Full { data } => Poll::Ready(data.take().map(|data| Ok(Frame::data(data)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Events { stream } => stream.sub.is_finished(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Events { .. } => SizeHint::default(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "Inner",
            Kind::Events { .. } => "Events",
            Kind::Full { .. } => "Full",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

/// One open stream: its subscription, the `retry:` hint still to send, its
/// place among the layer's streams, and what a hook keeps for it.
pub(crate) struct EventStream {
    sub: Subscription,
    first: Option<Bytes>,
    max_batch_bytes: usize,
    coalesce: Option<Coalesce>,
    slot: StreamSlot,
    /// Held for its drop: a hook hears that the stream ended. It may hold
    /// the events back until the hook is done opening the stream.
    guard: Option<StreamGuard>,
    /// The stream's span: what is logged for it is logged in it (entered
    /// only then, not on every poll).
    span: tracing::Span,
    metrics: StreamMetrics,
    /// Why the stream ended itself, if it did before the broker closed.
    cut: Option<&'static str>,
}

impl EventStream {
    pub(crate) fn new(
        mut sub: Subscription,
        first: Bytes,
        max_batch_bytes: usize,
        coalesce: Option<Coalesce>,
        slot: StreamSlot,
        guard: Option<StreamGuard>,
        span: tracing::Span,
    ) -> Self {
        sub.defer_reports();
        Self {
            sub,
            first: Some(first),
            max_batch_bytes,
            coalesce,
            slot,
            guard,
            span,
            metrics: StreamMetrics::opened(),
            cut: None,
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame<Bytes>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(self.hand_out(first)));
        }
        if let Some(guard) = &mut self.guard {
            if std::task::ready!(guard.poll_ready(cx)).is_break() {
                self.cut = Some("its hook could not open it");
                return Poll::Ready(None);
            }
        }
        let coalescing = &self.slot.streams().coalescing;
        let window = coalescing.window(self.coalesce);
        let polled = self.sub.poll_frames(cx, self.max_batch_bytes, window);
        if self.sub.has_reports() {
            let _entered = self.span.enter();
            self.sub.report();
        }
        match polled {
            Poll::Ready(Frames::Data { bytes, frames }) => {
                self.metrics.delivered(frames, bytes.len());
                Poll::Ready(Some(self.hand_out(bytes)))
            }
            Poll::Ready(Frames::KeepAlive) => {
                self.metrics.keep_alive();
                Poll::Ready(Some(self.hand_out(Bytes::from_static(wire::KEEP_ALIVE))))
            }
            Poll::Ready(Frames::End) => {
                self.hand_out(Bytes::new());
                Poll::Ready(None)
            }
            Poll::Ready(Frames::Cut) => {
                self.span.in_scope(|| {
                    tracing::info!(
                        "stream cut: it could not go on without a gap (the frame it was \
                         writing was evicted, or direct messages due to it were lost)"
                    )
                });
                crate::metrics::stream_cut();
                self.cut = Some("cut");
                self.hand_out(Bytes::new());
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Counts `bytes` as what this stream's server is writing now.
    fn hand_out(&mut self, bytes: Bytes) -> Frame<Bytes> {
        self.slot.writing(bytes.len());
        Frame::data(bytes)
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        // A server may stop polling once the body says it has ended
        // (`is_end_stream`), before `End`: the subscription knows.
        let why = match self.cut {
            Some(why) => why,
            None if self.sub.is_finished() => "the broker closed (shutdown)",
            None => "its reader went away",
        };
        let _entered = self.span.enter();
        tracing::debug!("stream ended: {why}");
    }
}
