//! Store-and-forward notifications, delivered over the live stream.
//!
//! A [`Mailbox`] holds notifications addressed to a client id until the
//! client confirms it received them, delivers them over the client's event
//! streams (every open tab), and tracks their status and their reply.
//!
//! # Delivery: at least once
//!
//! - Sent while the target has streams open, a notification goes at once
//!   to every one of them as an `event: notification` frame.
//! - Sent while the target is offline, it is held; when a stream of the
//!   target opens, every notification not yet confirmed is sent to that
//!   stream.
//! - A notification counts as **delivered** once the client shows it
//!   arrived: it reconnects with a `Last-Event-ID` header at or past the
//!   id of the newest frame that carried it (the header an `EventSource`
//!   sets from ids it received; a `lastEventId` query parameter, which a
//!   page may have been handed, proves nothing and is not taken as proof),
//!   or acknowledges the trace explicitly ([`Mailbox::ack`], the ack route).
//!   Until then it is sent again to every new stream of the client, so a
//!   cut connection loses nothing.
//!
//! A client may therefore see a notification more than once (after a
//! reconnect, on several tabs): the `trace` in its data is the key to drop
//! duplicates by.
//!
//! Notification frames are *direct messages* of the broker: they take ids
//! from the broker's one sequence, in order with the events a stream
//! carries, but they wait in each stream's own inbox and never enter the
//! replay log. They cannot push anyone's events out of the log, and since
//! they are never evicted, a stream that lags loses none of them: nothing
//! is sent again for a lag. A stream's inbox holds at most its client's
//! unconfirmed notifications and unseen replies: what is confirmed,
//! dropped or expired is taken back from every inbox.
//!
//! # Bounds
//!
//! Every bound is in bytes as well as in counts, so that neither many
//! small notifications nor a few large ones can exhaust memory. A
//! notification counts its payload, both client ids and
//! [`RECORD_OVERHEAD`]; its reply counts its payload and the replier's id.
//!
//! - **TTL**: every notification expires (default 24 h); expired ones are
//!   purged on access and by a [janitor](Mailbox::spawn_janitor).
//! - **Per target** ([`per_target`](MailboxBuilder::per_target), default
//!   1024, and [`per_target_bytes`](MailboxBuilder::per_target_bytes),
//!   default a sixteenth of the broker's retained bytes, 512 KiB): what is
//!   held for one client; a new notification drops the target's oldest to
//!   fit. This is also what one stream of the client can be sent when it
//!   opens.
//! - **Per sender** ([`per_sender`](MailboxBuilder::per_sender), default
//!   1024, and [`per_sender_bytes`](MailboxBuilder::per_sender_bytes),
//!   default 512 KiB): what one sender's notifications and the replies to
//!   them hold. A sender over its share first has its own finished
//!   notifications forgotten, then is refused ([`SendError::SenderOverShare`],
//!   `429`), so that one sender cannot lock every other one out.
//! - **In all** ([`capacity`](MailboxBuilder::capacity), default 100 000,
//!   and [`capacity_bytes`](MailboxBuilder::capacity_bytes), default 64
//!   MiB): a full mailbox first forgets its oldest *finished* notifications
//!   (delivered, and expecting no reply or with their reply seen by the
//!   sender: kept only for their status), and refuses a send only when
//!   none is left ([`SendError::Full`], `507`).
//!
//! With the defaults the mailbox holds at most 64 MiB of counted bytes
//! (payloads and ids) plus about 300 bytes of index per notification.
//!
//! # Replies
//!
//! A notification sent with `expects_reply` can be answered once, by its
//! target, before it expires ([`Mailbox::reply`]); the sender's streams get
//! an `event: notification.reply` frame. The reply is held for the sender
//! as a notification is for its target: sent to each stream of the sender
//! as it opens, until the sender's `Last-Event-ID` shows it arrived. Until
//! then the notification is not finished, and a full mailbox keeps it.
//!
//! # Many replicas
//!
//! A `Mailbox` holds what it was sent in its own process. Replicas behind
//! a load balancer keep one mailbox in Redis instead (feature `redis`):
//! `RedisMailbox`, built with `MailboxBuilder::redis` from a backplane
//! replica, with the same bounds and the same delivery, each change one
//! atomic step in Redis, its frames carried by the backplane's stream.
//! [`MailboxStore`] is what both are to the routes, and to an app that runs
//! either.

mod error;
#[cfg(not(loom))]
mod janitor;
mod notification;
mod record;
#[cfg(all(feature = "redis", not(loom)))]
mod redis;
#[cfg(not(loom))]
mod routes;
mod state;
mod store;
mod stream;

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::broker::{EventId, Topic};
use crate::clock::{Clock, SystemClock};
use crate::sync::{lock, Arc, Mutex};
use crate::{Broker, Event, Subscription};

pub use self::error::{ReplyError, SendError, Unavailable};
#[cfg(not(loom))]
pub use self::janitor::Janitor;
pub use self::notification::Notification;
pub use self::record::{Reply, Status, TraceId};
#[cfg(all(feature = "redis", not(loom)))]
pub use self::redis::{RedisMailbox, UNAVAILABLE_RETRY_AFTER};
#[cfg(not(loom))]
pub use self::routes::{MailboxLayer, MailboxRoutes, ResponseBody, ResponseFuture};
pub use self::store::MailboxStore;
pub use self::stream::{Connection, MAX_CLIENT_ID_LEN};

use self::record::Record;
use self::state::{key, Kind, State};
use self::stream::{client_topic, valid_client_id};

/// Default time a notification is held.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Default most notifications held per target.
pub const DEFAULT_PER_TARGET: usize = 1024;
/// Default most notifications one sender may have held.
pub const DEFAULT_PER_SENDER: usize = 1024;
/// Default most notifications held in all.
pub const DEFAULT_CAPACITY: usize = 100_000;
/// Default most bytes held in all (see the [module docs](self) for what
/// counts).
pub const DEFAULT_CAPACITY_BYTES: usize = 64 * 1024 * 1024;
/// Default largest payload of a notification or reply.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;
/// Default `Retry-After` for a refused send or reply.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);
/// What every notification counts against the byte bounds besides its
/// payload and ids: about what its record and index entries take.
pub const RECORD_OVERHEAD: usize = 256;

pub use crate::wire::{NOTIFICATION_EVENT, REPLY_EVENT};

/// Holds and delivers notifications; see the [module docs](self). Cheap to clone.
///
/// ```
/// use tower_sse::mailbox::Mailbox;
/// use tower_sse::Broker;
///
/// use tower_sse::mailbox::Notification;
///
/// let mailbox = Mailbox::new(Broker::new());
/// let lunch = Notification::to("bob").from("alice").json("lunch?").unwrap().expects_reply();
/// let trace = mailbox.send(lunch).unwrap();
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
    limits: Limits,
}

/// Every bound of a mailbox, fixed when it is built.
#[derive(Clone, Copy, Debug)]
struct Limits {
    ttl: Duration,
    per_target: usize,
    per_target_bytes: usize,
    per_sender: usize,
    per_sender_bytes: usize,
    capacity: usize,
    capacity_bytes: usize,
    max_payload: usize,
    retry_after: Duration,
}

impl Limits {
    /// What `notification` counts against the byte bounds, if it can be
    /// held at all: valid ids, a payload within the limit, and a cost
    /// within the per-target and per-sender bounds.
    fn check(&self, notification: &Notification) -> Result<usize, SendError> {
        let (to, from, payload) = (&notification.to, &notification.from, &notification.payload);
        if !valid_client_id(to) || !valid_client_id(from) {
            return Err(SendError::InvalidClientId);
        }
        if payload.len() > self.max_payload {
            return Err(SendError::TooLarge {
                size: payload.len(),
                limit: self.max_payload,
            });
        }
        let cost = RECORD_OVERHEAD + to.len() + from.len() + payload.len();
        let room = self.per_target_bytes.min(self.per_sender_bytes);
        if cost > room {
            return Err(SendError::TooLarge {
                size: payload.len(),
                limit: room.saturating_sub(cost - payload.len()),
            });
        }
        Ok(cost)
    }

    /// A reply's payload as JSON text, if within the limit.
    fn reply_payload(&self, payload: impl serde::Serialize) -> Result<Vec<u8>, ReplyError> {
        let payload = serde_json::to_vec(&payload)
            .map_err(|e| ReplyError::Payload(std::sync::Arc::new(e)))?;
        if payload.len() > self.max_payload {
            return Err(ReplyError::TooLarge {
                size: payload.len(),
                limit: self.max_payload,
            });
        }
        Ok(payload)
    }
}

/// Counters of a mailbox, from [`Mailbox::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct MailboxStats {
    /// Notifications held now.
    pub held: usize,
    /// Bytes held now, as the bounds count them.
    pub bytes: usize,
    /// Notifications accepted since the start.
    pub sent: u64,
    /// Notifications confirmed delivered.
    pub delivered: u64,
    /// Frames sent for notifications and replies (first sends and resends).
    pub published: u64,
    /// Notifications dropped by the per-target bounds.
    pub dropped: u64,
    /// Notifications purged after their TTL.
    pub expired: u64,
    /// Finished notifications forgotten to make room.
    pub forgotten: u64,
    /// Sends refused because their sender was over its share.
    pub refused_sender: u64,
    /// Sends and replies refused because the mailbox was full.
    pub refused_full: u64,
    /// Clients with at least one open stream.
    pub online: usize,
}

/// Configures a [`Mailbox`]; from [`Mailbox::builder`].
#[must_use]
pub struct MailboxBuilder {
    broker: Broker,
    clock: Box<dyn Clock>,
    /// A clock other than the system's was given: a mailbox kept in Redis
    /// then reads time from it too, rather than from Redis.
    clock_given: bool,
    limits: Limits,
}

impl MailboxBuilder {
    /// How long a notification is held when `send` names no TTL (default 24 h).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.limits.ttl = ttl;
        self
    }

    /// Most notifications held for one target; the oldest is dropped to
    /// make room (default 1024, at least 1).
    pub fn per_target(mut self, n: usize) -> Self {
        self.limits.per_target = n.max(1);
        self
    }

    /// Most bytes held for one target; the oldest are dropped to make room
    /// (default: a sixteenth of the broker's
    /// [retained bytes](crate::BrokerBuilder::retain_bytes), 512 KiB for the
    /// default 8 MiB). It is also the most a stream of the client is sent
    /// at once when it opens.
    pub fn per_target_bytes(mut self, n: usize) -> Self {
        self.limits.per_target_bytes = n.max(1);
        self
    }

    /// Most notifications one sender may have held; past it its sends are
    /// refused until some are finished (default 1024, at least 1).
    pub fn per_sender(mut self, n: usize) -> Self {
        self.limits.per_sender = n.max(1);
        self
    }

    /// Most bytes one sender's notifications and the replies to them may
    /// hold (default as [`per_target_bytes`](MailboxBuilder::per_target_bytes)).
    pub fn per_sender_bytes(mut self, n: usize) -> Self {
        self.limits.per_sender_bytes = n.max(1);
        self
    }

    /// Most notifications held in all; past it `send` is refused
    /// (default 100 000).
    pub fn capacity(mut self, n: usize) -> Self {
        self.limits.capacity = n.max(1);
        self
    }

    /// Most bytes held in all (default 64 MiB).
    pub fn capacity_bytes(mut self, n: usize) -> Self {
        self.limits.capacity_bytes = n.max(1);
        self
    }

    /// Largest payload (serialized JSON) of a notification or a reply
    /// (default 64 KiB).
    pub fn max_payload(mut self, n: usize) -> Self {
        self.limits.max_payload = n;
        self
    }

    /// The wait that refusals of a full mailbox or of a sender over its
    /// share suggest (`Retry-After`, default 30 s).
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.limits.retry_after = wait;
        self
    }

    /// Reads time for expiry from `clock`.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Box::new(clock);
        self.clock_given = true;
        self
    }

    /// Builds the mailbox.
    pub fn build(self) -> Mailbox {
        Mailbox {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                broker: self.broker,
                clock: self.clock,
                limits: self.limits,
            }),
        }
    }
}

impl Mailbox {
    /// A mailbox delivering through `broker`, with default bounds.
    pub fn new(broker: Broker) -> Self {
        Self::builder(broker).build()
    }

    /// Starts configuring a mailbox delivering through `broker`.
    pub fn builder(broker: Broker) -> MailboxBuilder {
        let share = (broker.retained_bytes_limit() / 16).max(1);
        MailboxBuilder {
            broker,
            clock: Box::new(SystemClock::new()),
            clock_given: false,
            limits: Limits {
                ttl: DEFAULT_TTL,
                per_target: DEFAULT_PER_TARGET,
                per_target_bytes: share,
                per_sender: DEFAULT_PER_SENDER,
                per_sender_bytes: share,
                capacity: DEFAULT_CAPACITY,
                capacity_bytes: DEFAULT_CAPACITY_BYTES,
                max_payload: DEFAULT_MAX_PAYLOAD,
                retry_after: DEFAULT_RETRY_AFTER,
            },
        }
    }

    /// The broker it delivers through.
    pub fn broker(&self) -> &Broker {
        &self.shared.broker
    }

    /// Sends `notification`, held for its TTL (or the default), and returns
    /// its trace id.
    ///
    /// Delivered at once to every open stream of its target, else held until
    /// one opens. If the target already holds as much as it may, its oldest
    /// notifications are dropped. Refused when a client id is not one
    /// ([`SendError::InvalidClientId`]), the payload is too large, the sender
    /// is over its share ([`SendError::SenderOverShare`]) or the mailbox is
    /// full ([`SendError::Full`]).
    pub fn send(&self, notification: Notification) -> Result<TraceId, SendError> {
        let shared = &self.shared;
        let limits = &shared.limits;
        let cost = limits.check(&notification)?;
        let Notification {
            to,
            from,
            payload,
            expects_reply,
            ttl,
        } = notification;
        let (to, from) = (to.as_str(), from.as_str());
        let mut state = lock(&shared.state);
        let now = shared.clock.now();
        state.purge_expired(&shared.broker, now);
        if !state.sender_has_room(&shared.broker, from, 1, cost, limits) {
            state.counters.refused_sender += 1;
            crate::metrics::mailbox_refused("sender");
            return Err(SendError::SenderOverShare {
                retry_after: limits.retry_after,
            });
        }
        // What the target's bounds drop to take this one: room it frees.
        let drop = state.target_overflow(to, cost, limits);
        let (count_over, bytes_over) = state.over_capacity(&drop, cost, limits);
        if count_over > 0 || bytes_over > 0 {
            state.forget_finished(&shared.broker, count_over, bytes_over, None);
            if state.over_capacity(&drop, cost, limits) != (0, 0) {
                state.counters.refused_full += 1;
                crate::metrics::mailbox_refused("full");
                return Err(SendError::Full {
                    retry_after: limits.retry_after,
                });
            }
        }
        for trace in drop {
            if state.forget(&shared.broker, &trace) {
                state.counters.dropped += 1;
            }
        }
        state.next += 1;
        let serial = state.next;
        let trace = TraceId::generate(serial);
        let expires_at = now.saturating_add(ttl.unwrap_or(limits.ttl));
        let record = Record::new(
            trace.clone(),
            serial,
            from,
            to,
            payload,
            expects_reply,
            expires_at,
        );
        state.expiry.insert((expires_at, serial), trace.clone());
        state.counters.sent += 1;
        crate::metrics::mailbox_sent();
        state.bytes += cost;
        let held = state.by_target.entry(Box::from(to)).or_default();
        held.traces.push_back(trace.clone());
        held.bytes += cost;
        let share = state.by_sender.entry(Box::from(from)).or_default();
        share.count += 1;
        share.bytes += cost;
        state.records.insert(trace.clone(), record);
        shared.send_notification(&mut state, &trace, None);
        Ok(trace)
    }

    /// The status of `trace`; `None` if unknown, purged or expired.
    pub fn status(&self, trace: &TraceId) -> Option<Status> {
        let mut state = lock(&self.shared.state);
        state.purge_expired(&self.shared.broker, self.shared.clock.now());
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
    /// expects a reply, only once, only before it expires, and only if the
    /// mailbox and the sender's share have room for it. The sender's
    /// streams get a `notification.reply` event, now if one is open, else
    /// when one opens.
    pub fn reply(
        &self,
        trace: &TraceId,
        by: &str,
        payload: impl serde::Serialize,
    ) -> Result<Status, ReplyError> {
        let payload = self.shared.limits.reply_payload(payload)?;
        let shared = &self.shared;
        let limits = &shared.limits;
        let mut state = lock(&shared.state);
        let now = shared.clock.now();
        let record = state.records.get(trace).ok_or(ReplyError::NotFound)?;
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
        let from = record.from.clone();
        let cost = by.len() + payload.len();
        let full = |state: &mut State| {
            state.counters.refused_full += 1;
            Err(ReplyError::Full {
                retry_after: limits.retry_after,
            })
        };
        // The reply is held for the sender: it counts in the sender's share.
        if !state.sender_has_room(&shared.broker, &from, 0, cost, limits) {
            return full(&mut state);
        }
        if state.bytes + cost > limits.capacity_bytes {
            let over = state.bytes + cost - limits.capacity_bytes;
            state.forget_finished(&shared.broker, 0, over, None);
            if state.bytes + cost > limits.capacity_bytes {
                return full(&mut state);
            }
        }
        // Forgetting finished records never forgets this one: it is not
        // finished until its reply is seen.
        let record = state.records.get_mut(trace).expect("not finished");
        record.reply = Some(Reply {
            by: by.to_owned(),
            payload: Bytes::from(payload),
            at: SystemTime::now(),
        });
        state.bytes += cost;
        if let Some(share) = state.by_sender.get_mut(&from) {
            share.bytes += cost;
        }
        // Answering proves it arrived.
        state.mark_delivered(&shared.broker, trace);
        // Held for the sender like a notification for its target: sent to
        // its open streams now, else when one opens, until seen.
        state
            .unseen_replies
            .entry(from)
            .or_default()
            .push(trace.clone());
        shared.send_reply(&mut state, trace, None);
        Ok(state.records[trace].status())
    }

    /// Marks `trace` delivered, on its target's word (the ack route).
    /// Returns false if the trace is unknown or `client` is not its target.
    pub fn ack(&self, trace: &TraceId, client: &str) -> bool {
        let mut state = lock(&self.shared.state);
        state.purge_expired(&self.shared.broker, self.shared.clock.now());
        match state.records.get(trace) {
            Some(record) if record.to.as_ref() == client => {
                state.mark_delivered(&self.shared.broker, trace);
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
    /// use tower_sse::mailbox::{Mailbox, Notification};
    /// use tower_sse::{Broker, Message};
    ///
    /// let mailbox = Mailbox::new(Broker::new());
    /// let hi = Notification::to("bob").from("alice").json("hi").unwrap();
    /// let trace = mailbox.send(hi).unwrap();
    /// let (mut sub, _connection) = mailbox.subscribe("bob", None).unwrap();
    /// let Some(Message::Event(event)) = sub.try_next() else { panic!() };
    /// assert_eq!(event.event_type(), "notification");
    /// assert!(event.data().contains(trace.as_str()));
    /// ```
    pub fn subscribe(
        &self,
        client: &str,
        last_event_id: Option<&str>,
    ) -> Result<(Subscription, Connection), crate::Closed> {
        let topics = crate::Topics::one(client_topic(client));
        let subscription = self.shared.broker.subscribe(&topics, last_event_id)?;
        let honoured = last_event_id.filter(|_| !subscription.starts_with_resync());
        let connection = self.connect(&subscription, client, honoured);
        Ok((subscription, connection))
    }

    /// `subscription`, a new stream of `client` that watches the client's
    /// private topic, opened. `resumed_after` is the id its subscription was
    /// positioned after, if the broker honoured the client's own proof of
    /// receipt (an `EventSource`'s `Last-Event-ID` header; see
    /// [`subscribe`](Mailbox::subscribe) and the events route): everything
    /// whose newest frame is at or before it is marked delivered. Everything
    /// else still held is sent to this stream, unless it was sent to every
    /// stream of the client after this one subscribed (then it has it).
    /// Returns the guard that marks the stream closed on drop.
    pub fn connect(
        &self,
        subscription: &Subscription,
        client: &str,
        resumed_after: Option<&str>,
    ) -> Connection {
        let shared = &self.shared;
        let mut state = lock(&shared.state);
        state.purge_expired(&shared.broker, shared.clock.now());
        *state.online.entry(Box::from(client)).or_default() += 1;
        let newest = shared.broker.last_event_id();
        // An id from another epoch or from the future proves nothing.
        let seen = resumed_after
            .and_then(|id| id.parse::<EventId>().ok())
            .filter(|id| id.epoch() == newest.epoch() && id.seq() <= newest.seq());
        let subscribed = subscription.seam();
        let pending: Vec<TraceId> = state
            .by_target
            .get(client)
            .map(|held| held.traces.iter().cloned().collect())
            .unwrap_or_default();
        for trace in pending {
            let record = &state.records[&trace];
            if record.delivered_at.is_some() {
                continue;
            }
            let sent = record.sent;
            if sent.proven_by(seen) {
                state.mark_delivered(&shared.broker, &trace);
            } else if !sent.reached(subscribed) {
                shared.send_notification(&mut state, &trace, Some(subscription));
            }
        }
        // Replies to what this client sent, the same way.
        let replies = state.unseen_replies.remove(client).unwrap_or_default();
        let mut unseen = Vec::with_capacity(replies.len());
        for trace in replies {
            let Some(record) = state.records.get(&trace) else {
                continue;
            };
            let sent = record.reply_sent;
            if sent.proven_by(seen) {
                state.mark_reply_seen(&shared.broker, &trace);
                continue;
            }
            if !sent.reached(subscribed) {
                shared.send_reply(&mut state, &trace, Some(subscription));
            }
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

    /// Drops every notification past its TTL now; returns how many.
    pub fn purge_expired(&self) -> usize {
        let mut state = lock(&self.shared.state);
        state.purge_expired(&self.shared.broker, self.shared.clock.now())
    }

    /// Counters and sizes.
    pub fn stats(&self) -> MailboxStats {
        let state = lock(&self.shared.state);
        MailboxStats {
            held: state.records.len(),
            bytes: state.bytes,
            sent: state.counters.sent,
            delivered: state.counters.delivered,
            published: state.counters.published,
            dropped: state.counters.dropped,
            expired: state.counters.expired,
            forgotten: state.counters.forgotten,
            refused_sender: state.counters.refused_sender,
            refused_full: state.counters.refused_full,
            online: state.online.len(),
        }
    }
}

impl Shared {
    /// Sends `trace` to its target: to `one` stream, or to every stream of
    /// the target open now (none: nothing happens).
    fn send_notification(&self, state: &mut State, trace: &TraceId, one: Option<&Subscription>) {
        let record = state.records.get_mut(trace).expect("sent traces are held");
        let event = Event::new(NOTIFICATION_EVENT).data(record.notification_json());
        let topic = client_topic(&record.to);
        let key = key(record.serial, Kind::Notification);
        if let Some(id) = self.send_direct(&topic, key, event, one) {
            record.sent.record(id, one.is_none());
            state.counters.published += 1;
        }
    }

    /// Sends the reply to `trace` to its sender, the same way.
    fn send_reply(&self, state: &mut State, trace: &TraceId, one: Option<&Subscription>) {
        let record = state
            .records
            .get_mut(trace)
            .expect("replied traces are held");
        let event = Event::new(REPLY_EVENT).data(record.reply_json());
        let topic = client_topic(&record.from);
        let key = key(record.serial, Kind::Reply);
        if let Some(id) = self.send_direct(&topic, key, event, one) {
            record.reply_sent.record(id, one.is_none());
            state.counters.published += 1;
        }
    }

    /// The id of the frame sent, if any was. A closed broker sends nothing:
    /// the record stays held.
    fn send_direct(
        &self,
        topic: &Topic,
        key: u64,
        event: Event,
        one: Option<&Subscription>,
    ) -> Option<EventId> {
        match one {
            Some(sub) => self.broker.send_direct_to(sub, topic, key, event).ok(),
            None => self.broker.send_direct(topic, key, event).ok().flatten(),
        }
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
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}
