//! Churn soak over loopback: hundreds of clients connect, read at random
//! speeds, stall, cut their connections and resume with `Last-Event-ID`
//! while publishers run. Every client's received events must be exactly the
//! published ones of its topics, except across an explicit `resync`; the
//! server must come back to idle; publishing must never block.
//!
//! Runs against `axum::serve` and `tower_sse::serve` alike.
//!
//! Sized for two cores and a debug build: `SOAK_SECS` (default 15) and
//! `SOAK_CLIENTS` (default 200) scale it up for a longer run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower_sse::{Broker, Event, SseLayer};

use crate::support::client::Connection;
use crate::support::rng::Rng;
use crate::support::server::{loopback, serve_axum, spawn_serve};
use crate::support::sse::{seq_of, RawFrame};

const TOPICS: [&str; 4] = ["t0", "t1", "t2", "t3"];

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Event {
        seq: u64,
        topic: String,
    },
    /// A resync or lag report, continuing from this seq.
    Resync {
        from: u64,
    },
    /// A new connection, resuming from this seq (`None`: live).
    Connect {
        resume: Option<u64>,
    },
}

/// One connection: reads until `until`, with random pauses and stalls.
/// Returns when cut (by us, at random) or at the deadline.
async fn one_connection(
    addr: SocketAddr,
    topics: &[&str],
    resume: Option<u64>,
    epoch: u64,
    rng: &mut Rng,
    deadline: Instant,
    got: &mut Vec<Got>,
) -> Option<u64> {
    let mut conn = Connection::open(addr).await;
    let query: Vec<String> = topics.iter().map(|t| format!("topic={t}")).collect();
    let mut request = http::Request::get(format!("/events?{}", query.join("&")))
        .header("host", "soak")
        .header("accept", "text/event-stream");
    if let Some(seq) = resume {
        request = request.header("last-event-id", format!("{epoch}-{seq}"));
    }
    let response = conn
        .send(request.body(Full::new(Bytes::new())).unwrap())
        .await;
    assert_eq!(response.status(), 200);
    got.push(Got::Connect { resume });
    let mut body = response.into_body();
    let mut last = resume;
    let mut pending = Vec::new();
    let cut_after = Instant::now() + Duration::from_millis(200 + rng.below(3_000));
    loop {
        let now = Instant::now();
        if now >= deadline || now >= cut_after {
            break;
        }
        if rng.chance(2) {
            // Stall: stop reading for a while; the server must not care.
            tokio::time::sleep(Duration::from_millis(300 + rng.below(1_500))).await;
        } else if rng.chance(30) {
            tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
        }
        let chunk = match tokio::time::timeout(Duration::from_millis(500), body.frame()).await {
            Err(_) => continue,
            Ok(None) => break,
            Ok(Some(chunk)) => chunk.unwrap(),
        };
        let Some(data) = chunk.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some((frame, len)) = RawFrame::first(&pending) {
            pending.drain(..len);
            let Some(id) = frame.id() else { continue };
            let seq = seq_of(id);
            if frame.event_type() == Some("resync") {
                got.push(Got::Resync { from: seq });
            } else {
                let data = frame.data().unwrap_or_default();
                let topic = data.split(' ').next().unwrap().to_owned();
                got.push(Got::Event { seq, topic });
            }
            last = Some(seq);
        }
    }
    last
}

/// Checks one client's log against what was published.
fn verify(client: usize, topics: &[&str], got: &[Got], published: &BTreeMap<u64, String>) {
    let mine = |seq: &u64, topic: &String| *seq > 0 && topics.contains(&topic.as_str());
    // The position the stream is at: everything of my topics up to it was
    // received or reported. `None` until a live stream receives its first.
    let mut position: Option<u64> = None;
    for entry in got {
        match entry {
            Got::Connect { resume } => position = *resume,
            Got::Resync { from } => position = Some(*from),
            Got::Event { seq, topic } => {
                assert!(
                    topics.contains(&topic.as_str()),
                    "client {client} got topic {topic}"
                );
                assert_eq!(
                    published.get(seq),
                    Some(topic),
                    "client {client}: unknown event {seq}"
                );
                if let Some(at) = position {
                    assert!(*seq > at, "client {client}: {seq} after {at}");
                    let skipped: Vec<u64> = published
                        .range(at + 1..*seq)
                        .filter(|(s, t)| mine(s, t))
                        .map(|(s, _)| *s)
                        .collect();
                    assert!(
                        skipped.is_empty(),
                        "client {client} silently missed {skipped:?} between {at} and {seq}"
                    );
                }
                position = Some(*seq);
            }
        }
    }
}

/// Which server the soak runs against.
#[derive(Clone, Copy, Debug)]
enum Server {
    /// `axum::serve`: hyper drives every stream.
    Axum,
    /// `tower_sse::serve`: its own stream path drives them.
    TowerSse,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_soak_under_axum_serve() {
    churn_soak(Server::Axum).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_soak_under_tower_sse_serve() {
    churn_soak(Server::TowerSse).await;
}

async fn churn_soak(kind: Server) {
    let secs = env("SOAK_SECS", 15);
    let clients = env("SOAK_CLIENTS", 200) as usize;
    let broker = Broker::builder().epoch(77).retain_events(400).build();
    let layer = SseLayer::new(broker.clone())
        .authorize(tower_sse::sse::any_topic)
        .keep_alive(Duration::from_millis(250));
    let app = Router::new().layer(layer.clone());
    let addr = match kind {
        Server::Axum => serve_axum(app).await,
        Server::TowerSse => spawn_serve(tower_sse::serve(loopback().await, app)),
    };
    let idle_topics = broker.stats().topics;

    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let published = Arc::new(Mutex::new(BTreeMap::new()));
    let slowest_publish = Arc::new(Mutex::new(Duration::ZERO));

    let mut publishers = Vec::new();
    for p in 0..2u64 {
        let broker = broker.clone();
        let published = published.clone();
        let slowest = slowest_publish.clone();
        publishers.push(tokio::spawn(async move {
            let mut rng = Rng::new(1_000 + p);
            let mut ticker = tokio::time::interval(Duration::from_millis(4));
            while Instant::now() < deadline {
                ticker.tick().await;
                let topic = TOPICS[rng.below(4) as usize];
                let began = Instant::now();
                // The topic travels in the data, so clients can check it.
                let id = broker
                    .publish(Event::new("e").topic(topic).data(format!("{topic} {p}")))
                    .unwrap();
                let took = began.elapsed();
                published.lock().unwrap().insert(id.seq(), topic.to_owned());
                let mut slowest = slowest.lock().unwrap();
                *slowest = (*slowest).max(took);
            }
        }));
    }

    let mut tasks = Vec::new();
    for c in 0..clients {
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(c as u64);
            let n = 1 + rng.below(2) as usize;
            let mut topics: Vec<&str> = (0..n).map(|_| TOPICS[rng.below(4) as usize]).collect();
            topics.sort_unstable();
            topics.dedup();
            let mut got = Vec::new();
            let mut resume = None;
            while Instant::now() < deadline {
                let last =
                    one_connection(addr, &topics, resume, 77, &mut rng, deadline, &mut got).await;
                // Mostly resume; sometimes come back fresh, as a reload does.
                resume = if rng.chance(90) { last } else { None };
            }
            (c, topics, got)
        }));
    }

    let mut logs = Vec::new();
    for task in tasks {
        logs.push(task.await.unwrap());
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }

    let published = published.lock().unwrap().clone();
    let mut events = 0;
    let mut resyncs = 0;
    for (c, topics, got) in &logs {
        verify(*c, topics, got, &published);
        events += got
            .iter()
            .filter(|g| matches!(g, Got::Event { .. }))
            .count();
        resyncs += got
            .iter()
            .filter(|g| matches!(g, Got::Resync { .. }))
            .count();
    }
    let slowest = *slowest_publish.lock().unwrap();
    println!(
        "soak ({kind:?}): {secs} s, {clients} clients, {} published, {events} received, {resyncs} resyncs, slowest publish {slowest:?}",
        published.len()
    );
    assert!(events > published.len(), "the clients hardly read anything");
    // Publishing never waits on readers: the slowest publish is a lock
    // hold, not a stall (generous bound for a loaded debug build).
    assert!(
        slowest < Duration::from_millis(250),
        "a publish took {slowest:?}"
    );

    // Back to idle: no subscription, no connection, no per-topic watcher
    // state beyond the topics that still hold events.
    tokio::time::timeout(Duration::from_secs(30), async {
        while broker.stats().subscribers != 0 || layer.connections() != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("subscriptions outlived their connections");
    let stats = broker.stats();
    assert!(stats.topics <= idle_topics + TOPICS.len(), "{stats:?}");
    assert!(stats.retained_events <= 400);
    for topic in TOPICS {
        if let Some(t) = broker.topic_stats(topic) {
            assert_eq!(t.subscribers, 0);
        }
    }
}
