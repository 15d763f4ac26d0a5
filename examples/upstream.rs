//! Streams fed from Redis pub/sub: one `SUBSCRIBE` per topic for this
//! server, however many streams watch the topic.
//!
//! ```text
//! cargo run --example upstream -- --redis redis://127.0.0.1:6379 --addr 127.0.0.1:3001
//! REDIS_URL=redis://127.0.0.1:6379 PORT=3001 cargo run --example upstream -- --linger-ms 2000
//! ```
//!
//! Then:
//!
//! ```text
//! curl -N 'localhost:3001/events?topic=room:1'        # watch room:1
//! redis-cli PUBLISH room:1 hello                      # arrives as `data: hello`
//! redis-cli PUBSUB NUMSUB room:1                      # 1, however many watch
//! curl -N -H 'Last-Event-ID: ID' 'localhost:3001/events?topic=room:1'   # resume after ID
//! curl localhost:3001/health                          # mode, and the hub's counters
//! ```
//!
//! # Routes
//!
//! - `GET /events?topic=NAME` (repeatable, default `public`; any valid
//!   topic): the stream. Each topic is fed from the Redis channel of the
//!   same name: a message is an event of type `message` whose data is the
//!   payload. The server subscribes to the channel when the first stream
//!   of the topic arrives and unsubscribes a linger (`--linger-ms`,
//!   default 5000) after the last one left.
//! - `GET /health` (always 200) and `GET /ready` (503 once shutting down),
//!   with the broker's counters, the hub's under `"hub"`.
//!
//! Pub/sub delivers at most once: what Redis publishes while the server is
//! not subscribed is not seen. The server adds ids, order, replay and
//! resume (on this server, while the topic's subscription stayed open),
//! and an explicit `event: resync` with `{"reason":"upstream"}` wherever
//! events may be missing (Redis lost, a payload that is not UTF-8).
//!
//! Ctrl-C or SIGTERM ends every stream with a `retry:` hint and exits.
//!
//! [`Hub`]: tower_sse::upstream::Hub

#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
fn main() -> std::process::ExitCode {
    upstream::main()
}

#[cfg(not(loom))]
mod upstream {
    use std::future::IntoFuture;
    use std::process::ExitCode;
    use std::time::Duration;

    use axum::Router;
    use tower_sse::mode::ServerMode;
    use tower_sse::upstream::{Hub, RedisPubSub, DEFAULT_LINGER};
    use tower_sse::{Broker, HealthLayer, Shutdown, SseLayer};

    const DEFAULT_ADDR: &str = "127.0.0.1:3001";
    const DEFAULT_REDIS: &str = "redis://127.0.0.1:6379";
    /// How long clients wait before reconnecting once the server stops.
    const RECONNECT_AFTER_SHUTDOWN: Duration = Duration::from_secs(5);
    /// How long open connections get to finish once the streams ended.
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
    const USAGE: &str = "usage: upstream [--redis URL] [--addr HOST:PORT] [--linger-ms N]  (or REDIS_URL=URL, PORT=NNNN)";

    #[tokio::main]
    pub(super) async fn main() -> ExitCode {
        // The crate says on stderr when an upstream fails or breaks.
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .init();
        let options = match Options::parse() {
            Ok(options) => options,
            Err(message) => {
                eprintln!("{message}\n{USAGE}");
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

    async fn run(options: Options) -> std::io::Result<()> {
        let pubsub = RedisPubSub::new(&options.redis)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let broker = Broker::builder()
            .hub(Hub::new(pubsub).linger(options.linger))
            .build();
        let mode = ServerMode::new();
        broker.follow_mode(&mode);
        let shutdown = Shutdown::new()
            .broker(&broker)
            .mode(&mode)
            .retry(RECONNECT_AFTER_SHUTDOWN);

        let app = Router::new()
            .layer(HealthLayer::new(mode.clone()).broker(&broker))
            .layer(
                SseLayer::new(broker.clone())
                    .path("/events")
                    .authorize(tower_sse::sse::any_topic),
            );

        let addr = options.addr.as_str();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        println!("listening on http://{}", listener.local_addr()?);
        println!(
            "topics fed from Redis pub/sub at {} (linger {:?})",
            options.redis, options.linger
        );
        tokio::spawn(shutdown.on_terminate_signal());

        let server = tower_sse::serve(listener, app)
            .stream_path("/events")
            .with_graceful_shutdown(shutdown.wait())
            .into_future();
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
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "stopped");
        Ok(())
    }

    struct Options {
        addr: String,
        redis: String,
        linger: Duration,
    }

    impl Options {
        /// `--redis URL`, else `$REDIS_URL`, else the local default;
        /// `--addr HOST:PORT`, else `127.0.0.1:$PORT`, else the default;
        /// `--linger-ms N`. Each also as `--name=value`.
        fn parse() -> Result<Self, String> {
            let mut args = std::env::args().skip(1);
            let (mut addr, mut redis, mut linger) = (None, None, None);
            while let Some(arg) = args.next() {
                let (name, inline) = match arg.split_once('=') {
                    Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                    None => (arg.clone(), None),
                };
                let slot = match name.as_str() {
                    "--addr" => &mut addr,
                    "--redis" => &mut redis,
                    "--linger-ms" => &mut linger,
                    _ => return Err(format!("unknown argument {arg:?}")),
                };
                let value = match inline {
                    Some(value) => value,
                    None => args.next().ok_or(format!("{name} needs a value"))?,
                };
                *slot = Some(value);
            }
            let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let redis = redis
                .or_else(|| env("REDIS_URL"))
                .unwrap_or_else(|| DEFAULT_REDIS.to_owned());
            let addr = match addr {
                Some(addr) => addr,
                None => match env("PORT") {
                    Some(port) => match port.parse::<u16>() {
                        Ok(port) => format!("127.0.0.1:{port}"),
                        Err(_) => return Err(format!("PORT={port:?} is not a port number")),
                    },
                    None => DEFAULT_ADDR.to_owned(),
                },
            };
            let linger =
                match linger {
                    Some(ms) => Duration::from_millis(ms.parse().map_err(|_| {
                        format!("--linger-ms {ms:?} is not a number of milliseconds")
                    })?),
                    None => DEFAULT_LINGER,
                };
            Ok(Self {
                addr,
                redis,
                linger,
            })
        }
    }
}
