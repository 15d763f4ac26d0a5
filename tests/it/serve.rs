//! `tower_sse::serve` over loopback: which requests it drives itself and
//! which it hands to hyper, what either answers (read back with hyper's own
//! client and `eventsource-stream`), resume, refusals, clients that leave,
//! stall or misbehave, bad heads, and a graceful shutdown with streams open.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::{get as get_route, post};
use axum::Router;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower_sse::serve::PeerAddr;
use tower_sse::sse::Rejection;
use tower_sse::{Broker, Event, Shutdown, SseLayer};

use crate::support::client::{get, send};
use crate::support::raw::{exchange, RawClient};
use crate::support::server::{loopback, spawn_serve, spawn_serve_until};
use crate::support::sse::seq_of;
use crate::support::wait::{eventually, within};

const STREAM: &[(&str, &str)] = &[("accept", "text/event-stream")];

/// An app with the events route, a JSON route, an echo route and a route
/// that reports the peer address both ways it is offered.
fn app(broker: &Broker) -> Router {
    Router::new()
        .route("/stats", get_route(|| async { "{\"ok\":true}" }))
        .route("/echo", post(|body: Bytes| async move { body }))
        .route(
            "/peer",
            get_route(
                |ConnectInfo(info): ConnectInfo<SocketAddr>,
                 peer: axum::Extension<PeerAddr>| async move {
                    format!("{info} {}", peer.0 .0)
                },
            ),
        )
        .layer(SseLayer::new(broker.clone()))
}

fn publish(broker: &Broker, data: &str) -> String {
    broker
        .publish(Event::message().data(data.to_owned()))
        .expect("publish")
        .to_string()
}

#[tokio::test]
async fn an_event_source_request_is_streamed_and_resumes() {
    let broker = Broker::new();
    let addr = spawn_serve(tower_sse::serve(loopback().await, app(&broker)));
    let first = publish(&broker, "one");
    publish(&broker, "two");

    let mut client = get(addr, "/events", &[STREAM[0], ("last-event-id", &first)]).await;
    assert_eq!(client.status, StatusCode::OK);
    assert_eq!(client.header("content-type"), Some("text/event-stream"));
    assert_eq!(client.header("cache-control"), Some("no-cache"));
    // Only this server's own path closes after the response; hyper would
    // keep a connection alive.
    assert_eq!(client.header("connection"), Some("close"));
    assert!(client.header("date").is_some());

    let replayed = client.next_event().await;
    assert_eq!(replayed.data, "two");
    let live = publish(&broker, "three");
    let event = client.next_event().await;
    assert_eq!(
        (event.id.as_str(), event.data.as_str()),
        (live.as_str(), "three")
    );
    assert!(seq_of(&event.id) > seq_of(&replayed.id));
}

#[tokio::test]
async fn a_stream_path_is_streamed_without_accept() {
    let broker = Broker::new();
    let addr = spawn_serve(tower_sse::serve(loopback().await, app(&broker)).stream_path("/events"));
    let raw = RawClient::get(addr, "/events", &[], 64 * 1024).await;
    let head = raw.head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    let mut client = raw.into_client();
    publish(&broker, "hello");
    assert_eq!(client.next_event().await.data, "hello");
}

#[tokio::test]
async fn other_requests_go_to_hyper_and_keep_their_connection() {
    let broker = Broker::new();
    let addr = spawn_serve(tower_sse::serve(loopback().await, app(&broker)));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    for body in ["first", "second"] {
        let request = http::Request::post("/echo")
            .header("host", addr.to_string())
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let response = within("an echo", sender.send_request(request))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_ne!(
            response.headers().get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..])
        );
        let echoed = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(echoed, body.as_bytes());
    }
    // A plain GET on the same connection, then an event stream request:
    // hyper serves that one too, since the connection is already its own.
    let request = http::Request::get("/stats")
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = within("stats", sender.send_request(request))
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    drop(sender);
    let _ = conn.await;
}

// `ConnectInfo` is in a request's extensions only with the crate's `axum`
// feature.
#[cfg(feature = "axum")]
#[tokio::test]
async fn both_paths_carry_the_peer_address() {
    let broker = Broker::new();
    let addr = spawn_serve(tower_sse::serve(loopback().await, app(&broker)));
    for (path, headers) in [("hyper", &[][..]), ("lean", STREAM)] {
        let client = get(addr, "/peer", headers).await;
        assert_eq!(client.status, StatusCode::OK, "{path}");
        assert_eq!(
            client.header("connection") == Some("close"),
            path == "lean",
            "{path}"
        );
        let text = client.text().await;
        let (info, peer) = text.split_once(' ').expect("two addresses");
        assert_eq!(info, peer, "{path}");
        assert!(info.starts_with("127.0.0.1:"), "{path}: {text}");
    }
}

#[tokio::test]
async fn a_refusal_on_the_lean_path_is_a_whole_response() {
    let broker = Broker::new();
    let layer = SseLayer::new(broker.clone()).authorize(|_: &http::request::Parts| {
        Err::<tower_sse::Grant, _>(Rejection::forbidden("not for you"))
    });
    let addr = spawn_serve(tower_sse::serve(
        loopback().await,
        Router::new().layer(layer),
    ));
    let client = get(addr, "/events", STREAM).await;
    assert_eq!(client.status, StatusCode::FORBIDDEN);
    assert_eq!(client.header("connection"), Some("close"));
    let length: usize = client
        .header("content-length")
        .expect("a refusal has a length")
        .parse()
        .expect("number");
    let body = client.text().await;
    assert_eq!(body.len(), length);
    assert!(body.contains("not for you"), "{body}");
}

#[tokio::test]
async fn a_client_that_leaves_unsubscribes() {
    let broker = Broker::new();
    let addr = spawn_serve(tower_sse::serve(loopback().await, app(&broker)));
    let mut client = get(addr, "/events", STREAM).await;
    publish(&broker, "x");
    client.next_event().await;
    assert_eq!(broker.stats().subscribers, 1);
    drop(client);
    eventually("the subscription to go", || broker.stats().subscribers == 0).await;
}

#[tokio::test]
async fn a_client_that_sends_after_its_request_is_dropped() {
    let broker = Broker::new();
    let addr = spawn_serve(tower_sse::serve(loopback().await, app(&broker)));
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let head = format!("GET /events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.expect("send");
    eventually("the subscription", || broker.stats().subscribers == 1).await;
    // A little is tolerated (a pipelined request goes unanswered)...
    tcp.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    publish(&broker, "still here");
    let mut seen = Vec::new();
    within("the event after a pipelined request", async {
        while !String::from_utf8_lossy(&seen).contains("still here") {
            let mut buf = [0u8; 1024];
            let n = tcp.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed too early");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    // ...a flood is not: an event stream reader sends nothing.
    let junk = vec![b'x'; 256 * 1024];
    let _ = tcp.write_all(&junk).await;
    eventually("the flooding client to be dropped", || {
        broker.stats().subscribers == 0
    })
    .await;
}

#[tokio::test]
async fn a_head_that_never_ends_is_closed_after_the_timeout() {
    let broker = Broker::new();
    let serve =
        tower_sse::serve(loopback().await, app(&broker)).head_timeout(Duration::from_millis(200));
    let addr = spawn_serve(serve);
    let partial = b"GET /events HTTP/1.1\r\nHost: x\r\n";
    assert_eq!(exchange(addr, partial, None).await, "");
}

#[tokio::test]
async fn bad_heads_get_hyper_answers_never_a_500() {
    let broker = Broker::new();
    let addr = spawn_serve(tower_sse::serve(loopback().await, app(&broker)));
    for head in [
        "GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nBad Header: 1\r\n\r\n",
        "GET /ev ents HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
        "BLAH\r\n\r\n",
        "GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nContent-Length: nope\r\n\r\n",
    ] {
        let answer = exchange(addr, head.as_bytes(), None).await;
        let status: u16 = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status for {head:?}: {answer:?}"));
        assert!((400..500).contains(&status), "{head:?} -> {answer:?}");
    }
    assert_eq!(broker.stats().subscribers, 0);
}

#[tokio::test]
async fn an_oversized_head_is_left_to_hyper() {
    let broker = Broker::new();
    let serve = tower_sse::serve(loopback().await, app(&broker)).max_head_bytes(1024);
    let addr = spawn_serve(serve);
    let big = "a".repeat(4000);
    let client = get(addr, "/events", &[STREAM[0], ("x-big", &big)]).await;
    // Served all the same, by hyper this time.
    assert_eq!(client.status, StatusCode::OK);
    assert_ne!(client.header("connection"), Some("close"));
}

#[tokio::test]
async fn a_stalled_reader_is_held_back_in_the_log_not_in_memory() {
    let broker = Broker::builder().retain_events(100).build();
    let addr = spawn_serve(tower_sse::serve(loopback().await, app(&broker)).stream_path("/events"));
    // A 4 KiB receive window that is not read while 4 MiB are published.
    let raw = RawClient::get(addr, "/events", &[], 4096).await;
    eventually("the subscription", || broker.stats().subscribers == 1).await;
    let payload = "y".repeat(1024);
    for _ in 0..4096 {
        publish(&broker, &payload);
    }
    let last = publish(&broker, "last");
    let mut client = raw.into_client();
    let mut resyncs = 0;
    let mut received = 0;
    within("the last event", async {
        loop {
            let event = client.next_event().await;
            if event.event == "resync" {
                resyncs += 1;
            } else {
                received += 1;
            }
            if event.id == last {
                break;
            }
        }
    })
    .await;
    // Most of what was published never left the log: the reader was told
    // it lagged instead of being sent (or buffered) all of it.
    assert!(resyncs >= 1, "no resync after a stall");
    assert!(
        received < 1000,
        "{received} events buffered for a stalled reader"
    );
}

#[tokio::test]
async fn graceful_shutdown_ends_streams_and_returns() {
    let broker = Broker::new();
    let shutdown = Shutdown::new().broker(&broker).drain(Duration::ZERO);
    let serve = tower_sse::serve(loopback().await, app(&broker));
    let (addr, server) = spawn_serve_until(serve, shutdown.wait());

    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(get(addr, "/events", STREAM).await);
    }
    // One connection that never sends a request, and one kept alive by
    // hyper between requests.
    let silent = TcpStream::connect(addr).await.expect("connect");
    let kept = send(addr, Method::GET, "/stats", &[], "").await;
    assert_eq!(kept.status, StatusCode::OK);
    eventually("every stream", || broker.stats().subscribers == 20).await;

    shutdown.trigger();
    for mut stream in streams {
        stream.events_to_end().await;
        assert!(stream.raw().contains("event: shutdown"), "{}", stream.raw());
    }
    within("the server to finish", server)
        .await
        .expect("server task")
        .expect("serve");
    drop((silent, kept));
}

#[tokio::test]
async fn a_client_that_leaves_before_its_answer_ends_the_call() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts the calls still holding it.
    struct Held(Arc<AtomicUsize>);
    impl Drop for Held {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    let held = Arc::new(AtomicUsize::new(0));
    let slow = {
        let held = held.clone();
        get_route(move || {
            held.fetch_add(1, Ordering::SeqCst);
            let guard = Held(held.clone());
            async move {
                std::future::pending::<()>().await;
                drop(guard);
                ""
            }
        })
    };
    let app = Router::new().route("/events", slow);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = spawn_serve_until(tower_sse::serve(loopback().await, app), async move {
        let _ = stopped.await;
    });
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let head = format!("GET /events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.expect("send");
    eventually("the call", || held.load(Ordering::SeqCst) == 1).await;
    drop(tcp);
    eventually("the call to be dropped", || {
        held.load(Ordering::SeqCst) == 0
    })
    .await;
    let _ = stop.send(());
    within("the server to finish", server)
        .await
        .expect("server task")
        .expect("serve");
}

#[tokio::test]
async fn dropping_the_server_leaves_its_connections_running() {
    let broker = Broker::new();
    let serve = tower_sse::serve(loopback().await, app(&broker));
    let addr = serve.local_addr().expect("addr");
    let server = tokio::spawn(serve.into_future());
    let mut stream = get(addr, "/events", STREAM).await;
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let stats = || {
        http::Request::get("/stats")
            .header("host", addr.to_string())
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let first = within("stats", sender.send_request(stats()))
        .await
        .expect("response");
    assert_eq!(first.status(), StatusCode::OK);
    first.into_body().collect().await.expect("body");

    server.abort();
    let _ = server.await;
    publish(&broker, "after");
    assert_eq!(stream.next_event().await.data, "after");
    let second = within("stats again", sender.send_request(stats()))
        .await
        .expect("the kept-alive connection still answers");
    assert_eq!(second.status(), StatusCode::OK);
}
