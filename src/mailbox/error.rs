//! Why the mailbox refuses a send or a reply: each refusal distinct, with
//! what an answer to the client needs.

use std::fmt;
use std::time::Duration;

use super::MAX_CLIENT_ID_LEN;
use std::sync::Arc;

/// Why [`Mailbox::send`](super::Mailbox::send) refused a notification.
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
    /// The sender holds as much as one sender may (its share, in count or
    /// bytes): `429 Too Many Requests`. Room is made as its notifications
    /// are delivered or expire.
    SenderOverShare {
        /// A wait to suggest (`Retry-After`).
        retry_after: Duration,
    },
    /// The mailbox holds as much as it may, in count or bytes, and nothing
    /// finished is left to forget: `507 Insufficient Storage`.
    Full {
        /// A wait to suggest (`Retry-After`).
        retry_after: Duration,
    },
    /// The store the mailbox is kept in (Redis) did not answer: `503
    /// Service Unavailable`. The notification may or may not be held.
    Unavailable(Unavailable),
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
            SendError::SenderOverShare { .. } => {
                f.write_str("the sender holds as many notifications as one sender may")
            }
            SendError::Full { .. } => f.write_str("the mailbox is full"),
            SendError::Unavailable(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SendError {}

/// The store a mailbox is kept in (Redis) could not be reached or did not
/// answer in time. Only a mailbox kept across the network
/// ([`RedisMailbox`](super::RedisMailbox)) gives it; the routes answer
/// `503 Service Unavailable` with `Retry-After`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    pub(crate) reason: String,
    pub(crate) retry_after: Duration,
}

impl Unavailable {
    /// What went wrong, for logs.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// A wait to suggest (`Retry-After`).
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the mailbox's store is unavailable: {}", self.reason)
    }
}

impl std::error::Error for Unavailable {}

/// Why [`Mailbox::reply`](super::Mailbox::reply) refused a reply; each refusal is distinct.
#[derive(Clone, Debug)]
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
    /// The mailbox, or the share of the notification's sender, which holds
    /// the reply for it, has no room for it: `507 Insufficient Storage`.
    Full {
        /// A wait to suggest (`Retry-After`).
        retry_after: Duration,
    },
    /// The payload could not be serialized; the error is its
    /// [`source`](std::error::Error::source).
    Payload(Arc<serde_json::Error>),
    /// The store the mailbox is kept in did not answer: `503`. The reply
    /// may or may not have been taken.
    Unavailable(Unavailable),
}

impl PartialEq for ReplyError {
    fn eq(&self, other: &Self) -> bool {
        use ReplyError::*;
        match (self, other) {
            (TooLarge { size, limit }, TooLarge { size: s, limit: l }) => (size, limit) == (s, l),
            (Full { retry_after }, Full { retry_after: r }) => retry_after == r,
            // Two serde errors are alike if they say the same.
            (Payload(a), Payload(b)) => a.to_string() == b.to_string(),
            (Unavailable(a), Unavailable(b)) => a == b,
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

impl Eq for ReplyError {}

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
            ReplyError::Full { .. } => f.write_str("the mailbox has no room for this reply"),
            ReplyError::Payload(e) => write!(f, "the reply is not serializable: {e}"),
            ReplyError::Unavailable(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ReplyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReplyError::Payload(e) => Some(&**e),
            _ => None,
        }
    }
}
