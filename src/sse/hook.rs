//! How something else takes part in the streams of the events route
//! without the route knowing it: the [mailbox](crate::mailbox) plugs in
//! here, and so can an app's own presence tracking.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::authorize::Rejection;
use crate::broker::{Subscription, Topic};

/// What a hook keeps for one stream, dropped when the stream ends, and
/// what the stream waits for before it sends its first event.
///
/// A hook whose store is across the network (a mailbox kept in Redis)
/// cannot finish opening a stream in [`opened`](StreamHook::opened): it
/// starts the work there and holds the stream's events back with
/// [`ready_after`](StreamGuard::ready_after) until it is done, so that no
/// id reaches the client before the hook has recorded what it sent, or
/// ends the stream there if it could not do it.
pub struct StreamGuard {
    _keep: Box<dyn Any + Send>,
    ready: Option<Pin<Box<dyn Future<Output = ControlFlow<()>> + Send>>>,
}

impl StreamGuard {
    /// Keeps `keep` for the stream's lifetime; the stream starts at once.
    pub fn new(keep: impl Any + Send) -> Self {
        Self {
            _keep: Box::new(keep),
            ready: None,
        }
    }

    /// Holds the stream's events (and keep-alives) back until `ready`
    /// completes: with `Continue` the stream goes on; with `Break` it ends
    /// there, having shown nothing but its `retry:` hint (its client comes
    /// back after it, from the id it had). It should complete soon
    /// whatever happens (give it a timeout).
    pub fn ready_after(
        mut self,
        ready: impl Future<Output = ControlFlow<()>> + Send + 'static,
    ) -> Self {
        self.ready = Some(Box::pin(ready));
        self
    }

    /// Whether the stream may send events (`Continue`) or must end
    /// (`Break`): `Continue` at once unless
    /// [`ready_after`](StreamGuard::ready_after) holds it back.
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<ControlFlow<()>> {
        if let Some(ready) = &mut self.ready {
            let verdict = std::task::ready!(ready.as_mut().poll(cx));
            self.ready = None;
            if verdict.is_break() {
                // Ends for good: asked again, still ended.
                self.ready = Some(Box::pin(std::future::ready(ControlFlow::Break(()))));
            }
            return Poll::Ready(verdict);
        }
        Poll::Ready(ControlFlow::Continue(()))
    }
}

impl fmt::Debug for StreamGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamGuard")
            .field("ready", &self.ready.is_none())
            .finish_non_exhaustive()
    }
}

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
///             return StreamGuard::new(Leaving(self.0.clone()));
///         }
///         StreamGuard::new(())
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
