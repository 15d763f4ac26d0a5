//! The load client of the loopback benchmark (`bench/run.sh`).
//!
//! Opens `--conns` connections to `GET /events` with raw HTTP/1.1 over
//! `TcpStream`, decodes chunked transfer encoding, parses server-sent events
//! (fields, `event:`, comments, blank-line dispatch, LF / CR / CRLF line
//! ends) and reads each default-type event's data as `SEQ TS_NS`: latency is
//! the receive time minus `TS_NS` (same machine, same clock), a sequence
//! number that is not the previous one plus one is a gap, and an
//! `event: resync` frame is counted as such (with its `missed`).
//!
//! ```text
//! bench_client --addr 127.0.0.1:3100 --conns 1000 --expect 2000 --duration 60 \
//!     [--connect-concurrency 200] [--ready-file PATH] [--label NAME]
//! bench_client --addr 127.0.0.1:3100,127.0.0.1:3101 --conns 1000 ...
//! bench_client --parse-bench      # parser throughput on one core, no network
//! ```
//!
//! Several addresses (replicas of one service) share the connections in
//! turn, the first to the first address; the report then adds `by_addr`,
//! each address's `{"addr","conns","events","p50_us","p99_us","max_us"}`.
//!
//! One current-thread runtime: one core. A process holds at most as many
//! connections as its open-file limit allows (20 000 on the development
//! machines): run several processes for more. On exit (every connection got
//! `--expect` events, `--duration` seconds after connecting, or SIGTERM) it
//! prints one JSON line to stdout:
//! `{"conns","connected","failed","ended","events","gaps","silent_gaps",
//! "missed","resyncs","resync_missed","out_of_order","comments",
//! "complete_conns","lossless","p50_us","p99_us","p999_us","max_us",...}`.
//! `lossless` means every connection got every event `0..expect` exactly
//! once, in order, with no resync.

fn main() -> std::process::ExitCode {
    client::main()
}

mod client {
    use std::cell::RefCell;
    use std::io;
    use std::process::ExitCode;
    use std::rc::Rc;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    use tokio::sync::{Notify, Semaphore};

    /// Bytes read at once from a socket: one buffer for the whole process.
    const READ_BUF: usize = 256 * 1024;

    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUF]);
    }

    pub(super) fn main() -> ExitCode {
        let opts = match Opts::parse() {
            Ok(opts) => opts,
            Err(message) => {
                eprintln!("{message}");
                return ExitCode::from(2);
            }
        };
        if opts.parse_bench {
            parse_bench();
            return ExitCode::SUCCESS;
        }
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                eprintln!("runtime: {error}");
                return ExitCode::FAILURE;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, run(opts))
    }

    // ------------------------------------------------------------------
    // Command line

    struct Opts {
        /// One or more servers, given comma-separated.
        addrs: Vec<String>,
        conns: usize,
        expect: u64,
        duration: Duration,
        connect_concurrency: usize,
        connect_timeout: Duration,
        ready_file: Option<String>,
        done_file: Option<String>,
        linger: Duration,
        label: String,
        parse_bench: bool,
    }

    const USAGE: &str = "usage: bench_client --addr HOST:PORT --conns N [--expect C] \
        [--duration SECS] [--connect-concurrency K] [--connect-timeout SECS] \
        [--ready-file PATH] [--done-file PATH [--linger SECS]] [--label NAME] | --parse-bench";

    impl Opts {
        fn parse() -> Result<Self, String> {
            let mut opts = Opts {
                addrs: vec!["127.0.0.1:3100".to_owned()],
                conns: 1,
                expect: 0,
                duration: Duration::from_secs(60),
                connect_concurrency: 200,
                connect_timeout: Duration::from_secs(10),
                ready_file: None,
                done_file: None,
                linger: Duration::from_secs(30),
                label: String::new(),
                parse_bench: false,
            };
            let mut it = std::env::args().skip(1);
            while let Some(flag) = it.next() {
                let (flag, inline) = match flag.split_once('=') {
                    Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
                    None => (flag, None),
                };
                match flag.as_str() {
                    "-h" | "--help" => return Err(USAGE.to_owned()),
                    "--parse-bench" => {
                        opts.parse_bench = true;
                        continue;
                    }
                    _ => {}
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
                let seconds = || -> Result<Duration, String> {
                    value
                        .parse::<f64>()
                        .ok()
                        .filter(|s| s.is_finite() && *s >= 0.0)
                        .map(Duration::from_secs_f64)
                        .ok_or_else(|| format!("{flag}: {value:?} is not a number of seconds"))
                };
                match flag.as_str() {
                    "--addr" => {
                        opts.addrs = value
                            .split(',')
                            .filter(|a| !a.is_empty())
                            .map(str::to_owned)
                            .collect();
                        if opts.addrs.is_empty() {
                            return Err(format!("--addr: no address in {value:?}"));
                        }
                    }
                    "--conns" => opts.conns = number()? as usize,
                    "--expect" => opts.expect = number()?,
                    "--duration" => opts.duration = seconds()?,
                    "--connect-concurrency" => opts.connect_concurrency = number()?.max(1) as usize,
                    "--connect-timeout" => opts.connect_timeout = seconds()?,
                    "--ready-file" => opts.ready_file = Some(value.clone()),
                    "--done-file" => opts.done_file = Some(value.clone()),
                    "--linger" => opts.linger = seconds()?,
                    "--label" => opts.label = value.clone(),
                    _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
                }
            }
            Ok(opts)
        }
    }

    // ------------------------------------------------------------------
    // The run

    /// What every connection task shares (one thread: `RefCell`).
    struct Shared {
        conns: Vec<ConnStats>,
        /// Latency, one histogram per address (connection `id` goes to
        /// address `id % addrs`).
        hists: Vec<Histogram>,
        connected: usize,
        failed: usize,
        /// Connections that got their last expected event, ended or failed.
        finished: usize,
        /// Kept open until the process exits, so that the server sees no
        /// disconnect while others still receive.
        parked: Vec<TcpStream>,
        first_error: Option<String>,
    }

    #[derive(Clone, Copy, Debug, Default)]
    struct ConnStats {
        connected: bool,
        ended: bool,
        events: u64,
        first_seq: Option<u64>,
        last_seq: Option<u64>,
        gaps: u64,
        silent_gaps: u64,
        missed: u64,
        out_of_order: u64,
        resyncs: u64,
        resync_missed: u64,
        comments: u64,
        other_events: u64,
        bytes: u64,
        /// A resync frame arrived since the last event: the next gap is
        /// announced, not silent.
        resync_pending: bool,
    }

    async fn run(opts: Opts) -> ExitCode {
        check_open_files(opts.conns);
        let started = Instant::now();
        let shared = Rc::new(RefCell::new(Shared {
            conns: vec![ConnStats::default(); opts.conns],
            hists: opts.addrs.iter().map(|_| Histogram::new()).collect(),
            connected: 0,
            failed: 0,
            finished: 0,
            parked: Vec::new(),
            first_error: None,
        }));
        let progress = Rc::new(Notify::new());
        let permits = Rc::new(Semaphore::new(opts.connect_concurrency));
        let targets: Vec<(Rc<str>, Rc<[u8]>)> = opts
            .addrs
            .iter()
            .map(|addr| {
                let request = format!(
                    "GET /events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\
                     Cache-Control: no-cache\r\nUser-Agent: tower-sse-bench\r\n\r\n"
                );
                (Rc::from(addr.as_str()), Rc::from(request.into_bytes()))
            })
            .collect();
        for id in 0..opts.conns {
            let shared = shared.clone();
            let progress = progress.clone();
            let permits = permits.clone();
            let (addr, request) = targets[id % targets.len()].clone();
            let expect = opts.expect;
            let connect_timeout = opts.connect_timeout;
            tokio::task::spawn_local(async move {
                let outcome = connection(
                    id,
                    &addr,
                    &request,
                    expect,
                    connect_timeout,
                    &permits,
                    &shared,
                    &progress,
                )
                .await;
                let mut shared = shared.borrow_mut();
                match outcome {
                    Ok(Some(stream)) => shared.parked.push(stream),
                    Ok(None) => {}
                    Err(error) => {
                        if !shared.conns[id].connected {
                            shared.failed += 1;
                        }
                        shared.conns[id].ended = true;
                        shared.first_error.get_or_insert_with(|| error.to_string());
                    }
                }
                shared.finished += 1;
                progress.notify_one();
            });
        }

        // Connect phase.
        loop {
            {
                let s = shared.borrow();
                if s.connected + s.failed >= opts.conns {
                    break;
                }
            }
            progress.notified().await;
        }
        let connect_s = started.elapsed().as_secs_f64();
        let (connected, failed) = {
            let s = shared.borrow();
            (s.connected, s.failed)
        };
        let ready = serde_json::json!({
            "ready": true, "label": opts.label, "connected": connected,
            "failed": failed, "connect_s": round3(connect_s),
        });
        eprintln!("{ready}");
        if let Some(path) = &opts.ready_file {
            if let Err(error) = std::fs::write(path, format!("{ready}\n")) {
                eprintln!("ready file {path}: {error}");
            }
        }

        // Receive phase.
        let receiving = Instant::now();
        let ticks_ready = cpu_ticks();
        let deadline = tokio::time::sleep(opts.duration);
        tokio::pin!(deadline);
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => Some(term),
                Err(error) => {
                    eprintln!("SIGTERM handler: {error}");
                    None
                }
            };
        let stop = loop {
            if opts.expect > 0 && shared.borrow().finished >= opts.conns {
                break "complete";
            }
            let sigterm = async {
                match term.as_mut() {
                    Some(term) => {
                        term.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = progress.notified() => {}
                () = &mut deadline => break "duration",
                () = sigterm => break "sigterm",
                _ = tokio::signal::ctrl_c() => break "sigint",
            }
        };
        let receive_s = receiving.elapsed().as_secs_f64();
        let receive_ticks = cpu_ticks().saturating_sub(ticks_ready);
        let line = {
            let shared = shared.borrow();
            let mut line = report(&opts, &shared, stop, connect_s, receive_s);
            line["cpu_ticks"] = receive_ticks.into();
            line.to_string()
        };
        println!("{line}");
        let _ = io::Write::flush(&mut io::stdout());
        if let Some(path) = &opts.done_file {
            // Written whole, then renamed: whoever polls for it sees all of
            // it. The connections stay open until SIGTERM or `--linger`, so
            // that the server's CPU can be read before they close.
            let tmp = format!("{path}.tmp");
            match std::fs::write(&tmp, format!("{line}\n"))
                .and_then(|()| std::fs::rename(&tmp, path))
            {
                Ok(()) => {
                    let linger = tokio::time::sleep(opts.linger);
                    tokio::pin!(linger);
                    let sigterm = async {
                        match term.as_mut() {
                            Some(term) => {
                                term.recv().await;
                            }
                            None => std::future::pending::<()>().await,
                        }
                    };
                    tokio::select! {
                        () = &mut linger => {}
                        () = sigterm => {}
                    }
                }
                Err(error) => eprintln!("done file {path}: {error}"),
            }
        }
        ExitCode::SUCCESS
    }

    /// This process's user + system CPU time in clock ticks.
    fn cpu_ticks() -> u64 {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return 0;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return 0;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| {
            fields
                .get(n - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        field(14) + field(15)
    }

    fn round3(x: f64) -> f64 {
        (x * 1000.0).round() / 1000.0
    }

    /// Warns when the open-file limit cannot hold `conns` sockets.
    fn check_open_files(conns: usize) {
        let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
            return;
        };
        let soft = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(soft) = soft {
            if conns + 16 > soft {
                eprintln!(
                    "warning: {conns} connections but the open-file limit is {soft}: \
                     raise it (`ulimit -n $(ulimit -Hn)`) or run several processes"
                );
            }
        }
    }

    /// One connection: connect, request, read the head, then parse until
    /// the last expected event (returns the stream, to keep it open) or the
    /// end of the stream.
    #[allow(clippy::too_many_arguments)]
    async fn connection(
        id: usize,
        addr: &str,
        request: &[u8],
        expect: u64,
        connect_timeout: Duration,
        permits: &Semaphore,
        shared: &RefCell<Shared>,
        progress: &Notify,
    ) -> io::Result<Option<TcpStream>> {
        let permit = permits.acquire().await.map_err(io::Error::other)?;
        let (stream, mut parser) = tokio::time::timeout(connect_timeout, async {
            let mut stream = TcpStream::connect(addr).await?;
            stream.write_all(request).await?;
            let mut parser = Parser::new();
            // The head is small: read it through the shared buffer too.
            while parser.in_head() {
                stream.readable().await?;
                let done = SCRATCH.with(|scratch| {
                    let mut buf = scratch.borrow_mut();
                    match stream.try_read(&mut buf[..]) {
                        Ok(0) => Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "closed before the response head",
                        )),
                        Ok(n) => {
                            let now = unix_ns();
                            let mut s = shared.borrow_mut();
                            let s = &mut *s;
                            let at = id % s.hists.len();
                            let hist = &mut s.hists[at];
                            parser.feed(&buf[..n], now, &mut s.conns[id], hist, expect)
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                        Err(e) => Err(e),
                    }
                });
                done?;
            }
            Ok::<_, io::Error>((stream, parser))
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        drop(permit);
        {
            let mut s = shared.borrow_mut();
            s.conns[id].connected = true;
            s.connected += 1;
        }
        progress.notify_one();
        if parser.complete {
            return Ok(Some(stream));
        }
        loop {
            stream.readable().await?;
            let step = SCRATCH.with(|scratch| {
                let mut buf = scratch.borrow_mut();
                match stream.try_read(&mut buf[..]) {
                    Ok(0) => Ok(Step::Eof),
                    Ok(n) => {
                        let now = unix_ns();
                        let mut s = shared.borrow_mut();
                        let s = &mut *s;
                        let at = id % s.hists.len();
                        let hist = &mut s.hists[at];
                        let done = parser.feed(&buf[..n], now, &mut s.conns[id], hist, expect)?;
                        Ok(if done { Step::Done } else { Step::More })
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Step::More),
                    Err(e) => Err(e),
                }
            })?;
            match step {
                Step::More => {}
                Step::Done => return Ok(Some(stream)),
                Step::Eof => {
                    shared.borrow_mut().conns[id].ended = true;
                    return Ok(None);
                }
            }
        }
    }

    enum Step {
        More,
        Done,
        Eof,
    }

    fn unix_ns() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }

    fn report(
        opts: &Opts,
        shared: &Shared,
        stop: &str,
        connect_s: f64,
        receive_s: f64,
    ) -> serde_json::Value {
        let mut total = ConnStats::default();
        let mut complete = 0u64;
        let mut missed_tail = 0u64;
        let mut incomplete = 0u64;
        for c in &shared.conns {
            total.events += c.events;
            total.gaps += c.gaps;
            total.silent_gaps += c.silent_gaps;
            total.missed += c.missed;
            total.out_of_order += c.out_of_order;
            total.resyncs += c.resyncs;
            total.resync_missed += c.resync_missed;
            total.comments += c.comments;
            total.other_events += c.other_events;
            total.bytes += c.bytes;
            if opts.expect > 0 {
                // Events never seen: before the first, between (counted in
                // `missed`) and after the last.
                let tail = match c.last_seq {
                    Some(last) if last + 1 < opts.expect => opts.expect - last - 1,
                    Some(_) => 0,
                    None => opts.expect,
                };
                missed_tail += tail + c.first_seq.unwrap_or(0).min(opts.expect);
                let got_all = c.first_seq == Some(0)
                    && c.last_seq == Some(opts.expect - 1)
                    && c.events == opts.expect
                    && c.gaps == 0
                    && c.resyncs == 0
                    && c.out_of_order == 0;
                if got_all {
                    complete += 1;
                } else {
                    incomplete += 1;
                }
            }
        }
        let ended = shared.conns.iter().filter(|c| c.ended).count();
        let clean = total.gaps == 0 && total.resyncs == 0 && total.out_of_order == 0;
        let lossless = shared.failed == 0
            && shared.connected == opts.conns
            && clean
            && (opts.expect == 0 || incomplete == 0);
        let mut h = Histogram::new();
        for each in &shared.hists {
            h.merge(each);
        }
        let by_addr: Vec<serde_json::Value> = opts
            .addrs
            .iter()
            .zip(&shared.hists)
            .enumerate()
            .map(|(i, (addr, hist))| {
                let mine = shared.conns.iter().skip(i).step_by(opts.addrs.len());
                serde_json::json!({
                    "addr": addr,
                    "conns": mine.clone().count(),
                    "events": mine.map(|c| c.events).sum::<u64>(),
                    "p50_us": hist.quantile_us(0.50),
                    "p99_us": hist.quantile_us(0.99),
                    "max_us": hist.max_us(),
                })
            })
            .collect();
        let mut line = serde_json::json!({
            "label": opts.label,
            "stop": stop,
            "conns": opts.conns,
            "connected": shared.connected,
            "failed": shared.failed,
            "ended": ended,
            "expect": opts.expect,
            "events": total.events,
            "expected_events": opts.expect * opts.conns as u64,
            "gaps": total.gaps,
            "silent_gaps": total.silent_gaps,
            "missed": total.missed + missed_tail,
            "resyncs": total.resyncs,
            "resync_missed": total.resync_missed,
            "out_of_order": total.out_of_order,
            "comments": total.comments,
            "other_events": total.other_events,
            "bytes": total.bytes,
            "complete_conns": complete,
            "lossless": lossless,
            "p50_us": h.quantile_us(0.50),
            "p99_us": h.quantile_us(0.99),
            "p999_us": h.quantile_us(0.999),
            "max_us": h.max_us(),
            "connect_s": round3(connect_s),
            "receive_s": round3(receive_s),
            "error": shared.first_error,
        });
        if opts.addrs.len() > 1 {
            line["by_addr"] = by_addr.into();
        }
        line
    }

    // ------------------------------------------------------------------
    // HTTP/1.1 response + chunked decoding + SSE parsing

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Body {
        /// Reading the response head.
        Head,
        /// Chunked: reading a chunk-size line.
        Size { size: u64, ext: bool },
        /// Chunked: `remaining` bytes of chunk data to go.
        Data { remaining: u64 },
        /// Chunked: the CRLF after a chunk's data.
        DataEnd,
        /// No chunking: the body runs to the end of the connection.
        Identity,
        /// The last chunk was read.
        Done,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Kind {
        Message,
        Resync,
        Other,
    }

    /// One connection's decoder: HTTP head, chunked framing, SSE lines.
    struct Parser {
        body: Body,
        head: Vec<u8>,
        /// An incomplete line carried over from the previous segment.
        line: Vec<u8>,
        /// The previous segment ended with CR: a leading LF belongs to it.
        skip_lf: bool,
        data: Vec<u8>,
        has_data: bool,
        kind: Kind,
        /// The last expected event arrived.
        complete: bool,
    }

    impl Parser {
        fn new() -> Self {
            Self {
                body: Body::Head,
                head: Vec::new(),
                line: Vec::new(),
                skip_lf: false,
                data: Vec::with_capacity(64),
                has_data: false,
                kind: Kind::Message,
                complete: false,
            }
        }

        fn in_head(&self) -> bool {
            self.body == Body::Head
        }

        /// Feeds bytes read at `now` (Unix ns). Returns whether the last
        /// expected event arrived.
        fn feed(
            &mut self,
            mut bytes: &[u8],
            now: u64,
            stats: &mut ConnStats,
            hist: &mut Histogram,
            expect: u64,
        ) -> io::Result<bool> {
            stats.bytes += bytes.len() as u64;
            if self.body == Body::Head {
                let start = self.head.len().saturating_sub(3);
                self.head.extend_from_slice(bytes);
                let Some(end) = find(&self.head[start..], b"\r\n\r\n") else {
                    if self.head.len() > 64 * 1024 {
                        return Err(io::Error::other("response head too long"));
                    }
                    return Ok(false);
                };
                let end = start + end + 4;
                self.body = parse_head(&self.head[..end])?;
                let rest_from = end - (self.head.len() - bytes.len());
                bytes = &bytes[rest_from..];
                self.head = Vec::new();
            }
            let mut ctx = Ctx {
                now,
                stats,
                hist,
                expect,
            };
            while !bytes.is_empty() {
                match self.body {
                    Body::Head | Body::Done => break,
                    Body::Identity => {
                        self.sse(bytes, &mut ctx);
                        bytes = &[];
                    }
                    Body::Size { size, ext } => {
                        let b = bytes[0];
                        bytes = &bytes[1..];
                        self.body = match b {
                            b'\n' if size == 0 => Body::Done,
                            b'\n' => Body::Data { remaining: size },
                            b'\r' => Body::Size { size, ext },
                            _ if ext => Body::Size { size, ext },
                            b';' | b' ' | b'\t' => Body::Size { size, ext: true },
                            _ => {
                                let digit = (b as char).to_digit(16).ok_or_else(|| {
                                    io::Error::other(format!("bad chunk size byte {b:#x}"))
                                })?;
                                Body::Size {
                                    size: size
                                        .checked_mul(16)
                                        .and_then(|s| s.checked_add(u64::from(digit)))
                                        .ok_or_else(|| io::Error::other("chunk size overflow"))?,
                                    ext,
                                }
                            }
                        };
                    }
                    Body::Data { remaining } => {
                        let n = remaining.min(bytes.len() as u64) as usize;
                        self.sse(&bytes[..n], &mut ctx);
                        bytes = &bytes[n..];
                        self.body = if remaining == n as u64 {
                            Body::DataEnd
                        } else {
                            Body::Data {
                                remaining: remaining - n as u64,
                            }
                        };
                    }
                    Body::DataEnd => {
                        let b = bytes[0];
                        bytes = &bytes[1..];
                        match b {
                            b'\r' => {}
                            b'\n' => {
                                self.body = Body::Size {
                                    size: 0,
                                    ext: false,
                                }
                            }
                            _ => return Err(io::Error::other("missing CRLF after chunk data")),
                        }
                    }
                }
            }
            if self.body == Body::Done {
                ctx.stats.ended = true;
            }
            Ok(self.complete)
        }

        /// Feeds a piece of the event stream.
        fn sse(&mut self, mut bytes: &[u8], ctx: &mut Ctx<'_>) {
            if self.skip_lf && !bytes.is_empty() {
                self.skip_lf = false;
                if bytes[0] == b'\n' {
                    bytes = &bytes[1..];
                }
            }
            while let Some(at) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
                let end = bytes[at];
                if self.line.is_empty() {
                    self.line_done(&bytes[..at], ctx);
                } else {
                    let mut line = std::mem::take(&mut self.line);
                    line.extend_from_slice(&bytes[..at]);
                    self.line_done(&line, ctx);
                    line.clear();
                    self.line = line;
                }
                bytes = &bytes[at + 1..];
                if end == b'\r' {
                    match bytes.first() {
                        Some(b'\n') => bytes = &bytes[1..],
                        Some(_) => {}
                        None => self.skip_lf = true,
                    }
                }
            }
            self.line.extend_from_slice(bytes);
        }

        fn line_done(&mut self, line: &[u8], ctx: &mut Ctx<'_>) {
            let Some(&first) = line.first() else {
                self.dispatch(ctx);
                return;
            };
            if first == b':' {
                ctx.stats.comments += 1;
                return;
            }
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(at) => {
                    let value = &line[at + 1..];
                    (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &[][..]),
            };
            match field {
                b"data" => {
                    if self.has_data {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                    self.has_data = true;
                }
                b"event" => {
                    self.kind = match value {
                        b"message" => Kind::Message,
                        b"resync" => Kind::Resync,
                        _ => Kind::Other,
                    }
                }
                // `id`, `retry` and unknown fields change nothing measured.
                _ => {}
            }
        }

        /// A blank line: dispatch the event gathered so far.
        fn dispatch(&mut self, ctx: &mut Ctx<'_>) {
            let kind = std::mem::replace(&mut self.kind, Kind::Message);
            if !self.has_data {
                return;
            }
            self.has_data = false;
            match kind {
                Kind::Message => self.event(ctx),
                Kind::Resync => {
                    ctx.stats.resyncs += 1;
                    ctx.stats.resync_pending = true;
                    if let Some(at) = find(&self.data, b"\"missed\":") {
                        ctx.stats.resync_missed += parse_u64(&self.data[at + 9..]).0;
                    }
                }
                Kind::Other => ctx.stats.other_events += 1,
            }
            self.data.clear();
        }

        fn event(&mut self, ctx: &mut Ctx<'_>) {
            let (seq, used) = parse_u64(&self.data);
            let (ts, _) = parse_u64(self.data.get(used + 1..).unwrap_or_default());
            let s = &mut *ctx.stats;
            s.events += 1;
            ctx.hist.record(ctx.now.saturating_sub(ts));
            match s.last_seq {
                None => {
                    s.first_seq = Some(seq);
                    s.last_seq = Some(seq);
                }
                Some(last) if seq == last + 1 => s.last_seq = Some(seq),
                Some(last) if seq > last => {
                    s.gaps += 1;
                    s.missed += seq - last - 1;
                    if !s.resync_pending {
                        s.silent_gaps += 1;
                    }
                    s.last_seq = Some(seq);
                }
                Some(_) => s.out_of_order += 1,
            }
            s.resync_pending = false;
            if ctx.expect > 0 && seq + 1 >= ctx.expect {
                self.complete = true;
            }
        }
    }

    struct Ctx<'a> {
        now: u64,
        stats: &'a mut ConnStats,
        hist: &'a mut Histogram,
        expect: u64,
    }

    /// Checks the status line and picks the body framing.
    fn parse_head(head: &[u8]) -> io::Result<Body> {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n");
        let status = lines.next().unwrap_or_default();
        let code = status.split(' ').nth(1).unwrap_or_default();
        if !status.starts_with("HTTP/1.") || code != "200" {
            return Err(io::Error::other(format!(
                "unexpected status line {status:?}"
            )));
        }
        let mut chunked = false;
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                if name.trim().eq_ignore_ascii_case("transfer-encoding")
                    && value.to_ascii_lowercase().contains("chunked")
                {
                    chunked = true;
                }
            }
        }
        Ok(if chunked {
            Body::Size {
                size: 0,
                ext: false,
            }
        } else {
            Body::Identity
        })
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    /// Leading decimal digits: the value and how many bytes they took.
    fn parse_u64(bytes: &[u8]) -> (u64, usize) {
        let mut value = 0u64;
        let mut used = 0;
        for &b in bytes {
            if !b.is_ascii_digit() {
                break;
            }
            value = value.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
            used += 1;
        }
        (value, used)
    }

    // ------------------------------------------------------------------
    // Latency histogram: log-linear, 1 ns steps below 1024 ns, then 512
    // buckets per power of two (under 0.2 % error).

    const SUB_BITS: u32 = 9;
    const SUB: u64 = 1 << SUB_BITS;

    struct Histogram {
        counts: Vec<u64>,
        total: u64,
        max: u64,
    }

    impl Histogram {
        fn new() -> Self {
            Self {
                counts: vec![0; Self::index(u64::MAX) + 1],
                total: 0,
                max: 0,
            }
        }

        fn index(v: u64) -> usize {
            if v < 2 * SUB {
                return v as usize;
            }
            let bits = 64 - v.leading_zeros(); // > SUB_BITS + 1
            let shift = bits - SUB_BITS - 1;
            let mantissa = (v >> shift) - SUB; // 0..SUB
            (2 * SUB + u64::from(shift - 1) * SUB + mantissa) as usize
        }

        /// The middle of bucket `i`'s range.
        fn value(i: usize) -> u64 {
            let i = i as u64;
            if i < 2 * SUB {
                return i;
            }
            let shift = (i - 2 * SUB) / SUB + 1;
            let mantissa = (i - 2 * SUB) % SUB + SUB;
            (mantissa << shift) + (1 << (shift - 1))
        }

        fn merge(&mut self, other: &Histogram) {
            for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
                *mine += theirs;
            }
            self.total += other.total;
            self.max = self.max.max(other.max);
        }

        fn record(&mut self, ns: u64) {
            self.counts[Self::index(ns)] += 1;
            self.total += 1;
            self.max = self.max.max(ns);
        }

        fn quantile_us(&self, q: f64) -> Option<f64> {
            if self.total == 0 {
                return None;
            }
            let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
            let mut seen = 0;
            for (i, &n) in self.counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    let ns = Self::value(i).min(self.max);
                    return Some((ns as f64 / 10.0).round() / 100.0);
                }
            }
            None
        }

        fn max_us(&self) -> Option<f64> {
            (self.total > 0).then(|| (self.max as f64 / 10.0).round() / 100.0)
        }
    }

    // ------------------------------------------------------------------
    // --parse-bench: the parser alone, on synthetic streams shaped like
    // each server's, to show the client is not what limits a run.

    fn parse_bench() {
        const EVENTS: u64 = 2_000_000;
        self_check();
        let now = unix_ns();
        let mut results = serde_json::Map::new();
        // (name, id lines?, events per chunk)
        for (name, with_id, per_chunk) in [
            ("crate_format_batched", true, 16u64),
            ("crate_format_one_per_chunk", true, 1),
            ("baseline_format", false, 1),
        ] {
            let mut wire = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                transfer-encoding: chunked\r\n\r\n"
                .to_vec();
            let mut chunk = Vec::new();
            for seq in 0..EVENTS {
                if with_id {
                    chunk.extend_from_slice(
                        format!("id: 1767225600000000000-{}\n", seq + 1).as_bytes(),
                    );
                }
                chunk.extend_from_slice(format!("data: {seq} {}\n\n", now + seq).as_bytes());
                if (seq + 1) % per_chunk == 0 || seq + 1 == EVENTS {
                    wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    wire.extend_from_slice(&chunk);
                    wire.extend_from_slice(b"\r\n");
                    chunk.clear();
                }
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let mut parser = Parser::new();
            let mut stats = ConnStats::default();
            let mut hist = Histogram::new();
            let started = Instant::now();
            // 64 KiB reads, a clock read per read, as on a socket.
            for piece in wire.chunks(64 * 1024) {
                let at = unix_ns();
                parser
                    .feed(piece, at, &mut stats, &mut hist, EVENTS)
                    .expect("synthetic stream parses");
            }
            let secs = started.elapsed().as_secs_f64();
            assert_eq!(stats.events, EVENTS, "{name}: every event parsed");
            assert_eq!(stats.gaps, 0);
            assert!(stats.ended, "{name}: last chunk seen");
            let rate = EVENTS as f64 / secs;
            eprintln!(
                "{name}: {EVENTS} events, {:.1} MB in {secs:.3} s = {:.2} M events/s, {:.0} MB/s",
                wire.len() as f64 / 1e6,
                rate / 1e6,
                wire.len() as f64 / secs / 1e6
            );
            results.insert(
                name.to_owned(),
                serde_json::json!({
                    "events_per_s": rate.round(),
                    "mb_per_s": (wire.len() as f64 / secs / 1e6).round(),
                }),
            );
        }
        println!("{}", serde_json::Value::Object(results));
    }

    /// The decoder on awkward input: CR, LF and CRLF line ends, comments,
    /// other event types, a resync with `missed`, a gap, and every way of
    /// splitting the bytes into reads.
    fn self_check() {
        let sse = b"retry: 3000\r\n\r\n: hello\n\
            id: 1\ndata: 0 1\n\n\
            data: 1 1\r\r\
            event: other\r\ndata: x\r\ndata: y\r\n\r\n\
            data: 2 1\n\n\
            event: resync\ndata: {\"reason\":\"lagged\",\"missed\":3}\n\n\
            data: 6 1\n\n\
            data:7 1\n\n\
            data: 9 1\n\n";
        let mut wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for piece in sse.chunks(13) {
            wire.extend_from_slice(format!("{:X};ext=1\r\n", piece.len()).as_bytes());
            wire.extend_from_slice(piece);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        for step in 1..=wire.len() {
            let mut parser = Parser::new();
            let mut stats = ConnStats::default();
            let mut hist = Histogram::new();
            for piece in wire.chunks(step) {
                parser
                    .feed(piece, 10, &mut stats, &mut hist, 10)
                    .expect("self-check stream parses");
            }
            let got = (
                stats.events,
                stats.comments,
                stats.other_events,
                stats.resyncs,
                stats.resync_missed,
                stats.gaps,
                stats.silent_gaps,
                stats.missed,
                stats.ended,
                parser.complete,
            );
            assert_eq!(
                got,
                (6, 1, 1, 1, 3, 2, 1, 4, true, true),
                "reads of {step} bytes"
            );
        }
        eprintln!("parser self-check: ok");
    }
}
