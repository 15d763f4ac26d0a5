//! Answering a stream request on a connection of this server's own: the
//! head once, then each body frame in one vectored write straight from its
//! bytes, with nothing buffered in between.

use std::future::{poll_fn, Future};
use std::io::{IoSlice, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::SystemTime;

use bytes::Buf;
use http::header::{self, HeaderValue};
use http::response::Parts;
use http::{Request, Response, StatusCode};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tower_service::Service;

use super::{BoxError, RequestBody};

/// Bytes a client may send after its stream request before it is taken for
/// something other than an event-stream reader and dropped. An
/// `EventSource` sends none.
const MAX_DISCARDED: usize = 64 * 1024;
/// The end of a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Calls `service` with `request` and writes its response on `tcp`, which
/// is closed afterwards.
pub(super) async fn respond<S, B>(
    mut tcp: TcpStream,
    request: Box<Request<RequestBody>>,
    mut service: S,
) where
    S: Service<Request<RequestBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    B::Error: Into<BoxError>,
{
    // The call in a block of its own, with no await after the response
    // comes: its locals (the call's result, the response's parts) end with
    // it, so the task of a stream keeps only what the body needs for as
    // long as it lasts. The body goes on the heap: moved out of the
    // response, it would otherwise take its place in the task twice.
    let mut discarded = 0usize;
    let (framing, head, mut body) = {
        // Until the response starts, the peer is watched as hyper does: one
        // that leaves (or half-closes) ends the call instead of waiting on
        // it.
        let ready = poll_fn(|cx| {
            if watch_peer(&mut tcp, cx, &mut discarded).is_ready() {
                return Poll::Ready(None);
            }
            service
                .poll_ready(cx)
                .map(|ready| Some(ready.map_err(Into::into)))
        })
        .await;
        match ready {
            None => return,
            Some(Err(error)) => {
                tracing::debug!(%error, "service not ready; closing");
                return;
            }
            Some(Ok(())) => {}
        }
        // Boxed: the call's state would otherwise stay in every stream's task.
        let mut call = Box::pin(service.call(unbox(request)));
        drop(service);
        let called = poll_fn(|cx| {
            if watch_peer(&mut tcp, cx, &mut discarded).is_ready() {
                return Poll::Ready(None);
            }
            call.as_mut()
                .poll(cx)
                .map(|called| Some(called.map_err(Into::into)))
        })
        .await;
        drop(call);
        let response = match called {
            None => return,
            Some(Ok(response)) => response,
            Some(Err(error)) => {
                tracing::debug!(%error, "service failed; closing");
                return;
            }
        };
        let (parts, body) = response.into_parts();
        let framing = Framing::of(&parts, &body);
        (framing, encode_head(&parts, framing), Box::pin(body))
    };
    if tcp.write_all(&head).await.is_err() {
        return;
    }
    drop(head);
    let end = match framing {
        Framing::None => End::Finished,
        Framing::Length(length) => {
            write_body(&mut tcp, body.as_mut(), false, Some(length), discarded).await
        }
        Framing::Chunked => {
            let end = write_body(&mut tcp, body.as_mut(), true, None, discarded).await;
            if end == End::Finished && tcp.write_all(LAST_CHUNK).await.is_err() {
                return;
            }
            end
        }
    };
    if end == End::Finished {
        // A FIN after the last byte, so the client sees the end of a whole
        // response rather than a reset.
        let _ = tcp.shutdown().await;
    }
}

/// Moves the value out of its box and frees the box at once (moved out in
/// place, the box's memory would stay with the task as long as the stream).
#[allow(clippy::boxed_local)] // taking the box is the point
fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// How the body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// No body may follow (`204`, `304`, `1xx`).
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

impl Framing {
    fn of<B: Body>(parts: &Parts, body: &B) -> Self {
        let status = parts.status;
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Framing::None;
        }
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok());
        match declared.or_else(|| body.size_hint().exact()) {
            Some(length) => Framing::Length(length),
            None => Framing::Chunked,
        }
    }
}

/// The status line and headers, with this server's framing and
/// `Connection: close` in place of whatever the service set for those.
fn encode_head(parts: &Parts, framing: Framing) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    let status = parts.status;
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &parts.headers {
        if [
            header::CONNECTION,
            header::TRANSFER_ENCODING,
            header::CONTENT_LENGTH,
        ]
        .contains(name)
            || name.as_str() == "keep-alive"
        {
            continue;
        }
        put_header(&mut head, name.as_str(), value);
    }
    if !parts.headers.contains_key(header::DATE) {
        let date = httpdate::fmt_http_date(SystemTime::now());
        put_header(
            &mut head,
            "date",
            &HeaderValue::from_str(&date).unwrap_or(HeaderValue::from_static("")),
        );
    }
    match framing {
        Framing::None => {
            if status == StatusCode::NOT_MODIFIED {
                if let Some(length) = parts.headers.get(header::CONTENT_LENGTH) {
                    put_header(&mut head, "content-length", length);
                }
            }
        }
        Framing::Length(length) => {
            let _ = write!(head, "content-length: {length}\r\n");
        }
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    head
}

fn put_header(head: &mut Vec<u8>, name: &str, value: &HeaderValue) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value.as_bytes());
    head.extend_from_slice(b"\r\n");
}

/// How writing a body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The body ended and every byte of it was written.
    Finished,
    /// The peer closed, reset, or sent more than a stream reader would.
    PeerGone,
    /// The body failed, broke its `Content-Length`, or a write failed: the
    /// connection is dropped mid-response so the client sees an error.
    Failed,
}

/// Writes each body frame as it comes, one frame at a time: while a write
/// waits for the socket, the body is not polled, which is what holds a
/// slow reader back in the broker's log rather than in memory here.
async fn write_body<B>(
    tcp: &mut TcpStream,
    mut body: Pin<&mut B>,
    chunked: bool,
    mut remaining: Option<u64>,
    mut discarded: usize,
) -> End
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut pending: Option<Chunk<B::Data>> = None;
    poll_fn(|cx| {
        // Once per poll: the read side's readiness (and this task's waker
        // for it) does not change while this poll writes.
        if let Poll::Ready(end) = watch_peer(tcp, cx, &mut discarded) {
            return Poll::Ready(end);
        }
        loop {
        if let Some(chunk) = pending.as_mut() {
            match ready!(chunk.poll_write(tcp, cx)) {
                Ok(()) => pending = None,
                Err(_) => return Poll::Ready(End::Failed),
            }
        }
        let frame = match ready!(body.as_mut().poll_frame(cx)) {
            None if remaining.is_some_and(|left| left > 0) => return Poll::Ready(End::Failed),
            None => return Poll::Ready(End::Finished),
            Some(Err(error)) => {
                tracing::debug!(error = %error.into(), "response body failed; dropping the connection");
                return Poll::Ready(End::Failed);
            }
            Some(Ok(frame)) => frame,
        };
        // Trailers have no place in a body that ends the connection.
        let Ok(data) = frame.into_data() else { continue };
        let len = data.remaining() as u64;
        if len == 0 {
            continue;
        }
        if let Some(left) = remaining.as_mut() {
            if len > *left {
                tracing::debug!("response body longer than its content-length; dropping the connection");
                return Poll::Ready(End::Failed);
            }
            *left -= len;
        }
        pending = Some(Chunk::new(data, chunked));
        }
    })
    .await
}

/// Reads and discards whatever the peer sends, to notice it leaving.
fn watch_peer(tcp: &mut TcpStream, cx: &mut Context<'_>, discarded: &mut usize) -> Poll<End> {
    // Uninitialised: a stream's peer sends nothing, and this runs on every
    // poll.
    let mut scratch = [MaybeUninit::<u8>::uninit(); 256];
    loop {
        let mut buf = ReadBuf::uninit(&mut scratch);
        match Pin::new(&mut *tcp).poll_read(cx, &mut buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(End::PeerGone),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(End::PeerGone),
            Poll::Ready(Ok(())) => {
                *discarded += buf.filled().len();
                if *discarded > MAX_DISCARDED {
                    return Poll::Ready(End::PeerGone);
                }
            }
        }
    }
}

/// Chunks up to this size are copied into one buffer and written with one
/// `send`, larger ones go out with `writev` as they are.
const INLINE: usize = 2048;

/// Most events fit in this: a buffer this size is cleared on the stack for
/// each write.
const SMALL: usize = 256;

/// Writes `slices` copied into `buffer`, which holds them all, with one
/// `send`.
fn write_inline<W: AsyncWrite + Unpin>(
    tcp: &mut W,
    cx: &mut Context<'_>,
    slices: &[IoSlice<'_>],
    buffer: &mut [u8],
) -> Poll<std::io::Result<usize>> {
    let mut at = 0;
    for slice in slices {
        buffer[at..at + slice.len()].copy_from_slice(slice);
        at += slice.len();
    }
    Pin::new(tcp).poll_write(cx, &buffer[..at])
}

/// The chunk-size line of a chunk of `len` bytes (hex digits, then CRLF)
/// into `line`; returns its length. By hand: this runs for every frame.
fn size_line(len: usize, line: &mut [u8; 18]) -> u8 {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, byte) in line[..digits].iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        *byte = HEX[(len >> shift) & 0xf];
    }
    line[digits..digits + 2].copy_from_slice(b"\r\n");
    (digits + 2) as u8
}

/// One body frame on its way out: the chunk-size line, the frame's own
/// bytes and the closing CRLF, written together.
struct Chunk<D> {
    size_line: [u8; 18],
    at: u8,
    end: u8,
    data: D,
    /// Bytes of the closing CRLF still to write.
    crlf: u8,
}

impl<D: Buf> Chunk<D> {
    fn new(data: D, chunked: bool) -> Self {
        let mut size_line = [0u8; 18];
        let (end, crlf) = if chunked {
            // At most 16 hex digits and CRLF: always fits.
            (self::size_line(data.remaining(), &mut size_line), 2)
        } else {
            (0, 0)
        };
        Self {
            size_line,
            at: 0,
            end,
            data,
            crlf,
        }
    }

    fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        tcp: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let written = {
                let size_line = &self.size_line[usize::from(self.at)..usize::from(self.end)];
                if size_line.is_empty() && !self.data.has_remaining() && self.crlf == 0 {
                    return Poll::Ready(Ok(()));
                }
                let mut slices = [IoSlice::new(&[]); 8];
                let mut n = 0;
                if !size_line.is_empty() {
                    slices[0] = IoSlice::new(size_line);
                    n = 1;
                }
                let from = n;
                n += self.data.chunks_vectored(&mut slices[n..7]);
                // The CRLF may follow only the whole of the data: a `Buf`
                // may describe just part of itself here.
                let described: usize = slices[from..n].iter().map(|s| s.len()).sum();
                if self.crlf > 0 && described == self.data.remaining() {
                    slices[n] = IoSlice::new(&b"\r\n"[usize::from(2 - self.crlf)..]);
                    n += 1;
                }
                let slices = &slices[..n];
                let total: usize = slices.iter().map(|s| s.len()).sum();
                if total <= SMALL {
                    // A small chunk goes out copied into one buffer: a
                    // plain `send` costs the kernel less than `writev`.
                    // Most events fit the smaller buffer, which is cheaper
                    // to clear.
                    ready!(write_inline(tcp, cx, slices, &mut [0u8; SMALL]))?
                } else if total <= INLINE {
                    ready!(write_inline(tcp, cx, slices, &mut [0u8; INLINE]))?
                } else {
                    ready!(Pin::new(&mut *tcp).poll_write_vectored(cx, slices))?
                }
            };
            if written == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            let mut left = written;
            let from_size_line = left.min(usize::from(self.end - self.at));
            self.at += from_size_line as u8;
            left -= from_size_line;
            let from_data = left.min(self.data.remaining());
            self.data.advance(from_data);
            left -= from_data;
            self.crlf -= left.min(usize::from(self.crlf)) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{Empty, Full, StreamBody};

    use super::*;

    fn parts(status: StatusCode, headers: &[(&str, &str)]) -> Parts {
        let mut response = Response::builder().status(status);
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        response.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_size_line_is_the_length_in_hex() {
        for len in [0usize, 1, 9, 10, 15, 16, 255, 256, 4095, 65_536, usize::MAX] {
            let mut line = [0u8; 18];
            let end = size_line(len, &mut line);
            assert_eq!(&line[..usize::from(end)], format!("{len:x}\r\n").as_bytes());
        }
    }

    #[test]
    fn framing_follows_status_length_and_hint() {
        let full = Full::new(Bytes::from_static(b"abc"));
        assert_eq!(
            Framing::of(&parts(StatusCode::OK, &[]), &full),
            Framing::Length(3)
        );
        assert_eq!(
            Framing::of(
                &parts(StatusCode::OK, &[("content-length", "3")]),
                &Empty::<Bytes>::new()
            ),
            Framing::Length(3)
        );
        assert_eq!(
            Framing::of(&parts(StatusCode::NO_CONTENT, &[]), &full),
            Framing::None
        );
        let stream = StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<Bytes>, std::convert::Infallible>,
        >());
        assert_eq!(
            Framing::of(&parts(StatusCode::OK, &[]), &stream),
            Framing::Chunked
        );
    }

    #[test]
    fn the_head_replaces_hop_by_hop_headers() {
        let head = encode_head(
            &parts(
                StatusCode::OK,
                &[
                    ("content-type", "text/event-stream"),
                    ("connection", "keep-alive"),
                    ("transfer-encoding", "gzip"),
                    ("keep-alive", "timeout=5"),
                ],
            ),
            Framing::Chunked,
        );
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("content-type: text/event-stream\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\ndate: "), "{head}");
        assert!(
            head.ends_with("transfer-encoding: chunked\r\nconnection: close\r\n\r\n"),
            "{head}"
        );
        assert!(!head.contains("keep-alive"), "{head}");
        assert!(!head.contains("gzip"), "{head}");
    }

    /// A writer that takes at most 3 bytes of the first slice per call.
    struct Trickle(Vec<u8>);

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What `chunk` puts on the wire, written at once (a `Vec` takes every
    /// slice) and in short pieces; both must agree.
    fn written<D: Buf>(chunk: impl Fn() -> Chunk<D>) -> Vec<u8> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut whole = Vec::new();
        assert!(chunk().poll_write(&mut whole, &mut cx).is_ready());
        let mut trickle = Trickle(Vec::new());
        assert!(chunk().poll_write(&mut trickle, &mut cx).is_ready());
        assert_eq!(whole, trickle.0);
        whole
    }

    #[test]
    fn a_chunk_in_pieces_is_framed_whole() {
        // A `VecDeque` that wraps around is two slices, and describes only
        // the first in `chunks_vectored`.
        /// A `Buf` in pieces that describes only its first piece in
        /// `chunks_vectored` (the trait's default).
        struct Pieces(std::collections::VecDeque<&'static [u8]>);
        impl Buf for Pieces {
            fn remaining(&self) -> usize {
                self.0.iter().map(|p| p.len()).sum()
            }
            fn chunk(&self) -> &[u8] {
                self.0.front().copied().unwrap_or(&[])
            }
            fn advance(&mut self, mut n: usize) {
                while n > 0 {
                    let front = self.0.front_mut().expect("advance within remaining");
                    let step = n.min(front.len());
                    *front = &front[step..];
                    n -= step;
                    if front.is_empty() {
                        self.0.pop_front();
                    }
                }
            }
        }
        let pieces = || Chunk::new(Pieces([&b"aaaa"[..], b"bbbb"].into()), true);
        assert_eq!(written(pieces), b"8\r\naaaabbbb\r\n");
        // More pieces than a vectored write takes at once.
        let many = || {
            let data = Bytes::from_static(b"0").chain(Bytes::from_static(b"1"));
            let mut all: Box<dyn Buf> = Box::new(data);
            for digit in [b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9"] {
                all = Box::new(all.chain(Bytes::from_static(digit)));
            }
            Chunk::new(all, true)
        };
        assert_eq!(written(many), b"a\r\n0123456789\r\n");
        let chained = || {
            Chunk::new(
                Bytes::from_static(b"ab").chain(Bytes::from_static(b"cd")),
                true,
            )
        };
        assert_eq!(written(chained), b"4\r\nabcd\r\n");
        let raw = || Chunk::new(Bytes::from_static(b"raw"), false);
        assert_eq!(written(raw), b"raw");
    }

    /// Counts the calls of each kind of write, taking everything.
    #[derive(Default)]
    struct Calls {
        plain: usize,
        vectored: usize,
        wire: Vec<u8>,
    }

    impl AsyncWrite for Calls {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.plain += 1;
            self.wire.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.vectored += 1;
            let mut n = 0;
            for buf in bufs {
                self.wire.extend_from_slice(buf);
                n += buf.len();
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_small_chunk_is_one_plain_write_and_a_large_one_vectored() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let data = |n| Bytes::from(vec![b'x'; n]).chain(Bytes::from_static(b"yz"));
        // Size line, data and CRLF exactly fill the inline buffer.
        let fits = INLINE - "7f9\r\n".len() - "yz".len() - "\r\n".len();
        let mut calls = Calls::default();
        let mut small = Chunk::new(data(fits), true);
        assert!(small.poll_write(&mut calls, &mut cx).is_ready());
        assert_eq!((calls.plain, calls.vectored), (1, 0));
        assert_eq!(calls.wire.len(), INLINE);
        assert!(calls.wire.starts_with(b"7f9\r\nxxx"));
        assert!(calls.wire.ends_with(b"xyz\r\n"));

        // One byte more and it goes out as it is.
        let mut calls = Calls::default();
        let mut large = Chunk::new(data(fits + 1), true);
        assert!(large.poll_write(&mut calls, &mut cx).is_ready());
        assert_eq!((calls.plain, calls.vectored), (0, 1));
        assert!(calls.wire.starts_with(b"7fa\r\nxxx"));
        assert!(calls.wire.ends_with(b"xyz\r\n"));
        assert_eq!(calls.wire.len(), INLINE + 1);

        // Both agree with a writer that takes three bytes at a time.
        assert_eq!(written(|| Chunk::new(data(fits), true)).len(), INLINE);
        assert_eq!(
            written(|| Chunk::new(data(fits + 1), true)).len(),
            INLINE + 1
        );
    }

    #[test]
    fn a_chunk_size_line_is_hex() {
        let chunk = Chunk::new(Bytes::from(vec![b'x'; 0x1a2b]), true);
        assert_eq!(&chunk.size_line[..usize::from(chunk.end)], b"1a2b\r\n");
        let raw = Chunk::new(Bytes::from_static(b"x"), false);
        assert_eq!((raw.end, raw.crlf), (0, 0));
    }
}
