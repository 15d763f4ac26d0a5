//! How something else takes part in the streams of the events route
//! without the route knowing it: the [mailbox](crate::mailbox) plugs in
//! here, and so can an app's own presence tracking.

use std::any::Any;

use super::authorize::Rejection;
use crate::broker::{Subscription, Topic};

/// What a hook keeps for one stream, dropped when the stream ends.
pub type StreamGuard = Box<dyn Any + Send>;

/// Takes part in every stream of the events route whose grant names a
/// client ([`Grant::client`](crate::Grant::client)): adds a topic of its
/// own to what the stream watches, and hears when the stream opens and,
/// through the guard it returns, when it ends.
///
/// [`SseLayer::hook`](crate::SseLayer::hook) installs one;
/// [`SseLayer::mailbox`](crate::SseLayer::mailbox) installs a
/// [`Mailbox`](crate::mailbox::Mailbox), which is one.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use tower_sse::sse::{StreamGuard, StreamHook};
/// use tower_sse::{Rejection, Subscription, Topic};
///
/// /// Counts the open streams of one client, `alice`.
/// #[derive(Default)]
/// struct Presence(Arc<AtomicUsize>);
///
/// struct Leaving(Arc<AtomicUsize>);
///
/// impl Drop for Leaving {
///     fn drop(&mut self) {
///         self.0.fetch_sub(1, Ordering::Relaxed);
///     }
/// }
///
/// impl StreamHook for Presence {
///     fn topic(&self, client: &str) -> Result<Option<Topic>, Rejection> {
///         Ok(None) // watches nothing more
///     }
///
///     fn opened(&self, client: &str, _: &Subscription, _: Option<&str>) -> StreamGuard {
///         if client == "alice" {
///             self.0.fetch_add(1, Ordering::Relaxed);
///             return Box::new(Leaving(self.0.clone()));
///         }
///         Box::new(())
///     }
/// }
///
/// let layer = tower_sse::SseLayer::new(tower_sse::Broker::new()).hook(Presence::default());
/// ```
pub trait StreamHook: Send + Sync + 'static {
    /// The extra topic a stream of `client` watches, if any (a reserved
    /// topic of the hook's own, which no authorizer can grant by name), or
    /// the answer refusing the stream (a client id the hook cannot take).
    fn topic(&self, client: &str) -> Result<Option<Topic>, Rejection>;

    /// A stream of `client` subscribed: `subscription` exists and watches
    /// the topic [`topic`](StreamHook::topic) gave, so nothing sent to it
    /// from now on can miss the stream. `last_event_id` is the client's
    /// `Last-Event-ID` header, if it sent one: the id of the last event its
    /// own `EventSource` received (a `lastEventId` query parameter, which a
    /// page may have been handed, is not passed). Called outside any poll
    /// of the stream; the guard returned lives as long as the stream.
    fn opened(
        &self,
        client: &str,
        subscription: &Subscription,
        last_event_id: Option<&str>,
    ) -> StreamGuard;
}
