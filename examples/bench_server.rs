//! The crate's side of the loopback load benchmark (`bench/run.sh`): the
//! events route of [`SseLayer`] over a [`Broker`], served by
//! [`tower_sse::serve`], plus a publisher.
//!
//! ```text
//! cargo run --release --example bench_server -- --addr 127.0.0.1:3100 \
//!     --rate 100 --count 2000 --start-after-conns 1000 [--threads 1] [--retain-events 20000]
//! ```
//!
//! - `GET /events` streams (the crate's route, default topic, keep-alive
//!   every 15 s);
//! - `GET /stats` answers `{"subscribers","published","lagged"}`, `lagged`
//!   being the broker's `lagged_events` (events readers fell behind on, each
//!   reported to its client with an `event: resync` frame);
//! - the publisher starts once `--start-after-conns` subscribers are
//!   connected and publishes `--count` events (0 = unlimited) at `--rate`
//!   per second (0 = as fast as it can), with the data `SEQ TS_NS` and the
//!   default event type;
//! - on SIGTERM it prints `{"published","lagged_skipped","max_subscribers"}`
//!   to stderr and exits. `lagged_skipped` is 0 by construction: a reader
//!   that falls behind is told so, nothing is skipped silently. Nothing
//!   else goes to stderr but errors; progress lines (the settings,
//!   `{"listening": "HOST:PORT"}` with the port bound, which is how to learn
//!   it with `--addr 127.0.0.1:0`, then `publisher_started` with the CPU
//!   time so far) go to stdout.
//!
//! The environment variable `BENCH_COALESCE_MS` overrides the layer's
//! write-coalescing window (default 20 ms; 0 turns it off), to see the
//! trade between CPU per delivery and latency.
//!
//! `--retain-events` (default 20 000, the broker's own default is 2000)
//! sizes the replay log, so that a connection that stalls briefly is
//! replayed what it missed instead of getting a resync.

#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
#[path = "../bench/server_common.rs"]
mod common;

#[cfg(not(loom))]
fn main() -> std::process::ExitCode {
    use std::sync::Arc;

    use axum::routing::get;
    use axum::{Json, Router};
    use tower_sse::{Broker, Event, SseLayer};

    /// Replay log size unless `--retain-events` says otherwise.
    const RETAIN_EVENTS: usize = 20_000;

    let (args, runtime) = match common::start("--retain-events") {
        Ok(started) => started,
        Err(code) => return code,
    };
    let retain_events = args.extra.unwrap_or(RETAIN_EVENTS);
    common::announce(
        "tower-sse",
        &args,
        serde_json::json!({ "retain_events": retain_events, "keep_alive_s": 15 }),
    );
    runtime.block_on(async move {
        let broker = Broker::builder().retain_events(retain_events).build();
        let counters = Arc::new(common::Counters::default());

        let stats = {
            let broker = broker.clone();
            move || {
                let stats = broker.stats();
                std::future::ready(Json(serde_json::json!({
                    "subscribers": stats.subscribers,
                    "published": stats.published,
                    "lagged": stats.lagged_events,
                })))
            }
        };
        let app = Router::new().route("/stats", get(stats)).layer({
            let layer = SseLayer::new(broker.clone());
            match std::env::var("BENCH_COALESCE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                Some(ms) => layer.coalesce(std::time::Duration::from_millis(ms)),
                None => layer,
            }
        });

        let server = {
            let addr = args.addr.clone();
            tokio::spawn(async move { tower_sse::serve(common::listen(&addr)?, app).await })
        };
        tokio::spawn({
            let subscribers = broker.clone();
            let publisher = broker.clone();
            common::run_publisher(
                args,
                counters.clone(),
                move || subscribers.stats().subscribers,
                move |data| {
                    // Never waits; refused only once closed, which this
                    // server never does.
                    let _ = publisher.publish(Event::message().data(data));
                },
            )
        });
        common::serve_until_sigterm(server, counters, || 0).await
    })
}
