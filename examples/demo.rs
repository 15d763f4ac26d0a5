//! An axum app with a live page: publish events from one tab, watch them
//! arrive in every other, switch the server between normal, read-only and
//! degraded while watching the mode change live, and send notifications
//! from one user to another, held while the target is offline and answered
//! with a reply that the sender sees live.
//!
//! ```text
//! cargo run --example demo                      # http://127.0.0.1:3000
//! cargo run --example demo -- --addr 0.0.0.0:8080
//! PORT=8080 cargo run --example demo
//! cargo run --example demo -- --tls              # https://127.0.0.1:3000, HTTP/2
//! ```
//!
//! With `--tls` the same app is served over HTTPS, with a self-signed
//! certificate for `127.0.0.1` and `localhost` generated at every start
//! (nothing is read from or written to disk): browsers warn about it once
//! (or start Chromium with `--ignore-certificate-errors`), `curl` needs
//! `-k`. ALPN offers `h2` and `http/1.1`, so a browser speaks HTTP/2 and
//! all its `EventSource`s to the page's origin share one connection; over
//! plain HTTP/1.1 a browser opens at most six connections to an origin and
//! the seventh `EventSource` waits for one of them to close. `--tls`
//! combines with `--addr` and `--redis`.
//!
//! Two replicas of one service, sharing their events on Redis (any
//! `redis-server`; `REDIS_URL` works too):
//!
//! ```text
//! cargo run --example demo -- --addr 127.0.0.1:3000 --redis redis://127.0.0.1:6379
//! cargo run --example demo -- --addr 127.0.0.1:3001 --redis redis://127.0.0.1:6379
//! ```
//!
//! An event published on either reaches the streams of both, with the same
//! id, and a stream cut from one resumes on the other with nothing missed.
//! Each replica's mode is degraded (and `/ready` 503) while it is not in
//! step with Redis; publishing then answers 503. The mailbox is kept in
//! Redis too: a notification sent on one replica reaches its target's
//! streams on either, held ones are delivered wherever the target
//! connects, and status, reply and ack work on both, even once the replica
//! that took the send is gone.
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
//! curl localhost:3000/metrics                         # Prometheus text format
//! curl -X POST localhost:3000/admin/read-only             # toggle read-only
//! curl -X POST localhost:3000/admin/read-only -d '{"on": true, "reason": "backup"}'
//! curl -X POST localhost:3000/admin/degraded -d '{"on": true, "reason": "disk full"}'
//! kill -USR1 PID                                      # toggle read-only (PID is printed at start)
//! curl -i localhost:3000/ready; curl localhost:3000/health
//! ```
//!
//! Notifications, with the demo's toy identity `?as=NAME`:
//!
//! ```text
//! curl -X POST 'localhost:3000/notify?as=alice' -d '{"to": "bob", "payload": {"text": "lunch?"}, "expects_reply": true}'
//! curl -N 'localhost:3000/events?as=bob'              # bob's stream: the held notification first
//! curl -X POST 'localhost:3000/notifications/TRACE/reply?as=bob' -d '"yes"'
//! curl 'localhost:3000/notifications/TRACE?as=alice'  # "replied": true, "reply": "yes"
//! curl -X POST 'localhost:3000/notifications/TRACE/ack?as=bob'   # 204: delivered
//! ```
//!
//! # The toy identity
//!
//! **`?as=NAME` on any request is who the request claims to be, and this
//! demo believes it.** No real app may do that: the crate never reads an
//! identity from the request itself, it takes it from the app, through the
//! authorizer's [`Grant::client`] for the events route and
//! [`MailboxLayer::identify`] for the notification routes, which a real app
//! fills from its own authentication (a session cookie checked by its auth
//! middleware, a verified token). This demo plugs `?as=` into exactly those
//! two hooks, so swapping in real authentication touches nothing else.
//!
//! # Routes
//!
//! - `GET /`: the page, with the broker's current id in it, so that its
//!   first anonymous connect resumes from there and misses nothing
//!   published between the render and the connect. `GET /demo.js` and
//!   `GET /demo.css` are its script and style.
//! - `GET /events?topic=NAME` (repeatable, default `public`), and `as=NAME`:
//!   the stream, served by [`SseLayer`] mounted with `Router::layer`. Every
//!   stream starts with a `server.state` event (the mode now) and gets one
//!   on every change: `{"mode": "normal" | "read-only" | "degraded",
//!   "reason", "since"}`, plus `"shutting_down": true` at the end. With
//!   `as=NAME` it also carries NAME's notifications, as `event:
//!   notification` frames with `{"trace", "from", "payload",
//!   "expects_reply", "created"}` (those held while NAME was offline
//!   first), and the replies to what NAME sent, as `event:
//!   notification.reply` frames with `{"trace", "by", "payload", "at"}`.
//! - `POST /publish` with `{"topic"?: "...", "event"?: "...", "data": <JSON>}`:
//!   publishes `data` as JSON and answers `{"id": "..."}`, or 400 with
//!   `{"error": "..."}` (413 for an event over the broker's 1 MiB, 503 once
//!   shutting down); `503` with `{"error", "mode", "reason", ...}` and
//!   `Retry-After` while the server is not writable ([`RequireWritableLayer`]).
//! - `POST /notify?as=NAME` with `{"to": "...", "payload": <JSON>,
//!   "expects_reply"?: bool, "ttl_secs"?: int}`: sends a notification from
//!   NAME and answers `{"trace": "..."}`. No `as` → 401; a body that is not
//!   that JSON, an invalid name or TTL → 400; a payload over 64 KiB → 413;
//!   the sender over its share → 429 and the mailbox full → 507, with
//!   `Retry-After`; with `--redis`, Redis unreachable → 503 with
//!   `Retry-After`; all with `{"error": "..."}`. Refused with 503
//!   while the server is not writable, like every write.
//! - `GET /notifications/{trace}?as=NAME`: the status, for its sender or
//!   target only (`{"trace", "from", "to", "expects_reply", "created",
//!   "delivered", "delivered_at", "replied", "reply", "replied_at"}`);
//!   `POST /notifications/{trace}/reply?as=NAME` with any JSON body: the
//!   target's one reply; `POST /notifications/{trace}/ack?as=NAME`: the
//!   target confirms it got it (`204`). Served by [`MailboxLayer`]: 401
//!   without `as`, 404 for a trace that is unknown or not NAME's, 409 for a
//!   second reply or a reply nobody asked for, 410 once expired. Replies
//!   and acks are writes: 503 while the server is not writable.
//! - `GET /stats`: the broker's counters, the mailbox's under `"mailbox"`
//!   and, with `--redis`, the backplane's under `"backplane"`.
//! - `GET /metrics`: every metric the crate records (its `metrics`
//!   feature; see `tower_sse::metrics`), in Prometheus's text format, from
//!   `metrics-exporter-prometheus` installed as the process's recorder.
//! - `GET /health` (always 200, what an operator reads) and `GET /ready`
//!   (503 when degraded or shutting down, what a load balancer polls),
//!   served by [`HealthLayer`].
//! - `POST /admin/read-only` and `POST /admin/degraded`, with an optional
//!   body `{"on"?: bool, "reason"?: "..."}` (no `on`: toggle): set or clear
//!   the operator's read-only, or the degraded cause that code would set
//!   (say, on a failed disk), and answer the new state with
//!   `"switches": {"read_only": bool, "degraded": bool}` and every cause
//!   in force under `"causes"` ([`ServerMode::causes`]). Exempt from
//!   [`RequireWritableLayer`], or read-only could never be lifted.
//!
//! Notifications are held for 24 hours (or `ttl_secs`) until their target
//! confirms it got them, by an ack or by reconnecting past them; a janitor
//! task purges the expired ones every 30 seconds.
//!
//! `kill -USR1 PID` toggles read-only too. Ctrl-C or SIGTERM triggers a
//! [`Shutdown`]: readiness and writes answer 503 and every open stream gets
//! a last `server.state`; one second later (what a load balancer polling
//! `/ready` needs to stop sending clients) every stream gets `retry:` and
//! an `event: shutdown` frame, and ends; the server drains its connections
//! (for at most 10 seconds, for readers that stopped reading) and exits.
//! Over `--tls` the same: HTTP/2 connections get a GOAWAY and close once
//! their streams have ended.
//!
//! [`SseLayer`]: tower_sse::SseLayer
//! [`RequireWritableLayer`]: tower_sse::RequireWritableLayer
//! [`HealthLayer`]: tower_sse::HealthLayer
//! [`Shutdown`]: tower_sse::Shutdown
//! [`Grant::client`]: tower_sse::Grant::client
//! [`MailboxLayer`]: tower_sse::mailbox::MailboxLayer
//! [`MailboxLayer::identify`]: tower_sse::mailbox::MailboxLayer::identify
//! [`ServerMode::causes`]: tower_sse::mode::ServerMode::causes

#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
fn main() -> std::process::ExitCode {
    demo::main()
}

#[cfg(not(loom))]
mod demo {
    use std::future::{Future, IntoFuture};
    use std::pin::Pin;
    use std::process::ExitCode;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::body::Bytes;
    use axum::extract::rejection::BytesRejection;
    use axum::extract::Request;
    use axum::extract::State;
    use axum::http::request::Parts;
    use axum::http::{header, HeaderValue, StatusCode, Uri};
    use axum::middleware::Next;
    use axum::response::{Html, IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use rustls::ServerConfig;
    use serde::Deserialize;
    use serde_json::{json, Value};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;
    use tower_sse::backplane::{BackplaneError, RedisBackplane, Replica};
    use tower_sse::mailbox::{Mailbox, MailboxLayer, MailboxStore, Notification, SendError};
    use tower_sse::mode::ServerMode;
    use tower_sse::tcp::TcpTuning;
    use tower_sse::{
        Broker, Event, Grant, HealthLayer, PublishError, Rejection, RequireWritableLayer, Shutdown,
        SseLayer,
    };

    const DEFAULT_ADDR: &str = "127.0.0.1:3000";
    /// The page; `{{LAST_EVENT_ID}}` and `{{PID}}` are replaced on every render.
    const INDEX_HTML: &str = include_str!("demo/index.html");
    const DEMO_JS: &str = include_str!("demo/demo.js");
    const DEMO_CSS: &str = include_str!("demo/demo.css");
    /// How long browsers wait before reconnecting once the server stops.
    const RECONNECT_AFTER_SHUTDOWN: Duration = Duration::from_secs(5);
    /// How long `/ready` answers 503 while everything is still served, before
    /// the streams are told to end: time for a load balancer polling it to
    /// stop sending new clients here.
    const READINESS_DRAIN: Duration = Duration::from_secs(1);
    /// How long open connections get to finish once the streams are closed:
    /// a client that keeps a plain request open must not hold the exit.
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
    /// How often the janitor purges expired notifications.
    const JANITOR_INTERVAL: Duration = Duration::from_secs(30);
    /// The longest `ttl_secs` a notification may ask for: a week.
    const MAX_TTL_SECS: u64 = 7 * 24 * 60 * 60;
    /// The Redis stream the replicas of the demo share.
    const REDIS_STREAM: &str = "tower-sse-demo:events";
    /// The reasons given when a request or signal names none.
    const READ_ONLY_REASON: &str = "operator (POST /admin/read-only)";
    const DEGRADED_REASON: &str = "simulated failure (POST /admin/degraded)";
    const SIGUSR1_REASON: &str = "operator (SIGUSR1)";
    /// What the `--tls` certificate is valid for.
    const TLS_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];
    /// How long a TLS client gets to finish its handshake: one that
    /// connects and says nothing must not hold a task (and, once shutting
    /// down, the exit) for ever.
    const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// How often the Prometheus recorder does its upkeep whether or not
    /// anyone scrapes `/metrics` (the crate records no histograms, but an
    /// app's own might): the exporter's `install` would spawn this itself,
    /// but `install_recorder`, which leaves the serving to the demo,
    /// leaves the upkeep too.
    const METRICS_UPKEEP: Duration = Duration::from_secs(5);
    /// The Prometheus text exposition format.
    const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

    #[tokio::main]
    pub(super) async fn main() -> ExitCode {
        let options = match Options::parse(DEFAULT_ADDR) {
            Ok(options) => options,
            Err(message) => {
                eprintln!(
                    "{message}\nusage: demo [--addr HOST:PORT] [--redis URL] [--tls]  (or PORT=NNNN, REDIS_URL=URL)"
                );
                return ExitCode::from(2);
            }
        };
        match run(options).await {
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
        /// With `--redis`: where events are published, for every replica.
        replica: Option<Replica>,
        mode: ServerMode,
        /// In memory, or with `--redis` kept in Redis for every replica.
        mailbox: Arc<dyn MailboxStore>,
        /// What `GET /metrics` renders.
        metrics: PrometheusHandle,
    }

    async fn run(options: Options) -> std::io::Result<()> {
        let addr = options.addr.as_str();
        // Before anything records: a metric touched before the recorder is
        // installed (a gauge set when a broker is built) goes nowhere.
        let metrics = install_metrics_recorder()?;
        // Made before listening, so that a failure leaves the port alone.
        let tls = if options.tls {
            Some(self_signed_tls_config()?)
        } else {
            None
        };
        let mode = ServerMode::new();
        // With Redis, the broker mirrors the stream every replica shares:
        // its reader runs until the broker closes, and degrades the mode
        // while it is not in step.
        let replica = match &options.redis {
            Some(url) => {
                let backplane = RedisBackplane::new(url)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                Some(
                    backplane
                        .stream(REDIS_STREAM)
                        .mode(&mode)
                        .start(Broker::builder()),
                )
            }
            None => None,
        };
        let broker = match &replica {
            Some(replica) => replica.broker().clone(),
            None => Broker::new(),
        };
        // Every change of the mode becomes a `server.state` event on every
        // stream, and each new stream starts with the current one.
        broker.follow_mode(&mode);
        // Notifications travel on the same broker, each on its target's
        // private topic. In memory, a janitor purges expired ones; it stops
        // when its handle is dropped, at the end of `run`: it lives exactly
        // as long as the server. With Redis, the mailbox is kept there for
        // every replica (each of its steps purges what expired).
        let mut _janitor = None;
        let (mailbox, events): (Arc<dyn MailboxStore>, _) = match &replica {
            Some(replica) => {
                let mailbox = Mailbox::builder(broker.clone()).redis(replica);
                (
                    Arc::new(mailbox.clone()),
                    SseLayer::new(broker.clone()).hook(mailbox),
                )
            }
            None => {
                let mailbox = Mailbox::new(broker.clone());
                _janitor = Some(mailbox.spawn_janitor(JANITOR_INTERVAL));
                (
                    Arc::new(mailbox.clone()),
                    SseLayer::new(broker.clone()).mailbox(mailbox),
                )
            }
        };
        let shutdown = Shutdown::new()
            .broker(&broker)
            .mode(&mode)
            .retry(RECONNECT_AFTER_SHUTDOWN)
            .drain(READINESS_DRAIN);

        // Any topic the request names, and, with `?as=NAME`, NAME's
        // notifications and replies.
        let events = events.path("/events").authorize(authorize);
        // Status, reply and ack of notifications, for the caller `?as=` names.
        let notifications = MailboxLayer::shared(mailbox.clone())
            .identify(|parts: &Parts| toy_identity(parts.uri.query()));
        // Refuses POST/PUT/PATCH/DELETE with 503 unless the server is
        // writable, replies and acks included; the admin switches must
        // pass, or read-only would stick.
        let writable = RequireWritableLayer::new(mode.clone())
            .exempt(|parts| parts.uri.path().starts_with("/admin/"));
        let health = HealthLayer::new(mode.clone()).broker(&broker);
        // The last layer added is the outermost: `/events`, `/health` and
        // `/ready` are answered before the write guard, in every mode; the
        // notification routes after it.
        let app = Router::new()
            .route("/", get(index))
            .route("/demo.js", get(script))
            .route("/demo.css", get(style))
            .route("/publish", post(publish))
            .route("/notify", post(notify))
            .route("/stats", get(stats))
            // A read: `RequireWritableLayer` lets GET through in every mode.
            .route("/metrics", get(render_metrics))
            .route("/admin/read-only", post(admin_read_only))
            .route("/admin/degraded", post(admin_degraded))
            .with_state(AppState {
                broker: broker.clone(),
                replica,
                mode: mode.clone(),
                mailbox,
                metrics,
            })
            .layer(notifications)
            .layer(writable)
            .layer(health)
            .layer(events)
            .layer(axum::middleware::from_fn(utf8_identity));

        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let pid = std::process::id();
        let scheme = if tls.is_some() { "https" } else { "http" };
        println!(
            "listening on {scheme}://{} (pid {pid})",
            listener.local_addr()?
        );
        if tls.is_some() {
            println!(
                "TLS: a SELF-SIGNED certificate for {}, generated at start (new every run, never \
                 written to disk): browsers warn about it, curl needs -k; HTTP/2 and HTTP/1.1 by ALPN",
                TLS_NAMES.join(" and ")
            );
        }
        if let Some(url) = &options.redis {
            println!("events shared on Redis: {url}, stream {REDIS_STREAM}");
        }
        println!("kill -USR1 {pid} toggles read-only; Ctrl-C or kill {pid} stops");

        toggle_read_only_on_sigusr1(&mode);
        tokio::spawn(trigger_on_terminate_signal(shutdown.clone()));

        // `wait()` completes once the streams were told to end; from then
        // on, the server stops accepting and waits for its connections.
        // The kernel closes connections whose reader vanished or stopped
        // reading (unacknowledged data for 45 s, or silent peers).
        let server: Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> = match tls {
            // Every request through hyper, HTTP/2 or HTTP/1.1 as ALPN chose.
            Some(tls) => Box::pin(serve_tls(listener, app, tls, shutdown.wait())),
            // `tower_sse::serve` drives event streams on lean connections
            // of its own (a browser's `EventSource` asks for
            // `text/event-stream`; the stream path covers `curl`) and
            // everything else through hyper (HTTP/2 too, for a client that
            // speaks it with prior knowledge: h2c).
            None => Box::pin(
                tower_sse::serve(listener, app)
                    .stream_path("/events")
                    .tcp_tuning(TcpTuning::default())
                    .with_graceful_shutdown(shutdown.wait())
                    .into_future(),
            ),
        };
        let stopped = shutdown.wait();
        let deadline = async {
            stopped.await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        };
        tokio::select! {
            result = server => result?,
            () = deadline => eprintln!("connections still open after {DRAIN_TIMEOUT:?}; exiting anyway"),
        }
        // A closed stdout must not turn a clean stop into a panic.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), b"stopped\n");
        Ok(())
    }

    // --- HTTPS (`--tls`) ---------------------------------------------------

    /// A rustls server configuration with a certificate made now, signed by
    /// its own key, for [`TLS_NAMES`]. The crypto is ring's, named here, so
    /// nothing depends on a process-wide default provider (or on aws-lc).
    fn self_signed_tls_config() -> std::io::Result<Arc<ServerConfig>> {
        let invalid = |what: &str, e: &dyn std::fmt::Display| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {e}"))
        };
        let names = TLS_NAMES.map(str::to_owned).to_vec();
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(names)
                .map_err(|e| invalid("cannot make a self-signed certificate", &e))?;
        let key = PrivatePkcs8KeyDer::from(signing_key.serialize_der());
        // rustls 0.23.48 deprecated ring's provider (ring has no
        // post-quantum key exchange; aws-lc-rs does), and it offers no
        // undeprecated way to build one. Classical key exchange is fine for
        // a certificate that lives as long as a local demo.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("TLS versions", &e))?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key.into())
            .map_err(|e| invalid("TLS certificate", &e))?;
        // HTTP/2 first: a browser offering both takes it, and then one
        // connection carries all its streams to this origin.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Serves `app` over TLS until `stop` completes, then stops accepting
    /// and waits for the open connections to finish: HTTP/2 ones get a
    /// GOAWAY and end once their streams have (the [`Shutdown`] behind
    /// `stop` has ended every event stream by then), idle HTTP/1.1 ones
    /// close at once. [`run`]'s deadline bounds the wait, as for plain HTTP.
    async fn serve_tls(
        listener: TcpListener,
        app: Router,
        tls: Arc<ServerConfig>,
        stop: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let acceptor = TlsAcceptor::from(tls);
        // One builder for both protocols: it reads the connection's first
        // bytes, the HTTP/2 preface after ALPN chose `h2`, and serves it
        // as that. The timers drive HTTP/1.1's header read timeout (30 s:
        // a head dripped a byte at a time) and HTTP/2's keep-alive.
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
        let service = TowerToHyperService::new(app);
        let graceful = GracefulShutdown::new();
        // Set once `stop` completed: a connection still in its TLS
        // handshake then is dropped, having no request to finish.
        let (stopping, _) = tokio::sync::watch::channel(false);
        let tuning = TcpTuning::default();
        tokio::pin!(stop);
        loop {
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _peer)) => tcp,
                    Err(e) => {
                        // Out of file descriptors, say: wait for some to
                        // be freed rather than spin.
                        eprintln!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut stop => break,
            };
            let _ = tuning.apply(&tcp);
            // Both taken before the shutdown can be signalled: a connection
            // whose handshake ends as it is signalled is told to finish as
            // soon as it is served, and `shutdown()` waits for it.
            let watcher = graceful.watcher();
            let mut stopped = stopping.subscribe();
            let (acceptor, builder, service) = (acceptor.clone(), builder.clone(), service.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                let stream = tokio::select! {
                    handshake = handshake => match handshake {
                        Ok(Ok(stream)) => stream,
                        // The client's business: one that does not trust
                        // the certificate hangs up here.
                        _ => return,
                    },
                    _ = stopped.wait_for(|stopped| *stopped) => return,
                };
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                // An error is one connection's (a reset, a protocol error).
                let _ = watcher.watch(connection).await;
            });
        }
        drop(listener);
        stopping.send_replace(true);
        graceful.shutdown().await;
        Ok(())
    }

    // --- metrics -------------------------------------------------------------

    /// Installs the Prometheus recorder as the process's: every metric the
    /// crate records from now on lands in it. The recorder's upkeep runs
    /// on a timer, as nothing else calls it between scrapes.
    fn install_metrics_recorder() -> std::io::Result<PrometheusHandle> {
        let handle = PrometheusBuilder::new().install_recorder().map_err(|e| {
            std::io::Error::other(format!("cannot install the metrics recorder: {e}"))
        })?;
        // Help text and units: the `# HELP` lines of `/metrics`.
        tower_sse::metrics::describe();
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(METRICS_UPKEEP);
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
        Ok(handle)
    }

    /// `GET /metrics`: the recorder's metrics in Prometheus's text format.
    async fn render_metrics(State(app): State<AppState>) -> impl IntoResponse {
        (
            [
                (header::CONTENT_TYPE, METRICS_CONTENT_TYPE),
                (header::CACHE_CONTROL, "no-store"),
            ],
            app.metrics.render(),
        )
    }

    // --- the toy identity --------------------------------------------------

    /// **A toy**: the `as` query parameter, taken on the caller's word.
    /// A real app reads who is calling from what its own authentication
    /// middleware verified and stored in the request's extensions; the
    /// crate only ever gets the identity from these two hooks.
    fn toy_identity(query: Option<&str>) -> Option<String> {
        form_urlencoded::parse(query?.as_bytes())
            .find(|(key, _)| key == "as")
            .map(|(_, name)| name.into_owned())
            .filter(|name| !name.is_empty())
    }

    /// Refuses, with 400, a request whose `as` is not UTF-8 once decoded
    /// (`%FF`): decoded leniently it would become U+FFFD, and every such
    /// name the same client.
    async fn utf8_identity(request: Request, next: Next) -> Response {
        let query = request.uri().query().unwrap_or_default();
        let invalid = query.split('&').any(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            key == "as" && !percent_decodes_to_utf8(value)
        });
        if invalid {
            return error(StatusCode::BAD_REQUEST, "?as= must be UTF-8 once decoded");
        }
        next.run(request).await
    }

    /// Whether `value`, `+` and `%XX` decoded as in a query string, is UTF-8.
    fn percent_decodes_to_utf8(value: &str) -> bool {
        let bytes = value.as_bytes();
        let mut decoded = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            match bytes[i] {
                b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        decoded.push((high * 16 + low) as u8);
                        i += 3;
                        continue;
                    }
                    _ => decoded.push(b'%'),
                },
                b'+' => decoded.push(b' '),
                b => decoded.push(b),
            }
            i += 1;
        }
        String::from_utf8(decoded).is_ok()
    }

    /// The events route's authorizer: whatever topics the request names
    /// (default `public`), and with `?as=NAME` the stream is NAME's, so it
    /// carries NAME's notifications too. A name the mailbox cannot take
    /// (over 128 bytes, control characters) is refused with 400.
    fn authorize(parts: &Parts) -> Result<Grant, Rejection> {
        let grant = tower_sse::sse::any_topic(parts)?;
        Ok(match toy_identity(parts.uri.query()) {
            Some(name) => Grant::new(grant.topics().clone()).client(name),
            None => grant,
        })
    }

    // --- the page ----------------------------------------------------------

    /// The page, with the newest id embedded: its first anonymous connect
    /// passes it as `?lastEventId=` and so resumes exactly where this render
    /// stands.
    async fn index(State(app): State<AppState>) -> impl IntoResponse {
        let page = INDEX_HTML
            .replace("{{LAST_EVENT_ID}}", &app.broker.last_event_id().to_string())
            .replace("{{PID}}", &std::process::id().to_string());
        // Never from a cache: an old copy carries an old id.
        ([(header::CACHE_CONTROL, "no-store")], Html(page))
    }

    async fn script() -> impl IntoResponse {
        (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            DEMO_JS,
        )
    }

    async fn style() -> impl IntoResponse {
        (
            [
                (header::CONTENT_TYPE, "text/css; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            DEMO_CSS,
        )
    }

    // --- publishing --------------------------------------------------------

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
    /// a 413, also JSON, for a body over axum's 2 MB limit or an event over
    /// the broker's limit). While the
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
        let published = match &app.replica {
            Some(replica) => replica.publish(event).await,
            None => app.broker.publish(event).map_err(BackplaneError::Publish),
        };
        match published {
            Ok(id) => Json(json!({ "id": id.to_string() })).into_response(),
            // Shutting down: the request was fine, the server is going.
            Err(BackplaneError::Publish(e @ PublishError::Closed)) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("publish refused: {e}"),
            ),
            Err(BackplaneError::Publish(e @ PublishError::TooLarge { .. })) => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("publish refused: {e}"),
            ),
            // Redis is away: the request was fine; try again shortly.
            Err(e @ BackplaneError::Unavailable(_)) => {
                let mut response = error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }

    // --- notifications -----------------------------------------------------

    #[derive(Deserialize)]
    struct NotifyRequest {
        /// The target's name.
        to: String,
        /// Required; any JSON value, `null` included.
        payload: Value,
        /// Whether the target may answer once (default false).
        #[serde(default)]
        expects_reply: bool,
        /// How long it is held, 1 s to a week (default: the mailbox's 24 h).
        ttl_secs: Option<u64>,
    }

    /// `POST /notify?as=NAME`: a notification from NAME. Delivered at once
    /// to every open stream of the target, else held until one opens; the
    /// trace names it on the status, reply and ack routes. While the server
    /// is not writable, [`RequireWritableLayer`] answers 503 before this runs.
    async fn notify(
        State(app): State<AppState>,
        uri: Uri,
        body: Result<Bytes, BytesRejection>,
    ) -> Response {
        let Some(from) = toy_identity(uri.query()) else {
            return error(
                StatusCode::UNAUTHORIZED,
                "who is sending? add ?as=NAME (the demo's toy identity)",
            );
        };
        let body = match body {
            Ok(body) => body,
            Err(rejection) => return error(rejection.status(), rejection.body_text()),
        };
        let request: NotifyRequest = match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        r#"expected {{"to": string, "payload": any JSON, "expects_reply"?: bool, "ttl_secs"?: int}}: {e}"#
                    ),
                )
            }
        };
        let ttl = match request.ttl_secs {
            None => None,
            Some(secs @ 1..=MAX_TTL_SECS) => Some(Duration::from_secs(secs)),
            Some(secs) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("ttl_secs is 1 to {MAX_TTL_SECS}, not {secs}"),
                )
            }
        };
        let mut notification = match Notification::to(request.to)
            .from(from)
            .json(&request.payload)
        {
            Ok(notification) => notification,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot encode payload: {e}"),
                )
            }
        };
        if request.expects_reply {
            notification = notification.expects_reply();
        }
        if let Some(ttl) = ttl {
            notification = notification.ttl(ttl);
        }
        let sent = app.mailbox.send(notification).await;
        match sent {
            Ok(trace) => Json(json!({ "trace": trace })).into_response(),
            Err(e @ SendError::TooLarge { .. }) => {
                error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            }
            // This sender holds its whole share: room is made as its
            // notifications are delivered or expire.
            Err(ref e @ SendError::SenderOverShare { retry_after }) => retry_later(
                error(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
                retry_after,
            ),
            // The mailbox holds all it may, whoever sends.
            Err(ref e @ SendError::Full { retry_after }) => retry_later(
                error(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
                retry_after,
            ),
            // Redis did not answer: the notification may or may not be held.
            Err(SendError::Unavailable(e)) => retry_later(
                error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                e.retry_after(),
            ),
            // An invalid name, a payload that cannot be encoded.
            Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }

    /// `GET /stats`: the broker's counters, and the mailbox's.
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
            "mailbox": match app.mailbox.stats().await {
                Ok(stats) => json!(stats),
                Err(e) => json!({ "error": e.to_string() }),
            },
            "backplane": app.replica.as_ref().map(Replica::stats),
        }))
    }

    // --- the mode switches -------------------------------------------------

    #[derive(Clone, Copy)]
    enum Switch {
        ReadOnly,
        Degraded,
    }

    /// Sets `switch` to `on` (`None`: toggles it), with `reason` when on.
    /// Each is one cause of the [`ServerMode`], changed under its lock, so
    /// a toggle never races another.
    fn set_switch(mode: &ServerMode, switch: Switch, on: Option<bool>, reason: String) {
        match (switch, on) {
            (Switch::ReadOnly, None) => {
                mode.toggle_read_only(reason);
            }
            (Switch::ReadOnly, Some(true)) => mode.set_read_only(reason),
            (Switch::ReadOnly, Some(false)) => mode.clear_read_only(),
            (Switch::Degraded, None) => {
                mode.toggle_degraded(reason);
            }
            (Switch::Degraded, Some(true)) => mode.set_degraded(reason),
            (Switch::Degraded, Some(false)) => mode.clear_degraded(),
        }
    }

    /// What the admin routes answer: `{"mode", "reason", "since"}` as in
    /// `server.state` events, `"switches"`, and every cause in force, since
    /// the mode shows only the strongest (degraded hides an operator's
    /// read-only underneath it).
    fn switch_answer(mode: &ServerMode) -> Json<Value> {
        let causes = mode.causes();
        let mut answer = serde_json::to_value(mode.current()).unwrap_or_default();
        answer["switches"] = json!({
            "read_only": causes.read_only.is_some(),
            "degraded": causes.degraded.is_some(),
        });
        answer["causes"] = serde_json::to_value(&causes).unwrap_or_default();
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
        set_switch(&app.mode, switch, request.on, reason);
        switch_answer(&app.mode).into_response()
    }

    fn error(status: StatusCode, message: impl Into<String>) -> Response {
        (status, Json(json!({ "error": message.into() }))).into_response()
    }

    /// Adds `Retry-After`, in whole seconds.
    fn retry_later(mut response: Response, wait: Duration) -> Response {
        let seconds = wait.as_secs().max(1);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        response
    }

    // --- signals -----------------------------------------------------------

    /// `kill -USR1 PID` toggles the operator's read-only. (The crate's
    /// `ServerMode::toggle_read_only_on_sigusr1` does the same behind the
    /// `signal` feature; this demo runs without features.)
    #[cfg(unix)]
    fn toggle_read_only_on_sigusr1(mode: &ServerMode) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = match signal(SignalKind::user_defined1()) {
            Ok(usr1) => usr1,
            Err(e) => {
                eprintln!("cannot listen for SIGUSR1, read-only only from the page: {e}");
                return;
            }
        };
        let mode = mode.clone();
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                let on = if mode.toggle_read_only(SIGUSR1_REASON) {
                    "on"
                } else {
                    "off"
                };
                println!(
                    "SIGUSR1: read-only {on}; the server is now {}",
                    mode.current().mode
                );
            }
        });
    }

    #[cfg(not(unix))]
    fn toggle_read_only_on_sigusr1(_: &ServerMode) {}

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
        // Readiness and writes answer 503; a second later every stream gets
        // its last frame (`retry:` and `event: shutdown`) and ends.
        shutdown.trigger();
        // Said after, and without `println!`: a closed stdout must not
        // stop the shutdown.
        use std::io::Write;
        let _ = writeln!(
            std::io::stdout(),
            "{name}: shutting down: ending the streams and draining connections"
        );
    }

    /// The command line, and the environment where it is silent.
    struct Options {
        addr: String,
        redis: Option<String>,
        /// HTTPS with a certificate made at start (`--tls`).
        tls: bool,
    }

    impl Options {
        /// `--addr HOST:PORT` (or `--addr=HOST:PORT`), else
        /// `127.0.0.1:$PORT`, else `default`; `--redis URL` (or
        /// `--redis=URL`), else `$REDIS_URL`, else none: in memory; `--tls`
        /// for HTTPS.
        fn parse(default: &str) -> Result<Self, String> {
            let mut args = std::env::args().skip(1);
            let mut addr = None;
            let mut redis = None;
            let mut tls = false;
            while let Some(arg) = args.next() {
                if arg == "--tls" {
                    tls = true;
                } else if arg == "--addr" {
                    addr = Some(args.next().ok_or("--addr needs a value, HOST:PORT")?);
                } else if let Some(value) = arg.strip_prefix("--addr=") {
                    addr = Some(value.to_owned());
                } else if arg == "--redis" {
                    redis = Some(
                        args.next()
                            .ok_or("--redis needs a value, redis://HOST:PORT")?,
                    );
                } else if let Some(value) = arg.strip_prefix("--redis=") {
                    redis = Some(value.to_owned());
                } else {
                    return Err(format!("unknown argument {arg:?}"));
                }
            }
            let redis = redis.or_else(|| {
                std::env::var("REDIS_URL")
                    .ok()
                    .filter(|url| !url.is_empty())
            });
            let addr = match addr {
                Some(addr) => addr,
                None => match std::env::var("PORT") {
                    Ok(port) => match port.parse::<u16>() {
                        Ok(port) => format!("127.0.0.1:{port}"),
                        Err(_) => return Err(format!("PORT={port:?} is not a port number")),
                    },
                    Err(_) => default.to_owned(),
                },
            };
            Ok(Self { addr, redis, tls })
        }
    }
}
