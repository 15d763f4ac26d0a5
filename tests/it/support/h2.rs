//! HTTP/2 over cleartext with prior knowledge (h2c): a client connection
//! the test owns, on which it opens as many event streams as it likes, and
//! a plain hyper server that speaks HTTP/1.1 and h2c on one port
//! (hyper-util's `auto::Builder`) and counts the connections it accepts.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::Router;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Version};
use http_body_util::{BodyStream, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tower_sse::serve::PeerAddr;

use super::server::loopback;
use super::sse::Client;
use super::wait::within;

/// One h2c connection owned by the test; every stream opened on it shares
/// its one TCP connection. Dropping it cuts the connection.
pub struct H2Connection {
    addr: SocketAddr,
    local: SocketAddr,
    sender: SendRequest<Empty<Bytes>>,
    driver: Option<JoinHandle<Result<(), hyper::Error>>>,
}

impl H2Connection {
    /// Connects and sends the preface and settings (prior knowledge: no
    /// upgrade, no TLS).
    pub async fn open(addr: SocketAddr) -> Self {
        let tcp = within("the TCP connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        let local = tcp.local_addr().expect("local address");
        let (sender, connection) = within(
            "the HTTP/2 handshake",
            http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)),
        )
        .await
        .expect("h2 handshake");
        Self {
            addr,
            local,
            sender,
            driver: Some(tokio::spawn(connection)),
        }
    }

    /// The client's end of the one TCP connection: the peer address the
    /// server sees for every request on it.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Opens a stream: `GET target` with `headers`; returns once the
    /// response head has arrived (an HTTP/2 one: checked), with the body to
    /// read. The connection outlives the [`Client`].
    pub async fn get(&self, target: &str, headers: &[(&str, &str)]) -> Client {
        let mut sender = self.sender.clone();
        within("the h2 connection to be ready", sender.ready())
            .await
            .expect("h2 connection usable");
        let mut builder = Request::get(format!("http://{}{target}", self.addr));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Empty::new()).expect("request");
        let response = within("the h2 response head", sender.send_request(request))
            .await
            .expect("h2 response");
        assert_eq!(response.version(), Version::HTTP_2, "GET {target}");
        let (parts, incoming) = response.into_parts();
        let body = BodyStream::new(incoming)
            .filter_map(|frame| async move {
                match frame {
                    Ok(frame) => frame.into_data().ok().map(Ok),
                    Err(error) => Some(Err(error.to_string())),
                }
            })
            .boxed();
        Client::new(parts.status, parts.headers, body, None)
    }

    /// Waits for the connection to end (the server's GOAWAY, then the
    /// close) and returns how it ended.
    pub async fn closed(mut self) -> Result<(), hyper::Error> {
        let driver = self.driver.take().expect("the driver");
        within("the h2 connection to close", driver)
            .await
            .expect("the connection task")
    }
}

impl Drop for H2Connection {
    fn drop(&mut self) {
        if let Some(driver) = &self.driver {
            driver.abort();
        }
    }
}

/// A plain hyper server answering HTTP/1.1 and h2c on one port.
pub struct AutoServer {
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Ends once `signal` has completed and every connection has finished
    /// (hyper-util's `GracefulShutdown`).
    pub task: JoinHandle<()>,
}

/// Serves `router` with hyper-util's `auto::Builder` on a loopback port:
/// each connection is HTTP/1.1 or HTTP/2 as its first bytes say, and each
/// request carries the peer's [`PeerAddr`], as under `tower_sse::serve`.
/// Once `signal` completes it stops accepting, asks every connection to
/// shut down gracefully (an h2 `GOAWAY`) and waits for them.
pub async fn serve_auto_until<F>(router: Router, signal: F) -> AutoServer
where
    F: Future<Output = ()> + Send + 'static,
{
    let listener = loopback().await;
    let addr = listener.local_addr().expect("local addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        let graceful = GracefulShutdown::new();
        tokio::pin!(signal);
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut signal => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                },
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let service = tower::util::MapRequest::new(
                router.clone(),
                move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert(PeerAddr(peer));
                    request
                },
            );
            let connection = builder
                .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
        drop(listener);
        graceful.shutdown().await;
    });
    AutoServer {
        addr,
        accepted,
        task,
    }
}
