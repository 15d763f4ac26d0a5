//! Store-and-forward notifications, delivered over the live stream.
//!
//! A [`Mailbox`] holds notifications addressed to a client id until the
//! client confirms it received them, delivers them over the client's event
//! streams (every open tab), and tracks their status and their reply.
//!
//! # Delivery: at least once
//!
//! - Sent while the target has a stream open, a notification is published
//!   at once as an `event: notification` frame on every stream of the
//!   target (a private topic of the broker that only the mailbox writes).
//! - Sent while the target is offline, it is held; when a stream of the
//!   target opens, every notification not yet confirmed is sent again on it.
//! - A notification counts as **delivered** once the client shows it
//!   arrived: it reconnects with a `Last-Event-ID` header at or past the
//!   frame's id (the header an `EventSource` sets from ids it received; a
//!   `lastEventId` query parameter, which a page may have been handed, proves
//!   nothing and is not taken as proof), or acknowledges the trace
//!   explicitly ([`Mailbox::ack`], the ack route).
//!   Until then it is sent again on every new connection, so a cut
//!   connection loses nothing; a stream that lagged past a notification
//!   gets it again at once.
//!
//! A client may therefore see a notification more than once (after a
//! reconnect, on several tabs): the `trace` in its data is the key to drop
//! duplicates by.
//!
//! A re-send is a publish on the client's topic, so it reaches every open
//! tab of the client and takes a place in the broker's replay log. A client
//! holding many unconfirmed notifications that connects repeatedly can
//! therefore push other topics' events out of the log (their readers then
//! get a `resync` instead of a replay). Keep
//! [`per_target`](MailboxBuilder::per_target) well below the broker's
//! [`retain_events`](crate::BrokerBuilder::retain_events), and have clients
//! confirm what they got (their `Last-Event-ID`, or the ack route).
//!
//! # Bounds
//!
//! Every notification expires after its TTL (default 24 h); a target holds
//! at most [`per_target`](MailboxBuilder::per_target) notifications (default
//! 1024, the oldest dropped first); the whole mailbox holds at most
//! [`capacity`](MailboxBuilder::capacity) (default 100 000). A full mailbox
//! first forgets its oldest *finished* notifications (delivered, and
//! expecting no reply or with their reply seen by the sender: kept only
//! for their status), and
//! refuses a send only when none is left. Expired entries are purged on
//! access and by a janitor task.
//!
//! # Replies
//!
//! A notification sent with `expects_reply` can be answered once, by its
//! target, before it expires ([`Mailbox::reply`]); the sender's streams get
//! an `event: notification.reply` frame. The reply is held for the sender
//! as a notification is for its target: sent again when a stream of the
//! sender opens, until the sender's `Last-Event-ID` shows it arrived. Until
//! then the notification is not finished, and a full mailbox keeps it.

#[cfg(not(loom))]
mod janitor;
mod record;
#[cfg(not(loom))]
mod routes;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::broker::{EventId, Topic};
use crate::clock::{Clock, SystemClock};
use crate::sync::{lock, Arc, Mutex};
use crate::{Broker, Event};

#[cfg(not(loom))]
pub use self::janitor::Janitor;
pub use self::record::{Reply, Status, TraceId};
#[cfg(not(loom))]
pub use self::routes::{MailboxLayer, MailboxRoutes};

use self::record::Record;

/// Default time a notification is held.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Default most notifications held per target.
pub const DEFAULT_PER_TARGET: usize = 1024;
/// Default most notifications held in all.
pub const DEFAULT_CAPACITY: usize = 100_000;
/// Default largest payload of a notification or reply.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;
/// Longest client id accepted.
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// The event type of a notification on the events route.
pub const NOTIFICATION_EVENT: &str = "notification";
/// The event type of a reply, on the sender's streams.
pub const REPLY_EVENT: &str = "notification.reply";

/// Holds and delivers notifications; see the [module docs](self). Cheap to clone.
///
/// ```
/// use tower_sse::mailbox::Mailbox;
/// use tower_sse::Broker;
///
/// let mailbox = Mailbox::new(Broker::new());
/// let trace = mailbox
///     .send("bob", "alice", serde_json::json!({"text": "lunch?"}), true, None)
///     .unwrap();
/// let status = mailbox.status(&trace).unwrap();
/// assert!(!status.delivered);
/// mailbox.reply(&trace, "bob", serde_json::json!("yes")).unwrap();
/// assert!(mailbox.status(&trace).unwrap().replied);
/// ```
#[derive(Clone)]
pub struct Mailbox {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    broker: Broker,
    clock: Box<dyn Clock>,
    ttl: Duration,
    per_target: usize,
    capacity: usize,
    max_payload: usize,
}

#[derive(Default)]
struct State {
    records: HashMap<TraceId, Record>,
    /// Every record by expiry, to purge without scanning.
    expiry: BTreeMap<(Duration, u64), TraceId>,
    /// Each target's notifications, oldest first.
    by_target: HashMap<Box<str>, VecDeque<TraceId>>,
    /// Open streams per client.
    online: HashMap<Box<str>, usize>,
    /// Notifications that became finished (delivered, and not expecting a
    /// reply or their reply seen by the sender), oldest first: what a full
    /// mailbox forgets first. May name traces purged since.
    finished: VecDeque<TraceId>,
    /// Per sender, the replies it has not shown it received, in reply
    /// order: sent again when a stream of the sender opens.
    unseen_replies: HashMap<Box<str>, Vec<TraceId>>,
    next: u64,
    counters: Counters,
}

/// Counters of a mailbox, from [`Mailbox::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct MailboxStats {
    /// Notifications held now.
    pub held: usize,
    /// Notifications accepted since the start.
    pub sent: u64,
    /// Notifications confirmed delivered.
    pub delivered: u64,
    /// Frames published for notifications (first sends and resends).
    pub published: u64,
    /// Notifications dropped by the per-target cap.
    pub dropped: u64,
    /// Notifications purged after their TTL.
    pub expired: u64,
    /// Finished notifications forgotten to make room in a full mailbox.
    pub forgotten: u64,
    /// Clients with at least one open stream.
    pub online: usize,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    sent: u64,
    delivered: u64,
    published: u64,
    dropped: u64,
    expired: u64,
    forgotten: u64,
}

/// Configures a [`Mailbox`]; from [`Mailbox::builder`].
#[must_use]
pub struct MailboxBuilder {
    broker: Broker,
    clock: Box<dyn Clock>,
    ttl: Duration,
    per_target: usize,
    capacity: usize,
    max_payload: usize,
}

impl MailboxBuilder {
    /// How long a notification is held when `send` names no TTL (default 24 h).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Most notifications held for one target; the oldest is dropped to
    /// make room (default 1024, at least 1).
    pub fn per_target(mut self, n: usize) -> Self {
        self.per_target = n.max(1);
        self
    }

    /// Most notifications held in all; past it `send` is refused
    /// (default 100 000).
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n.max(1);
        self
    }

    /// Largest payload (serialized JSON) of a notification or a reply
    /// (default 64 KiB).
    pub fn max_payload(mut self, n: usize) -> Self {
        self.max_payload = n;
        self
    }

    /// Reads time for expiry from `clock`.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// Builds the mailbox.
    pub fn build(self) -> Mailbox {
        Mailbox {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                broker: self.broker,
                clock: self.clock,
                ttl: self.ttl,
                per_target: self.per_target,
                capacity: self.capacity,
                max_payload: self.max_payload,
            }),
        }
    }
}

/// Why [`Mailbox::send`] refused a notification.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The target or sender id is empty, too long or has control characters.
    InvalidClientId,
    /// The payload is larger than the mailbox accepts.
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The largest accepted.
        limit: usize,
    },
    /// The mailbox holds as many notifications as it may.
    Full,
    /// The payload could not be serialized.
    Payload(String),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::InvalidClientId => write!(
                f,
                "a client id is 1 to {MAX_CLIENT_ID_LEN} bytes without control characters"
            ),
            SendError::TooLarge { size, limit } => {
                write!(f, "the payload is {size} bytes, over the limit of {limit}")
            }
            SendError::Full => f.write_str("the mailbox is full"),
            SendError::Payload(e) => write!(f, "the payload is not serializable: {e}"),
        }
    }
}

impl std::error::Error for SendError {}

/// Why [`Mailbox::reply`] refused a reply; each refusal is distinct.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplyError {
    /// No such notification (never sent, purged, or dropped by the cap).
    NotFound,
    /// The replier is not the notification's target.
    NotTarget,
    /// The notification was sent without `expects_reply`.
    NoReplyExpected,
    /// It already has its reply.
    AlreadyReplied,
    /// It expired.
    Expired,
    /// The payload is larger than the mailbox accepts.
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The largest accepted.
        limit: usize,
    },
    /// The payload could not be serialized.
    Payload(String),
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::NotFound => f.write_str("no such notification"),
            ReplyError::NotTarget => f.write_str("only the notification's target may reply"),
            ReplyError::NoReplyExpected => f.write_str("this notification expects no reply"),
            ReplyError::AlreadyReplied => f.write_str("this notification already has its reply"),
            ReplyError::Expired => f.write_str("this notification has expired"),
            ReplyError::TooLarge { size, limit } => {
                write!(f, "the reply is {size} bytes, over the limit of {limit}")
            }
            ReplyError::Payload(e) => write!(f, "the reply is not serializable: {e}"),
        }
    }
}

impl std::error::Error for ReplyError {}

pub(crate) fn valid_client_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_CLIENT_ID_LEN && !id.chars().any(char::is_control)
}

impl Mailbox {
    /// A mailbox delivering through `broker`, with default bounds.
    pub fn new(broker: Broker) -> Self {
        Self::builder(broker).build()
    }

    /// Starts configuring a mailbox delivering through `broker`.
    pub fn builder(broker: Broker) -> MailboxBuilder {
        MailboxBuilder {
            broker,
            clock: Box::new(SystemClock::new()),
            ttl: DEFAULT_TTL,
            per_target: DEFAULT_PER_TARGET,
            capacity: DEFAULT_CAPACITY,
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }

    /// The broker it delivers through.
    pub fn broker(&self) -> &Broker {
        &self.shared.broker
    }

    /// Sends `payload` from `from` to `to`, held for `ttl` (or the default),
    /// and returns its trace id.
    ///
    /// Delivered at once to every open stream of `to`, else held until one
    /// opens. If `to` already holds the most notifications allowed, its
    /// oldest is dropped.
    pub fn send(
        &self,
        to: &str,
        from: &str,
        payload: impl serde::Serialize,
        expects_reply: bool,
        ttl: Option<Duration>,
    ) -> Result<TraceId, SendError> {
        if !valid_client_id(to) || !valid_client_id(from) {
            return Err(SendError::InvalidClientId);
        }
        let payload = self.shared.encode(&payload).map_err(|e| match e {
            PayloadError::Serialize(e) => SendError::Payload(e),
            PayloadError::TooLarge { size, limit } => SendError::TooLarge { size, limit },
        })?;
        let shared = &self.shared;
        let mut state = lock(&shared.state);
        let now = shared.clock.now();
        state.purge_expired(now);
        if state.records.len() >= shared.capacity && !state.target_full(to, shared.per_target) {
            state.forget_finished(shared.capacity - 1);
            if state.records.len() >= shared.capacity {
                return Err(SendError::Full);
            }
        }
        state.next += 1;
        let serial = state.next;
        let trace = TraceId::generate(serial);
        let expires_at = now.saturating_add(ttl.unwrap_or(shared.ttl));
        let record = Record::new(
            trace.clone(),
            serial,
            from,
            to,
            Bytes::from(payload),
            expects_reply,
            expires_at,
        );
        state.expiry.insert((expires_at, serial), trace.clone());
        state.counters.sent += 1;
        let queue = state.by_target.entry(Box::from(to)).or_default();
        queue.push_back(trace.clone());
        let overflow = if queue.len() > shared.per_target {
            queue.pop_front()
        } else {
            None
        };
        if let Some(old) = overflow {
            if let Some(old) = state.records.remove(&old) {
                state.expiry.remove(&(old.expires_at, old.serial));
            }
            state.counters.dropped += 1;
        }
        state.records.insert(trace.clone(), record);
        if state.online.get(to).is_some_and(|&n| n > 0) {
            shared.publish(&mut state, &trace);
        }
        Ok(trace)
    }

    /// The status of `trace`; `None` if unknown, purged or expired.
    pub fn status(&self, trace: &TraceId) -> Option<Status> {
        let mut state = lock(&self.shared.state);
        state.purge_expired(self.shared.clock.now());
        state.records.get(trace).map(Record::status)
    }

    /// The status of `trace` as seen by `client`: only its sender or its
    /// target may see it; anyone else gets `None`, exactly as for an unknown
    /// trace, so that traces cannot be probed.
    pub fn status_for(&self, trace: &TraceId, client: &str) -> Option<Status> {
        self.status(trace)
            .filter(|status| status.from == client || status.to == client)
    }

    /// Whether `client` is the target of `trace`, expired or not (no purge).
    #[cfg(not(loom))]
    pub(crate) fn is_target(&self, trace: &TraceId, client: &str) -> bool {
        let state = lock(&self.shared.state);
        state
            .records
            .get(trace)
            .is_some_and(|record| record.to.as_ref() == client)
    }

    /// Replies to `trace` on behalf of `by`: only its target, only if it
    /// expects a reply, only once, only before it expires. The sender's
    /// streams get a `notification.reply` event, now if one is open, else
    /// when one opens.
    pub fn reply(
        &self,
        trace: &TraceId,
        by: &str,
        payload: impl serde::Serialize,
    ) -> Result<Status, ReplyError> {
        let payload = self.shared.encode(&payload).map_err(|e| match e {
            PayloadError::Serialize(e) => ReplyError::Payload(e),
            PayloadError::TooLarge { size, limit } => ReplyError::TooLarge { size, limit },
        })?;
        let shared = &self.shared;
        let mut state = lock(&shared.state);
        let now = shared.clock.now();
        let record = state.records.get_mut(trace).ok_or(ReplyError::NotFound)?;
        if record.to.as_ref() != by {
            return Err(ReplyError::NotTarget);
        }
        if record.expires_at <= now {
            return Err(ReplyError::Expired);
        }
        if !record.expects_reply {
            return Err(ReplyError::NoReplyExpected);
        }
        if record.reply.is_some() {
            return Err(ReplyError::AlreadyReplied);
        }
        record.reply = Some(Reply {
            by: by.to_owned(),
            payload: Bytes::from(payload),
            at: SystemTime::now(),
        });
        let from = record.from.clone();
        // Answering proves it arrived.
        if record.delivered_at.is_none() {
            record.delivered_at = Some(SystemTime::now());
            state.counters.delivered += 1;
        }
        // Held for the sender like a notification for its target: sent to
        // its open streams now, else when one opens, until seen.
        let online = state.online.get(&from).is_some_and(|&n| n > 0);
        state
            .unseen_replies
            .entry(from)
            .or_default()
            .push(trace.clone());
        if online {
            shared.publish_reply(&mut state, trace);
        }
        Ok(state.records[trace].status())
    }

    /// Marks `trace` delivered, on its target's word (the ack route).
    /// Returns false if the trace is unknown or `client` is not its target.
    pub fn ack(&self, trace: &TraceId, client: &str) -> bool {
        let mut state = lock(&self.shared.state);
        state.purge_expired(self.shared.clock.now());
        let State {
            records,
            counters,
            finished,
            ..
        } = &mut *state;
        match records.get_mut(trace) {
            Some(record) if record.to.as_ref() == client => {
                if record.delivered_at.is_none() {
                    record.delivered_at = Some(SystemTime::now());
                    counters.delivered += 1;
                    if record.is_finished() {
                        finished.push_back(trace.clone());
                    }
                }
                true
            }
            _ => false,
        }
    }

    /// Opens an in-process stream of `client`'s notifications (and the
    /// broker's system events), for transports other than the events route:
    /// subscribes to the client's private topic, then
    /// [`connect`](Mailbox::connect)s. Keep the [`Connection`] as long as
    /// the subscription is read.
    ///
    /// ```
    /// use tower_sse::mailbox::Mailbox;
    /// use tower_sse::{Broker, Message};
    ///
    /// let mailbox = Mailbox::new(Broker::new());
    /// let trace = mailbox.send("bob", "alice", "hi", false, None).unwrap();
    /// let (mut sub, _connection) = mailbox.subscribe("bob", None).unwrap();
    /// let Some(Message::Event(event)) = sub.try_next() else { panic!() };
    /// assert_eq!(event.event_type(), "notification");
    /// assert!(event.data().contains(trace.as_str()));
    /// ```
    pub fn subscribe(
        &self,
        client: &str,
        last_event_id: Option<&str>,
    ) -> Result<(crate::Subscription, Connection), crate::Closed> {
        let topics = crate::Topics::one(Topic::client(client));
        let subscription = self.shared.broker.subscribe(&topics, last_event_id)?;
        let honoured = last_event_id.filter(|_| !subscription.starts_with_resync());
        let connection = self.connect(client, honoured);
        Ok((subscription, connection))
    }

    /// A stream of `client` opened. `resumed_after` is the id its
    /// subscription was positioned after, if the broker honoured the
    /// client's own proof of receipt (an `EventSource`'s `Last-Event-ID`
    /// header; see [`subscribe`](Mailbox::subscribe) and the events route):
    /// everything sent up to it is marked delivered, and what was sent after
    /// it and is still retained is left to the stream's replay. Everything
    /// else still held is sent again. The stream's subscription must exist
    /// already, so that nothing sent from here on can miss it. Returns the
    /// guard that marks the stream closed on drop.
    pub fn connect(&self, client: &str, resumed_after: Option<&str>) -> Connection {
        let shared = &self.shared;
        let mut state = lock(&shared.state);
        state.purge_expired(shared.clock.now());
        *state.online.entry(Box::from(client)).or_default() += 1;
        let newest = shared.broker.last_event_id();
        // An id from another epoch or from the future proves nothing.
        let seen = resumed_after
            .and_then(|id| id.parse::<EventId>().ok())
            .filter(|id| id.epoch() == newest.epoch() && id.seq() <= newest.seq());
        let oldest_retained = shared.broker.oldest_retained_seq();
        let pending: Vec<TraceId> = state
            .by_target
            .get(client)
            .map(|queue| queue.iter().cloned().collect())
            .unwrap_or_default();
        for trace in pending {
            let record = state
                .records
                .get_mut(&trace)
                .expect("queued traces are held");
            if record.delivered_at.is_some() {
                continue;
            }
            if let (Some(seen), Some(sent)) = (seen, record.last_sent) {
                if sent <= seen {
                    record.delivered_at = Some(SystemTime::now());
                    let finished = record.is_finished();
                    state.counters.delivered += 1;
                    if finished {
                        state.finished.push_back(trace);
                    }
                    continue;
                }
                if sent.seq() >= oldest_retained {
                    // The stream replays that frame itself (or, if it is
                    // evicted before being read, reports the lag, which
                    // sends it again).
                    continue;
                }
            }
            shared.publish(&mut state, &trace);
        }
        // Replies to what this client sent, the same way.
        let replies = state.unseen_replies.remove(client).unwrap_or_default();
        let mut unseen = Vec::with_capacity(replies.len());
        for trace in replies {
            let Some(record) = state.records.get_mut(&trace) else {
                continue;
            };
            if let (Some(seen), Some(sent)) = (seen, record.reply_sent) {
                if sent <= seen {
                    record.reply_seen = true;
                    if record.is_finished() {
                        state.finished.push_back(trace);
                    }
                    continue;
                }
                if sent.seq() >= oldest_retained {
                    unseen.push(trace);
                    continue;
                }
            }
            shared.publish_reply(&mut state, &trace);
            unseen.push(trace);
        }
        if !unseen.is_empty() {
            state.unseen_replies.insert(Box::from(client), unseen);
        }
        Connection {
            mailbox: self.clone(),
            client: Box::from(client),
        }
    }

    /// A stream of `client` lagged: the events in `(after, through]` were
    /// evicted before it read them. Notifications last sent in that range
    /// are sent again at once.
    pub(crate) fn lagged(&self, client: &str, after: EventId, through: EventId) {
        let shared = &self.shared;
        let mut state = lock(&shared.state);
        let again: Vec<TraceId> = state
            .by_target
            .get(client)
            .into_iter()
            .flatten()
            .filter(|trace| {
                let record = &state.records[*trace];
                record.delivered_at.is_none()
                    && record
                        .last_sent
                        .is_some_and(|sent| sent > after && sent <= through)
            })
            .cloned()
            .collect();
        for trace in again {
            shared.publish(&mut state, &trace);
        }
        let replies: Vec<TraceId> = state
            .unseen_replies
            .get(client)
            .into_iter()
            .flatten()
            .filter(|trace| {
                state.records.get(*trace).is_some_and(|record| {
                    record
                        .reply_sent
                        .is_some_and(|sent| sent > after && sent <= through)
                })
            })
            .cloned()
            .collect();
        for trace in replies {
            shared.publish_reply(&mut state, &trace);
        }
    }

    /// Drops every notification past its TTL now; returns how many.
    pub fn purge_expired(&self) -> usize {
        let mut state = lock(&self.shared.state);
        state.purge_expired(self.shared.clock.now())
    }

    /// Counters and sizes.
    pub fn stats(&self) -> MailboxStats {
        let state = lock(&self.shared.state);
        MailboxStats {
            held: state.records.len(),
            sent: state.counters.sent,
            delivered: state.counters.delivered,
            published: state.counters.published,
            dropped: state.counters.dropped,
            expired: state.counters.expired,
            forgotten: state.counters.forgotten,
            online: state.online.len(),
        }
    }
}

enum PayloadError {
    Serialize(String),
    TooLarge { size: usize, limit: usize },
}

impl Shared {
    /// A payload as JSON text, within the size limit.
    fn encode(&self, payload: &impl serde::Serialize) -> Result<Vec<u8>, PayloadError> {
        let bytes =
            serde_json::to_vec(payload).map_err(|e| PayloadError::Serialize(e.to_string()))?;
        if bytes.len() > self.max_payload {
            return Err(PayloadError::TooLarge {
                size: bytes.len(),
                limit: self.max_payload,
            });
        }
        Ok(bytes)
    }

    /// Publishes the reply to `trace` to its sender's streams and remembers
    /// the id.
    fn publish_reply(&self, state: &mut State, trace: &TraceId) {
        let record = state
            .records
            .get_mut(trace)
            .expect("replied traces are held");
        let event = Event::new(REPLY_EVENT).data(record.reply_json());
        if let Ok(id) = self.broker.publish_to_client(&record.from, event) {
            record.reply_sent = Some(id);
        }
    }

    /// Publishes `trace` to its target's streams and remembers the id.
    fn publish(&self, state: &mut State, trace: &TraceId) {
        let record = state
            .records
            .get_mut(trace)
            .expect("published traces are held");
        let event = Event::new(NOTIFICATION_EVENT).data(record.notification_json());
        if let Ok(id) = self.broker.publish_to_client(&record.to, event) {
            record.last_sent = Some(id);
            state.counters.published += 1;
        }
    }
}

impl State {
    fn target_full(&self, to: &str, per_target: usize) -> bool {
        self.by_target
            .get(to)
            .is_some_and(|q| q.len() >= per_target)
    }

    fn purge_expired(&mut self, now: Duration) -> usize {
        let mut purged = 0;
        while let Some(entry) = self.expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let trace = entry.remove();
            if self.forget(&trace) {
                purged += 1;
            }
        }
        self.counters.expired += purged as u64;
        purged
    }

    /// Forgets the oldest finished notifications until at most `keep`
    /// remain in all, or none finished is left.
    fn forget_finished(&mut self, keep: usize) {
        while self.records.len() > keep {
            let Some(trace) = self.finished.pop_front() else {
                return;
            };
            if self.records.get(&trace).is_some_and(Record::is_finished) {
                self.forget(&trace);
                self.counters.forgotten += 1;
            }
        }
    }

    /// Removes `trace` everywhere; whether it was held.
    fn forget(&mut self, trace: &TraceId) -> bool {
        let Some(record) = self.records.remove(trace) else {
            return false;
        };
        self.expiry.remove(&(record.expires_at, record.serial));
        if let Some(queue) = self.by_target.get_mut(&*record.to) {
            queue.retain(|t| t != trace);
            if queue.is_empty() {
                self.by_target.remove(&*record.to);
            }
        }
        if record.reply.is_some() {
            if let Some(replies) = self.unseen_replies.get_mut(&*record.from) {
                replies.retain(|t| t != trace);
                if replies.is_empty() {
                    self.unseen_replies.remove(&*record.from);
                }
            }
        }
        true
    }
}

/// An open stream of a client, as the mailbox counts them; dropping it
/// marks the stream closed.
pub struct Connection {
    mailbox: Mailbox,
    client: Box<str>,
}

impl Connection {
    /// The client id.
    pub fn client(&self) -> &str {
        &self.client
    }

    /// The mailbox.
    pub fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut state = lock(&self.mailbox.shared.state);
        if let Some(n) = state.online.get_mut(&*self.client) {
            *n -= 1;
            if *n == 0 {
                state.online.remove(&*self.client);
            }
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("client", &self.client)
            .finish()
    }
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("stats", &self.stats())
            .finish()
    }
}

impl fmt::Debug for MailboxBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxBuilder")
            .field("ttl", &self.ttl)
            .field("per_target", &self.per_target)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Publishes to the private topic of `client`, which only its own
    /// streams watch.
    pub(crate) fn publish_to_client(
        &self,
        client: &str,
        event: Event,
    ) -> Result<EventId, crate::PublishError> {
        self.publish_to_topic(Topic::client(client), event)
    }
}
