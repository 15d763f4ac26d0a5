//! The floor of the loopback load benchmark (`bench/run.sh`): not a server
//! anyone should run, but the least work any server can do for the same
//! load. Each event is encoded once and written with one non-blocking
//! `write(2)` to every connection, in a loop, from the publisher itself: no
//! task or waker per connection, no `epoll` for the connections (they are
//! taken out of the runtime once their response head is sent), no HTTP
//! framework. What it costs, and the latency the client sees, is what the
//! kernel and the client cost: the share of the other two servers' figures
//! that no server design can remove on the machine at hand.
//!
//! Same command line and outputs as `bench_server`:
//!
//! ```text
//! cargo run --release --example bench_floor -- --addr 127.0.0.1:3300 \
//!     --rate 100 --count 2000 --start-after-conns 1000 [--threads 1] [--events-per-write 1]
//! ```
//!
//! `--events-per-write K` writes every K events as one chunk (the last K-1
//! wait for the K-th): the floor of a server that coalesces. A connection
//! whose socket buffer cannot take a whole write is closed; `GET /stats`
//! answers `{"subscribers","published","lagged"}` with `lagged` counting
//! the connections closed that way, and so does `lagged_skipped` on SIGTERM.
//! Nothing else is served: no keep-alive, no replay, no topics.

#[path = "../../server_common.rs"]
mod common;

mod floor {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, PoisonError};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// The connections streaming events, as plain non-blocking sockets.
    #[derive(Default)]
    pub(crate) struct Streams {
        sockets: Mutex<Vec<std::net::TcpStream>>,
        /// Connections closed because a write did not fit.
        pub(crate) dropped: AtomicU64,
    }

    impl Streams {
        pub(crate) fn len(&self) -> usize {
            self.sockets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
        }

        /// One `write(2)` per connection; a connection that errs or takes
        /// less than the whole chunk is closed (and counted if it was alive).
        pub(crate) fn write_all(&self, chunk: &[u8]) {
            let mut sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
            sockets.retain_mut(|socket| match socket.write(chunk) {
                Ok(n) if n == chunk.len() => true,
                Ok(_) | Err(_) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    false
                }
            });
        }
    }

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
        cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n\
        c\r\nretry: 1000\n\r\n";

    /// Reads a request head and answers `GET /events` (the connection joins
    /// `streams`) or `GET /stats`; anything else gets a 404.
    pub(crate) async fn connection(
        mut tcp: TcpStream,
        streams: Arc<Streams>,
        counters: Arc<super::common::Counters>,
    ) -> std::io::Result<()> {
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await?;
            if n == 0 || head.len() > 16 * 1024 {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
        let path = head
            .split(|&b| b == b' ')
            .nth(1)
            .unwrap_or_default()
            .split(|&b| b == b'?')
            .next()
            .unwrap_or_default();
        match path {
            b"/events" => {
                tcp.set_nodelay(true)?;
                tcp.write_all(HEAD).await?;
                let socket = tcp.into_std()?;
                streams
                    .sockets
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(socket);
            }
            b"/stats" => {
                let body = serde_json::json!({
                    "subscribers": streams.len(),
                    "published": counters.published.load(Ordering::Relaxed),
                    "lagged": streams.dropped.load(Ordering::Relaxed),
                })
                .to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                tcp.write_all(response.as_bytes()).await?;
            }
            _ => {
                tcp.write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await?;
            }
        }
        Ok(())
    }

    pub(crate) async fn serve(
        listener: TcpListener,
        streams: Arc<Streams>,
        counters: Arc<super::common::Counters>,
    ) -> std::io::Result<()> {
        loop {
            let (tcp, _) = listener.accept().await?;
            tokio::spawn(connection(tcp, streams.clone(), counters.clone()));
        }
    }
}

fn main() -> std::process::ExitCode {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    let (args, runtime) = match common::start("--events-per-write") {
        Ok(started) => started,
        Err(code) => return code,
    };
    let per_write = args.extra.unwrap_or(1).max(1);
    common::announce(
        "floor",
        &args,
        serde_json::json!({ "events_per_write": per_write }),
    );
    runtime.block_on(async move {
        let listener = match common::listen(&args.addr) {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("listen on {}: {error}", args.addr);
                return std::process::ExitCode::FAILURE;
            }
        };
        let streams = Arc::new(floor::Streams::default());
        let counters = Arc::new(common::Counters::default());
        let server = tokio::spawn(floor::serve(listener, streams.clone(), counters.clone()));
        tokio::spawn({
            let subscribers = streams.clone();
            let streams = streams.clone();
            let (mut pending, mut chunk, mut id, mut held) = (Vec::new(), Vec::new(), 0u64, 0);
            common::run_publisher(
                args,
                counters.clone(),
                move || subscribers.len(),
                move |data| {
                    id += 1;
                    let _ = write!(pending, "id: 1-{id}\ndata: {data}\n\n");
                    held += 1;
                    if held < per_write {
                        return;
                    }
                    held = 0;
                    chunk.clear();
                    let _ = write!(chunk, "{:x}\r\n", pending.len());
                    chunk.extend_from_slice(&pending);
                    chunk.extend_from_slice(b"\r\n");
                    pending.clear();
                    streams.write_all(&chunk);
                },
            )
        });
        common::serve_until_sigterm(server, counters, move || {
            streams.dropped.load(Ordering::Relaxed)
        })
        .await
    })
}
