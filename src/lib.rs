//! Server-sent events for any tower-based HTTP app (axum, plain hyper):
//! ordered fan-out with a replay log, resume from `Last-Event-ID` across
//! reconnects, an explicit `resync` when resuming is impossible, topics with
//! per-connection authorization, and keep-alives, while publishers never
//! wait on a slow browser.
//!
//! The pieces:
//!
//! - [`Broker`]: the in-process hub. It knows nothing of HTTP or of any
//!   runtime; see its [module docs](broker) for the contract.
//! - [`SseLayer`]: a tower layer that serves the events route from a broker
//!   and passes every other request to the service it wraps.
//! - [`mode::ServerMode`]: normal / read-only / degraded, from independent
//!   causes (an operator, code, [probes](mode::Probe)); every change reaches
//!   every stream as a `server.state` event.
//! - [`RequireWritableLayer`]: `503` + `Retry-After` for writes while the
//!   server is not writable.
//! - [`HealthLayer`]: `/health` and `/ready`.
//! - [`Shutdown`]: graceful shutdown that open streams cannot hang.
//! - `serve` (feature `serve`): a server that keeps each open stream at a
//!   few kilobytes and hands every other request to hyper.
//! - [`mailbox::Mailbox`]: store-and-forward notifications for clients,
//!   delivered over their streams, with trace ids and replies.
//!
//! ```no_run
//! # #[cfg(not(loom))]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{routing::get, Router};
//! use tower_sse::{Broker, Event, SseLayer};
//!
//! let broker = Broker::new();
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(SseLayer::new(broker.clone()).path("/events"));
//!
//! broker.publish(Event::new("item.created").topic("public").data(r#"{"id":1}"#))?;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! - `axum`: glue in the `axum` module: a `Router` for the events
//!   route and a [`Broker`] extractor.
//! - `signal`: `SIGUSR1` toggles operator read-only
//!   (`ServerMode::toggle_read_only_on_sigusr1`); `Shutdown::on_terminate_signal`
//!   waits for Ctrl-C or SIGTERM.
//! - `tcp`: `tcp::TcpTuning`, socket options that let the
//!   kernel drop readers that vanished or stopped reading.
//! - `serve`: `serve()`, a server that drives HTTP/1.1 event streams on
//!   lean connections of its own (a few kilobytes each instead of hyper's
//!   16 KiB of buffers) and hands every other request to hyper, HTTP/2
//!   with prior knowledge (h2c) included.
//! - `redis`: `backplane::RedisBackplane` (replicas sharing one event log
//!   on Redis Streams), the mailbox kept in Redis (`MailboxBuilder::redis`)
//!   and `upstream::RedisPubSub` (topics fed from Redis pub/sub).
//! - `metrics`: counters and gauges through the `metrics` facade (the
//!   `metrics` module lists them); the app installs the recorder.

// A loom build has no doc tests: loom's types work only inside a model.
#![cfg(not(all(loom, doctest)))]
#![warn(missing_docs)]
#![deny(unreachable_pub, unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// A loom build compiles the broker without the HTTP layer that uses parts of it.
#![cfg_attr(loom, allow(dead_code, unused_imports, unreachable_pub))]

#[cfg(all(feature = "redis", not(loom)))]
pub mod backplane;
pub mod broker;
mod clock;
#[cfg(not(loom))]
pub mod health;
pub mod mailbox;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
#[allow(dead_code, unreachable_pub)]
mod metrics;
#[cfg(not(loom))]
pub mod mode;
#[cfg(not(loom))]
pub mod require_writable;
#[cfg(not(loom))]
mod response;
#[cfg(all(feature = "serve", not(loom)))]
pub mod serve;
#[cfg(not(loom))]
mod shutdown;
pub mod sse;
mod sync;
#[cfg(all(feature = "tcp", not(loom)))]
pub mod tcp;
#[cfg(all(test, not(loom)))]
mod test_util;
#[cfg(not(loom))]
pub mod upstream;
mod wire;

#[cfg(all(feature = "axum", not(loom)))]
pub mod axum;

pub use broker::{
    Broker, BrokerBuilder, BrokerStats, Closed, Event, EventId, HubStats, Message, PublishError,
    ReceivedEvent, Resumed, ResyncReason, Subscription, Topic, TopicStats, Topics,
    RESERVED_EVENT_TYPES,
};
pub use clock::{Clock, ManualClock, SystemClock};
#[cfg(not(loom))]
pub use health::HealthLayer;
#[cfg(not(loom))]
pub use require_writable::RequireWritableLayer;
#[cfg(all(feature = "serve", not(loom)))]
pub use serve::serve;
#[cfg(not(loom))]
pub use shutdown::{Shutdown, DEFAULT_SHUTDOWN_RETRY};
#[cfg(not(loom))]
pub use sse::{Grant, Rejection, SseLayer};

/// Entry points of the events route's reading side, for the loom models
/// only: compiled under `--cfg loom` and nowhere else.
#[cfg(loom)]
#[doc(hidden)]
pub mod loom_internals {
    use std::task::{Context, Poll};
    use std::time::Duration;

    use crate::{Broker, Subscription};

    /// What `poll_frames` produced, without the crate's private type.
    #[derive(Debug)]
    pub enum Frames {
        /// Encoded frames.
        Data(bytes::Bytes),
        /// A keep-alive is due.
        KeepAlive,
        /// The stream ended.
        End,
    }

    /// `Subscription::poll_frames`.
    pub fn poll_frames(
        sub: &mut Subscription,
        cx: &mut Context<'_>,
        coalesce: Option<Duration>,
    ) -> Poll<Frames> {
        sub.poll_frames(cx, 1 << 16, coalesce)
            .map(|frames| match frames {
                crate::broker::Frames::Data { bytes, .. } => Frames::Data(bytes),
                crate::broker::Frames::KeepAlive => Frames::KeepAlive,
                crate::broker::Frames::End | crate::broker::Frames::Cut => Frames::End,
            })
    }

    /// `Broker::end_coalescing_windows`: whether a window is still open.
    pub fn end_coalescing_windows(broker: &Broker) -> bool {
        broker.end_coalescing_windows()
    }

    /// `Broker::poll_coalescing`.
    pub fn poll_coalescing(broker: &Broker, cx: &mut Context<'_>) -> Poll<()> {
        broker.poll_coalescing(cx)
    }

    /// `Broker::tick`.
    pub fn tick(broker: &Broker) {
        broker.tick();
    }

    /// A driver's handle on a fed topic's slot (`broker::Link`).
    #[derive(Clone, Debug)]
    pub struct Link(crate::broker::Link);

    /// The links of the slots made so far, in order: what the runtime's
    /// side of the hub would start a driver for.
    pub type Opened = crate::sync::Arc<crate::sync::Mutex<Vec<Link>>>;

    struct Recorder(Opened);

    impl crate::broker::Opener for Recorder {
        fn feeds(&self, _broker: &Broker, _topic: &crate::Topic) -> bool {
            true
        }

        fn start(&self, _broker: &Broker, link: crate::broker::Link) {
            crate::sync::lock(&self.0).push(Link(link));
        }
    }

    /// A broker that feeds every topic from an upstream the model drives.
    pub fn broker_with_hub(epoch: u64) -> (Broker, Opened) {
        let opened = Opened::default();
        let broker = Broker::builder()
            .epoch(epoch)
            .retain_forever()
            .opener(Recorder(opened.clone()))
            .build();
        (broker, opened)
    }

    /// `Broker::link_status`, as `(watched, closed)`, registering `cx`'s
    /// waker.
    pub fn link_status(broker: &Broker, link: &Link, cx: Option<&mut Context<'_>>) -> (bool, bool) {
        use crate::broker::LinkStatus;
        match broker.link_status(&link.0, cx.map(|cx| cx.waker())) {
            LinkStatus::Watched => (true, false),
            LinkStatus::Idle(_) => (false, false),
            LinkStatus::Closed => (false, true),
        }
    }

    /// `Broker::link_up`.
    pub fn link_up(broker: &Broker, link: &Link) -> bool {
        broker.link_up(&link.0)
    }

    /// `Broker::link_publish` of a `message` with `data`.
    pub fn link_publish(broker: &Broker, link: &Link, data: &str) -> bool {
        broker
            .link_publish(&link.0, crate::Event::message().data(data.to_owned()))
            .is_ok()
    }

    /// `Broker::link_release`.
    pub fn link_release(broker: &Broker, link: &Link) -> bool {
        broker.link_release(&link.0)
    }

    /// A subscription to the private topic of `client` (`$client/NAME`, as
    /// the mailbox makes it), and the stream seq its seam stands at.
    pub fn subscribe_client(broker: &Broker, client: &str) -> (Subscription, u64) {
        let topic = crate::broker::Topic::reserved(&format!("client/{client}"));
        let sub = broker
            .subscribe(&crate::Topics::one(topic), None)
            .expect("broker open");
        let seam = crate::broker::stream_seq(sub.seam().seq());
        (sub, seam)
    }
}

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(all(doctest, not(loom)))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
