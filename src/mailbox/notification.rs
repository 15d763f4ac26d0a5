//! What to send: a [`Notification`], built before the mailbox sees it.

use std::time::Duration;

use bytes::Bytes;

/// A notification to send with [`Mailbox::send`](super::Mailbox::send):
/// who it is for, who it is from, a JSON payload, whether it expects a
/// reply, and how long it is held.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tower_sse::mailbox::{Mailbox, Notification};
/// use tower_sse::Broker;
///
/// let mailbox = Mailbox::new(Broker::new());
/// let lunch = Notification::to("bob")
///     .from("alice")
///     .json(&serde_json::json!({"text": "lunch?"}))?
///     .expects_reply()
///     .ttl(Duration::from_secs(3600));
/// let trace = mailbox.send(lunch)?;
/// assert!(mailbox.status(&trace).unwrap().expects_reply);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Notification {
    pub(super) to: String,
    pub(super) from: String,
    /// JSON text.
    pub(super) payload: Bytes,
    pub(super) expects_reply: bool,
    pub(super) ttl: Option<Duration>,
}

impl Notification {
    /// A notification for the client `to`, with a `null` payload, from no
    /// one yet: name its sender with [`from`](Notification::from).
    pub fn to(to: impl Into<String>) -> Self {
        Self {
            to: to.into(),
            from: String::new(),
            payload: Bytes::from_static(b"null"),
            expects_reply: false,
            ttl: None,
        }
    }

    /// Its sender: the client that sees its status and gets its reply.
    /// Required; a notification from no one is refused.
    pub fn from(mut self, from: impl Into<String>) -> Self {
        self.from = from.into();
        self
    }

    /// Its payload: `value` as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(
        mut self,
        value: &T,
    ) -> Result<Self, serde_json::Error> {
        self.payload = Bytes::from(serde_json::to_vec(value)?);
        Ok(self)
    }

    /// Its target may answer it once ([`Mailbox::reply`](super::Mailbox::reply)).
    pub fn expects_reply(mut self) -> Self {
        self.expects_reply = true;
        self
    }

    /// Holds it for `ttl` instead of the mailbox's default.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}
