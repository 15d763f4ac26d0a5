//! Graceful shutdown that open event streams cannot hang.
//!
//! `axum::serve(..).with_graceful_shutdown(signal)` (and hyper's own) waits
//! for every response to finish, and an event stream never does by itself:
//! the usual SSE setup keeps a server "shutting down" for ever. A
//! [`Shutdown`] ends them: it flips readiness to 503 first, then closes the
//! brokers so that every stream receives a final `retry:` hint and ends.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::mode::ServerMode;
use crate::Broker;

/// Default `retry:` hint sent to every client at shutdown.
pub const DEFAULT_SHUTDOWN_RETRY: Duration = Duration::from_secs(5);

/// A shutdown trigger wired to brokers and a mode. Cheap to clone; every
/// clone triggers and observes the same shutdown.
///
/// ```no_run
/// use axum::Router;
/// use tower_sse::{mode::ServerMode, Broker, Shutdown, SseLayer};
///
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// let broker = Broker::new();
/// let mode = ServerMode::new();
/// let shutdown = Shutdown::new().broker(&broker).mode(&mode);
///
/// let app = Router::new().layer(SseLayer::new(broker.clone()));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
///
/// let trigger = shutdown.clone();
/// tokio::spawn(async move {
///     let _ = tokio::signal::ctrl_c().await;
///     trigger.trigger();
/// });
/// axum::serve(listener, app)
///     .with_graceful_shutdown(shutdown.wait())
///     .await
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct Shutdown {
    brokers: Vec<Broker>,
    mode: Option<ServerMode>,
    retry: Duration,
    drain: Duration,
    begun: Arc<watch::Sender<State>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    Draining,
    Closed,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A shutdown wired to nothing yet.
    pub fn new() -> Self {
        Self {
            brokers: Vec::new(),
            mode: None,
            retry: DEFAULT_SHUTDOWN_RETRY,
            drain: Duration::ZERO,
            begun: Arc::new(watch::channel(State::Running).0),
        }
    }

    /// Closes `broker` at shutdown, ending its streams.
    pub fn broker(mut self, broker: &Broker) -> Self {
        self.brokers.push(broker.clone());
        self
    }

    /// Marks `mode` as shutting down first: readiness answers 503 and
    /// writes are refused.
    pub fn mode(mut self, mode: &ServerMode) -> Self {
        self.mode = Some(mode.clone());
        self
    }

    /// The reconnection delay hinted to clients in the final frame
    /// (default 5 s).
    pub fn retry(mut self, delay: Duration) -> Self {
        self.retry = delay;
        self
    }

    /// Waits `delay` between flipping readiness and closing the streams,
    /// so that a load balancer polling readiness stops sending new clients
    /// before the old ones are told to reconnect (default: no wait).
    pub fn drain(mut self, delay: Duration) -> Self {
        self.drain = delay;
        self
    }

    /// Begins the shutdown; idempotent. Readiness flips at once; the
    /// streams are closed at once, or after the [drain](Shutdown::drain)
    /// delay (on the current tokio runtime; at once outside one).
    pub fn trigger(&self) {
        let mut first = false;
        self.begun.send_if_modified(|state| {
            first = *state == State::Running;
            if first {
                *state = State::Draining;
            }
            first
        });
        if !first {
            return;
        }
        tracing::info!("shutdown triggered");
        if let Some(mode) = &self.mode {
            mode.begin_shutdown();
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if !self.drain.is_zero() => {
                let this = self.clone();
                handle.spawn(async move {
                    tokio::time::sleep(this.drain).await;
                    this.close();
                });
            }
            _ => self.close(),
        }
    }

    fn close(&self) {
        for broker in &self.brokers {
            broker.close_with_retry(self.retry);
        }
        self.begun.send_replace(State::Closed);
    }

    /// Whether the shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        *self.begun.borrow() != State::Running
    }

    /// Completes once the shutdown has begun and the streams were told to
    /// end: the future to hand to `with_graceful_shutdown`.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.begun.subscribe();
        async move {
            // The sender lives as long as any clone of this Shutdown; if all
            // are gone nobody can trigger it, and waiting ends too.
            let _ = rx.wait_for(|state| *state == State::Closed).await;
        }
    }

    /// Waits for Ctrl-C (SIGINT) or SIGTERM, or for [`trigger`](Shutdown::trigger)
    /// from elsewhere, then shuts down: the one future a `main` needs.
    ///
    /// ```no_run
    /// # async fn run(app: axum::Router, listener: tokio::net::TcpListener, shutdown: tower_sse::Shutdown) -> std::io::Result<()> {
    /// axum::serve(listener, app)
    ///     .with_graceful_shutdown(shutdown.on_terminate_signal())
    ///     .await
    /// # }
    /// ```
    #[cfg(feature = "signal")]
    pub fn on_terminate_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let this = self.clone();
        async move {
            let wait = this.wait();
            tokio::select! {
                _ = terminate_signal() => this.trigger(),
                _ = this.wait() => {}
            }
            wait.await;
        }
    }
}

#[cfg(feature = "signal")]
async fn terminate_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("brokers", &self.brokers.len())
            .field("retry", &self.retry)
            .field("drain", &self.drain)
            .field("state", &*self.begun.borrow())
            .finish()
    }
}
