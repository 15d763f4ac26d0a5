//! The in-process broker: ordered fan-out with a bounded replay log.
//!
//! A [`Broker`] assigns every published event an [`EventId`], keeps the most
//! recent events (bounded by count, bytes and age), and lets any number of
//! [`Subscription`]s read them, each from its own position. It runs on no
//! runtime: subscriptions are [`Stream`](futures_core::Stream)s woken by
//! publishers, and time comes from a [`Clock`].
//!
//! # The contract
//!
//! - **Exactly once, in order.** A subscription yields the events of its
//!   topics in strictly increasing id order, each at most once. Resuming
//!   from an id yields exactly the retained events after it, then live
//!   ones, with no gap and no duplicate at the seam.
//! - **Nothing is lost silently.** When resuming is impossible the first
//!   message is [`Message::Resync`]; when a reader falls so far behind that
//!   an event it had not read is evicted it gets [`Message::Lagged`] with the
//!   exact count, and continues from the oldest retained event.
//! - **Publishers never wait.** Publishing does a bounded amount of work
//!   under one short lock, plus one wake-up per watcher of the event's topic;
//!   readers that watch other topics cost it nothing.
//! - **Topics.** A subscription never sees another topic's events. System
//!   events ([`Broker::publish_system`]) reach every subscription.

mod coalesce;
mod event;
mod hub;
mod mirror;
mod prepared;
mod state;
mod subscription;

use std::fmt;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;

pub use self::event::{Event, InvalidTopic, Topic, Topics, DEFAULT_TOPIC, MAX_TOPIC_LEN};
pub use self::subscription::{Recv, Resumed, Subscription};

use self::prepared::{Origin, Prepared};
use self::state::{Entry, Greeting, Limits, Mirror, State};
use crate::clock::{Clock, SystemClock};
use crate::sync::{lock, Arc, Mutex};
use crate::wire;
pub use crate::wire::{EventId, ParseEventIdError, ResyncReason, RESERVED_EVENT_TYPES};

pub use self::hub::HubStats;
pub(crate) use self::hub::{Joined, Link, LinkStatus, Opener};
#[cfg_attr(not(feature = "redis"), allow(unused_imports))]
pub(crate) use self::mirror::{local_seq, stream_seq, LOCAL_MASK};
pub use self::mirror::{MirrorOutcome, MirrorStats, Mirrored, MirroredDirect, MAX_STREAM_SEQ};
pub(crate) use self::subscription::Frames;

/// Default bound on retained events.
pub const DEFAULT_RETAIN_EVENTS: usize = 2_000;
/// Default bound on retained bytes (encoded frames).
pub const DEFAULT_RETAIN_BYTES: usize = 8 * 1024 * 1024;
/// Default bound on the age of retained events.
pub const DEFAULT_RETAIN_FOR: Duration = Duration::from_secs(30);
/// Default bound on one event's payload.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) limits: Limits,
    pub(crate) clock: Box<dyn Clock>,
    max_event_bytes: usize,
    /// The log mirrors a shared stream: the app publishes through the
    /// backplane, not here.
    pub(crate) mirrored: bool,
    /// The runtime's side of the hub, for a broker with fed topics (see
    /// `hub.rs`).
    pub(crate) opener: Option<Box<dyn Opener>>,
}

/// How an event reaches [`Broker::commit`].
#[derive(Clone, Copy)]
enum Via<'a> {
    /// Published by the app, or a system event of the crate's own.
    App,
    /// The system event that greets new streams.
    Greeting,
    /// From the upstream of `link`'s topic; refused once the link is stale.
    Upstream(&'a Link),
    /// The crate's `resync` about that upstream; refused likewise.
    UpstreamResync(&'a Link),
}

/// A publish/subscribe hub with a replay log. Cheap to clone: clones share
/// the same log and subscribers.
///
/// ```
/// use tower_sse::{Broker, Event, Message, Topics};
///
/// let broker = Broker::new();
/// let first = broker.publish(Event::new("greeting").data("hello")).unwrap();
/// broker.publish(Event::new("greeting").data("again")).unwrap();
///
/// // A client that saw `first` resumes right after it.
/// let topics = Topics::parse(["public"]).unwrap();
/// let mut sub = broker.subscribe(&topics, Some(&first.to_string())).unwrap();
/// let Some(Message::Event(event)) = sub.try_next() else { panic!() };
/// assert_eq!(event.data(), "again");
/// ```
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

/// Configures a [`Broker`]; from [`Broker::builder`].
#[must_use]
pub struct BrokerBuilder {
    max_events: usize,
    max_bytes: usize,
    max_age: Option<Duration>,
    max_event_bytes: usize,
    clock: Box<dyn Clock>,
    epoch: Option<u64>,
    mirrored: bool,
    opener: Option<Box<dyn Opener>>,
}

impl BrokerBuilder {
    /// Keep at most `n` events (default 2000). At least one is always kept.
    pub fn retain_events(mut self, n: usize) -> Self {
        self.max_events = n.max(1);
        self
    }

    /// Keep at most `n` bytes of encoded events (default 8 MiB), counting
    /// each event's frame plus a small fixed overhead.
    pub fn retain_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n.max(1);
        self
    }

    /// Keep no event older than `age` (default 30 s).
    ///
    /// An event that aged out goes at the next publish or subscription (so
    /// no resume gets it), at the events route's keep-alive ticks, or with
    /// [`Broker::evict_expired`]. A read does not look at the clock: a
    /// subscription reading through the log takes what is still there, so
    /// the bound limits what can be resumed and how long memory is held,
    /// never what a reader already on its way gets.
    pub fn retain_for(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// Keep events regardless of age (count and bytes still bound the log).
    pub fn retain_forever(mut self) -> Self {
        self.max_age = None;
        self
    }

    /// Refuse events whose type and payload together are larger than `n`
    /// bytes at publish (default 1 MiB).
    pub fn max_event_bytes(mut self, n: usize) -> Self {
        self.max_event_bytes = n;
        self
    }

    /// Read time from `clock` (default [`SystemClock`]); tests pass a
    /// [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// Fix the epoch instead of taking the start time in nanoseconds.
    ///
    /// Two brokers with the same epoch accept each other's ids, so only set
    /// it when that is the point (tests, or a backplane sharing one sequence).
    pub fn epoch(mut self, epoch: u64) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// Makes a broker whose log mirrors a stream shared by several replicas
    /// (a backplane's): the app publishes through the backplane, which gives
    /// each event its place in the stream, and the backplane's reader feeds
    /// the log with [`Broker::mirror`], so that every replica delivers the
    /// same events in the same order under the same ids. `publish` is then
    /// refused ([`PublishError::Mirrored`]); the crate's own frames
    /// (`server.state`, notifications) still go out, on this replica only.
    pub fn mirrored(mut self) -> Self {
        self.mirrored = true;
        self
    }

    /// Feeds some topics from an upstream (see `crate::upstream`).
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn opener(mut self, opener: impl Opener) -> Self {
        self.opener = Some(Box::new(opener));
        self
    }

    /// Builds the broker.
    pub fn build(self) -> Broker {
        let epoch = self.epoch.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                .unwrap_or(0)
        });
        let mut state = State::new(epoch);
        if self.mirrored {
            state.mirror = Some(Mirror::default());
        }
        Broker {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                limits: Limits {
                    max_events: self.max_events,
                    max_bytes: self.max_bytes,
                    max_age: self.max_age,
                },
                clock: self.clock,
                max_event_bytes: self.max_event_bytes,
                mirrored: self.mirrored,
                opener: self.opener,
            }),
        }
    }
}

impl fmt::Debug for BrokerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerBuilder")
            .field("max_events", &self.max_events)
            .field("max_bytes", &self.max_bytes)
            .field("max_age", &self.max_age)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Default for Broker {
    fn default() -> Self {
        Self::new()
    }
}

impl Broker {
    /// A broker with the default retention (2000 events, 8 MiB, 30 s).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Starts configuring a broker.
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder {
            max_events: DEFAULT_RETAIN_EVENTS,
            max_bytes: DEFAULT_RETAIN_BYTES,
            max_age: Some(DEFAULT_RETAIN_FOR),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            clock: Box::new(SystemClock::new()),
            epoch: None,
            mirrored: false,
            opener: None,
        }
    }

    /// This broker's epoch, the first half of every id it assigns. It is
    /// fixed, but for a broker that mirrors a shared log, whose epoch is the
    /// log's.
    pub fn epoch(&self) -> u64 {
        lock(&self.shared.state).epoch
    }

    /// Publishes `event` to its topic and returns its id.
    ///
    /// Never waits for subscribers. Refuses, with a [`PublishError`], an
    /// event type that is empty, contains CR or LF, or is one of the
    /// crate's own ([`RESERVED_EVENT_TYPES`]), an invalid topic, a payload
    /// that is not UTF-8 or is too large, and any publish after
    /// [`close`](Broker::close).
    pub fn publish(&self, event: Event) -> Result<EventId, PublishError> {
        if self.shared.mirrored {
            return Err(PublishError::Mirrored);
        }
        let topic = Topic::new(&event.topic).map_err(|_| PublishError::InvalidTopic)?;
        let prepared = self.prepare(event, Origin::App)?;
        self.commit(topic, prepared, Via::App)
    }

    /// Publishes `event` to every subscription, whatever its topics; the
    /// event's own topic is ignored.
    ///
    /// For events about the server itself (its mode, a coming shutdown)
    /// that every client must see. The crate's own event types are refused
    /// here as in [`publish`](Broker::publish).
    pub fn publish_system(&self, event: Event) -> Result<EventId, PublishError> {
        if self.shared.mirrored {
            return Err(PublishError::Mirrored);
        }
        let prepared = self.prepare(event, Origin::App)?;
        self.commit(Topic::system(), prepared, Via::App)
    }

    /// Publishes a system event of the crate's own that also becomes the
    /// greeting: a frame (without its id) on every stream opened on the
    /// events route from now on, so that a client connecting learns the
    /// current state (e.g. the server mode). It goes where the stream's
    /// replay ends, so that no older state replayed after it contradicts
    /// it: first on a stream that starts live, and not at all when the
    /// replay holds this very event.
    #[cfg(not(loom))]
    pub(crate) fn publish_system_greeting(&self, event: Event) -> Result<EventId, PublishError> {
        let prepared = self.prepare(event, Origin::Crate)?;
        self.commit(Topic::system(), prepared, Via::Greeting)
    }

    /// Whether `publish` would take `event`, short of the broker being
    /// closed: for a backplane, before it sends the event anywhere.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn check(&self, event: &Event) -> Result<(), PublishError> {
        Topic::new(&event.topic).map_err(|_| PublishError::InvalidTopic)?;
        self.prepare(event.clone(), Origin::App).map(drop)
    }

    /// Whether its log mirrors a backplane's stream.
    #[cfg(not(loom))]
    pub(crate) fn is_mirrored(&self) -> bool {
        self.shared.mirrored
    }

    /// The bound on retained events it was built with.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn retained_events_limit(&self) -> usize {
        self.shared.limits.max_events
    }

    /// Validates and encodes `event`, outside the lock.
    /// Whether the crate's own `event` (a notification's frame, say) is one
    /// this broker would send: within its size limit, say.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn check_own(&self, event: Event) -> Result<(), PublishError> {
        self.prepare(event, Origin::Crate).map(drop)
    }

    fn prepare(&self, event: Event, origin: Origin) -> Result<Prepared, PublishError> {
        Prepared::new(
            event,
            origin,
            self.shared.max_event_bytes,
            self.shared.limits.max_bytes,
        )
    }

    /// Gives `prepared` its id and appends it to the log, under the lock:
    /// the id is assigned where the event becomes visible.
    fn commit(
        &self,
        topic: Topic,
        prepared: Prepared,
        via: Via<'_>,
    ) -> Result<EventId, PublishError> {
        let mut wakers = Vec::new();
        let id = {
            let mut state = lock(&self.shared.state);
            if state.closed {
                return Err(PublishError::Closed);
            }
            if let Via::Upstream(link) | Via::UpstreamResync(link) = via {
                // A driver whose slot is gone must not add to the topic:
                // another may own it now.
                if !state.links.is_current(link) {
                    return Err(PublishError::Closed);
                }
            }
            let now = self.shared.clock.now();
            let seq = state.take_seq().ok_or(PublishError::Mirrored)?;
            let topic_key = state.topic_key(&topic);
            state.take_topic_wakers(topic_key, &mut wakers);
            let at = state::log_time(now, Duration::ZERO);
            let entry = Arc::new(prepared.stamp(state.epoch, seq, at, topic_key, topic));
            match via {
                Via::Greeting => {
                    state.greeting = Some(Greeting {
                        seq,
                        frame: entry.frame.slice(entry.id_line..),
                    });
                }
                Via::Upstream(_) => state.links.count_event(),
                Via::App | Via::UpstreamResync(_) => {}
            }
            state.append(entry, &self.shared.limits, now);
            EventId::new(state.epoch, seq)
        };
        wakers.into_iter().for_each(Waker::wake);
        crate::metrics::published();
        Ok(id)
    }

    /// Sends `event` to the subscriptions watching `topic` right now, and
    /// to nobody else: it gets an id from the one sequence, like any event,
    /// but is not retained, so it is never replayed and never evicted. Each
    /// subscription reads it from its own inbox, in id order with the log.
    ///
    /// `topic` must be a reserved topic of direct messages
    /// ([`Topic::is_direct_only`]). `key` names the message for
    /// [`retract_direct`](Broker::retract_direct). Returns `None`, sending
    /// nothing, when nobody watches the topic.
    pub(crate) fn send_direct(
        &self,
        topic: &Topic,
        key: u64,
        event: Event,
    ) -> Result<Option<EventId>, PublishError> {
        debug_assert!(topic.is_direct_only());
        let prepared = self.prepare(event, Origin::Crate)?;
        let mut wakers = Vec::new();
        let id = {
            let mut state = lock(&self.shared.state);
            if state.closed {
                return Err(PublishError::Closed);
            }
            let Some(&topic_key) = state.topic_index.get(topic) else {
                return Ok(None);
            };
            let watchers = state.watchers(topic_key);
            if watchers.is_empty() {
                return Ok(None);
            }
            let entry = self.direct_entry(&mut state, topic_key, topic.clone(), prepared)?;
            for sub in watchers {
                state.push_direct(sub, key, &entry, &mut wakers);
            }
            EventId::new(state.epoch, entry.seq)
        };
        wakers.into_iter().for_each(Waker::wake);
        Ok(Some(id))
    }

    /// Sends `event` as a direct message (see
    /// [`send_direct`](Broker::send_direct)) to `sub` alone, which must
    /// watch `topic`.
    pub(crate) fn send_direct_to(
        &self,
        sub: &Subscription,
        topic: &Topic,
        key: u64,
        event: Event,
    ) -> Result<EventId, PublishError> {
        debug_assert!(Arc::ptr_eq(&self.shared, sub.shared()));
        self.send_direct_to_key(sub.key(), topic, key, event)?
            .ok_or(PublishError::InvalidTopic)
    }

    /// The same, for the subscription of key `sub` (what
    /// [`Subscription::key`] gave), if one still watches `topic`: for a
    /// task that outlived the subscription it was handed. A key reused
    /// since by another subscription reaches it only if it watches
    /// `topic` too (for a client's private topic: the same client).
    /// `None`, sending nothing, if none does.
    pub(crate) fn send_direct_to_key(
        &self,
        sub: usize,
        topic: &Topic,
        key: u64,
        event: Event,
    ) -> Result<Option<EventId>, PublishError> {
        let prepared = self.prepare(event, Origin::Crate)?;
        let mut wakers = Vec::new();
        let id = {
            let mut state = lock(&self.shared.state);
            if state.closed {
                return Err(PublishError::Closed);
            }
            let Some(&topic_key) = state.topic_index.get(topic) else {
                return Ok(None);
            };
            if !state.topics[topic_key]
                .watchers
                .iter()
                .any(|(_, &s)| s == sub)
            {
                return Ok(None);
            }
            let entry = self.direct_entry(&mut state, topic_key, topic.clone(), prepared)?;
            state.push_direct(sub, key, &entry, &mut wakers);
            EventId::new(state.epoch, entry.seq)
        };
        wakers.into_iter().for_each(Waker::wake);
        Ok(Some(id))
    }

    /// Takes back the unread direct messages named `key` from the
    /// subscriptions watching `topic` (one being written out in slices
    /// stays: it cannot be taken back halfway).
    pub(crate) fn retract_direct(&self, topic: &Topic, key: u64) {
        let mut state = lock(&self.shared.state);
        if let Some(&topic_key) = state.topic_index.get(topic) {
            state.retract(topic_key, key);
        }
    }

    /// Stamps a direct message with the next seq.
    fn direct_entry(
        &self,
        state: &mut State,
        topic_key: usize,
        topic: Topic,
        prepared: Prepared,
    ) -> Result<Arc<Entry>, PublishError> {
        let seq = state.take_seq().ok_or(PublishError::Mirrored)?;
        state.counters.direct += 1;
        let now = self.shared.clock.now();
        let at = state::log_time(now, Duration::ZERO);
        let entry = prepared.stamp(state.epoch, seq, at, topic_key, topic);
        Ok(Arc::new(entry))
    }

    /// Subscribes to `topics` (plus the system events every subscription
    /// gets).
    ///
    /// `last_event_id` is what the client last saw:
    /// - `None`: live from now, no resync (a fresh client has just loaded
    ///   its state);
    /// - an id this broker can honour: exactly the retained events of
    ///   `topics` after it, then live ones;
    /// - anything else (unparsable, another epoch, in the future, or older
    ///   than what is retained for these topics): the first message is
    ///   [`Message::Resync`], then live.
    ///
    /// Fails only once the broker is closed.
    pub fn subscribe(
        &self,
        topics: &Topics,
        last_event_id: Option<&str>,
    ) -> Result<Subscription, Closed> {
        let topics: Vec<Topic> = topics.iter().cloned().collect();
        // The app's rule runs before the lock: no user code under it.
        let fed: Vec<bool> = match &self.shared.opener {
            Some(opener) => topics
                .iter()
                .map(|topic| !topic.as_str().starts_with('$') && opener.feeds(self, topic))
                .collect(),
            None => Vec::new(),
        };
        let mut joined = Joined::default();
        let sub = {
            let mut state = lock(&self.shared.state);
            if state.closed {
                return Err(Closed(()));
            }
            let now = self.shared.clock.now();
            state.evict(&self.shared.limits, now);
            Subscription::new(
                self.shared.clone(),
                &mut state,
                &topics,
                &fed,
                last_event_id,
                &mut joined,
            )
        };
        joined.wake.into_iter().for_each(Waker::wake);
        if let Some(opener) = &self.shared.opener {
            for link in joined.start {
                opener.start(self, link);
            }
        }
        Ok(sub)
    }

    /// The id of the newest event published, `EPOCH-0` if none yet.
    ///
    /// Hand it to a page along with the state it renders: connecting with
    /// it as `lastEventId` then loses nothing published in between.
    pub fn last_event_id(&self) -> EventId {
        let state = lock(&self.shared.state);
        EventId::new(state.epoch, state.next_seq - 1)
    }

    /// The bound on retained bytes it was built with.
    pub(crate) fn retained_bytes_limit(&self) -> usize {
        self.shared.limits.max_bytes
    }

    /// Ends every subscription once it has read what is retained for it,
    /// and refuses later publishes and subscribes. Idempotent.
    pub fn close(&self) {
        self.close_inner(None);
    }

    /// Like [`close`](Broker::close), and every stream served by the events
    /// route ends with a final frame: a `retry:` hint of `delay`, so that
    /// browsers come back after it (to this server once restarted, or to
    /// another replica) instead of at once, and an `event: shutdown` whose
    /// data is `{"retry": MILLISECONDS}` for pages that want to say so. The
    /// frame has no id and is not stored in the log.
    pub fn close_with_retry(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.close_inner(Some(wire::shutdown_frame(millis)));
    }

    fn close_inner(&self, frame: Option<Bytes>) {
        let mut wakers = Vec::new();
        {
            let mut state = lock(&self.shared.state);
            if state.closed {
                return;
            }
            state.closed = true;
            state.close_frame = frame;
            state.take_all_wakers(&mut wakers);
            state.links.take_all_wakers(&mut wakers);
        }
        wakers.into_iter().for_each(Waker::wake);
    }

    /// The frame every stream ends with after `close_with_retry`.
    #[cfg(not(loom))]
    pub(crate) fn close_frame(&self) -> Option<Bytes> {
        lock(&self.shared.state).close_frame.clone()
    }

    /// Whether [`close`](Broker::close) was called.
    pub fn is_closed(&self) -> bool {
        lock(&self.shared.state).closed
    }

    /// Drops events older than the age bound now, rather than at the next
    /// publish, subscription or tick.
    pub fn evict_expired(&self) {
        let mut state = lock(&self.shared.state);
        let now = self.shared.clock.now();
        state.evict(&self.shared.limits, now);
    }

    /// Marks a keep-alive period: every stream of the events route that
    /// wrote nothing since the previous tick sends a keep-alive comment.
    /// One shared tick replaces a timer per connection, and wakes only the
    /// streams that are due.
    pub(crate) fn tick(&self) {
        let mut wakers = Vec::new();
        {
            let mut state = lock(&self.shared.state);
            let now = self.shared.clock.now();
            state.evict(&self.shared.limits, now);
            state.keep_alive_tick(&mut wakers);
        }
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Ends the coalescing windows that are over and wakes the streams that
    /// were published to meanwhile; called by the events route's ticker.
    /// Returns whether any window is still open.
    pub(crate) fn end_coalescing_windows(&self) -> bool {
        let mut wakers = Vec::new();
        let still_open = {
            let mut state = lock(&self.shared.state);
            if state.windows.is_empty() {
                return false;
            }
            let now = self.shared.clock.now();
            let State { windows, subs, .. } = &mut *state;
            windows.end(subs, now, &mut wakers);
            !windows.is_empty()
        };
        wakers.into_iter().for_each(Waker::wake);
        still_open
    }

    /// Ready while a coalescing window is open (or the broker is closed);
    /// otherwise parks `cx`'s task until a stream opens one, so that
    /// whoever calls [`end_coalescing_windows`](Broker::end_coalescing_windows)
    /// needs no timer while every stream is idle.
    pub(crate) fn poll_coalescing(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = lock(&self.shared.state);
        if state.closed {
            return Poll::Ready(());
        }
        state.windows.poll_open(cx)
    }

    /// Events published, and frames handed to the events route's streams,
    /// so far: what the route's load meter samples (cheaper than
    /// [`stats`](Broker::stats)).
    #[cfg(not(loom))]
    pub(crate) fn activity(&self) -> (u64, u64) {
        let state = lock(&self.shared.state);
        (state.counters.published, state.counters.framed)
    }

    /// Counts `frames` as handed to streams (for the tests of the route's
    /// load meter).
    #[cfg(test)]
    pub(crate) fn count_framed(&self, frames: u64) {
        lock(&self.shared.state).counters.framed += frames;
    }

    /// Counters and sizes, read in one consistent snapshot.
    pub fn stats(&self) -> BrokerStats {
        let state = lock(&self.shared.state);
        BrokerStats {
            published: state.counters.published,
            subscribers: state.subs.len(),
            retained_events: state.log.len(),
            retained_bytes: state.retained_bytes,
            evicted: state.counters.evicted,
            lagged_events: state.counters.lagged_events,
            lag_reports: state.counters.lag_reports,
            resyncs: state.counters.resyncs,
            topics: state.topics.len(),
            direct: state.counters.direct,
            mirror: Broker::mirror_stats(&state),
            hub: Broker::hub_stats(&state, &self.shared),
            direct_bytes: state.direct_bytes,
            cut: state.counters.cut,
        }
    }

    /// Counters of one topic; `None` if the broker holds nothing for it.
    pub fn topic_stats(&self, topic: &str) -> Option<TopicStats> {
        let state = lock(&self.shared.state);
        let &key = state.topic_index.get(topic)?;
        let log = &state.topics[key];
        Some(TopicStats {
            published: log.published,
            subscribers: log.watchers.len(),
            retained_events: log.entries.len(),
        })
    }

    #[cfg(not(loom))]
    pub(crate) fn downgrade(&self) -> WeakBroker {
        WeakBroker(Arc::downgrade(&self.shared))
    }
}

/// A handle that does not keep the broker alive, for background tasks.
#[cfg(not(loom))]
#[derive(Clone)]
pub(crate) struct WeakBroker(std::sync::Weak<Shared>);

#[cfg(not(loom))]
impl WeakBroker {
    pub(crate) fn upgrade(&self) -> Option<Broker> {
        self.0.upgrade().map(|shared| Broker { shared })
    }
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("epoch", &self.epoch())
            .field("stats", &self.stats())
            .finish()
    }
}

/// A consistent snapshot of a broker's counters, from [`Broker::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct BrokerStats {
    /// Events published since the broker was built.
    pub published: u64,
    /// Live subscriptions (open SSE connections included).
    pub subscribers: usize,
    /// Events in the replay log now.
    pub retained_events: usize,
    /// Bytes the replay log counts now.
    pub retained_bytes: usize,
    /// Events evicted from the log by any bound.
    pub evicted: u64,
    /// Events subscribers missed because they fell behind (the sum of every
    /// [`Message::Lagged`]'s `missed`).
    pub lagged_events: u64,
    /// How many [`Message::Lagged`] were reported.
    pub lag_reports: u64,
    /// How many subscriptions began with a [`Message::Resync`].
    pub resyncs: u64,
    /// Topics the broker holds state for.
    pub topics: usize,
    /// Direct messages sent (the mailbox's notifications and replies):
    /// read from each subscription's own inbox, never retained in the log.
    pub direct: u64,
    /// Bytes of direct messages waiting in inboxes to be read, each copy
    /// counted.
    pub direct_bytes: usize,
    /// A mirrored broker's place in its stream (see [`Broker::mirror`]);
    /// `None` for a broker that publishes itself.
    pub mirror: Option<MirrorStats>,
    /// The upstreams of a broker built with a hub
    /// (`BrokerBuilder::hub`); `None` for one without.
    pub hub: Option<HubStats>,
    /// Streams ended in the middle of a frame too large for one body frame,
    /// because the event was evicted before its last slice was written
    /// (counted in `lag_reports` too).
    pub cut: u64,
}

/// A snapshot of one topic, from [`Broker::topic_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct TopicStats {
    /// Events published to the topic while the broker held state for it.
    pub published: u64,
    /// Subscriptions watching it.
    pub subscribers: usize,
    /// Its events in the replay log now.
    pub retained_events: usize,
}

/// What a [`Subscription`] yields.
#[derive(Clone, Debug)]
pub enum Message {
    /// A published event.
    Event(ReceivedEvent),
    /// What the client holds is no longer a complete picture: it must
    /// reload its state. First, when the id given at subscribe time cannot
    /// be honoured, or the stream starts while its topic's upstream is
    /// down; or mid-stream, in order, where a topic's upstream may have
    /// lost events ([`ResyncReason::Upstream`]). Live events follow.
    Resync {
        /// Why.
        reason: ResyncReason,
        /// The position the stream continues from.
        resume_from: EventId,
    },
    /// The subscription fell so far behind that `missed` of its events were
    /// evicted before it read them. It continues with the oldest retained.
    Lagged {
        /// How many events of its topics it will never see.
        missed: u64,
        /// The position the stream continues from.
        resume_from: EventId,
    },
}

/// An event as a subscriber receives it: shares the broker's copy.
#[derive(Clone)]
pub struct ReceivedEvent {
    epoch: u64,
    entry: Arc<Entry>,
}

impl ReceivedEvent {
    /// Its id.
    pub fn id(&self) -> EventId {
        EventId::new(self.epoch, self.entry.seq)
    }

    /// Its topic.
    pub fn topic(&self) -> &Topic {
        &self.entry.topic
    }

    /// Whether it was published with [`Broker::publish_system`].
    pub fn is_system(&self) -> bool {
        self.entry.topic.as_str() == event::SYSTEM_TOPIC
    }

    /// Its type (`"message"` by default).
    pub fn event_type(&self) -> &str {
        self.entry.event_type.as_deref().unwrap_or("message")
    }

    /// Its payload.
    pub fn data(&self) -> &str {
        // Checked to be UTF-8 at publish.
        std::str::from_utf8(&self.entry.data).unwrap_or_default()
    }

    /// Its complete SSE frame, `id:` line to blank line, as sent on the wire.
    pub fn frame(&self) -> &Bytes {
        &self.entry.frame
    }
}

impl fmt::Debug for ReceivedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedEvent")
            .field("id", &self.id())
            .field("topic", &self.entry.topic)
            .field("event_type", &self.event_type())
            .field("data", &self.data())
            .finish()
    }
}

/// Why [`Broker::publish`] refused an event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// The broker is closed.
    Closed,
    /// The event type is the empty string.
    EmptyEventType,
    /// The event type contains CR or LF, which would inject SSE fields.
    InvalidEventType,
    /// The event type is one the crate itself speaks on the wire
    /// ([`RESERVED_EVENT_TYPES`]): clients act on those, so only the crate
    /// may send them.
    ReservedEventType,
    /// The broker mirrors a log shared by several replicas: publish through
    /// the backplane, which gives the event its place in that log. (Also
    /// for a mirror's own frames, past a million of them between two of the
    /// log's events.)
    Mirrored,
    /// The topic name breaks the rules of [`Topic`].
    InvalidTopic,
    /// The payload is not UTF-8; the SSE stream is.
    NotUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// The event is larger than the broker accepts.
    TooLarge {
        /// The event's size in bytes: its type and its payload.
        size: usize,
        /// The largest accepted.
        limit: usize,
    },
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::Closed => f.write_str("the broker is closed"),
            PublishError::EmptyEventType => f.write_str("the event type is empty"),
            PublishError::InvalidEventType => f.write_str("the event type contains CR or LF"),
            PublishError::Mirrored => {
                f.write_str("this broker mirrors a shared log: publish through its backplane")
            }
            PublishError::ReservedEventType => write!(
                f,
                "the event type is reserved for the server's own events ({})",
                RESERVED_EVENT_TYPES.join(", ")
            ),
            PublishError::InvalidTopic => fmt::Display::fmt(&InvalidTopic::new(), f),
            PublishError::NotUtf8 { valid_up_to } => {
                write!(
                    f,
                    "the payload is not UTF-8 (valid up to byte {valid_up_to})"
                )
            }
            PublishError::TooLarge { size, limit } => {
                write!(
                    f,
                    "the event's type and payload are {size} bytes, over the limit of {limit}"
                )
            }
        }
    }
}

impl std::error::Error for PublishError {}

/// The broker is closed: no new subscriptions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed(());

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the broker is closed")
    }
}

impl std::error::Error for Closed {}
