//! An axum app with a live page: publish events from one tab, watch them
//! arrive in every other.
//!
//! ```text
//! cargo run --example demo                      # http://127.0.0.1:3000
//! cargo run --example demo -- --addr 0.0.0.0:8080
//! PORT=8080 cargo run --example demo
//! ```
//!
//! Then open <http://127.0.0.1:3000> in two tabs, or try it from a shell:
//!
//! ```text
//! curl -N localhost:3000/events                       # the public topic, live
//! curl -N 'localhost:3000/events?topic=a&topic=b'     # two topics
//! curl -X POST localhost:3000/publish -d '{"topic": "a", "event": "note", "data": {"text": "hi"}}'
//! curl -X POST localhost:3000/publish -d '{"data": 42}'   # type `message` on `public`
//! curl -N -H 'Last-Event-ID: 1-1' localhost:3000/events   # a stale id: a `resync` first
//! curl localhost:3000/stats
//! ```
//!
//! Routes:
//!
//! - `GET /`: the page, with the broker's current id in it, so that its
//!   first connect resumes from there and misses nothing published between
//!   the render and the connect.
//! - `GET /events?topic=NAME` (repeatable, default `public`): the stream,
//!   served by [`SseLayer`] mounted with `Router::layer`.
//! - `POST /publish` with `{"topic"?: "...", "event"?: "...", "data": <JSON>}`:
//!   publishes `data` as JSON and answers `{"id": "..."}`, or 400 with
//!   `{"error": "..."}`.
//! - `GET /stats`: the broker's counters.
//!
//! Ctrl-C or SIGTERM closes the broker, which ends every open stream with a
//! `retry:` hint, and the server drains its connections and exits.

#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
fn main() -> std::process::ExitCode {
    demo::main()
}

#[cfg(not(loom))]
mod demo {
    use std::process::ExitCode;
    use std::time::Duration;

    use axum::body::Bytes;
    use axum::extract::rejection::BytesRejection;
    use axum::extract::State;
    use axum::http::{header, StatusCode};
    use axum::response::{Html, IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use serde::Deserialize;
    use serde_json::{json, Value};
    use tokio::sync::oneshot;
    use tower_sse::{Broker, Event, SseLayer};

    const DEFAULT_ADDR: &str = "127.0.0.1:3000";
    /// The page; `{{LAST_EVENT_ID}}` is replaced on every render.
    const INDEX_HTML: &str = include_str!("demo/index.html");
    /// How long browsers wait before reconnecting once the server stops.
    const RECONNECT_AFTER_SHUTDOWN: Duration = Duration::from_secs(5);
    /// How long open connections get to finish once the server stops.
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

    #[tokio::main]
    pub(super) async fn main() -> ExitCode {
        let addr = match listen_addr(DEFAULT_ADDR) {
            Ok(addr) => addr,
            Err(message) => {
                eprintln!("{message}\nusage: demo [--addr HOST:PORT]  (or PORT=NNNN)");
                return ExitCode::from(2);
            }
        };
        match run(&addr).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        }
    }

    async fn run(addr: &str) -> std::io::Result<()> {
        let broker = Broker::new();
        let events = SseLayer::new(broker.clone())
            .path("/events")
            .authorize(tower_sse::sse::any_topic);
        let app = Router::new()
            .route("/", get(index))
            .route("/publish", post(publish))
            .route("/stats", get(stats))
            .with_state(broker.clone())
            // Answers `/events` itself, passes everything else to the routes.
            .layer(events);

        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        println!("listening on http://{}", listener.local_addr()?);

        let (stopping, stopped) = oneshot::channel();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown_signal().await;
            println!("shutting down: closing the broker and draining connections");
            // Ends every open stream (with a `retry:` hint), so that the
            // graceful shutdown does not wait on them forever.
            broker.close_with_retry(RECONNECT_AFTER_SHUTDOWN);
            let _ = stopping.send(());
        });
        // A client that keeps a plain request open must not hold the exit.
        let deadline = async {
            if stopped.await.is_ok() {
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = server => result?,
            () = deadline => eprintln!("connections still open after {DRAIN_TIMEOUT:?}; exiting anyway"),
        }
        println!("stopped");
        Ok(())
    }

    /// The page, with the newest id embedded: its first connect passes it as
    /// `?lastEventId=` and so resumes exactly where this render stands.
    async fn index(State(broker): State<Broker>) -> impl IntoResponse {
        let page = INDEX_HTML.replace("{{LAST_EVENT_ID}}", &broker.last_event_id().to_string());
        // Never from a cache: an old copy carries an old id.
        ([(header::CACHE_CONTROL, "no-store")], Html(page))
    }

    #[derive(Deserialize)]
    struct PublishRequest {
        /// Default `public`.
        topic: Option<String>,
        /// Default `message`.
        event: Option<String>,
        /// Required; any JSON value, `null` included.
        data: Value,
    }

    /// `POST /publish`. The body is read as bytes and parsed here, whatever
    /// its content type, so that every mistake is a 400 with a message (or
    /// a 413, also JSON, for a body over axum's 2 MB limit).
    async fn publish(
        State(broker): State<Broker>,
        body: Result<Bytes, BytesRejection>,
    ) -> Response {
        let body = match body {
            Ok(body) => body,
            Err(rejection) => return error(rejection.status(), rejection.body_text()),
        };
        let request: PublishRequest = match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        r#"expected {{"topic"?: string, "event"?: string, "data": any JSON}}: {e}"#
                    ),
                )
            }
        };
        let event = match request.event {
            Some(event_type) => Event::new(event_type),
            None => Event::message(),
        };
        let event = match request.topic {
            Some(topic) => event.topic(topic),
            None => event, // `public`
        };
        let event = match event.json(&request.data) {
            Ok(event) => event,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("cannot encode data: {e}")),
        };
        match broker.publish(event) {
            Ok(id) => Json(json!({ "id": id.to_string() })).into_response(),
            Err(e) => error(StatusCode::BAD_REQUEST, format!("publish refused: {e}")),
        }
    }

    /// `GET /stats`: the broker's counters.
    async fn stats(State(broker): State<Broker>) -> Json<Value> {
        let s = broker.stats();
        Json(json!({
            "last_event_id": broker.last_event_id().to_string(),
            "published": s.published,
            "subscribers": s.subscribers,
            "retained_events": s.retained_events,
            "retained_bytes": s.retained_bytes,
            "evicted": s.evicted,
            "lagged_events": s.lagged_events,
            "lag_reports": s.lag_reports,
            "resyncs": s.resyncs,
            "topics": s.topics,
        }))
    }

    fn error(status: StatusCode, message: impl Into<String>) -> Response {
        (status, Json(json!({ "error": message.into() }))).into_response()
    }

    /// `--addr HOST:PORT` (or `--addr=HOST:PORT`), else `127.0.0.1:$PORT`,
    /// else `default`.
    fn listen_addr(default: &str) -> Result<String, String> {
        let mut args = std::env::args().skip(1);
        let mut addr = None;
        while let Some(arg) = args.next() {
            if arg == "--addr" {
                addr = Some(args.next().ok_or("--addr needs a value, HOST:PORT")?);
            } else if let Some(value) = arg.strip_prefix("--addr=") {
                addr = Some(value.to_owned());
            } else {
                return Err(format!("unknown argument {arg:?}"));
            }
        }
        if let Some(addr) = addr {
            return Ok(addr);
        }
        match std::env::var("PORT") {
            Ok(port) => match port.parse::<u16>() {
                Ok(port) => Ok(format!("127.0.0.1:{port}")),
                Err(_) => Err(format!("PORT={port:?} is not a port number")),
            },
            Err(_) => Ok(default.to_owned()),
        }
    }

    /// Ctrl-C, or SIGTERM on Unix.
    async fn shutdown_signal() {
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let terminate = async {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut sigterm) => {
                    sigterm.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {}
            () = terminate => {}
        }
    }
}
