//! Clients on raw sockets, for what hyper's client will not do: stop
//! reading with a small receive window, send a head or a body that never
//! ends, or bytes that are not HTTP at all.

use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::sse::Client;
use super::wait::within;

/// A client on a raw socket with a small receive buffer: it sends a
/// request, reads the response head, and then reads nothing until the test
/// calls [`RawClient::into_client`], if ever.
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    pub head: String,
}

impl RawClient {
    /// `GET target` with `headers`, on a socket whose receive buffer is
    /// `recv_buffer` bytes.
    pub async fn get(
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
        recv_buffer: u32,
    ) -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(recv_buffer).expect("SO_RCVBUF");
        let mut stream = within("the TCP connect", socket.connect(addr))
            .await
            .expect("connect");
        let mut request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        let mut buf = BytesMut::with_capacity(4096);
        let head = within("the raw response head", read_head(&mut stream, &mut buf)).await;
        Self { stream, buf, head }
    }

    /// The client's end of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local address")
    }

    /// Starts reading again: the rest of the body, de-chunked, as a
    /// [`Client`].
    pub fn into_client(self) -> Client {
        assert!(
            self.head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "expected a chunked stream: {}",
            self.head
        );
        let status = status_of(&self.head);
        let chunks = futures_util::stream::unfold(Some(self), |state| async move {
            let mut raw = state?;
            match raw.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(raw))),
                Ok(None) => None,
                Err(error) => Some((Err(error), None)),
            }
        })
        .boxed();
        Client::new(status, HeaderMap::new(), chunks, None)
    }

    /// The next chunk of an HTTP/1.1 chunked body, `None` after the last.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            if let Some(at) = find(&self.buf, b"\r\n") {
                let line = std::str::from_utf8(&self.buf[..at]).map_err(|e| e.to_string())?;
                let size = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16).map_err(|e| format!("{line:?}: {e}"))?;
                if self.buf.len() >= at + 2 + size + 2 {
                    self.buf.advance(at + 2);
                    let data = self.buf.split_to(size).freeze();
                    if &self.buf[..2] != b"\r\n" {
                        return Err("chunk not followed by CRLF".into());
                    }
                    self.buf.advance(2);
                    return Ok((size > 0).then_some(data));
                }
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed inside the chunked body".into());
            }
        }
    }
}

/// Sends `request` on a fresh connection and reads until `until` appears
/// or, without `until`, until the server closes the connection; returns
/// everything read.
pub async fn exchange(addr: SocketAddr, request: &[u8], until: Option<&[u8]>) -> String {
    let mut stream = within("the TCP connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    stream.write_all(request).await.expect("send");
    let mut out = Vec::new();
    within("the answer", async {
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            out.extend_from_slice(&buf[..n]);
            let found = until.is_some_and(|until| find(&out, until).is_some());
            if n == 0 || found {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A raw chunked `POST path` with `headers`: writes the head and the first
/// chunk, `first`, and then nothing (no last chunk) until an answer
/// arrives. Returns the answer's status: any answer at all shows the server
/// decided without waiting for the rest of the body.
pub async fn post_chunked_stalled(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    first: &[u8],
) -> StatusCode {
    let mut stream = within("the TCP connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let mut bytes = chunked_head(addr, path, headers);
    bytes.extend_from_slice(&chunk(first));
    stream.write_all(&bytes).await.expect("write head");
    let head = within(
        "an answer to a body never finished",
        read_head(&mut stream, &mut BytesMut::new()),
    )
    .await;
    status_of(&head)
}

/// A raw chunked `POST path` with `headers`, of `total` bytes, written in
/// `chunk_size` chunks by a task of its own while the answer is read.
/// Returns the answer's status; the writer is stopped then.
pub async fn post_chunked_streaming(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    total: usize,
    chunk_size: usize,
) -> StatusCode {
    let stream = within("the TCP connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let (mut read, mut write) = stream.into_split();
    let head = chunked_head(addr, path, headers);
    let writer = tokio::spawn(async move {
        if write.write_all(&head).await.is_err() {
            return;
        }
        // A JSON array that stays open: only its size can be wrong.
        let mut body = vec![b' '; chunk_size];
        body[0] = b'[';
        let mut sent = 0;
        while sent < total {
            let n = chunk_size.min(total - sent);
            if write.write_all(&chunk(&body[..n])).await.is_err() {
                return;
            }
            body[0] = b' ';
            sent += n;
        }
        let _ = write.write_all(b"0\r\n\r\n").await;
    });
    let head = within(
        "an answer to a huge body",
        read_head(&mut read, &mut BytesMut::new()),
    )
    .await;
    writer.abort();
    status_of(&head)
}

fn chunked_head(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Transfer-Encoding: chunked\r\n\r\n");
    head.into_bytes()
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// Reads a response head off `stream` into `buf`; returns it, and leaves
/// in `buf` what came after it.
async fn read_head(stream: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> String {
    let end = loop {
        if let Some(at) = find(buf, b"\r\n\r\n") {
            break at;
        }
        let n = stream.read_buf(buf).await.expect("read the response head");
        assert!(n > 0, "connection closed before the response head: {buf:?}");
    };
    String::from_utf8(buf.split_to(end + 4).to_vec()).expect("ASCII head")
}

/// The status of a response head.
fn status_of(head: &str) -> StatusCode {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
