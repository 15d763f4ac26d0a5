//! HTTP/2 (h2c): many event streams on one connection, under hyper and under `tower_sse::serve`.
//!
//! What it proves, for both servers (plain hyper with hyper-util's
//! `auto::Builder`, and `tower_sse::serve`), with hyper's HTTP/2 client
//! speaking h2c with prior knowledge over one TCP connection: 100 event
//! streams multiplexed on that one connection each receive every live event
//! (the server saw every request as HTTP/2 from that connection's address,
//! and plain hyper accepted exactly one connection); a stream opened with
//! `Last-Event-ID` gets exactly the events after that id, then live ones,
//! while a fresh stream beside it gets only the live ones; idle h2 streams
//! receive keep-alive comments; a `Shutdown` plus the server's graceful
//! shutdown gives every stream on the connection the final `shutdown`
//! frame and a clean end (`END_STREAM`, not a reset), then the server
//! returns and the connection closes; and an HTTP/1.1 client is served on
//! the same port, beside an open h2 stream. Each stream's bytes are read
//! back with `eventsource-stream` and with the spec-written parser of
//! `support/sse_parser.rs`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use eventsource_stream::Event as SseEvent;
use futures_util::future::join_all;
use http::{Method, Request, StatusCode, Version};
use tokio::task::JoinHandle;
use tower::util::MapRequestLayer;
use tower_sse::serve::PeerAddr;
use tower_sse::{Broker, Event, Shutdown, SseLayer};

use crate::support::client;
use crate::support::h2::H2Connection;
use crate::support::server::{loopback, serve_hyper_until, spawn_serve_until};
use crate::support::sse::Client;
use crate::support::sse_parser::{parse, Dispatched};
use crate::support::stack::{SERVER_STOPS, SHUTDOWN_FRAME};
use crate::support::wait::{eventually, within};

/// Streams on the one connection in the fan-out and shutdown tests.
const STREAMS: usize = 100;
/// Live events published to them.
const EVENTS: usize = 5;

/// The two servers under test.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Plain hyper: hyper-util's `auto::Builder` and `GracefulShutdown`.
    Hyper,
    /// `tower_sse::serve(..).with_graceful_shutdown(..)`.
    Serve,
}

/// What the app saw of each request: its HTTP version and peer.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(Version, SocketAddr)>>>);

impl Seen {
    fn record<B>(&self, request: &Request<B>) {
        let peer = request
            .extensions()
            .get::<PeerAddr>()
            .expect("the server gives every request its peer")
            .0;
        self.0.lock().unwrap().push((request.version(), peer));
    }

    fn all(&self) -> Vec<(Version, SocketAddr)> {
        self.0.lock().unwrap().clone()
    }
}

/// A broker, its events route, the shutdown wired to it, and what the app
/// saw.
struct Fixture {
    broker: Broker,
    layer: SseLayer,
    shutdown: Shutdown,
    seen: Seen,
}

impl Fixture {
    /// Keep-alives off unless `keep_alive` says otherwise, so that every
    /// byte of a stream is known.
    fn new(epoch: u64, keep_alive: Option<Duration>) -> Self {
        let broker = Broker::builder().epoch(epoch).build();
        let layer = SseLayer::new(broker.clone());
        let layer = match keep_alive {
            Some(interval) => layer.keep_alive(interval),
            None => layer.no_keep_alive(),
        };
        let shutdown = Shutdown::new().broker(&broker);
        Self {
            broker,
            layer,
            shutdown,
            seen: Seen::default(),
        }
    }

    /// The app: a plain route and the events route, under a layer that
    /// records each request.
    fn router(&self) -> Router {
        let seen = self.seen.clone();
        Router::new()
            .route("/plain", get(|| async { "plain" }))
            .layer(self.layer.clone())
            .layer(MapRequestLayer::new(
                move |request: Request<axum::body::Body>| {
                    seen.record(&request);
                    request
                },
            ))
    }

    /// Publishes `data` as a `tick` on the default topic; returns the event
    /// as a client should dispatch it.
    fn publish(&self, data: &str) -> Dispatched {
        let id = self
            .broker
            .publish(Event::new("tick").data(data.to_owned()))
            .expect("publish");
        Dispatched {
            event_type: "tick".to_owned(),
            data: data.to_owned(),
            last_event_id: id.to_string(),
        }
    }

    /// Waits until `n` streams are open and subscribed, so that a publish
    /// reaches each of them live.
    async fn subscribed(&self, n: usize) {
        eventually(&format!("{n} streams subscribed"), || {
            self.broker.stats().subscribers == n && self.layer.connections() == n
        })
        .await;
    }
}

/// A running server of either kind.
struct Running {
    kind: Kind,
    addr: SocketAddr,
    /// Connections plain hyper accepted (`tower_sse::serve` does not say).
    accepted: Option<Arc<AtomicUsize>>,
    /// Ends once the shutdown has closed the broker and every connection
    /// has finished.
    task: JoinHandle<()>,
}

impl Running {
    async fn start(kind: Kind, fixture: &Fixture) -> Self {
        let signal = fixture.shutdown.wait();
        match kind {
            Kind::Hyper => {
                let server = serve_hyper_until(fixture.router(), signal).await;
                Self {
                    kind,
                    addr: server.addr,
                    accepted: Some(server.accepted),
                    task: server.task,
                }
            }
            Kind::Serve => {
                let serve = tower_sse::serve(loopback().await, fixture.router());
                let (addr, server) = spawn_serve_until(serve, signal);
                let task = tokio::spawn(async move { server.await.unwrap().expect("serve") });
                Self {
                    kind,
                    addr,
                    accepted: None,
                    task,
                }
            }
        }
    }

    /// Every request the app saw, `n` of them, came over HTTP/2 from `conn`'s
    /// one TCP connection; plain hyper accepted that one connection only.
    fn assert_all_on(&self, conn: &H2Connection, fixture: &Fixture, n: usize) {
        let seen = fixture.seen.all();
        assert_eq!(seen.len(), n, "{:?}: requests seen", self.kind);
        for (version, peer) in seen {
            assert_eq!(version, Version::HTTP_2, "{:?}", self.kind);
            assert_eq!(
                peer,
                conn.local_addr(),
                "{:?}: the request's peer",
                self.kind
            );
        }
        if let Some(accepted) = &self.accepted {
            assert_eq!(accepted.load(Ordering::SeqCst), 1, "connections accepted");
        }
    }
}

/// Opens `n` event streams at once on `conn` and checks each head.
async fn open_streams(conn: &H2Connection, n: usize, headers: &[(&str, &str)]) -> Vec<Client> {
    let clients = join_all((0..n).map(|_| conn.get("/events", headers))).await;
    for (i, client) in clients.iter().enumerate() {
        assert_event_stream(client, &format!("stream {i}"));
    }
    clients
}

fn assert_event_stream(client: &Client, who: &str) {
    assert_eq!(client.status, StatusCode::OK, "{who}");
    assert_eq!(
        client.header("content-type"),
        Some("text/event-stream"),
        "{who}"
    );
}

/// Runs `read` on each client on a task of its own, as independent readers
/// would, and returns the clients once every one is done.
async fn each_on_its_own_task<F, Fut>(clients: Vec<Client>, read: F) -> Vec<Client>
where
    F: Fn(usize, Client) -> Fut,
    Fut: Future<Output = Client> + Send + 'static,
{
    let readers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| tokio::spawn(read(i, client)))
        .collect();
    let mut clients = Vec::with_capacity(readers.len());
    for reader in readers {
        clients.push(within("a reader", reader).await.expect("reader task"));
    }
    clients
}

/// An event as `eventsource-stream` dispatched it, in the spec parser's
/// terms.
fn dispatched(event: &SseEvent) -> Dispatched {
    Dispatched {
        event_type: event.event.clone(),
        data: event.data.clone(),
        last_event_id: event.id.clone(),
    }
}

/// The frame the crate writes for a single-line event.
fn frame(event: &Dispatched) -> String {
    format!(
        "id: {}\nevent: {}\ndata: {}\n\n",
        event.last_event_id, event.event_type, event.data
    )
}

/// Reads `expected.len()` events from `client` and checks them, then checks
/// every byte it received: the `retry:` hint and exactly those frames, as
/// the spec-written parser reads them too.
async fn assert_receives(client: &mut Client, expected: &[Dispatched], who: &str) {
    let events = client.events(expected.len()).await;
    let events: Vec<Dispatched> = events.iter().map(dispatched).collect();
    assert_eq!(events, expected, "{who}");
    let wire: String = expected.iter().map(frame).collect();
    assert_eq!(client.raw(), format!("retry: 3000\n{wire}"), "{who}");
    let parsed = parse(client.raw().as_bytes());
    assert_eq!(parsed.events, expected, "{who}: the spec parser");
    assert_eq!(parsed.retry, Some(3000), "{who}");
}

// The test bodies, one per subject, each run against both servers.

/// 100 streams on one connection; every one receives every live event.
async fn every_stream_on_one_connection_gets_every_event(server: &Running, fixture: &Fixture) {
    let conn = H2Connection::open(server.addr).await;
    let clients = open_streams(&conn, STREAMS, &[]).await;
    fixture.subscribed(STREAMS).await;

    let published: Vec<Dispatched> = (0..EVENTS)
        .map(|i| fixture.publish(&format!("e{i}")))
        .collect();
    each_on_its_own_task(clients, |i, mut client| {
        let published = published.clone();
        async move {
            assert_receives(&mut client, &published, &format!("stream {i}")).await;
            client
        }
    })
    .await;
    server.assert_all_on(&conn, fixture, STREAMS);
    assert_eq!(fixture.broker.stats().lag_reports, 0);
}

/// A stream with `Last-Event-ID` gets exactly the events after it, then
/// live ones; a fresh stream beside it on the same connection only the
/// live ones.
async fn a_resumed_stream_replays_after_its_id_then_goes_live(server: &Running, fixture: &Fixture) {
    let before: Vec<Dispatched> = (1..=5).map(|i| fixture.publish(&format!("e{i}"))).collect();
    let conn = H2Connection::open(server.addr).await;
    let mut fresh = conn.get("/events", &[]).await;
    assert_event_stream(&fresh, "the fresh stream");
    let mut resumed = conn
        .get("/events", &[("last-event-id", &before[1].last_event_id)])
        .await;
    assert_event_stream(&resumed, "the resumed stream");

    // The replay comes without any further publish.
    let replayed: Vec<Dispatched> = resumed.events(3).await.iter().map(dispatched).collect();
    assert_eq!(replayed, before[2..], "the replay");
    fixture.subscribed(2).await;
    let live = fixture.publish("e6");

    let next = dispatched(&resumed.next_event().await);
    assert_eq!(next, live, "the seam: the live event follows the replay");
    // Every byte: the hint, the replay, the live event, nothing else.
    let mut expected = before[2..].to_vec();
    expected.push(live.clone());
    let wire: String = expected.iter().map(frame).collect();
    assert_eq!(resumed.raw(), format!("retry: 3000\n{wire}"));
    assert_eq!(parse(resumed.raw().as_bytes()).events, expected);

    assert_receives(&mut fresh, &[live], "the fresh stream").await;
    server.assert_all_on(&conn, fixture, 2);
    assert_eq!(fixture.broker.stats().resyncs, 0);
}

/// Idle streams on one connection receive keep-alive comments (and only
/// those), then still get events.
async fn idle_streams_receive_keep_alives(server: &Running, fixture: &Fixture) {
    let conn = H2Connection::open(server.addr).await;
    let mut clients = open_streams(&conn, 2, &[]).await;
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .wait_raw("two keep-alive comments", |raw| {
                raw.strip_prefix("retry: 3000\n")
                    .is_some_and(|rest| rest.lines().filter(|l| l.starts_with(':')).count() >= 2)
            })
            .await;
        let raw = client.raw();
        let rest = raw.strip_prefix("retry: 3000\n").unwrap();
        assert!(
            rest.split_inclusive('\n').all(|line| line == ":\n"),
            "stream {i}: comment lines alone: {raw:?}"
        );
    }
    assert_eq!(
        fixture.broker.stats().published,
        0,
        "keep-alives are not events"
    );

    let event = fixture.publish("after the silence");
    for (i, client) in clients.iter_mut().enumerate() {
        let got = dispatched(&client.next_event().await);
        assert_eq!(got, event, "stream {i}");
        assert_eq!(
            parse(client.raw().as_bytes()).events,
            std::slice::from_ref(&event),
            "stream {i}: the comments dispatched nothing"
        );
    }
    server.assert_all_on(&conn, fixture, 2);
}

/// The shutdown closes the broker, the server shuts down gracefully: every
/// stream on the connection gets the final frame and ends cleanly, the
/// server returns, the connection closes.
async fn shutdown_ends_every_stream_on_the_connection(server: Running, fixture: &Fixture) {
    let conn = H2Connection::open(server.addr).await;
    let clients = open_streams(&conn, STREAMS, &[]).await;
    fixture.subscribed(STREAMS).await;
    let last = fixture.publish("before the shutdown");
    // Every stream is live and has read the event before the shutdown.
    let clients = each_on_its_own_task(clients, |i, mut client| {
        let last = last.clone();
        async move {
            assert_receives(&mut client, &[last], &format!("stream {i}")).await;
            client
        }
    })
    .await;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                // Fails on a body error (a reset stream), not only on a hang.
                client.frames_to_end().await;
                client
            })
        })
        .collect();
    server.assert_all_on(&conn, fixture, STREAMS);

    fixture.shutdown.trigger();
    // A hang detector, not a performance threshold.
    let served = tokio::time::timeout(SERVER_STOPS, server.task).await;
    assert!(
        served.is_ok(),
        "{:?}: the server did not return within {SERVER_STOPS:?} of trigger() with {STREAMS} h2 streams open",
        server.kind
    );
    served.unwrap().expect("server task");

    let shutdown = Dispatched {
        event_type: "shutdown".to_owned(),
        data: "{\"retry\":5000}".to_owned(),
        last_event_id: last.last_event_id.clone(),
    };
    for (i, reader) in readers.into_iter().enumerate() {
        let client = within("a stream to end", reader)
            .await
            .expect("reader task");
        assert!(client.ended(), "stream {i}");
        assert_eq!(
            client.raw(),
            format!("retry: 3000\n{}{SHUTDOWN_FRAME}\n\n", frame(&last)),
            "stream {i}"
        );
        let parsed = parse(client.raw().as_bytes());
        assert_eq!(
            parsed.events,
            [last.clone(), shutdown.clone()],
            "stream {i}"
        );
        assert_eq!(parsed.retry, Some(5000), "stream {i}");
    }
    // The server's GOAWAY, then the close: the client's connection ends
    // without an error.
    conn.closed().await.expect("the h2 connection ends cleanly");
    assert!(fixture.broker.is_closed());
    fixture.subscribed(0).await;
}

/// An HTTP/1.1 client is served on the same port beside an open h2
/// stream: an event stream with and without `Accept: text/event-stream`
/// (under `tower_sse::serve`, its own stream path and hyper's HTTP/1.1)
/// and a plain request.
async fn http1_is_served_beside_h2(server: &Running, fixture: &Fixture) {
    let conn = H2Connection::open(server.addr).await;
    let mut h2 = conn.get("/events", &[]).await;
    assert_event_stream(&h2, "the h2 stream");
    let mut accepting =
        client::get(server.addr, "/events", &[("accept", "text/event-stream")]).await;
    assert_event_stream(&accepting, "the HTTP/1.1 stream with Accept");
    let mut plain_get = client::get(server.addr, "/events", &[]).await;
    assert_event_stream(&plain_get, "the HTTP/1.1 stream without Accept");
    // Only `tower_sse::serve`'s own stream path closes after the response.
    let closes = matches!(server.kind, Kind::Serve).then_some("close");
    assert_eq!(accepting.header("connection"), closes, "{:?}", server.kind);
    assert_eq!(plain_get.header("connection"), None, "{:?}", server.kind);
    let plain = client::fetch(server.addr, Method::GET, "/plain", &[], "").await;
    assert_eq!(
        (plain.status, plain.text()),
        (StatusCode::OK, "plain"),
        "a plain HTTP/1.1 request"
    );
    fixture.subscribed(3).await;

    let event = fixture.publish("to everyone");
    for (client, who) in [
        (&mut h2, "the h2 stream"),
        (&mut accepting, "the HTTP/1.1 stream with Accept"),
        (&mut plain_get, "the HTTP/1.1 stream without Accept"),
    ] {
        assert_receives(client, std::slice::from_ref(&event), who).await;
    }

    let seen = fixture.seen.all();
    let h2_requests: Vec<_> = seen
        .iter()
        .filter(|(_, peer)| *peer == conn.local_addr())
        .collect();
    assert_eq!(h2_requests, [&(Version::HTTP_2, conn.local_addr())]);
    let others: Vec<Version> = seen
        .iter()
        .filter(|(_, peer)| *peer != conn.local_addr())
        .map(|(version, _)| *version)
        .collect();
    assert_eq!(others, [Version::HTTP_11; 3], "{:?}", server.kind);
    if let Some(accepted) = &server.accepted {
        assert_eq!(accepted.load(Ordering::SeqCst), 4, "connections accepted");
    }
}

// Under plain hyper (hyper-util's `auto::Builder`).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_100_streams_on_one_connection_each_get_every_event() {
    let fixture = Fixture::new(201, None);
    let server = Running::start(Kind::Hyper, &fixture).await;
    every_stream_on_one_connection_gets_every_event(&server, &fixture).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_a_resumed_h2_stream_replays_then_goes_live() {
    let fixture = Fixture::new(202, None);
    let server = Running::start(Kind::Hyper, &fixture).await;
    a_resumed_stream_replays_after_its_id_then_goes_live(&server, &fixture).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_idle_h2_streams_receive_keep_alives() {
    let fixture = Fixture::new(203, Some(Duration::from_millis(100)));
    let server = Running::start(Kind::Hyper, &fixture).await;
    idle_streams_receive_keep_alives(&server, &fixture).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_graceful_shutdown_ends_every_h2_stream() {
    let fixture = Fixture::new(204, None);
    let server = Running::start(Kind::Hyper, &fixture).await;
    shutdown_ends_every_stream_on_the_connection(server, &fixture).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_serves_http1_beside_h2() {
    let fixture = Fixture::new(205, None);
    let server = Running::start(Kind::Hyper, &fixture).await;
    http1_is_served_beside_h2(&server, &fixture).await;
}

// Under `tower_sse::serve`, which hands a connection opening with the h2c
// preface to hyper's HTTP/2 server.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_100_streams_on_one_connection_each_get_every_event() {
    let fixture = Fixture::new(211, None);
    let server = Running::start(Kind::Serve, &fixture).await;
    every_stream_on_one_connection_gets_every_event(&server, &fixture).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_a_resumed_h2_stream_replays_then_goes_live() {
    let fixture = Fixture::new(212, None);
    let server = Running::start(Kind::Serve, &fixture).await;
    a_resumed_stream_replays_after_its_id_then_goes_live(&server, &fixture).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_idle_h2_streams_receive_keep_alives() {
    let fixture = Fixture::new(213, Some(Duration::from_millis(100)));
    let server = Running::start(Kind::Serve, &fixture).await;
    idle_streams_receive_keep_alives(&server, &fixture).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_graceful_shutdown_ends_every_h2_stream() {
    let fixture = Fixture::new(214, None);
    let server = Running::start(Kind::Serve, &fixture).await;
    shutdown_ends_every_stream_on_the_connection(server, &fixture).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_serves_http1_beside_h2() {
    let fixture = Fixture::new(215, None);
    let server = Running::start(Kind::Serve, &fixture).await;
    http1_is_served_beside_h2(&server, &fixture).await;
}
