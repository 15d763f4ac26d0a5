//! What the two benchmark servers (`examples/bench_server.rs`, the crate,
//! and `bench/src/bin/bench_baseline.rs`, broadcast + `axum::response::Sse`)
//! share, so that they differ only in how events reach the connections:
//! the command line, the listener, the runtime, the publisher's schedule and
//! payload, the subscriber sampling and the final line on SIGTERM.
//!
//! Included by both with `#[path = "../bench/server_common.rs"] mod common;`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::{TcpListener, TcpSocket};

/// How often the subscriber count is sampled (for `max_subscribers` and to
/// start the publisher).
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// Pending connections the listener queues: a client ramping up thousands
/// of connections should not overflow it.
const BACKLOG: u32 = 4096;

/// The command line both servers accept.
#[derive(Clone, Debug)]
pub struct Args {
    pub addr: String,
    /// Events per second; 0 = as fast as the publisher can go.
    pub rate: u64,
    /// Events to publish; 0 = unlimited.
    pub count: u64,
    /// The publisher starts once this many subscribers are connected.
    pub start_after_conns: u64,
    /// Tokio worker threads.
    pub threads: usize,
    /// The one server-specific knob (`--retain-events` / `--capacity`).
    pub extra: Option<usize>,
    /// The publisher also waits for this file to exist: how `bench/run.sh`
    /// starts it once the connections are spread over several servers,
    /// none of which sees them all.
    pub start_file: Option<String>,
    /// Server-specific flags that take text (`--redis URL`), as given.
    pub strings: Vec<(String, String)>,
}

const USAGE: &str = "usage: --addr HOST:PORT --rate R --count C --start-after-conns N \
    [--start-file PATH] [--threads T]";
/// Most worker threads accepted: far more than any machine this runs on
/// has cores, and a bound on what a typo can ask for.
const MAX_THREADS: u64 = 1024;

impl Args {
    /// Parses `std::env::args`, accepting `extra_flag NUMBER` and each of
    /// `string_flags TEXT` besides the common flags.
    pub fn parse(extra_flag: &str, string_flags: &[&str]) -> Result<Self, String> {
        let mut args = Args {
            addr: "127.0.0.1:3100".to_owned(),
            rate: 100,
            count: 0,
            start_after_conns: 1,
            threads: 1,
            extra: None,
            start_file: None,
            strings: Vec::new(),
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let (flag, inline) = match flag.split_once('=') {
                Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
                None => (flag, None),
            };
            if flag == "-h" || flag == "--help" {
                return Err(format!("{USAGE} [{extra_flag} N]"));
            }
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?,
            };
            let number = || -> Result<u64, String> {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{flag}: {value:?} is not a number"))
            };
            match flag.as_str() {
                "--addr" => args.addr = value.clone(),
                "--rate" => args.rate = number()?,
                "--count" => args.count = number()?,
                "--start-after-conns" => args.start_after_conns = number()?,
                "--start-file" => args.start_file = Some(value.clone()),
                "--threads" => {
                    let threads = number()?;
                    if threads > MAX_THREADS {
                        return Err(format!("--threads: at most {MAX_THREADS}, not {threads}"));
                    }
                    args.threads = threads.max(1) as usize;
                }
                f if f == extra_flag => args.extra = Some(number()? as usize),
                f if string_flags.contains(&f) => args.strings.push((flag.clone(), value.clone())),
                _ => {
                    return Err(format!(
                        "unknown argument {flag:?}\n{USAGE} [{extra_flag} N]"
                    ))
                }
            }
        }
        Ok(args)
    }

    /// The last value given to the text flag `flag`.
    #[allow(dead_code)] // only the crate's server has text flags
    pub fn string(&self, flag: &str) -> Option<&str> {
        self.strings
            .iter()
            .rev()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
    }
}

/// A multi-threaded runtime with `threads` workers.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
}

/// What every server does first: parses the command line (with
/// `extra_flag`) and builds the runtime. On a usage error or a runtime that
/// cannot start, it says why on stderr and gives the exit code to return.
#[allow(dead_code)] // the crate's server uses `start_with`
pub fn start(extra_flag: &str) -> Result<(Args, tokio::runtime::Runtime), std::process::ExitCode> {
    start_with(extra_flag, &[])
}

/// [`start`], accepting the text flags `string_flags` too.
pub fn start_with(
    extra_flag: &str,
    string_flags: &[&str],
) -> Result<(Args, tokio::runtime::Runtime), std::process::ExitCode> {
    let args = Args::parse(extra_flag, string_flags).map_err(|message| {
        eprintln!("{message}");
        std::process::ExitCode::from(2)
    })?;
    let runtime = runtime(args.threads).map_err(|error| {
        eprintln!("runtime: {error}");
        std::process::ExitCode::FAILURE
    })?;
    Ok((args, runtime))
}

/// Prints the settings line: the common arguments, plus `settings` (a JSON
/// object) for what is particular to this server.
pub fn announce(server: &str, args: &Args, settings: serde_json::Value) {
    let mut line = serde_json::json!({
        "server": server,
        "addr": args.addr,
        "rate": args.rate,
        "count": args.count,
        "start_after_conns": args.start_after_conns,
        "threads": args.threads,
    });
    if let (Some(line), serde_json::Value::Object(more)) = (line.as_object_mut(), settings) {
        line.extend(more);
    }
    info(&line);
}

/// What every server does last: waits for SIGTERM (see `exit_on_sigterm`)
/// unless `server` stops first, which is a failure.
pub async fn serve_until_sigterm(
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    counters: Arc<Counters>,
    lagged_skipped: impl Fn() -> u64,
) -> std::process::ExitCode {
    tokio::select! {
        served = server => {
            match served {
                Ok(Err(error)) => eprintln!("serve: {error}"),
                Ok(Ok(())) => eprintln!("serve: stopped"),
                Err(error) => eprintln!("serve: {error}"),
            }
            std::process::ExitCode::FAILURE
        }
        () = exit_on_sigterm(counters, lagged_skipped) => std::process::ExitCode::SUCCESS,
    }
}

/// Unix time in nanoseconds.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// This process's user and system CPU time in clock ticks, from
/// `/proc/self/stat` (0 where there is none).
pub fn cpu_ticks() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return (0, 0);
    };
    // Fields after the command name, which ends at the last ')': state is
    // field 3, utime 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return (0, 0);
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field(14), field(15))
}

/// Counters every server reports.
#[derive(Default)]
pub struct Counters {
    /// Events the publisher handed over.
    pub published: AtomicU64,
    /// Of those, publishes that failed (only a publish that can fail, the
    /// backplane's, counts any).
    pub publish_errors: AtomicU64,
    pub max_subscribers: AtomicUsize,
}

/// Binds `addr` with a backlog deep enough for a client ramping up
/// thousands of connections, and prints `{"listening": "HOST:PORT"}`: the
/// port the kernel picked when `addr` asks for port 0.
pub fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let parsed: std::net::SocketAddr = addr.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}"))
    })?;
    let socket = if parsed.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    let bound = socket
        .set_reuseaddr(true)
        .and_then(|()| socket.bind(parsed))
        .and_then(|()| socket.listen(BACKLOG))
        .map_err(|e| std::io::Error::new(e.kind(), format!("{addr}: {e}")))?;
    info(&serde_json::json!({ "listening": bound.local_addr()?.to_string() }));
    Ok(bound)
}

/// Serves `app` with `axum::serve` on `addr` (TCP_NODELAY on every
/// connection, as `tower_sse::serve` sets it), until the process exits.
#[allow(dead_code)] // the baseline's; the crate's server uses `tower_sse::serve`
pub async fn serve_axum(addr: &str, app: Router) -> std::io::Result<()> {
    let listener = listen(addr)?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}

/// Samples the subscriber count every 10 ms for `max_subscribers`, starts
/// the publisher once `args.start_after_conns` are connected (and
/// `args.start_file` exists, if given), then publishes
/// `args.count` events (0 = for ever) at `args.rate` per second (0 = as
/// fast as it can), each with the payload `SEQ TS_NS`.
pub async fn run_publisher(
    args: Args,
    counters: Arc<Counters>,
    subscribers: impl Fn() -> usize + Send + Sync + 'static,
    mut publish: impl FnMut(String) + Send + 'static,
) {
    let subscribers = Arc::new(subscribers);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    {
        let counters = counters.clone();
        let subscribers = subscribers.clone();
        let wanted = args.start_after_conns;
        let start_file = args.start_file.clone();
        tokio::spawn(async move {
            let mut started = Some(started_tx);
            let mut timer = tokio::time::interval(SAMPLE_EVERY);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                timer.tick().await;
                let n = subscribers();
                counters.max_subscribers.fetch_max(n, Ordering::Relaxed);
                let go = n as u64 >= wanted
                    && start_file
                        .as_ref()
                        .is_none_or(|path| std::path::Path::new(path).exists());
                if go {
                    if let Some(tx) = started.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
    }
    if started_rx.await.is_err() {
        return;
    }
    // Where the measurement window starts: `bench/run.sh` reads the CPU
    // time spent from here on.
    let (utime, stime) = cpu_ticks();
    info(&serde_json::json!({
        "publisher_started": true,
        "subscribers": subscribers(),
        "utime": utime,
        "stime": stime,
    }));
    let limit = if args.count == 0 {
        u64::MAX
    } else {
        args.count
    };
    let mut seq = 0u64;
    let next = |seq: u64| format!("{seq} {}", unix_ns());
    if args.rate == 0 {
        // As fast as publishing goes, letting the connections run between
        // batches.
        while seq < limit {
            for _ in 0..64 {
                if seq >= limit {
                    break;
                }
                publish(next(seq));
                seq += 1;
                counters.published.store(seq, Ordering::Relaxed);
            }
            tokio::task::yield_now().await;
        }
        return;
    }
    // Every millisecond, publish what is due since the start: the average
    // rate is exact whatever the timer's jitter.
    let start = Instant::now();
    let mut timer = tokio::time::interval(Duration::from_millis(1));
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while seq < limit {
        timer.tick().await;
        let elapsed = start.elapsed().as_nanos();
        let due = ((elapsed * u128::from(args.rate)) / 1_000_000_000) as u64 + 1;
        while seq < due.min(limit) {
            publish(next(seq));
            seq += 1;
            counters.published.store(seq, Ordering::Relaxed);
        }
    }
}

/// Prints a progress line to stdout, so that stderr carries only errors
/// and the final line on SIGTERM; a closed stdout is not an error here.
pub fn info(line: &serde_json::Value) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Waits for SIGTERM (or Ctrl-C), prints
/// `{"published","publish_errors","lagged_skipped","max_subscribers"}` to
/// stderr and exits.
pub async fn exit_on_sigterm(counters: Arc<Counters>, lagged_skipped: impl Fn() -> u64) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let line = serde_json::json!({
        "published": counters.published.load(Ordering::Relaxed),
        "publish_errors": counters.publish_errors.load(Ordering::Relaxed),
        "lagged_skipped": lagged_skipped(),
        "max_subscribers": counters.max_subscribers.load(Ordering::Relaxed),
    });
    eprintln!("{line}");
    std::process::exit(0);
}
