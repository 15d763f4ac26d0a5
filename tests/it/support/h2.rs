//! HTTP/2 over cleartext with prior knowledge (h2c): a client connection
//! the test owns, on which it opens as many event streams as it likes.
//! (The servers that speak it are in `support::server`.)

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::Empty;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::client;
use super::sse::Client;
use super::wait::within;

/// One h2c connection owned by the test; every stream opened on it shares
/// its one TCP connection. Dropping it cuts the connection.
pub struct H2Connection {
    addr: SocketAddr,
    local: SocketAddr,
    sender: SendRequest<Empty<Bytes>>,
    driver: Option<JoinHandle<Result<(), hyper::Error>>>,
}

impl H2Connection {
    /// Connects and sends the preface and settings (prior knowledge: no
    /// upgrade, no TLS).
    pub async fn open(addr: SocketAddr) -> Self {
        let tcp = within("the TCP connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        let local = tcp.local_addr().expect("local address");
        let (sender, connection) = within(
            "the HTTP/2 handshake",
            http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)),
        )
        .await
        .expect("h2 handshake");
        Self {
            addr,
            local,
            sender,
            driver: Some(tokio::spawn(connection)),
        }
    }

    /// The client's end of the one TCP connection: the peer address the
    /// server sees for every request on it.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Opens a stream: `GET target` with `headers`; returns once the
    /// response head has arrived (an HTTP/2 one: checked), with the body to
    /// read. The connection outlives the [`Client`].
    pub async fn get(&self, target: &str, headers: &[(&str, &str)]) -> Client {
        let mut sender = self.sender.clone();
        within("the h2 connection to be ready", sender.ready())
            .await
            .expect("h2 connection usable");
        let mut builder = Request::get(format!("http://{}{target}", self.addr));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Empty::new()).expect("request");
        let response = within("the h2 response head", sender.send_request(request))
            .await
            .expect("h2 response");
        assert_eq!(response.version(), Version::HTTP_2, "GET {target}");
        client::reading(response, None)
    }

    /// Waits for the connection to end (the server's GOAWAY, then the
    /// close) and returns how it ended.
    pub async fn closed(mut self) -> Result<(), hyper::Error> {
        let driver = self.driver.take().expect("the driver");
        within("the h2 connection to close", driver)
            .await
            .expect("the connection task")
    }
}

impl Drop for H2Connection {
    fn drop(&mut self) {
        if let Some(driver) = &self.driver {
            driver.abort();
        }
    }
}
