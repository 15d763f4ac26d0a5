//! Servers on loopback ports: plain hyper (HTTP/1.1, or HTTP/1.1 and h2c
//! with a graceful shutdown), `axum::serve` and `tower_sse::serve`. Each
//! runs on a task of the test's runtime and ends with it, unless the test
//! stops it itself.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::Router;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tower_sse::serve::PeerAddr;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A listener on a free loopback port.
pub async fn loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
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
    socket.listen(1024).expect("listen")
}

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
    serve_hyper_on(loopback().await, service)
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

/// Serves `router` with `axum::serve` on a loopback port.
pub async fn serve_axum(router: Router) -> SocketAddr {
    serve_axum_on(loopback().await, router)
}

/// Like [`serve_axum`], on a listener the test made (one that tunes the
/// sockets it accepts, say).
pub fn serve_axum_on<L>(listener: L, router: Router) -> SocketAddr
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("axum::serve");
    });
    addr
}

/// An `axum::serve` that shuts down gracefully: the test awaits `task` to
/// see it return.
pub struct AxumServer {
    pub addr: SocketAddr,
    pub task: JoinHandle<std::io::Result<()>>,
}

/// Serves `router` with `axum::serve` on a loopback port, shut down
/// gracefully once `signal` completes.
pub async fn serve_axum_until<F>(router: Router, signal: F) -> AxumServer
where
    F: Future<Output = ()> + Send + 'static,
{
    let listener = loopback().await;
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(signal)
            .await
    });
    AxumServer { addr, task }
}

/// Runs a `tower_sse::serve` the test configured; returns its address.
pub fn spawn_serve(serve: tower_sse::serve::Serve<Router>) -> SocketAddr {
    let addr = serve.local_addr().expect("local addr");
    tokio::spawn(async move { serve.into_future().await.expect("serve") });
    addr
}

/// Runs a `tower_sse::serve` the test configured until `signal` completes
/// and its connections have finished.
pub fn spawn_serve_until<F>(
    serve: tower_sse::serve::Serve<Router>,
    signal: F,
) -> (SocketAddr, JoinHandle<std::io::Result<()>>)
where
    F: Future<Output = ()> + Send + 'static,
{
    let addr = serve.local_addr().expect("local addr");
    (
        addr,
        tokio::spawn(serve.with_graceful_shutdown(signal).into_future()),
    )
}

/// A plain hyper server with a graceful shutdown; see [`serve_hyper_until`].
pub struct HyperServer {
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// Ends once the signal has completed and every connection has
    /// finished (hyper-util's `GracefulShutdown`).
    pub task: JoinHandle<()>,
}

/// Serves `service` with plain hyper on a loopback port, as an app without
/// axum would: hyper-util's `auto::Builder` (each connection HTTP/1.1 or
/// h2c as its first bytes say), each request carrying the peer's
/// [`PeerAddr`] as under `tower_sse::serve`. Once `signal` completes it
/// stops accepting, asks every connection to finish (an h2 `GOAWAY`) and
/// waits for them.
pub async fn serve_hyper_until<S, B, F>(service: S, signal: F) -> HyperServer
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
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
                service.clone(),
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
    HyperServer {
        addr,
        accepted,
        task,
    }
}
