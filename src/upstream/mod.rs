//! One upstream subscription per topic, shared by every local stream.
//!
//! An app whose events live on a bus (a Redis pub/sub channel or a NATS
//! subject per room, a stream per document) implements [`Upstream`]:
//! open a topic, get a [`Stream`] of its events. A broker built with a
//! [`Hub`] over it opens a topic's upstream when the first local stream of
//! the topic arrives, keeps **one** upstream subscription however many
//! streams watch the topic, and closes it a linger after the last one
//! left, so that a tab reloading does not flap it. What the upstream
//! yields is published into the local log like any event: ids, replay,
//! resume, lag and resync behave as for the app's own publishes.
//!
//! # What the crate adds to the bus
//!
//! - **Order and ids.** Every event gets the broker's next id as it is
//!   taken; streams of the topic see it in the same order.
//! - **Replay and resume on this server.** A client that reconnects to it
//!   resumes from its `Last-Event-ID` exactly, while the topic's upstream
//!   stayed open (or lingered) since that id.
//! - **No silent gap.** An upstream that fails to open, fails, ends, or
//!   sends an event the broker must refuse (not UTF-8, too large) puts a
//!   `resync` in the topic's order (`{"reason":"upstream"}`;
//!   [`Message::Resync`](crate::Message::Resync) for a [`Subscription`](crate::Subscription)),
//!   and is opened again with back-off while anyone watches. A client
//!   resuming onto a topic whose upstream was not open since its id (it
//!   closed after the linger) starts with a `resync` too.
//!
//! What it cannot add: a bus that delivers at most once (Redis pub/sub)
//! loses what it sends while no subscription is open, before the first
//! open completes, and during an outage; the crate tells the streams when
//! that may have happened, it cannot get the events back.
//!
//! # Faults and fairness
//!
//! Each topic's upstream is driven by a task of its own: an upstream that
//! blocks in `open` or stops yielding holds up nobody else, and the broker's
//! lock is never held while an upstream is polled, opened or dropped. An
//! open that takes longer than its timeout (10 s) counts as a failure; a
//! panic in `open` or in the stream counts as one too. Failed opens are
//! retried with exponential back-off (100 ms doubling to 30 s by default,
//! with jitter, reset once the upstream delivers); a driver yields to
//! other tasks after a batch of events. A driver whose runtime shuts down
//! under it gives its topic up (a `resync`); the next stream of the topic
//! starts a new one. The broker's
//! [`stats`](crate::Broker::stats) show the upstreams in
//! [`hub`](crate::BrokerStats::hub): how many there are, how many are open,
//! opens, failures, events and refused events.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::future::{ready, Future, Ready};
//!
//! use futures_util::{stream, StreamExt};
//! use tower_sse::upstream::{Hub, Upstream};
//! use tower_sse::{Broker, Event, Message, Topic, Topics};
//!
//! /// Every room's events come from a channel of some bus client.
//! struct Rooms;
//!
//! impl Upstream for Rooms {
//!     type Stream = stream::Chain<stream::Once<Ready<Result<Event, Infallible>>>, stream::Pending<Result<Event, Infallible>>>;
//!     type Error = Infallible;
//!
//!     fn open(&self, topic: &Topic) -> impl Future<Output = Result<Self::Stream, Infallible>> + Send + 'static {
//!         // One event, then open and quiet, as a bus subscription would be.
//!         let greeting = Event::message().data(format!("welcome to {topic}"));
//!         async move { Ok(stream::once(ready(Ok(greeting))).chain(stream::pending())) }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let broker = Broker::builder()
//!     .hub(Hub::new(Rooms).topics(|topic| topic.as_str().starts_with("room:")))
//!     .build();
//!
//! // The first stream of `room:1` opens its upstream; what it yields is
//! // published to the topic like any event.
//! let mut sub = broker.subscribe(&Topics::parse(["room:1"]).unwrap(), None).unwrap();
//! let Some(Message::Event(event)) = sub.recv().await else { panic!() };
//! assert_eq!(event.data(), "welcome to room:1");
//! assert_eq!(broker.stats().hub.unwrap().opens, 1);
//! # }
//! ```

mod driver;
#[cfg(feature = "redis")]
mod redis;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use tokio::runtime::Handle;

use crate::broker::{Broker, BrokerBuilder, Link, Opener, Topic};
use crate::Event;

#[cfg(feature = "redis")]
pub use self::redis::{RedisChannel, RedisPubSub, RedisPubSubError};

/// Default time a topic's upstream stays open after its last stream left.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(5);
/// Default first pause before opening a failed upstream again.
pub const DEFAULT_RETRY_MIN: Duration = Duration::from_millis(100);
/// Default longest pause between two attempts.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(30);
/// Default longest wait for an upstream to open.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest pause between two attempts that [`Hub::retry`] takes.
const RETRY_LIMIT: Duration = Duration::from_secs(24 * 60 * 60);

/// Where a topic's events come from: what the app implements.
///
/// [`open`](Upstream::open) subscribes to one topic and returns its events
/// as a [`Stream`]; the subscription ends when the stream is dropped. The
/// hub calls it for one topic at a time, never twice for a topic whose
/// stream it still holds. An `Err` item, or the stream ending, means the
/// subscription broke: the hub drops it, tells the topic's streams, and
/// opens again with back-off.
///
/// The events' topics are ignored: each goes to the topic it was opened
/// for. Their types and payloads are checked as [`Broker::publish`] does.
pub trait Upstream: Send + Sync + 'static {
    /// The events of one open topic.
    type Stream: Stream<Item = Result<Event, Self::Error>> + Send + 'static;
    /// Why opening failed, or why an open subscription broke.
    type Error: fmt::Display + Send + 'static;

    /// Subscribes to `topic`. The future owns what it needs (it may
    /// outlive `&self`): clone handles into it.
    fn open(
        &self,
        topic: &Topic,
    ) -> impl Future<Output = Result<Self::Stream, Self::Error>> + Send + 'static;
}

/// Which topics an upstream feeds.
type Rule = Arc<dyn Fn(&Topic) -> bool + Send + Sync>;

/// Configures one upstream subscription per topic; given to
/// [`BrokerBuilder::hub`].
#[must_use]
pub struct Hub<U> {
    upstream: U,
    rule: Option<Rule>,
    linger: Duration,
    retry_min: Duration,
    retry_max: Duration,
    open_timeout: Duration,
}

impl<U: Upstream> Hub<U> {
    /// Feeds every topic from `upstream` (but the crate's own `$` topics).
    pub fn new(upstream: U) -> Self {
        Self {
            upstream,
            rule: None,
            linger: DEFAULT_LINGER,
            retry_min: DEFAULT_RETRY_MIN,
            retry_max: DEFAULT_RETRY_MAX,
            open_timeout: DEFAULT_OPEN_TIMEOUT,
        }
    }

    /// Feeds only the topics for which `rule` holds; the others are the
    /// app's to publish, as without a hub. It is asked at each subscribe,
    /// outside the broker's lock, and must give the same answer for a
    /// topic every time.
    pub fn topics(mut self, rule: impl Fn(&Topic) -> bool + Send + Sync + 'static) -> Self {
        self.rule = Some(Arc::new(rule));
        self
    }

    /// Keeps a topic's upstream open for `linger` after its last stream
    /// left (default 5 s): a client that comes back within it resumes
    /// without a gap, and the upstream is not opened again.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Pauses `min` before the first new attempt after a failure, doubling
    /// up to `max` (defaults 100 ms and 30 s; both at least 1 ms and at
    /// most a day); each pause varies by up to a fifth, so that topics
    /// that failed together do not retry together.
    pub fn retry(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min.clamp(Duration::from_millis(1), RETRY_LIMIT);
        self.retry_max = max.clamp(self.retry_min, RETRY_LIMIT);
        self
    }

    /// Gives an upstream `timeout` to open (default 10 s): one that takes
    /// longer counts as a failed open (the topic's streams get a `resync`)
    /// and is tried again after the back-off.
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout.max(Duration::from_millis(1));
        self
    }
}

impl<U> fmt::Debug for Hub<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("upstream", &std::any::type_name::<U>())
            .field("all_topics", &self.rule.is_none())
            .field("linger", &self.linger)
            .field("retry_min", &self.retry_min)
            .field("retry_max", &self.retry_max)
            .field("open_timeout", &self.open_timeout)
            .finish()
    }
}

impl BrokerBuilder {
    /// Feeds topics from an upstream, one subscription per topic shared by
    /// every local stream (see [`upstream`](crate::upstream)).
    ///
    /// The upstreams' tasks run on the Tokio runtime current when a topic
    /// is first subscribed to, or else on the one current here.
    ///
    /// Not for a [`mirrored`](BrokerBuilder::mirrored) broker (a replica
    /// of a backplane): its ids are the shared stream's, and a bus's events
    /// would get different ids on each replica, so a client moving between
    /// replicas could miss some or see some twice. There, no topic is fed
    /// (and an error is logged). Replicas fed from a bus need no
    /// backplane: each subscribes to the bus itself.
    pub fn hub<U: Upstream>(self, hub: Hub<U>) -> Self {
        let shared = Arc::new(driver::Shared {
            upstream: hub.upstream,
            linger: hub.linger,
            retry_min: hub.retry_min,
            retry_max: hub.retry_max,
            open_timeout: hub.open_timeout,
        });
        self.opener(Spawner {
            shared,
            rule: hub.rule,
            runtime: Handle::try_current().ok(),
            refused: AtomicBool::new(false),
        })
    }
}

/// The hub as the broker sees it: the rule, and a task per slot.
struct Spawner<U> {
    shared: Arc<driver::Shared<U>>,
    rule: Option<Rule>,
    runtime: Option<Handle>,
    /// Said once: a broker that mirrors a backplane feeds no topic.
    refused: AtomicBool,
}

impl<U: Upstream> Opener for Spawner<U> {
    fn feeds(&self, broker: &Broker, topic: &Topic) -> bool {
        if !self.rule.as_ref().is_none_or(|rule| rule(topic)) {
            return false;
        }
        if broker.is_mirrored() {
            if !self.refused.swap(true, Ordering::Relaxed) {
                tracing::error!(
                    "a broker that mirrors a backplane cannot take a hub: no topic is fed"
                );
            }
            return false;
        }
        true
    }

    fn start(&self, broker: &Broker, link: Link) {
        // The driver exists before it runs: if it never does (no runtime,
        // or one shutting down), dropping it gives the slot up.
        let driver = driver::Driver::new(self.shared.clone(), broker.downgrade(), link);
        match Handle::try_current().ok().or_else(|| self.runtime.clone()) {
            Some(runtime) => drop(runtime.spawn(driver.run())),
            None => {
                tracing::error!(
                    topic = %driver.topic(),
                    "no Tokio runtime to run the topic's upstream on: subscribe from within one"
                );
                drop(driver);
            }
        }
    }
}
