//! One held notification, its trace id and what is reported about it.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::ser::SerializeStruct;

use crate::broker::EventId;

/// The id of a notification: 32 hex digits, unique within the process and
/// not guessable from other traces.
///
/// Not a secret: who may see a trace's status is decided by identity (its
/// sender and its target only), never by knowing the trace.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(Box<str>);

impl TraceId {
    /// Keyed hashing of a serial number with keys drawn once per process.
    pub(crate) fn generate(serial: u64) -> Self {
        static KEYS: OnceLock<(
            std::collections::hash_map::RandomState,
            std::collections::hash_map::RandomState,
        )> = OnceLock::new();
        let (a, b) = KEYS.get_or_init(Default::default);
        let mut high = a.build_hasher();
        high.write_u64(serial);
        let mut low = b.build_hasher();
        low.write_u64(serial);
        Self(format!("{:016x}{:016x}", high.finish(), low.finish()).into_boxed_str())
    }

    /// Parses a trace as found in a URL; `None` unless 32 lowercase hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        let valid = s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        valid.then(|| Self(Box::from(s)))
    }

    /// The trace as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for TraceId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// A reply to a notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Who replied (the notification's target).
    pub by: String,
    /// The reply, as JSON text.
    pub payload: Bytes,
    /// When.
    pub at: SystemTime,
}

/// What is known of a notification, from [`Mailbox::status`](super::Mailbox::status).
///
/// Serializes as `{"trace","from","to","expects_reply","created",
/// "expires_in_ms","delivered","delivered_at","replied","reply","replied_at"}`
/// with `reply` the reply's JSON value and times in RFC 3339.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// The trace.
    pub trace: TraceId,
    /// The sender.
    pub from: String,
    /// The target.
    pub to: String,
    /// Whether a reply is expected.
    pub expects_reply: bool,
    /// When it was sent.
    pub created: SystemTime,
    /// Whether the target confirmed it arrived.
    pub delivered: bool,
    /// When it was confirmed.
    pub delivered_at: Option<SystemTime>,
    /// Whether it was replied to.
    pub replied: bool,
    /// The reply.
    pub reply: Option<Reply>,
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

fn json_value(bytes: &Bytes) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null)
}

impl serde::Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Status", 10)?;
        s.serialize_field("trace", &self.trace)?;
        s.serialize_field("from", &self.from)?;
        s.serialize_field("to", &self.to)?;
        s.serialize_field("expects_reply", &self.expects_reply)?;
        s.serialize_field("created", &rfc3339(self.created))?;
        s.serialize_field("delivered", &self.delivered)?;
        s.serialize_field("delivered_at", &self.delivered_at.map(rfc3339))?;
        s.serialize_field("replied", &self.replied)?;
        s.serialize_field(
            "reply",
            &self.reply.as_ref().map(|r| json_value(&r.payload)),
        )?;
        s.serialize_field("replied_at", &self.reply.as_ref().map(|r| rfc3339(r.at)))?;
        s.end()
    }
}

/// Where a notification (or its reply) went on the streams of the client
/// it is for.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sent {
    /// The id of the newest frame that carried it to any stream. A stream
    /// that resumes from an id at or past it had received a copy of its
    /// own: every stream open while it was unconfirmed got one.
    pub(crate) last: Option<EventId>,
    /// The id of the newest frame sent to every stream open at the time: a
    /// stream that subscribed before it has that copy already.
    pub(crate) to_all: Option<EventId>,
}

impl Sent {
    /// Counts a frame with id `id`, sent to every open stream or to one.
    pub(crate) fn record(&mut self, id: EventId, to_all: bool) {
        self.last = Some(newest(self.last, id));
        if to_all {
            self.to_all = Some(newest(self.to_all, id));
        }
    }

    /// Whether a stream that resumes after `seen` had a copy. An id of
    /// another epoch proves nothing: a mirrored broker's epoch changes
    /// when its stream starts again, and the seqs with it.
    pub(crate) fn proven_by(&self, seen: Option<EventId>) -> bool {
        matches!((self.last, seen), (Some(last), Some(seen))
            if last.epoch() == seen.epoch() && last.seq() <= seen.seq())
    }

    /// Whether a stream whose subscription begins after `subscribed` has a
    /// copy already: one was sent to every stream after it subscribed.
    pub(crate) fn reached(&self, subscribed: EventId) -> bool {
        matches!(self.to_all, Some(to_all)
            if to_all.epoch() == subscribed.epoch() && to_all.seq() > subscribed.seq())
    }
}

/// The newer of a frame id and `id`, which is newer still if it is of
/// another epoch (the broker's epoch only changes forwards in time, even
/// where clocks disagree on which is larger).
fn newest(old: Option<EventId>, id: EventId) -> EventId {
    match old {
        Some(old) if old.epoch() == id.epoch() => old.max(id),
        _ => id,
    }
}

/// A held notification.
pub(crate) struct Record {
    pub(crate) trace: TraceId,
    /// Its place in the expiry index.
    pub(crate) serial: u64,
    pub(crate) from: Box<str>,
    pub(crate) to: Box<str>,
    pub(crate) payload: Bytes,
    pub(crate) expects_reply: bool,
    pub(crate) created: SystemTime,
    pub(crate) expires_at: Duration,
    pub(crate) delivered_at: Option<SystemTime>,
    /// Where it was sent to the target's streams: the newest frame that
    /// carried it to any of them, and the newest sent to every stream open
    /// at the time (rather than to one stream as it opened).
    pub(crate) sent: Sent,
    pub(crate) reply: Option<Reply>,
    /// The same for the reply, on the sender's streams.
    pub(crate) reply_sent: Sent,
    /// The sender showed that the reply reached it (`Last-Event-ID`).
    pub(crate) reply_seen: bool,
}

impl Record {
    pub(crate) fn new(
        trace: TraceId,
        serial: u64,
        from: &str,
        to: &str,
        payload: Bytes,
        expects_reply: bool,
        expires_at: Duration,
    ) -> Self {
        Self {
            trace,
            serial,
            from: Box::from(from),
            to: Box::from(to),
            payload,
            expects_reply,
            created: SystemTime::now(),
            expires_at,
            delivered_at: None,
            sent: Sent::default(),
            reply: None,
            reply_sent: Sent::default(),
            reply_seen: false,
        }
    }

    /// What the notification counts against the mailbox's byte bounds, the
    /// target's and the sender's: its payload, both ids and
    /// [`RECORD_OVERHEAD`](super::RECORD_OVERHEAD).
    pub(crate) fn notification_cost(&self) -> usize {
        super::RECORD_OVERHEAD + self.from.len() + self.to.len() + self.payload.len()
    }

    /// What its reply counts, against the mailbox's and the sender's bounds.
    pub(crate) fn reply_cost(&self) -> usize {
        self.reply
            .as_ref()
            .map_or(0, |reply| reply.by.len() + reply.payload.len())
    }

    /// What it counts in all, with its reply.
    pub(crate) fn total_cost(&self) -> usize {
        self.notification_cost() + self.reply_cost()
    }

    /// Delivered, and not expecting a reply or its reply seen by the
    /// sender: nothing is left to happen to it but a status query.
    pub(crate) fn is_finished(&self) -> bool {
        self.delivered_at.is_some() && (!self.expects_reply || self.reply_seen)
    }

    pub(crate) fn status(&self) -> Status {
        Status {
            trace: self.trace.clone(),
            from: self.from.to_string(),
            to: self.to.to_string(),
            expects_reply: self.expects_reply,
            created: self.created,
            delivered: self.delivered_at.is_some(),
            delivered_at: self.delivered_at,
            replied: self.reply.is_some(),
            reply: self.reply.clone(),
        }
    }

    /// The data of the `notification` frame.
    pub(crate) fn notification_json(&self) -> Vec<u8> {
        notification_json(
            &self.trace,
            &self.from,
            &self.payload,
            self.expects_reply,
            self.created,
        )
    }

    /// The data of the `notification.reply` frame.
    pub(crate) fn reply_json(&self) -> Vec<u8> {
        self.reply
            .as_ref()
            .map(|reply| reply_json(&self.trace, reply))
            .unwrap_or_default()
    }
}

/// The data of a `notification` frame: `{"trace","from","payload",
/// "expects_reply","created"}`.
pub(crate) fn notification_json(
    trace: &TraceId,
    from: &str,
    payload: &Bytes,
    expects_reply: bool,
    created: SystemTime,
) -> Vec<u8> {
    let value = serde_json::json!({
        "trace": trace,
        "from": from,
        "payload": json_value(payload),
        "expects_reply": expects_reply,
        "created": rfc3339(created),
    });
    serde_json::to_vec(&value).unwrap_or_default()
}

/// A status from the frames' data a store kept for it (a store that keeps
/// those rather than the record's fields, so as to hold each payload once):
/// the notification's, and the reply's if there is one.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn status_from_frames(
    to: &str,
    notification: &[u8],
    delivered_at: Option<SystemTime>,
    reply: Option<&[u8]>,
) -> Option<Status> {
    #[derive(serde::Deserialize)]
    struct Sent {
        trace: String,
        from: String,
        expects_reply: bool,
        created: String,
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        by: String,
        payload: serde_json::Value,
        at: String,
    }
    let sent: Sent = serde_json::from_slice(notification).ok()?;
    let reply = match reply {
        Some(data) => {
            let answer: Answer = serde_json::from_slice(data).ok()?;
            Some(Reply {
                by: answer.by,
                payload: Bytes::from(serde_json::to_vec(&answer.payload).ok()?),
                at: humantime::parse_rfc3339(&answer.at).ok()?,
            })
        }
        None => None,
    };
    Some(Status {
        trace: TraceId::parse(&sent.trace)?,
        from: sent.from,
        to: to.to_owned(),
        expects_reply: sent.expects_reply,
        created: humantime::parse_rfc3339(&sent.created).ok()?,
        delivered: delivered_at.is_some(),
        delivered_at,
        replied: reply.is_some(),
        reply,
    })
}

/// The data of a `notification.reply` frame: `{"trace","by","payload","at"}`.
pub(crate) fn reply_json(trace: &TraceId, reply: &Reply) -> Vec<u8> {
    let value = serde_json::json!({
        "trace": trace,
        "by": reply.by,
        "payload": json_value(&reply.payload),
        "at": rfc3339(reply.at),
    });
    serde_json::to_vec(&value).unwrap_or_default()
}
