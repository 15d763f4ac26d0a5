//! What the crate tells an app's observability: the metrics it records
//! through the `metrics` facade, read back from a recorder over
//! `metrics-util`'s registry, and the span a stream's events are recorded
//! in, read back from a `tracing-subscriber` writing into memory.
//!
//! Both are the defaults of the test's thread only
//! (`set_default_local_recorder`, `set_default`); a `#[tokio::test]`
//! runtime runs the test's servers and clients on that thread, while the
//! other tests of this binary, on theirs, record nothing here.

use std::time::Duration;

use http::Method;
use tower_sse::sse::any_topic;
use tower_sse::{Broker, Event, Grant, Message, Rejection, Shutdown, SseLayer, Topics};
use tracing_subscriber::fmt::format::FmtSpan;

use super::support::client;
use super::support::server::serve_axum;
use super::support::trace;
use super::support::wait::eventually;

fn app(layer: SseLayer) -> axum::Router {
    axum::Router::new()
        .route("/", axum::routing::get(|| async { "page" }))
        .layer(layer.authorize(any_topic))
}

fn publish(broker: &Broker, topic: &str, data: &str) -> String {
    broker
        .publish(Event::new("tick").topic(topic).data(data.to_owned()))
        .expect("publish")
        .to_string()
}

#[cfg(feature = "metrics")]
mod recorded {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use ::metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, SharedString, Unit};
    use metrics_util::registry::{AtomicStorage, Registry};
    use tower_sse::mailbox::{Mailbox, Notification};
    use tower_sse::metrics as names;
    use tower_sse::upstream::Hub;
    use tower_sse::{ManualClock, ResyncReason};

    use super::*;
    use crate::support::bus::Bus;
    use crate::support::sse::json_of;

    /// A recorder that keeps every value where the test can read it, as
    /// it is now (the debugging recorder's snapshots zero what they read,
    /// which a gauge that is set cannot survive).
    /// Beside it, each gauge's highest value, for a value that is set and
    /// set back before the test can look.
    #[derive(Clone)]
    struct Recorded(
        Arc<Registry<Key, AtomicStorage>>,
        Arc<Registry<Key, AtomicStorage>>,
    );

    /// A gauge that keeps its highest value too.
    struct Peaked {
        now: Arc<std::sync::atomic::AtomicU64>,
        peak: Arc<std::sync::atomic::AtomicU64>,
    }

    impl Peaked {
        fn update(&self, op: impl FnOnce(&std::sync::atomic::AtomicU64)) {
            op(&self.now);
            let now = f64::from_bits(self.now.load(Ordering::Acquire));
            let _ = self
                .peak
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |peak| {
                    (now > f64::from_bits(peak)).then_some(now.to_bits())
                });
        }
    }

    impl ::metrics::GaugeFn for Peaked {
        fn increment(&self, value: f64) {
            self.update(|now| now.increment(value));
        }

        fn decrement(&self, value: f64) {
            self.update(|now| now.decrement(value));
        }

        fn set(&self, value: f64) {
            self.update(|now| now.set(value));
        }
    }

    impl ::metrics::Recorder for Recorded {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            self.0
                .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
        }

        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            let now = self.0.get_or_create_gauge(key, |g| g.clone());
            let peak = self.1.get_or_create_gauge(key, |g| g.clone());
            Gauge::from_arc(Arc::new(Peaked { now, peak }))
        }

        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            self.0
                .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
        }
    }

    impl Recorded {
        /// A recorder, the default of this thread until the guard drops.
        fn install() -> (Self, ::metrics::LocalRecorderGuard<'static>) {
            let recorded = Self(Arc::new(Registry::atomic()), Arc::new(Registry::atomic()));
            let leaked: &'static Recorded = Box::leak(Box::new(recorded.clone()));
            (recorded, ::metrics::set_default_local_recorder(leaked))
        }

        fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
            let labels: Vec<Label> = labels.iter().map(|&(k, v)| Label::new(k, v)).collect();
            Key::from_parts(name, labels)
        }

        /// A counter with exactly `labels`; 0 if never recorded.
        fn counter(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> u64 {
            self.0
                .get_counter(&Self::key(name, labels))
                .map_or(0, |c| c.load(Ordering::Acquire))
        }

        /// A gauge; 0 if never recorded.
        fn gauge(&self, name: &'static str) -> f64 {
            self.0
                .get_gauge(&Self::key(name, &[]))
                .map_or(0.0, |g| f64::from_bits(g.load(Ordering::Acquire)))
        }

        /// A gauge's highest value so far; 0 if never recorded.
        fn peak(&self, name: &'static str) -> f64 {
            self.1
                .get_gauge(&Self::key(name, &[]))
                .map_or(0.0, |g| f64::from_bits(g.load(Ordering::Acquire)))
        }

        /// Every name recorded.
        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = (self.0.get_counter_handles().into_keys())
                .chain(self.0.get_gauge_handles().into_keys())
                .map(|key| key.name().to_owned())
                .collect();
            names.sort();
            names.dedup();
            names
        }
    }

    #[tokio::test]
    async fn a_streams_life_is_counted_from_publish_to_close() {
        let (m, _recorder) = Recorded::install();
        let broker = Broker::new();
        let addr = serve_axum(app(SseLayer::new(broker.clone()))).await;
        let first = publish(&broker, "a", "1");
        publish(&broker, "a", "2");
        publish(&broker, "a", "3");

        let mut live = client::get(addr, "/events?topic=a", &[]).await;
        let mut replay = client::get(
            addr,
            "/events?topic=a",
            &[("last-event-id", first.as_str())],
        )
        .await;
        let mut resync =
            client::get(addr, "/events?topic=a", &[("last-event-id", "garbage")]).await;
        assert_eq!(replay.events(2).await.len(), 2);
        let told = resync.next_of_type("resync").await;
        assert_eq!(json_of(&told)["reason"], "malformed-id");
        let refused = client::fetch(addr, Method::POST, "/events", &[], "").await;
        assert_eq!(refused.status.as_u16(), 405);

        publish(&broker, "a", "4");
        for stream in [&mut live, &mut replay, &mut resync] {
            assert_eq!(stream.next_event().await.data, "4");
        }

        assert_eq!(m.counter(names::PUBLISHED_EVENTS, &[]), 4);
        assert_eq!(m.gauge(names::STREAMS_OPEN), 3.0);
        assert_eq!(m.counter(names::STREAM_STARTS, &[("resume", "live")]), 1);
        assert_eq!(m.counter(names::STREAM_STARTS, &[("resume", "replay")]), 1);
        assert_eq!(m.counter(names::STREAM_STARTS, &[("resume", "resync")]), 1);
        assert_eq!(m.counter(names::REPLAYED_EVENTS, &[]), 2);
        assert_eq!(m.counter(names::RESYNCS, &[("reason", "malformed-id")]), 1);
        assert_eq!(m.counter(names::REFUSALS, &[("status", "405")]), 1);
        // The live stream 1 frame, the replay 2 + 1, the resync its
        // `resync` + 1 (the `retry:` hints are not frames of events).
        assert_eq!(m.counter(names::DELIVERED_FRAMES, &[]), 6);
        let bytes = m.counter(names::DELIVERED_BYTES, &[]);
        assert!(bytes > 6 * "data: 4\n\n".len() as u64, "{bytes} bytes");

        drop((live, replay, resync));
        eventually("the open streams gauge back to 0", || {
            m.gauge(names::STREAMS_OPEN) == 0.0
        })
        .await;
        // Every name is a documented one, whatever its labels.
        for name in m.names() {
            assert!(names::ALL.contains(&name.as_str()), "undocumented {name}");
        }
    }

    #[tokio::test]
    async fn keep_alives_back_offs_and_coalescing_are_counted() {
        let (m, _recorder) = Recorded::install();
        let broker = Broker::new();
        let layer = SseLayer::new(broker.clone())
            .keep_alive(Duration::from_millis(50))
            .coalesce_always(Duration::from_millis(5))
            .max_connections(1);
        let addr = serve_axum(app(layer)).await;
        let mut stream = client::get(addr, "/events?topic=a", &[]).await;
        stream
            .wait_raw("a keep-alive", |raw| raw.contains("\n:"))
            .await;
        assert!(m.counter(names::KEEP_ALIVES, &[]) >= 1);
        assert_eq!(m.gauge(names::COALESCING), 1.0);

        let over = client::get(addr, "/events?topic=a", &[]).await.text().await;
        assert!(over.contains(":over capacity"), "{over}");
        assert_eq!(
            m.counter(names::BACKOFFS, &[("reason", "over_capacity")]),
            1
        );
        drop(stream);
        eventually("the stream to be gone", || {
            m.gauge(names::STREAMS_OPEN) == 0.0
        })
        .await;
        broker.close();
        let closed = client::get(addr, "/events?topic=a", &[]).await.text().await;
        assert!(closed.contains(":shutting down"), "{closed}");
        assert_eq!(m.counter(names::BACKOFFS, &[("reason", "closed")]), 1);
        assert_eq!(m.gauge(names::STREAMS_OPEN), 0.0);
    }

    #[test]
    fn a_reader_that_falls_behind_is_counted_as_lagged_with_what_it_missed() {
        let (m, _recorder) = Recorded::install();
        read_a_lag_of_six();
        assert_eq!(m.counter(names::RESYNCS, &[("reason", "lagged")]), 1);
        assert_eq!(m.counter(names::MISSED_EVENTS, &[]), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_failing_mid_stream_is_counted_as_a_resync() {
        let (m, _recorder) = Recorded::install();
        let bus = Bus::default();
        let broker = Broker::builder().hub(Hub::new(bus.clone())).build();
        let mut sub = broker
            .subscribe(&Topics::parse(["room"]).unwrap(), None)
            .unwrap();
        eventually("the upstream to open", || bus.open_now("room") == 1).await;
        bus.break_channel("room");
        let resync = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .expect("a resync");
        assert!(
            matches!(
                resync,
                Some(Message::Resync {
                    reason: ResyncReason::Upstream,
                    ..
                })
            ),
            "{resync:?}"
        );
        assert_eq!(m.counter(names::RESYNCS, &[("reason", "upstream")]), 1);
    }

    #[test]
    fn the_mailbox_counts_sends_refusals_deliveries_and_expiries() {
        let (m, _recorder) = Recorded::install();
        let clock = ManualClock::new();
        let mailbox = Mailbox::builder(Broker::new())
            .per_sender(1)
            .ttl(Duration::from_secs(60))
            .clock(clock.clone())
            .build();
        let note = |to: &str| Notification::to(to).from("alice").json("hi").unwrap();
        let sent = mailbox.send(note("bob")).expect("room for one");
        assert!(mailbox.send(note("carol")).is_err());
        assert!(mailbox.ack(&sent, "bob"));
        let other = Mailbox::builder(Broker::new())
            .ttl(Duration::from_secs(60))
            .clock(clock.clone())
            .build();
        other.send(note("dave")).expect("room");
        clock.advance(Duration::from_secs(61));
        assert_eq!(other.purge_expired(), 1);
        assert_eq!(m.counter(names::MAILBOX_SENT, &[]), 2);
        assert_eq!(
            m.counter(names::MAILBOX_REFUSED, &[("reason", "sender")]),
            1
        );
        assert_eq!(m.counter(names::MAILBOX_DELIVERED, &[]), 1);
        assert_eq!(m.counter(names::MAILBOX_EXPIRED, &[]), 1);
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn a_replicas_reader_reports_in_step_mirrored_and_disconnects() {
        use crate::support::redis::RedisServer;
        use tower_sse::backplane::RedisBackplane;
        let (m, _recorder) = Recorded::install();
        let mut redis = RedisServer::start().await;
        let replica = RedisBackplane::new(&redis.url())
            .expect("URL")
            .block(Duration::from_millis(100))
            .start(Broker::builder());
        eventually("the reader in step", || {
            m.gauge(names::BACKPLANE_CONNECTED) == 1.0
        })
        .await;
        for i in 0..3 {
            replica
                .publish(Event::new("tick").topic("a").data(i.to_string()))
                .await
                .expect("publish");
        }
        eventually("three entries mirrored", || {
            m.counter(names::BACKPLANE_MIRRORED, &[]) == 3
        })
        .await;
        assert_eq!(m.gauge(names::BACKPLANE_READER_LAG), 0.0);

        redis.kill();
        eventually("the reader out of step", || {
            m.gauge(names::BACKPLANE_CONNECTED) == 0.0
        })
        .await;
        assert_eq!(m.counter(names::BACKPLANE_DISCONNECTS, &[]), 1);
        redis.restart().await;
        eventually("the reader in step again", || {
            m.gauge(names::BACKPLANE_CONNECTED) == 1.0
        })
        .await;
        replica.broker().close();
        eventually("a closed replica no longer counted", || {
            m.gauge(names::BACKPLANE_CONNECTED) == 0.0
        })
        .await;
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn a_reader_more_than_a_read_behind_reports_its_lag() {
        use crate::support::redis::RedisServer;
        use tower_sse::backplane::{RedisBackplane, DEFAULT_BATCH};
        let (m, _recorder) = Recorded::install();
        let redis = RedisServer::start().await;
        let replica = RedisBackplane::new(&redis.url())
            .expect("URL")
            .stream("lagging")
            .block(Duration::from_millis(100))
            .start(Broker::builder());
        eventually("the reader in step", || {
            m.gauge(names::BACKPLANE_CONNECTED) == 1.0
        })
        .await;
        replica
            .publish(Event::new("tick").topic("a").data("0"))
            .await
            .expect("publish");
        // A burst in one step, one read and ten entries long: copies of
        // that entry under the next seqs, as publishes would append them.
        let burst = DEFAULT_BATCH + 10;
        let _: () = redis
            .query(
                redis::cmd("EVAL")
                    .arg(
                        "local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1] \
                         for _ = 1, tonumber(ARGV[1]) do \
                           local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1) \
                           redis.call('XADD', KEYS[1], seq .. '-0', unpack(last[2])) \
                         end",
                    )
                    .arg(2)
                    .arg("lagging")
                    .arg("lagging:meta")
                    .arg(burst),
            )
            .await;
        eventually("the burst mirrored", || {
            m.counter(names::BACKPLANE_MIRRORED, &[]) == 1 + burst as u64
        })
        .await;
        // The first read took a batch, and was told ten more wait.
        assert_eq!(m.peak(names::BACKPLANE_READER_LAG), 10.0);
        assert_eq!(m.gauge(names::BACKPLANE_READER_LAG), 0.0);
        assert_eq!(replica.stats().mirror.lag, 0);
    }
}

/// A reader falls behind a log of four by six events and reads its lag.
fn read_a_lag_of_six() {
    let broker = Broker::builder().retain_events(4).build();
    let mut sub = broker
        .subscribe(&Topics::parse(["a"]).unwrap(), None)
        .unwrap();
    for i in 0..10 {
        publish(&broker, "a", &i.to_string());
    }
    assert!(matches!(
        sub.try_next(),
        Some(Message::Lagged { missed: 6, .. })
    ));
}

fn reader_seven(parts: &http::request::Parts) -> Result<Grant, Rejection> {
    any_topic(parts).map(|grant| grant.client("reader-7"))
}

#[tokio::test]
async fn a_streams_events_are_logged_in_its_span_with_topics_client_and_resume() {
    let (log, _subscriber) = trace::capture(tracing::Level::DEBUG, FmtSpan::NONE);
    let broker = Broker::builder().retain_events(2).build();
    let app = axum::Router::new().layer(SseLayer::new(broker.clone()).authorize(reader_seven));
    let addr = serve_axum(app).await;
    let first = publish(&broker, "a", "1");
    publish(&broker, "a", "2");
    let second = publish(&broker, "a", "3");
    publish(&broker, "a", "4");

    // Resumes from an id still honoured: the span says how many came after it.
    let mut replay = client::get(
        addr,
        "/events?topic=a&topic=b",
        &[("last-event-id", second.as_str())],
    )
    .await;
    assert_eq!(replay.next_event().await.data, "4");
    drop(replay);
    // Resumes from an evicted id: told to resync, which is reported in
    // the stream's span.
    let mut expired = client::get(
        addr,
        "/events?topic=a",
        &[("last-event-id", first.as_str())],
    )
    .await;
    expired.next_of_type("resync").await;
    drop(expired);
    // Ten topics: the span names eight.
    let many: String = (0..10).map(|i| format!("topic=t{i}&")).collect();
    drop(client::get(addr, &format!("/events?{many}"), &[]).await);
    let refused = client::fetch(addr, Method::POST, "/events", &[], "").await;
    assert_eq!(refused.status.as_u16(), 405);
    eventually("the three ends are logged", || {
        log.text()
            .matches("stream ended: its reader went away")
            .count()
            == 3
    })
    .await;

    let expect = |within: &str, what: &str| {
        assert!(
            log.has(within, what),
            "no {what:?} in {within:?}:\n{}",
            log.text()
        );
    };
    expect(
        "sse_stream{topics=2 topic_names=a,b resume=replayed 1 client=\"reader-7\"}",
        "its reader went away",
    );
    expect(
        "sse_stream{topics=1 topic_names=a resume=resync: expired client=\"reader-7\"}",
        "stream told to resync reason=\"expired\"",
    );
    expect(
        "sse_stream{topics=10 topic_names=t0,t1,t2,t3,t4,t5,t6,t7,+2 more resume=live",
        "its reader went away",
    );
    expect("tower_sse::sse::service", "events request refused");
}

#[tokio::test]
async fn a_shutdown_is_logged_as_the_end_of_each_stream_under_hyper() {
    let (log, _subscriber) = trace::capture(tracing::Level::DEBUG, FmtSpan::NONE);
    let broker = Broker::new();
    let shutdown = Shutdown::new().broker(&broker);
    let addr = serve_axum(app(SseLayer::new(broker.clone()))).await;
    let mut streams = Vec::new();
    for _ in 0..2 {
        streams.push(client::get(addr, "/events?topic=a", &[]).await);
    }
    eventually("both subscribed", || broker.stats().subscribers == 2).await;
    shutdown.trigger();
    for stream in &mut streams {
        stream.next_of_type("shutdown").await;
    }
    eventually("both ends are logged", || {
        log.text()
            .matches("stream ended: the broker closed (shutdown)")
            .count()
            == 2
    })
    .await;
    assert!(
        !log.text().contains("its reader went away"),
        "{}",
        log.text()
    );
}

#[tokio::test]
async fn a_lag_is_logged_with_what_was_missed() {
    let (log, _subscriber) = trace::capture(tracing::Level::INFO, FmtSpan::NONE);
    read_a_lag_of_six();
    assert!(log.has("stream lagged", "missed=6"), "{}", log.text());
}

#[tokio::test]
async fn nothing_is_logged_at_info_while_streams_open_resume_and_deliver() {
    let (log, _subscriber) = trace::capture(tracing::Level::INFO, FmtSpan::NONE);
    let broker = Broker::new();
    let addr = serve_axum(app(SseLayer::new(broker.clone()))).await;
    let mut stream = client::get(addr, "/events?topic=a", &[]).await;
    let mut stale = client::get(addr, "/events?topic=a", &[("last-event-id", "garbage")]).await;
    for i in 0..50 {
        publish(&broker, "a", &i.to_string());
    }
    assert_eq!(stream.events(50).await.len(), 50);
    stale.next_of_type("resync").await;
    assert_eq!(stale.events(50).await.len(), 50);
    drop((stream, stale));
    let text = log.text();
    assert!(text.is_empty(), "logged at info:\n{text}");
}
