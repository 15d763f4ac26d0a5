//! How the mailbox takes part in the streams of its clients: each client's
//! private topic, the ids it accepts, the events route's hook, and the
//! guard that counts a client's open streams.

use std::fmt;

use super::Mailbox;
use crate::broker::{Subscription, Topic};
use crate::sync::lock;

/// Longest client id accepted.
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// Whether `id` can name a client: 1 to [`MAX_CLIENT_ID_LEN`] bytes, no
/// control characters (it travels in JSON and in logs).
pub(crate) fn valid_client_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_CLIENT_ID_LEN && !id.chars().any(char::is_control)
}

/// The private topic of a client: reserved (`$`), so no authorizer can
/// grant it by name, and carrying the mailbox's direct messages only.
pub(crate) fn client_topic(id: &str) -> Topic {
    Topic::reserved(&format!("client/{id}"))
}

/// What the events route's hook of either mailbox adds to a stream of
/// `client`: its private topic, or a `400` for an id that cannot name one.
#[cfg(not(loom))]
pub(crate) fn hook_topic(client: &str) -> Result<Option<Topic>, crate::Rejection> {
    if !valid_client_id(client) {
        return Err(crate::Rejection::bad_request("invalid client identity"));
    }
    Ok(Some(client_topic(client)))
}

/// An open stream of a client, as the mailbox counts them; dropping it
/// marks the stream closed.
pub struct Connection {
    pub(super) mailbox: Mailbox,
    pub(super) client: Box<str>,
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

/// The events route plugs the mailbox into the streams of named clients:
/// each such stream watches its client's private topic, and its opening
/// [connects](Mailbox::connect) it.
#[cfg(not(loom))]
impl crate::sse::StreamHook for Mailbox {
    fn topic(&self, client: &str) -> Result<Option<Topic>, crate::Rejection> {
        hook_topic(client)
    }

    fn opened(
        &self,
        client: &str,
        subscription: &Subscription,
        last_event_id: Option<&str>,
    ) -> crate::sse::StreamGuard {
        // The browser's own `Last-Event-ID` proves what arrived, and only
        // if the broker could resume from it.
        let proof = last_event_id.filter(|_| !subscription.starts_with_resync());
        crate::sse::StreamGuard::new(self.connect(subscription, client, proof))
    }
}

#[cfg(not(loom))]
impl crate::SseLayer {
    /// Delivers `mailbox`'s notifications on the streams of the client the
    /// authorizer names ([`Grant::client`](crate::Grant::client)): held ones
    /// first, then live. The same as [`hook(mailbox)`](crate::SseLayer::hook).
    pub fn mailbox(self, mailbox: Mailbox) -> Self {
        self.hook(mailbox)
    }
}
