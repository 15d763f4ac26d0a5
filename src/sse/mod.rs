//! The events route: a tower layer serving server-sent events from a
//! [`Broker`](crate::Broker).
//!
//! # What the route answers
//!
//! | request | answer | why |
//! |---|---|---|
//! | `GET` on the path, granted | `200 text/event-stream`, `Cache-Control: no-cache`, `X-Accel-Buffering: no`; `retry:`, replay, live, keep-alives | the stream |
//! | `Last-Event-ID` header or `lastEventId` query parameter (header wins) | resume right after it, or a first `event: resync` frame when it cannot be honoured | never an error: a client with a stale id just reloads |
//! | the authorizer refuses | its status (401, 403, 400) with `{"error": ...}` | `EventSource` stops for good on a non-200, right for a request that will never succeed |
//! | more topics than [`max_topics`](crate::SseLayer::max_topics) | `400` | malformed |
//! | over [`max_connections`](crate::SseLayer::max_connections), or the broker is closed | `200` stream of a `retry:` back-off and a comment, then the end; `Retry-After` too when over the limit | `EventSource` reconnects after the delay, where a 503 would make it give up |
//! | another method on the path | `405` with `Allow: GET, HEAD` | |
//! | any other path | the inner service | |
//!
//! # The wire
//!
//! Each event is one frame, `id:` first, `event:` unless the type is
//! `message`, one `data:` line per line of the payload. When a client is
//! behind, everything waiting for it (up to
//! [`max_batch_bytes`](crate::SseLayer::max_batch_bytes)) goes out in one
//! body frame. A lag or an unusable id arrives as
//!
//! ```text
//! id: 1732300000000000000-5120
//! event: resync
//! data: {"reason":"lagged","missed":12}
//! ```
//!
//! with `reason` one of `malformed-id`, `unknown-epoch`, `future-id`,
//! `expired` and `lagged` (the last with `missed`). Its `id:` is where the
//! stream continues, so a reconnect right after it resumes from there.
//!
//! The `retry:` hint that opens a stream and the keep-alive comments are
//! single lines with no blank line of their own: the hint joins the block of
//! the first event. A block without data dispatches nothing in a browser,
//! but some clients report one as an empty `message`.

#[cfg(not(loom))]
mod authorize;
#[cfg(not(loom))]
mod body;
#[cfg(not(loom))]
mod coalesce;
#[cfg(not(loom))]
mod future;
#[cfg(not(loom))]
mod hook;
#[cfg(not(loom))]
mod layer;
#[cfg(not(loom))]
mod service;
#[cfg(not(loom))]
mod streams;
#[cfg(not(loom))]
mod ticker;

#[cfg(not(loom))]
pub use self::authorize::{any_topic, public_only, requested_topics, Authorize, Grant, Rejection};
#[cfg(not(loom))]
pub use self::body::ResponseBody;
#[cfg(not(loom))]
pub use self::future::ResponseFuture;
#[cfg(not(loom))]
pub use self::hook::{StreamGuard, StreamHook};
#[cfg(not(loom))]
pub use self::layer::{
    SseLayer, DEFAULT_BUSY_RETRY, DEFAULT_COALESCE, DEFAULT_KEEP_ALIVE, DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_TOPICS, DEFAULT_RETRY,
};
#[cfg(not(loom))]
pub use self::service::Sse;
