//! A reader that stops reading with a full TCP window: what it costs the
//! server while stuck, and that `TCP_USER_TIMEOUT` (feature `tcp`) ends it.
#![cfg(all(feature = "tcp", not(loom)))]

use std::io::{Read, Write};
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
use socket2::{Domain, Socket, Type};
use tower_sse::tcp::TcpTuning;
use tower_sse::{Broker, Event, SseLayer};

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

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// A client socket with a small receive buffer, so its window fills fast.
fn stalled_client(addr: SocketAddr) -> std::net::TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    stream
        .write_all(b"GET /events HTTP/1.1\r\nhost: test\r\naccept: text/event-stream\r\n\r\n")
        .unwrap();
    // Read the head, then never read again.
    let mut head = [0u8; 256];
    let n = stream.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    stream
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = listener.tap_io(|tcp| {
        socket2::SockRef::from(&*tcp)
            .set_send_buffer_size(4096)
            .unwrap();
        TcpTuning::default()
            .user_timeout(Some(Duration::from_secs(2)))
            .apply(tcp)
            .unwrap();
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let client = tokio::task::spawn_blocking(move || stalled_client(addr))
        .await
        .unwrap();
    wait_until("the subscription", || broker.stats().subscribers == 1).await;

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
    wait_until("the stalled stream to be dropped", || {
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
    server.abort();
    let _ = server.await;
}
