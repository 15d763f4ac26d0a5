//! The baseline of the loopback load benchmark (`bench/run.sh`): server-sent
//! events the way they are usually written with axum today, a
//! `tokio::sync::broadcast` channel and one `axum::response::Sse` per
//! connection over a `BroadcastStream`, with `Lagged` errors filtered away.
//!
//! Same command line and outputs as `bench_server`:
//!
//! ```text
//! cargo run --release --example bench_baseline -- --addr 127.0.0.1:3200 \
//!     --rate 100 --count 2000 --start-after-conns 1000 [--threads 1] [--capacity 1024]
//! ```
//!
//! `GET /stats` answers `{"subscribers","published","lagged"}` and SIGTERM
//! prints `{"published","lagged_skipped","max_subscribers"}` to stderr;
//! `lagged` and `lagged_skipped` count the events that receivers skipped
//! because they fell more than `--capacity` (default 1024) behind: the
//! client is never told, it just sees a gap.

#[path = "../../server_common.rs"]
mod common;

mod baseline {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use axum::extract::State;
    use axum::response::sse::{Event, KeepAlive, Sse};
    use axum::Json;
    use tokio::sync::broadcast;
    use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
    use tokio_stream::wrappers::BroadcastStream;
    use tokio_stream::{Stream, StreamExt};

    #[derive(Clone)]
    pub(crate) struct App {
        pub(crate) tx: broadcast::Sender<String>,
        pub(crate) published: Arc<super::common::Counters>,
        pub(crate) lagged: Arc<AtomicU64>,
    }

    /// `GET /events`: one receiver per connection, lagged events dropped.
    pub(crate) async fn events(
        State(app): State<App>,
    ) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
        let lagged = app.lagged.clone();
        let stream =
            BroadcastStream::new(app.tx.subscribe()).filter_map(move |message| match message {
                Ok(data) => Some(Ok(Event::default().data(data))),
                Err(BroadcastStreamRecvError::Lagged(skipped)) => {
                    lagged.fetch_add(skipped, Ordering::Relaxed);
                    None
                }
            });
        Sse::new(stream).keep_alive(KeepAlive::default())
    }

    /// `GET /stats`.
    pub(crate) async fn stats(State(app): State<App>) -> Json<serde_json::Value> {
        Json(serde_json::json!({
            "subscribers": app.tx.receiver_count(),
            "published": app.published.published.load(Ordering::Relaxed),
            "lagged": app.lagged.load(Ordering::Relaxed),
        }))
    }
}

fn main() -> std::process::ExitCode {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use axum::routing::get;
    use axum::Router;
    use tokio::sync::broadcast;

    /// The channel's capacity unless `--capacity` says otherwise.
    const CAPACITY: usize = 1024;

    let (args, runtime) = match common::start("--capacity") {
        Ok(started) => started,
        Err(code) => return code,
    };
    let capacity = args.extra.unwrap_or(CAPACITY).max(1);
    common::announce(
        "baseline",
        &args,
        serde_json::json!({ "capacity": capacity, "keep_alive_s": 15 }),
    );
    runtime.block_on(async move {
        let (tx, _) = broadcast::channel::<String>(capacity);
        let counters = Arc::new(common::Counters::default());
        let lagged = Arc::new(AtomicU64::new(0));
        let app = baseline::App {
            tx: tx.clone(),
            published: counters.clone(),
            lagged: lagged.clone(),
        };
        let router = Router::new()
            .route("/events", get(baseline::events))
            .route("/stats", get(baseline::stats))
            .with_state(app);

        let server = {
            let addr = args.addr.clone();
            tokio::spawn(async move { common::serve_axum(&addr, router).await })
        };
        tokio::spawn({
            let subscribers = tx.clone();
            common::run_publisher(
                args,
                counters.clone(),
                move || subscribers.receiver_count(),
                move |data| {
                    // Errs only when nobody listens.
                    let _ = tx.send(data);
                },
            )
        });
        common::serve_until_sigterm(server, counters, move || lagged.load(Ordering::Relaxed)).await
    })
}
