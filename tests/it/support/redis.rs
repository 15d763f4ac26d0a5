//! A real `redis-server` for a test: started on a free loopback port in a
//! temporary directory of its own, stopped by its pid, killed and started
//! again on the same data when a test says so. No mock stands in for it: a
//! machine without `redis-server` fails these tests with a message saying
//! how to get it (`bash scripts/test.sh` installs it).
//!
//! And a TCP proxy in front of it that a test can cut, to take Redis away
//! from one replica only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::wait::eventually;

/// A `redis-server` of this test's own.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    persist: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one without persistence.
    pub async fn start() -> Self {
        Self::launch(false).await
    }

    /// Starts one that writes every change to its append-only file before
    /// answering (`appendfsync always`), so a restart keeps everything.
    pub async fn start_persistent() -> Self {
        Self::launch(true).await
    }

    async fn launch(persist: bool) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("tower-sse-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for redis-server");
        let mut server = Self {
            port,
            dir,
            persist,
            child: None,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--protected-mode", "no"])
            // Trim precisely: `MAXLEN ~` removes whole nodes of this many.
            .args(["--stream-node-max-entries", "4"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.persist {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let child = command.spawn().unwrap_or_else(|error| {
            panic!(
                "cannot start redis-server ({error}): the Redis tests need it; \
                 `bash scripts/test.sh` installs it (Debian package redis-server)"
            )
        });
        self.child = Some(child);
        let addr = self.addr();
        eventually("redis-server to listen", || {
            std::net::TcpStream::connect(addr).is_ok()
        })
        .await;
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr())
    }

    /// Stops it answering (`SIGSTOP`) with its connections open, as a
    /// Redis stuck on a slow disk, or cut off by a partition, would be.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (`SIGCONT`).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Kills it at once (`SIGKILL`), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory: with its data if it
    /// persists, empty otherwise.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// A command on a connection of its own.
    pub async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        let client = redis::Client::open(self.url()).expect("URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test's redis-server");
        command.query_async(&mut conn).await.expect("redis command")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("address").port()
}

/// A TCP proxy to `upstream` that a test can cut: while cut, it closes
/// the connections it carries and every new one at once. It can also
/// lose the replies to script calls: Redis runs each, the caller never
/// hears so, as when a connection breaks at the wrong moment.
pub struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    lose_replies: Arc<AtomicUsize>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let cut = Arc::new(AtomicBool::new(false));
        let lose_replies = Arc::new(AtomicUsize::new(0));
        let generation = Arc::new(tokio::sync::watch::channel(0u64).0);
        let task = {
            let (cut, lose_replies, generation) =
                (cut.clone(), lose_replies.clone(), generation.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    if cut.load(Ordering::SeqCst) {
                        continue; // dropped: closed at once
                    }
                    let ended = generation.subscribe();
                    tokio::spawn(carry(client, upstream, lose_replies.clone(), ended));
                }
            })
        };
        Self {
            addr,
            cut,
            lose_replies,
            generation,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Carries connections again.
    pub fn mend(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// The next `n` script calls (`EVALSHA`) on any connection reach
    /// Redis, and the connection of each is closed as its reply comes
    /// back, unread.
    pub fn lose_script_replies(&self, n: usize) {
        self.lose_replies.store(n, Ordering::SeqCst);
    }

    /// Whether every reply `lose_script_replies` asked to lose is lost.
    pub fn replies_lost(&self) -> bool {
        self.lose_replies.load(Ordering::SeqCst) == 0
    }
}

/// Carries one connection both ways until either side closes or the
/// proxy is cut; see [`Proxy::lose_script_replies`].
async fn carry(
    client: TcpStream,
    upstream: SocketAddr,
    lose_replies: Arc<AtomicUsize>,
    mut ended: tokio::sync::watch::Receiver<u64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let doomed = AtomicBool::new(false);
    let up = async {
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = from_client.read(&mut buf).await {
            let chunk = &buf[..n];
            if chunk.windows(7).any(|w| w == b"EVALSHA")
                && lose_replies
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                doomed.store(true, Ordering::SeqCst);
            }
            if to_server.write_all(chunk).await.is_err() {
                break;
            }
        }
        // Half closed, as the client did: what Redis still sends goes on.
        let _ = to_server.shutdown().await;
        std::future::pending::<()>().await
    };
    let down = async {
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = from_server.read(&mut buf).await {
            if doomed.load(Ordering::SeqCst) {
                break; // the reply is dropped, and the connection with it
            }
            if to_client.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = ended.changed() => {}
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
