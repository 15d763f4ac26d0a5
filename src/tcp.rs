//! Socket options that let the kernel find readers that are gone or stuck
//! (feature `tcp`).
//!
//! An event stream writes rarely and never reads, so two kinds of client
//! would otherwise hold a connection for as long as the server runs:
//!
//! - one that **vanished without a FIN** (a laptop closed, a NAT entry
//!   dropped): the next keep-alive comment is never acknowledged, and TCP
//!   retransmits for many minutes by default;
//! - one that **stopped reading** with its receive window full: the server's
//!   writes block, and TCP probes the zero window for ever.
//!
//! `TCP_USER_TIMEOUT` bounds both: once written data stays unacknowledged
//! that long, the kernel closes the connection, the server's write fails,
//! and hyper drops the response, which unsubscribes. TCP keep-alive probes
//! additionally find a silent peer when nothing is being written. Neither
//! costs anything on a healthy connection. Meanwhile a stuck reader costs
//! the server only its cursor in the log and what sits in its buffers (at
//! most one body frame of [`max_batch_bytes`](crate::SseLayer::max_batch_bytes)
//! plus hyper's write buffer); the events it misses stay in the shared log,
//! bounded by the broker's retention.
//!
//! ```no_run
//! use axum::serve::ListenerExt;
//!
//! # async fn run(app: axum::Router) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000")
//!     .await?
//!     .tap_io(|tcp| {
//!         if let Err(error) = tower_sse::tcp::TcpTuning::default().apply(tcp) {
//!             eprintln!("could not tune a connection: {error}");
//!         }
//!     });
//! axum::serve(listener, app).await
//! # }
//! ```

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Default longest time written data may stay unacknowledged.
pub const DEFAULT_USER_TIMEOUT: Duration = Duration::from_secs(45);
/// Default idle time before the first keep-alive probe.
pub const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Default time between keep-alive probes.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Default unanswered probes before the connection is dropped.
pub const DEFAULT_KEEPALIVE_RETRIES: u32 = 3;

/// Options for accepted connections; [`apply`](TcpTuning::apply) each one.
///
/// Defaults: `TCP_NODELAY` on (events go out as they are written),
/// `TCP_USER_TIMEOUT` 45 s (three missed keep-alive comments at the default
/// 15 s), keep-alive probes after 30 s idle, every 10 s, 3 tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct TcpTuning {
    nodelay: bool,
    user_timeout: Option<Duration>,
    keepalive: Option<(Duration, Duration, u32)>,
}

impl Default for TcpTuning {
    fn default() -> Self {
        Self {
            nodelay: true,
            user_timeout: Some(DEFAULT_USER_TIMEOUT),
            keepalive: Some((
                DEFAULT_KEEPALIVE_IDLE,
                DEFAULT_KEEPALIVE_INTERVAL,
                DEFAULT_KEEPALIVE_RETRIES,
            )),
        }
    }
}

impl TcpTuning {
    /// Sets `TCP_NODELAY`.
    pub fn nodelay(mut self, on: bool) -> Self {
        self.nodelay = on;
        self
    }

    /// Closes a connection whose written data stays unacknowledged for
    /// `timeout` (Linux and Android; ignored elsewhere). `None` keeps the
    /// system's default (many minutes).
    pub fn user_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.user_timeout = timeout;
        self
    }

    /// Probes an idle connection after `idle`, every `interval`, and drops
    /// it after `retries` unanswered probes. `None` turns probes off.
    pub fn keepalive(mut self, probes: Option<(Duration, Duration, u32)>) -> Self {
        self.keepalive = probes;
        self
    }

    /// Applies the options to an accepted connection.
    pub fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nodelay(self.nodelay)?;
        let socket = SockRef::from(stream);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        socket.set_tcp_user_timeout(self.user_timeout)?;
        match self.keepalive {
            Some((idle, interval, retries)) => {
                let params = TcpKeepalive::new().with_time(idle);
                #[cfg(any(
                    target_os = "linux",
                    target_os = "android",
                    target_os = "macos",
                    target_os = "freebsd"
                ))]
                let params = params.with_interval(interval).with_retries(retries);
                #[cfg(not(any(
                    target_os = "linux",
                    target_os = "android",
                    target_os = "macos",
                    target_os = "freebsd"
                )))]
                let _ = (interval, retries);
                socket.set_tcp_keepalive(&params)?;
            }
            None => socket.set_keepalive(false)?,
        }
        Ok(())
    }
}
