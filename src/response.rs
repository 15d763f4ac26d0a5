//! The answers the crate's layers give themselves (JSON, `405`,
//! `Retry-After`), as plain responses of bytes, and the body that carries
//! them besides the inner service's.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

/// A JSON answer, never cached.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(value.to_string()));
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
pub(crate) fn json_error(status: StatusCode, message: impl fmt::Display) -> Response<Bytes> {
    json(status, &serde_json::json!({ "error": message.to_string() }))
}

/// `405` naming the methods a route answers, in `Allow` and in the body.
pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Bytes> {
    let mut response = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        format_args!("this route answers {allow}"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// Adds `Retry-After: delay`.
pub(crate) fn with_retry_after<T>(mut response: Response<T>, delay: Duration) -> Response<T> {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(whole_seconds(delay)));
    response
}

/// `Retry-After` takes whole seconds: round up, and never say 0.
pub(crate) fn whole_seconds(delay: Duration) -> u64 {
    let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    seconds.max(1)
}

pin_project! {
    /// Response body of the layers that answer some requests themselves
    /// with a short JSON body ([`HealthLayer`](crate::HealthLayer),
    /// [`RequireWritableLayer`](crate::RequireWritableLayer),
    /// [`MailboxLayer`](crate::mailbox::MailboxLayer)): the inner service's
    /// body, or that answer.
    pub struct ResponseBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyKindProj]
    enum BodyKind<B> {
        Inner { #[pin] body: B },
        Answer { #[pin] body: Full<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: BodyKind::Inner { body },
        }
    }

    pub(crate) fn answer(bytes: Bytes) -> Self {
        Self {
            kind: BodyKind::Answer {
                body: Full::new(bytes),
            },
        }
    }
}

/// An empty answer: what layers outside this one (tower-http's `Cors`,
/// `Timeout`, `ValidateRequestHeader`) answer with when they answer first.
impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::answer(Bytes::new())
    }
}

impl<B: Body<Data = Bytes>> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            BodyKindProj::Inner { body } => body.poll_frame(cx),
            BodyKindProj::Answer { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(|never: Infallible| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Inner { body } => body.is_end_stream(),
            BodyKind::Answer { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Inner { body } => body.size_hint(),
            BodyKind::Answer { body } => body.size_hint(),
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

pin_project! {
    /// Response future of the layers that answer some requests themselves
    /// ([`Health`](crate::health::Health),
    /// [`RequireWritable`](crate::require_writable::RequireWritable),
    /// [`MailboxRoutes`](crate::mailbox::MailboxRoutes)): the inner service's
    /// future, or that answer, ready at once or, for a mailbox reply, once
    /// the request body is read.
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Future { #[pin] future: F },
        Answer { response: Option<Response<Bytes>>, _body: PhantomData<fn() -> B> },
        Later { answer: Later },
    }
}

/// An answer that waits on something (a request body); boxed, off the hot
/// path.
pub(crate) type Later = Pin<Box<dyn Future<Output = Response<Bytes>> + Send>>;

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Future { future } => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(ResponseBody::inner))),
            KindProj::Answer { response, .. } => Poll::Ready(Ok(response
                .take()
                .expect("polled after completion")
                .map(ResponseBody::answer))),
            KindProj::Later { answer } => answer
                .as_mut()
                .poll(cx)
                .map(|response| Ok(response.map(ResponseBody::answer))),
        }
    }
}

impl<F, B> fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn future(future: F) -> Self {
        Self {
            kind: Kind::Future { future },
        }
    }

    pub(crate) fn answer(response: Response<Bytes>) -> Self {
        Self {
            kind: Kind::Answer {
                response: Some(response),
                _body: PhantomData,
            },
        }
    }

    pub(crate) fn later(answer: Later) -> Self {
        Self {
            kind: Kind::Later { answer },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_never_zero() {
        let seconds = |d| {
            with_retry_after(Response::new(()), d).headers()[header::RETRY_AFTER]
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(seconds(Duration::ZERO), "1");
        assert_eq!(seconds(Duration::from_millis(1500)), "2");
        assert_eq!(seconds(Duration::from_secs(30)), "30");
    }
}
