//! Redis pub/sub channels as an upstream: a topic is the channel of the
//! same name, each message an event of type `message` whose data is the
//! payload.
//!
//! One connection per [`RedisPubSub`] (per replica) carries every channel,
//! and one task, the router, owns it: it runs the `SUBSCRIBE` and
//! `UNSUBSCRIBE` commands in the order they were asked for (so an
//! unsubscribe of a dropped stream never lands after the subscribe of its
//! successor), and hands each message to its channel's streams. A
//! stream's buffer is bounded in messages and in bytes; a stream that falls
//! that far behind breaks (the hub reports a `resync` and subscribes
//! again) rather than holding up the other channels. A `SUBSCRIBE` that
//! Redis refuses (an ACL) fails that channel alone. A lost connection, one
//! that stops answering pings, or a command that times out breaks every
//! stream; the hub opens them again, on a new connection, with back-off.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

use super::Upstream;
use crate::{Event, Topic};

/// Default longest wait for Redis to connect or answer a command.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default bound on one channel's messages waiting to be published.
const DEFAULT_BUFFER_MESSAGES: usize = 1024;
/// Default bound on their bytes.
const DEFAULT_BUFFER_BYTES: usize = 8 * 1024 * 1024;
/// The most messages [`RedisPubSub::buffer`] takes.
const MAX_BUFFER_MESSAGES: usize = 1 << 20;
/// How often an idle connection is pinged, so that a Redis that stopped
/// answering is noticed.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Redis pub/sub as an [`Upstream`]: `SUBSCRIBE` to the channel named as
/// the topic, on one connection shared by every topic. Cheap to clone;
/// clones share the connection (several hubs on one connection each get
/// every message of their channels, with one `SUBSCRIBE` between them).
///
/// ```no_run
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// use tower_sse::upstream::{Hub, RedisPubSub};
/// use tower_sse::Broker;
///
/// let rooms = RedisPubSub::new("redis://127.0.0.1:6379")?;
/// let broker = Broker::builder()
///     .hub(Hub::new(rooms).linger(Duration::from_secs(10)))
///     .build();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisPubSub {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    timeout: Duration,
    buffer_messages: usize,
    buffer_bytes: usize,
    router: OnceLock<mpsc::UnboundedSender<Command>>,
    ids: AtomicU64,
}

/// Why a channel could not be subscribed to, or broke.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisPubSubError {
    /// The URL does not parse.
    InvalidUrl(String),
    /// Redis could not be reached, or refused the command.
    Redis(String),
    /// Redis did not answer within the timeout.
    Timeout,
    /// The connection was lost (or stopped answering).
    ConnectionLost,
    /// The channel's messages came faster than they were published, past
    /// the buffer's bound.
    Overflow,
    /// The router task is gone (its runtime shut down).
    Stopped,
}

impl fmt::Display for RedisPubSubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisPubSubError::InvalidUrl(e) => write!(f, "invalid Redis URL: {e}"),
            RedisPubSubError::Redis(e) => write!(f, "Redis: {e}"),
            RedisPubSubError::Timeout => f.write_str("Redis did not answer in time"),
            RedisPubSubError::ConnectionLost => f.write_str("the connection to Redis was lost"),
            RedisPubSubError::Overflow => {
                f.write_str("the channel's messages overflowed the buffer")
            }
            RedisPubSubError::Stopped => f.write_str("the pub/sub router has stopped"),
        }
    }
}

impl std::error::Error for RedisPubSubError {}

impl RedisPubSub {
    /// Pub/sub on the Redis at `url`. Nothing is connected until the
    /// first topic is opened; a URL that does not parse is an error now.
    pub fn new(url: &str) -> Result<Self, RedisPubSubError> {
        let client =
            redis::Client::open(url).map_err(|e| RedisPubSubError::InvalidUrl(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                timeout: DEFAULT_TIMEOUT,
                buffer_messages: DEFAULT_BUFFER_MESSAGES,
                buffer_bytes: DEFAULT_BUFFER_BYTES,
                router: OnceLock::new(),
                ids: AtomicU64::new(1),
            }),
        })
    }

    fn configure(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        // Before the first open nothing else holds `inner`; after, a clone
        // keeps its settings and this one starts afresh.
        let inner = match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner,
            None => {
                let old = &self.inner;
                self.inner = Arc::new(Inner {
                    client: old.client.clone(),
                    timeout: old.timeout,
                    buffer_messages: old.buffer_messages,
                    buffer_bytes: old.buffer_bytes,
                    router: OnceLock::new(),
                    ids: AtomicU64::new(1),
                });
                Arc::get_mut(&mut self.inner).expect("just made")
            }
        };
        f(inner);
        self
    }

    /// The longest wait for Redis to connect or answer a command (default
    /// 2 s). Also bounds how long a Redis that stopped answering goes
    /// unnoticed, with a ping every 5 s.
    #[must_use]
    pub fn timeout(self, timeout: Duration) -> Self {
        self.configure(|inner| inner.timeout = timeout.max(Duration::from_millis(1)))
    }

    /// Bounds one channel's messages waiting to be published (default 1024
    /// messages, 8 MiB of payload; at most a million messages). Past
    /// either, the channel's stream breaks: its streams get a `resync`, and
    /// it is subscribed again.
    #[must_use]
    pub fn buffer(self, messages: usize, bytes: usize) -> Self {
        self.configure(|inner| {
            inner.buffer_messages = messages.clamp(1, MAX_BUFFER_MESSAGES);
            inner.buffer_bytes = bytes.max(1);
        })
    }

    /// The router's queue, starting the router on first use.
    fn router(inner: &Arc<Inner>) -> mpsc::UnboundedSender<Command> {
        inner
            .router
            .get_or_init(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(Router::new(inner.client.clone(), inner.timeout).run(rx));
                tx
            })
            .clone()
    }
}

impl fmt::Debug for RedisPubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPubSub")
            .field("timeout", &self.inner.timeout)
            .field("buffer_messages", &self.inner.buffer_messages)
            .field("buffer_bytes", &self.inner.buffer_bytes)
            .finish_non_exhaustive()
    }
}

impl Upstream for RedisPubSub {
    type Stream = RedisChannel;
    type Error = RedisPubSubError;

    fn open(
        &self,
        topic: &Topic,
    ) -> impl Future<Output = Result<RedisChannel, RedisPubSubError>> + Send + 'static {
        let inner = self.inner.clone();
        let channel = topic.as_str().to_owned();
        async move {
            let commands = RedisPubSub::router(&inner);
            let id = inner.ids.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = mpsc::channel(inner.buffer_messages);
            let shared = Arc::new(RouteShared {
                broken: AtomicU8::new(OK),
                bytes: AtomicUsize::new(0),
            });
            let (reply, answer) = oneshot::channel();
            commands
                .send(Command::Subscribe {
                    route: Route {
                        id,
                        tx: Some(tx),
                        shared: shared.clone(),
                        max_bytes: inner.buffer_bytes,
                    },
                    channel: channel.clone(),
                    reply,
                })
                .map_err(|_| RedisPubSubError::Stopped)?;
            // Made before the answer, so that an open given up halfway
            // still unsubscribes.
            let stream = RedisChannel {
                rx,
                shared,
                guard: Unsubscribe {
                    commands,
                    channel,
                    id,
                },
            };
            answer.await.map_err(|_| RedisPubSubError::Stopped)??;
            Ok(stream)
        }
    }
}

const OK: u8 = 0;
const OVERFLOW: u8 = 1;
const LOST: u8 = 2;

/// What a channel's stream and the router share.
struct RouteShared {
    /// Why the stream broke, if it did.
    broken: AtomicU8,
    /// Payload bytes sent to the stream and not yet taken.
    bytes: AtomicUsize,
}

/// One subscribed channel's events; unsubscribes when dropped.
pub struct RedisChannel {
    rx: mpsc::Receiver<Bytes>,
    shared: Arc<RouteShared>,
    #[allow(dead_code)] // Held for its `Drop`.
    guard: Unsubscribe,
}

impl fmt::Debug for RedisChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisChannel")
            .field("channel", &self.guard.channel)
            .finish_non_exhaustive()
    }
}

impl Stream for RedisChannel {
    type Item = Result<Event, RedisPubSubError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // A break drops the route's sender: what came before it is read
        // first, so the hub's resync stands where the gap begins.
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(payload)) => {
                this.shared.bytes.fetch_sub(payload.len(), Ordering::AcqRel);
                Poll::Ready(Some(Ok(Event::message().data(payload))))
            }
            // The router dropped the route without saying why: it stopped.
            Poll::Ready(None) => Poll::Ready(Some(Err(
                match this.shared.broken.load(Ordering::Acquire) {
                    OVERFLOW => RedisPubSubError::Overflow,
                    LOST => RedisPubSubError::ConnectionLost,
                    _ => RedisPubSubError::Stopped,
                },
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

struct Unsubscribe {
    commands: mpsc::UnboundedSender<Command>,
    channel: String,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Unsubscribe {
            channel: std::mem::take(&mut self.channel),
            id: self.id,
        });
    }
}

enum Command {
    Subscribe {
        channel: String,
        route: Route,
        reply: oneshot::Sender<Result<(), RedisPubSubError>>,
    },
    Unsubscribe {
        channel: String,
        id: u64,
    },
}

struct Route {
    id: u64,
    /// `None` once broken: the stream sees its queue close and says why.
    tx: Option<mpsc::Sender<Bytes>>,
    shared: Arc<RouteShared>,
    max_bytes: usize,
}

impl Route {
    /// Hands `payload` on; `false` once the stream is too far behind.
    fn send(&self, payload: Bytes) -> bool {
        let Some(tx) = &self.tx else {
            return true;
        };
        let len = payload.len();
        let before = self.shared.bytes.fetch_add(len, Ordering::AcqRel);
        if before + len > self.max_bytes || tx.try_send(payload).is_err() {
            self.shared.bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Breaks the stream: it reads `why` next, woken by its queue closing.
    /// The route stays until the stream is dropped, so that its
    /// unsubscribe finds it.
    fn break_with(&mut self, why: u8) {
        self.shared.broken.store(why, Ordering::Release);
        self.tx = None;
    }
}

/// The one task that owns the connection.
struct Router {
    client: redis::Client,
    timeout: Duration,
    conn: Option<(PubSubSink, PubSubStream)>,
    /// The streams of each channel subscribed on `conn` (several when
    /// clones are shared by several hubs).
    routes: HashMap<String, Vec<Route>>,
}

enum Next {
    Command(Option<Command>),
    Message(Option<redis::Msg>),
    Ping,
}

impl Router {
    fn new(client: redis::Client, timeout: Duration) -> Self {
        Self {
            client,
            timeout,
            conn: None,
            routes: HashMap::new(),
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = match &mut self.conn {
                Some((_, messages)) => tokio::select! {
                    command = commands.recv() => Next::Command(command),
                    message = next_message(messages) => Next::Message(message),
                    _ = ping.tick() => Next::Ping,
                },
                None => Next::Command(commands.recv().await),
            };
            match next {
                Next::Command(None) => return,
                Next::Command(Some(Command::Subscribe {
                    channel,
                    route,
                    reply,
                })) => {
                    // An open given up while queued (its unsubscribe
                    // follows) costs nothing.
                    if !reply.is_closed() {
                        let result = self.subscribe(channel, route).await;
                        let _ = reply.send(result);
                    }
                }
                Next::Command(Some(Command::Unsubscribe { channel, id })) => {
                    self.unsubscribe(channel, id).await;
                }
                Next::Message(Some(message)) => self.deliver(&message),
                Next::Message(None) => self.lose("the connection closed"),
                Next::Ping => self.ping().await,
            }
        }
    }

    async fn subscribe(&mut self, channel: String, route: Route) -> Result<(), RedisPubSubError> {
        if self.conn.is_none() {
            match timeout(self.timeout, self.client.get_async_pubsub()).await {
                Ok(Ok(pubsub)) => self.conn = Some(pubsub.split()),
                Ok(Err(e)) => return Err(RedisPubSubError::Redis(e.to_string())),
                Err(_) => return Err(RedisPubSubError::Timeout),
            }
        }
        let Some((sink, _)) = &mut self.conn else {
            return Err(RedisPubSubError::ConnectionLost);
        };
        // Routed before the answer: the first message may follow it at once.
        let routes = self.routes.entry(channel.clone()).or_default();
        routes.push(route);
        if routes.len() > 1 {
            // Subscribed already, for another stream.
            return Ok(());
        }
        match timeout(self.timeout, sink.subscribe(&channel)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if matches!(e.kind(), redis::ErrorKind::Server(_)) => {
                // Refused (an ACL, say), the connection sound: this channel
                // alone fails.
                self.routes.remove(&channel);
                Err(RedisPubSubError::Redis(e.to_string()))
            }
            Ok(Err(e)) => {
                self.lose("SUBSCRIBE failed");
                Err(RedisPubSubError::Redis(e.to_string()))
            }
            Err(_) => {
                self.lose("SUBSCRIBE timed out");
                Err(RedisPubSubError::Timeout)
            }
        }
    }

    async fn unsubscribe(&mut self, channel: String, id: u64) {
        // Not there: the connection was lost since, taking every route.
        let Some(routes) = self.routes.get_mut(&channel) else {
            return;
        };
        routes.retain(|route| route.id != id);
        if !routes.is_empty() {
            return;
        }
        self.routes.remove(&channel);
        let Some((sink, _)) = &mut self.conn else {
            return;
        };
        if !matches!(
            timeout(self.timeout, sink.unsubscribe(&channel)).await,
            Ok(Ok(()))
        ) {
            self.lose("UNSUBSCRIBE failed");
        }
    }

    fn deliver(&mut self, message: &redis::Msg) {
        let channel = message.get_channel_name();
        let Some(routes) = self.routes.get_mut(channel) else {
            return;
        };
        let payload = Bytes::copy_from_slice(message.get_payload_bytes());
        for route in routes.iter_mut().filter(|route| route.tx.is_some()) {
            if !route.send(payload.clone()) {
                tracing::warn!(channel, "a pub/sub channel's stream fell behind; it breaks");
                route.break_with(OVERFLOW);
            }
        }
    }

    async fn ping(&mut self) {
        let Some((sink, _)) = &mut self.conn else {
            return;
        };
        if !matches!(
            // Subscribed, Redis answers `["pong", ""]`, not `PONG`.
            timeout(self.timeout, sink.ping::<redis::Value>()).await,
            Ok(Ok(_))
        ) {
            self.lose("PING got no answer");
        }
    }

    /// Drops the connection: every stream breaks, and the next subscribe
    /// connects afresh.
    fn lose(&mut self, why: &str) {
        if !self.routes.is_empty() {
            tracing::warn!(
                why,
                channels = self.routes.len(),
                "lost the Redis pub/sub connection"
            );
        }
        self.conn = None;
        for route in self.routes.drain().flat_map(|(_, routes)| routes) {
            let mut route = route;
            route.break_with(LOST);
        }
    }
}

async fn next_message(messages: &mut PubSubStream) -> Option<redis::Msg> {
    std::future::poll_fn(|cx| Pin::new(&mut *messages).poll_next(cx)).await
}
