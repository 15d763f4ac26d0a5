use std::fmt;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::broker::{Frames, Subscription};
use crate::mailbox::Connection;
use crate::sse::frame;
use crate::sse::{Coalesce, Runtime};

pin_project! {
    /// Response body of this crate's middleware: the inner service's body,
    /// an event stream, or a short answer of the middleware's own.
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

    #[allow(private_interfaces)]
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

    pub(crate) fn empty() -> Self {
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

/// One open stream: its subscription, the `retry:` hint still to send, and
/// its place under the connection limit.
pub(crate) struct EventStream {
    sub: Subscription,
    first: Option<Bytes>,
    max_batch_bytes: usize,
    coalesce: Option<Coalesce>,
    slot: ConnectionSlot,
    /// Held for its drop: the mailbox counts the stream open until then.
    _connection: Option<Connection>,
}

impl EventStream {
    pub(crate) fn new(
        sub: Subscription,
        first: Bytes,
        max_batch_bytes: usize,
        coalesce: Option<Coalesce>,
        slot: ConnectionSlot,
        mailbox: Option<Connection>,
    ) -> Self {
        Self {
            sub,
            first: Some(first),
            max_batch_bytes,
            coalesce,
            slot,
            _connection: mailbox,
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame<Bytes>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(self.hand_out(first)));
        }
        let window = self.slot.runtime.coalesce_window(self.coalesce);
        match self.sub.poll_frames(cx, self.max_batch_bytes, window) {
            Poll::Ready(Frames::Data { bytes, frames }) => {
                if window.is_some() {
                    self.slot.runtime.count_coalesced(self.coalesce, frames);
                }
                Poll::Ready(Some(self.hand_out(bytes)))
            }
            Poll::Ready(Frames::KeepAlive) => {
                Poll::Ready(Some(self.hand_out(Bytes::from_static(frame::KEEP_ALIVE))))
            }
            Poll::Ready(Frames::End) => {
                self.hand_out(Bytes::new());
                Poll::Ready(None)
            }
            Poll::Ready(Frames::Cut) => {
                tracing::debug!("stream cut: the event it was writing was evicted");
                self.hand_out(Bytes::new());
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Counts `bytes` as what this stream's server is writing now, in place
    /// of the frame before (a server polls a body again once it is done
    /// with the previous frame, or holds a few of them: hyper's queue).
    fn hand_out(&mut self, bytes: Bytes) -> Frame<Bytes> {
        self.slot.writing(bytes.len());
        Frame::data(bytes)
    }
}

/// A place under the connection limit, given back on drop, and the bytes
/// of the frame its stream last handed out.
pub(crate) struct ConnectionSlot {
    runtime: Arc<Runtime>,
    writing: usize,
}

impl ConnectionSlot {
    pub(crate) fn acquire(runtime: &Arc<Runtime>, limit: Option<usize>) -> Option<Self> {
        let previous = runtime.connections.fetch_add(1, Ordering::AcqRel);
        if limit.is_some_and(|limit| previous >= limit) {
            runtime.connections.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self {
            runtime: runtime.clone(),
            writing: 0,
        })
    }

    /// The stream handed out a frame of `bytes`.
    fn writing(&mut self, bytes: usize) {
        if bytes != self.writing {
            self.runtime.in_flight.fetch_add(bytes, Ordering::Relaxed);
            self.runtime
                .in_flight
                .fetch_sub(self.writing, Ordering::Relaxed);
            self.writing = bytes;
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.writing(0);
        self.runtime.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A JSON answer of this crate's own (refusals, health), never cached.
pub(crate) fn json_response<B>(
    status: StatusCode,
    value: &serde_json::Value,
) -> Response<ResponseBody<B>> {
    let mut response = Response::new(ResponseBody::full(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `{"error": message}` with `status`.
pub(crate) fn json_error<B>(
    status: StatusCode,
    message: impl std::fmt::Display,
) -> Response<ResponseBody<B>> {
    json_response(status, &serde_json::json!({ "error": message.to_string() }))
}

/// Adds `Retry-After: delay` (in whole seconds, rounded up, at least 1).
pub(crate) fn with_retry_after<B>(
    mut response: Response<ResponseBody<B>>,
    delay: std::time::Duration,
) -> Response<ResponseBody<B>> {
    let seconds = (delay.as_secs() + u64::from(delay.subsec_nanos() > 0)).max(1);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// `405` naming the methods a route answers, in `Allow` and in the body.
pub(crate) fn method_not_allowed<B>(allow: &'static str) -> Response<ResponseBody<B>> {
    let mut response = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        format_args!("this route answers {allow}"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}
