//! A client that vanishes without a FIN (its cable pulled): the server's
//! keep-alive comments go unacknowledged, and `TCP_USER_TIMEOUT` (feature
//! `tcp`) ends the stream, which unsubscribes.
//!
//! Loopback cannot lose packets, so the client sits in a network namespace
//! of the test's own behind a veth pair, whose far end is then taken down.
//! That needs root and iproute2, so the test is ignored by default and run
//! by `.ci/run` with
//! `cargo test --all-features --test it vanished_peer:: -- --ignored`.

use std::process::Command;
use std::time::Duration;

use axum::serve::ListenerExt;
use axum::Router;
use tower_sse::tcp::TcpTuning;
use tower_sse::{Broker, SseLayer};

use crate::support::server::serve_axum_on;

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

/// A namespace with a veth pair to it, removed on drop.
struct Peer {
    ns: String,
    host_side: String,
    host_addr: String,
}

impl Peer {
    fn new() -> Self {
        let id = std::process::id() % 200 + 20;
        let ns = format!("tsse-{id}");
        let host_side = format!("tsse{id}h");
        let peer_side = format!("tsse{id}p");
        let host_addr = format!("10.213.{id}.1");
        let peer_addr = format!("10.213.{id}.2");
        // Leftovers of an interrupted run.
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &host_side])
            .status();
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_side, "type", "veth", "peer", "name", &peer_side,
        ]);
        ip(&["link", "set", &peer_side, "netns", &ns]);
        ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_side]);
        ip(&["link", "set", &host_side, "up"]);
        ip(&[
            "netns",
            "exec",
            &ns,
            "ip",
            "addr",
            "add",
            &format!("{peer_addr}/30"),
            "dev",
            &peer_side,
        ]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", &peer_side, "up"]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        Self {
            ns,
            host_side,
            host_addr,
        }
    }

    /// Pulls the cable: the peer's end goes down, nothing is sent, not even
    /// a FIN; what the server sends is dropped.
    fn vanish(&self) {
        let peer_side = self.host_side.replace('h', "p");
        ip(&[
            "netns", "exec", &self.ns, "ip", "link", "set", &peer_side, "down",
        ]);
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_side])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and iproute2; .ci/run runs it with --ignored"]
async fn a_client_that_vanishes_without_a_fin_is_dropped() {
    let peer = Peer::new();
    let broker = Broker::new();
    let layer = SseLayer::new(broker.clone()).keep_alive(Duration::from_millis(300));
    let app = Router::new().layer(layer.clone());
    let listener = tokio::net::TcpListener::bind(format!("{}:0", peer.host_addr))
        .await
        .unwrap();
    let listener = listener.tap_io(|tcp| {
        TcpTuning::default()
            .user_timeout(Some(Duration::from_secs(2)))
            .keepalive(Some((Duration::from_secs(1), Duration::from_secs(1), 2)))
            .apply(tcp)
            .unwrap();
    });
    let port = serve_axum_on(listener, app).port();

    // The client: a plain TCP connection from inside the namespace, made by
    // a child process that reads the stream and keeps running.
    let request = format!(
        "exec 3<>/dev/tcp/{}/{port}; printf 'GET /events HTTP/1.1\\r\\nhost: t\\r\\n\\r\\n' >&3; exec cat <&3",
        peer.host_addr
    );
    let mut client = Command::new("ip")
        .args(["netns", "exec", &peer.ns, "bash", "-c", &request])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the client");
    tokio::time::timeout(Duration::from_secs(20), async {
        while broker.stats().subscribers != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the client never subscribed");

    peer.vanish();
    // Keep-alives every 300 ms now go unanswered; the kernel gives up after
    // the 2 s user timeout and the stream is dropped.
    tokio::time::timeout(Duration::from_secs(60), async {
        while broker.stats().subscribers != 0 || layer.connections() != 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a vanished client kept its stream");

    let _ = client.kill();
    let _ = client.wait();
}
