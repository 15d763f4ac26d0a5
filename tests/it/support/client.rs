//! HTTP/1.1 with hyper's client over loopback: connections the test owns
//! (dropping one cuts it, which is what a closing tab or a network cut
//! looks like to the server), whole answers, and the same answers from a
//! service called in process.

use std::fmt::Debug;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{AsHeaderName, HOST};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, BodyStream, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};

use super::sse::Client;
use super::wait::within;

/// Aborts a task when dropped: the connection task here, so that dropping
/// the [`Connection`] closes its socket whatever was left unread.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One HTTP/1.1 connection owned by the test, usable for several requests
/// in a row (keep-alive); closed when dropped.
pub struct Connection {
    addr: SocketAddr,
    sender: SendRequest<Full<Bytes>>,
    _driver: AbortOnDrop,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> Self {
        let tcp = within("the TCP connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        let (sender, connection) =
            within("the HTTP handshake", http1::handshake(TokioIo::new(tcp)))
                .await
                .expect("handshake");
        let driver = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        Self {
            addr,
            sender,
            _driver: driver,
        }
    }

    /// Sends `request`, with a `Host` header unless it has one, and returns
    /// the response head; its body is still to read.
    pub async fn send(&mut self, mut request: Request<Full<Bytes>>) -> Response<Incoming> {
        within("the connection to be ready", self.sender.ready())
            .await
            .expect("connection usable");
        let host = HeaderValue::from_str(&self.addr.to_string()).expect("an address is a header");
        request.headers_mut().entry(HOST).or_insert(host);
        within("the response head", self.sender.send_request(request))
            .await
            .expect("response")
    }

    /// `method target` without a body; reads the whole answer.
    pub async fn fetch(&mut self, method: Method, target: &str) -> Reply {
        let response = self.send(request(method, target)).await;
        Reply::read(response).await
    }
}

/// Sends one request on a fresh connection and returns the response head,
/// with the body still to read. Dropping the [`Client`] closes the
/// connection.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Client {
    let mut conn = Connection::open(addr).await;
    let response = conn.send(build(method, target, headers, body)).await;
    reading(response, Some(conn))
}

/// A client reading `response`'s body as it arrives (over HTTP/1.1 or
/// HTTP/2); `conn`, if any, is closed when the client is dropped.
pub fn reading(response: Response<Incoming>, conn: Option<Connection>) -> Client {
    let (parts, incoming) = response.into_parts();
    let body = BodyStream::new(incoming)
        .filter_map(|frame| async move {
            match frame {
                Ok(frame) => frame.into_data().ok().map(Ok),
                Err(error) => Some(Err(error.to_string())),
            }
        })
        .boxed();
    Client::new(parts.status, parts.headers, body, conn)
}

/// `GET target` with extra headers.
pub async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Client {
    send(addr, Method::GET, target, headers, "").await
}

/// One request on a fresh connection; reads the whole answer.
pub async fn fetch(
    addr: SocketAddr,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut conn = Connection::open(addr).await;
    let response = conn.send(build(method, target, headers, body)).await;
    Reply::read(response).await
}

/// Calls `service` in process and reads the whole answer.
pub async fn call<S, B>(service: S, request: Request<Full<Bytes>>) -> Reply
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: Debug,
{
    let response = within("the service's answer", service.oneshot(request))
        .await
        .expect("the service answers");
    Reply::read(response).await
}

/// A request without headers or body, for a [`Connection`] or a service
/// called in process.
pub fn request(method: Method, target: &str) -> Request<Full<Bytes>> {
    build(method, target, &[], "")
}

fn build(
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(target);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request")
}

/// A whole answer: status, headers and body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    async fn read<B>(response: Response<B>) -> Self
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Debug,
    {
        let (parts, body) = response.into_parts();
        let body = within("the response body", body.collect())
            .await
            .expect("response body")
            .to_bytes();
        Self {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// A header's value, if present.
    pub fn header(&self, name: impl AsHeaderName) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    /// The body as text; fails the test if it is not UTF-8.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body)
            .unwrap_or_else(|e| panic!("body is not UTF-8 ({e}): {:?}", self.body))
    }

    /// The body as JSON; fails the test if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The `error` message of a refusal.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {:?}", self.body))
            .to_owned()
    }
}
