//! The crate's side of the loopback load benchmark (`bench/run.sh`): the
//! events route of [`SseLayer`] over a [`Broker`], served by
//! [`tower_sse::serve`], plus a publisher.
//!
//! ```text
//! cargo run --release --example bench_server -- --addr 127.0.0.1:3100 \
//!     --rate 100 --count 2000 --start-after-conns 1000 [--threads 1] [--retain-events 20000] \
//!     [--start-file PATH] [--redis redis://127.0.0.1:6379 [--stream KEY] [--publish-window 32]]
//! ```
//!
//! - `GET /events` streams (the crate's route, default topic, keep-alive
//!   every 15 s);
//! - `GET /stats` answers `{"subscribers","published","lagged"}`, `lagged`
//!   being the broker's `lagged_events` (events readers fell behind on, each
//!   reported to its client with an `event: resync` frame); with `--redis`
//!   also `"backplane"` (the replica's stats: in step or not, the mirror's
//!   lag, reconnects, skipped and missed entries), `"warm"` (its first
//!   publish went through), `"publish_errors"` and `"publish_ack_us"`
//!   (`{"count","p50","p99","max"}`: how long `Replica::publish` took,
//!   from the call to Redis's answer);
//! - the publisher starts once `--start-after-conns` subscribers are
//!   connected (and `--start-file` exists, if given) and publishes
//!   `--count` events (0 = unlimited) at `--rate` per second (0 = as fast
//!   as it can), with the data `SEQ TS_NS` and the default event type;
//! - on SIGTERM it prints
//!   `{"published","publish_errors","lagged_skipped","max_subscribers"}` to
//!   stderr and exits. `lagged_skipped` is 0 by construction: a reader
//!   that falls behind is told so, nothing is skipped silently. Nothing
//!   else goes to stderr but errors; progress lines (the settings,
//!   `{"listening": "HOST:PORT"}` with the port bound, which is how to learn
//!   it with `--addr 127.0.0.1:0`, then `publisher_started` with the CPU
//!   time so far) go to stdout.
//!
//! With `--redis URL` the broker is a replica of a Redis Streams backplane
//! (`RedisBackplane::new(URL).stream(KEY).start(..)`, the stream key
//! `--stream`, default `tower-sse-bench:events`): run several on one key
//! and an event published on one reaches the clients of all. Publishing
//! goes through `Replica::publish`, started in the order the schedule
//! gives the events (so the stream's order is the payload's), at most
//! `--publish-window` (default 32) awaiting Redis at once, as that many
//! request handlers publishing at the same time would; an event that waits
//! for room keeps the time it was due as its timestamp, so the wait counts
//! in its latency. Each replica publishes one `bench.warmup` event once
//! in step with the stream, before any client connects. A replica that
//! should not publish is given a `--start-after-conns` no run reaches.
//!
//! The environment variable `BENCH_METRICS=prometheus` installs
//! `metrics-exporter-prometheus` as the process's recorder before any
//! stream opens, so that the crate's metrics (feature `metrics`) are recorded as
//! an app exporting them would: what they cost per delivery.
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
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use futures_util::stream::{FuturesOrdered, StreamExt};

    use axum::routing::get;
    use axum::{Json, Router};
    use tower::Layer as _;
    use tower_sse::backplane::RedisBackplane;
    use tower_sse::{Broker, Event, SseLayer};

    /// Replay log size unless `--retain-events` says otherwise.
    const RETAIN_EVENTS: usize = 20_000;
    /// The Redis stream unless `--stream` says otherwise.
    const STREAM: &str = "tower-sse-bench:events";
    /// Publish times kept for `publish_ack_us`: more than any run publishes.
    const MAX_ACK_SAMPLES: usize = 1 << 20;
    /// Failed publishes reported one by one on stderr; the rest are counted.
    const ERRORS_SHOWN: u64 = 10;
    /// Publishes awaiting Redis at once unless `--publish-window` says
    /// otherwise: as many request handlers publishing at the same time.
    const PUBLISH_WINDOW: usize = 32;
    /// How long the streams coalesced their writes, and how often that
    /// switched, while events were published.
    #[derive(Default)]
    struct Coalesced {
        ms: std::sync::atomic::AtomicU64,
        switches: std::sync::atomic::AtomicU64,
    }
    /// How long a replica tries its first publish before giving up.
    const WARM_UP_FOR: Duration = Duration::from_secs(10);

    let (args, runtime) = match common::start_with(
        "--retain-events",
        &["--redis", "--stream", "--publish-window"],
    ) {
        Ok(started) => started,
        Err(code) => return code,
    };
    let window = match args.string("--publish-window").map(str::parse::<usize>) {
        None => PUBLISH_WINDOW,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("--publish-window: a number of publishes, at least 1");
            return std::process::ExitCode::from(2);
        }
    };
    let retain_events = args.extra.unwrap_or(RETAIN_EVENTS);
    let redis = args.string("--redis").map(str::to_owned);
    let stream = args.string("--stream").unwrap_or(STREAM).to_owned();
    common::announce(
        "tower-sse",
        &args,
        serde_json::json!({
            "retain_events": retain_events,
            "keep_alive_s": 15,
            "redis": redis,
            "stream": redis.as_ref().map(|_| &stream),
            "publish_window": redis.as_ref().map(|_| window),
        }),
    );
    runtime.block_on(async move {
        let builder = || Broker::builder().retain_events(retain_events);
        let replica = match &redis {
            Some(url) => match RedisBackplane::new(url) {
                Ok(backplane) => Some(backplane.stream(stream).start(builder())),
                Err(error) => {
                    eprintln!("--redis: {error}");
                    return std::process::ExitCode::from(2);
                }
            },
            None => None,
        };
        let broker = match &replica {
            Some(replica) => replica.broker().clone(),
            None => builder().build(),
        };
        // The first publish loads the publish script into Redis. Done here,
        // before any client connects, no measured publish waits for it, and
        // none overtakes another while it does.
        let warm = Arc::new(AtomicBool::new(replica.is_none()));
        if let Some(replica) = &replica {
            let (replica, warm) = (replica.clone(), warm.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + WARM_UP_FOR;
                loop {
                    let event = Event::new("bench.warmup").data("0 0");
                    match replica.publish(event).await {
                        Ok(_) => break warm.store(true, Ordering::Release),
                        // Refused at once until the reader is in step.
                        Err(_) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(error) => break eprintln!("warm-up publish: {error}"),
                    }
                }
            });
        }
        let counters = Arc::new(common::Counters::default());
        // Microseconds each `Replica::publish` took.
        let acks = Arc::new(Mutex::new(Vec::<u32>::new()));

        let coalescing = Arc::new(Coalesced::default());
        let stats = {
            let coalescing = coalescing.clone();
            let broker = broker.clone();
            let replica = replica.clone();
            let counters = counters.clone();
            let acks = acks.clone();
            let warm = warm.clone();
            move || {
                let stats = broker.stats();
                let mut body = serde_json::json!({
                    "subscribers": stats.subscribers,
                    "published": stats.published,
                    "lagged": stats.lagged_events,
                    "coalescing_ms": coalescing.ms.load(Ordering::Relaxed),
                    "coalescing_switches": coalescing.switches.load(Ordering::Relaxed),
                });
                if let Some(replica) = &replica {
                    let mut acks = acks.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    acks.sort_unstable();
                    let at = |q: f64| {
                        let rank = ((q * acks.len() as f64).ceil() as usize).max(1);
                        acks.get(rank - 1).copied()
                    };
                    body["backplane"] = serde_json::json!(replica.stats());
                    body["warm"] = warm.load(Ordering::Acquire).into();
                    body["publish_errors"] = counters.publish_errors.load(Ordering::Relaxed).into();
                    body["publish_ack_us"] = serde_json::json!({
                        "count": acks.len(),
                        "p50": at(0.5),
                        "p99": at(0.99),
                        "max": acks.last(),
                    });
                }
                std::future::ready(Json(body))
            }
        };
        // What an app exporting the metrics pays; the handle is kept
        // (nothing scrapes it here).
        let _metrics = (std::env::var("BENCH_METRICS").as_deref() == Ok("prometheus")).then(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("no other recorder is installed")
        });
        // The events route outside the router: its streams' bodies stay the
        // crate's own type rather than axum's boxed body, a virtual call
        // fewer per write (`Router::layer` would box them).
        let layer = SseLayer::new(broker.clone());
        let layer = match std::env::var("BENCH_COALESCE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            Some(ms) => layer.coalesce(std::time::Duration::from_millis(ms)),
            None => layer,
        };
        // Whether the streams coalesce, looked at every 10 ms once events
        // are published: how long they did and how often it switched.
        tokio::spawn({
            let layer = layer.clone();
            let coalescing = coalescing.clone();
            let counters = counters.clone();
            async move {
                let mut every = tokio::time::interval(Duration::from_millis(10));
                let mut was = false;
                loop {
                    every.tick().await;
                    if counters.published.load(Ordering::Relaxed) == 0 {
                        continue;
                    }
                    let now = layer.is_coalescing();
                    if now {
                        coalescing.ms.fetch_add(10, Ordering::Relaxed);
                    }
                    if now != was {
                        coalescing.switches.fetch_add(1, Ordering::Relaxed);
                    }
                    was = now;
                }
            }
        });
        let app = layer.layer(Router::new().route("/stats", get(stats)));

        let server = {
            let addr = args.addr.clone();
            tokio::spawn(async move { tower_sse::serve(common::listen(&addr)?, app).await })
        };
        let publish: Box<dyn FnMut(String) + Send> = match replica {
            None => {
                let broker = broker.clone();
                Box::new(move |data| {
                    // Never waits; refused only once closed, which this
                    // server never does.
                    let _ = broker.publish(Event::message().data(data));
                })
            }
            Some(replica) => {
                // The schedule never waits for Redis: it queues, and one
                // task starts the publishes in queue order, at most
                // `window` awaiting Redis at once. Each publish's command
                // goes out on its first poll, in start order, on one
                // connection: the stream holds the events in the payload's
                // order (the client counts any that are not).
                let (queue, mut queued) = tokio::sync::mpsc::unbounded_channel::<String>();
                let counters = counters.clone();
                let done = move |published: Result<_, _>, took: Duration| match published {
                    Ok(_) => {
                        let us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
                        let mut acks = acks.lock().unwrap_or_else(|e| e.into_inner());
                        if acks.len() < MAX_ACK_SAMPLES {
                            acks.push(us);
                        }
                    }
                    Err(error) => {
                        let n = counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                        if n < ERRORS_SHOWN {
                            eprintln!("publish: {error}");
                        }
                    }
                };
                tokio::spawn(async move {
                    let mut in_flight = FuturesOrdered::new();
                    let mut open = true;
                    while open || !in_flight.is_empty() {
                        let room = open && in_flight.len() < window;
                        tokio::select! {
                            // The publishes first: a publish just started
                            // sends its command here, before the next starts.
                            biased;
                            Some((published, took)) = in_flight.next() => done(published, took),
                            data = queued.recv(), if room => match data {
                                Some(data) => {
                                    let replica = replica.clone();
                                    in_flight.push_back(async move {
                                        let started = Instant::now();
                                        let event = Event::message().data(data);
                                        (replica.publish(event).await, started.elapsed())
                                    });
                                }
                                None => open = false,
                            },
                        }
                    }
                });
                Box::new(move |data| {
                    // The receiver lives as long as the runtime.
                    let _ = queue.send(data);
                })
            }
        };
        tokio::spawn({
            let subscribers = broker.clone();
            common::run_publisher(
                args,
                counters.clone(),
                move || subscribers.stats().subscribers,
                publish,
            )
        });
        common::serve_until_sigterm(server, counters, || 0).await
    })
}
