use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tower_layer::Layer;

use super::authorize::{public_only, Authorize};
use super::service::Sse;
use crate::broker::{Broker, WeakBroker};
use crate::mailbox::Mailbox;

/// Default `retry:` hint sent on connect: how long a browser waits before
/// reconnecting after the stream ends.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(3);
/// Default `retry:` hint for a connection refused over the limit or during
/// shutdown.
pub const DEFAULT_BUSY_RETRY: Duration = Duration::from_secs(30);
/// Default longest silence on an idle stream before a keep-alive comment.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Default most topics one connection may watch.
pub const DEFAULT_MAX_TOPICS: usize = 32;
/// Default most bytes written to a connection in one body frame when it
/// has a backlog.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 64 * 1024;

/// Serves the events route from a [`Broker`] and passes every other request
/// to the wrapped service.
///
/// `GET` on the path (default `/events`) answers `200 text/event-stream`:
/// a `retry:` hint, then what the client missed since its
/// `Last-Event-ID` header or `lastEventId` query parameter (the header wins),
/// then live events, with a keep-alive comment when idle. See the
/// [module docs](crate::sse) for every answer it gives and why.
///
/// ```
/// use std::time::Duration;
/// use tower_sse::{Broker, SseLayer};
///
/// let layer = SseLayer::new(Broker::new())
///     .path("/api/events")
///     .authorize(tower_sse::sse::any_topic)
///     .retry(Duration::from_secs(2))
///     .max_connections(10_000);
/// ```
#[derive(Clone)]
#[must_use]
pub struct SseLayer {
    pub(crate) config: Config,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) broker: Broker,
    pub(crate) path: Arc<str>,
    pub(crate) authorizer: Arc<dyn Authorize>,
    pub(crate) retry: Duration,
    pub(crate) busy_retry: Duration,
    pub(crate) keep_alive: Option<Duration>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_topics: usize,
    pub(crate) max_batch_bytes: usize,
    pub(crate) mailbox: Option<Mailbox>,
    pub(crate) runtime: Arc<Runtime>,
}

/// State shared by every service made from one layer.
#[derive(Default)]
pub(crate) struct Runtime {
    pub(crate) connections: AtomicUsize,
    ticker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl SseLayer {
    /// Serves `broker`'s events at `/events`, to the default topic only
    /// (see [`authorize`](SseLayer::authorize)).
    pub fn new(broker: Broker) -> Self {
        Self {
            config: Config {
                broker,
                path: Arc::from("/events"),
                authorizer: Arc::new(public_only),
                retry: DEFAULT_RETRY,
                busy_retry: DEFAULT_BUSY_RETRY,
                keep_alive: Some(DEFAULT_KEEP_ALIVE),
                max_connections: None,
                max_topics: DEFAULT_MAX_TOPICS,
                max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
                mailbox: None,
                runtime: Arc::default(),
            },
        }
    }

    /// Serves the route at `path` (exact match) instead of `/events`.
    pub fn path(mut self, path: impl AsRef<str>) -> Self {
        self.config.path = Arc::from(path.as_ref());
        self
    }

    /// Decides each connection's topics with `authorizer` (default:
    /// [`public_only`](crate::sse::public_only)).
    pub fn authorize(mut self, authorizer: impl Authorize) -> Self {
        self.config.authorizer = Arc::new(authorizer);
        self
    }

    /// The reconnection delay hinted to clients with `retry:` (default 3 s).
    pub fn retry(mut self, delay: Duration) -> Self {
        self.config.retry = delay;
        self
    }

    /// The reconnection delay hinted to a client refused over the
    /// connection limit or while the broker is closed (default 30 s).
    pub fn busy_retry(mut self, delay: Duration) -> Self {
        self.config.busy_retry = delay;
        self
    }

    /// Sends a keep-alive comment on a stream that has been silent for
    /// about `interval` (default 15 s), so that proxies do not cut it and
    /// a vanished client is noticed when the write fails.
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.config.keep_alive = Some(interval.max(Duration::from_millis(10)));
        self
    }

    /// Sends no keep-alive comments.
    pub fn no_keep_alive(mut self) -> Self {
        self.config.keep_alive = None;
        self
    }

    /// Serves at most `n` streams at once from services made by this layer;
    /// past that a client gets a short `200` stream with a
    /// [`busy_retry`](SseLayer::busy_retry) hint (default: no limit).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = Some(n);
        self
    }

    /// Refuses, with 400, a grant of more than `n` topics (default 32).
    pub fn max_topics(mut self, n: usize) -> Self {
        self.config.max_topics = n.max(1);
        self
    }

    /// Caps how much of a backlog goes into one body frame (default 64 KiB;
    /// one event is never split).
    pub fn max_batch_bytes(mut self, n: usize) -> Self {
        self.config.max_batch_bytes = n.max(1);
        self
    }

    /// Delivers `mailbox`'s notifications on the streams of the client the
    /// authorizer names ([`Grant::client`](crate::Grant::client)): held ones
    /// first, then live.
    pub fn mailbox(mut self, mailbox: Mailbox) -> Self {
        self.config.mailbox = Some(mailbox);
        self
    }

    /// Streams served right now by services made from this layer.
    pub fn connections(&self) -> usize {
        self.config.runtime.connections.load(Ordering::Relaxed)
    }
}

impl Config {
    /// Makes sure one task ticks the broker for keep-alives. Started
    /// lazily, on the runtime of the first connection, and again if that
    /// runtime went away; it stops once the broker or the layer is gone.
    pub(crate) fn ensure_ticker(&self) {
        let Some(interval) = self.keep_alive else {
            return;
        };
        let mut ticker = self
            .runtime
            .ticker
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if ticker.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let broker = self.broker.downgrade();
        let runtime = Arc::downgrade(&self.runtime);
        *ticker = Some(handle.spawn(tick(broker, runtime, interval)));
    }
}

/// Ticks at half the interval: a stream sends a keep-alive at a tick when
/// it sent nothing since the previous one, so no stream stays silent longer
/// than about `interval`, and an idle one is woken once per `interval`.
async fn tick(broker: WeakBroker, runtime: Weak<Runtime>, interval: Duration) {
    let mut timer = tokio::time::interval(interval / 2);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer.tick().await;
    loop {
        timer.tick().await;
        if runtime.strong_count() == 0 {
            return;
        }
        match broker.upgrade() {
            Some(broker) if !broker.is_closed() => broker.tick(),
            _ => return,
        }
    }
}

impl<S> Layer<S> for SseLayer {
    type Service = Sse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Sse::new(inner, self.config.clone())
    }
}

impl fmt::Debug for SseLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseLayer")
            .field("path", &self.config.path)
            .field("retry", &self.config.retry)
            .field("keep_alive", &self.config.keep_alive)
            .field("max_connections", &self.config.max_connections)
            .finish_non_exhaustive()
    }
}
