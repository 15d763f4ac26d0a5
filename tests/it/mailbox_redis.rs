//! The mailbox kept in Redis (feature `redis`): replicas in one process on
//! one `redis-server` the test starts, each with its own broker and
//! reader, sending on one and receiving, replying, confirming and asking
//! for a status on another; the races of two replicas on one record; and
//! the faults: Redis unreachable, restarted without its data.

use std::time::Duration;

use tower_sse::backplane::{RedisBackplane, Replica};
use tower_sse::mailbox::{Mailbox, Notification, RedisMailbox, ReplyError, SendError};
use tower_sse::{Broker, Event, Message, Subscription};

use http::{Method, StatusCode};

use crate::support::client;
use crate::support::process::Demo;
use crate::support::redis::RedisServer;
use crate::support::wait::{eventually, eventually_async, within};

fn replica(url: &str) -> Replica {
    RedisBackplane::new(url)
        .expect("URL")
        .stream("test:events")
        .block(Duration::from_millis(100))
        .publish_timeout(Duration::from_millis(500))
        .start(Broker::builder())
}

async fn in_step(replica: &Replica) {
    eventually("the replica to be in step with Redis", || {
        replica.stats().connected
    })
    .await;
}

/// A replica and its mailbox, in step with Redis.
async fn node(redis: &RedisServer) -> (Replica, RedisMailbox) {
    let replica = replica(&redis.url());
    in_step(&replica).await;
    let mailbox = Mailbox::builder(replica.broker().clone()).redis(&replica);
    (replica, mailbox)
}

fn note(to: &str, from: &str, text: &str) -> Notification {
    Notification::to(to).from(from).json(text).unwrap()
}

/// The next event of `sub`: its type, id and data as JSON.
async fn next_event(sub: &mut Subscription) -> (String, String, serde_json::Value) {
    loop {
        match within("a message", sub.recv()).await.expect("stream open") {
            // The broker's own events (`server.state`) are not the mailbox's.
            Message::Event(e) if e.event_type().starts_with("server.") => continue,
            Message::Event(e) => {
                let data = serde_json::from_str(e.data()).expect("JSON");
                return (e.event_type().to_owned(), e.id().to_string(), data);
            }
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_sent_on_one_replica_is_held_and_delivered_on_another() {
    let redis = RedisServer::start().await;
    let (_a, on_a) = node(&redis).await;
    let (_b, on_b) = node(&redis).await;
    let trace = on_a.send(note("bob", "alice", "lunch?")).await.unwrap();
    // Bob connects to B: it is there, with the same trace.
    let (mut sub, _guard) = on_b.subscribe("bob", None).await.unwrap();
    let (kind, id, data) = next_event(&mut sub).await;
    assert_eq!(kind, "notification");
    assert_eq!(data["trace"], trace.as_str());
    assert_eq!(data["payload"], "lunch?");
    // Status on B, from A's send; nobody else sees it.
    let status = on_b.status_for(&trace, "alice").await.unwrap().unwrap();
    assert!(!status.delivered);
    assert_eq!(on_b.status_for(&trace, "eve").await.unwrap(), None);
    // Bob's EventSource comes back to A with the id it got on B: proven.
    let (_sub, _guard) = on_a.subscribe("bob", Some(&id)).await.unwrap();
    let status = on_a.status(&trace).await.unwrap().unwrap();
    assert!(status.delivered, "the id B gave proves it on A");
    // Its keys are the stream's, then `:mailbox:`, as the README says.
    let keys: Vec<String> = redis.query(redis::cmd("KEYS").arg("*")).await;
    assert!(
        keys.iter()
            .any(|key| key.starts_with("test:events:mailbox:")),
        "{keys:?}"
    );
    for key in keys {
        assert!(key.starts_with("test:events"), "{key}");
        assert!(
            key == "test:events"
                || key == "test:events:meta"
                || key.starts_with("test:events:mailbox:"),
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_notification_and_its_reply_cross_replicas() {
    let redis = RedisServer::start().await;
    let (_a, on_a) = node(&redis).await;
    let (_b, on_b) = node(&redis).await;
    let (mut bob, _g1) = on_b.subscribe("bob", None).await.unwrap();
    let (mut alice, _g2) = on_a.subscribe("alice", None).await.unwrap();
    let lunch = Notification::to("bob")
        .from("alice")
        .json("lunch?")
        .unwrap()
        .expects_reply();
    let trace = on_a.send(lunch).await.unwrap();
    let (kind, _, data) = next_event(&mut bob).await;
    assert_eq!(
        (kind.as_str(), data["trace"].as_str()),
        ("notification", Some(trace.as_str()))
    );
    let status = on_b
        .reply(&trace, "bob", serde_json::json!("yes"))
        .await
        .unwrap();
    assert!(status.replied && status.delivered);
    let (kind, _, data) = next_event(&mut alice).await;
    assert_eq!(kind, "notification.reply");
    assert_eq!(data["payload"], "yes");
    assert_eq!(data["by"], "bob");
    // A second reply, on A this time, is refused.
    assert_eq!(
        on_a.reply(&trace, "bob", "again").await.unwrap_err(),
        ReplyError::AlreadyReplied
    );
    let stats = on_a.stats().await.unwrap();
    assert_eq!((stats.held, stats.sent, stats.delivered), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_gives_unavailable_and_a_restart_without_data_empties_it() {
    let mut redis = RedisServer::start().await;
    let (a, on_a) = node(&redis).await;
    let trace = on_a.send(note("bob", "alice", "hi")).await.unwrap();
    assert_eq!(on_a.stats().await.unwrap().held, 1);
    redis.kill();
    eventually("the replica to see Redis gone", || !a.stats().connected).await;
    assert!(matches!(
        on_a.send(note("bob", "alice", "hi")).await,
        Err(SendError::Unavailable(_))
    ));
    assert!(matches!(
        on_a.reply(&trace, "bob", "x").await,
        Err(ReplyError::Unavailable(_))
    ));
    assert!(on_a.status(&trace).await.is_err());
    assert!(on_a.ack(&trace, "bob").await.is_err());
    redis.restart().await;
    in_step(&a).await;
    let stats = on_a.stats().await.unwrap();
    assert_eq!(stats.held, 0, "a Redis without its data holds nothing");
    assert_eq!(on_a.status(&trace).await.unwrap(), None);
    let _ = a.broker().publish(Event::new("t").topic("x").data("{}"));
}

/// Sends a notification through a demo's `/notify`; the answer.
async fn notify(demo: &Demo, from: &str, body: &str) -> client::Reply {
    client::fetch(
        demo.addr(),
        Method::POST,
        &format!("/notify?as={from}"),
        &[],
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_demo_processes_are_one_mailbox_even_once_the_one_that_took_the_send_is_gone() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    let a = Demo::start(&["--redis", &url], &[]).await;
    let b = Demo::start(&["--redis", &url], &[]).await;
    a.ready().await;
    b.ready().await;
    let sent = notify(
        &a,
        "alice",
        r#"{"to": "bob", "payload": "lunch?", "expects_reply": true}"#,
    )
    .await;
    assert_eq!(sent.status, StatusCode::OK, "{}", sent.text());
    let trace = sent.json()["trace"].as_str().unwrap().to_owned();
    // A goes away for good, right after answering.
    drop(a);

    // Bob connects to B: what A took is there.
    let mut bob = client::get(b.addr(), "/events?as=bob", &[]).await;
    let held = bob.next_of_type("notification").await;
    let data: serde_json::Value = serde_json::from_str(&held.data).unwrap();
    assert_eq!(data["trace"], trace.as_str());
    assert_eq!(data["payload"], "lunch?");
    // The status, for its sender, on B.
    let status_path = format!("/notifications/{trace}?as=alice");
    let status = client::fetch(b.addr(), Method::GET, &status_path, &[], "").await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.text());
    assert_eq!(status.json()["delivered"], false);
    // Bob replies on B; Alice, connecting to B, gets the reply.
    let reply_path = format!("/notifications/{trace}/reply?as=bob");
    let replied = client::fetch(b.addr(), Method::POST, &reply_path, &[], r#""yes""#).await;
    assert_eq!(replied.status, StatusCode::OK, "{}", replied.text());
    let mut alice = client::get(b.addr(), "/events?as=alice", &[]).await;
    let reply = alice.next_of_type("notification.reply").await;
    assert!(reply.data.contains(r#""yes""#), "{reply:?}");
    let status = client::fetch(b.addr(), Method::GET, &status_path, &[], "").await;
    assert_eq!(
        (
            status.json()["delivered"].clone(),
            status.json()["replied"].clone()
        ),
        (true.into(), true.into())
    );

    // Redis gone: the mailbox's routes answer 503 with Retry-After.
    redis.kill();
    eventually_async("B to see Redis gone", || async {
        client::fetch(b.addr(), Method::GET, "/ready", &[], "")
            .await
            .status
            == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let refused = notify(&b, "alice", r#"{"to": "bob", "payload": 1}"#).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert!(refused.header("retry-after").is_some());
    let status = client::fetch(b.addr(), Method::GET, &status_path, &[], "").await;
    assert_eq!(
        status.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        status.text()
    );
    assert!(status.header("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_on_one_replica_racing_a_confirmation_on_another_ends_as_one_process_would() {
    let redis = RedisServer::start().await;
    let (_a, on_a) = node(&redis).await;
    let (_b, on_b) = node(&redis).await;
    const N: usize = 40;
    let mut traces = Vec::new();
    for i in 0..N {
        let ask = Notification::to("bob")
            .from(if i % 2 == 0 { "alice" } else { "carol" })
            .json(&i)
            .unwrap()
            .expects_reply();
        traces.push(on_a.send(ask).await.unwrap());
    }
    // Each record: a reply on A and an ack on B at the same moment, and a
    // second reply on B racing the first.
    let races = traces.iter().map(|trace| {
        let (on_a, on_b, trace) = (on_a.clone(), on_b.clone(), trace.clone());
        tokio::spawn(async move {
            let (first, ack, second) = tokio::join!(
                on_a.reply(&trace, "bob", "from A"),
                on_b.ack(&trace, "bob"),
                on_b.reply(&trace, "bob", "from B"),
            );
            (first, ack.unwrap(), second)
        })
    });
    let mut outcomes = Vec::new();
    for race in races {
        outcomes.push(race.await.unwrap());
    }
    for (trace, (first, ack, second)) in traces.iter().zip(outcomes) {
        assert!(ack, "bob is the target");
        // Exactly one reply won, and the record holds that one.
        let won = match (&first, &second) {
            (Ok(_), Err(ReplyError::AlreadyReplied)) => "from A",
            (Err(ReplyError::AlreadyReplied), Ok(_)) => "from B",
            other => panic!("not exactly one reply won: {other:?}"),
        };
        let status = on_b.status(trace).await.unwrap().unwrap();
        assert!(status.delivered && status.replied);
        let reply = status.reply.unwrap();
        assert_eq!(reply.payload, serde_json::to_vec(won).unwrap());
    }
    // Each confirmed once, whoever confirmed it first.
    let stats = on_a.stats().await.unwrap();
    assert_eq!(
        (stats.sent, stats.delivered, stats.held),
        (N as u64, N as u64, N)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_on_two_replicas_each_get_it_and_either_id_proves_it() {
    let redis = RedisServer::start().await;
    let (_a, on_a) = node(&redis).await;
    let (_b, on_b) = node(&redis).await;
    let (mut tab_a, _g1) = on_a.subscribe("bob", None).await.unwrap();
    let (mut tab_b, _g2) = on_b.subscribe("bob", None).await.unwrap();
    let first = on_b.send(note("bob", "alice", "one")).await.unwrap();
    let second = on_a.send(note("bob", "alice", "two")).await.unwrap();
    // Live on both tabs, the same ids on both, in the stream's order.
    let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        seen_a.push(next_event(&mut tab_a).await);
        seen_b.push(next_event(&mut tab_b).await);
    }
    assert_eq!(seen_a, seen_b);
    let traces: Vec<&str> = seen_a
        .iter()
        .map(|(_, _, d)| d["trace"].as_str().unwrap())
        .collect();
    assert_eq!(traces, [first.as_str(), second.as_str()]);
    // Tab A reconnects to B with the first id only: the first is proven,
    // the second is sent again, to that stream alone.
    let first_id = seen_a[0].1.clone();
    let (mut again, _g3) = on_b.subscribe("bob", Some(&first_id)).await.unwrap();
    assert!(on_a.status(&first).await.unwrap().unwrap().delivered);
    assert!(!on_a.status(&second).await.unwrap().unwrap().delivered);
    let (_, resent_id, data) = next_event(&mut again).await;
    assert_eq!(data["trace"], second.as_str());
    // Tab B, still open, was not sent that copy: a third goes live to
    // both, and tab B's next event is it.
    let third = on_a.send(note("bob", "alice", "three")).await.unwrap();
    let (_, _, data) = next_event(&mut tab_b).await;
    assert_eq!(data["trace"], third.as_str());
    // The copy's id, shown on A, proves the second there.
    let (_tab, _g4) = on_a.subscribe("bob", Some(&resent_id)).await.unwrap();
    assert!(on_b.status(&second).await.unwrap().unwrap().delivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_send_acknowledged_survives_a_redis_crash_with_appendfsync_always() {
    let mut redis = RedisServer::start_persistent().await;
    let (a, on_a) = node(&redis).await;
    let mut traces = Vec::new();
    for i in 0..20 {
        traces.push(
            on_a.send(note("bob", "alice", &i.to_string()))
                .await
                .unwrap(),
        );
    }
    redis.kill();
    redis.restart().await;
    in_step(&a).await;
    let (_b, on_b) = node(&redis).await;
    assert_eq!(on_b.stats().await.unwrap().held, 20);
    let (mut bob, _guard) = on_b.subscribe("bob", None).await.unwrap();
    for trace in &traces {
        let (_, _, data) = next_event(&mut bob).await;
        assert_eq!(data["trace"], trace.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_503_with_retry_after_while_redis_is_unreachable() {
    use http_body_util::Full;
    use tower::Layer;
    use tower_sse::mailbox::MailboxLayer;

    let mut redis = RedisServer::start().await;
    let (a, on_a) = node(&redis).await;
    let ask = Notification::to("bob")
        .from("alice")
        .json("?")
        .unwrap()
        .expects_reply();
    let trace = on_a.send(ask).await.unwrap();
    let routes = MailboxLayer::new(on_a.clone())
        .identify(|parts: &http::request::Parts| parts.uri.query().map(str::to_owned))
        .layer(tower::service_fn(
            |_: http::Request<Full<bytes::Bytes>>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(
                    Full::<bytes::Bytes>::default(),
                ))
            },
        ));
    let ask = |method: Method, path: String| {
        let mut request = client::request(method, &path);
        *request.body_mut() = Full::from(r#""ok""#);
        client::call(routes.clone(), request)
    };
    let status = ask(Method::GET, format!("/notifications/{trace}?alice")).await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.text());
    redis.kill();
    eventually("the replica to see Redis gone", || !a.stats().connected).await;
    for (method, path) in [
        (Method::GET, format!("/notifications/{trace}?alice")),
        (Method::POST, format!("/notifications/{trace}/reply?bob")),
        (Method::POST, format!("/notifications/{trace}/ack?bob")),
    ] {
        let refused = ask(method, path.clone()).await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(refused.header("retry-after"), Some("5"), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opening_costs_the_shared_stream_nothing_however_often_a_client_reconnects() {
    let redis = RedisServer::start().await;
    let (_a, on_a) = node(&redis).await;
    let (_b, on_b) = node(&redis).await;
    for i in 0..10 {
        on_a.send(note("bob", "alice", &i.to_string()))
            .await
            .unwrap();
    }
    let xlen = redis::cmd("XLEN").arg("test:events").clone();
    let length = || redis.query::<usize>(&xlen);
    assert_eq!(length().await, 10, "one entry per send");
    // Bob reconnects again and again, without proof: each stream gets its
    // own copy of all ten, and the stream every replica reads (and its
    // retention, which everyone's resume relies on) does not grow.
    for _ in 0..20 {
        let (mut sub, _guard) = on_b.subscribe("bob", None).await.unwrap();
        for i in 0..10 {
            let (_, _, data) = next_event(&mut sub).await;
            assert_eq!(data["payload"], i.to_string());
        }
    }
    assert_eq!(length().await, 10);
    assert_eq!(on_a.stats().await.unwrap().published, 10 + 20 * 10);
}

type Body = http_body_util::Empty<bytes::Bytes>;

/// The events route of a replica with its Redis mailbox as the hook, every
/// stream bob's, serving no other route.
fn bob_events(
    replica: &Replica,
    mailbox: &RedisMailbox,
) -> impl tower::Service<
    http::Request<Body>,
    Response = http::Response<tower_sse::sse::ResponseBody<Body>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    use tower::Layer;
    use tower_sse::{Grant, Rejection, SseLayer, Topics};
    let authorize = |_: &http::request::Parts| -> Result<Grant, Rejection> {
        Ok(Grant::new(Topics::parse(["public"]).unwrap()).client("bob"))
    };
    SseLayer::new(replica.broker().clone())
        .authorize(authorize)
        .hook(mailbox.clone())
        .layer(tower::service_fn(|_: http::Request<Body>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::new()))
        }))
}

/// What a stream's body shows until `until` is in it.
async fn read_until(body: &mut tower_sse::sse::ResponseBody<Body>, until: &str) -> String {
    use http_body_util::BodyExt;
    let mut seen = String::new();
    while !seen.contains(until) {
        let frame = within("a frame", body.frame()).await.unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&frame.into_data().unwrap()));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_event_id_on_the_events_route_proves_what_it_names() {
    use tower::ServiceExt;
    let redis = RedisServer::start().await;
    let (a, on_a) = node(&redis).await;
    let events = bob_events(&a, &on_a);
    let open = |last_event_id: Option<&str>| {
        let mut request = http::Request::get("/events");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let events = events.clone();
        let request = request.body(Body::new()).unwrap();
        async move { events.oneshot(request).await.unwrap().into_body() }
    };
    let trace = on_a.send(note("bob", "alice", "held")).await.unwrap();
    // Shown on a stream: not yet proven (the client may not have it).
    let mut first = open(None).await;
    let shown = read_until(&mut first, "\n\n").await;
    assert!(shown.contains("event: notification"), "{shown}");
    let id = shown
        .lines()
        .find_map(|line| line.strip_prefix("id: "))
        .expect("an id")
        .to_owned();
    drop(first);
    assert!(!on_a.status(&trace).await.unwrap().unwrap().delivered);
    // Its id, sent back on the next stream, proves it: it is not sent
    // again, and the next notification is the stream's first.
    let mut again = open(Some(&id)).await;
    let next = on_a.send(note("bob", "alice", "next")).await.unwrap();
    let shown = read_until(&mut again, next.as_str()).await;
    assert!(!shown.contains(trace.as_str()), "{shown}");
    assert!(on_a.status(&trace).await.unwrap().unwrap().delivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_opening_cannot_reach_redis_ends_before_showing_any_id() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let mut redis = RedisServer::start().await;
    let (a, on_a) = node(&redis).await;
    on_a.send(note("bob", "alice", "held")).await.unwrap();
    let events = bob_events(&a, &on_a);
    let open = || async {
        let request = http::Request::get("/events").body(Body::new()).unwrap();
        let body = events.clone().oneshot(request).await.unwrap().into_body();
        within("the stream", body.collect()).await
    };
    // With Redis: the held notification comes (the stream stays open).
    let request = http::Request::get("/events").body(Body::new()).unwrap();
    let mut body = events.clone().oneshot(request).await.unwrap().into_body();
    read_until(&mut body, "event: notification").await;
    // Without: the stream ends after its retry hint, having shown no id
    // (one would seem to prove the held notification, never sent to it).
    redis.kill();
    eventually("the replica to see Redis gone", || !a.stats().connected).await;
    let ended = open().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&ended);
    assert!(text.starts_with("retry:"), "{text}");
    assert!(!text.contains("id:"), "{text}");
}
