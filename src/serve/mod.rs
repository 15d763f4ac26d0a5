//! A server for a tower service whose HTTP/1.1 event streams cost a few
//! kilobytes each, with HTTP/2 (h2c) through hyper (feature `serve`).
//!
//! An idle event stream served by hyper (and so by `axum::serve`) keeps
//! hyper's per-connection read and write buffers, 8 KiB each, for as long
//! as the stream lives: at ten thousand open streams that is most of the
//! server's memory, spent on buffers an event stream never uses. An
//! `EventSource` sends one request and then only reads, and the crate's
//! frames are already encoded, so a stream needs no buffer at all.
//!
//! [`serve`] accepts connections and reads each one's first request head
//! itself, into a short-lived buffer. When that request is a plain `GET`
//! asking for `text/event-stream` (every `EventSource` sends that `Accept`),
//! or a `GET` on one of the [`stream_path`](Serve::stream_path)s, it calls
//! the service and writes the response itself: head, then each body frame
//! straight from the frame's own bytes in one vectored write, chunked, with
//! `Connection: close`. Anything else (other methods, bodies, upgrades,
//! HTTP/1.0, malformed heads, and HTTP/2 with prior knowledge) goes to
//! hyper together with the bytes already read, so hyper answers it exactly
//! as it would have without this server.
//!
//! The service sees the same requests either way: a
//! [`Request<RequestBody>`](RequestBody) with the peer's address in its
//! extensions as a [`PeerAddr`] and, with this crate's `axum` feature, as
//! `axum::extract::ConnectInfo<SocketAddr>` (without it, a handler that
//! extracts `ConnectInfo` fails its requests: enable the feature or read
//! `Extension<PeerAddr>`). The service is cloned for each connection and
//! there is no make-service step: pass an axum `Router` itself, not
//! `into_make_service_with_connect_info()`.
//!
//! ```no_run
//! use axum::Router;
//! use tower_sse::{Broker, Shutdown, SseLayer};
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let broker = Broker::new();
//! let shutdown = Shutdown::new().broker(&broker);
//! let app = Router::new().layer(SseLayer::new(broker.clone()));
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! tower_sse::serve(listener, app)
//!     .with_graceful_shutdown(shutdown.wait())
//!     .await
//! # }
//! ```
//!
//! # What it does not do
//!
//! - The choice is made once per connection, on its first request: a
//!   stream request that arrives on a connection hyper already serves (a
//!   browser reusing a keep-alive connection from loading the page) is
//!   served by hyper, correctly, at hyper's cost.
//! - TLS, and so HTTP/2 negotiated by ALPN: terminate TLS in a proxy in
//!   front (as event streams usually are), or serve TLS yourself with
//!   hyper (the demo's `--tls` shows how).
//!
//! # What a stream costs, by protocol
//!
//! - **HTTP/1.1, a stream request first on its connection**: this server's
//!   path: no hyper buffers, the stream's state (~2 KB), the frame being
//!   written, and the kernel's send buffer ([`Serve::stream_send_buffer`]).
//!   One TCP connection per stream, so a browser's six connections per
//!   origin are six streams at most.
//! - **HTTP/1.1 through hyper** (a stream on a keep-alive connection that
//!   served something else first): hyper's read and write buffers (8 KiB
//!   each) and its write queue, on top of the stream's state.
//! - **HTTP/2 (h2c)**: hyper's HTTP/2 server. A connection's buffers and
//!   its send buffer are shared by every stream on it, so a page's many
//!   `EventSource`s cost one connection; each stream adds hyper's and
//!   h2's state for a stream and its task (about 2.2 to 2.5 KB an idle
//!   stream, against 2.4 KB on the lean HTTP/1.1 path with a connection of its
//!   own: `bash bench/stream_memory.sh`, RSS only, not counting the
//!   kernel's socket buffers, which HTTP/2 shares too). What waits for a reader that
//!   stops reading is bounded by the window the client grants (h2's
//!   default 64 KiB; browsers grant megabytes) and by hyper's send buffer
//!   per stream (400 KiB); past that the stream is not polled, so the
//!   broker's retention decides, as for any slow reader. The connection's
//!   window is shared by its streams, so a client that stops reading one
//!   stream can stall its own others, never another client's. hyper
//!   serves up to 200 concurrent streams per connection (its default);
//!   more are refused with `REFUSED_STREAM`.
//!
//! A graceful shutdown waits for every stream to end, as hyper's does
//! (HTTP/2 connections are sent `GOAWAY` first); a
//! [`Shutdown`](crate::Shutdown) closing the brokers is what ends them,
//! each with its final frame.

mod head;
mod io;
mod stream;

use std::fmt;
use std::future::{Future, IntoFuture};
use std::io as stdio;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as AutoBuilder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower_service::Service;

pub use self::io::{BodyTimeout, RequestBody};
use self::io::{IntoRequestBody, Rewind};

/// Error type a service or body may fail with.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Default longest wait for a connection's first request head.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Default longest time a request body may take to arrive.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default send buffer asked of the kernel for an event stream's
/// connection (`SO_SNDBUF`; Linux doubles it for its bookkeeping).
pub const DEFAULT_STREAM_SEND_BUFFER: usize = 128 * 1024;
/// Default largest first request head read before deciding; a longer one
/// goes to hyper, which applies its own limits.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 16 * 1024;
/// Bounds of [`Serve::max_head_bytes`]: hyper refuses a request target of
/// 64 KiB or more, so nothing this server accepts would hyper have refused.
const MIN_HEAD_BYTES: usize = 256;
const MAX_HEAD_BYTES: usize = 64 * 1024 - 1;
/// How long accepting pauses after an error such as running out of file
/// descriptors, so that the loop does not spin while none are free.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The peer's address, in every request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// Serves `service` on `listener` until the returned future is dropped, or
/// until a [graceful shutdown](Serve::with_graceful_shutdown) completes.
///
/// Every connection gets a clone of `service`, as with `axum::serve`.
/// `TCP_NODELAY` is set on accepted connections (events go out as written);
/// see [`nodelay`](Serve::nodelay).
pub fn serve<S, B>(listener: TcpListener, service: S) -> Serve<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Serve {
        listener,
        service,
        config: Config {
            stream_paths: Vec::new(),
            head_timeout: DEFAULT_HEAD_TIMEOUT,
            body_timeout: Some(DEFAULT_BODY_TIMEOUT),
            stream_send_buffer: Some(DEFAULT_STREAM_SEND_BUFFER),
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            nodelay: true,
            #[cfg(feature = "tcp")]
            tuning: None,
        },
    }
}

/// What every connection of one server shares.
#[derive(Clone, Debug)]
struct Config {
    stream_paths: Vec<String>,
    head_timeout: Duration,
    body_timeout: Option<Duration>,
    stream_send_buffer: Option<usize>,
    max_head_bytes: usize,
    nodelay: bool,
    #[cfg(feature = "tcp")]
    tuning: Option<crate::tcp::TcpTuning>,
}

/// A server, from [`serve`]; `.await` it to run.
#[must_use = "a server does nothing until awaited"]
pub struct Serve<S> {
    listener: TcpListener,
    service: S,
    config: Config,
}

impl<S> fmt::Debug for Serve<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S> Serve<S> {
    /// Also drives a `GET` on `path` as a stream when the client sends no
    /// `Accept: text/event-stream`, as some non-browser clients do. The path
    /// is compared with the request's path, without its query.
    pub fn stream_path(mut self, path: impl Into<String>) -> Self {
        self.config.stream_paths.push(path.into());
        self
    }

    /// Longest wait for a connection's first request head (default 30 s);
    /// a connection that has not sent one by then is closed.
    pub fn head_timeout(mut self, timeout: Duration) -> Self {
        self.config.head_timeout = timeout;
        self
    }

    /// Longest time a request body may take to arrive, from when its head
    /// was read (default 30 s); [`Duration::MAX`] for no limit. Past it the
    /// body fails with [`BodyTimeout`] (an axum extractor answers `400`) and
    /// the connection closes, so that a body dripped a byte at a time holds
    /// neither a connection nor hyper's buffers for longer than this. (hyper
    /// bounds the wait for each request head the same way, 30 s.)
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.config.body_timeout = (timeout != Duration::MAX).then_some(timeout);
        self
    }

    /// The kernel send buffer of each event stream's connection (`SO_SNDBUF`,
    /// default 128 KiB, which Linux doubles); `None` leaves the kernel's
    /// autotuning, which lets a reader that stops reading hold megabytes of
    /// kernel memory. It bounds what such a reader costs the machine beyond
    /// the process, and how fast one stream can take a backlog: a buffer's
    /// worth per round trip (128 KiB per 100 ms is 1.3 MB/s), plenty for
    /// events.
    pub fn stream_send_buffer(mut self, bytes: Option<usize>) -> Self {
        self.config.stream_send_buffer = bytes;
        self
    }

    /// Largest first request head this server parses itself (default 16 KiB,
    /// kept between 256 bytes and 64 KiB, within hyper's own limits); a
    /// longer one is handed to hyper, which applies those.
    pub fn max_head_bytes(mut self, bytes: usize) -> Self {
        self.config.max_head_bytes = bytes.clamp(MIN_HEAD_BYTES, MAX_HEAD_BYTES);
        self
    }

    /// Whether accepted connections get `TCP_NODELAY` (default on).
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.config.nodelay = nodelay;
        self
    }

    /// Applies `tuning` to every accepted connection (feature `tcp`), so
    /// that the kernel drops streams whose reader vanished or stopped
    /// reading. It sets `TCP_NODELAY` by its own setting.
    #[cfg(feature = "tcp")]
    pub fn tcp_tuning(mut self, tuning: crate::tcp::TcpTuning) -> Self {
        self.config.tuning = Some(tuning);
        self
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> stdio::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Stops accepting once `signal` completes, then waits for every open
    /// connection to finish: hyper's are asked to close after their current
    /// request, streams end when their bodies end (a
    /// [`Shutdown`](crate::Shutdown) closes the brokers for that), and
    /// connections that have not sent a request are closed.
    pub fn with_graceful_shutdown<F>(self, signal: F) -> WithGracefulShutdown<S, F>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        WithGracefulShutdown {
            serve: self,
            signal,
        }
    }
}

/// A server with a graceful shutdown, from
/// [`Serve::with_graceful_shutdown`]; `.await` it to run.
#[must_use = "a server does nothing until awaited"]
pub struct WithGracefulShutdown<S, F> {
    serve: Serve<S>,
    signal: F,
}

impl<S, F> WithGracefulShutdown<S, F> {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> stdio::Result<SocketAddr> {
        self.serve.local_addr()
    }
}

impl<S, F> fmt::Debug for WithGracefulShutdown<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithGracefulShutdown")
            .field("serve", &self.serve)
            .finish_non_exhaustive()
    }
}

impl<S, B> IntoFuture for Serve<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = stdio::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = stdio::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(run(self, std::future::pending()))
    }
}

impl<S, B, F> IntoFuture for WithGracefulShutdown<S, F>
where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    F: Future<Output = ()> + Send + 'static,
{
    type Output = stdio::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = stdio::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(run(self.serve, self.signal))
    }
}

/// The accept loop, then the wait for open connections.
async fn run<S, B, F>(serve: Serve<S>, signal: F) -> stdio::Result<()>
where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    F: Future<Output = ()> + Send + 'static,
{
    let Serve {
        listener,
        service,
        config,
    } = serve;
    let config = Arc::new(config);
    // Every connection holds a receiver: `closed()` resolves once the last
    // one is gone, and the value turning `true` asks them to wind down.
    let (closing, connections) = watch::channel(false);
    let signal = signal;
    tokio::pin!(signal);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut signal => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                tracing::warn!(%error, "accept failed; pausing");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    () = &mut signal => break,
                }
            }
        };
        configure(&tcp, &config);
        tokio::spawn(connection(
            tcp,
            peer,
            service.clone(),
            config.clone(),
            connections.clone(),
        ));
    }
    drop(listener);
    drop(connections);
    closing.send_replace(true);
    closing.closed().await;
    Ok(())
}

/// Errors that concern one connection only, after which accepting goes on
/// at once.
fn is_connection_error(error: &stdio::Error) -> bool {
    matches!(
        error.kind(),
        stdio::ErrorKind::ConnectionRefused
            | stdio::ErrorKind::ConnectionAborted
            | stdio::ErrorKind::ConnectionReset
    )
}

fn configure(tcp: &TcpStream, config: &Config) {
    #[cfg(feature = "tcp")]
    if let Some(tuning) = config.tuning {
        if let Err(error) = tuning.apply(tcp) {
            tracing::debug!(%error, "could not tune a connection");
        }
        return;
    }
    if config.nodelay {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
    }
}

/// One connection: its first head decides who drives it.
async fn connection<S, B>(
    mut tcp: TcpStream,
    peer: SocketAddr,
    service: S,
    config: Arc<Config>,
    mut closing: watch::Receiver<bool>,
) where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let first = tokio::select! {
        read = tokio::time::timeout(
            config.head_timeout,
            head::read(&mut tcp, config.max_head_bytes, &config.stream_paths),
        ) => read,
        () = wound_down(&mut closing) => return,
    };
    match first {
        Ok(Ok(head::First::Stream(mut request))) => {
            if let Some(bytes) = config.stream_send_buffer {
                if let Err(error) = socket2::SockRef::from(&tcp).set_send_buffer_size(bytes) {
                    tracing::debug!(%error, "could not set SO_SNDBUF");
                }
            }
            insert_peer(&mut request, peer);
            stream::respond(tcp, request, service).await;
            drop(closing);
        }
        Ok(Ok(head::First::Other(read))) => {
            // Boxed so that hyper's connection state does not weigh on
            // every stream's task.
            let service = IntoRequestBody::new(service, peer, config.body_timeout);
            Box::pin(with_hyper(tcp, read, service, closing)).await;
        }
        Ok(Ok(head::First::Closed)) | Ok(Err(_)) | Err(_) => {}
    }
}

/// Hands a connection, and the bytes already read from it, to hyper.
async fn with_hyper<S, B>(
    tcp: TcpStream,
    read: Bytes,
    service: IntoRequestBody<S>,
    mut closing: watch::Receiver<bool>,
) where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let io = TokioIo::new(Rewind::new(tcp, read));
    let service = hyper_util::service::TowerToHyperService::new(service);
    // hyper's own choice between HTTP/1.1 and HTTP/2 (a connection that
    // opens with the h2c prior-knowledge preface), from the bytes already
    // read, which the `Rewind` hands it again.
    let mut builder = AutoBuilder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
            return;
        }
        () = wound_down(&mut closing) => {}
    }
    connection.as_mut().graceful_shutdown();
    if let Err(error) = connection.await {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// Completes once the server asks its connections to wind down. A server
/// future that is dropped instead leaves them running, as `axum::serve`
/// does.
async fn wound_down(closing: &mut watch::Receiver<bool>) {
    if closing.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn insert_peer<T>(request: &mut Request<T>, peer: SocketAddr) {
    request.extensions_mut().insert(PeerAddr(peer));
    #[cfg(feature = "axum")]
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
}
