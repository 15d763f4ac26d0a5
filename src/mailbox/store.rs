//! What the routes, and an app that serves either, need of a mailbox
//! whichever store keeps it: in this process ([`Mailbox`]) or in Redis
//! (`RedisMailbox`, feature `redis`), where every call crosses the
//! network and can find the store unavailable.

use futures_core::future::BoxFuture;

#[cfg(not(loom))]
use super::Mailbox;
use super::{MailboxStats, Notification, ReplyError, SendError, Status, TraceId, Unavailable};

/// A mailbox, in memory or kept in Redis, as futures: what
/// [`MailboxLayer`](super::MailboxLayer) serves, and what an app that runs
/// either (one process in memory, replicas on Redis) can hold as
/// `Arc<dyn MailboxStore>`. Each method does what the in-memory
/// [`Mailbox`]'s method of the same name does; a store across the network
/// also answers [`Unavailable`] when it cannot be reached.
///
/// Implemented by this crate's mailboxes only.
///
/// ```
/// use std::sync::Arc;
/// use tower_sse::mailbox::{Mailbox, MailboxStore, Notification};
/// use tower_sse::Broker;
///
/// # tokio_test_block_on(async {
/// let store: Arc<dyn MailboxStore> = Arc::new(Mailbox::new(Broker::new()));
/// let hi = Notification::to("bob").from("alice").json("hi").unwrap();
/// let trace = store.send(hi).await.unwrap();
/// let status = store.status_for(&trace, "bob").await.unwrap().unwrap();
/// assert!(!status.delivered);
/// # });
/// # fn tokio_test_block_on(f: impl std::future::Future<Output = ()>) {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
pub trait MailboxStore: Send + Sync + sealed::Sealed + 'static {
    /// Sends a notification; see [`Mailbox::send`].
    fn send(&self, notification: Notification) -> BoxFuture<'static, Result<TraceId, SendError>>;

    /// The status of `trace` as its sender or target sees it; `None` for
    /// anyone else, and for an unknown, purged or expired trace. See
    /// [`Mailbox::status_for`].
    fn status_for(
        &self,
        trace: &TraceId,
        client: &str,
    ) -> BoxFuture<'static, Result<Option<Status>, Unavailable>>;

    /// Replies to `trace` on behalf of `by`; see [`Mailbox::reply`].
    fn reply(
        &self,
        trace: &TraceId,
        by: &str,
        payload: serde_json::Value,
    ) -> BoxFuture<'static, Result<Status, ReplyError>>;

    /// Marks `trace` delivered on its target's word; false if unknown or
    /// not `client`'s. See [`Mailbox::ack`].
    fn ack(&self, trace: &TraceId, client: &str) -> BoxFuture<'static, Result<bool, Unavailable>>;

    /// Counters and sizes; see [`Mailbox::stats`].
    fn stats(&self) -> BoxFuture<'static, Result<MailboxStats, Unavailable>>;

    /// Whether `client` is the target of `trace` (the reply route asks
    /// before it reads a byte of the body).
    #[doc(hidden)]
    fn is_target(
        &self,
        trace: &TraceId,
        client: &str,
    ) -> BoxFuture<'static, Result<bool, Unavailable>>;

    /// The largest payload of a reply.
    #[doc(hidden)]
    fn max_payload(&self) -> usize;
}

pub(crate) mod sealed {
    /// Only this crate's mailboxes are stores.
    pub trait Sealed {}
}

#[cfg(not(loom))]
impl sealed::Sealed for Mailbox {}

#[cfg(not(loom))]
impl MailboxStore for Mailbox {
    fn send(&self, notification: Notification) -> BoxFuture<'static, Result<TraceId, SendError>> {
        Box::pin(std::future::ready(Mailbox::send(self, notification)))
    }

    fn status_for(
        &self,
        trace: &TraceId,
        client: &str,
    ) -> BoxFuture<'static, Result<Option<Status>, Unavailable>> {
        Box::pin(std::future::ready(Ok(Mailbox::status_for(
            self, trace, client,
        ))))
    }

    fn reply(
        &self,
        trace: &TraceId,
        by: &str,
        payload: serde_json::Value,
    ) -> BoxFuture<'static, Result<Status, ReplyError>> {
        Box::pin(std::future::ready(Mailbox::reply(self, trace, by, payload)))
    }

    fn ack(&self, trace: &TraceId, client: &str) -> BoxFuture<'static, Result<bool, Unavailable>> {
        Box::pin(std::future::ready(Ok(Mailbox::ack(self, trace, client))))
    }

    fn stats(&self) -> BoxFuture<'static, Result<MailboxStats, Unavailable>> {
        Box::pin(std::future::ready(Ok(Mailbox::stats(self))))
    }

    fn is_target(
        &self,
        trace: &TraceId,
        client: &str,
    ) -> BoxFuture<'static, Result<bool, Unavailable>> {
        Box::pin(std::future::ready(Ok(Mailbox::is_target(
            self, trace, client,
        ))))
    }

    fn max_payload(&self) -> usize {
        self.shared.limits.max_payload
    }
}
