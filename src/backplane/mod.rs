//! Many replicas, one event log: a backplane on Redis Streams (feature
//! `redis`).
//!
//! Behind a load balancer, an event published on replica A must reach a
//! browser on replica B, and a browser that reconnects to B must resume
//! from an id A gave it. [`RedisBackplane::start`] makes a broker whose log
//! mirrors one Redis stream shared by every replica:
//!
//! - **One order, one id space.** [`Replica::publish`] runs one Lua script
//!   that takes the stream's epoch (creating it if the stream has none),
//!   the next seq, and appends the event with the explicit id `SEQ-0`,
//!   trimmed to about the broker's retained count. The event's id comes
//!   from the script: the same on every replica. Publishing returns once
//!   Redis has the event, or an error within the publish timeout.
//! - **One reader per replica**, on a connection of its own (`XREAD BLOCK`
//!   stalls a connection for anyone else on it), feeds the local log in
//!   stream order; the replica's own publishes reach its clients the same
//!   way. On start it takes the retained tail of the stream (at most the
//!   broker's retained count), so a client resumes on any replica from an
//!   id another gave it: exactly the missed events of its topics, once, in
//!   order, then live. The age bound applies from each event's publish
//!   time.
//! - **Faults are never silent.**
//!   - Redis unreachable (at start or later): the reader reconnects with
//!     back-off; meanwhile the [mode](crate::mode) (given with
//!     [`RedisBackplane::mode`]) is degraded with a reason naming Redis,
//!     readiness answers 503, publishes fail at once, and open streams stay
//!     open with their keep-alives. Once back, the reader resumes from its
//!     last seq: nothing lost, nothing twice.
//!   - Entries the reader missed because Redis trimmed them first: every
//!     stream that crosses the hole gets a `lagged` report with the count
//!     of missing entries (of any topic).
//!   - Redis lost writes a replica saw (restarted without persistence, or
//!     a promoted replica behind the old primary): the seq went backwards,
//!     or another event now stands under a seq the replica mirrored (its
//!     publish token differs). The stream starts afresh under a new epoch,
//!     every stream gets a `resync`, and no id of the old epoch is
//!     honoured.
//!   - An entry that does not parse (written into the key by something
//!     else) is skipped and counted. One appended past the backplane's
//!     seq (`XADD KEY *`) leaves no room for the next publish: each fails
//!     with [`BackplaneError::Unavailable`] saying so, taking no seq, until
//!     the key is deleted. The key must be the backplane's alone.
//!
//! Every replica receives every event; topics and authorization stay
//! local. What survives a Redis restart is what Redis persisted: with
//! `appendonly yes` and `appendfsync always`, nothing acknowledged is lost
//! and clients resume across it; with `everysec`, up to a second of events
//! can be lost, and with no persistence everything is: either way the
//! epoch or the seq tells, and clients get `resync`, never a silent gap.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_sse::backplane::RedisBackplane;
//! use tower_sse::mode::ServerMode;
//! use tower_sse::{Broker, Event, SseLayer};
//!
//! let mode = ServerMode::new();
//! let replica = RedisBackplane::new("redis://127.0.0.1:6379")?
//!     .stream("app:events")
//!     .mode(&mode)
//!     .start(Broker::builder());
//! let broker = replica.broker().clone();
//! broker.follow_mode(&mode);
//! let layer = SseLayer::new(broker);
//!
//! let id = replica.publish(Event::new("item.created").topic("public").data("{}")).await?;
//! # Ok(())
//! # }
//! ```

mod reader;
mod stream;

pub(crate) use self::stream::APPEND;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use self::stream::Scripts;
use crate::broker::{Broker, BrokerBuilder, EventId, MirrorStats, PublishError};
use crate::mode::ServerMode;
use crate::Event;

/// Default Redis stream key.
pub const DEFAULT_STREAM: &str = "tower-sse:events";
/// Default longest wait for Redis to take a publish.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the reader's `XREAD` blocks; it looks at the stream's epoch
/// and seq between two, so a stream that lost its data is noticed within
/// about this long even while no connection breaks.
pub const DEFAULT_BLOCK: Duration = Duration::from_secs(1);
/// Most entries the reader takes in one read.
pub const DEFAULT_BATCH: usize = 512;
/// Retries of a publish whose connection broke, within the timeout.
const PUBLISH_ATTEMPTS: u32 = 3;
/// Pause before the first retry; the n-th waits n times as long.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// Configures the backplane; [`start`](RedisBackplane::start) runs it.
#[must_use]
pub struct RedisBackplane {
    client: redis::Client,
    stream: String,
    mode: Option<ServerMode>,
    publish_timeout: Duration,
    block: Duration,
    batch: usize,
}

impl RedisBackplane {
    /// A backplane on the Redis at `url` (`redis://host:port/db`, with
    /// `rediss://` under the `redis` crate's TLS features). Nothing is
    /// connected yet; a URL that does not parse is an error now.
    pub fn new(url: &str) -> Result<Self, BackplaneError> {
        let client =
            redis::Client::open(url).map_err(|e| BackplaneError::InvalidUrl(e.to_string()))?;
        Ok(Self {
            client,
            stream: DEFAULT_STREAM.to_owned(),
            mode: None,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            block: DEFAULT_BLOCK,
            batch: DEFAULT_BATCH,
        })
    }

    /// The stream's key (default `tower-sse:events`); the backplane also
    /// uses `KEY:meta`. Every replica of one service names the same.
    pub fn stream(mut self, key: impl Into<String>) -> Self {
        self.stream = key.into();
        self
    }

    /// Reports the backplane's health in `mode`: degraded, with a reason
    /// naming Redis, while the reader is not in step with the stream.
    pub fn mode(mut self, mode: &ServerMode) -> Self {
        self.mode = Some(mode.clone());
        self
    }

    /// Longest wait for Redis to take a publish (default 2 s).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long the reader's reads block (default 1 s): how soon a stream
    /// that lost its data is noticed while no connection breaks.
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block.clamp(Duration::from_millis(1), Duration::from_secs(60));
        self
    }

    /// Builds the replica's broker from `builder` (its retention is the
    /// stream's: the script trims the stream to about its retained count,
    /// at most 2^20 entries)
    /// and starts the reader, on the current tokio runtime. Redis need not
    /// be reachable: the reader keeps trying, and the mode says so.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like `tokio::spawn`.
    pub fn start(self, builder: BrokerBuilder) -> Replica {
        let broker = builder.mirrored().build();
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.publish_timeout))
            .set_connection_timeout(Some(self.publish_timeout))
            .set_number_of_retries(1);
        let commands = ConnectionManager::new_lazy_with_config(self.client.clone(), config).ok();
        let shared = Arc::new(Shared {
            stream: self.stream.clone(),
            meta: format!("{}:meta", self.stream),
            scripts: Scripts::new(),
            health: Health::default(),
            publish_timeout: self.publish_timeout,
            nonce: stream::new_epoch(),
            tokens: AtomicU64::new(0),
            dropped: AtomicBool::new(false),
            commands,
        });
        let reader = reader::Reader {
            client: self.client,
            broker: broker.downgrade(),
            shared: shared.clone(),
            probe: reader::probe(self.mode),
            block: self.block,
            batch: self.batch,
            last: Default::default(),
            clock_offset: Default::default(),
        };
        let stopped = reader.guard();
        let task = tokio::spawn(reader.run(stopped));
        Replica {
            broker,
            _reader: Arc::new(AbortOnDrop(task, shared.clone())),
            shared,
        }
    }
}

impl fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("stream", &self.stream)
            .field("publish_timeout", &self.publish_timeout)
            .field("block", &self.block)
            .finish_non_exhaustive()
    }
}

/// What the reader and the publishers share.
pub(crate) struct Shared {
    stream: String,
    meta: String,
    scripts: Scripts,
    health: Health,
    publish_timeout: Duration,
    /// This replica's part of every publish token.
    nonce: u64,
    /// The other part: a count of publishes.
    tokens: AtomicU64,
    /// The last replica handle is gone: the reader was stopped on purpose.
    dropped: AtomicBool,
    /// For publishes: one multiplexed connection that reconnects, `None`
    /// if it could not even be set up.
    commands: Option<ConnectionManager>,
}

/// The reader's view of Redis, for publishers and stats.
#[derive(Default)]
struct Health {
    /// The reader is in step with the stream.
    up: AtomicBool,
    /// Why the reader is not in step, when it is not.
    error: Mutex<Option<String>>,
}

/// One replica's side of the backplane: its broker, which the reader
/// feeds, and publishing. Cheap to clone; the reader stops when the last
/// clone is dropped or the broker is closed.
#[derive(Clone)]
pub struct Replica {
    broker: Broker,
    shared: Arc<Shared>,
    _reader: Arc<AbortOnDrop>,
}

impl Replica {
    /// The replica's broker: serve it with [`SseLayer`](crate::SseLayer)
    /// as any other. Its `publish` is refused; publish here.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Publishes `event` to every replica: appends it to the stream and
    /// returns its id, the same on every replica, once Redis has it. The
    /// replica's own clients get it through the reader, like everyone's.
    ///
    /// Refused before Redis is asked, as [`Broker::publish`] refuses (an
    /// invalid or reserved type, a bad topic, a payload too large or not
    /// UTF-8: [`BackplaneError::Publish`]); at once while the reader is
    /// not in step with Redis, or after the publish timeout
    /// ([`BackplaneError::Unavailable`]).
    pub async fn publish(&self, event: Event) -> Result<EventId, BackplaneError> {
        self.broker.check(&event)?;
        if self.broker.is_closed() {
            return Err(BackplaneError::Publish(PublishError::Closed));
        }
        let token = self.token();
        let published = self
            .invoke(&self.shared.scripts.publish, |call, attempt| {
                call.arg(stream::new_epoch().to_string())
                    .arg(self.retention())
                    .arg(&event.topic)
                    .arg(event.event_type.as_deref().unwrap_or(""))
                    .arg(&event.data[..])
                    .arg(&token)
                    .arg(if attempt > 0 { "1" } else { "" })
                    .arg(stream::RETRY_WINDOW);
            })
            .await
            .map_err(BackplaneError::Unavailable)?;
        let (epoch, seq): (String, u64) = redis::from_redis_value(published)
            .map_err(|e| BackplaneError::Unavailable(format!("redis: {e}")))?;
        let epoch = epoch
            .parse()
            .map_err(|_| BackplaneError::Unavailable(format!("redis: bad epoch {epoch:?}")))?;
        Ok(EventId::new(epoch, crate::broker::local_seq(seq)))
    }

    /// Runs `script` (one that writes the stream beside other keys, its
    /// keys the stream's and the meta hash's, then `args`) once Redis
    /// answers; see [`invoke`](Replica::invoke). The error says why, for
    /// logs.
    pub(crate) async fn run_script(
        &self,
        script: &redis::Script,
        args: &[Vec<u8>],
    ) -> Result<redis::Value, String> {
        self.invoke(script, |call, _| {
            for arg in args {
                call.arg(&arg[..]);
            }
        })
        .await
    }

    /// Runs `script` with the stream's and the meta hash's keys and the
    /// arguments `args` adds for each attempt (its number, from 0), once
    /// Redis answers, within the publish timeout, trying again on a
    /// connection that broke (Redis restarted, say: the connection fails
    /// its next command while it reconnects), so the script must find out
    /// whether an attempt went through. Refused at once while the reader is
    /// not in step with the stream.
    async fn invoke(
        &self,
        script: &redis::Script,
        args: impl Fn(&mut redis::ScriptInvocation<'_>, u32),
    ) -> Result<redis::Value, String> {
        let mut commands = self.connection()?;
        let deadline = tokio::time::Instant::now() + self.shared.publish_timeout;
        let mut attempt = 0;
        loop {
            let mut call = script.key(&self.shared.stream);
            call.key(&self.shared.meta);
            args(&mut call, attempt);
            let answer =
                tokio::time::timeout_at(deadline, call.invoke_async::<redis::Value>(&mut commands))
                    .await;
            match answer {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error))
                    if attempt < PUBLISH_ATTEMPTS
                        && (error.is_io_error() || error.is_connection_dropped()) =>
                {
                    attempt += 1;
                    tokio::time::sleep_until(
                        (tokio::time::Instant::now() + RETRY_PAUSE * attempt).min(deadline),
                    )
                    .await;
                }
                Ok(Err(error)) => return Err(format!("redis: {error}")),
                Err(_) => {
                    return Err(format!(
                        "redis: no answer within {:?}",
                        self.shared.publish_timeout
                    ))
                }
            }
        }
    }

    /// A connection for commands, if the reader is in step with the
    /// stream: what a store kept beside the stream (the mailbox) runs its
    /// scripts on, refused at once as publishes are.
    pub(crate) fn connection(&self) -> Result<ConnectionManager, String> {
        let shared = &self.shared;
        if !shared.health.up.load(Ordering::Acquire) {
            return Err(shared.health.reason());
        }
        shared
            .commands
            .clone()
            .ok_or_else(|| "no connection to Redis".to_owned())
    }

    /// The stream's key and its meta hash's key.
    pub(crate) fn keys(&self) -> (&str, &str) {
        (&self.shared.stream, &self.shared.meta)
    }

    /// A fresh publish token of this replica.
    pub(crate) fn token(&self) -> String {
        let shared = &self.shared;
        format!(
            "{:x}.{:x}",
            shared.nonce,
            shared.tokens.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// How many entries the stream keeps.
    pub(crate) fn retention(&self) -> usize {
        stream::stream_retention(self.broker.retained_events_limit())
    }

    /// A new epoch, for a stream that has none.
    pub(crate) fn new_epoch() -> u64 {
        stream::new_epoch()
    }

    /// The backplane's health and the mirror's place in the stream.
    pub fn stats(&self) -> ReplicaStats {
        let health = &self.shared.health;
        ReplicaStats {
            connected: health.up.load(Ordering::Acquire),
            error: health
                .error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            mirror: self.broker.stats().mirror.unwrap_or_default(),
        }
    }
}

impl Health {
    fn reason(&self) -> String {
        self.error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| "redis: not in step yet".into())
    }
}

impl fmt::Debug for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replica")
            .field("stream", &self.shared.stream)
            .field("stats", &self.stats())
            .finish()
    }
}

/// A replica's backplane health, from [`Replica::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ReplicaStats {
    /// The reader is in step with the stream.
    pub connected: bool,
    /// Why the reader is not in step, when it is not.
    pub error: Option<String>,
    /// The mirror's place in the stream: its lag, reconnects and skipped
    /// entries (also in the broker's [`stats`](Broker::stats)).
    #[serde(flatten)]
    pub mirror: MirrorStats,
}

/// Why the backplane could not do something.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackplaneError {
    /// The Redis URL does not parse.
    InvalidUrl(String),
    /// The event breaks the rules of an event; nothing was sent.
    Publish(PublishError),
    /// Redis is not reachable or did not answer in time; the event may or
    /// may not have been appended.
    Unavailable(String),
}

impl From<PublishError> for BackplaneError {
    fn from(error: PublishError) -> Self {
        Self::Publish(error)
    }
}

impl fmt::Display for BackplaneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackplaneError::InvalidUrl(e) => write!(f, "not a Redis URL: {e}"),
            BackplaneError::Publish(e) => write!(f, "publish refused: {e}"),
            BackplaneError::Unavailable(e) => write!(f, "the backplane is unavailable: {e}"),
        }
    }
}

impl std::error::Error for BackplaneError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BackplaneError::Publish(e) => Some(e),
            _ => None,
        }
    }
}

/// The reader task, stopped when the last replica handle goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>, Arc<Shared>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        // A stop the app asked for, not a reader that failed.
        self.1.dropped.store(true, Ordering::Release);
        self.0.abort();
    }
}
