//! Helpers for the HTTP tests: servers on loopback, a hyper client whose
//! connection the test owns, a raw TCP client that can stop reading, and an
//! SSE reader that keeps the raw bytes next to what an independent parser
//! (`eventsource-stream`) makes of them.
#![cfg(not(loom))]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use bytes::{Buf, Bytes, BytesMut};
use eventsource_stream::{Event as SseEvent, EventStream};
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, Stream, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyStream, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[path = "../wait/mod.rs"]
mod wait;
#[allow(unused_imports)]
pub use wait::{eventually, within, PATIENCE};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves `service` over HTTP/1.1 on a loopback port with plain hyper (no
/// axum): `hyper::server::conn::http1` and `TowerToHyperService`.
pub async fn serve_hyper<S, B>(service: S) -> SocketAddr
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    serve_hyper_on(listener, service)
}

/// A loopback listener whose accepted sockets have a small send buffer
/// (Linux passes `SO_SNDBUF` on to them), so that what a stalled client
/// leaves buffered does not depend on the host's TCP autotuning.
pub fn listener_with_send_buffer(size: u32) -> TcpListener {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_send_buffer_size(size).expect("SO_SNDBUF");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    socket.listen(128).expect("listen")
}

/// Like [`serve_hyper`], on a listener the test made.
pub fn serve_hyper_on<S, B>(listener: TcpListener, service: S) -> SocketAddr
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Serves an axum router with `axum::serve` on a loopback port.
pub async fn serve_axum(router: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("axum::serve");
    });
    addr
}

/// The inner service of the plain-hyper tests: echoes what it was asked,
/// so a test can tell it saw the request unchanged.
pub fn echo_inner() -> impl tower::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|request: Request<Incoming>| async move {
        let probe = request
            .headers()
            .get("x-probe")
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .unwrap_or_default();
        let body = format!(
            "inner {} {} x-probe={probe}",
            request.method(),
            request
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("")
        );
        let response = Response::builder()
            .header("x-inner", "yes")
            .body(Full::new(Bytes::from(body)))
            .expect("response");
        Ok::<_, Infallible>(response)
    })
}

/// Aborts the client connection's task when dropped, which closes the
/// socket: what a browser tab closing looks like to the server.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One response, read chunk by chunk. Keeps every byte received (`raw`) and
/// feeds the same bytes to `eventsource-stream`, whose events queue up in
/// `parsed`.
pub struct Client {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: BoxStream<'static, Result<Bytes, String>>,
    raw: Vec<u8>,
    feed: Option<mpsc::UnboundedSender<Bytes>>,
    parser: Pin<Box<dyn Stream<Item = Result<SseEvent, String>> + Send>>,
    parsed: VecDeque<SseEvent>,
    ended: bool,
    _conn: Option<AbortOnDrop>,
}

impl Client {
    fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: BoxStream<'static, Result<Bytes, String>>,
        conn: Option<AbortOnDrop>,
    ) -> Self {
        let (feed, rx) = mpsc::unbounded_channel::<Bytes>();
        let input = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|bytes| (Ok::<_, Infallible>(bytes), rx))
        });
        let parser = EventStream::new(input).map(|item| item.map_err(|e| e.to_string()));
        Self {
            status,
            headers,
            body,
            raw: Vec::new(),
            feed: Some(feed),
            parser: Box::pin(parser),
            parsed: VecDeque::new(),
            ended: false,
            _conn: conn,
        }
    }

    /// A header's value as a string, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    /// Everything received so far.
    pub fn raw(&self) -> String {
        String::from_utf8(self.raw.clone()).expect("the stream is UTF-8")
    }

    /// Whether the body has ended.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Reads one more chunk; `false` once the body has ended.
    async fn pump(&mut self) -> bool {
        if self.ended {
            return false;
        }
        match self.body.next().await {
            Some(Ok(chunk)) => {
                self.raw.extend_from_slice(&chunk);
                if let Some(feed) = &self.feed {
                    feed.send(chunk).expect("parser input open");
                }
            }
            Some(Err(error)) => panic!("body error: {error}"),
            None => {
                self.ended = true;
                self.feed = None;
            }
        }
        while let Some(Some(item)) = self.parser.next().now_or_never() {
            self.parsed.push_back(item.expect("valid SSE"));
        }
        !self.ended
    }

    /// The next event the parser dispatches; fails the test if the stream
    /// ends first or nothing comes within [`PATIENCE`].
    pub async fn next_event(&mut self) -> SseEvent {
        within("the next event", async {
            loop {
                if let Some(event) = self.parsed.pop_front() {
                    return event;
                }
                if !self.pump().await {
                    panic!("the stream ended; received so far: {:?}", self.raw());
                }
            }
        })
        .await
    }

    /// The next `n` events.
    pub async fn events(&mut self, n: usize) -> Vec<SseEvent> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(self.next_event().await);
        }
        events
    }

    /// Reads until `condition` holds for the raw text received.
    pub async fn wait_raw(&mut self, what: &str, condition: impl Fn(&str) -> bool) {
        within(what, async {
            while !condition(&self.raw()) {
                if !self.pump().await {
                    assert!(
                        condition(&self.raw()),
                        "the stream ended before {what}: {:?}",
                        self.raw()
                    );
                    return;
                }
            }
        })
        .await;
    }

    /// Reads to the end of the body; returns the events not yet taken.
    pub async fn read_to_end(&mut self) -> Vec<SseEvent> {
        within("the end of the body", async { while self.pump().await {} }).await;
        self.parsed.drain(..).collect()
    }

    /// The whole body as text (for short answers).
    pub async fn text(mut self) -> String {
        self.read_to_end().await;
        self.raw()
    }
}

/// Sends one request on a fresh connection and returns the response head,
/// with the body still to read. Dropping the `Client` closes the connection.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Client {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    let conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let mut builder = Request::builder()
        .method(method)
        .uri(target)
        .header(http::header::HOST, addr.to_string());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let response = within("the response head", sender.send_request(request))
        .await
        .expect("response");
    let (parts, incoming) = response.into_parts();
    let body = BodyStream::new(incoming)
        .filter_map(|frame| async move {
            match frame {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(error) => Some(Err(error.to_string())),
            }
        })
        .boxed();
    Client::new(parts.status, parts.headers, body, Some(conn))
}

/// `GET target` with extra headers.
pub async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Client {
    request(addr, Method::GET, target, headers, "").await
}

/// A client on a raw socket with a small receive buffer: it sends a
/// request, reads the response head, and then reads nothing until the test
/// calls [`RawClient::into_client`].
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    pub head: String,
}

impl RawClient {
    pub async fn get(addr: SocketAddr, target: &str, recv_buffer: u32) -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(recv_buffer).expect("SO_RCVBUF");
        let mut stream = socket.connect(addr).await.expect("connect");
        let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        let mut buf = BytesMut::with_capacity(4096);
        let end = within("the raw response head", async {
            loop {
                if let Some(at) = find(&buf, b"\r\n\r\n") {
                    return at;
                }
                let n = stream.read_buf(&mut buf).await.expect("read head");
                assert!(n > 0, "connection closed before the response head");
            }
        })
        .await;
        let head = String::from_utf8(buf.split_to(end + 4).to_vec()).expect("ASCII head");
        Self { stream, buf, head }
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
        let status = self
            .head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .expect("status line");
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

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The sequence number of an `EPOCH-SEQ` id.
pub fn seq_of(id: &str) -> u64 {
    id.split_once('-')
        .and_then(|(_, seq)| seq.parse().ok())
        .unwrap_or_else(|| panic!("not an EPOCH-SEQ id: {id:?}"))
}

/// The parsed JSON data of an event.
pub fn json_of(event: &SseEvent) -> serde_json::Value {
    serde_json::from_str(&event.data)
        .unwrap_or_else(|e| panic!("data is not JSON ({e}): {:?}", event.data))
}

/// What a lax client sees: every block that a blank line closes carries a
/// `data:` line. Some clients (Python's `httpx-sse`) report a block without
/// data as an empty `message`, though the standard dispatches nothing.
pub fn assert_every_block_has_data(raw: &str) {
    let mut blocks: Vec<&str> = raw.split("\n\n").collect();
    // After the last blank line: an unfinished block, or nothing.
    blocks.pop();
    for block in blocks {
        assert!(
            block.lines().any(|line| line.starts_with("data:")),
            "a block without data: {block:?} in {raw:?}"
        );
    }
}

/// The raw text with the comment lines (keep-alives) taken out.
pub fn without_comments(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while !rest.is_empty() {
        let (line, tail) = match rest.find('\n') {
            Some(at) => (&rest[..=at], &rest[at + 1..]),
            None => (rest, ""),
        };
        // Keep-alives are comment lines alone, with no blank line after.
        if !line.starts_with(':') {
            out.push_str(line);
        }
        rest = tail;
    }
    out
}
