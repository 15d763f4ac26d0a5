//! The server's mode on the events route: `server.state` events reach
//! every stream whatever its topics, a new stream is greeted with the state
//! it joins at, each actual change is one event however the mode flaps,
//! and concurrent changes end in one state that every view agrees on.
//!
//! Every wait is bounded ([`within`], [`eventually`]): timeouts here only
//! turn a hang into a failure, they never judge speed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::Layer;
use tower_sse::mode::{Mode, Probe, ServerMode};
use tower_sse::{Broker, Event, HealthLayer, Message, Shutdown, SseLayer, Topics};

use crate::support::client::{call, get, request, Connection};
use crate::support::inner::counting_inner;
use crate::support::rng::Rng;
use crate::support::server::serve_axum_until;
use crate::support::stack::{
    app, assert_final_frame, assert_state_data, connect_and_greet, followed_broker, SERVER_STOPS,
    SHUTDOWN_FRAME,
};
use crate::support::wait::{eventually, within};

/// The `mode` and `reason` of a state's JSON.
fn mode_and_reason(value: &Value) -> (String, Option<String>) {
    (
        value["mode"].as_str().expect("mode").to_owned(),
        value["reason"].as_str().map(str::to_owned),
    )
}

// ---------------------------------------------------------------------------
// The events route and `server.state`
// ---------------------------------------------------------------------------

#[tokio::test]
async fn events_route_keeps_streaming_in_every_mode() {
    let (broker, mode) = followed_broker(1);
    let shutdown = Shutdown::new().broker(&broker).mode(&mode);
    let server = serve_axum_until(app(&broker, &mode), shutdown.wait()).await;

    let (mut early, greeting) = connect_and_greet(server.addr, "/events").await;
    assert_state_data(&greeting, &mode.current());
    let mut conn = Connection::open(server.addr).await;

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
            conn.fetch(Method::GET, "/ready").await.status,
            ready,
            "/ready in {name}"
        );
        let read = conn.fetch(Method::GET, "/items").await;
        assert_eq!(
            (read.status, read.text()),
            (StatusCode::OK, "items"),
            "reads pass in {name}"
        );
        assert_eq!(
            conn.fetch(Method::POST, "/items").await.status,
            write,
            "POST /items in {name}"
        );
    }

    shutdown.trigger();
    let frames = early.frames_to_end().await;
    assert_final_frame(&frames, SHUTDOWN_FRAME);
    let served = tokio::time::timeout(SERVER_STOPS, server.task).await;
    served.expect("the server stops").unwrap().unwrap();
}

#[tokio::test]
async fn state_events_reach_every_connection_whatever_its_topics() {
    let (broker, mode) = followed_broker(2);
    let shutdown = Shutdown::new().broker(&broker).mode(&mode);
    let server = serve_axum_until(app(&broker, &mode), shutdown.wait()).await;

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
    let parsed = clients[2].dispatched();
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
        assert_final_frame(&client.frames_to_end().await, SHUTDOWN_FRAME);
    }
    let served = tokio::time::timeout(SERVER_STOPS, server.task).await;
    served.expect("the server stops").unwrap().unwrap();
}

#[tokio::test]
async fn a_new_connection_gets_the_current_state_first() {
    let (broker, mode) = followed_broker(3);
    let shutdown = Shutdown::new().broker(&broker).mode(&mode);
    let server = serve_axum_until(app(&broker, &mode), shutdown.wait()).await;

    // Byte for byte: `retry:`, then the state frame with no `id:` line.
    let (client, greeting) = connect_and_greet(server.addr, "/events").await;
    let expected = format!(
        "retry: 3000\nevent: server.state\ndata: {{\"mode\":\"normal\",\"reason\":null,\"since\":\"{}\"}}\n\n",
        mode.current().since_rfc3339()
    );
    assert_eq!(client.raw(), expected);
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
    let mut resumed = get(server.addr, &format!("/events?lastEventId={mark}"), &[]).await;
    let (replayed, _end) = resumed
        .frames_until(|f| f.event_type() == Some("end"))
        .await;
    assert_eq!(replayed.len(), 1, "replayed: {replayed:?}");
    assert!(replayed[0].text.starts_with("retry: 3000\nid: 3-"));
    assert_state_data(&replayed[0], &mode.current());
    broker.publish(Event::new("live")).expect("publish");
    let (between, _live) = resumed
        .frames_until(|f| f.event_type() == Some("live"))
        .await;
    assert!(
        between.iter().all(|f| f.is_comment()),
        "no greeting after a replay that had the state: {between:?}"
    );

    // A replay without a state event: the greeting follows it, before
    // anything live.
    let mut later = get(server.addr, &format!("/events?lastEventId={end}"), &[]).await;
    broker.publish(Event::new("next")).expect("publish");
    let (frames, _next) = later.frames_until(|f| f.event_type() == Some("next")).await;
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
    let server = serve_axum_until(app(&broker, &mode), shutdown.wait()).await;
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
        .frames_until(|f| f.event_type() == Some("sentinel"))
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
        let reply = call(health.clone(), request(Method::GET, "/health")).await;
        let body = reply.json();
        assert_eq!(body["mode"], expected["mode"], "{context}: /health");
        assert_eq!(body["reason"], expected["reason"], "{context}: /health");
        assert_eq!(body["since"], expected["since"], "{context}: /health");
        let ready = call(health, request(Method::GET, "/ready")).await;
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
        let response = tower::ServiceExt::oneshot(sse, request(Method::GET, "/events"))
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

/// What a log line or a failed assertion shows of the mode's types: each
/// names itself and what it holds.
#[test]
fn debug_output_names_the_type_and_its_state() {
    let mode = ServerMode::new();
    let shown = format!("{mode:?}");
    assert!(shown.starts_with("ServerMode("), "{shown}");
    assert!(shown.contains("Normal"), "{shown}");
    let probe =
        Probe::new("database", || async { Ok::<(), String>(()) }).interval(Duration::from_secs(7));
    let shown = format!("{probe:?}");
    assert!(
        shown.starts_with(r#"Probe { name: "database", interval: 7s"#),
        "{shown}"
    );
}

/// A state event the broker refuses (larger than it takes) is logged; a
/// closed broker's refusal is not, since nobody is left to tell.
#[test]
fn a_state_the_broker_refuses_is_logged_unless_it_is_closed() {
    use tracing_subscriber::fmt::format::FmtSpan;
    let (log, _subscriber) = crate::support::trace::capture(tracing::Level::WARN, FmtSpan::NONE);
    let refused = || {
        log.text()
            .matches("server.state event not published")
            .count()
    };
    let broker = Broker::builder()
        .max_event_bytes(64)
        .retain_bytes(64)
        .build();
    let mode = ServerMode::new();
    broker.follow_mode(&mode);
    mode.set_read_only("a reason far longer than the sixty-four bytes this broker takes");
    assert!(refused() >= 1, "{}", log.text());
    let before = refused();
    broker.close();
    mode.set_read_only("closed");
    assert_eq!(refused(), before, "{}", log.text());
}
