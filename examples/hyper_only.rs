//! The events route on plain hyper and tower, without axum: [`SseLayer`]
//! wraps a `tower::service_fn`, and each connection is served by hyper's
//! HTTP/1 server through `TowerToHyperService`.
//!
//! ```text
//! cargo run --example hyper_only                      # http://127.0.0.1:3001
//! cargo run --example hyper_only -- --addr 0.0.0.0:8081
//! PORT=8081 cargo run --example hyper_only
//! ```
//!
//! A background task publishes a `tick` event with a counter every second:
//!
//! ```text
//! curl -N localhost:3001/events                       # ticks, live
//! curl -N -H 'Last-Event-ID: ID' localhost:3001/events  # resume after ID (copy one from above)
//! curl localhost:3001/                                # the inner service
//! ```
//!
//! Ctrl-C or SIGTERM closes the broker, which ends every open stream with a
//! `retry:` hint, stops accepting, and waits for the connections to finish.

#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
fn main() -> std::process::ExitCode {
    hyper_only::main()
}

#[cfg(not(loom))]
mod hyper_only {
    use std::convert::Infallible;
    use std::process::ExitCode;
    use std::time::Duration;

    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    use hyper::server::conn::http1;
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use tokio::net::TcpListener;
    use tokio::sync::watch;
    use tokio::task::JoinSet;
    use tower::{service_fn, Layer};
    use tower_sse::{Broker, Event, PublishError, SseLayer};

    const DEFAULT_ADDR: &str = "127.0.0.1:3001";
    /// How long clients wait before reconnecting once the server stops.
    const RECONNECT_AFTER_SHUTDOWN: Duration = Duration::from_secs(5);
    /// How long open connections get to finish once the server stops.
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

    #[tokio::main]
    pub(super) async fn main() -> ExitCode {
        let addr = match listen_addr(DEFAULT_ADDR) {
            Ok(addr) => addr,
            Err(message) => {
                eprintln!("{message}\nusage: hyper_only [--addr HOST:PORT]  (or PORT=NNNN)");
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
        let service = SseLayer::new(broker.clone())
            .path("/events")
            .authorize(tower_sse::sse::any_topic)
            .layer(service_fn(inner));

        // Ends by itself once the broker is closed.
        tokio::spawn(tick(broker.clone()));

        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        println!("listening on http://{}", listener.local_addr()?);

        // Flips to `true` when the server stops; every connection watches it.
        let (stop, stopping) = watch::channel(false);
        let mut connections = JoinSet::new();
        let signal = shutdown_signal();
        tokio::pin!(signal);
        loop {
            tokio::select! {
                () = &mut signal => break,
                accepted = listener.accept() => {
                    let (stream, _peer) = match accepted {
                        Ok(accepted) => accepted,
                        // E.g. out of file descriptors: back off, keep serving.
                        Err(error) => {
                            eprintln!("accept failed: {error}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let service = TowerToHyperService::new(service.clone());
                    let mut stopping = stopping.clone();
                    connections.spawn(async move {
                        let connection = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service);
                        tokio::pin!(connection);
                        tokio::select! {
                            _ = &mut connection => return,
                            _ = stopping.wait_for(|stop| *stop) => {}
                        }
                        // Finish the response in flight, then close.
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    });
                }
                // Reap finished connections as we go.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }

        let _ = std::io::Write::write_all(
            &mut std::io::stdout(),
            b"shutting down: closing the broker and draining connections\n",
        );
        drop(listener);
        // Ends every open stream (with a `retry:` hint) so that draining
        // does not wait on them forever.
        broker.close_with_retry(RECONNECT_AFTER_SHUTDOWN);
        let _ = stop.send(true);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            eprintln!("connections still open after {DRAIN_TIMEOUT:?}; exiting anyway");
        }
        // A closed stdout must not turn a clean stop into a panic.
        let _ = std::io::Write::write_all(&mut std::io::stdout(), b"stopped\n");
        Ok(())
    }

    /// Everything but the events route: a short text at `/`, 404 elsewhere.
    async fn inner(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let (status, text) = match request.uri().path() {
            "/" => (
                StatusCode::OK,
                "tower-sse on plain hyper: try `curl -N localhost:3001/events`\n",
            ),
            _ => (StatusCode::NOT_FOUND, "not found\n"),
        };
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        Ok(response)
    }

    /// Publishes `tick` with a counter every second, until the broker closes.
    async fn tick(broker: Broker) {
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        for n in 1u64.. {
            interval.tick().await;
            match broker.publish(Event::new("tick").data(n.to_string())) {
                Ok(_) => {}
                Err(PublishError::Closed) => return,
                Err(error) => eprintln!("tick not published: {error}"),
            }
        }
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
