//! Helpers for `tests/server_mode.rs`: bounded waits, an axum server on
//! loopback, a hyper HTTP/1 client whose connection the test owns, an SSE
//! reader that splits the raw wire into frames (so that a test can check
//! which lines a frame has, e.g. that the greeting carries no `id:`), and
//! in-process calls of a tower service.
#![cfg(not(loom))]
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};

#[path = "../wait/mod.rs"]
mod wait;
#[allow(unused_imports)]
pub use wait::{eventually, eventually_async, within, PATIENCE};

/// An axum server on a loopback port, shut down gracefully on `signal`.
pub struct AxumServer {
    pub addr: SocketAddr,
    pub task: JoinHandle<std::io::Result<()>>,
}

pub async fn spawn_axum<F>(app: axum::Router, signal: F) -> AxumServer
where
    F: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await
    });
    AxumServer { addr, task }
}

/// A complete answer: status, headers and the whole body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: impl header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 connection owned by the test, usable for several requests
/// in a row (keep-alive).
pub struct HttpConn {
    sender: SendRequest<Empty<Bytes>>,
    _driver: JoinHandle<()>,
}

impl HttpConn {
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = within("TCP connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        let (sender, connection) = within(
            "HTTP handshake",
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)),
        )
        .await
        .expect("handshake");
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Self {
            sender,
            _driver: driver,
        }
    }

    /// Sends a request and returns the response head and its body unread.
    pub async fn send(&mut self, method: Method, path: &str) -> Response<Incoming> {
        within("the connection to be ready", self.sender.ready())
            .await
            .expect("connection usable");
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost")
            .body(Empty::new())
            .expect("request");
        within("the response head", self.sender.send_request(request))
            .await
            .expect("response")
    }

    /// Sends a request and reads the whole answer.
    pub async fn request(&mut self, method: Method, path: &str) -> Reply {
        let response = self.send(method, path).await;
        let (parts, body) = response.into_parts();
        let body = within("the response body", body.collect())
            .await
            .expect("body")
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// One request on a fresh connection.
pub async fn fetch(addr: SocketAddr, method: Method, path: &str) -> Reply {
    HttpConn::open(addr).await.request(method, path).await
}

/// One SSE frame as it was on the wire: the lines of one block, without
/// the blank line that ends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    pub text: String,
}

impl RawFrame {
    /// `(field, value)` of every line, a comment as `("", text)`.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.text.split('\n').map(|line| {
            if let Some(comment) = line.strip_prefix(':') {
                return ("", comment);
            }
            match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line, ""),
            }
        })
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields().find(|(f, _)| *f == name).map(|(_, v)| v)
    }

    pub fn id(&self) -> Option<&str> {
        self.field("id")
    }

    pub fn event_type(&self) -> Option<&str> {
        self.field("event")
    }

    pub fn retry(&self) -> Option<&str> {
        self.field("retry")
    }

    /// The `data:` lines joined with LF, `None` if there are none.
    pub fn data(&self) -> Option<String> {
        let lines: Vec<&str> = self
            .fields()
            .filter(|(f, _)| *f == "data")
            .map(|(_, v)| v)
            .collect();
        (!lines.is_empty()).then(|| lines.join("\n"))
    }

    pub fn json(&self) -> serde_json::Value {
        let data = self
            .data()
            .unwrap_or_else(|| panic!("frame has no data: {:?}", self.text));
        serde_json::from_str(&data)
            .unwrap_or_else(|e| panic!("frame data is not JSON ({e}): {:?}", self.text))
    }

    pub fn is_comment(&self) -> bool {
        self.fields().all(|(f, _)| f.is_empty())
    }

    pub fn is_state(&self) -> bool {
        self.event_type() == Some("server.state")
    }
}

/// An open event stream read over a real connection.
pub struct SseClient {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    buffer: Vec<u8>,
    /// Every byte received, for a second opinion from `eventsource-stream`.
    pub raw: Vec<u8>,
    ended: bool,
    _conn: HttpConn,
}

impl SseClient {
    /// `GET path` on a fresh connection; the response head is read, the
    /// body not yet.
    pub async fn connect(addr: SocketAddr, path: &str) -> Self {
        let mut conn = HttpConn::open(addr).await;
        let response = conn.send(Method::GET, path).await;
        let (parts, body) = response.into_parts();
        Self {
            status: parts.status,
            headers: parts.headers,
            body,
            buffer: Vec::new(),
            raw: Vec::new(),
            ended: false,
            _conn: conn,
        }
    }

    /// The next frame, `None` once the stream has ended cleanly. Panics if
    /// the body fails or ends inside a frame, or nothing comes within
    /// [`PATIENCE`].
    pub async fn next_frame(&mut self) -> Option<RawFrame> {
        loop {
            // A comment line where a block starts is a frame of its own:
            // keep-alives have no blank line after them.
            if self.buffer.first() == Some(&b':') {
                if let Some(at) = self.buffer.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.buffer.drain(..=at).collect();
                    let text = String::from_utf8(line[..at].to_vec()).expect("UTF-8 stream");
                    return Some(RawFrame { text });
                }
            }
            if let Some(at) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..at + 2).collect();
                let text = String::from_utf8(block[..at].to_vec()).expect("UTF-8 stream");
                return Some(RawFrame { text });
            }
            if self.ended {
                assert!(
                    self.buffer.is_empty(),
                    "the stream ended inside a frame: {:?}",
                    String::from_utf8_lossy(&self.buffer)
                );
                return None;
            }
            match within("the next SSE bytes", self.body.frame()).await {
                None => self.ended = true,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                        self.raw.extend_from_slice(&data);
                    }
                }
                Some(Err(error)) => panic!("the event stream failed: {error}"),
            }
        }
    }

    /// The next frame that is not a keep-alive comment.
    pub async fn next_non_comment(&mut self) -> Option<RawFrame> {
        loop {
            let frame = self.next_frame().await?;
            if !frame.is_comment() {
                return Some(frame);
            }
        }
    }

    /// Reads frames until one satisfies `stop` (returned, with everything
    /// before it); panics if the stream ends first.
    pub async fn read_until(
        &mut self,
        mut stop: impl FnMut(&RawFrame) -> bool,
    ) -> (Vec<RawFrame>, RawFrame) {
        let mut before = Vec::new();
        loop {
            let frame = self
                .next_frame()
                .await
                .unwrap_or_else(|| panic!("the stream ended first; read so far: {before:?}"));
            if stop(&frame) {
                return (before, frame);
            }
            before.push(frame);
        }
    }

    /// Every remaining frame, up to the end of the stream.
    pub async fn read_to_end(&mut self) -> Vec<RawFrame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next_frame().await {
            frames.push(frame);
        }
        frames
    }

    /// What an independent parser (`eventsource-stream`) dispatched from
    /// every byte received so far.
    pub async fn parsed_by_eventsource(&self) -> Vec<eventsource_stream::Event> {
        use eventsource_stream::Eventsource;
        let chunks = vec![Ok::<_, Infallible>(Bytes::from(self.raw.clone()))];
        futures_util::stream::iter(chunks)
            .eventsource()
            .map(|event| event.expect("eventsource-stream parses the stream"))
            .collect()
            .await
    }
}

/// Calls `service` in process and reads the whole answer.
pub async fn call<S, B>(service: S, request: Request<Full<Bytes>>) -> Reply
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let response = within("the service's answer", service.oneshot(request))
        .await
        .expect("the service answers");
    let (parts, body) = response.into_parts();
    let body = within("the body", body.collect())
        .await
        .expect("body")
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A request with an empty body.
pub fn request(method: Method, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// What [`counting_inner`] returns: a cloneable inner service.
pub trait InnerService:
    Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone + Send
{
}

impl<T> InnerService for T where
    T: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Clone
        + Send
{
}

/// An inner service (a `tower::service_fn`) answering `200 inner` and
/// counting its calls.
pub fn counting_inner() -> (Arc<AtomicUsize>, impl InnerService) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = tower::service_fn(move |_request: Request<Full<Bytes>>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"inner")))) }
    });
    (calls, service)
}

/// A small deterministic generator (xorshift64*), so that a failing run can
/// be replayed from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}
