use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::authorize::{public_only, Authorize};
use super::coalesce::Coalesce;
use super::hook::StreamHook;
use super::service::Sse;
use super::streams::Streams;
use crate::broker::Broker;

/// Default `retry:` hint sent on connect: how long a browser waits before
/// reconnecting after the stream ends.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(3);
/// Default `retry:` hint for a connection refused over the limit or during
/// shutdown.
pub const DEFAULT_BUSY_RETRY: Duration = Duration::from_secs(30);
/// Default longest silence on an idle stream before a keep-alive comment.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Default coalescing window: while the runtime is busy, a stream that
/// wrote waits this long for more events before it is woken again.
pub const DEFAULT_COALESCE: Duration = Duration::from_millis(10);
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
    pub(crate) coalesce: Option<Coalesce>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_topics: usize,
    pub(crate) max_batch_bytes: usize,
    pub(crate) hook: Option<Arc<dyn StreamHook>>,
    pub(crate) streams: Arc<Streams>,
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
                coalesce: Coalesce::new(DEFAULT_COALESCE, false),
                max_connections: None,
                max_topics: DEFAULT_MAX_TOPICS,
                max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
                hook: None,
                streams: Arc::default(),
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

    /// Coalesces writes while the runtime is busy: after a stream writes,
    /// events published within `window` do not wake it one by one but go
    /// out together when the window ends (default 10 ms).
    ///
    /// A fan-out spends most of its CPU in the kernel, one system call and
    /// one TCP segment per write; coalescing turns many small writes into
    /// fewer larger ones and can halve that. It costs latency, and only a
    /// stream receiving events faster than one per window pays it (at most
    /// `window` plus a quarter of it): the first event after a quiet spell
    /// still goes out at once. As that latency buys nothing while the
    /// runtime keeps up, the layer's ticker samples how busy tokio's
    /// workers are (their own busy-time counters, averaged over about
    /// 100 ms), and streams coalesce only once they are about to fall
    /// behind (busy all of the last 100 ms, or 95 % on average) while they
    /// write events: a burst of connections alone never starts it. While they do, the load they would have without it
    /// is the measured load times what coalescing saves, measured when it
    /// starts (a frame's cost just before, against its cost coalesced);
    /// below 75 % coalescing stops. Coalescing that has to start again soon
    /// after stopping stays on for a second, then twice as long at each
    /// further restart (up to 64 s), so a load that only coalescing keeps
    /// down does not make it switch back and forth, while a burst of work
    /// (clients connecting) does not hold it on. A runtime that keeps up
    /// thus writes every event at once; one that would not writes several
    /// per write.
    ///
    /// [`Duration::ZERO`] turns coalescing off; see
    /// [`coalesce_always`](SseLayer::coalesce_always) to coalesce whatever
    /// the load.
    pub fn coalesce(mut self, window: Duration) -> Self {
        self.config.coalesce = Coalesce::new(window, false);
        self
    }

    /// Coalesces writes within `window` whatever the load (see
    /// [`coalesce`](SseLayer::coalesce)): the least CPU per event, and a
    /// latency of up to `window` for streams that receive more than one
    /// event per window, even on an idle server.
    pub fn coalesce_always(mut self, window: Duration) -> Self {
        self.config.coalesce = Coalesce::new(window, true);
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

    /// The most bytes in one body frame (default 64 KiB, at least 1 KiB): a
    /// backlog goes out in frames of up to this size, and an event larger
    /// than this goes out in slices of it, each copied, so that what a
    /// stalled reader's write holds is bounded by this, not by the largest
    /// event.
    pub fn max_batch_bytes(mut self, n: usize) -> Self {
        self.config.max_batch_bytes = n.max(1024);
        self
    }

    /// Plugs `hook` into every stream whose grant names a client
    /// ([`Grant::client`](crate::Grant::client)): it adds its topic to what
    /// the stream watches and hears when the stream opens and ends. One
    /// hook per layer; a later call replaces it.
    pub fn hook(mut self, hook: impl StreamHook) -> Self {
        self.config.hook = Some(Arc::new(hook));
        self
    }

    /// Streams served right now by services made from this layer.
    pub fn connections(&self) -> usize {
        self.config.streams.open.load(Ordering::Relaxed)
    }

    /// Bytes of the body frames that streams from this layer handed to
    /// their servers last: under [`tower_sse::serve`](fn@crate::serve), which
    /// asks a stream for its next frame only once the previous one is
    /// written, exactly what the streams' writes hold now. Each is at most
    /// [`max_batch_bytes`](SseLayer::max_batch_bytes), however large the
    /// events: a larger one goes out in slices of that size, so that a
    /// reader that stops reading holds one slice, never a whole event the
    /// log has evicted since. (hyper queues up to 16 frames per
    /// connection; this counts the last of them.)
    pub fn in_flight_bytes(&self) -> usize {
        self.config.streams.in_flight.load(Ordering::Relaxed)
    }

    /// Whether streams from this layer coalesce their writes right now:
    /// always with [`coalesce_always`](SseLayer::coalesce_always), never
    /// once coalescing is off, and otherwise while the runtime is busy (see
    /// [`coalesce`](SseLayer::coalesce)). Worth exporting next to
    /// [`connections`](SseLayer::connections): a server that coalesces most
    /// of the time is near the end of its CPU.
    pub fn is_coalescing(&self) -> bool {
        self.config
            .streams
            .coalescing
            .window(self.config.coalesce)
            .is_some()
    }
}

impl<S> Layer<S> for SseLayer {
    type Service = Sse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Sse::new(inner, Arc::new(self.config.clone()))
    }
}

impl fmt::Debug for SseLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseLayer")
            .field("path", &self.config.path)
            .field("retry", &self.config.retry)
            .field("keep_alive", &self.config.keep_alive)
            .field("coalesce", &self.config.coalesce)
            .field("max_connections", &self.config.max_connections)
            .finish_non_exhaustive()
    }
}
