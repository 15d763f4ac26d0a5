//! `HealthLayer`: `/health` reports the mode and the broker's numbers,
//! `/ready` follows the mode, on paths of the app's choosing; everything
//! else goes on to the inner service.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{header, Method, StatusCode};
use serde_json::Value;
use tower::Layer;
use tower_sse::mode::ServerMode;
use tower_sse::{Broker, Event, HealthLayer, Message, Shutdown, SseLayer, Topics};

use crate::support::client::{call, request, Connection};
use crate::support::inner::counting_inner;
use crate::support::server::serve_axum_until;
use crate::support::stack::{app, connect_and_greet, followed_broker, SERVER_STOPS};
use crate::support::wait::within;

#[tokio::test]
async fn health_reports_mode_and_broker_numbers() {
    let (broker, mode) = followed_broker(7);
    let (calls, inner) = counting_inner();
    let health = HealthLayer::new(mode.clone())
        .broker(&broker)
        .layer(inner.clone());
    let get = |path: &str| call(health.clone(), request(Method::GET, path));

    let reply = get("/health").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header(header::CONTENT_TYPE), Some("application/json"));
    let body = reply.json();
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    for key in [
        "status",
        "mode",
        "reason",
        "since",
        "subscribers",
        "dropped",
        "uptime",
        "version",
    ] {
        assert!(keys.contains(&key), "{key} missing from {body}");
    }
    assert_eq!(body["status"], "ok");
    assert_eq!(body["mode"], "normal");
    assert_eq!(body["reason"], Value::Null);
    assert_eq!(body["since"], mode.current().since_rfc3339());
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["subscribers"], 0);
    assert_eq!(body["dropped"], 0);
    assert!(body["uptime"].as_f64().is_some_and(|u| u >= 0.0), "{body}");
    // Seconds to the millisecond: at most three decimals as printed.
    let uptime = body["uptime"].to_string();
    assert!(
        uptime
            .split_once('.')
            .is_none_or(|(_, decimals)| decimals.len() <= 3),
        "{uptime}"
    );

    for (change, status, mode_name, reason) in [
        (
            (|m| m.set_read_only("maintenance")) as fn(&ServerMode),
            "read-only",
            "read-only",
            Some("maintenance"),
        ),
        (
            |m| m.set_degraded("disk full"),
            "degraded",
            "degraded",
            Some("disk full"),
        ),
        (
            |m| m.clear_degraded(),
            "read-only",
            "read-only",
            Some("maintenance"),
        ),
    ] {
        change(&mode);
        let body = get("/health").await.json();
        assert_eq!(body["status"], status);
        assert_eq!(body["mode"], mode_name);
        assert_eq!(body["reason"].as_str(), reason);
        assert_eq!(body["since"], mode.current().since_rfc3339());
        // A broker without a hub or a backplane has neither.
        assert!(body["hub"].is_null() && body["mirror"].is_null(), "{body}");
    }

    // `subscribers`: every open stream of the events route, exactly.
    let sse = SseLayer::new(broker.clone()).layer(inner.clone());
    let mut streams = Vec::new();
    for n in 1..=5 {
        let response = tower::ServiceExt::oneshot(sse.clone(), request(Method::GET, "/events"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        streams.push(response);
        assert_eq!(get("/health").await.json()["subscribers"], n);
    }
    while let Some(stream) = streams.pop() {
        drop(stream);
        assert_eq!(get("/health").await.json()["subscribers"], streams.len());
    }

    // `dropped`: events a subscriber missed because it fell behind.
    let small = Broker::builder().epoch(8).retain_events(2).build();
    let mut sub = small
        .subscribe(&Topics::parse(["public"]).unwrap(), None)
        .unwrap();
    for n in 0..5 {
        small.publish(Event::new("n").data(n.to_string())).unwrap();
    }
    let Some(Message::Lagged { missed, .. }) = sub.try_next() else {
        panic!("expected a lag report")
    };
    assert_eq!(missed, 3);
    let health = HealthLayer::new(mode.clone()).broker(&small).layer(inner);
    let body = call(health, request(Method::GET, "/health")).await.json();
    assert_eq!(body["dropped"], 3);
    assert_eq!(body["subscribers"], 1);

    assert_eq!(calls.load(Ordering::SeqCst), 0, "health answered itself");
}

#[tokio::test]
async fn readiness_follows_the_mode() {
    let mode = ServerMode::new();
    let (calls, inner) = counting_inner();
    let health = HealthLayer::new(mode.clone()).layer(inner);
    let ready = || call(health.clone(), request(Method::GET, "/ready"));

    let reply = ready().await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["ready"], true);

    mode.set_read_only("maintenance");
    let reply = ready().await;
    assert_eq!(reply.status, StatusCode::OK, "read-only still serves reads");
    assert_eq!(reply.json()["mode"], "read-only");

    mode.set_degraded("disk full");
    let reply = ready().await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = reply.json();
    assert_eq!(body["ready"], false);
    assert_eq!(body["reason"], "disk full");

    mode.clear_degraded();
    assert_eq!(ready().await.status, StatusCode::OK);

    // Without a broker, health still answers, with null counts.
    let body = call(health.clone(), request(Method::GET, "/health"))
        .await
        .json();
    assert_eq!(body["subscribers"], Value::Null);

    Shutdown::new().mode(&mode).trigger();
    let reply = ready().await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["reason"], "shutting down");
    let body = call(health, request(Method::GET, "/health")).await.json();
    assert_eq!(body["status"], "shutting-down");
    assert_eq!(body["shutting_down"], true);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn health_paths_head_and_other_methods() {
    let mode = ServerMode::new();
    mode.set_degraded("disk full");
    let (calls, inner) = counting_inner();
    let health = HealthLayer::new(mode.clone())
        .health_path("/internal/health")
        .ready_path("/internal/ready")
        .layer(inner);
    let send = |method: Method, path: &str| call(health.clone(), request(method, path));

    assert_eq!(
        send(Method::GET, "/internal/health").await.status,
        StatusCode::OK
    );
    let ready = send(Method::GET, "/internal/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["reason"], "disk full");

    // HEAD: the same status and headers, no body.
    for (path, status) in [
        ("/internal/health", StatusCode::OK),
        ("/internal/ready", StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let reply = send(Method::HEAD, path).await;
        assert_eq!(reply.status, status, "HEAD {path}");
        assert_eq!(reply.header(header::CONTENT_TYPE), Some("application/json"));
        assert!(reply.body.is_empty(), "HEAD {path}: {:?}", reply.body);
    }

    // Other methods: 405 with Allow.
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
        for path in ["/internal/health", "/internal/ready"] {
            let reply = send(method.clone(), path).await;
            assert_eq!(
                reply.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert_eq!(reply.header(header::ALLOW), Some("GET, HEAD"));
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // Everything else, the default paths included, goes to the inner service.
    for (n, path) in ["/health", "/ready", "/internal/health/x", "/"]
        .iter()
        .enumerate()
    {
        let reply = send(Method::GET, path).await;
        assert_eq!(reply.text(), "inner", "{path}");
        assert_eq!(calls.load(Ordering::SeqCst), n + 1);
    }
    let reply = send(Method::POST, "/items").await;
    assert_eq!(reply.text(), "inner");
}

#[tokio::test]
async fn health_counts_open_sse_connections_over_tcp() {
    let (broker, mode) = followed_broker(9);
    let shutdown = Shutdown::new().broker(&broker).mode(&mode);
    let server = serve_axum_until(app(&broker, &mode), shutdown.wait()).await;
    let mut conn = Connection::open(server.addr).await;

    let mut clients = Vec::new();
    for n in 1..=3 {
        clients.push(connect_and_greet(server.addr, "/events").await.0);
        let body = conn.fetch(Method::GET, "/health").await.json();
        assert_eq!(body["subscribers"], n);
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    }
    // A client that goes away is no longer counted (the server notices the
    // closed connection on its own; wait for it, bounded).
    drop(clients.pop());
    let mut subscribers = Value::Null;
    within("the server to notice a closed stream", async {
        loop {
            subscribers = conn.fetch(Method::GET, "/health").await.json()["subscribers"].clone();
            if subscribers == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(subscribers, 2);

    shutdown.trigger();
    let served = tokio::time::timeout(SERVER_STOPS, server.task).await;
    served.expect("the server stops").unwrap().unwrap();
    assert_eq!(broker.stats().subscribers, 0);
}
