//! A reader that stops reading with a full TCP window: what it costs the
//! server while stuck, and that `TCP_USER_TIMEOUT` (feature `tcp`) ends it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use http_body::{Body, Frame};
use tower_sse::tcp::TcpTuning;
use tower_sse::{Broker, Event, SseLayer};

use crate::support::process;
use crate::support::raw::RawClient;
use crate::support::server::{listener_with_send_buffer, loopback, serve_axum_on, spawn_serve};
use crate::support::wait::eventually;

const BATCH: usize = 16 * 1024;
const EVENT: usize = 8 * 1024;
/// hyper's default most bytes queued for writing on one connection.
const HYPER_QUEUE: u64 = 8192 + 4096 * 100;

/// Counts the bytes a response body hands to hyper.
struct Counted<B> {
    inner: B,
    yielded: Arc<AtomicU64>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.yielded.fetch_add(data.len() as u64, Ordering::SeqCst);
            }
        }
        polled
    }
}

/// A client with a small receive buffer, so its window fills fast: it
/// reads the response head, then never reads again.
async fn stalled_client(addr: SocketAddr) -> RawClient {
    let client = RawClient::get(addr, "/events", &[("accept", "text/event-stream")], 4096).await;
    assert!(client.head.starts_with("HTTP/1.1 200"), "{}", client.head);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_costs_a_bounded_buffer_and_is_dropped_by_the_user_timeout() {
    let broker = Broker::builder().retain_events(32).retain_forever().build();
    let layer = SseLayer::new(broker.clone())
        .max_batch_bytes(BATCH)
        .keep_alive(Duration::from_millis(500));
    let yielded = Arc::new(AtomicU64::new(0));
    let counter = yielded.clone();
    let app = Router::new()
        .layer(layer.clone())
        .layer(tower::util::MapResponseLayer::new(
            move |response: http::Response<_>| {
                let yielded = counter.clone();
                response.map(|inner| axum::body::Body::new(Counted { inner, yielded }))
            },
        ));
    let listener = loopback().await.tap_io(|tcp| {
        socket2::SockRef::from(&*tcp)
            .set_send_buffer_size(4096)
            .unwrap();
        TcpTuning::default()
            .user_timeout(Some(Duration::from_secs(2)))
            .apply(tcp)
            .unwrap();
    });
    let addr = serve_axum_on(listener, app);

    let client = stalled_client(addr).await;
    eventually("the subscription", || broker.stats().subscribers == 1).await;

    // Far more than any buffer: the window fills and the server's writes
    // block; publishing never does.
    for i in 0..400 {
        broker
            .publish(Event::new("big").data(format!("{i:08} {}", "x".repeat(EVENT))))
            .unwrap();
    }
    let published_bytes = 400 * EVENT as u64;

    // While stuck, hyper keeps at most its write queue of body frames (16
    // frames, and at most its max buffer size, 408 KiB by default): what
    // the body handed over is bounded by that, not by what was published.
    eventually("the stalled stream to be dropped", || {
        broker.stats().subscribers == 0
    })
    .await;
    let handed = yielded.load(Ordering::SeqCst);
    assert!(
        handed <= HYPER_QUEUE + BATCH as u64 + EVENT as u64,
        "{handed} bytes handed to hyper for a reader that read almost none"
    );
    assert!(handed < published_bytes / 4);
    assert_eq!(layer.connections(), 0);
    // The broker's memory stayed within its own bounds meanwhile.
    assert!(broker.stats().retained_events <= 32);

    drop(client);
}

/// This process's resident memory, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Readers that stop reading, opened one after another while events of a
/// megabyte are published and evicted: each holds one slice of at most a
/// body frame (64 KiB), never a whole event the log has let go. The
/// crate's own count of what its streams hand to their writers says so
/// exactly; the process's memory agrees, with a generous margin, measured
/// in a process that runs this test alone.
#[cfg(feature = "serve")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_hold_a_slice_each_however_large_the_events() {
    const STREAMS: usize = 100;
    const EVENT: usize = 1_000_000;
    let name = "stalled_reader::stalled_readers_hold_a_slice_each_however_large_the_events";
    if !process::alone(name).await {
        return;
    }
    let broker = Broker::new(); // 8 MiB of replay
    let layer = SseLayer::new(broker.clone());
    let addr = spawn_serve(tower_sse::serve(
        listener_with_send_buffer(4096),
        Router::new().layer(layer.clone()),
    ));
    let publish = |n: usize| {
        broker
            .publish(Event::new("big").data(format!("{n:08}{}", "x".repeat(EVENT))))
            .unwrap();
    };
    // The log full first: what it holds is in the baseline.
    for n in 0..10 {
        publish(n);
    }
    let before = rss();

    // Each stream stalls on an event of its own, evicted long before the
    // last stream opens.
    let mut stalled = Vec::new();
    for n in 0..STREAMS {
        stalled.push(stalled_client(addr).await);
        publish(100 + n);
    }
    eventually("every stream to hold its slice", || {
        layer.connections() == STREAMS && layer.in_flight_bytes() > STREAMS * 1024
    })
    .await;
    let in_flight = layer.in_flight_bytes();
    let grown = rss().saturating_sub(before);
    let per_stream = 64 * 1024;
    assert!(
        in_flight <= STREAMS * per_stream,
        "{in_flight} bytes held by {STREAMS} streams"
    );
    assert!(broker.stats().retained_bytes <= 8 * 1024 * 1024);
    // Whole events would be 90 MB here, and were.
    assert!(
        grown <= 2 * STREAMS * per_stream + 32 * 1024 * 1024,
        "memory grew by {grown} bytes for {STREAMS} stalled streams"
    );

    drop(stalled);
    eventually("the streams to end", || layer.connections() == 0).await;
    assert_eq!(layer.in_flight_bytes(), 0);
}

/// The bytes queued in the kernel for sending on the server's side of the
/// connection from `client`, from `/proc/net/tcp`.
fn server_send_queue(server: SocketAddr, client: SocketAddr) -> Option<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, queues) = (fields.get(1)?, fields.get(2)?, fields.get(4)?);
        if port(local)? != server.port() || port(remote)? != client.port() {
            return None;
        }
        usize::from_str_radix(queues.split(':').next()?, 16).ok()
    })
}

/// Under `tower_sse::serve`, what a reader that stopped reading holds in
/// the kernel is bounded too: its connection's send buffer is set, not
/// left to autotuning (megabytes on loopback).
#[cfg(feature = "serve")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_holds_a_bounded_kernel_send_buffer() {
    const SEND_BUFFER: usize = 32 * 1024;
    let broker = Broker::new();
    let layer = SseLayer::new(broker.clone());
    let serve = tower_sse::serve(loopback().await, Router::new().layer(layer.clone()))
        .stream_send_buffer(Some(SEND_BUFFER));
    let addr = spawn_serve(serve);
    let client = stalled_client(addr).await;
    let peer = client.local_addr();
    for n in 0..60 {
        broker
            .publish(Event::new("big").data(format!("{n:08}{}", "x".repeat(100_000))))
            .unwrap();
    }
    // Wait until the server's side is as full as it will get.
    let mut last = None;
    eventually("the send queue to settle", || {
        std::thread::sleep(Duration::from_millis(100));
        let now = server_send_queue(addr, peer);
        let settled = now.is_some() && now == last;
        last = now;
        settled
    })
    .await;
    let queued = last.unwrap();
    // Linux doubles SO_SNDBUF; autotuning would allow 4 MB here.
    assert!(
        queued <= 2 * SEND_BUFFER + 16 * 1024,
        "{queued} bytes queued"
    );
    assert!(layer.in_flight_bytes() <= 64 * 1024);
    drop(client);
}
