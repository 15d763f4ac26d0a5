//! A `Shutdown` that open event streams cannot hang: readiness off at
//! once, every stream told and then ended, the server returned, under
//! `axum::serve` and plain hyper alike; and the contrast, a graceful
//! shutdown that does not close the broker waiting on open streams.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use serde_json::json;
use tower::Layer;
use tower_sse::sse::any_topic;
use tower_sse::{Event, HealthLayer, Shutdown, SseLayer};

use crate::support::client::{fetch, Connection};
use crate::support::server::{serve_axum_until, serve_hyper_until};
use crate::support::sse::RawFrame;
use crate::support::stack::{
    app, assert_final_frame, assert_state_data, connect_and_greet, followed_broker, SERVER_STOPS,
    SHUTDOWN_FRAME,
};
use crate::support::wait::{eventually_async, within};

/// What every stream must end with: the state change to shutting down,
/// then the final frame, then the end.
fn assert_shutdown_ending(frames: &[RawFrame], final_frame: &str, who: &str) {
    let events: Vec<&RawFrame> = frames.iter().filter(|f| !f.is_comment()).collect();
    assert!(events.len() >= 2, "{who}: {frames:?}");
    let last = events[events.len() - 1];
    assert_eq!(last.text, final_frame, "{who}: the final frame");
    assert_eq!(last.event_type(), Some("shutdown"));
    assert_eq!(last.id(), None);
    let state = events[events.len() - 2];
    assert!(state.is_state(), "{who}: {state:?}");
    assert_eq!(state.json()["shutting_down"], true, "{who}: {state:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_ends_100_open_streams_over_tcp() {
    const CLIENTS: usize = 100;
    let (broker, mode) = followed_broker(10);
    let shutdown = Shutdown::new().broker(&broker).mode(&mode);
    let server = serve_axum_until(app(&broker, &mode), shutdown.wait()).await;

    let mut readers = Vec::new();
    for i in 0..CLIENTS {
        let path = if i % 2 == 0 {
            "/events".to_owned()
        } else {
            format!("/events?topic=room-{i}")
        };
        let (mut client, _) = connect_and_greet(server.addr, &path).await;
        readers.push(tokio::spawn(async move { client.frames_to_end().await }));
    }
    let health = fetch(server.addr, Method::GET, "/health", &[], "")
        .await
        .json();
    assert_eq!(health["subscribers"], CLIENTS);

    shutdown.trigger();
    // A hang detector, not a performance threshold.
    let served = tokio::time::timeout(SERVER_STOPS, server.task).await;
    assert!(
        served.is_ok(),
        "axum::serve did not return within {SERVER_STOPS:?} of trigger() with {CLIENTS} streams open"
    );
    served.unwrap().expect("server task").expect("serve");

    for (i, reader) in readers.into_iter().enumerate() {
        let frames = within("a client's stream to end", reader)
            .await
            .expect("reader task");
        assert_shutdown_ending(&frames, SHUTDOWN_FRAME, &format!("client {i}"));
        assert_eq!(frames.last().unwrap().json(), json!({"retry": 5000}));
    }
    assert_eq!(broker.stats().subscribers, 0);
    assert!(broker.is_closed());
}

#[tokio::test]
async fn readiness_is_503_from_trigger_while_streams_drain() {
    let (broker, mode) = followed_broker(11);
    // The drain leaves time to observe readiness before the streams close;
    // nothing below depends on how long it is, except that one request on
    // an open connection fits in it.
    let shutdown = Shutdown::new()
        .broker(&broker)
        .mode(&mode)
        .drain(Duration::from_millis(1_000));
    let server = serve_axum_until(app(&broker, &mode), shutdown.wait()).await;
    let (mut client, _) = connect_and_greet(server.addr, "/events").await;
    let mut conn = Connection::open(server.addr).await;
    assert_eq!(
        conn.fetch(Method::GET, "/ready").await.status,
        StatusCode::OK
    );

    shutdown.trigger();
    // This runtime is single-threaded and the test has not yielded since
    // trigger(): the drain task has not even started, yet readiness is
    // already off while the broker still serves its streams.
    assert!(shutdown.is_triggered());
    assert!(!mode.current().is_ready());
    assert!(
        !broker.is_closed(),
        "the streams are closed only after the drain"
    );

    // Over HTTP, on the connection opened before (polling, bounded).
    let mut ready = None;
    within("/ready to answer 503", async {
        loop {
            let reply = conn.fetch(Method::GET, "/ready").await;
            if reply.status == StatusCode::SERVICE_UNAVAILABLE {
                ready = Some(reply);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let body = ready.unwrap().json();
    assert_eq!(body["ready"], false);
    assert_eq!(body["reason"], "shutting down");

    // The open stream first hears that the server is shutting down, then
    // gets the final frame once the drain is over, then ends.
    let state = client.next_non_comment().await.expect("the state change");
    assert!(state.is_state());
    assert_eq!(state.json()["shutting_down"], true);
    let rest = client.frames_to_end().await;
    let mut all = vec![state];
    all.extend(rest);
    assert_shutdown_ending(&all, SHUTDOWN_FRAME, "the client");

    let served = tokio::time::timeout(SERVER_STOPS, server.task).await;
    served.expect("the server stops").unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_works_on_a_plain_hyper_server() {
    const CLIENTS: usize = 10;
    let (broker, mode) = followed_broker(12);
    let shutdown = Shutdown::new()
        .broker(&broker)
        .mode(&mode)
        .retry(Duration::from_millis(1_500));
    let inner = tower::service_fn(|_request: http::Request<hyper::body::Incoming>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(
            b"inner",
        ))))
    });
    let service = HealthLayer::new(mode.clone()).broker(&broker).layer(
        SseLayer::new(broker.clone())
            .authorize(any_topic)
            .layer(inner),
    );

    let server = serve_hyper_until(service, shutdown.wait()).await;
    let addr = server.addr;

    let mut readers = Vec::new();
    for i in 0..CLIENTS {
        let (mut client, greeting) = connect_and_greet(addr, &format!("/events?topic=t{i}")).await;
        assert_state_data(&greeting, &mode.current());
        readers.push(tokio::spawn(async move { client.frames_to_end().await }));
    }
    let reply = fetch(addr, Method::GET, "/ready", &[], "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        fetch(addr, Method::GET, "/other", &[], "").await.text(),
        "inner"
    );

    shutdown.trigger();
    // A hang detector, not a performance threshold: the graceful shutdown
    // completes only once every stream has ended.
    let drained = tokio::time::timeout(SERVER_STOPS, server.task).await;
    drained
        .expect("graceful shutdown did not complete: a stream stayed open")
        .expect("server task");

    let final_frame = "retry: 1500\nevent: shutdown\ndata: {\"retry\":1500}";
    for (i, reader) in readers.into_iter().enumerate() {
        let frames = within("a client's stream to end", reader)
            .await
            .expect("reader task");
        assert_shutdown_ending(&frames, final_frame, &format!("client {i}"));
    }
    assert_eq!(broker.stats().subscribers, 0);
}

/// The contrast: the bug this crate fixes. `with_graceful_shutdown` waits
/// for every response to finish, and an event stream never finishes by
/// itself, so a shutdown that does not close the broker keeps the server
/// up for as long as a client stays connected. This test does not wait for
/// "forever": it shows that `axum::serve` is still running a while after it
/// stopped accepting, then closes the broker and sees it return.
#[tokio::test]
async fn without_closing_the_broker_graceful_shutdown_waits_on_open_streams() {
    let (broker, mode) = followed_broker(13);
    // Wired to the mode only: no `.broker(..)`.
    let shutdown = Shutdown::new().mode(&mode);
    let server = serve_axum_until(app(&broker, &mode), shutdown.wait()).await;
    let (mut client, _) = connect_and_greet(server.addr, "/events").await;

    shutdown.trigger();
    // axum has taken the signal once it stops accepting connections.
    eventually_async("axum to stop accepting", || async {
        tokio::net::TcpStream::connect(server.addr).await.is_err()
    })
    .await;
    let mut task = server.task;
    let early = tokio::time::timeout(Duration::from_millis(500), &mut task).await;
    assert!(
        early.is_err(),
        "axum::serve returned with an event stream open: {early:?}"
    );
    // The stream is alive and well.
    broker
        .publish(Event::new("still-here").data("yes"))
        .expect("publish");
    let (_, frame) = client
        .frames_until(|f| f.event_type() == Some("still-here"))
        .await;
    assert_eq!(frame.data().as_deref(), Some("yes"));

    // Closing the broker is what lets the server finish.
    broker.close_with_retry(Duration::from_secs(5));
    let frames = client.frames_to_end().await;
    assert_final_frame(&frames, SHUTDOWN_FRAME);
    let served = tokio::time::timeout(SERVER_STOPS, task).await;
    served.expect("the server stops").unwrap().unwrap();
}
