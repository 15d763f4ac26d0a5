//! An axum app with a live page: publish events from one tab, watch them
//! arrive in every other, and switch the server between normal, read-only
//! and degraded while watching the mode change live.
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
//! curl -X POST localhost:3000/admin/read-only             # toggle read-only
//! curl -X POST localhost:3000/admin/read-only -d '{"on": true, "reason": "backup"}'
//! curl -X POST localhost:3000/admin/degraded -d '{"on": true, "reason": "disk full"}'
//! kill -USR1 PID                                      # toggle read-only (PID is printed at start)
//! curl -i localhost:3000/ready; curl localhost:3000/health
//! ```
//!
//! Routes:
//!
//! - `GET /`: the page, with the broker's current id in it, so that its
//!   first connect resumes from there and misses nothing published between
//!   the render and the connect.
//! - `GET /events?topic=NAME` (repeatable, default `public`): the stream,
//!   served by [`SseLayer`] mounted with `Router::layer`. Every stream
//!   starts with a `server.state` event (the mode now) and gets one on
//!   every change: `{"mode": "normal" | "read-only" | "degraded", "reason",
//!   "since"}`, plus `"shutting_down": true` at the end.
//! - `POST /publish` with `{"topic"?: "...", "event"?: "...", "data": <JSON>}`:
//!   publishes `data` as JSON and answers `{"id": "..."}`, or 400 with
//!   `{"error": "..."}`; `503` with `{"error", "mode", "reason", ...}` and
//!   `Retry-After` while the server is not writable ([`RequireWritableLayer`]).
//! - `GET /stats`: the broker's counters.
//! - `GET /health` (always 200, what an operator reads) and `GET /ready`
//!   (503 when degraded or shutting down, what a load balancer polls),
//!   served by [`HealthLayer`].
//! - `POST /admin/read-only` and `POST /admin/degraded`, with an optional
//!   body `{"on"?: bool, "reason"?: "..."}` (no `on`: toggle): set or clear
//!   the operator's read-only, or the degraded cause that code would set
//!   (say, on a failed disk), and answer the new state with
//!   `"switches": {"read_only": bool, "degraded": bool}`. Exempt from
//!   [`RequireWritableLayer`], or read-only could never be lifted.
//!
//! `kill -USR1 PID` toggles read-only too. Ctrl-C or SIGTERM triggers a
//! [`Shutdown`]: readiness and writes answer 503, and every open stream gets
//! a last `server.state`, then `retry:` and an `event: shutdown` frame, and
//! ends; the server drains its connections (for at most a few seconds) and
//! exits.
//!
//! [`SseLayer`]: tower_sse::SseLayer
//! [`RequireWritableLayer`]: tower_sse::RequireWritableLayer
//! [`HealthLayer`]: tower_sse::HealthLayer
//! [`Shutdown`]: tower_sse::Shutdown

#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
fn main() -> std::process::ExitCode {
    demo::main()
}

#[cfg(not(loom))]
mod demo {
    use std::process::ExitCode;
    use std::sync::{Arc, Mutex, PoisonError};
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
    use tower_sse::mode::{ModeState, ServerMode};
    use tower_sse::{Broker, Event, HealthLayer, RequireWritableLayer, Shutdown, SseLayer};

    const DEFAULT_ADDR: &str = "127.0.0.1:3000";
    /// The page; `{{LAST_EVENT_ID}}` and `{{PID}}` are replaced on every render.
    const INDEX_HTML: &str = include_str!("demo/index.html");
    /// How long browsers wait before reconnecting once the server stops.
    const RECONNECT_AFTER_SHUTDOWN: Duration = Duration::from_secs(5);
    /// How long open connections get to finish once the streams are closed:
    /// a client that keeps a plain request open must not hold the exit.
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
    /// The reasons given when a request or signal names none.
    const READ_ONLY_REASON: &str = "operator (POST /admin/read-only)";
    const DEGRADED_REASON: &str = "simulated failure (POST /admin/degraded)";
    const SIGUSR1_REASON: &str = "operator (SIGUSR1)";

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

    #[derive(Clone)]
    struct AppState {
        broker: Broker,
        switches: Arc<Switches>,
    }

    async fn run(addr: &str) -> std::io::Result<()> {
        let broker = Broker::new();
        let mode = ServerMode::new();
        // Every change of the mode becomes a `server.state` event on every
        // stream, and each new stream starts with the current one.
        broker.follow_mode(&mode);
        let switches = Arc::new(Switches::new(mode.clone()));
        let shutdown = Shutdown::new()
            .broker(&broker)
            .mode(&mode)
            .retry(RECONNECT_AFTER_SHUTDOWN);

        let events = SseLayer::new(broker.clone())
            .path("/events")
            .authorize(tower_sse::sse::any_topic);
        // Refuses POST/PUT/PATCH/DELETE with 503 unless the server is
        // writable; the admin switches must pass, or read-only would stick.
        let writable = RequireWritableLayer::new(mode.clone())
            .exempt(|parts| parts.uri.path().starts_with("/admin/"));
        let health = HealthLayer::new(mode.clone()).broker(&broker);
        // The last layer added is the outermost: `/events`, `/health` and
        // `/ready` are answered before the write guard, in every mode.
        let app = Router::new()
            .route("/", get(index))
            .route("/publish", post(publish))
            .route("/stats", get(stats))
            .route("/admin/read-only", post(admin_read_only))
            .route("/admin/degraded", post(admin_degraded))
            .with_state(AppState {
                broker: broker.clone(),
                switches: switches.clone(),
            })
            .layer(writable)
            .layer(health)
            .layer(events);

        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let pid = std::process::id();
        println!("listening on http://{} (pid {pid})", listener.local_addr()?);
        println!("kill -USR1 {pid} toggles read-only; Ctrl-C or kill {pid} stops");

        toggle_read_only_on_sigusr1(&switches);
        tokio::spawn(trigger_on_terminate_signal(shutdown.clone()));

        // `wait()` completes once the streams were told to end; from then
        // on, the server stops accepting and waits for its connections.
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.wait());
        let stopped = shutdown.wait();
        let deadline = async {
            stopped.await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
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
    async fn index(State(app): State<AppState>) -> impl IntoResponse {
        let page = INDEX_HTML
            .replace("{{LAST_EVENT_ID}}", &app.broker.last_event_id().to_string())
            .replace("{{PID}}", &std::process::id().to_string());
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
    /// a 413, also JSON, for a body over axum's 2 MB limit). While the
    /// server is not writable, [`RequireWritableLayer`] answers 503 before
    /// this runs.
    async fn publish(State(app): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
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
        match app.broker.publish(event) {
            Ok(id) => Json(json!({ "id": id.to_string() })).into_response(),
            Err(e) => error(StatusCode::BAD_REQUEST, format!("publish refused: {e}")),
        }
    }

    /// `GET /stats`: the broker's counters.
    async fn stats(State(app): State<AppState>) -> Json<Value> {
        let broker = &app.broker;
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

    // --- the mode switches -------------------------------------------------

    /// The two causes this demo sets on the [`ServerMode`], kept here
    /// because the mode only reports what it derives from them (degraded
    /// hides an operator's read-only) and has no toggle for degraded. Every
    /// change goes through the lock, so a toggle never races another.
    struct Switches {
        mode: ServerMode,
        on: Mutex<SwitchState>,
    }

    #[derive(Clone, Copy, Default)]
    struct SwitchState {
        read_only: bool,
        degraded: bool,
    }

    #[derive(Clone, Copy)]
    enum Switch {
        ReadOnly,
        Degraded,
    }

    impl Switches {
        fn new(mode: ServerMode) -> Self {
            Self {
                mode,
                on: Mutex::new(SwitchState::default()),
            }
        }

        /// Sets `switch` to `on` (`None`: toggles it), with `reason` when
        /// on; returns the state it leads to and the switches.
        fn set(&self, switch: Switch, on: Option<bool>, reason: &str) -> (ModeState, SwitchState) {
            let mut state = self.on.lock().unwrap_or_else(PoisonError::into_inner);
            let flag = match switch {
                Switch::ReadOnly => &mut state.read_only,
                Switch::Degraded => &mut state.degraded,
            };
            let on = on.unwrap_or(!*flag);
            *flag = on;
            match (switch, on) {
                (Switch::ReadOnly, true) => self.mode.set_read_only(reason),
                (Switch::ReadOnly, false) => self.mode.clear_read_only(),
                (Switch::Degraded, true) => self.mode.set_degraded(reason),
                (Switch::Degraded, false) => self.mode.clear_degraded(),
            }
            (self.mode.current(), *state)
        }
    }

    /// What the admin routes answer: `{"mode", "reason", "since"}` as in
    /// `server.state` events, and `"switches"`.
    fn switch_answer((mode, switches): (ModeState, SwitchState)) -> Json<Value> {
        let mut answer = serde_json::to_value(mode).unwrap_or_default();
        answer["switches"] =
            json!({ "read_only": switches.read_only, "degraded": switches.degraded });
        Json(answer)
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SwitchRequest {
        /// Absent: toggle.
        on: Option<bool>,
        /// Absent or empty: the route's default.
        reason: Option<String>,
    }

    /// `POST /admin/read-only`: the operator's read-only.
    async fn admin_read_only(
        State(app): State<AppState>,
        body: Result<Bytes, BytesRejection>,
    ) -> Response {
        admin_switch(&app, Switch::ReadOnly, READ_ONLY_REASON, body)
    }

    /// `POST /admin/degraded`: what code would set on a failed dependency;
    /// `/ready` answers 503 while it is on.
    async fn admin_degraded(
        State(app): State<AppState>,
        body: Result<Bytes, BytesRejection>,
    ) -> Response {
        admin_switch(&app, Switch::Degraded, DEGRADED_REASON, body)
    }

    /// An empty body toggles; otherwise `{"on"?: bool, "reason"?: string}`.
    fn admin_switch(
        app: &AppState,
        switch: Switch,
        default_reason: &str,
        body: Result<Bytes, BytesRejection>,
    ) -> Response {
        let body = match body {
            Ok(body) => body,
            Err(rejection) => return error(rejection.status(), rejection.body_text()),
        };
        let request = if body.trim_ascii().is_empty() {
            SwitchRequest {
                on: None,
                reason: None,
            }
        } else {
            match serde_json::from_slice(&body) {
                Ok(request) => request,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            r#"expected no body (toggle) or {{"on"?: bool, "reason"?: string}}: {e}"#
                        ),
                    )
                }
            }
        };
        let reason = request
            .reason
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| default_reason.to_owned());
        switch_answer(app.switches.set(switch, request.on, &reason)).into_response()
    }

    fn error(status: StatusCode, message: impl Into<String>) -> Response {
        (status, Json(json!({ "error": message.into() }))).into_response()
    }

    // --- signals -----------------------------------------------------------

    /// `kill -USR1 PID` toggles the operator's read-only.
    #[cfg(unix)]
    fn toggle_read_only_on_sigusr1(switches: &Arc<Switches>) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = match signal(SignalKind::user_defined1()) {
            Ok(usr1) => usr1,
            Err(e) => {
                eprintln!("cannot listen for SIGUSR1, read-only only from the page: {e}");
                return;
            }
        };
        let switches = switches.clone();
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                let (mode, on) = switches.set(Switch::ReadOnly, None, SIGUSR1_REASON);
                let on = if on.read_only { "on" } else { "off" };
                println!("SIGUSR1: read-only {on}; the server is now {}", mode.mode);
            }
        });
    }

    #[cfg(not(unix))]
    fn toggle_read_only_on_sigusr1(_: &Arc<Switches>) {}

    /// Triggers `shutdown` on Ctrl-C, or SIGTERM on Unix.
    async fn trigger_on_terminate_signal(shutdown: Shutdown) {
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
        let name = tokio::select! {
            () = ctrl_c => "Ctrl-C",
            () = terminate => "SIGTERM",
        };
        println!("{name}: shutting down: ending the streams and draining connections");
        // Readiness and writes answer 503, then every stream gets its last
        // frame (`retry:` and `event: shutdown`) and ends.
        shutdown.trigger();
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
}
