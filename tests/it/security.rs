//! The security review, as tests: isolation of topics under resume and
//! replay, no field injection, the authorizer before anything is sent, and
//! oversized request heads refused before they are read whole.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use http::request::Parts;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_sse::sse::requested_topics;
use tower_sse::{Broker, Event, Grant, Message, Rejection, SseLayer, Topics};

use crate::support::raw::exchange;
use crate::support::server::{loopback, serve_axum, spawn_serve};

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever was published, on whatever topics, and wherever a client
    /// resumes from, it receives only events of the topics it was granted.
    #[test]
    fn a_subscription_never_sees_another_topics_events(
        publishes in prop::collection::vec((0usize..4, any::<bool>()), 1..60),
        granted in prop::collection::btree_set(0usize..4, 1..3),
        resume in 0u64..70,
        retain in 1usize..40,
    ) {
        let names = ["a", "b", "c", "d"];
        let broker = Broker::builder().epoch(1).retain_events(retain).build();
        let topics = Topics::parse(granted.iter().map(|&i| names[i])).unwrap();
        let mut live = broker.subscribe(&topics, None).unwrap();
        for (i, (topic, system)) in publishes.iter().enumerate() {
            if *system {
                broker.publish_system(Event::new("sys").data(i.to_string())).unwrap();
            } else {
                broker.publish(Event::new("t").topic(names[*topic]).data(i.to_string())).unwrap();
            }
        }
        let mut resumed = broker.subscribe(&topics, Some(&format!("1-{resume}"))).unwrap();
        for sub in [&mut live, &mut resumed] {
            while let Some(message) = sub.try_next() {
                if let Message::Event(event) = message {
                    prop_assert!(
                        event.is_system() || topics.contains(event.topic().as_str()),
                        "{} leaked to {:?}", event.topic(), topics
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn the_authorizer_runs_before_anything_is_subscribed_or_replayed() {
    let broker = Broker::builder().epoch(9).build();
    for i in 0..5 {
        broker
            .publish(Event::new("secret").topic("vault").data(format!("s{i}")))
            .unwrap();
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let seen_subscribers = Arc::new(AtomicUsize::new(usize::MAX));
    let authorize = {
        let broker = broker.clone();
        let calls = calls.clone();
        let seen = seen_subscribers.clone();
        move |parts: &Parts| -> Result<Grant, Rejection> {
            calls.fetch_add(1, Ordering::SeqCst);
            seen.store(broker.stats().subscribers, Ordering::SeqCst);
            let wanted =
                requested_topics(parts)?.ok_or_else(|| Rejection::bad_request("name a topic"))?;
            if wanted.contains("vault") && parts.headers.get("x-key").is_none() {
                return Err(Rejection::forbidden("no key"));
            }
            Ok(wanted.into())
        }
    };
    let app = Router::new().layer(SseLayer::new(broker.clone()).authorize(authorize));
    let addr = serve_axum(app).await;

    // Refused with a resume id that would replay all five secrets: 403,
    // no subscription made, not a byte of them sent.
    let text = exchange(
        addr,
        b"GET /events?topic=vault&lastEventId=9-0 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        Some(b"\r\n\r\n{"),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    assert!(!text.contains("s0"), "{text}");
    assert_eq!(broker.stats().subscribers, 0);
    assert_eq!(broker.stats().resyncs, 0, "the broker never saw the id");

    // Granted: the authorizer still ran before the subscription existed.
    let answer = exchange(
        addr,
        b"GET /events?topic=vault&lastEventId=9-0 HTTP/1.1\r\nhost: x\r\nx-key: 1\r\n\r\n",
        Some(b"data: s4"),
    )
    .await;
    assert!(answer.contains("data: s0"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(seen_subscribers.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_client_supplied_id_is_never_echoed_into_the_stream() {
    let broker = Broker::builder().epoch(3).build();
    let app = Router::new().layer(SseLayer::new(broker.clone()));
    let addr = serve_axum(app).await;
    // A decoded query value may hold line breaks; nothing of it may reach
    // the wire, where it would forge fields or events.
    let text = exchange(
        addr,
        b"GET /events?lastEventId=3-0%0Adata:%20forged%0A%0Aevent:%20x HTTP/1.1\r\nhost: x\r\n\r\n",
        Some(b"event: resync"),
    )
    .await;
    assert!(text.contains("\"reason\":\"malformed-id\""), "{text}");
    assert!(!text.contains("forged"), "{text}");
    assert!(!text.contains("event: x"), "{text}");
}

#[tokio::test]
async fn an_event_type_cannot_forge_fields() {
    let broker = Broker::new();
    for bad in ["x\ndata: forged", "x\r\nid: 1", "x\revent: y"] {
        assert_eq!(
            broker.publish(Event::new(bad).data("ok")),
            Err(tower_sse::PublishError::InvalidEventType)
        );
    }
    assert_eq!(broker.stats().published, 0);
}

#[tokio::test]
async fn an_unbounded_request_head_is_refused_before_it_is_read_whole() {
    let broker = Broker::new();
    let app = Router::new().layer(SseLayer::new(broker.clone()));
    let addr = serve_axum(app).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"GET /events HTTP/1.1\r\nhost: x\r\nx-junk: ")
        .await
        .unwrap();
    // Keep writing header bytes; the server must answer (or close) long
    // before 16 MiB, without waiting for the end of the head.
    let chunk = vec![b'a'; 16 * 1024];
    let mut written = 0usize;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            tokio::select! {
                _ = reader.read_buf(&mut answer) => return,
                wrote = writer.write_all(&chunk) => {
                    if wrote.is_err() {
                        return;
                    }
                    written += chunk.len();
                    assert!(written < 16 * 1024 * 1024, "the server read 16 MiB of header");
                }
            }
        }
    })
    .await
    .expect("the server neither answered nor closed");
    // hyper stops at its buffer limit (about 400 KiB), answers 431 and
    // closes; what was written beyond that sat in the kernel's socket
    // buffers, and closing with unread data may reset the connection before
    // the 431 is read. Either way the server gave up long before the end.
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "unexpected answer after {written} bytes: {text}"
    );
    assert_eq!(broker.stats().subscribers, 0);
}

/// Sends a `POST` announcing a 100 000-byte body to `/echo`, then drips it
/// a byte every 50 ms; returns how long the server kept the connection,
/// and what it answered.
async fn drip_body(addr: SocketAddr) -> (Duration, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // Two minutes of dripping at most: the server must end it long before.
    for _ in 0..2400 {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                if stream.write_all(b"x").await.is_err() {
                    break;
                }
            }
        }
    }
    (
        started.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    )
}

fn echo_app() -> Router {
    Router::new().route(
        "/echo",
        axum::routing::post(|body: axum::body::Bytes| async move { body }),
    )
}

/// A body dripped a byte at a time holds a `tower_sse::serve` connection
/// no longer than the body timeout: the handler's read fails, it answers,
/// and the connection closes.
#[tokio::test]
async fn a_dripped_body_is_cut_off_by_serve_at_its_body_timeout() {
    let addr = spawn_serve(
        tower_sse::serve(loopback().await, echo_app()).body_timeout(Duration::from_millis(500)),
    );
    let (held, answer) = drip_body(addr).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(held < Duration::from_secs(60), "held for {held:?}");
}

/// The same under `axum::serve`, with the recipe the README gives:
/// tower-http's `TimeoutLayer` bounds a handler together with its reading
/// of the body.
#[tokio::test]
async fn a_dripped_body_is_cut_off_under_axum_serve_by_a_timeout_layer() {
    let app = echo_app().layer(tower_http::timeout::TimeoutLayer::with_status_code(
        http::StatusCode::REQUEST_TIMEOUT,
        Duration::from_millis(500),
    ));
    let addr = serve_axum(app).await;
    let (held, answer) = drip_body(addr).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(held < Duration::from_secs(60), "held for {held:?}");
}

/// The event types the crate speaks itself (a resync, the server's state,
/// a shutdown, notifications) cannot be published by the app, so a route
/// that publishes a caller's type cannot let the caller speak for the
/// server; the crate's own paths still send them.
#[test]
fn the_crates_own_event_types_cannot_be_forged() {
    use tower_sse::mailbox::{Mailbox, Notification};
    use tower_sse::mode::ServerMode;
    use tower_sse::{PublishError, RESERVED_EVENT_TYPES};

    let broker = Broker::new();
    for reserved in RESERVED_EVENT_TYPES {
        let event = || Event::new(reserved).data("{}");
        assert_eq!(
            broker.publish(event()),
            Err(PublishError::ReservedEventType)
        );
        assert_eq!(
            broker.publish_system(event()),
            Err(PublishError::ReservedEventType)
        );
    }
    assert_eq!(broker.stats().published, 0);
    // Matching is exact, as an `EventSource` matches types.
    broker.publish(Event::new("Resync")).unwrap();
    broker.publish(Event::new("resync.done")).unwrap();

    // The mode and the mailbox still speak.
    let mode = ServerMode::new();
    broker.follow_mode(&mode);
    let mailbox = Mailbox::new(broker.clone());
    let (mut sub, _connection) = mailbox.subscribe("bob", None).unwrap();
    mode.set_read_only("maintenance");
    mailbox
        .send(Notification::to("bob").from("ann").json(&"hi").unwrap())
        .unwrap();
    let types: Vec<String> = std::iter::from_fn(|| sub.try_next())
        .map(|m| match m {
            Message::Event(e) => e.event_type().to_owned(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(types, ["server.state", "notification"]);
}

#[test]
fn every_type_the_crate_sends_is_reserved() {
    use tower_sse::mailbox::{NOTIFICATION_EVENT, REPLY_EVENT};
    use tower_sse::mode::STATE_EVENT;
    use tower_sse::RESERVED_EVENT_TYPES;
    for own in [
        STATE_EVENT,
        NOTIFICATION_EVENT,
        REPLY_EVENT,
        "resync",
        "shutdown",
    ] {
        assert!(RESERVED_EVENT_TYPES.contains(&own), "{own}");
    }
}
