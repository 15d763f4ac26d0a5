//! The mailbox over real loopback TCP, mounted on an axum app the way an
//! app would: identity comes from the app's own middleware (here a
//! test-only `x-user` header put into the request extensions), the events
//! route names the connection's client from it, and the notification routes
//! read it back. Covers delivery on connect and live, several tabs, what a
//! cut connection does and does not prove, acknowledgement, the status
//! route, replies and every refusal, read-only mode and the per-target cap.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use eventsource_stream::Event as SseEvent;
use http::request::Parts;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use tower_sse::mailbox::{Mailbox, MailboxBuilder, MailboxLayer, Notification, TraceId};
use tower_sse::mode::ServerMode;
use tower_sse::{
    Broker, Event, Grant, ManualClock, Rejection, RequireWritableLayer, SseLayer, Topic, Topics,
};

use crate::support::client::{self, fetch, Reply};
use crate::support::raw::{post_chunked_stalled, post_chunked_streaming};
use crate::support::server::serve_axum;
use crate::support::sse::{seq_of, Client};
use crate::support::wait::eventually;

const EPOCH: u64 = 42;
const MARKER: &str = "marker";

/// The header the test app takes identity from.
const USER_HEADER: &str = "x-user";

/// The app's notion of who is asking, set by its auth middleware.
#[derive(Clone, Debug)]
struct User(String);

/// The test app's "authentication": trusts a test-only header. The crate
/// never sees the header; it only reads the `User` extension.
async fn authenticate(mut request: Request, next: Next) -> Response {
    let user = request
        .headers()
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(user) = user {
        request.extensions_mut().insert(User(user));
    }
    next.run(request).await
}

fn user_of(parts: &Parts) -> Option<String> {
    parts.extensions.get::<User>().map(|u| u.0.clone())
}

fn authorize(parts: &Parts) -> Result<Grant, Rejection> {
    let user = user_of(parts).ok_or_else(|| Rejection::unauthorized("log in"))?;
    let public = Topics::one(Topic::new("public").expect("topic"));
    Ok(Grant::new(public).client(user))
}

struct Server {
    addr: SocketAddr,
    broker: Broker,
    mailbox: Mailbox,
    mode: ServerMode,
    clock: ManualClock,
    markers: AtomicUsize,
}

/// Serves the app on a loopback port with `axum::serve`; `configure` sets
/// the mailbox's bounds (its clock is always a [`ManualClock`]).
async fn start(configure: impl FnOnce(MailboxBuilder) -> MailboxBuilder) -> Server {
    let broker = Broker::builder().epoch(EPOCH).build();
    let clock = ManualClock::new();
    let mailbox = configure(Mailbox::builder(broker.clone()).clock(clock.clone())).build();
    let mode = ServerMode::new();
    let app = Router::new()
        .route("/", get(|| async { "the app" }))
        .layer(MailboxLayer::new(mailbox.clone()).identify(user_of))
        .layer(
            SseLayer::new(broker.clone())
                .authorize(authorize)
                .mailbox(mailbox.clone()),
        )
        .layer(middleware::from_fn(authenticate))
        .layer(RequireWritableLayer::new(mode.clone()));
    let addr = serve_axum(app).await;
    Server {
        addr,
        broker,
        mailbox,
        mode,
        clock,
        markers: AtomicUsize::new(0),
    }
}

impl Server {
    /// What the app does to notify: the crate has no send route.
    fn send(&self, to: &str, from: &str, payload: Value, expects_reply: bool) -> TraceId {
        let mut notification = Notification::to(to)
            .from(from)
            .json(&payload)
            .expect("JSON");
        if expects_reply {
            notification = notification.expects_reply();
        }
        self.mailbox.send(notification).expect("send")
    }

    async fn open(&self, user: &str, resume: Option<&str>) -> Client {
        open_tab(self.addr, user, "/events", resume).await
    }

    /// Publishes a marker on the public topic, which every tab watches;
    /// returns its tag and its id. Events go out in order, so a tab that
    /// reads up to the marker has read everything sent to it before.
    fn marker(&self) -> (String, String) {
        let tag = format!("m{}", self.markers.fetch_add(1, Ordering::Relaxed));
        let id = self
            .broker
            .publish(Event::new(MARKER).data(tag.clone()))
            .expect("publish marker");
        (tag, id.to_string())
    }

    /// Everything `tab` gets before a marker published now.
    async fn drain(&self, tab: &mut Client) -> Vec<SseEvent> {
        let (tag, _) = self.marker();
        until_marker(tab, &tag).await
    }

    async fn status(&self, user: Option<&str>, trace: &str) -> Reply {
        let path = format!("/notifications/{trace}");
        call(self.addr, Method::GET, &path, user, "").await
    }

    async fn reply(&self, user: Option<&str>, trace: &str, body: &str) -> Reply {
        let path = format!("/notifications/{trace}/reply");
        call(self.addr, Method::POST, &path, user, body).await
    }

    async fn ack(&self, user: Option<&str>, trace: &str) -> Reply {
        let path = format!("/notifications/{trace}/ack");
        call(self.addr, Method::POST, &path, user, "").await
    }

    /// `delivered` of `trace` as its sender sees it on the status route.
    async fn delivered(&self, sender: &str, trace: &TraceId) -> bool {
        let status = self.status(Some(sender), trace.as_str()).await;
        assert_eq!(status.status, StatusCode::OK, "{}", status.text());
        status.json()["delivered"]
            .as_bool()
            .expect("delivered is a bool")
    }

    /// Waits until the server has noticed that no stream of any client is
    /// open any more.
    async fn all_offline(&self) {
        eventually("the server to notice the cut connections", || {
            self.mailbox.stats().online == 0
        })
        .await;
    }
}

/// Opens the events route at `path` as `user`, with `Last-Event-ID: resume`
/// if given: a browser tab. Fails the test unless it is a 200 event stream;
/// nothing of the body is read yet. Dropping the tab cuts its connection,
/// whatever it had or had not read.
async fn open_tab(addr: SocketAddr, user: &str, path: &str, resume: Option<&str>) -> Client {
    let mut headers = vec![(USER_HEADER, user)];
    headers.extend(resume.map(|id| ("last-event-id", id)));
    let tab = client::get(addr, path, &headers).await;
    assert_eq!(
        tab.status,
        StatusCode::OK,
        "the events route refused {user}"
    );
    assert_eq!(
        tab.header(http::header::CONTENT_TYPE),
        Some("text/event-stream")
    );
    tab
}

/// Reads `tab` up to the marker whose data is `tag`; returns every other
/// event before it, markers left out.
async fn until_marker(tab: &mut Client, tag: &str) -> Vec<SseEvent> {
    let mut seen = Vec::new();
    loop {
        let event = tab.next_event().await;
        if event.event == MARKER {
            if event.data == tag {
                return seen;
            }
            continue;
        }
        seen.push(event);
    }
}

/// `method path` as `user` (no identity header if `None`) with a JSON
/// `body`, on a fresh connection; reads the whole answer.
async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    user: Option<&str>,
    body: &str,
) -> Reply {
    let mut headers = Vec::new();
    headers.extend(user.map(|user| (USER_HEADER, user)));
    if !body.is_empty() {
        headers.push(("content-type", "application/json"));
    }
    fetch(addr, method, path, &headers, body).await
}

/// The JSON data of a `notification` frame; fails on any other event.
fn notification(event: &SseEvent) -> Value {
    assert_eq!(event.event, "notification", "not a notification: {event:?}");
    serde_json::from_str(&event.data)
        .unwrap_or_else(|e| panic!("notification data is not JSON ({e}): {:?}", event.data))
}

/// The traces of the events, which must all be notifications.
fn traces(events: &[SseEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            notification(e)["trace"]
                .as_str()
                .expect("trace is a string")
                .to_owned()
        })
        .collect()
}

fn t(trace: &TraceId) -> String {
    trace.as_str().to_owned()
}

// 1. Pending first, then live, on every tab, to nobody else.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_notifications_come_first_then_live_ones_on_every_tab_and_to_nobody_else() {
    let server = start(|b| b).await;
    let n1 = server.send("bob", "alice", json!({"text": "lunch?"}), true);
    let n2 = server.send("bob", "carol", json!([1, 2, 3]), false);
    let for_eve = server.send("eve", "alice", json!("hello eve"), false);

    // Bob's first tab: what was held comes first, oldest first, with the
    // fields a client needs.
    let mut tab1 = server.open("bob", None).await;
    let first = notification(&tab1.next_event().await);
    assert_eq!(first["trace"], json!(t(&n1)));
    assert_eq!(first["from"], json!("alice"));
    assert_eq!(first["payload"], json!({"text": "lunch?"}));
    assert_eq!(first["expects_reply"], json!(true));
    assert!(first["created"].is_string(), "{first}");
    let second = notification(&tab1.next_event().await);
    assert_eq!(second["trace"], json!(t(&n2)));
    assert_eq!(second["from"], json!("carol"));
    assert_eq!(second["payload"], json!([1, 2, 3]));
    assert_eq!(second["expects_reply"], json!(false));

    // A second tab: neither is confirmed yet, so it gets both too.
    let mut tab2 = server.open("bob", None).await;
    assert_eq!(traces(&server.drain(&mut tab2).await), [t(&n1), t(&n2)]);
    let mut eve = server.open("eve", None).await;
    let mut alice = server.open("alice", None).await;

    // Sent while both tabs are open: each tab gets it live.
    let n3 = server.send("bob", "alice", json!({"text": "now"}), true);
    let (tag, _) = server.marker();
    let on_tab1 = traces(&until_marker(&mut tab1, &tag).await);
    let live = until_marker(&mut tab2, &tag).await;
    assert_eq!(traces(&live), [t(&n3)], "tab 2 after it caught up");
    let frame = notification(&live[0]);
    assert_eq!(frame["from"], json!("alice"));
    assert_eq!(frame["payload"], json!({"text": "now"}));
    assert_eq!(frame["expects_reply"], json!(true));
    // Tab 1 may see the held ones again (tab 2's connect resent them), but
    // n3 only once, and last.
    assert_eq!(on_tab1.last(), Some(&t(&n3)), "tab 1: {on_tab1:?}");
    assert_eq!(on_tab1.iter().filter(|x| **x == t(&n3)).count(), 1);
    assert!(
        on_tab1[..on_tab1.len() - 1]
            .iter()
            .all(|x| *x == t(&n1) || *x == t(&n2)),
        "tab 1: {on_tab1:?}"
    );

    // Eve gets hers and nothing of Bob's; Alice, the sender, gets nothing.
    let (tag, _) = server.marker();
    assert_eq!(traces(&until_marker(&mut eve, &tag).await), [t(&for_eve)]);
    assert_eq!(
        traces(&until_marker(&mut alice, &tag).await),
        Vec::<String>::new()
    );
}

// 2. Delivered only on proof; a cut connection loses nothing.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_counts_as_delivered_only_once_a_later_last_event_id_covers_it() {
    let server = start(|b| b).await;
    let mut tab = server.open("bob", None).await;
    let a = server.send("bob", "alice", json!("A"), false);
    let a_frame = tab.next_event().await;
    assert_eq!(traces(std::slice::from_ref(&a_frame)), [t(&a)]);
    // Read by the client, but nothing tells the server so yet.
    assert!(!server.delivered("alice", &a).await);
    assert!(!server.mailbox.status(&a).expect("held").delivered);

    // B goes out on the same stream, but the connection is cut before the
    // client reads it.
    let b = server.send("bob", "alice", json!("B"), false);
    drop(tab);
    server.all_offline().await;
    assert!(!server.delivered("alice", &a).await);
    assert!(!server.delivered("alice", &b).await);

    // Reconnecting at exactly A's frame proves A arrived, not B.
    let mut tab = server.open("bob", Some(&a_frame.id)).await;
    assert!(server.delivered("alice", &a).await, "A is proven");
    assert!(!server.delivered("alice", &b).await, "B is not");
    let status = server.status(Some("bob"), a.as_str()).await.json();
    assert!(status["delivered_at"].is_string(), "{status}");
    let again = server.drain(&mut tab).await;
    let again_traces = traces(&again);
    assert!(
        again_traces.contains(&t(&b)),
        "B comes again: {again_traces:?}"
    );
    assert!(
        again_traces.iter().all(|x| *x == t(&b)),
        "only B comes again, A is not sent again: {again_traces:?}"
    );
    let last_b = again.last().expect("a B frame").id.clone();

    // A Last-Event-ID from another epoch (another server run) proves
    // nothing: B stays pending and comes again.
    drop(tab);
    server.all_offline().await;
    let foreign = format!("{}-{}", EPOCH + 1, 1_000_000);
    let mut tab = server.open("bob", Some(&foreign)).await;
    assert!(
        !server.delivered("alice", &b).await,
        "a foreign id proves nothing"
    );
    let again = server.drain(&mut tab).await;
    let notifications: Vec<_> = again
        .iter()
        .filter(|e| e.event == "notification")
        .cloned()
        .collect();
    assert_eq!(traces(&notifications), [t(&b)]);
    let others: Vec<&str> = again
        .iter()
        .filter(|e| e.event != "notification")
        .map(|e| e.event.as_str())
        .collect();
    assert_eq!(others, ["resync"], "the broker says it cannot resume");

    // Reconnecting past B's frame (at a later event) proves B arrived; it
    // is not sent again.
    drop(tab);
    server.all_offline().await;
    let (_, past) = server.marker();
    assert!(seq_of(&last_b) < seq_of(&past), "{last_b} < {past}");
    let mut tab = server.open("bob", Some(&past)).await;
    assert!(server.delivered("alice", &b).await, "B is proven");
    assert_eq!(traces(&server.drain(&mut tab).await), Vec::<String>::new());

    // And a fresh connection without any id gets nothing either.
    let mut fresh = server.open("bob", None).await;
    assert_eq!(
        traces(&server.drain(&mut fresh).await),
        Vec::<String>::new()
    );
    assert_eq!(server.mailbox.stats().delivered, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_before_reading_gets_it_again_until_acknowledged() {
    let server = start(|b| b).await;
    let tab = server.open("bob", None).await;
    let n = server.send("bob", "alice", json!({"k": "v"}), false);
    // Cut without reading a single event.
    drop(tab);
    server.all_offline().await;
    assert!(!server.delivered("alice", &n).await);

    // Every new connection gets it again while it is not confirmed.
    for _ in 0..2 {
        let mut tab = server.open("bob", None).await;
        let frame = notification(&tab.next_event().await);
        assert_eq!(frame["trace"], json!(t(&n)));
        assert_eq!(frame["payload"], json!({"k": "v"}));
        drop(tab);
        server.all_offline().await;
    }

    // The ack route: the target only; anyone else gets the 404 an unknown
    // trace gets, and the notification stays unconfirmed.
    let unknown = "0123456789abcdef0123456789abcdef";
    let not_found = server.ack(Some("bob"), unknown).await;
    assert_eq!(not_found.status, StatusCode::NOT_FOUND);
    for user in ["alice", "eve"] {
        let refused = server.ack(Some(user), n.as_str()).await;
        assert_eq!(refused.status, StatusCode::NOT_FOUND, "{user}");
        assert_eq!(refused.body, not_found.body, "{user}");
    }
    assert_eq!(
        server.ack(None, n.as_str()).await.status,
        StatusCode::UNAUTHORIZED
    );
    let wrong_method = call(
        server.addr,
        Method::GET,
        &format!("/notifications/{n}/ack"),
        Some("bob"),
        "",
    )
    .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    assert!(!server.delivered("alice", &n).await);

    let acked = server.ack(Some("bob"), n.as_str()).await;
    assert_eq!(acked.status, StatusCode::NO_CONTENT, "{}", acked.text());
    assert!(acked.body.is_empty());
    assert!(server.delivered("alice", &n).await);
    // Acknowledging twice is harmless.
    assert_eq!(
        server.ack(Some("bob"), n.as_str()).await.status,
        StatusCode::NO_CONTENT
    );

    // Confirmed: a new connection no longer gets it.
    let mut tab = server.open("bob", None).await;
    assert_eq!(traces(&server.drain(&mut tab).await), Vec::<String>::new());
}

// 3. Status and replies over HTTP.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_route_answers_sender_and_target_and_the_same_404_to_anyone_else() {
    let server = start(|b| b).await;
    let n = server.send("bob", "alice", json!({"q": 1}), true);

    for user in ["alice", "bob"] {
        let answer = server.status(Some(user), n.as_str()).await;
        assert_eq!(answer.status, StatusCode::OK, "{user}: {}", answer.text());
        assert_eq!(answer.header("content-type"), Some("application/json"));
        let status = answer.json();
        assert_eq!(status["trace"], json!(t(&n)));
        assert_eq!(status["from"], json!("alice"));
        assert_eq!(status["to"], json!("bob"));
        assert_eq!(status["expects_reply"], json!(true));
        assert!(status["created"].is_string(), "{status}");
        assert_eq!(status["delivered"], json!(false));
        assert_eq!(status["replied"], json!(false));
        assert_eq!(status["reply"], Value::Null);
        assert_eq!(status["replied_at"], Value::Null);
    }

    // Anyone else, an unknown trace and malformed ones: one and the same
    // answer, so that a trace cannot be probed.
    let outsider = server.status(Some("eve"), n.as_str()).await;
    assert_eq!(outsider.status, StatusCode::NOT_FOUND);
    let upper = n.as_str().to_ascii_uppercase();
    let longer = format!("{n}0");
    let shorter = &n.as_str()[1..];
    for (who, trace) in [
        ("bob", "0123456789abcdef0123456789abcdef"),
        ("bob", "not-a-trace"),
        ("bob", upper.as_str()),
        ("bob", longer.as_str()),
        ("bob", shorter),
    ] {
        let answer = server.status(Some(who), trace).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{trace}");
        assert_eq!(answer.body, outsider.body, "{trace}");
        assert_eq!(
            answer.header("content-type"),
            outsider.header("content-type")
        );
    }

    // No identity: 401, known trace or not.
    for trace in [n.as_str(), "0123456789abcdef0123456789abcdef"] {
        let answer = server.status(None, trace).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{trace}");
    }

    let wrong_method = call(
        server.addr,
        Method::DELETE,
        &format!("/notifications/{n}"),
        Some("alice"),
        "",
    )
    .await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.header("allow"), Some("GET, HEAD"));

    // Other paths go on to the app.
    let app = call(server.addr, Method::GET, "/", None, "").await;
    assert_eq!((app.status, app.text()), (StatusCode::OK, "the app"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_shows_in_the_status_and_reaches_the_senders_stream_live() {
    let server = start(|b| b).await;
    let mut alice = server.open("alice", None).await;
    let n = server.send("bob", "alice", json!({"text": "lunch?"}), true);

    let replied = server
        .reply(Some("bob"), n.as_str(), r#"{"answer":"yes"}"#)
        .await;
    assert_eq!(replied.status, StatusCode::OK, "{}", replied.text());
    let body = replied.json();
    assert_eq!(body["trace"], json!(t(&n)));
    assert_eq!(body["replied"], json!(true));
    assert_eq!(body["reply"], json!({"answer": "yes"}));

    for user in ["alice", "bob"] {
        let status = server.status(Some(user), n.as_str()).await.json();
        assert_eq!(status["replied"], json!(true), "{user}");
        assert_eq!(status["reply"], json!({"answer": "yes"}), "{user}");
        assert!(status["replied_at"].is_string(), "{status}");
        // Answering proves it arrived.
        assert_eq!(status["delivered"], json!(true), "{user}");
    }

    let frame = alice.next_event().await;
    assert_eq!(frame.event, "notification.reply", "{frame:?}");
    let data: Value = serde_json::from_str(&frame.data).expect("reply data is JSON");
    assert_eq!(data["trace"], json!(t(&n)));
    assert_eq!(data["by"], json!("bob"));
    assert_eq!(data["payload"], json!({"answer": "yes"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_reply_has_its_own_answer_and_changes_nothing() {
    let server = start(|b| b.max_payload(64)).await;
    let mut alice = server.open("alice", None).await;
    let n = server.send("bob", "alice", json!("question"), true);
    let unknown = "0123456789abcdef0123456789abcdef";
    let not_found = server.status(Some("bob"), unknown).await;
    assert_eq!(not_found.status, StatusCode::NOT_FOUND);

    // Not the target (the sender included), unknown or malformed: 404,
    // the status route's very answer.
    for (user, trace) in [
        ("eve", n.as_str()),
        ("alice", n.as_str()),
        ("bob", unknown),
        ("bob", "zz"),
    ] {
        let answer = server.reply(Some(user), trace, r#""mine""#).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{user} {trace}");
        assert_eq!(answer.body, not_found.body, "{user} {trace}");
    }
    let anonymous = server.reply(None, n.as_str(), r#""x""#).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let get = call(
        server.addr,
        Method::GET,
        &format!("/notifications/{n}/reply"),
        Some("bob"),
        "",
    )
    .await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get.header("allow"), Some("POST"));

    let not_json = server.reply(Some("bob"), n.as_str(), "yes please").await;
    assert_eq!(
        not_json.status,
        StatusCode::BAD_REQUEST,
        "{}",
        not_json.text()
    );
    let big = format!("\"{}\"", "x".repeat(100));
    let too_large = server.reply(Some("bob"), n.as_str(), &big).await;
    assert_eq!(
        too_large.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        too_large.text()
    );

    // None of that touched it.
    let status = server.status(Some("alice"), n.as_str()).await.json();
    assert_eq!(status["replied"], json!(false), "{status}");
    assert_eq!(status["reply"], Value::Null);

    // The one reply, then a second: 409.
    let ok = server.reply(Some("bob"), n.as_str(), r#""first""#).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let twice = server.reply(Some("bob"), n.as_str(), r#""second""#).await;
    assert_eq!(twice.status, StatusCode::CONFLICT, "{}", twice.text());
    let status = server.status(Some("alice"), n.as_str()).await.json();
    assert_eq!(status["reply"], json!("first"), "the first reply stands");

    // A notification that expects no reply: 409 too, with its own message.
    let fyi = server.send("bob", "alice", json!("fyi"), false);
    let unexpected = server.reply(Some("bob"), fyi.as_str(), r#""ok""#).await;
    assert_eq!(
        unexpected.status,
        StatusCode::CONFLICT,
        "{}",
        unexpected.text()
    );
    assert_ne!(unexpected.error(), twice.error());
    let status = server.status(Some("alice"), fyi.as_str()).await.json();
    assert_eq!(status["replied"], json!(false));

    // Alice's stream got exactly the one reply.
    let replies: Vec<Value> = server
        .drain(&mut alice)
        .await
        .iter()
        .map(|e| {
            assert_eq!(e.event, "notification.reply", "{e:?}");
            serde_json::from_str(&e.data).expect("JSON")
        })
        .collect();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0]["payload"], json!("first"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_after_expiry_is_gone_and_not_found_once_purged() {
    let server = start(|b| b.ttl(Duration::from_secs(60))).await;
    let unknown = "0123456789abcdef0123456789abcdef";
    let not_found = server.status(Some("bob"), unknown).await;

    // Purged by hand.
    let n = server.send("bob", "alice", json!("soon stale"), true);
    server.clock.advance(Duration::from_secs(61));
    // Nothing may look at it in between: every use of the mailbox purges.
    let gone = server.reply(Some("bob"), n.as_str(), r#""late""#).await;
    assert_eq!(gone.status, StatusCode::GONE, "{}", gone.text());
    assert_eq!(server.mailbox.purge_expired(), 1);
    let purged = server.reply(Some("bob"), n.as_str(), r#""late""#).await;
    assert_eq!(purged.status, StatusCode::NOT_FOUND, "{}", purged.text());
    assert_eq!(purged.body, not_found.body);
    let status = server.status(Some("alice"), n.as_str()).await;
    assert_eq!(status.status, StatusCode::NOT_FOUND);

    // Purged by the janitor.
    let m = server.send("bob", "alice", json!("also stale"), true);
    server.clock.advance(Duration::from_secs(61));
    let gone_again = server.reply(Some("bob"), m.as_str(), r#""late""#).await;
    assert_eq!(gone_again.status, StatusCode::GONE, "{}", gone_again.text());
    assert_ne!(gone_again.error(), not_found.error());
    let janitor = server.mailbox.spawn_janitor(Duration::from_millis(5));
    eventually("the janitor to purge", || {
        server.mailbox.stats().expired == 2
    })
    .await;
    janitor.stop().await;
    let purged = server.reply(Some("bob"), m.as_str(), r#""late""#).await;
    assert_eq!(purged.status, StatusCode::NOT_FOUND, "{}", purged.text());
    assert_eq!(server.mailbox.stats().held, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_reply_body_is_refused_without_being_read_whole() {
    let server = start(|b| b.max_payload(64)).await;
    let n = server.send("bob", "alice", json!("question"), true);
    let path = format!("/notifications/{n}/reply");

    // A chunked body that never ends: the answer cannot wait for its end.
    let first = vec![b' '; 1024];
    let bob = [(USER_HEADER, "bob"), ("content-type", "application/json")];
    let stalled = post_chunked_stalled(server.addr, &path, &bob, &first).await;
    assert_eq!(stalled, StatusCode::PAYLOAD_TOO_LARGE);
    // Nor for a non-target, refused before a byte of the body is read.
    let eve = [(USER_HEADER, "eve"), ("content-type", "application/json")];
    let outsider = post_chunked_stalled(server.addr, &path, &eve, &first).await;
    assert_eq!(outsider, StatusCode::NOT_FOUND);

    // 10 MB streamed in chunks: answered while the client is still
    // sending (its writer is stopped only once the answer is in).
    let huge = post_chunked_streaming(server.addr, &path, &bob, 10 * 1024 * 1024, 64 * 1024).await;
    assert_eq!(huge, StatusCode::PAYLOAD_TOO_LARGE);

    // Nothing changed, and the server still takes a proper reply.
    let status = server.status(Some("alice"), n.as_str()).await.json();
    assert_eq!(status["replied"], json!(false), "{status}");
    let ok = server.reply(Some("bob"), n.as_str(), r#""fits""#).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
}

// 4. Read-only mode.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_refuses_replies_with_503_and_leaves_the_mailbox_unchanged() {
    let server = start(|b| b).await;
    let mut alice = server.open("alice", None).await;
    let n = server.send("bob", "alice", json!("question"), true);

    server.mode.set_read_only("maintenance");
    let refused = server.reply(Some("bob"), n.as_str(), r#""answer""#).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert!(refused.header("retry-after").is_some());
    assert_eq!(refused.json()["mode"], json!("read-only"));
    let acked = server.ack(Some("bob"), n.as_str()).await;
    assert_eq!(acked.status, StatusCode::SERVICE_UNAVAILABLE);

    // Reads still work, and show nothing changed.
    let status = server.status(Some("alice"), n.as_str()).await;
    assert_eq!(status.status, StatusCode::OK);
    assert_eq!(status.json()["replied"], json!(false));
    assert_eq!(status.json()["delivered"], json!(false));
    let held = server.mailbox.status(&n).expect("held");
    assert!(!held.replied && held.reply.is_none() && !held.delivered);
    assert_eq!(
        server.drain(&mut alice).await.len(),
        0,
        "no reply frame went out"
    );

    // Writable again: the same reply goes through.
    server.mode.clear_read_only();
    let ok = server.reply(Some("bob"), n.as_str(), r#""answer""#).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(alice.next_event().await.event, "notification.reply");
}

// 5. The per-target cap.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_target_cap_keeps_the_newest_for_an_offline_client() {
    let server = start(|b| b.per_target(2)).await;
    let n1 = server.send("bob", "alice", json!(1), false);
    let n2 = server.send("bob", "alice", json!(2), false);
    let n3 = server.send("bob", "alice", json!(3), false);
    assert_eq!(server.mailbox.stats().dropped, 1);

    let mut tab = server.open("bob", None).await;
    let got = server.drain(&mut tab).await;
    assert_eq!(traces(&got), [t(&n2), t(&n3)]);
    let payloads: Vec<Value> = got
        .iter()
        .map(|e| notification(e)["payload"].clone())
        .collect();
    assert_eq!(payloads, [json!(2), json!(3)]);

    let unknown = server
        .status(Some("bob"), "0123456789abcdef0123456789abcdef")
        .await;
    for user in ["alice", "bob"] {
        let dropped = server.status(Some(user), n1.as_str()).await;
        assert_eq!(dropped.status, StatusCode::NOT_FOUND, "{user}");
        assert_eq!(dropped.body, unknown.body);
        for kept in [&n2, &n3] {
            let answer = server.status(Some(user), kept.as_str()).await;
            assert_eq!(answer.status, StatusCode::OK, "{user}");
        }
    }
    let reply = server.reply(Some("bob"), n1.as_str(), "1").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn only_an_honoured_last_event_id_header_proves_receipt() {
    let server = start(|b| b).await;
    let mut tab = server.open("bob", None).await;
    let a = server.send("bob", "alice", json!("A"), false);
    let a_frame = tab.next_event().await;
    assert_eq!(traces(std::slice::from_ref(&a_frame)), [t(&a)]);
    drop(tab);
    server.all_offline().await;

    // A `lastEventId` query parameter positions the stream but proves
    // nothing: a page may have been handed that id with its HTML.
    let path = format!("/events?lastEventId={}", a_frame.id);
    let mut tab = open_tab(server.addr, "bob", &path, None).await;
    assert!(
        !server.delivered("alice", &a).await,
        "a query id is no proof"
    );
    assert_eq!(
        traces(&server.drain(&mut tab).await),
        [t(&a)],
        "A comes again"
    );
    drop(tab);
    server.all_offline().await;

    // An id from the future is answered with a resync and proves nothing.
    let future = format!("{EPOCH}-{}", server.broker.last_event_id().seq() + 100);
    let mut tab = server.open("bob", Some(&future)).await;
    assert!(
        !server.delivered("alice", &a).await,
        "a future id is no proof"
    );
    let again = server.drain(&mut tab).await;
    let kinds: Vec<&str> = again.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds, ["resync", "notification"]);
    drop(tab);
    server.all_offline().await;

    // Resuming from before A's latest frame: notifications are not kept in
    // the replay log, so A comes again, once, in a new frame.
    let before = format!("{EPOCH}-{}", seq_of(&a_frame.id) - 1);
    let newest = server.broker.last_event_id().seq();
    let mut tab = server.open("bob", Some(&before)).await;
    let again = server.drain(&mut tab).await;
    assert_eq!(traces(&again), [t(&a)], "{again:?}");
    assert!(seq_of(&again[0].id) > newest, "{again:?}");
    assert!(!server.delivered("alice", &a).await);
}
