//! Helpers for the mailbox HTTP tests: one-shot JSON requests on fresh
//! loopback connections, SSE "tabs" whose connection the test owns (drop
//! one to cut it), and raw-socket requests with a chunked body the test
//! controls byte by byte.
#![cfg(not(loom))]

use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use eventsource_stream::{Event as SseEvent, Eventsource};
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

#[path = "../wait/mod.rs"]
mod wait;
#[allow(unused_imports)]
pub use wait::{eventually, within, PATIENCE};

/// The header the test app takes identity from.
pub const USER_HEADER: &str = "x-user";

/// Aborts the client connection task on drop, which closes the socket: a
/// browser tab closing, or a network cut, as the server sees it.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `request` on a fresh HTTP/1.1 connection; returns the response
/// head, its body still to read, and the connection's guard.
async fn send(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> (http::response::Parts, Incoming, AbortOnDrop) {
    let tcp = within("the TCP connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    let conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let response = within("the response head", sender.send_request(request))
        .await
        .expect("response");
    let (parts, body) = response.into_parts();
    (parts, body, conn)
}

fn build(
    addr: SocketAddr,
    method: Method,
    path: &str,
    user: Option<&str>,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string());
    if let Some(user) = user {
        builder = builder.header(USER_HEADER, user);
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(body)).expect("request")
}

/// A whole short answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    /// The body as JSON; fails the test if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// A header's value, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    /// The `error` message of a refusal.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {:?}", self.body))
            .to_owned()
    }
}

/// `method path` as `user` (no identity header if `None`) with `body`,
/// on a fresh connection; reads the whole answer.
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    user: Option<&str>,
    body: impl Into<Bytes>,
) -> Answer {
    let body = body.into();
    let headers: &[(&str, &str)] = if body.is_empty() {
        &[]
    } else {
        &[("content-type", "application/json")]
    };
    let request = build(addr, method, path, user, headers, body);
    let (parts, incoming, _conn) = send(addr, request).await;
    let bytes = within("the response body", incoming.collect())
        .await
        .expect("response body")
        .to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(bytes.to_vec()).expect("UTF-8 body"),
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<SseEvent, String>> + Send>>;

/// One open events stream: a browser tab. Dropping it cuts the connection,
/// whatever the client had or had not read.
pub struct Tab {
    events: Events,
    _conn: AbortOnDrop,
}

impl Tab {
    /// Opens `/events` as `user`, with `Last-Event-ID: resume` if given;
    /// fails the test unless it is a 200 event stream. Nothing of the body
    /// is read yet.
    pub async fn open(addr: SocketAddr, user: &str, resume: Option<&str>) -> Tab {
        Self::open_at(addr, user, "/events", resume).await
    }

    /// Like [`Tab::open`], at `path` (e.g. with a `lastEventId` query).
    pub async fn open_at(addr: SocketAddr, user: &str, path: &str, resume: Option<&str>) -> Tab {
        let headers: Vec<(&str, &str)> =
            resume.map(|id| ("last-event-id", id)).into_iter().collect();
        let request = build(addr, Method::GET, path, Some(user), &headers, Bytes::new());
        let (parts, incoming, conn) = send(addr, request).await;
        assert_eq!(
            parts.status,
            StatusCode::OK,
            "the events route refused {user}"
        );
        assert_eq!(
            parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"text/event-stream"[..])
        );
        let events = incoming
            .into_data_stream()
            .eventsource()
            .map(|item| item.map_err(|e| e.to_string()))
            .boxed();
        Tab {
            events,
            _conn: conn,
        }
    }

    /// The next event dispatched (comments and the data-less `retry:` frame
    /// are not events); fails if the stream ends or nothing comes.
    pub async fn next_event(&mut self) -> SseEvent {
        match within("the next event", self.events.next()).await {
            Some(Ok(event)) => event,
            Some(Err(error)) => panic!("stream error: {error}"),
            None => panic!("the stream ended"),
        }
    }

    /// Reads up to the `marker` event whose data is `tag`; returns every
    /// other event before it, markers left out.
    pub async fn until_marker(&mut self, marker: &str, tag: &str) -> Vec<SseEvent> {
        let mut seen = Vec::new();
        loop {
            let event = self.next_event().await;
            if event.event == marker {
                if event.data == tag {
                    return seen;
                }
                continue;
            }
            seen.push(event);
        }
    }
}

/// A raw `POST path` as `user` with `Transfer-Encoding: chunked`: writes
/// the head and the first chunk, `first`, and then nothing (no last chunk)
/// until an answer arrives. Returns the answer's status: any answer at all
/// shows the server decided without waiting for the rest of the body.
pub async fn post_chunked_stalled(
    addr: SocketAddr,
    path: &str,
    user: &str,
    first: &[u8],
) -> StatusCode {
    let mut stream = within("the TCP connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let mut bytes = chunked_head(addr, path, user);
    bytes.extend_from_slice(&chunk(first));
    stream.write_all(&bytes).await.expect("write head");
    within(
        "an answer to a body never finished",
        read_status(&mut stream),
    )
    .await
}

/// A raw chunked `POST path` as `user` of `total` bytes, written in
/// `chunk_size` chunks by a task of its own while the answer is read.
/// Returns the answer's status; the writer is stopped then.
pub async fn post_chunked_streaming(
    addr: SocketAddr,
    path: &str,
    user: &str,
    total: usize,
    chunk_size: usize,
) -> StatusCode {
    let stream = within("the TCP connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let (mut read, mut write) = stream.into_split();
    let head = chunked_head(addr, path, user);
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
    let status = within("an answer to a huge body", read_status(&mut read)).await;
    writer.abort();
    status
}

fn chunked_head(addr: SocketAddr, path: &str, user: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{USER_HEADER}: {user}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes()
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// Reads a response head off a raw socket and returns its status.
async fn read_status(stream: &mut (impl AsyncReadExt + Unpin)) -> StatusCode {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.expect("read the answer");
        assert!(n > 0, "connection closed before an answer: {buf:?}");
        buf.extend_from_slice(&byte[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    StatusCode::from_u16(code).expect("status code")
}
