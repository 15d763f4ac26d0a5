//! What the crate tells an app's observability: the metrics it records
//! through the `metrics` facade (read back with `metrics-util`'s debugging
//! recorder), and the span a stream's events are recorded in (read back
//! from a `tracing-subscriber` writing into memory).
//!
//! Both are set for the current thread only (`with_local_recorder`,
//! `with_default`), and each test runs its server and its clients on a
//! current-thread runtime inside that scope: the other tests of this binary
//! run in parallel and record nothing here.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use http::Method;
use tower_sse::sse::any_topic;
use tower_sse::{Broker, Event, Message, SseLayer, Subscription, Topics};

use super::support::client;
use super::support::server::serve_axum;
#[cfg(feature = "metrics")]
use super::support::sse::json_of;
use super::support::wait::eventually;

/// Runs `test` on a current-thread runtime on this thread.
fn on_this_thread<F: Future>(test: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(test)
}

fn app(broker: &Broker) -> axum::Router {
    axum::Router::new()
        .route("/", axum::routing::get(|| async { "page" }))
        .layer(SseLayer::new(broker.clone()).authorize(any_topic))
}

fn publish(broker: &Broker, topic: &str, data: &str) -> String {
    broker
        .publish(Event::new("tick").topic(topic).data(data.to_owned()))
        .expect("publish")
        .to_string()
}

#[cfg(feature = "metrics")]
mod metrics {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    use tower_sse::mailbox::{Mailbox, Notification};
    use tower_sse::metrics as names;

    use super::*;

    /// What the recorder holds, summed over snapshots: the debugging
    /// recorder zeroes counters and gauges as it reads them, so a running
    /// sum is the value since the test began (a gauge moved by increments
    /// and decrements included).
    struct Recorded {
        snapshotter: Snapshotter,
        values: HashMap<(String, Vec<(String, String)>), f64>,
    }

    impl Recorded {
        fn new(snapshotter: Snapshotter) -> Self {
            Self {
                snapshotter,
                values: HashMap::new(),
            }
        }

        fn take(&mut self) {
            for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
                let key = key.key();
                let mut labels: Vec<_> = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                labels.sort();
                let n = match value {
                    DebugValue::Counter(n) => n as f64,
                    DebugValue::Gauge(g) => g.into_inner(),
                    DebugValue::Histogram(_) => continue,
                };
                *self
                    .values
                    .entry((key.name().to_owned(), labels))
                    .or_default() += n;
            }
        }

        /// The value of `name` with exactly `labels`, 0 if never recorded.
        fn get(&mut self, name: &str, labels: &[(&str, &str)]) -> f64 {
            self.take();
            let mut labels: Vec<_> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            labels.sort();
            self.values
                .get(&(name.to_owned(), labels))
                .copied()
                .unwrap_or(0.0)
        }

        /// Every name recorded, with any labels.
        fn names(&mut self) -> Vec<String> {
            self.take();
            let mut names: Vec<_> = self.values.keys().map(|(n, _)| n.clone()).collect();
            names.sort();
            names.dedup();
            names
        }
    }

    /// Runs `test` with a recorder of this thread's own.
    fn recorded<F, Fut>(test: F)
    where
        F: FnOnce(Recorded) -> Fut,
        Fut: Future<Output = ()>,
    {
        let recorder = DebuggingRecorder::new();
        let recorded = Recorded::new(recorder.snapshotter());
        ::metrics::with_local_recorder(&recorder, || on_this_thread(test(recorded)));
    }

    #[test]
    fn a_streams_life_is_counted_from_publish_to_close() {
        recorded(|mut m| async move {
            let broker = Broker::new();
            let addr = serve_axum(app(&broker)).await;
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
            // Two replayed, then the resync's frame.
            assert_eq!(replay.events(2).await.len(), 2);
            let told = resync.next_of_type("resync").await;
            assert_eq!(json_of(&told)["reason"], "malformed-id");
            let refused = client::fetch(addr, Method::POST, "/events", &[], "").await;
            assert_eq!(refused.status.as_u16(), 405);

            publish(&broker, "a", "4");
            for stream in [&mut live, &mut replay, &mut resync] {
                assert_eq!(stream.next_event().await.data, "4");
            }

            assert_eq!(m.get(names::EVENTS_PUBLISHED, &[]), 4.0);
            assert_eq!(m.get(names::STREAMS_OPENED, &[]), 3.0);
            assert_eq!(m.get(names::STREAMS_OPEN, &[]), 3.0);
            assert_eq!(m.get(names::STREAM_STARTS, &[("resume", "live")]), 1.0);
            assert_eq!(m.get(names::STREAM_STARTS, &[("resume", "replay")]), 1.0);
            assert_eq!(m.get(names::STREAM_STARTS, &[("resume", "resync")]), 1.0);
            assert_eq!(m.get(names::REPLAYED_EVENTS, &[]), 2.0);
            assert_eq!(m.get(names::RESYNCS, &[("reason", "malformed-id")]), 1.0);
            assert_eq!(m.get(names::REFUSALS, &[("status", "405")]), 1.0);
            // The live stream 1 frame, the replay 2 + 1, the resync its
            // `resync` + 1 (the `retry:` hints are not frames of events).
            assert_eq!(m.get(names::FRAMES_DELIVERED, &[]), 6.0);
            assert!(m.get(names::DELIVERED_BYTES, &[]) > 0.0);

            drop((live, replay, resync));
            eventually("the open streams gauge back to 0", || {
                m.get(names::STREAMS_OPEN, &[]) == 0.0
            })
            .await;
            // Nothing per topic or per client: the only labels are the
            // small fixed sets the module documents.
            for name in m.names() {
                assert!(names::ALL.contains(&name.as_str()), "undocumented {name}");
            }
        });
    }

    #[test]
    fn a_reader_that_falls_behind_is_counted_as_lagged_with_what_it_missed() {
        recorded(|mut m| async move {
            let broker = Broker::builder().retain_events(4).build();
            let mut sub: Subscription = broker
                .subscribe(&Topics::parse(["a"]).unwrap(), None)
                .unwrap();
            for i in 0..10 {
                publish(&broker, "a", &i.to_string());
            }
            match sub.try_next() {
                Some(Message::Lagged { missed, .. }) => assert_eq!(missed, 6),
                other => panic!("expected a lag, got {other:?}"),
            }
            assert_eq!(m.get(names::RESYNCS, &[("reason", "lagged")]), 1.0);
            assert_eq!(m.get(names::MISSED_EVENTS, &[]), 6.0);
        });
    }

    #[cfg(feature = "redis")]
    #[test]
    fn a_replicas_reader_reports_connected_mirrored_and_its_lag() {
        use super::super::support::redis::RedisServer;
        use tower_sse::backplane::RedisBackplane;
        recorded(|mut m| async move {
            let redis = RedisServer::start().await;
            let replica = RedisBackplane::new(&redis.url())
                .expect("URL")
                .block(std::time::Duration::from_millis(100))
                .start(Broker::builder());
            eventually("the reader to connect", || {
                m.get(names::BACKPLANE_CONNECTED, &[]) == 1.0
            })
            .await;
            for i in 0..3 {
                replica
                    .publish(Event::new("tick").topic("a").data(i.to_string()))
                    .await
                    .expect("publish");
            }
            eventually("three entries mirrored", || {
                m.get(names::BACKPLANE_MIRRORED, &[]) == 3.0
            })
            .await;
            // Set after every read; summed here, so only its last value is
            // checked: nothing left to mirror.
            assert_eq!(replica.stats().mirror.lag, 0);
            assert_eq!(m.get(names::BACKPLANE_RECONNECTS, &[]), 0.0);
        });
    }

    #[test]
    fn the_mailbox_counts_sends_refusals_and_deliveries() {
        recorded(|mut m| async move {
            let broker = Broker::new();
            let mailbox = Mailbox::builder(broker).per_sender(1).build();
            let sent = mailbox
                .send(Notification::to("bob").from("alice").json("hi").unwrap())
                .expect("room for one");
            assert!(mailbox
                .send(Notification::to("carol").from("alice").json("hi").unwrap())
                .is_err());
            assert!(mailbox.ack(&sent, "bob"));
            assert_eq!(m.get(names::MAILBOX_SENT, &[]), 1.0);
            assert_eq!(m.get(names::MAILBOX_REFUSED, &[("reason", "sender")]), 1.0);
            assert_eq!(m.get(names::MAILBOX_DELIVERED, &[]), 1.0);
        });
    }
}

/// A `tracing` subscriber that writes into memory, as text.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `test` with a subscriber of this thread's own, at `level` and up.
fn traced<F: Future<Output = ()>>(level: tracing::Level, test: impl FnOnce(Log) -> F) {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || on_this_thread(test(log)));
}

fn client_seven(parts: &http::request::Parts) -> Result<tower_sse::Grant, tower_sse::Rejection> {
    any_topic(parts).map(|grant| grant.client("reader-7"))
}

#[test]
fn a_streams_events_are_logged_in_its_span_with_topics_client_and_resume() {
    traced(tracing::Level::DEBUG, |log| async move {
        let broker = Broker::builder().retain_events(2).build();
        let app = axum::Router::new().layer(SseLayer::new(broker.clone()).authorize(client_seven));
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
        // Resumes from an evicted id: told to resync, which the broker logs
        // while the stream polls it, so inside the stream's span.
        let mut expired = client::get(
            addr,
            "/events?topic=a",
            &[("last-event-id", first.as_str())],
        )
        .await;
        expired.next_of_type("resync").await;
        drop(expired);
        let refused = client::fetch(addr, Method::POST, "/events", &[], "").await;
        assert_eq!(refused.status.as_u16(), 405);
        eventually("both ends are logged", || {
            log.text()
                .matches("stream ended: its reader went away")
                .count()
                == 2
        })
        .await;

        let text = log.text();
        let line = |what: &str, span: &str| {
            let found = text.lines().find(|l| l.contains(what) && l.contains(span));
            assert!(found.is_some(), "no {what:?} in {span:?}:\n{text}");
        };
        line(
            "its reader went away",
            "sse_stream{topics=2 topic_names=a,b resume=replayed 1 client=\"reader-7\"}",
        );
        line(
            "stream told to resync reason=\"expired\"",
            "sse_stream{topics=1 topic_names=a resume=resync: expired client=\"reader-7\"}",
        );
        line("events request refused", "");
    });
}

#[test]
fn a_lag_is_logged_with_what_was_missed() {
    traced(tracing::Level::INFO, |log| async move {
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
        let text = log.text();
        assert!(
            text.contains("stream lagged") && text.contains("missed=6"),
            "{text}"
        );
    });
}

#[test]
fn nothing_is_logged_at_info_per_event_delivered() {
    traced(tracing::Level::INFO, |log| async move {
        let broker = Broker::new();
        let addr = serve_axum(app(&broker)).await;
        let mut stream = client::get(addr, "/events?topic=a", &[]).await;
        for i in 0..50 {
            publish(&broker, "a", &i.to_string());
        }
        assert_eq!(stream.events(50).await.len(), 50);
        drop(stream);
        let text = log.text();
        assert!(text.is_empty(), "logged at info while delivering:\n{text}");
    });
}
