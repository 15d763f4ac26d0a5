#![cfg(not(loom))]
//! The server's mode seen from outside: the events route and `server.state`
//! events, `RequireWritableLayer`, `HealthLayer`, and a `Shutdown` that open
//! event streams cannot hang.
//!
//! Every wait is bounded ([`support::within`], [`support::eventually`]):
//! timeouts here only turn a hang into a failure, they never judge speed.

mod server_mode_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http::{header, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tower::Layer;
use tower_sse::mode::{Mode, ModeState, Probe, ServerMode};
use tower_sse::sse::any_topic;
use tower_sse::{
    Broker, Event, HealthLayer, Message, RequireWritableLayer, Shutdown, SseLayer, Topics,
};

use server_mode_support::{self as support, *};

/// The frame every stream ends with at shutdown, with the default 5 s hint.
const SHUTDOWN_FRAME: &str = "retry: 5000\nevent: shutdown\ndata: {\"retry\":5000}";

/// Hang detector for a server that should stop (not a performance bound).
const SERVER_STOPS: Duration = Duration::from_secs(20);

/// The full stack, as an app would mount it: writes guarded (with the admin
/// switch exempt), the events route for any topic, health and readiness.
fn app(broker: &Broker, mode: &ServerMode) -> Router {
    let switch = mode.clone();
    Router::new()
        .route(
            "/items",
            get(|| async { "items" }).post(|| async { "created" }),
        )
        .route(
            "/admin/read-only",
            post(move || {
                let on = switch.toggle_read_only("operator");
                async move {
                    if on {
                        "on"
                    } else {
                        "off"
                    }
                }
            }),
        )
        .layer(
            RequireWritableLayer::new(mode.clone())
                .exempt(|parts| parts.uri.path().starts_with("/admin/")),
        )
        .layer(SseLayer::new(broker.clone()).authorize(any_topic))
        .layer(HealthLayer::new(mode.clone()).broker(broker))
}

fn followed_broker(epoch: u64) -> (Broker, ServerMode) {
    let broker = Broker::builder().epoch(epoch).build();
    let mode = ServerMode::new();
    broker.follow_mode(&mode);
    (broker, mode)
}

/// Connects to the events route and checks the opening: `200
/// text/event-stream`, the `retry:` line, then at once (in the same block)
/// a `server.state` frame without an `id:` line. Returns the client and that greeting.
async fn connect_and_greet(addr: std::net::SocketAddr, path: &str) -> (SseClient, RawFrame) {
    let mut client = SseClient::connect(addr, path).await;
    assert_eq!(client.status, StatusCode::OK, "GET {path}");
    assert_eq!(
        client.headers.get(header::CONTENT_TYPE).unwrap(),
        "text/event-stream"
    );
    let greeting = client.next_frame().await.expect("a greeting");
    assert!(
        greeting.text.starts_with("retry: 3000\nevent: "),
        "the stream opens with the retry hint, a line in the greeting's block: {greeting:?}"
    );
    assert!(
        greeting.is_state(),
        "the frame right after `retry:` is the state: {greeting:?}"
    );
    assert_eq!(
        greeting.id(),
        None,
        "the greeting carries no id: {greeting:?}"
    );
    (client, greeting)
}

/// What a `server.state` frame must carry for `state`, outside shutdown:
/// exactly `{mode, reason, since}`.
fn assert_state_data(frame: &RawFrame, state: &ModeState) {
    assert!(frame.is_state(), "not a state frame: {frame:?}");
    assert_eq!(
        frame.json(),
        json!({
            "mode": state.mode.as_str(),
            "reason": state.reason,
            "since": state.since_rfc3339(),
        }),
        "frame {frame:?}"
    );
}

fn mode_and_reason(value: &Value) -> (String, Option<String>) {
    (
        value["mode"].as_str().expect("mode").to_owned(),
        value["reason"].as_str().map(str::to_owned),
    )
}

fn assert_final_frame(frames: &[RawFrame], expected: &str) {
    let last = frames
        .last()
        .unwrap_or_else(|| panic!("no frame before the end"));
    assert_eq!(last.text, expected, "the last frame; all: {frames:?}");
}

// ---------------------------------------------------------------------------
// The events route and `server.state`
// ---------------------------------------------------------------------------

#[tokio::test]
async fn events_route_keeps_streaming_in_every_mode() {
    let (broker, mode) = followed_broker(1);
    let shutdown = Shutdown::new().broker(&broker).mode(&mode);
    let server = spawn_axum(app(&broker, &mode), shutdown.wait()).await;

    let (mut early, greeting) = connect_and_greet(server.addr, "/events").await;
    assert_state_data(&greeting, &mode.current());
    let mut conn = HttpConn::open(server.addr).await;

    type Step = (&'static str, fn(&ServerMode), StatusCode, StatusCode);
    let steps: [Step; 3] = [
        ("normal", |_| {}, StatusCode::OK, StatusCode::OK),
        (
            "read-only",
            |m| m.set_read_only("maintenance"),
            StatusCode::OK,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            "degraded",
            |m| m.set_degraded("disk full"),
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    ];
    for (name, change, ready, write) in steps {
        change(&mode);
        assert_eq!(mode.current().mode.as_str(), name);
        if name != "normal" {
            // The stream opened in normal mode hears of the change.
            let frame = early.next_non_comment().await.expect("a state event");
            assert_state_data(&frame, &mode.current());
        }
        // A new connection is served (200) and greeted with this mode.
        let (mut fresh, greeting) = connect_and_greet(server.addr, "/events").await;
        assert_state_data(&greeting, &mode.current());

        // Both keep streaming what is published.
        broker
            .publish(Event::new("tick").data(name))
            .expect("publish");
        for client in [&mut early, &mut fresh] {
            let frame = client.next_non_comment().await.expect("the tick");
            assert_eq!(frame.event_type(), Some("tick"), "in {name}");
            assert_eq!(frame.data().as_deref(), Some(name));
        }

        assert_eq!(
            conn.request(Method::GET, "/ready").await.status,
            ready,
            "/ready in {name}"
        );
        let read = conn.request(Method::GET, "/items").await;
        assert_eq!(
            (read.status, read.text().as_str()),
            (StatusCode::OK, "items"),
            "reads pass in {name}"
        );
        assert_eq!(
            conn.request(Method::POST, "/items").await.status,
            write,
            "POST /items in {name}"
        );
    }

    shutdown.trigger();
    let frames = early.read_to_end().await;
    assert_final_frame(&frames, SHUTDOWN_FRAME);
    let served = tokio::time::timeout(SERVER_STOPS, server.task).await;
    served.expect("the server stops").unwrap().unwrap();
}

#[tokio::test]
async fn state_events_reach_every_connection_whatever_its_topics() {
    let (broker, mode) = followed_broker(2);
    let shutdown = Shutdown::new().broker(&broker).mode(&mode);
    let server = spawn_axum(app(&broker, &mode), shutdown.wait()).await;

    let paths = ["/events", "/events?topic=orders", "/events?topic=a&topic=b"];
    let mut clients = Vec::new();
    for path in paths {
        clients.push(connect_and_greet(server.addr, path).await.0);
    }

    // Topics still filter: only the `orders` connection gets this one; the
    // others' next frame is the state change that follows it.
    broker
        .publish(Event::new("order.created").topic("orders").data("7"))
        .expect("publish");

    type Change = (fn(&ServerMode), &'static str, Option<&'static str>);
    let changes: [Change; 5] = [
        (
            |m| m.set_read_only("maintenance"),
            "read-only",
            Some("maintenance"),
        ),
        (
            |m| m.set_read_only("migration"),
            "read-only",
            Some("migration"),
        ),
        (
            |m| m.set_degraded("disk full"),
            "degraded",
            Some("disk full"),
        ),
        (|m| m.clear_degraded(), "read-only", Some("migration")),
        (|m| m.clear_read_only(), "normal", None),
    ];
    let mut last_since = mode.current().since;
    let mut last_mode = mode.current().mode;
    for (step, (change, name, reason)) in changes.into_iter().enumerate() {
        change(&mode);
        let state = mode.current();
        assert_eq!(
            (state.mode.as_str(), state.reason.as_deref()),
            (name, reason)
        );
        // `since` is when the mode was entered: a new reason keeps it.
        if state.mode == last_mode {
            assert_eq!(
                state.since, last_since,
                "step {step}: same mode, same since"
            );
        }
        (last_mode, last_since) = (state.mode, state.since);

        for (client, path) in clients.iter_mut().zip(paths) {
            let mut frame = client.next_non_comment().await.expect("a frame");
            if step == 0 && path.contains("orders") {
                assert_eq!(frame.event_type(), Some("order.created"));
                frame = client.next_non_comment().await.expect("a frame");
            }
            assert_state_data(&frame, &state);
            assert!(
                frame.id().is_some(),
                "a live state event has an id: {frame:?}"
            );
        }
    }

    // A second opinion on the wire: an independent parser sees the same
    // `server.state` events, in order.
    let parsed = clients[2].parsed_by_eventsource().await;
    let states: Vec<_> = parsed
        .iter()
        .filter(|e| e.event == "server.state")
        .map(|e| mode_and_reason(&serde_json::from_str(&e.data).unwrap()))
        .collect();
    let expected: Vec<_> = [
        ("normal", None),
        ("read-only", Some("maintenance")),
        ("read-only", Some("migration")),
        ("degraded", Some("disk full")),
        ("read-only", Some("migration")),
        ("normal", None),
    ]
    .iter()
    .map(|(m, r)| (m.to_string(), r.map(str::to_owned)))
    .collect();
    assert_eq!(states, expected);
    assert_eq!(parsed[0].id, "", "the greeting sets no last event id");

    shutdown.trigger();
    for client in &mut clients {
        assert_final_frame(&client.read_to_end().await, SHUTDOWN_FRAME);
    }
    let served = tokio::time::timeout(SERVER_STOPS, server.task).await;
    served.expect("the server stops").unwrap().unwrap();
}

#[tokio::test]
async fn a_new_connection_gets_the_current_state_first() {
    let (broker, mode) = followed_broker(3);
    let shutdown = Shutdown::new().broker(&broker).mode(&mode);
    let server = spawn_axum(app(&broker, &mode), shutdown.wait()).await;

    // Byte for byte: `retry:`, then the state frame with no `id:` line.
    let (client, greeting) = connect_and_greet(server.addr, "/events").await;
    let expected = format!(
        "retry: 3000\nevent: server.state\ndata: {{\"mode\":\"normal\",\"reason\":null,\"since\":\"{}\"}}\n\n",
        mode.current().since_rfc3339()
    );
    assert_eq!(String::from_utf8_lossy(&client.raw), expected);
    assert_state_data(&greeting, &mode.current());
    drop(client);

    // Later connections are greeted with whatever is current then.
    mode.set_read_only("maintenance");
    mode.set_degraded("disk full");
    let (_client, greeting) = connect_and_greet(server.addr, "/events?topic=x").await;
    assert_state_data(&greeting, &mode.current());
    assert_eq!(greeting.json()["mode"], "degraded");

    // Resuming, the greeting goes where the replay ends: it is the state
    // as of the moment the stream joins live events. A replay that holds
    // the latest state event already says it, and gets no greeting.
    let mark = broker.publish(Event::new("mark")).expect("publish");
    mode.clear_degraded();
    let end = broker.publish(Event::new("end")).expect("publish");
    let mut resumed = SseClient::connect(server.addr, &format!("/events?lastEventId={mark}")).await;
    let (replayed, _end) = resumed.read_until(|f| f.event_type() == Some("end")).await;
    assert_eq!(replayed.len(), 1, "replayed: {replayed:?}");
    assert!(replayed[0].text.starts_with("retry: 3000\nid: 3-"));
    assert_state_data(&replayed[0], &mode.current());
    broker.publish(Event::new("live")).expect("publish");
    let (between, _live) = resumed.read_until(|f| f.event_type() == Some("live")).await;
    assert!(
        between.iter().all(|f| f.is_comment()),
        "no greeting after a replay that had the state: {between:?}"
    );

    // A replay without a state event: the greeting follows it, before
    // anything live.
    let mut later = SseClient::connect(server.addr, &format!("/events?lastEventId={end}")).await;
    broker.publish(Event::new("next")).expect("publish");
    let (frames, _next) = later.read_until(|f| f.event_type() == Some("next")).await;
    let frames: Vec<_> = frames.into_iter().filter(|f| !f.is_comment()).collect();
    let kinds: Vec<_> = frames.iter().map(|f| f.event_type()).collect();
    assert_eq!(kinds, [Some("live"), Some("server.state")], "{frames:?}");
    assert_eq!(frames[1].id(), None, "the greeting carries no id");
    assert_state_data(&frames[1], &mode.current());

    shutdown.trigger();
    let served = tokio::time::timeout(SERVER_STOPS, server.task).await;
    served.expect("the server stops").unwrap().unwrap();
}

// ---------------------------------------------------------------------------
// Flapping does not flood
// ---------------------------------------------------------------------------

#[tokio::test]
async fn flapping_publishes_exactly_one_event_per_actual_change() {
    let (broker, mode) = followed_broker(4);
    let shutdown = Shutdown::new().broker(&broker).mode(&mode);
    let server = spawn_axum(app(&broker, &mode), shutdown.wait()).await;
    let (mut client, _) = connect_and_greet(server.addr, "/events").await;

    let mut watch = mode.watch();
    watch.borrow_and_update();
    let published_at_start = broker.stats().published;
    let mut expected: Vec<(String, Option<String>)> = Vec::new();

    // Applies `op`; checks, by the broker's counter and the watch channel,
    // that it made exactly one change (to `to`) or none.
    let mut step = |what: &str, op: &dyn Fn(&ServerMode), to: Option<(&str, Option<&str>)>| {
        let before = broker.stats().published;
        op(&mode);
        let published = broker.stats().published - before;
        match to {
            Some((m, r)) => {
                assert_eq!(published, 1, "{what}: one event");
                assert!(watch.has_changed().unwrap(), "{what}: watch sees it");
                let state = watch.borrow_and_update().clone();
                assert_eq!((state.mode.as_str(), state.reason.as_deref()), (m, r));
                expected.push((m.to_owned(), r.map(str::to_owned)));
            }
            None => {
                assert_eq!(published, 0, "{what}: no change, no event");
                assert!(!watch.has_changed().unwrap(), "{what}: watch unchanged");
            }
        }
    };

    step(
        "read-only",
        &|m| m.set_read_only("a"),
        Some(("read-only", Some("a"))),
    );
    step("read-only again", &|m| m.set_read_only("a"), None);
    step("clear", &|m| m.clear_read_only(), Some(("normal", None)));
    step("clear again", &|m| m.clear_read_only(), None);
    step("clear degraded while normal", &|m| m.clear_degraded(), None);
    step(
        "degrade",
        &|m| m.set_degraded("x"),
        Some(("degraded", Some("x"))),
    );
    step("degrade again", &|m| m.set_degraded("x"), None);
    // Degraded wins: a read-only cause underneath changes nothing visible.
    step("read-only under degraded", &|m| m.set_read_only("b"), None);
    step(
        "clear degraded",
        &|m| m.clear_degraded(),
        Some(("read-only", Some("b"))),
    );
    step(
        "toggle off",
        &|m| {
            m.toggle_read_only("c");
        },
        Some(("normal", None)),
    );
    step(
        "toggle on",
        &|m| {
            m.toggle_read_only("c");
        },
        Some(("read-only", Some("c"))),
    );
    step(
        "new reason",
        &|m| m.set_read_only("d"),
        Some(("read-only", Some("d"))),
    );
    for round in 0..50 {
        step(
            &format!("flap {round} on"),
            &|m| m.set_degraded("flap"),
            Some(("degraded", Some("flap"))),
        );
        step(
            &format!("flap {round} on again"),
            &|m| m.set_degraded("flap"),
            None,
        );
        step(
            &format!("flap {round} off"),
            &|m| m.clear_degraded(),
            Some(("read-only", Some("d"))),
        );
    }
    for round in 0..20 {
        let on = round % 2 == 1;
        step(
            &format!("toggle {round}"),
            &|m| {
                m.toggle_read_only("d");
            },
            Some(if on {
                ("read-only", Some("d"))
            } else {
                ("normal", None)
            }),
        );
    }
    assert_eq!(
        broker.stats().published - published_at_start,
        expected.len() as u64
    );

    // The client receives exactly these, nothing more: everything before
    // the sentinel is one of them.
    broker
        .publish(Event::new("sentinel").data("end"))
        .expect("publish");
    let (before, _) = client
        .read_until(|f| f.event_type() == Some("sentinel"))
        .await;
    let received: Vec<_> = before
        .iter()
        .filter(|f| !f.is_comment())
        .map(|f| {
            assert!(f.is_state(), "unexpected frame {f:?}");
            mode_and_reason(&f.json())
        })
        .collect();
    assert_eq!(received.len(), 7 + 50 * 2 + 20);
    assert_eq!(received, expected);

    shutdown.trigger();
    let served = tokio::time::timeout(SERVER_STOPS, server.task).await;
    served.expect("the server stops").unwrap().unwrap();
}

/// A probe that flaps (never `fail_after` failures or `recover_after`
/// successes in a row) changes nothing; a failing one degrades once, with
/// its first error even though the message varies; recovering is one event.
#[tokio::test(start_paused = true)]
async fn a_flapping_probe_does_not_flood() {
    let (broker, mode) = followed_broker(5);
    let mut sub = broker
        .subscribe(&Topics::parse(["public"]).unwrap(), None)
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    // By call index: 0..20 alternate fail/pass, 20..30 fail ("e20".."e29"),
    // 30..40 alternate pass/fail, 40.. pass.
    let outcome = |i: usize| -> Result<(), String> {
        let fail = match i {
            0..=19 => i % 2 == 0,
            20..=29 => true,
            30..=39 => i % 2 == 1,
            _ => false,
        };
        if fail {
            Err(format!("e{i}"))
        } else {
            Ok(())
        }
    };
    let probe = mode.spawn_probe(
        Probe::new("storage", move || {
            let i = counter.fetch_add(1, Ordering::SeqCst);
            async move { outcome(i) }
        })
        .interval(Duration::from_millis(10))
        .fail_after(3)
        .recover_after(2),
    );
    let states = |sub: &mut tower_sse::Subscription| {
        let mut out = Vec::new();
        while let Some(message) = sub.try_next() {
            let Message::Event(event) = message else {
                panic!("unexpected {message:?}")
            };
            assert_eq!(event.event_type(), "server.state");
            out.push(mode_and_reason(
                &serde_json::from_str(event.data()).unwrap(),
            ));
        }
        out
    };
    // The (n+1)-th check starts only once the n-th outcome is applied.
    let reached = |n: usize| {
        let calls = calls.clone();
        move || calls.load(Ordering::SeqCst) > n
    };

    eventually("20 flapping checks", reached(20)).await;
    assert_eq!(mode.current().mode, Mode::Normal);
    assert_eq!(states(&mut sub), vec![]);

    eventually("10 failing checks", reached(30)).await;
    assert_eq!(
        states(&mut sub),
        vec![("degraded".to_owned(), Some("storage: e22".to_owned()))]
    );

    eventually("10 more flapping checks", reached(40)).await;
    assert_eq!(mode.current().mode, Mode::Degraded);
    assert_eq!(states(&mut sub), vec![]);

    eventually("passing checks", reached(50)).await;
    assert_eq!(states(&mut sub), vec![("normal".to_owned(), None)]);

    probe.stop();
    assert_eq!(
        states(&mut sub),
        vec![],
        "stopping a passing probe changes nothing"
    );
    assert_eq!(mode.current().mode, Mode::Normal);
}

// ---------------------------------------------------------------------------
// Concurrent changes
// ---------------------------------------------------------------------------

/// Every `server.state` event left in `sub`, as JSON, in order.
fn drain_states(sub: &mut tower_sse::Subscription) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(message) = sub.try_next() {
        match message {
            Message::Event(event) if event.event_type() == "server.state" => {
                out.push(serde_json::from_str(event.data()).expect("JSON"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_end_in_one_consistent_state() {
    const TASKS: u64 = 16;
    const OPS: u64 = 200;
    const REASONS: [&str; 3] = ["maintenance", "disk full", "migration"];
    let public = Topics::parse(["public"]).unwrap();

    for round in 0..4u64 {
        let brokers: Vec<Broker> = (0..2)
            .map(|b| {
                Broker::builder()
                    .epoch(100 + 10 * round + b)
                    .retain_events(100_000)
                    .retain_forever()
                    .build()
            })
            .collect();
        // Subscribed before following, so the initial state is in there too.
        let mut subs: Vec<_> = brokers
            .iter()
            .map(|b| b.subscribe(&public, None).unwrap())
            .collect();
        let mode = ServerMode::new();
        for broker in &brokers {
            broker.follow_mode(&mode);
        }

        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS as usize));
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let mode = mode.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = Rng::new(round * 1_000 + task + 1);
                barrier.wait().await;
                for op in 0..OPS {
                    let reason = REASONS[rng.below(3) as usize];
                    match rng.below(6) {
                        0 => mode.set_read_only(reason),
                        1 => mode.clear_read_only(),
                        2 => {
                            mode.toggle_read_only(reason);
                        }
                        3 => mode.set_degraded(reason),
                        4 => mode.clear_degraded(),
                        _ => tokio::task::yield_now().await,
                    }
                    if op % 8 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            }));
        }
        for task in tasks {
            within("the writers", task).await.expect("writer task");
        }

        let current = mode.current();
        let context = format!("round {round}, final {current:?}");
        assert_eq!(*mode.watch().borrow(), current, "{context}: watch");
        let expected = json!({
            "mode": current.mode.as_str(),
            "reason": current.reason,
            "since": current.since_rfc3339(),
        });
        assert_eq!(serde_json::to_value(&current).unwrap(), expected);

        for (b, sub) in subs.iter_mut().enumerate() {
            let states = drain_states(sub);
            assert!(states.len() > 1, "{context}: broker {b} saw changes");
            assert_eq!(
                states.last().unwrap(),
                &expected,
                "{context}: broker {b}'s last server.state"
            );
            for pair in states.windows(2) {
                assert_ne!(
                    mode_and_reason(&pair[0]),
                    mode_and_reason(&pair[1]),
                    "{context}: broker {b} published an event without a change"
                );
            }
        }

        let (_, inner) = counting_inner();
        let health = HealthLayer::new(mode.clone())
            .broker(&brokers[0])
            .layer(inner.clone());
        let reply = call(health.clone(), support::request(Method::GET, "/health")).await;
        let body = reply.json();
        assert_eq!(body["mode"], expected["mode"], "{context}: /health");
        assert_eq!(body["reason"], expected["reason"], "{context}: /health");
        assert_eq!(body["since"], expected["since"], "{context}: /health");
        let ready = call(health, support::request(Method::GET, "/ready")).await;
        let should_be_ready = current.mode != Mode::Degraded;
        assert_eq!(
            ready.status,
            if should_be_ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            "{context}: /ready"
        );

        // A stream opened now is greeted with the same state.
        let sse = SseLayer::new(brokers[1].clone()).layer(inner);
        let response = tower::ServiceExt::oneshot(sse, support::request(Method::GET, "/events"))
            .await
            .unwrap();
        let mut body = response.into_body();
        let mut seen = Vec::new();
        while !seen.windows(2).any(|w| w == b"\n\n") {
            let frame = within("the greeting", body.frame()).await.unwrap().unwrap();
            seen.extend_from_slice(&frame.into_data().unwrap());
        }
        let text = String::from_utf8(seen).unwrap();
        let greeting = text.split("\n\n").next().unwrap();
        assert_eq!(
            greeting,
            format!("retry: 3000\nevent: server.state\ndata: {expected}"),
            "{context}: greeting"
        );
    }
}

// ---------------------------------------------------------------------------
// RequireWritableLayer
// ---------------------------------------------------------------------------

const UNSAFE: [Method; 4] = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
const SAFE: [Method; 3] = [Method::GET, Method::HEAD, Method::OPTIONS];

/// A 503 refusal naming `mode` and `reason`, with `Retry-After: retry`.
fn assert_refused(reply: &Reply, mode: &str, reason: Option<&str>, retry: &str, what: &str) {
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{what}");
    assert_eq!(reply.header(header::RETRY_AFTER), Some(retry), "{what}");
    assert_eq!(
        reply.header(header::CONTENT_TYPE),
        Some("application/json"),
        "{what}"
    );
    let body = reply.json();
    assert_eq!(body["mode"], mode, "{what}: {body}");
    assert_eq!(body["reason"].as_str(), reason, "{what}: {body}");
    assert!(body["error"].is_string(), "{what}: {body}");
}

#[tokio::test]
async fn require_writable_lets_everything_through_in_normal_mode() {
    let mode = ServerMode::new();
    let (calls, inner) = counting_inner();
    let service = RequireWritableLayer::new(mode.clone()).layer(inner);
    for (n, method) in SAFE.iter().chain(UNSAFE.iter()).enumerate() {
        let reply = call(service.clone(), support::request(method.clone(), "/items")).await;
        assert_eq!(reply.status, StatusCode::OK, "{method}");
        assert_eq!(reply.text(), "inner", "{method}");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            n + 1,
            "{method} reached inner"
        );
    }
}

#[tokio::test]
async fn require_writable_refuses_unsafe_methods_without_calling_inner() {
    let mode = ServerMode::new();
    let (calls, inner) = counting_inner();
    let service = RequireWritableLayer::new(mode.clone()).layer(inner);

    for (change, name, reason) in [
        (
            (|m| m.set_read_only("maintenance")) as fn(&ServerMode),
            "read-only",
            "maintenance",
        ),
        (|m| m.set_degraded("disk full"), "degraded", "disk full"),
    ] {
        change(&mode);
        for method in UNSAFE {
            let reply = call(service.clone(), support::request(method.clone(), "/items")).await;
            assert_refused(
                &reply,
                name,
                Some(reason),
                "30",
                &format!("{method} {name}"),
            );
            assert_eq!(
                reply.json()["error"],
                format!("the server is {name}"),
                "{method}"
            );
            assert_eq!(reply.json()["since"], mode.current().since_rfc3339());
            assert_eq!(calls.load(Ordering::SeqCst), 0, "{method} reached inner");
        }
    }
    // Safe methods pass, still degraded.
    for (n, method) in SAFE.into_iter().enumerate() {
        let reply = call(service.clone(), support::request(method.clone(), "/items")).await;
        assert_eq!(reply.status, StatusCode::OK, "{method}");
        assert_eq!(calls.load(Ordering::SeqCst), n + 1);
    }
    // Lifting one cause leaves the other in force.
    mode.clear_degraded();
    let reply = call(service.clone(), support::request(Method::POST, "/items")).await;
    assert_refused(
        &reply,
        "read-only",
        Some("maintenance"),
        "30",
        "after clear_degraded",
    );
    mode.clear_read_only();
    let reply = call(service.clone(), support::request(Method::POST, "/items")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), SAFE.len() + 1);
}

#[tokio::test]
async fn require_writable_methods_and_retry_after_are_configurable() {
    let mode = ServerMode::new();
    mode.set_read_only("maintenance");
    let (calls, inner) = counting_inner();

    let post_only = RequireWritableLayer::new(mode.clone())
        .methods([Method::POST])
        .retry_after(Duration::from_secs(120))
        .layer(inner.clone());
    let reply = call(post_only.clone(), support::request(Method::POST, "/x")).await;
    assert_refused(&reply, "read-only", Some("maintenance"), "120", "POST");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    for (n, method) in [Method::PUT, Method::PATCH, Method::DELETE]
        .into_iter()
        .enumerate()
    {
        let reply = call(post_only.clone(), support::request(method.clone(), "/x")).await;
        assert_eq!(reply.status, StatusCode::OK, "{method} is not guarded");
        assert_eq!(calls.load(Ordering::SeqCst), n + 1);
    }

    // Any method can be guarded, a safe one included.
    let guard_get = RequireWritableLayer::new(mode.clone())
        .methods([Method::GET])
        .layer(inner);
    let before = calls.load(Ordering::SeqCst);
    let reply = call(guard_get.clone(), support::request(Method::GET, "/x")).await;
    assert_refused(
        &reply,
        "read-only",
        Some("maintenance"),
        "30",
        "guarded GET",
    );
    let reply = call(guard_get, support::request(Method::POST, "/x")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn require_writable_exempts_what_the_predicate_accepts() {
    let mode = ServerMode::new();
    mode.set_read_only("maintenance");
    let (calls, inner) = counting_inner();
    let service = RequireWritableLayer::new(mode.clone())
        .exempt(|parts| parts.uri.path().starts_with("/admin/"))
        .layer(inner);

    let reply = call(
        service.clone(),
        support::request(Method::POST, "/admin/switch"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let reply = call(service.clone(), support::request(Method::POST, "/items")).await;
    assert_refused(
        &reply,
        "read-only",
        Some("maintenance"),
        "30",
        "POST /items",
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    mode.set_degraded("disk full");
    let reply = call(service, support::request(Method::DELETE, "/admin/switch")).await;
    assert_eq!(reply.status, StatusCode::OK, "exempt while degraded too");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // The admin switch of the full app lifts read-only through the guard.
    let (broker, mode) = followed_broker(6);
    let app = app(&broker, &mode);
    mode.set_read_only("maintenance");
    let reply = call(app.clone(), support::request(Method::POST, "/items")).await;
    assert_refused(&reply, "read-only", Some("maintenance"), "30", "app POST");
    let reply = call(
        app.clone(),
        support::request(Method::POST, "/admin/read-only"),
    )
    .await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, "off")
    );
    assert!(mode.is_writable());
    let reply = call(app, support::request(Method::POST, "/items")).await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, "created")
    );
}

#[tokio::test]
async fn require_writable_refuses_writes_while_shutting_down() {
    let mode = ServerMode::new();
    let (calls, inner) = counting_inner();
    let service = RequireWritableLayer::new(mode.clone()).layer(inner);
    let shutdown = Shutdown::new().mode(&mode);
    shutdown.trigger();
    assert!(shutdown.is_triggered());
    assert!(!mode.is_writable());

    for method in UNSAFE {
        let reply = call(service.clone(), support::request(method.clone(), "/items")).await;
        assert_refused(
            &reply,
            "normal",
            Some("shutting down"),
            "30",
            &format!("{method}"),
        );
        let body = reply.json();
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("shutting down"), "{method}: {body}");
        assert_eq!(body["shutting_down"], true);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let reply = call(service, support::request(Method::GET, "/items")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------
// HealthLayer
// ---------------------------------------------------------------------------

#[tokio::test]
async fn health_reports_mode_and_broker_numbers() {
    let (broker, mode) = followed_broker(7);
    let (calls, inner) = counting_inner();
    let health = HealthLayer::new(mode.clone())
        .broker(&broker)
        .layer(inner.clone());
    let get = |path: &str| call(health.clone(), support::request(Method::GET, path));

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
    }

    // `subscribers`: every open stream of the events route, exactly.
    let sse = SseLayer::new(broker.clone()).layer(inner.clone());
    let mut streams = Vec::new();
    for n in 1..=5 {
        let response =
            tower::ServiceExt::oneshot(sse.clone(), support::request(Method::GET, "/events"))
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
    let body = call(health, support::request(Method::GET, "/health"))
        .await
        .json();
    assert_eq!(body["dropped"], 3);
    assert_eq!(body["subscribers"], 1);

    assert_eq!(calls.load(Ordering::SeqCst), 0, "health answered itself");
}

#[tokio::test]
async fn readiness_follows_the_mode() {
    let mode = ServerMode::new();
    let (calls, inner) = counting_inner();
    let health = HealthLayer::new(mode.clone()).layer(inner);
    let ready = || call(health.clone(), support::request(Method::GET, "/ready"));

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
    let body = call(health.clone(), support::request(Method::GET, "/health"))
        .await
        .json();
    assert_eq!(body["subscribers"], Value::Null);

    Shutdown::new().mode(&mode).trigger();
    let reply = ready().await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["reason"], "shutting down");
    let body = call(health, support::request(Method::GET, "/health"))
        .await
        .json();
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
    let send = |method: Method, path: &str| call(health.clone(), support::request(method, path));

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
    let server = spawn_axum(app(&broker, &mode), shutdown.wait()).await;
    let mut conn = HttpConn::open(server.addr).await;

    let mut clients = Vec::new();
    for n in 1..=3 {
        clients.push(connect_and_greet(server.addr, "/events").await.0);
        let body = conn.request(Method::GET, "/health").await.json();
        assert_eq!(body["subscribers"], n);
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    }
    // A client that goes away is no longer counted (the server notices the
    // closed connection on its own; wait for it, bounded).
    drop(clients.pop());
    let mut subscribers = Value::Null;
    within("the server to notice a closed stream", async {
        loop {
            subscribers = conn.request(Method::GET, "/health").await.json()["subscribers"].clone();
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

// ---------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------

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
    let server = spawn_axum(app(&broker, &mode), shutdown.wait()).await;

    let mut readers = Vec::new();
    for i in 0..CLIENTS {
        let path = if i % 2 == 0 {
            "/events".to_owned()
        } else {
            format!("/events?topic=room-{i}")
        };
        let (mut client, _) = connect_and_greet(server.addr, &path).await;
        readers.push(tokio::spawn(async move { client.read_to_end().await }));
    }
    let health = fetch(server.addr, Method::GET, "/health").await.json();
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
    let server = spawn_axum(app(&broker, &mode), shutdown.wait()).await;
    let (mut client, _) = connect_and_greet(server.addr, "/events").await;
    let mut conn = HttpConn::open(server.addr).await;
    assert_eq!(
        conn.request(Method::GET, "/ready").await.status,
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
            let reply = conn.request(Method::GET, "/ready").await;
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
    let rest = client.read_to_end().await;
    let mut all = vec![state];
    all.extend(rest);
    assert_shutdown_ending(&all, SHUTDOWN_FRAME, "the client");

    let served = tokio::time::timeout(SERVER_STOPS, server.task).await;
    served.expect("the server stops").unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_works_on_a_plain_hyper_server() {
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

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

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let wait = shutdown.wait();
    let server = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                accepted = listener.accept() => {
                    let (stream, _) = accepted.expect("accept");
                    let connection = http1::Builder::new().serve_connection(
                        TokioIo::new(stream),
                        TowerToHyperService::new(service.clone()),
                    );
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        let _ = connection.await;
                    });
                }
            }
        }
        drop(listener);
        // A hang detector, not a performance threshold.
        tokio::time::timeout(SERVER_STOPS, graceful.shutdown())
            .await
            .is_ok()
    });

    let mut readers = Vec::new();
    for i in 0..CLIENTS {
        let (mut client, greeting) = connect_and_greet(addr, &format!("/events?topic=t{i}")).await;
        assert_state_data(&greeting, &mode.current());
        readers.push(tokio::spawn(async move { client.read_to_end().await }));
    }
    let reply = fetch(addr, Method::GET, "/ready").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(fetch(addr, Method::GET, "/other").await.text(), "inner");

    shutdown.trigger();
    let drained = tokio::time::timeout(SERVER_STOPS + Duration::from_secs(1), server).await;
    let drained = drained.expect("the accept loop ends").expect("server task");
    assert!(
        drained,
        "graceful.shutdown() did not complete: a stream stayed open"
    );

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
    let server = spawn_axum(app(&broker, &mode), shutdown.wait()).await;
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
        .read_until(|f| f.event_type() == Some("still-here"))
        .await;
    assert_eq!(frame.data().as_deref(), Some("yes"));

    // Closing the broker is what lets the server finish.
    broker.close_with_retry(Duration::from_secs(5));
    let frames = client.read_to_end().await;
    assert_final_frame(&frames, SHUTDOWN_FRAME);
    let served = tokio::time::timeout(SERVER_STOPS, task).await;
    served.expect("the server stops").unwrap().unwrap();
}
