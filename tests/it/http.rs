//! The events route over real loopback TCP: resume, lag, disconnects, bad
//! ids, headers, keep-alives, refusals, topics, mounting on axum and on
//! plain hyper, and fan-out to many clients. The client side parses the
//! stream with `eventsource-stream`, independently of the crate's encoder.

use std::time::Duration;

use eventsource_stream::Event as SseEvent;
use http::{Method, StatusCode};
use tower::Layer;
use tower_sse::sse::any_topic;
use tower_sse::{Broker, Event, EventId, PublishError, SseLayer};

use crate::support::client::{get, send};
use crate::support::inner::echo_inner;
use crate::support::raw::RawClient;
use crate::support::server::{listener_with_send_buffer, serve_axum, serve_hyper, serve_hyper_on};
use crate::support::sse::{assert_every_block_has_data, json_of, seq_of, without_comments};
use crate::support::wait::{eventually, within};

/// Publishes `data` as an event of type `event_type` on the default topic
/// and returns its id as the wire shows it.
fn publish(broker: &Broker, event_type: &str, data: &str) -> String {
    broker
        .publish(Event::new(event_type).data(data.to_owned()))
        .expect("publish")
        .to_string()
}

fn publish_to(broker: &Broker, topic: &str, event_type: &str, data: &str) -> String {
    broker
        .publish(Event::new(event_type).topic(topic).data(data.to_owned()))
        .expect("publish")
        .to_string()
}

/// `(id, type, data)` of each event, for whole-sequence comparisons.
fn triples(events: &[SseEvent]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| (e.id.clone(), e.event.clone(), e.data.clone()))
        .collect()
}

fn triple(id: &str, event_type: &str, data: &str) -> (String, String, String) {
    (id.to_owned(), event_type.to_owned(), data.to_owned())
}

/// The frame the crate should write for a single-line event.
fn frame(id: &str, event_type: &str, data: &str) -> String {
    format!("id: {id}\nevent: {event_type}\ndata: {data}\n\n")
}

/// A server with the events route over an echoing inner service, on plain
/// hyper.
async fn serve_layer(layer: &SseLayer) -> std::net::SocketAddr {
    serve_hyper(layer.clone().layer(echo_inner())).await
}

// 1. Resume after a cut connection.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_cut_connection_gets_exactly_the_missed_events() {
    let broker = Broker::builder().epoch(11).build();
    let layer = SseLayer::new(broker.clone());
    let addr = serve_layer(&layer).await;

    let mut first = get(addr, "/events", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    let ids: Vec<String> = (1..=5)
        .map(|i| publish(&broker, "tick", &format!("e{i}")))
        .collect();
    let seen = first.events(3).await;
    assert_eq!(
        triples(&seen),
        (0..3)
            .map(|i| triple(&ids[i], "tick", &format!("e{}", i + 1)))
            .collect::<Vec<_>>()
    );
    let last_seen = seen[2].id.clone();

    // Cut the connection and publish while the client is away.
    drop(first);
    eventually("the server to notice the cut connection", || {
        broker.stats().subscribers == 0 && layer.connections() == 0
    })
    .await;
    let mut ids = ids;
    ids.extend((6..=9).map(|i| publish(&broker, "tick", &format!("e{i}"))));

    let mut second = get(addr, "/events", &[("last-event-id", &last_seen)]).await;
    assert_eq!(second.status, StatusCode::OK);
    let replayed = second.events(6).await;
    assert_eq!(
        triples(&replayed),
        (3..9)
            .map(|i| triple(&ids[i], "tick", &format!("e{}", i + 1)))
            .collect::<Vec<_>>()
    );

    // The seam: the next live event follows directly, nothing in between.
    let live = publish(&broker, "tick", "e10");
    assert_eq!(
        triples(&[second.next_event().await]),
        [triple(&live, "tick", "e10")]
    );

    let mut expected = String::from("retry: 3000\n");
    for (i, id) in ids.iter().enumerate().skip(3) {
        expected.push_str(&frame(id, "tick", &format!("e{}", i + 1)));
    }
    expected.push_str(&frame(&live, "tick", "e10"));
    assert_eq!(without_comments(&second.raw()), expected);
    assert_every_block_has_data(&second.raw());
    assert_eq!(broker.stats().resyncs, 0);
    assert_eq!(broker.stats().lag_reports, 0);
}

// 2. A client that stops reading.

fn big_payload(i: u64) -> String {
    const PAYLOAD: usize = 64 * 1024;
    let mut payload = format!("{i:08}");
    payload.extend(std::iter::repeat_n('x', PAYLOAD - payload.len()));
    payload
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_slows_neither_the_publisher_nor_other_clients() {
    const EVENTS: u64 = 200;
    const RETAINED: usize = 32;
    let broker = Broker::builder().epoch(9).retain_events(RETAINED).build();
    // Whole events in every body frame (a stream cut in the middle of a
    // sliced one is another test's subject, `stalled_reader`).
    let layer = SseLayer::new(broker.clone()).max_batch_bytes(256 * 1024);
    // Small socket buffers on both ends, so that the stalled connection
    // fills up after a few events whatever the host's TCP tuning.
    let listener = listener_with_send_buffer(64 * 1024);
    let addr = serve_hyper_on(listener, layer.clone().layer(echo_inner()));

    let mut fast = get(addr, "/events", &[]).await;
    assert_eq!(fast.status, StatusCode::OK);
    let slow = RawClient::get(addr, "/events", &[], 16 * 1024).await;
    assert!(slow.head.starts_with("HTTP/1.1 200 "), "{}", slow.head);
    assert_eq!(broker.stats().subscribers, 2);

    // The fast client reads everything and reports how far it got.
    let (progress_tx, progress_rx) = tokio::sync::watch::channel(0u64);
    let reader = tokio::spawn(async move {
        let mut received = Vec::new();
        for _ in 0..EVENTS {
            let event = fast.next_event().await;
            let seq = seq_of(&event.id);
            let intact = event.data == big_payload(seq);
            received.push((event.id, event.event, intact));
            progress_tx.send_replace(seq);
        }
        received
    });

    // Publish 200 x 64 KiB while the slow client reads nothing. The
    // publisher only paces itself on the fast client (so that it does not
    // lag); the slow one must not hold anything up.
    let mut ids: Vec<EventId> = Vec::new();
    for i in 1..=EVENTS {
        let id = broker.publish(Event::new("big").data(big_payload(i)));
        let id = id.unwrap_or_else(|e| panic!("publish {i} failed: {e}"));
        ids.push(id);
        if i % 8 == 0 {
            let mut progress = progress_rx.clone();
            within(
                "the fast client to keep up",
                progress.wait_for(|&seen| seen >= id.seq()),
            )
            .await
            .expect("the fast reader is alive");
        }
    }
    let received = within("the fast reader", reader).await.expect("reader");
    let expected: Vec<_> = ids
        .iter()
        .map(|id| (id.to_string(), "big".to_owned(), true))
        .collect();
    assert_eq!(
        received, expected,
        "the fast client got every event, intact"
    );

    // Now the slow client reads: what was buffered for it, then a lag
    // report, then the retained events.
    let mut slow = slow.into_client();
    let last = ids.last().expect("published").to_string();
    let mut got: Vec<SseEvent> = Vec::new();
    loop {
        let event = slow.next_event().await;
        let done = event.id == last;
        got.push(event);
        if done {
            break;
        }
    }

    let mut previous = 0u64;
    let mut delivered = 0u64;
    let mut missed_total = 0u64;
    let mut resyncs = 0u64;
    let mut after_last_resync = 0usize;
    for (i, event) in got.iter().enumerate() {
        if event.event == "resync" {
            let data = json_of(event);
            assert_eq!(data["reason"], "lagged", "{data}");
            let missed = data["missed"].as_u64().expect("missed count");
            assert!(missed > 0, "{data}");
            let next = got
                .get(i + 1)
                .expect("events follow a lag report")
                .id
                .clone();
            assert_eq!(
                seq_of(&next),
                previous + missed + 1,
                "missed counts exactly the gap"
            );
            assert_eq!(
                seq_of(&event.id),
                previous + missed,
                "resync id is the resume point"
            );
            previous += missed;
            missed_total += missed;
            resyncs += 1;
            after_last_resync = 0;
        } else {
            assert_eq!(event.event, "big");
            let seq = seq_of(&event.id);
            assert_eq!(seq, previous + 1, "no silent gap, no duplicate");
            assert_eq!(event.data, big_payload(seq));
            previous = seq;
            delivered += 1;
            after_last_resync += 1;
        }
    }
    assert!(resyncs >= 1, "the slow client must be told it lagged");
    assert_eq!(delivered + missed_total, EVENTS);
    assert_eq!(
        after_last_resync, RETAINED,
        "after the lag report the whole retained log follows"
    );
    let stats = broker.stats();
    assert_eq!(stats.published, EVENTS);
    assert_eq!(stats.lag_reports, resyncs);
    assert_eq!(stats.lagged_events, missed_total);
}

// 3. Disconnects.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_releases_the_subscription_and_the_connection() {
    let broker = Broker::builder().epoch(3).build();
    let layer = SseLayer::new(broker.clone());
    let addr = serve_layer(&layer).await;

    let a = get(addr, "/events", &[]).await;
    let mut b = get(addr, "/events", &[]).await;
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(broker.stats().subscribers, 2);
    assert_eq!(layer.connections(), 2);

    drop(a);
    eventually("one subscriber and one connection left", || {
        broker.stats().subscribers == 1 && layer.connections() == 1
    })
    .await;

    let id = publish(&broker, "t", "still here");
    assert_eq!(
        triples(&[b.next_event().await]),
        [triple(&id, "t", "still here")]
    );

    drop(b);
    eventually("no subscriber and no connection left", || {
        broker.stats().subscribers == 0 && layer.connections() == 0
    })
    .await;
}

// 4. Bad Last-Event-ID values.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_last_event_ids_get_a_200_stream_that_starts_with_resync() {
    let broker = Broker::builder().epoch(42).build();
    let layer = SseLayer::new(broker.clone());
    let addr = serve_layer(&layer).await;
    for i in 1..=3 {
        publish(&broker, "t", &format!("before {i}"));
    }

    let junk: String = (0..10 * 1024)
        .map(|i| b"abcXYZ-0129_~!."[i % 15] as char)
        .collect();
    let cases: [(&str, &str); 7] = [
        ("", "malformed-id"),
        ("abc", "malformed-id"),
        ("1-2-3", "malformed-id"),
        ("99999999999999999999999-1", "malformed-id"),
        (&junk, "malformed-id"),
        ("43-1", "unknown-epoch"),
        ("42-1000", "future-id"),
    ];
    for (value, reason) in cases {
        let shown = &value[..value.len().min(30)];
        let newest = broker.last_event_id().to_string();
        let mut client = get(addr, "/events", &[("last-event-id", value)]).await;
        assert_eq!(client.status, StatusCode::OK, "for {shown:?}");
        assert_eq!(client.header("content-type"), Some("text/event-stream"));
        let first = client.next_event().await;
        assert!(
            client.raw().starts_with("retry: 3000\nid: "),
            "for {shown:?}: {:?}",
            client.raw()
        );
        assert_eq!(first.event, "resync", "for {shown:?}");
        assert_eq!(json_of(&first), serde_json::json!({ "reason": reason }));
        assert_eq!(first.id, newest, "the stream continues from the newest");

        // Live events follow.
        let id = publish(&broker, "t", "live");
        assert_eq!(
            triples(&[client.next_event().await]),
            [triple(&id, "t", "live")],
            "for {shown:?}"
        );
    }
    assert_eq!(broker.stats().resyncs, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_query_parameter_resumes_and_the_header_wins() {
    let broker = Broker::builder().epoch(5).build();
    let layer = SseLayer::new(broker.clone());
    let addr = serve_layer(&layer).await;
    let ids: Vec<String> = (1..=4)
        .map(|i| publish(&broker, "t", &format!("m{i}")))
        .collect();

    // The query parameter alone resumes.
    let mut by_query = get(addr, &format!("/events?lastEventId={}", ids[1]), &[]).await;
    assert_eq!(
        triples(&by_query.events(2).await),
        [triple(&ids[2], "t", "m3"), triple(&ids[3], "t", "m4")]
    );

    // A bad query parameter is a resync like a bad header.
    let mut bad_query = get(addr, "/events?lastEventId=abc", &[]).await;
    let first = bad_query.next_event().await;
    assert_eq!(first.event, "resync");
    assert_eq!(json_of(&first)["reason"], "malformed-id");

    // Header and query: the header decides, whichever is the good one.
    let mut good_header = get(
        addr,
        "/events?lastEventId=abc",
        &[("last-event-id", &ids[0])],
    )
    .await;
    assert_eq!(
        triples(&good_header.events(3).await),
        [
            triple(&ids[1], "t", "m2"),
            triple(&ids[2], "t", "m3"),
            triple(&ids[3], "t", "m4")
        ]
    );
    let mut bad_header = get(
        addr,
        &format!("/events?lastEventId={}", ids[0]),
        &[("last-event-id", "abc")],
    )
    .await;
    let first = bad_header.next_event().await;
    assert_eq!(first.event, "resync");
    assert_eq!(json_of(&first)["reason"], "malformed-id");

    // Every client now continues live, with nothing else queued before.
    let live = publish(&broker, "t", "live");
    for client in [
        &mut by_query,
        &mut bad_query,
        &mut good_header,
        &mut bad_header,
    ] {
        assert_eq!(
            triples(&[client.next_event().await]),
            [triple(&live, "t", "live")]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_an_evicted_id_is_an_expired_resync() {
    let broker = Broker::builder().epoch(8).retain_events(2).build();
    let layer = SseLayer::new(broker.clone());
    let addr = serve_layer(&layer).await;
    let ids: Vec<String> = (1..=5)
        .map(|i| publish(&broker, "t", &format!("n{i}")))
        .collect();

    let mut client = get(addr, "/events", &[("last-event-id", &ids[0])]).await;
    let first = client.next_event().await;
    assert_eq!(first.event, "resync");
    assert_eq!(json_of(&first), serde_json::json!({ "reason": "expired" }));
    assert_eq!(first.id, ids[4]);
    let live = publish(&broker, "t", "live");
    assert_eq!(
        triples(&[client.next_event().await]),
        [triple(&live, "t", "live")]
    );
}

// 5. Headers, the retry hint, and a fresh start.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_headers_retry_hint_and_a_fresh_client_starts_live_without_resync() {
    let broker = Broker::builder().epoch(77).build();
    let layer = SseLayer::new(broker.clone());
    let addr = serve_layer(&layer).await;
    publish(&broker, "t", "old 1");
    publish(&broker, "t", "old 2");

    let mut client = get(addr, "/events", &[]).await;
    assert_eq!(client.status, StatusCode::OK);
    assert_eq!(client.header("content-type"), Some("text/event-stream"));
    assert_eq!(client.header("cache-control"), Some("no-cache"));
    assert_eq!(client.header("x-accel-buffering"), Some("no"));
    client
        .wait_raw("the retry hint", |raw| raw.len() >= "retry: 3000\n".len())
        .await;
    assert!(
        client.raw().starts_with("retry: 3000\n"),
        "{:?}",
        client.raw()
    );

    let fresh = publish(&broker, "t", "fresh");
    let first = client.next_event().await;
    assert_eq!(triples(&[first]), [triple(&fresh, "t", "fresh")]);
    assert_eq!(
        without_comments(&client.raw()),
        format!("retry: 3000\n{}", frame(&fresh, "t", "fresh"))
    );
    assert_eq!(broker.stats().resyncs, 0);
}

// 6. Keep-alive.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_receives_keep_alive_comments() {
    let broker = Broker::builder().epoch(6).build();
    let layer = SseLayer::new(broker.clone()).keep_alive(Duration::from_millis(100));
    let addr = serve_layer(&layer).await;

    let mut client = get(addr, "/events", &[]).await;
    client
        .wait_raw("two keep-alive comments", |raw| {
            raw.strip_prefix("retry: 3000\n")
                .is_some_and(|rest| rest.lines().filter(|line| line.starts_with(':')).count() >= 2)
        })
        .await;
    assert_eq!(broker.stats().published, 0, "keep-alives are not events");
    // Comment lines alone, no blank line: nothing closes the block that
    // holds the `retry:` hint, so no client can take it for an event.
    let raw = client.raw();
    let comments = raw.strip_prefix("retry: 3000\n").unwrap();
    assert!(
        !comments.is_empty() && comments.split_inclusive('\n').all(|line| line == ":\n"),
        "{raw:?}"
    );

    // The comments dispatched nothing; the stream is still live.
    let id = publish(&broker, "t", "after the silence");
    assert_eq!(
        triples(&[client.next_event().await]),
        [triple(&id, "t", "after the silence")]
    );
    assert_every_block_has_data(&client.raw());
}

// 7. Refusals.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_authorizer_refuses_other_topics_with_403_json() {
    let broker = Broker::builder().epoch(1).build();
    let layer = SseLayer::new(broker.clone());
    let addr = serve_layer(&layer).await;

    for target in ["/events?topic=secret", "/events?topic=public&topic=secret"] {
        let client = get(addr, target, &[]).await;
        assert_eq!(client.status, StatusCode::FORBIDDEN, "{target}");
        assert_eq!(client.header("content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_str(&client.text().await).expect("JSON");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    assert_eq!(broker.stats().subscribers, 0);

    let mut public = get(addr, "/events?topic=public", &[]).await;
    assert_eq!(public.status, StatusCode::OK);
    let id = publish(&broker, "t", "hello");
    assert_eq!(
        triples(&[public.next_event().await]),
        [triple(&id, "t", "hello")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topic_names_and_too_many_topics_are_400() {
    let broker = Broker::builder().epoch(1).build();
    let layer = SseLayer::new(broker.clone())
        .authorize(any_topic)
        .max_topics(2);
    let addr = serve_layer(&layer).await;

    for target in [
        "/events?topic=bad%20name",
        "/events?topic=",
        "/events?topic=%24system",
        "/events?topic=a&topic=b&topic=c",
    ] {
        let client = get(addr, target, &[]).await;
        assert_eq!(client.status, StatusCode::BAD_REQUEST, "{target}");
        assert_eq!(client.header("content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_str(&client.text().await).expect("JSON");
        assert!(body["error"].is_string(), "{body}");
    }
    assert_eq!(broker.stats().subscribers, 0);
    assert_eq!(layer.connections(), 0);

    // Two topics are fine, and a repeated name counts once.
    for target in ["/events?topic=a&topic=b", "/events?topic=a&topic=a&topic=b"] {
        let client = get(addr, target, &[]).await;
        assert_eq!(client.status, StatusCode::OK, "{target}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_methods_on_the_events_path_are_405_and_head_is_headers_only() {
    let broker = Broker::builder().epoch(1).build();
    let layer = SseLayer::new(broker.clone());
    let addr = serve_layer(&layer).await;

    for method in [Method::POST, Method::PUT, Method::DELETE] {
        let client = send(addr, method.clone(), "/events", &[], "body").await;
        assert_eq!(client.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(client.header("allow"), Some("GET, HEAD"));
        let body: serde_json::Value = serde_json::from_str(&client.text().await).expect("JSON");
        assert!(body["error"].is_string(), "{body}");
    }

    let mut head = send(addr, Method::HEAD, "/events", &[], "").await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert!(head.events_to_end().await.is_empty());
    assert_eq!(head.raw(), "");
    assert_eq!(broker.stats().subscribers, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_reach_the_inner_service_unchanged() {
    let broker = Broker::builder().epoch(1).build();
    let layer = SseLayer::new(broker.clone());
    let addr = serve_layer(&layer).await;

    let cases = [
        (
            Method::GET,
            "/other/path?x=1&topic=secret",
            "inner GET /other/path?x=1&topic=secret x-probe=p1",
        ),
        (Method::POST, "/other", "inner POST /other x-probe=p1"),
        (Method::GET, "/events/", "inner GET /events/ x-probe=p1"),
        (Method::POST, "/eventsx", "inner POST /eventsx x-probe=p1"),
    ];
    for (method, target, expected) in cases {
        let client = send(addr, method, target, &[("x-probe", "p1")], "payload").await;
        assert_eq!(client.status, StatusCode::OK, "{target}");
        assert_eq!(client.header("x-inner"), Some("yes"), "{target}");
        assert_eq!(client.text().await, expected);
    }
    assert_eq!(broker.stats().subscribers, 0);
    assert_eq!(layer.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_a_client_gets_a_short_200_stream_with_retry_after() {
    let broker = Broker::builder().epoch(2).build();
    let layer = SseLayer::new(broker.clone()).max_connections(1);
    let addr = serve_layer(&layer).await;

    let mut first = get(addr, "/events", &[]).await;
    assert_eq!(first.status, StatusCode::OK);

    let second = get(addr, "/events", &[]).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.header("content-type"), Some("text/event-stream"));
    assert_eq!(second.header("retry-after"), Some("30"));
    let body = second.text().await;
    assert_eq!(body, "retry: 30000\n:over capacity\n");
    assert_every_block_has_data(&body);
    assert_eq!(layer.connections(), 1);
    assert_eq!(broker.stats().subscribers, 1);

    // The first stream is unaffected.
    let id = publish(&broker, "t", "one");
    assert_eq!(
        triples(&[first.next_event().await]),
        [triple(&id, "t", "one")]
    );

    // Once it leaves, the slot is free again.
    drop(first);
    eventually("the slot to be released", || layer.connections() == 0).await;
    let mut third = get(addr, "/events", &[]).await;
    assert_eq!(third.status, StatusCode::OK);
    assert!(third.header("retry-after").is_none());
    let id = publish(&broker, "t", "two");
    assert_eq!(
        triples(&[third.next_event().await]),
        [triple(&id, "t", "two")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_with_retry_drains_open_streams_then_ends_them() {
    let broker = Broker::builder().epoch(21).build();
    let layer = SseLayer::new(broker.clone());
    let addr = serve_layer(&layer).await;

    let mut open = get(addr, "/events", &[]).await;
    assert_eq!(open.status, StatusCode::OK);
    let ids: Vec<String> = (1..=3)
        .map(|i| publish(&broker, "t", &format!("last {i}")))
        .collect();
    broker.close_with_retry(Duration::from_secs(5));
    assert_eq!(
        broker.publish(Event::new("t").data("too late")),
        Err(PublishError::Closed)
    );

    // The remaining events, then the final frame: `retry: 5000` and an
    // `event: shutdown` naming the delay, without an id of its own (the
    // parser reports the last id it saw, as an `EventSource` does).
    let events = open.events_to_end().await;
    let mut expected: Vec<_> = (0..3)
        .map(|i| triple(&ids[i], "t", &format!("last {}", i + 1)))
        .collect();
    expected.push(triple(&ids[2], "shutdown", r#"{"retry":5000}"#));
    assert_eq!(triples(&events), expected);
    assert_eq!(events[3].retry, Some(Duration::from_secs(5)));
    let mut expected = String::from("retry: 3000\n");
    for (i, id) in ids.iter().enumerate() {
        expected.push_str(&frame(id, "t", &format!("last {}", i + 1)));
    }
    expected.push_str("retry: 5000\nevent: shutdown\ndata: {\"retry\":5000}\n\n");
    assert_eq!(without_comments(&open.raw()), expected);
    assert_every_block_has_data(&open.raw());
    assert!(open.ended());
    eventually("the closed stream to be released", || {
        broker.stats().subscribers == 0 && layer.connections() == 0
    })
    .await;

    let late = get(addr, "/events", &[]).await;
    assert_eq!(late.status, StatusCode::OK);
    assert_eq!(late.header("content-type"), Some("text/event-stream"));
    // A client arriving after the close gets the same final frame.
    assert_eq!(
        late.text().await,
        "retry: 5000\nevent: shutdown\ndata: {\"retry\":5000}\n\n"
    );
    assert_eq!(layer.connections(), 0);
}

// 8. Topics.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_client_never_sees_another_topic_live_or_on_resume() {
    let broker = Broker::builder().epoch(4).build();
    let layer = SseLayer::new(broker.clone()).authorize(any_topic);
    let addr = serve_layer(&layer).await;

    let mut on_a = get(addr, "/events?topic=a", &[]).await;
    let mut on_b = get(addr, "/events?topic=b", &[]).await;
    let a1 = publish_to(&broker, "a", "t", "a1");
    let b1 = publish_to(&broker, "b", "t", "b1");
    let a2 = publish_to(&broker, "a", "t", "a2");
    let b2 = publish_to(&broker, "b", "t", "b2");
    let a3 = publish_to(&broker, "a", "t", "a3");
    let b3 = publish_to(&broker, "b", "t", "b3");

    // Resuming on `a`, from an `a` id and from a `b` id.
    let mut from_a1 = get(addr, "/events?topic=a", &[("last-event-id", &a1)]).await;
    let mut from_b1 = get(addr, "/events?topic=a", &[("last-event-id", &b1)]).await;
    let mut b_from_query = get(addr, &format!("/events?topic=b&lastEventId={a1}"), &[]).await;

    broker.close();
    let a_all = vec![
        triple(&a1, "t", "a1"),
        triple(&a2, "t", "a2"),
        triple(&a3, "t", "a3"),
    ];
    let b_all = vec![
        triple(&b1, "t", "b1"),
        triple(&b2, "t", "b2"),
        triple(&b3, "t", "b3"),
    ];
    assert_eq!(triples(&on_a.events_to_end().await), a_all);
    assert_eq!(triples(&on_b.events_to_end().await), b_all);
    assert_eq!(triples(&from_a1.events_to_end().await), a_all[1..]);
    assert_eq!(triples(&from_b1.events_to_end().await), a_all[1..]);
    assert_eq!(triples(&b_from_query.events_to_end().await), b_all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_two_topics_sees_strictly_increasing_ids() {
    const PER_TOPIC: usize = 200;
    let broker = Broker::builder().epoch(12).build();
    let layer = SseLayer::new(broker.clone()).authorize(any_topic);
    let addr = serve_layer(&layer).await;

    let mut both = get(addr, "/events?topic=a&topic=b", &[]).await;
    let mut only_a = get(addr, "/events?topic=a", &[]).await;
    assert_eq!(broker.stats().subscribers, 2);

    // Two publishers on two threads, racing.
    let publishers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|topic| {
            let broker = broker.clone();
            tokio::task::spawn_blocking(move || {
                (0..PER_TOPIC)
                    .map(|i| (publish_to(&broker, topic, "t", &format!("{topic}{i}")), i))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut published = Vec::new();
    for publisher in publishers {
        published.push(within("a publisher", publisher).await.expect("publisher"));
    }
    broker.close();

    let got = both.events_to_end().await;
    assert_eq!(got.len(), 2 * PER_TOPIC);
    let seqs: Vec<u64> = got.iter().map(|e| seq_of(&e.id)).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "ids not strictly increasing: {seqs:?}"
    );
    let mut expected_ids: Vec<u64> = published
        .iter()
        .flatten()
        .map(|(id, _)| seq_of(id))
        .collect();
    expected_ids.sort_unstable();
    assert_eq!(seqs, expected_ids, "every event of both topics, once");
    for event in &got {
        let topic = if event.data.starts_with('a') { 0 } else { 1 };
        let index: usize = event.data[1..].parse().expect("index");
        assert_eq!(published[topic][index].0, event.id, "{event:?}");
    }

    let got_a = triples(&only_a.events_to_end().await);
    let expected_a: Vec<_> = published[0]
        .iter()
        .map(|(id, i)| triple(id, "t", &format!("a{i}")))
        .collect();
    assert_eq!(got_a, expected_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_events_reach_clients_of_every_topic() {
    let broker = Broker::builder().epoch(13).build();
    let layer = SseLayer::new(broker.clone()).authorize(any_topic);
    let addr = serve_layer(&layer).await;

    let mut on_a = get(addr, "/events?topic=a", &[]).await;
    let mut on_b = get(addr, "/events?topic=b", &[]).await;
    let mut default = get(addr, "/events", &[]).await;
    let a = publish_to(&broker, "a", "t", "for a");
    let b = publish_to(&broker, "b", "t", "for b");
    let system = broker
        .publish_system(
            Event::new("maintenance")
                .topic("a")
                .data(r#"{"at":"noon"}"#),
        )
        .expect("publish_system")
        .to_string();
    let public = publish(&broker, "t", "for public");
    broker.close();

    let system_event = triple(&system, "maintenance", r#"{"at":"noon"}"#);
    assert_eq!(
        triples(&on_a.events_to_end().await),
        [triple(&a, "t", "for a"), system_event.clone()]
    );
    assert_eq!(
        triples(&on_b.events_to_end().await),
        [triple(&b, "t", "for b"), system_event.clone()]
    );
    assert_eq!(
        triples(&default.events_to_end().await),
        [system_event, triple(&public, "t", "for public")]
    );
}

// 9. Mounting.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_on_an_axum_router_with_layer() {
    use axum::routing::get as axum_get;

    let broker = Broker::builder().epoch(31).build();
    let app = axum::Router::new()
        .route("/hello", axum_get(|| async { "hello from axum" }))
        .layer(SseLayer::new(broker.clone()));
    let addr = serve_axum(app).await;

    let hello = get(addr, "/hello", &[]).await;
    assert_eq!(hello.status, StatusCode::OK);
    assert_eq!(hello.text().await, "hello from axum");

    let missing = get(addr, "/missing", &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let mut events = get(addr, "/events", &[]).await;
    assert_eq!(events.status, StatusCode::OK);
    assert_eq!(events.header("content-type"), Some("text/event-stream"));
    let id = publish(&broker, "t", "via axum");
    assert_eq!(
        triples(&[events.next_event().await]),
        [triple(&id, "t", "via axum")]
    );
    assert!(events.raw().starts_with("retry: 3000\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_on_plain_hyper_without_axum() {
    // `serve_hyper` is hyper's http1 connection with `TowerToHyperService`;
    // the inner service is a `tower::service_fn` returning `Full<Bytes>`.
    let broker = Broker::builder().epoch(32).build();
    let service = SseLayer::new(broker.clone())
        .path("/api/stream")
        .layer(echo_inner());
    let addr = serve_hyper(service).await;

    let inner = get(addr, "/api/other", &[]).await;
    assert_eq!(inner.status, StatusCode::OK);
    assert_eq!(inner.text().await, "inner GET /api/other x-probe=");

    let not_here = get(addr, "/events", &[]).await;
    assert_eq!(not_here.text().await, "inner GET /events x-probe=");

    let mut events = get(addr, "/api/stream", &[]).await;
    assert_eq!(events.status, StatusCode::OK);
    assert_eq!(events.header("content-type"), Some("text/event-stream"));
    let id = publish(&broker, "t", "via hyper");
    assert_eq!(
        triples(&[events.next_event().await]),
        [triple(&id, "t", "via hyper")]
    );
}

#[cfg(feature = "axum")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_router_merges_into_a_router_and_handlers_extract_the_broker() {
    use axum::routing::post;

    async fn create_note(broker: Broker, body: String) -> (StatusCode, String) {
        match broker.publish(Event::new("note").data(body)) {
            Ok(id) => (StatusCode::CREATED, id.to_string()),
            Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        }
    }

    let broker = Broker::builder().epoch(33).build();
    let app: axum::Router = axum::Router::new()
        .route("/notes", post(create_note))
        .merge(tower_sse::axum::events_router(SseLayer::new(
            broker.clone(),
        )))
        .with_state(broker.clone());
    let addr = serve_axum(app).await;

    let mut events = get(addr, "/events", &[]).await;
    assert_eq!(events.status, StatusCode::OK);
    assert_eq!(events.header("content-type"), Some("text/event-stream"));

    let created = send(addr, Method::POST, "/notes", &[], "hello notes").await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.text().await;
    assert_eq!(id, broker.last_event_id().to_string());
    assert_eq!(
        triples(&[events.next_event().await]),
        [triple(&id, "note", "hello notes")]
    );

    let post_events = send(addr, Method::POST, "/events", &[], "").await;
    assert_eq!(post_events.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post_events.header("allow"), Some("GET, HEAD"));
}

// 10. Fan-out.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_receive_the_same_events_in_the_same_order() {
    const CLIENTS: usize = 50;
    const LOCKSTEP: usize = 10;
    const EVENTS: usize = 100;
    let broker = Broker::builder().epoch(50).build();
    // No keep-alive: its ticks wake every reader and would hide a lost
    // wake-up from a publish.
    let layer = SseLayer::new(broker.clone()).no_keep_alive();
    let addr = serve_layer(&layer).await;

    let clients =
        futures_util::future::join_all((0..CLIENTS).map(|_| get(addr, "/events", &[]))).await;
    assert!(clients.iter().all(|c| c.status == StatusCode::OK));
    assert_eq!(broker.stats().subscribers, CLIENTS);
    assert_eq!(layer.connections(), CLIENTS);

    // Every client acknowledges each event it receives.
    let (ack_tx, mut acks) = tokio::sync::mpsc::unbounded_channel::<String>();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let ack_tx = ack_tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::with_capacity(EVENTS);
                for _ in 0..EVENTS {
                    let event = client.next_event().await;
                    let _ = ack_tx.send(event.id.clone());
                    got.push(event);
                }
                triples(&got)
            })
        })
        .collect();
    let publish_one = |i: usize| {
        let event_type = if i % 2 == 0 { "even" } else { "odd" };
        let data = format!("event {i}");
        triple(&publish(&broker, event_type, &data), event_type, &data)
    };

    // First one at a time: each publish has to wake every parked client.
    let mut expected = Vec::with_capacity(EVENTS);
    for i in 0..LOCKSTEP {
        let published = publish_one(i);
        within("every client to receive the event", async {
            for _ in 0..CLIENTS {
                let id = acks.recv().await.expect("readers alive");
                assert_eq!(id, published.0, "acknowledged out of lockstep");
            }
        })
        .await;
        expected.push(published);
    }
    // Then a burst.
    expected.extend((LOCKSTEP..EVENTS).map(publish_one));
    for reader in readers {
        let got = within("a reader", reader).await.expect("reader");
        assert_eq!(got, expected);
    }
}
