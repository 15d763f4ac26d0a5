//! The glue between this server and hyper: the request body type the
//! service sees, the service adapter, and a stream that gives back the
//! bytes already read.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tower_service::Service;

use super::BoxError;

pin_project! {
    /// The body of every request [`serve`](super::serve) passes on: empty
    /// for a stream request (a `GET` with no body), hyper's body otherwise,
    /// which fails with [`BodyTimeout`] once it has taken longer than the
    /// server's [`body_timeout`](super::Serve::body_timeout).
    ///
    /// axum's `Router` takes it as it is.
    #[derive(Debug)]
    pub struct RequestBody {
        #[pin]
        incoming: Option<Incoming>,
        deadline: Option<(Pin<Box<Sleep>>, Duration)>,
    }
}

impl RequestBody {
    /// An empty body.
    pub(super) fn empty() -> Self {
        Self {
            incoming: None,
            deadline: None,
        }
    }
}

/// A request body was still arriving when the server's
/// [`body_timeout`](super::Serve::body_timeout) ran out: the error its
/// [`RequestBody`] fails with, so that a client dripping a body a byte at a
/// time cannot hold a connection (and what hyper buffers for it) for ever.
/// An axum extractor reading the body answers `400` then, and the
/// connection closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyTimeout(pub Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body took longer than {:?}", self.0)
    }
}

impl std::error::Error for BodyTimeout {}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let Some(incoming) = this.incoming.as_pin_mut() else {
            return Poll::Ready(None);
        };
        let polled = incoming.poll_frame(cx).map_err(BoxError::from);
        if polled.is_pending() {
            if let Some((sleep, after)) = this.deadline {
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout(*after)))));
                }
            }
        } else if matches!(polled, Poll::Ready(None)) {
            *this.deadline = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// The service as hyper's connections call it: hyper's body wrapped in a
/// [`RequestBody`] with its deadline, and the peer's address in the
/// extensions.
#[derive(Clone, Debug)]
pub(super) struct IntoRequestBody<S> {
    inner: S,
    peer: SocketAddr,
    body_timeout: Option<Duration>,
}

impl<S> IntoRequestBody<S> {
    pub(super) fn new(inner: S, peer: SocketAddr, body_timeout: Option<Duration>) -> Self {
        Self {
            inner,
            peer,
            body_timeout,
        }
    }
}

impl<S> Service<Request<Incoming>> for IntoRequestBody<S>
where
    S: Service<Request<RequestBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> S::Future {
        let deadline = self
            .body_timeout
            .filter(|_| !request.body().is_end_stream())
            .map(|after| (Box::pin(tokio::time::sleep(after)), after));
        let mut request = request.map(|incoming| RequestBody {
            incoming: Some(incoming),
            deadline,
        });
        super::insert_peer(&mut request, self.peer);
        self.inner.call(request)
    }
}

pin_project! {
    /// A stream that first yields `read`, the bytes taken from it while
    /// deciding who drives it.
    #[derive(Debug)]
    pub(super) struct Rewind<T> {
        read: Bytes,
        #[pin]
        inner: T,
    }
}

impl<T> Rewind<T> {
    pub(super) fn new(inner: T, read: Bytes) -> Self {
        Self { read, inner }
    }
}

impl<T: AsyncRead> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        if this.read.is_empty() {
            return this.inner.poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        if this.read.is_empty() {
            // Let the allocation go now rather than with the connection.
            *this.read = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn rewind_yields_what_was_read_then_the_rest() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b" world")
            .await
            .unwrap();
        drop(client);
        let mut rewind = Rewind::new(server, Bytes::from_static(b"hello"));
        let mut small = [0u8; 3];
        rewind.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"hel");
        let mut rest = Vec::new();
        rewind.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"lo world");
    }

    #[test]
    fn an_empty_body_says_so() {
        let body = RequestBody::empty();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }
}
