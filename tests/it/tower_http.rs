//! tower-http's layers around and inside the crate's, in an axum app served
//! by `axum::serve` over loopback, read as a client would.
//!
//! Where a layer sits decides what it sees. `Router::layer` wraps every
//! route and the fallback, and `SseLayer` reaches the events path through
//! the fallback (no route matches it), answering it itself and handing
//! every other request to what it wraps. So:
//!
//! - **outside** (`routes.layer(SseLayer).layer(x)`): `x` wraps the `Sse`
//!   service and sees every request, the events route's included; the
//!   stream's response head and body pass through it;
//! - **inside** (`routes.layer(x).layer(SseLayer)`): `x` wraps only the
//!   inner routes; `Sse` answers the events path before `x` is reached, so
//!   `x` never sees an events request, neither to refuse it nor to mark
//!   its response.
//!
//! What this module proves, per layer, in both positions where it makes
//! sense: `TraceLayer` (a span per request, each event handed on as it is
//! published), `CompressionLayer` (other routes compressed, the stream
//! neither compressed nor held back; compressed, yet still live, under a
//! predicate without the SSE rule), `TimeoutLayer` (never cuts a stream
//! that outlives it), `CorsLayer` (preflight and `Access-Control-Allow-Origin` on the stream,
//! with credentials too), a bearer `ValidateRequestHeaderLayer` (a refusal
//! comes before any subscription), `SetRequestIdLayer` and
//! `PropagateRequestIdLayer` (the id on the stream's response),
//! `CatchPanicLayer` (a panicking route is a 500, streams go on) and
//! `RequestBodyLimitLayer` (413 for a large body, streams go on); then all
//! of them at once around the full stack (`RequireWritableLayer`,
//! `SseLayer`, `HealthLayer`), and a plain tower stack, where the layers
//! that build answers of their own wrap the crate's directly.
//!
//! Every wait is a hang detector ([`PATIENCE`](crate::support::wait)): an
//! event is published only once the one before it has arrived, so a
//! stream held back anywhere fails the test instead of slowing it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::IntoResponse;
use axum::routing::{get, post, Route};
use axum::Router;
use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ALLOW, AUTHORIZATION,
    CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER,
};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::predicate::SizeAbove;
use tower_http::compression::CompressionLayer;
use tower_http::cors::CorsLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::{ResponseBodyTimeoutLayer, TimeoutLayer};
use tower_http::trace::TraceLayer;
use tower_http::validate_request::ValidateRequestHeaderLayer;
use tower_sse::sse::public_only;
use tower_sse::{Broker, Event, SseLayer};
use tracing::span::Id;
use tracing::Span;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::support::client::{fetch, get as open, request, Connection, Reply};
use crate::support::server::{serve_axum, serve_hyper};
use crate::support::sse::{json_of, Client};
use crate::support::stack;
use crate::support::trace::{self, Log};
use crate::support::wait::{eventually, within};

/// Where a tower-http layer sits relative to `SseLayer` (see the module
/// docs).
#[derive(Clone, Copy, Debug)]
enum At {
    /// `routes.layer(SseLayer).layer(x)`: `x` sees every request.
    Outside,
    /// `routes.layer(x).layer(SseLayer)`: `x` sees every request but the
    /// events route's.
    Inside,
}

/// A body larger than the default compression threshold (32 bytes).
const ITEMS: &str = "items: one, two, three, four, five, six, seven, eight";
const ORIGIN: &str = "https://app.example";
const TOKEN: &str = "s3cret";

/// The app's own routes: one to read, one that echoes a body, one that
/// never answers, one that panics.
fn routes() -> Router {
    async fn panics() -> &'static str {
        panic!("a handler that panics")
    }
    Router::new()
        .route("/items", get(|| async { ITEMS }))
        .route("/echo", post(|body: String| async move { body }))
        .route("/slow", get(std::future::pending::<&'static str>))
        .route("/panic", get(panics))
}

/// [`routes`] with `sse` and `layer` stacked in the order `at` says.
fn mount<L>(at: At, sse: SseLayer, layer: L) -> Router
where
    L: Layer<Route> + Clone + Send + Sync + 'static,
    L::Service: Service<Request<Body>> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request<Body>>>::Response: IntoResponse + 'static,
    <L::Service as Service<Request<Body>>>::Error: Into<Infallible> + 'static,
    <L::Service as Service<Request<Body>>>::Future: Send + 'static,
{
    match at {
        At::Outside => routes().layer(sse).layer(layer),
        At::Inside => routes().layer(layer).layer(sse),
    }
}

/// Opens the events route and checks it is a stream.
async fn open_stream(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> Client {
    let stream = open(addr, "/events", headers).await;
    assert_eq!(stream.status, StatusCode::OK, "GET /events {headers:?}");
    assert_eq!(stream.header(CONTENT_TYPE), Some("text/event-stream"));
    stream
}

/// Publishes one event on the default topic; returns its id.
fn publish(broker: &Broker, data: &str) -> String {
    broker
        .publish(Event::new("tick").data(data.to_owned()))
        .expect("publish")
        .to_string()
}

/// Publishes three events, each only once the one before has arrived:
/// the stream is live, and nothing on the way holds an event back until
/// more come.
async fn assert_live(stream: &mut Client, broker: &Broker, label: &str) {
    for i in 1..=3 {
        let data = format!("{label}-{i}");
        let id = publish(broker, &data);
        let event = stream.next_event().await;
        assert_eq!(
            (event.id.as_str(), event.event.as_str(), event.data.as_str()),
            (id.as_str(), "tick", data.as_str()),
            "event {i} of {label}"
        );
    }
}

/// A bearer check in the shape tower-http 0.7 recommends
/// (`ValidateRequestHeaderLayer::bearer` is deprecated since 0.6.7): `401`
/// without the token; with it, the caller is put in the request's
/// extensions, where the events route's authorizer can read it. (The
/// refusal's size is tower-http's signature, hence the allow.)
#[allow(clippy::result_large_err)]
fn require_bearer() -> ValidateRequestHeaderLayer<
    impl FnMut(&mut Request<Body>) -> Result<(), Response<Body>> + Clone + Send + Sync + 'static,
> {
    ValidateRequestHeaderLayer::custom(|request: &mut Request<Body>| {
        let expected = format!("Bearer {TOKEN}");
        if request.headers().get(AUTHORIZATION).map(|v| v.as_bytes()) == Some(expected.as_bytes()) {
            request.extensions_mut().insert(Caller);
            return Ok(());
        }
        let mut refusal = Response::new(Body::empty());
        *refusal.status_mut() = StatusCode::UNAUTHORIZED;
        Err(refusal)
    })
}

/// What [`require_bearer`] leaves in a request it let through.
#[derive(Clone, Copy, Debug)]
struct Caller;

/// The events route's own authorizer, counting its calls (the route runs
/// it before it subscribes) and whether the request carried a [`Caller`].
#[derive(Clone, Default)]
struct Authorizations {
    calls: Arc<AtomicUsize>,
    with_caller: Arc<AtomicUsize>,
}

impl Authorizations {
    fn layer(&self, broker: &Broker) -> SseLayer {
        let seen = self.clone();
        SseLayer::new(broker.clone()).authorize(move |parts: &Parts| {
            seen.calls.fetch_add(1, Ordering::SeqCst);
            if parts.extensions.get::<Caller>().is_some() {
                seen.with_caller.fetch_add(1, Ordering::SeqCst);
            }
            public_only(parts)
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn with_caller(&self) -> usize {
        self.with_caller.load(Ordering::SeqCst)
    }
}

// TraceLayer.

/// What a `TraceLayer`'s callbacks saw: each request with its span, each
/// body chunk with the span it was handed on in.
#[derive(Clone, Default)]
struct Traced(Arc<Mutex<TracedInner>>);

#[derive(Default)]
struct TracedInner {
    requests: Vec<(String, Option<Id>)>,
    chunks: Vec<(String, Option<Id>)>,
}

impl Traced {
    fn requests(&self) -> Vec<(String, Option<Id>)> {
        self.0.lock().unwrap().requests.clone()
    }

    fn last_chunk(&self) -> Option<(String, Option<Id>)> {
        self.0.lock().unwrap().chunks.last().cloned()
    }

    /// [`routes`] and `sse` with `TraceLayer::new_for_http()` (its default
    /// span, `request` with method, uri and version) at `at`, its callbacks
    /// recording into `self`.
    fn mount(&self, at: At, sse: SseLayer) -> Router {
        let requests = self.clone();
        let chunks = self.clone();
        let layer = TraceLayer::new_for_http()
            .on_request(move |request: &Request<Body>, span: &Span| {
                let path = request.uri().path().to_owned();
                requests.0.lock().unwrap().requests.push((path, span.id()));
            })
            .on_body_chunk(move |chunk: &Bytes, _: Duration, span: &Span| {
                let text = String::from_utf8_lossy(chunk).into_owned();
                chunks.0.lock().unwrap().chunks.push((text, span.id()));
            });
        mount(at, sse, layer)
    }
}

/// Debug events and span openings and closings, on this thread only.
fn capture_traces() -> (Log, tracing::subscriber::DefaultGuard) {
    trace::capture(tracing::Level::DEBUG, FmtSpan::NEW | FmtSpan::CLOSE)
}

/// The span tower-http's `TraceLayer` makes for `GET path` by default.
fn request_span(path: &str) -> String {
    format!("request{{method=GET uri={path} version=HTTP/1.1}}: ")
}

#[tokio::test]
async fn trace_outside_gives_the_stream_its_own_span_and_hands_each_event_on_as_published() {
    let (log, _default) = capture_traces();
    let broker = Broker::new();
    let traced = Traced::default();
    let addr = serve_axum(traced.mount(At::Outside, SseLayer::new(broker.clone()))).await;

    let items = fetch(addr, Method::GET, "/items", &[], "").await;
    assert_eq!(items.status, StatusCode::OK);
    let mut stream = open_stream(addr, &[]).await;

    let requests = traced.requests();
    let paths: Vec<&str> = requests.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(paths, ["/items", "/events"], "one span per request");
    let events_span = requests[1]
        .1
        .clone()
        .expect("a subscriber is set: spans have ids");
    assert_ne!(
        requests[0].1,
        Some(events_span.clone()),
        "two requests, two spans"
    );

    // Each event is handed on by the trace's body as its own chunk, in the
    // stream's span, before the next one is published.
    for i in 1..=3 {
        let data = format!("traced-{i}");
        let id = publish(&broker, &data);
        let event = stream.next_event().await;
        assert_eq!((event.id, event.data), (id.clone(), data.clone()));
        let (chunk, span) = traced.last_chunk().expect("the trace saw the chunk");
        assert!(
            chunk.contains(&format!("id: {id}\n")) && chunk.ends_with(&format!("data: {data}\n\n")),
            "the last chunk the trace saw is event {i}: {chunk:?}"
        );
        assert_eq!(
            span,
            Some(events_span.clone()),
            "chunk {i} in the stream's span"
        );
    }

    // The span is what an operator sees: opened with the request, the head
    // logged in it, open as long as the stream; it closes once the client
    // has gone.
    assert!(log.has(
        &request_span("/events"),
        "tower_http::trace::make_span: new"
    ));
    assert!(log.has(&request_span("/events"), "finished processing request"));
    assert!(log.has(&request_span("/events"), "status=200"));
    assert!(
        !log.has(
            &request_span("/events"),
            "tower_http::trace::make_span: close"
        ),
        "the stream's span stays open while it streams: {}",
        log.text()
    );
    drop(stream);
    eventually("the stream's span to close", || {
        log.has(
            &request_span("/events"),
            "tower_http::trace::make_span: close",
        )
    })
    .await;
}

#[tokio::test]
async fn trace_inside_never_sees_the_events_route() {
    let broker = Broker::new();
    let traced = Traced::default();
    let addr = serve_axum(traced.mount(At::Inside, SseLayer::new(broker.clone()))).await;

    let items = fetch(addr, Method::GET, "/items", &[], "").await;
    assert_eq!(items.status, StatusCode::OK);
    let mut stream = open_stream(addr, &[]).await;
    assert_live(&mut stream, &broker, "untraced").await;

    let requests = traced.requests();
    let paths: Vec<&str> = requests.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(
        paths,
        ["/items"],
        "inside SseLayer a trace never hears of the stream: trace outside it"
    );
}

// CompressionLayer.

/// `/items` asked with `Accept-Encoding: gzip` comes gzipped; the stream,
/// asked the same way, comes as it is and live.
async fn compression_leaves_the_stream_alone(at: At) {
    let broker = Broker::new();
    let addr = serve_axum(mount(
        at,
        SseLayer::new(broker.clone()),
        CompressionLayer::new(),
    ))
    .await;
    let gzip = [("accept-encoding", "gzip")];

    let items = fetch(addr, Method::GET, "/items", &gzip, "").await;
    assert_eq!(items.status, StatusCode::OK);
    assert_eq!(items.header(CONTENT_ENCODING), Some("gzip"));
    assert_eq!(items.body[..2], [0x1f, 0x8b], "a gzip member");
    assert_ne!(items.body, ITEMS.as_bytes());

    let mut stream = open_stream(addr, &gzip).await;
    assert_eq!(
        stream.header(CONTENT_ENCODING),
        None,
        "{:?}",
        stream.headers
    );
    assert_live(&mut stream, &broker, "plain").await;
    assert!(
        stream.raw().starts_with("retry: 3000\n"),
        "{:?}",
        stream.raw()
    );
}

#[tokio::test]
async fn compression_outside_compresses_other_routes_but_not_the_stream() {
    compression_leaves_the_stream_alone(At::Outside).await;
}

#[tokio::test]
async fn compression_inside_compresses_other_routes_and_never_sees_the_stream() {
    compression_leaves_the_stream_alone(At::Inside).await;
}

/// What keeps the stream out is `DefaultPredicate`'s
/// `NotForContentType::SSE`: a `compress_when` of its own without it
/// compresses the stream. Even so nothing is held back: the encoder
/// flushes whenever the stream has nothing more to give, so each event
/// leaves as a frame ending in deflate's sync-flush marker (`00 00 ff ff`),
/// decodable up to there. (Read as bytes: the SSE client reads text.)
#[tokio::test]
async fn compression_with_a_predicate_without_the_sse_rule_compresses_the_stream_live() {
    let broker = Broker::new();
    let layer = CompressionLayer::new().compress_when(SizeAbove::new(32));
    let addr = serve_axum(mount(At::Outside, SseLayer::new(broker.clone()), layer)).await;

    let mut conn = Connection::open(addr).await;
    let mut request = request(Method::GET, "/events");
    let gzip = HeaderValue::from_static("gzip");
    request.headers_mut().insert(ACCEPT_ENCODING, gzip);
    let response = conn.send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers().get(CONTENT_ENCODING).unwrap(), "gzip");

    let mut body = response.into_body();
    let first = next_flush(&mut body).await;
    assert_eq!(
        first[..2],
        [0x1f, 0x8b],
        "a gzip member, with the retry hint"
    );
    for i in 1..=3 {
        publish(&broker, &format!("compressed-{i}"));
        next_flush(&mut body).await;
    }
}

/// The bytes up to and including the next frame that ends a deflate sync
/// flush.
async fn next_flush(body: &mut Incoming) -> Vec<u8> {
    within("a flushed frame", async {
        let mut bytes = Vec::new();
        while !bytes.ends_with(&[0, 0, 0xff, 0xff]) {
            let frame = body
                .frame()
                .await
                .expect("the stream goes on")
                .expect("a frame");
            bytes.extend_from_slice(frame.data_ref().expect("data"));
        }
        bytes
    })
    .await
}

// TimeoutLayer.

/// With a 1 s timeout on the same stack, a stream opened before a request
/// that times out still streams after it. The timeout's own `408` on the
/// route that never answers is the proof that more than a second has passed
/// since the stream opened; no sleep.
async fn timeout_spares_the_stream(at: At) {
    let broker = Broker::new();
    let timeout =
        TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, Duration::from_secs(1));
    let addr = serve_axum(mount(at, SseLayer::new(broker.clone()), timeout)).await;

    let opened = Instant::now();
    let mut stream = open_stream(addr, &[]).await;
    assert_live(&mut stream, &broker, "before").await;

    let slow = fetch(addr, Method::GET, "/slow", &[], "").await;
    assert_eq!(slow.status, StatusCode::REQUEST_TIMEOUT, "the timeout runs");
    assert!(opened.elapsed() > Duration::from_secs(1));

    assert_live(&mut stream, &broker, "after").await;
    assert!(!stream.ended());
    assert_eq!(broker.stats().subscribers, 1);
}

#[tokio::test]
async fn timeout_outside_does_not_cut_a_stream_that_outlives_it() {
    timeout_spares_the_stream(At::Outside).await;
}

#[tokio::test]
async fn timeout_inside_times_out_other_routes_and_never_sees_the_stream() {
    timeout_spares_the_stream(At::Inside).await;
}

/// `ResponseBodyTimeoutLayer` times the gap between a body's frames, and
/// an idle stream's only frames are its keep-alives: with a keep-alive
/// interval under the timeout the stream lives on (five keep-alives took
/// longer than the timeout, and no event was published meanwhile); with
/// none, the timeout cuts it, idle, without an event.
#[tokio::test]
async fn a_response_body_timeout_cuts_only_a_stream_without_keep_alives() {
    let body_timeout = Duration::from_millis(300);
    for keep_alive in [true, false] {
        let broker = Broker::new();
        let sse = SseLayer::new(broker.clone());
        let sse = if keep_alive {
            sse.keep_alive(Duration::from_millis(100))
        } else {
            sse.no_keep_alive()
        };
        let layer = ResponseBodyTimeoutLayer::new(body_timeout);
        let addr = serve_axum(mount(At::Outside, sse, layer)).await;
        let opened = Instant::now();
        if keep_alive {
            let mut stream = open_stream(addr, &[]).await;
            stream
                .wait_raw("five keep-alives", |raw| raw.matches("\n:\n").count() >= 5)
                .await;
            assert!(opened.elapsed() > body_timeout);
            assert_live(&mut stream, &broker, "kept").await;
        } else {
            let mut conn = Connection::open(addr).await;
            let mut body = conn.send(request(Method::GET, "/events")).await.into_body();
            let end = within("the body timeout to cut the stream", async {
                loop {
                    match body.frame().await {
                        Some(Ok(_)) => continue,
                        Some(Err(error)) => break Some(error),
                        None => break None,
                    }
                }
            })
            .await;
            assert!(end.is_some(), "cut as an error, not a clean end");
            assert!(opened.elapsed() >= body_timeout);
            assert_eq!(broker.stats().published, 0);
        }
    }
}

// CorsLayer.

fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(HeaderValue::from_static(ORIGIN))
        .allow_methods([Method::GET])
        .allow_headers([HeaderName::from_static("last-event-id")])
}

/// The preflight an `EventSource` resuming with `Last-Event-ID` would need
/// (a browser sends none for a plain one, but a fetch-based client does).
async fn preflight(addr: std::net::SocketAddr) -> Reply {
    fetch(
        addr,
        Method::OPTIONS,
        "/events",
        &[
            ("origin", ORIGIN),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "last-event-id"),
        ],
        "",
    )
    .await
}

#[tokio::test]
async fn cors_outside_answers_the_preflight_and_marks_the_stream() {
    let broker = Broker::new();
    let addr = serve_axum(mount(At::Outside, SseLayer::new(broker.clone()), cors())).await;

    let answer = preflight(addr).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.header(ACCESS_CONTROL_ALLOW_ORIGIN), Some(ORIGIN));
    assert_eq!(answer.header(ACCESS_CONTROL_ALLOW_METHODS), Some("GET"));
    assert_eq!(
        answer.header(ACCESS_CONTROL_ALLOW_HEADERS),
        Some("last-event-id")
    );
    assert_eq!(
        broker.stats().subscribers,
        0,
        "a preflight subscribes nothing"
    );

    let mut stream = open_stream(addr, &[("origin", ORIGIN)]).await;
    assert_eq!(stream.header(ACCESS_CONTROL_ALLOW_ORIGIN), Some(ORIGIN));
    assert_eq!(stream.header(ACCESS_CONTROL_ALLOW_CREDENTIALS), None);
    assert_live(&mut stream, &broker, "cross-origin").await;
}

/// `new EventSource(url, { withCredentials: true })` needs the origin
/// named (never `*`) and `Access-Control-Allow-Credentials: true`.
#[tokio::test]
async fn cors_outside_with_credentials_names_the_origin_and_allows_credentials() {
    let broker = Broker::new();
    let layer = cors().allow_credentials(true);
    let addr = serve_axum(mount(At::Outside, SseLayer::new(broker.clone()), layer)).await;

    let answer = preflight(addr).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.header(ACCESS_CONTROL_ALLOW_ORIGIN), Some(ORIGIN));
    assert_eq!(
        answer.header(ACCESS_CONTROL_ALLOW_CREDENTIALS),
        Some("true")
    );

    let mut stream = open_stream(addr, &[("origin", ORIGIN), ("cookie", "session=1")]).await;
    assert_eq!(stream.header(ACCESS_CONTROL_ALLOW_ORIGIN), Some(ORIGIN));
    assert_eq!(
        stream.header(ACCESS_CONTROL_ALLOW_CREDENTIALS),
        Some("true")
    );
    assert_live(&mut stream, &broker, "with-credentials").await;

    // Another origin is granted the configured one, not its own, so its
    // browser drops the stream; CORS refuses nothing on the server, which
    // still serves it.
    let other = open_stream(addr, &[("origin", "https://other.example")]).await;
    assert_eq!(other.header(ACCESS_CONTROL_ALLOW_ORIGIN), Some(ORIGIN));
    assert_eq!(broker.stats().subscribers, 2);
}

#[tokio::test]
async fn cors_inside_leaves_the_events_route_without_cors_headers() {
    let broker = Broker::new();
    let addr = serve_axum(mount(At::Inside, SseLayer::new(broker.clone()), cors())).await;

    // The events route answers the preflight itself: not a method it serves.
    let answer = preflight(addr).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{answer:?}");
    assert_eq!(answer.header(ALLOW), Some("GET, HEAD"));
    assert_eq!(answer.header(ACCESS_CONTROL_ALLOW_ORIGIN), None);

    // The stream flows, but without the header a browser drops it.
    let mut stream = open_stream(addr, &[("origin", ORIGIN)]).await;
    assert_eq!(stream.header(ACCESS_CONTROL_ALLOW_ORIGIN), None);
    assert_live(&mut stream, &broker, "same-origin-only").await;

    let items = fetch(addr, Method::GET, "/items", &[("origin", ORIGIN)], "").await;
    assert_eq!(items.header(ACCESS_CONTROL_ALLOW_ORIGIN), Some(ORIGIN));
}

// ValidateRequestHeaderLayer (bearer).

#[tokio::test]
async fn bearer_auth_outside_refuses_before_any_subscription_and_lets_the_token_through() {
    let broker = Broker::new();
    let authorizations = Authorizations::default();
    let addr = serve_axum(mount(
        At::Outside,
        authorizations.layer(&broker),
        require_bearer(),
    ))
    .await;

    for headers in [&[][..], &[("authorization", "Bearer wrong")][..]] {
        let refused = fetch(addr, Method::GET, "/events", headers, "").await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert_ne!(refused.header(CONTENT_TYPE), Some("text/event-stream"));
    }
    assert_eq!(
        authorizations.calls(),
        0,
        "the events route never ran, so it subscribed nothing"
    );
    assert_eq!(broker.stats().subscribers, 0);

    let bearer = format!("Bearer {TOKEN}");
    let mut stream = open_stream(addr, &[("authorization", &bearer)]).await;
    assert_eq!(broker.stats().subscribers, 1);
    assert_eq!(
        (authorizations.calls(), authorizations.with_caller()),
        (1, 1),
        "the route's authorizer sees the caller the check let through"
    );
    assert_live(&mut stream, &broker, "authorised").await;

    // A refusal while a stream is open changes nothing either.
    let refused = fetch(addr, Method::GET, "/events", &[], "").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(broker.stats().subscribers, 1);
    assert_eq!(authorizations.calls(), 1);
}

/// A check inside `SseLayer` does not guard the stream: the events route
/// answers before it, so the stream opens without a token, and a token's
/// caller never reaches the route's authorizer. Guard the stream outside,
/// or in the route's own authorizer.
#[tokio::test]
async fn bearer_auth_inside_does_not_guard_the_events_route() {
    let broker = Broker::new();
    let authorizations = Authorizations::default();
    let addr = serve_axum(mount(
        At::Inside,
        authorizations.layer(&broker),
        require_bearer(),
    ))
    .await;

    let items = fetch(addr, Method::GET, "/items", &[], "").await;
    assert_eq!(
        items.status,
        StatusCode::UNAUTHORIZED,
        "other routes guarded"
    );

    let mut unguarded = open_stream(addr, &[]).await;
    assert_eq!(broker.stats().subscribers, 1, "subscribed without a token");
    assert_live(&mut unguarded, &broker, "unguarded").await;

    let bearer = format!("Bearer {TOKEN}");
    let _with_token = open_stream(addr, &[("authorization", &bearer)]).await;
    assert_eq!(
        (authorizations.calls(), authorizations.with_caller()),
        (2, 0),
        "the check never ran for the events route"
    );
}

// SetRequestIdLayer / PropagateRequestIdLayer.

/// Set outermost, propagated inside it (`Router::layer`: the last call is
/// the outermost).
fn with_request_ids(router: Router) -> Router {
    router
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// What `MakeRequestUuid` makes: 8-4-4-4-12 characters.
fn is_uuid(id: &str) -> bool {
    id.len() == 36 && id.split('-').map(str::len).eq([8, 4, 4, 4, 12])
}

#[tokio::test]
async fn request_id_outside_is_on_the_stream_response_generated_or_propagated() {
    let broker = Broker::new();
    let app = with_request_ids(routes().layer(SseLayer::new(broker.clone())));
    let addr = serve_axum(app).await;

    let mut generated = open_stream(addr, &[]).await;
    let id = generated.header("x-request-id").expect("an id").to_owned();
    assert!(is_uuid(&id), "{id:?}");
    let other = open_stream(addr, &[]).await;
    assert_ne!(
        other.header("x-request-id"),
        Some(id.as_str()),
        "one id each"
    );

    let mut propagated = open_stream(addr, &[("x-request-id", "from-the-proxy-42")]).await;
    assert_eq!(propagated.header("x-request-id"), Some("from-the-proxy-42"));

    assert_live(&mut generated, &broker, "generated").await;
    let relayed: Vec<String> = propagated
        .events(3)
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(relayed, ["generated-1", "generated-2", "generated-3"]);
}

#[tokio::test]
async fn request_id_inside_never_reaches_the_stream_response() {
    let broker = Broker::new();
    let app = with_request_ids(routes()).layer(SseLayer::new(broker.clone()));
    let addr = serve_axum(app).await;

    let items = fetch(addr, Method::GET, "/items", &[], "").await;
    assert!(is_uuid(items.header("x-request-id").expect("an id")));

    let mut stream = open_stream(addr, &[("x-request-id", "from-the-proxy-42")]).await;
    assert_eq!(stream.header("x-request-id"), None, "not even propagated");
    assert_live(&mut stream, &broker, "no-id").await;
}

// CatchPanicLayer.

/// A panicking handler becomes a `500`; the stream open across it goes on,
/// and a new one opens.
async fn catch_panic_spares_the_streams(at: At) {
    let broker = Broker::new();
    let addr = serve_axum(mount(
        at,
        SseLayer::new(broker.clone()),
        CatchPanicLayer::new(),
    ))
    .await;

    let mut stream = open_stream(addr, &[]).await;
    assert_live(&mut stream, &broker, "before").await;

    let panicked = fetch(addr, Method::GET, "/panic", &[], "").await;
    assert_eq!(panicked.status, StatusCode::INTERNAL_SERVER_ERROR);

    assert_live(&mut stream, &broker, "after").await;
    let mut fresh = open_stream(addr, &[]).await;
    assert_live(&mut fresh, &broker, "fresh").await;
    assert_eq!(stream.events(3).await.last().unwrap().data, "fresh-3");
    assert_eq!(broker.stats().subscribers, 2);
}

#[tokio::test]
async fn catch_panic_outside_turns_a_panicking_route_into_500_while_streams_go_on() {
    catch_panic_spares_the_streams(At::Outside).await;
}

#[tokio::test]
async fn catch_panic_inside_turns_a_panicking_route_into_500_while_streams_go_on() {
    catch_panic_spares_the_streams(At::Inside).await;
}

/// The authorizer runs in `Sse`'s call: a panic there reaches a
/// `CatchPanicLayer` outside it as a `500`, and streams go on.
#[tokio::test]
async fn catch_panic_outside_also_catches_a_panicking_authorizer() {
    let broker = Broker::new();
    let sse = SseLayer::new(broker.clone()).authorize(|parts: &Parts| {
        if parts.uri.query() == Some("boom") {
            panic!("the authorizer failed");
        }
        public_only(parts)
    });
    let addr = serve_axum(mount(At::Outside, sse, CatchPanicLayer::new())).await;
    let mut stream = open_stream(addr, &[]).await;
    let panicked = fetch(addr, Method::GET, "/events?boom", &[], "").await;
    assert_eq!(panicked.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_live(&mut stream, &broker, "after").await;
    assert_eq!(broker.stats().subscribers, 1);
}

// RequestBodyLimitLayer.

/// `POST /echo` over 16 bytes is a `413`, under it echoed; the stream
/// passes. A `POST` to the events route is refused by whichever comes
/// first: the limit outside, the route's `405` inside.
async fn body_limit_spares_the_stream(at: At) {
    let broker = Broker::new();
    let addr = serve_axum(mount(
        at,
        SseLayer::new(broker.clone()),
        RequestBodyLimitLayer::new(16),
    ))
    .await;
    let large = "x".repeat(64);

    let refused = fetch(addr, Method::POST, "/echo", &[], &large).await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
    let echoed = fetch(addr, Method::POST, "/echo", &[], "small").await;
    assert_eq!((echoed.status, echoed.text()), (StatusCode::OK, "small"));

    let mut stream = open_stream(addr, &[]).await;
    assert_live(&mut stream, &broker, "limited").await;

    let posted = fetch(addr, Method::POST, "/events", &[], &large).await;
    let expected = match at {
        At::Outside => StatusCode::PAYLOAD_TOO_LARGE,
        At::Inside => StatusCode::METHOD_NOT_ALLOWED,
    };
    assert_eq!(posted.status, expected);
    assert_eq!(broker.stats().subscribers, 1);
}

#[tokio::test]
async fn body_limit_outside_refuses_a_large_post_with_413_and_streams_through() {
    body_limit_spares_the_stream(At::Outside).await;
}

#[tokio::test]
async fn body_limit_inside_refuses_a_large_post_with_413_and_streams_through() {
    body_limit_spares_the_stream(At::Inside).await;
}

// All at once, around the full stack.

/// Every layer above around `RequireWritableLayer`, `SseLayer` and
/// `HealthLayer` ([`stack::app`]), in the order an app would use: the
/// stream opens with its greeting and every header the layers add, flows
/// live, and hears the mode change that makes the write guard refuse.
#[tokio::test]
async fn every_layer_at_once_around_the_full_stack() {
    let (broker, mode) = stack::followed_broker(7);
    let app = stack::app(&broker, &mode)
        .layer(RequestBodyLimitLayer::new(1024))
        .layer(CatchPanicLayer::new())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(1),
        ))
        .layer(require_bearer())
        .layer(CompressionLayer::new())
        .layer(cors().allow_credentials(true))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
    let addr = serve_axum(app).await;
    let bearer = format!("Bearer {TOKEN}");
    let client = [
        ("authorization", bearer.as_str()),
        ("origin", ORIGIN),
        ("accept-encoding", "gzip"),
    ];

    assert_eq!(preflight(addr).await.status, StatusCode::OK);
    let refused = fetch(addr, Method::GET, "/events", &[], "").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(broker.stats().subscribers, 0);

    let mut stream = open_stream(addr, &client).await;
    assert_eq!(stream.header(CONTENT_ENCODING), None);
    assert_eq!(stream.header(ACCESS_CONTROL_ALLOW_ORIGIN), Some(ORIGIN));
    assert_eq!(
        stream.header(ACCESS_CONTROL_ALLOW_CREDENTIALS),
        Some("true")
    );
    assert!(is_uuid(stream.header("x-request-id").expect("an id")));
    let greeting = stream.next_event().await;
    assert_eq!(greeting.event, "server.state");
    assert_eq!(json_of(&greeting)["mode"], "normal");
    assert_live(&mut stream, &broker, "stacked").await;

    let health = fetch(addr, Method::GET, "/health", &client, "").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.header(CONTENT_ENCODING), Some("gzip"));

    let switched = fetch(addr, Method::POST, "/admin/read-only", &client, "").await;
    assert_eq!(
        (switched.status, switched.body),
        (StatusCode::OK, Bytes::from("on"))
    );
    let state = stream.next_event().await;
    assert_eq!(state.event, "server.state");
    assert_eq!(json_of(&state)["mode"], "read-only");

    let write = fetch(addr, Method::POST, "/items", &client, "{}").await;
    assert_eq!(write.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(write.header(RETRY_AFTER), Some("30"));
    assert_eq!(write.header(ACCESS_CONTROL_ALLOW_ORIGIN), Some(ORIGIN));
    assert_eq!(
        fetch(addr, Method::GET, "/ready", &client, "").await.status,
        StatusCode::OK
    );

    assert_live(&mut stream, &broker, "read-only").await;
    assert_eq!(broker.stats().subscribers, 1);
}

// A plain tower stack.

/// `CorsLayer`, `TimeoutLayer` and `ValidateRequestHeaderLayer`'s own
/// validators build answers of their own, so they need `ResBody: Default`.
/// Under `Router::layer` any body would do (axum turns each layer's
/// response into its own `Body`); in a plain tower stack (`ServiceBuilder`,
/// plain hyper) they wrap the crate's layers directly, whose bodies are
/// `Default` for that reason.
#[tokio::test]
async fn a_plain_tower_stack_composes_without_adapters() {
    let broker = Broker::new();
    let mode = tower_sse::mode::ServerMode::new();
    let service = ServiceBuilder::new()
        .layer(cors())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(1),
        ))
        .layer(tower_sse::HealthLayer::new(mode.clone()))
        .layer(SseLayer::new(broker.clone()))
        .layer(tower_sse::RequireWritableLayer::new(mode.clone()))
        .service(routes());
    let addr = serve_hyper(service).await;

    assert_eq!(preflight(addr).await.status, StatusCode::OK);
    let mut stream = open_stream(addr, &[("origin", ORIGIN)]).await;
    assert_eq!(stream.header(ACCESS_CONTROL_ALLOW_ORIGIN), Some(ORIGIN));
    assert_live(&mut stream, &broker, "tower").await;
    let slow = fetch(addr, Method::GET, "/slow", &[], "").await;
    assert_eq!(slow.status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(
        fetch(addr, Method::GET, "/ready", &[], "").await.status,
        StatusCode::OK
    );
    assert_live(&mut stream, &broker, "tower-after").await;
}
