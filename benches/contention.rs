//! Where the broker's one mutex would saturate.
//!
//! ```text
//! cargo bench --bench contention
//! cargo bench --bench contention -- --secs 2 --write-us 5
//! ```
//!
//! The broker keeps everything under one `Mutex<State>`. A publish checks
//! and encodes its frame outside it, then commits under it (seq, id, append,
//! eviction, taking the wakers of the topic's watchers); a read
//! (`Subscription::try_next`, or the events route's batched read) does
//! nearly all of its work under it. The lock is therefore one serial
//! resource, one second of holding per second however many cores there
//! are, and what matters for 100 000 connections on 16 or 64 cores is how
//! much of it each publish and each delivery takes. This prints:
//!
//! 1. **Hold times**, single-threaded and uncontended, in ns per call
//!    (median of several samples). Each figure is the whole call, so an
//!    upper bound of the time the lock is held:
//!    - `publish` with N watchers of the topic (0, 1 000, 100 000), idle
//!      (registered, never polled: the publisher still walks them) or
//!      parked (a waker each, as idle streams are: the publisher takes
//!      every waker under the lock and wakes them after it). The log is
//!      full at the default retention, so every publish also evicts and
//!      frees its oldest event under the lock, as in steady state; one row
//!      with a log that only grows shows what eviction adds.
//!    - The public API cannot time the commit alone, so the part inside
//!      the lock is estimated: a publish to a *closed* broker does all the
//!      work outside the lock (checks, encoding) and then an empty critical
//!      section, so `inside ≈ publish − (closed publish − lock/unlock) −
//!      waking`, with lock/unlock timed on a plain `Mutex` and waking timed
//!      on the same wakers.
//!    - `try_next` that returns one event (K events published beforehand,
//!      then drained across M subscriptions round-robin, one event per
//!      call, as woken streams read) and `try_next` that finds nothing (the
//!      second, empty poll a stream makes after each delivery); also
//!      `poll_recv` finding nothing, which parks as a stream does.
//!    - The events route's own read (`SseLayer` body, one lock per poll
//!      for everything available): one poll with 1, 4 or 16 events
//!      waiting, which is what coalescing or a backlog buys per lock.
//!      `Subscription` has no batched read of its own (`try_next` locks
//!      once per event), so the route is the only way to time one.
//! 2. **Scaling with threads** (plain threads, a fixed wall time each):
//!    publishers only, one publisher against a reader thread, and readers
//!    only on a pre-filled log, at 1 thread and at
//!    `available_parallelism()` threads. Throughput under contention shows
//!    how much a contended lock costs beyond its uncontended hold time.
//!    Every run checks that each subscription got every event, or was told
//!    exactly how many it missed.
//! 3. **The model** those hold times imply for 100 000 connections on one
//!    topic: the lock's busy fraction at 1, 10 and 100 events/s, the
//!    delivery rate at which it is 100 % busy (one event per lock, or a
//!    batch of 4 or 16), and the cores the kernel's writes would need at
//!    that rate (`--write-us`, default 5 µs per write), against 16 and 64;
//!    and that rate again with each lock operation as much slower as part
//!    2 measured it under contention.
//!
//! Then one JSON line with every number. A plain `main` rather than
//! criterion: part 2 runs threads for a fixed time, and the model needs
//! the numbers together. Criterion's arguments (`--bench`, a filter) are
//! accepted and ignored. Nothing here asserts on speed.

#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
fn main() {
    contention::main();
}

#[cfg(not(loom))]
mod contention {
    use std::convert::Infallible;
    use std::future::Future;
    use std::hint::black_box;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Barrier, Mutex};
    use std::task::{Context, Poll, Wake, Waker};
    use std::thread;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body::Body;
    use http_body_util::Empty;
    use serde_json::{json, Value};
    use tower::{Layer, Service};
    use tower_sse::broker::DEFAULT_RETAIN_EVENTS;
    use tower_sse::sse::ResponseBody;
    use tower_sse::{Broker, Event, Message, SseLayer, Subscription, Topics};

    /// The topic every event goes to (the route's rows use the default one).
    const TOPIC: &str = "hot";
    /// The payload of every event, as in `benches/broker.rs`.
    const PAYLOAD: &str = "1234567890 1234567890";
    /// Subscriptions read in part 1 and split among reader threads in part 2.
    const SUBSCRIBERS: usize = 1_000;
    /// Connections on one topic in the model, and the largest N of part 1.
    const CONNECTIONS: usize = 100_000;
    /// Events per subscription published before timing `try_next`.
    const READ_BACKLOG: usize = 16;
    /// Batches the events route reads in one lock.
    const BATCHES: [usize; 3] = [1, 4, 16];
    /// Events retained for the readers-only runs: more than they can read
    /// in the run's time, so that they are busy throughout.
    const PREFILL: usize = 100_000;
    /// Timed samples per figure of part 1, after one warm-up.
    const SAMPLES: usize = 9;

    struct Args {
        /// Kernel cost of one write to a connection, for the cores needed.
        write_us: f64,
        /// Wall time of each run of part 2.
        secs: f64,
    }

    fn args() -> Args {
        let mut args = Args {
            write_us: 5.0,
            secs: 1.5,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                None => (arg, None),
            };
            let slot = match name.as_str() {
                "--write-us" => &mut args.write_us,
                "--secs" => &mut args.secs,
                // `--bench`, a filter: cargo's and criterion's, ignored.
                _ => continue,
            };
            let value = inline.or_else(|| it.next());
            *slot = value
                .and_then(|v| v.parse().ok())
                .filter(|v: &f64| *v > 0.0)
                .unwrap_or_else(|| panic!("{name} takes a positive number"));
        }
        args
    }

    pub fn main() {
        let args = args();
        let cores = thread::available_parallelism().map_or(1, usize::from);
        println!(
            "contention: payload {PAYLOAD:?} ({} B), topic {TOPIC:?}, {cores} cores, \
             {:.1} s per threaded run, {} µs per write",
            PAYLOAD.len(),
            args.secs,
            args.write_us
        );
        let holds = hold_times();
        let runs = scaling(cores, args.secs);
        let model = model(&holds, &runs, args.write_us);
        let report = json!({
            "bench": "contention",
            "cores": cores,
            "payload_bytes": PAYLOAD.len(),
            "secs_per_run": args.secs,
            "write_us": args.write_us,
            "hold_ns": holds.json(),
            "runs": runs.iter().map(Run::json).collect::<Vec<_>>(),
            "model": model,
        });
        println!("{report}");
    }

    // ----------------------------------------------------------------------
    // Measuring

    /// A figure of part 1: ns per operation over the samples.
    #[derive(Clone, Copy, Debug)]
    struct Ns {
        median: f64,
        min: f64,
    }

    impl Ns {
        fn json(self) -> Value {
            json!({ "median": round(self.median), "min": round(self.min) })
        }
    }

    /// Runs `sample` once to warm up, then `samples` times. Each run does
    /// its own setup, times only the operations, and returns that time and
    /// how many operations it timed.
    fn measure(samples: usize, mut sample: impl FnMut() -> (Duration, usize)) -> Ns {
        sample();
        let mut per_op: Vec<f64> = (0..samples)
            .map(|_| {
                let (time, ops) = sample();
                time.as_nanos() as f64 / ops as f64
            })
            .collect();
        per_op.sort_by(f64::total_cmp);
        Ns {
            median: per_op[per_op.len() / 2],
            min: per_op[0],
        }
    }

    fn round(x: f64) -> f64 {
        (x * 10.0).round() / 10.0
    }

    fn event() -> Event {
        Event::new("tick").topic(TOPIC).data(PAYLOAD)
    }

    fn topics() -> Topics {
        Topics::parse([TOPIC]).unwrap()
    }

    fn subscribe(broker: &Broker, n: usize) -> Vec<Subscription> {
        (0..n)
            .map(|_| broker.subscribe(&topics(), None).unwrap())
            .collect()
    }

    /// A broker at the default retention whose log is already full, so
    /// that every publish evicts one event: the steady state.
    fn full_broker() -> Broker {
        let broker = Broker::new();
        for _ in 0..DEFAULT_RETAIN_EVENTS {
            broker.publish(event()).unwrap();
        }
        broker
    }

    /// A waker that does nothing, one allocation each, like a task's.
    struct Noop;

    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    fn noop_waker() -> Waker {
        Waker::from(Arc::new(Noop))
    }

    // ----------------------------------------------------------------------
    // Part 1: hold times

    /// One row of the publish table.
    struct PublishRow {
        label: String,
        /// The log is full, so the publish evicts one event.
        full: bool,
        watchers: usize,
        parked: bool,
        ns: Ns,
    }

    struct Holds {
        publish: Vec<PublishRow>,
        /// A publish to a closed broker: the work outside the lock plus an
        /// empty critical section.
        closed: Ns,
        /// Lock and unlock of an uncontended `std::sync::Mutex`.
        lock_pair: Ns,
        /// Waking N parked subscriptions' wakers, by N.
        wake: Vec<(usize, Ns)>,
        read_one: Ns,
        read_empty: Ns,
        read_one_then_empty: Ns,
        poll_recv_empty: Ns,
        /// The events route: (events per poll, ns per poll).
        route: Vec<(usize, Ns)>,
        route_empty: Ns,
    }

    impl Holds {
        /// The work of a publish outside the lock.
        fn outside(&self) -> f64 {
            (self.closed.median - self.lock_pair.median).max(0.0)
        }

        fn wake_ns(&self, watchers: usize, parked: bool) -> f64 {
            if !parked {
                return 0.0;
            }
            self.wake
                .iter()
                .find(|(n, _)| *n == watchers)
                .map_or(0.0, |(_, ns)| ns.median)
        }

        /// The estimate of the part of `row` inside the lock.
        fn inside(&self, row: &PublishRow) -> f64 {
            (row.ns.median - self.outside() - self.wake_ns(row.watchers, row.parked)).max(0.0)
        }

        fn publish_with(&self, watchers: usize, parked: bool) -> &PublishRow {
            self.publish
                .iter()
                .find(|r| r.full && r.watchers == watchers && r.parked == parked)
                .expect("measured")
        }

        fn route(&self, batch: usize) -> Ns {
            self.route
                .iter()
                .find(|(k, _)| *k == batch)
                .map(|(_, ns)| *ns)
                .expect("measured")
        }

        fn json(&self) -> Value {
            json!({
                "publish": self.publish.iter().map(|r| json!({
                    "label": r.label,
                    "log_full": r.full,
                    "watchers": r.watchers,
                    "parked": r.parked,
                    "ns": r.ns.json(),
                    "inside_lock_estimate": round(self.inside(r)),
                })).collect::<Vec<_>>(),
                "publish_closed": self.closed.json(),
                "publish_outside_lock_estimate": round(self.outside()),
                "mutex_lock_unlock": self.lock_pair.json(),
                "wake": self.wake.iter().map(|(n, ns)| json!({ "wakers": n, "ns": ns.json() }))
                    .collect::<Vec<_>>(),
                "try_next_one": self.read_one.json(),
                "try_next_empty": self.read_empty.json(),
                "try_next_one_then_empty": self.read_one_then_empty.json(),
                "poll_recv_empty": self.poll_recv_empty.json(),
                "route_poll": self.route.iter().map(|(k, ns)| json!({ "events": k, "ns": ns.json() }))
                    .collect::<Vec<_>>(),
                "route_poll_empty": self.route_empty.json(),
            })
        }
    }

    fn hold_times() -> Holds {
        println!();
        println!("== 1. Lock hold per call: one thread, uncontended ==");
        println!(
            "ns per call, median of {SAMPLES} samples (min). The whole call is an upper bound \
             of the hold;"
        );
        println!(
            "for publish, `inside` estimates the commit: whole - (closed publish - lock/unlock) \
             - waking."
        );
        let lock_pair = lock_pair();
        let closed = publish_closed();
        let mut publish = Vec::new();
        let growing = Broker::builder()
            .retain_events(usize::MAX)
            .retain_bytes(usize::MAX)
            .retain_forever()
            .build();
        publish.push(PublishRow {
            label: "publish, log growing (no eviction), 0 watchers".into(),
            full: false,
            watchers: 0,
            parked: false,
            ns: publish_idle(&growing, 0),
        });
        for n in [0, SUBSCRIBERS, CONNECTIONS] {
            publish.push(PublishRow {
                label: format!("publish, log full (evicts 1), {n} idle watchers"),
                full: true,
                watchers: n,
                parked: false,
                ns: publish_idle(&full_broker(), n),
            });
        }
        let mut wake = Vec::new();
        for n in [SUBSCRIBERS, CONNECTIONS] {
            let (ns, woken) = publish_parked(n);
            publish.push(PublishRow {
                label: format!("publish, log full (evicts 1), {n} parked watchers"),
                full: true,
                watchers: n,
                parked: true,
                ns,
            });
            wake.push((n, woken));
        }
        let (read_one, read_empty, read_one_then_empty, poll_recv_empty) = reads();
        let (route, route_empty) = route_reads();
        let holds = Holds {
            publish,
            closed,
            lock_pair,
            wake,
            read_one,
            read_empty,
            read_one_then_empty,
            poll_recv_empty,
            route,
            route_empty,
        };

        let row = |label: &str, ns: Ns, extra: String| {
            println!(
                "  {label:<58} {:>10.1} ({:>9.1}) {extra}",
                ns.median, ns.min
            );
        };
        println!(
            "  {:<58} {:>10} {:>11} inside lock (est.)",
            "", "ns/call", "(min)"
        );
        for r in &holds.publish {
            row(&r.label, r.ns, format!("{:>10.1}", holds.inside(r)));
        }
        row(
            "publish to a closed broker (outside work + empty lock)",
            holds.closed,
            format!("outside ≈ {:.1}", holds.outside()),
        );
        row(
            "lock + unlock, uncontended std Mutex",
            holds.lock_pair,
            String::new(),
        );
        for (n, ns) in &holds.wake {
            row(
                &format!("wake {n} parked wakers (no-op wakers; after the lock)"),
                *ns,
                String::new(),
            );
        }
        let m = SUBSCRIBERS;
        row(
            &format!("try_next -> 1 event ({m} subs x {READ_BACKLOG}, round-robin)"),
            holds.read_one,
            String::new(),
        );
        row(
            &format!("try_next -> nothing ({m} caught-up subs)"),
            holds.read_empty,
            String::new(),
        );
        row(
            "try_next -> 1 event, then -> nothing (per delivery)",
            holds.read_one_then_empty,
            String::new(),
        );
        row(
            "poll_recv -> Pending (parks; its waker already stored)",
            holds.poll_recv_empty,
            String::new(),
        );
        for (k, ns) in &holds.route {
            row(
                &format!("events route body poll, {k} event(s) in one lock"),
                *ns,
                format!("{:>10.1} per event", ns.median / *k as f64),
            );
        }
        row(
            "events route body poll -> Pending",
            holds.route_empty,
            String::new(),
        );
        holds
    }

    /// Lock and unlock of an uncontended mutex: what the empty critical
    /// section of a closed publish costs, to take off it.
    fn lock_pair() -> Ns {
        const OPS: usize = 1_000_000;
        let mutex = Mutex::new(0u64);
        measure(SAMPLES, || {
            let start = Instant::now();
            for _ in 0..OPS {
                *black_box(&mutex).lock().unwrap() += 1;
            }
            (start.elapsed(), OPS)
        })
    }

    /// How many publishes one sample times: about the same time per sample
    /// whatever the number of watchers walked.
    fn publish_batch(watchers: usize) -> usize {
        (2_000_000 / (watchers + 200)).clamp(16, 10_000)
    }

    /// Publishes of events built beforehand, with `watchers` subscriptions
    /// of the topic that never read (their slots are walked, no waker is
    /// there to take).
    fn publish_idle(broker: &Broker, watchers: usize) -> Ns {
        let subs = subscribe(broker, watchers);
        let batch = publish_batch(watchers);
        let ns = measure(SAMPLES, || publishes(broker, batch, true));
        drop(subs);
        ns
    }

    /// A publish that fails only once it holds the lock (the broker is
    /// closed): the checks and the encoding, then an empty critical
    /// section.
    fn publish_closed() -> Ns {
        let broker = full_broker();
        broker.close();
        let batch = publish_batch(0);
        measure(SAMPLES, || publishes(&broker, batch, false))
    }

    /// Times `batch` publishes of events built beforehand, each of which
    /// must be accepted (`accepted`) or refused.
    fn publishes(broker: &Broker, batch: usize, accepted: bool) -> (Duration, usize) {
        let events: Vec<Event> = (0..batch).map(|_| event()).collect();
        let start = Instant::now();
        let mut as_expected = 0;
        for event in events {
            as_expected += usize::from(black_box(broker.publish(event)).is_ok() == accepted);
        }
        let time = start.elapsed();
        assert_eq!(as_expected, batch);
        (time, batch)
    }

    /// One publish with `watchers` subscriptions parked on it, each with a
    /// waker of its own (untimed: each reads the event and parks again
    /// before the next sample). Also times waking as many wakers, which
    /// publish does after unlocking.
    fn publish_parked(watchers: usize) -> (Ns, Ns) {
        let broker = full_broker();
        let mut subs = subscribe(&broker, watchers);
        let wakers: Vec<Waker> = (0..watchers).map(|_| noop_waker()).collect();
        let samples = if watchers >= CONNECTIONS {
            SAMPLES
        } else {
            101
        };
        let mut published = 0u64;
        let publish = measure(samples, || {
            for (sub, waker) in subs.iter_mut().zip(&wakers) {
                let mut cx = Context::from_waker(waker);
                let mut got = 0;
                while let Poll::Ready(message) = sub.poll_recv(&mut cx) {
                    assert!(matches!(message, Some(Message::Event(_))));
                    got += 1;
                }
                assert_eq!(got, usize::from(published > 0));
            }
            let event = event();
            let start = Instant::now();
            black_box(broker.publish(event).unwrap());
            let time = start.elapsed();
            published += 1;
            (time, 1)
        });
        let wake = measure(SAMPLES, || {
            let clones: Vec<Waker> = wakers.clone();
            let start = Instant::now();
            for waker in clones {
                waker.wake();
            }
            (start.elapsed(), 1)
        });
        (publish, wake)
    }

    /// `try_next` that delivers one event, that finds nothing, the two in
    /// a row (what a woken stream does), and `poll_recv` finding nothing.
    fn reads() -> (Ns, Ns, Ns, Ns) {
        let broker = full_broker();
        let mut subs = subscribe(&broker, SUBSCRIBERS);
        let one = measure(SAMPLES, || {
            for _ in 0..READ_BACKLOG {
                broker.publish(event()).unwrap();
            }
            let start = Instant::now();
            let mut got = 0;
            for _ in 0..READ_BACKLOG {
                for sub in subs.iter_mut() {
                    if let Some(Message::Event(event)) = sub.try_next() {
                        black_box(&event);
                        got += 1;
                    }
                }
            }
            let time = start.elapsed();
            assert_eq!(got, READ_BACKLOG * SUBSCRIBERS);
            (time, got)
        });
        const PASSES: usize = 10;
        let empty = measure(SAMPLES, || {
            let start = Instant::now();
            let mut nothing = 0;
            for _ in 0..PASSES {
                for sub in subs.iter_mut() {
                    nothing += usize::from(black_box(sub.try_next()).is_none());
                }
            }
            let time = start.elapsed();
            assert_eq!(nothing, PASSES * SUBSCRIBERS);
            (time, nothing)
        });
        let one_then_empty = measure(SAMPLES, || {
            let mut time = Duration::ZERO;
            let mut got = 0;
            for _ in 0..PASSES {
                broker.publish(event()).unwrap();
                let start = Instant::now();
                for sub in subs.iter_mut() {
                    if let Some(Message::Event(event)) = sub.try_next() {
                        black_box(&event);
                        got += usize::from(sub.try_next().is_none());
                    }
                }
                time += start.elapsed();
            }
            assert_eq!(got, PASSES * SUBSCRIBERS);
            (time, got)
        });
        let wakers: Vec<Waker> = (0..SUBSCRIBERS).map(|_| noop_waker()).collect();
        let parked = measure(SAMPLES, || {
            let start = Instant::now();
            let mut pending = 0;
            for _ in 0..PASSES {
                for (sub, waker) in subs.iter_mut().zip(&wakers) {
                    let mut cx = Context::from_waker(waker);
                    pending += usize::from(sub.poll_recv(&mut cx).is_pending());
                }
            }
            let time = start.elapsed();
            assert_eq!(pending, PASSES * SUBSCRIBERS);
            (time, pending)
        });
        (one, empty, one_then_empty, parked)
    }

    type EventsBody = Pin<Box<ResponseBody<Empty<Bytes>>>>;

    /// The events route's read, which the public `Subscription` API does
    /// not offer: everything available in one lock, as one body frame.
    /// `SUBSCRIBERS` bodies of `SseLayer`, polled as a server would, with
    /// no runtime (so no ticker), no keep-alive and no coalescing.
    fn route_reads() -> (Vec<(usize, Ns)>, Ns) {
        let broker = full_broker();
        let mut service = SseLayer::new(broker.clone())
            .no_keep_alive()
            .coalesce(Duration::ZERO)
            .layer(tower::service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            }));
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut bodies: Vec<EventsBody> = (0..SUBSCRIBERS)
            .map(|_| {
                assert!(service.poll_ready(&mut cx).is_ready());
                let request = Request::get("/events").body(()).unwrap();
                let mut future = Box::pin(service.call(request));
                let Poll::Ready(Ok(response)) = future.as_mut().poll(&mut cx) else {
                    panic!("the events route answers at once");
                };
                assert_eq!(response.status(), 200);
                let mut body = Box::pin(response.into_body());
                // The `retry:` hint, then nothing yet.
                assert!(matches!(
                    body.as_mut().poll_frame(&mut cx),
                    Poll::Ready(Some(Ok(_)))
                ));
                assert!(body.as_mut().poll_frame(&mut cx).is_pending());
                body
            })
            .collect();
        // The route serves the default topic.
        let route_event = || Event::new("tick").data(PAYLOAD);
        let polls = BATCHES
            .iter()
            .map(|&batch| {
                let ns = measure(SAMPLES, || {
                    for _ in 0..batch {
                        broker.publish(route_event()).unwrap();
                    }
                    let mut frames = Vec::with_capacity(bodies.len());
                    let start = Instant::now();
                    for body in bodies.iter_mut() {
                        match body.as_mut().poll_frame(&mut cx) {
                            Poll::Ready(Some(Ok(frame))) => frames.push(frame),
                            _ => panic!("a stream had nothing to send"),
                        }
                    }
                    let time = start.elapsed();
                    for frame in frames {
                        let data = frame.into_data().expect("a data frame");
                        let events = data.windows(2).filter(|w| w == b"\n\n").count();
                        assert_eq!(events, batch);
                    }
                    (time, bodies.len())
                });
                (batch, ns)
            })
            .collect();
        const PASSES: usize = 10;
        let empty = measure(SAMPLES, || {
            let start = Instant::now();
            let mut pending = 0;
            for _ in 0..PASSES {
                for body in bodies.iter_mut() {
                    pending += usize::from(body.as_mut().poll_frame(&mut cx).is_pending());
                }
            }
            let time = start.elapsed();
            assert_eq!(pending, PASSES * bodies.len());
            (time, pending)
        });
        (polls, empty)
    }

    // ----------------------------------------------------------------------
    // Part 2: scaling with threads

    /// What one reader thread read.
    #[derive(Default)]
    struct Tally {
        delivered: u64,
        missed: u64,
    }

    struct ReaderOut {
        subs: Vec<Subscription>,
        tallies: Vec<Tally>,
        calls: u64,
        empties: u64,
        lag_reports: u64,
        elapsed: Duration,
        /// Stopped early: a whole pass found nothing (readers-only runs).
        dry: bool,
    }

    struct Run {
        name: String,
        publishers: usize,
        readers: usize,
        /// Per second, each thread's count over its own elapsed time, summed.
        publishes: f64,
        deliveries: f64,
        calls: f64,
        empties: f64,
        missed: f64,
        lag_reports: u64,
        dry: bool,
    }

    impl Run {
        fn lock_ops(&self) -> f64 {
            self.publishes + self.calls
        }

        fn json(&self) -> Value {
            json!({
                "name": self.name,
                "publishers": self.publishers,
                "readers": self.readers,
                "publishes_per_s": self.publishes.round(),
                "deliveries_per_s": self.deliveries.round(),
                "deliveries_per_s_per_reader": (self.deliveries / self.readers.max(1) as f64).round(),
                "try_next_per_s": self.calls.round(),
                "empty_try_next_per_s": self.empties.round(),
                "missed_per_s": self.missed.round(),
                "lag_reports": self.lag_reports,
                "lock_ops_per_s": self.lock_ops().round(),
                "wall_ns_per_lock_op": round(1e9 / self.lock_ops()),
                "ran_dry": self.dry,
            })
        }
    }

    /// Reads `subs` round-robin, one `try_next` per subscription per pass
    /// (one event, or the empty poll), until `stop`; with `until_dry`,
    /// also once a whole pass found nothing.
    fn read_loop(
        mut subs: Vec<Subscription>,
        stop: &AtomicBool,
        barrier: &Barrier,
        until_dry: bool,
    ) -> ReaderOut {
        let mut tallies: Vec<Tally> = subs.iter().map(|_| Tally::default()).collect();
        let (mut calls, mut empties, mut lag_reports) = (0, 0, 0);
        let mut dry = false;
        barrier.wait();
        let start = Instant::now();
        loop {
            let mut delivered = 0;
            for (sub, tally) in subs.iter_mut().zip(tallies.iter_mut()) {
                match sub.try_next() {
                    Some(Message::Event(event)) => {
                        black_box(&event);
                        tally.delivered += 1;
                        delivered += 1;
                    }
                    Some(Message::Lagged { missed, .. }) => {
                        tally.missed += missed;
                        lag_reports += 1;
                    }
                    Some(Message::Resync { reason, .. }) => panic!("unexpected resync: {reason:?}"),
                    None => empties += 1,
                }
            }
            calls += subs.len() as u64;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if until_dry && delivered == 0 {
                dry = true;
                break;
            }
        }
        ReaderOut {
            subs,
            tallies,
            calls,
            empties,
            lag_reports,
            elapsed: start.elapsed(),
            dry,
        }
    }

    /// `subs` dealt into `groups` vectors of nearly equal size.
    fn split(subs: Vec<Subscription>, groups: usize) -> Vec<Vec<Subscription>> {
        let mut out: Vec<Vec<Subscription>> = (0..groups).map(|_| Vec::new()).collect();
        for (i, sub) in subs.into_iter().enumerate() {
            out[i % groups].push(sub);
        }
        out
    }

    /// Runs `publishers` threads publishing to the topic as fast as they
    /// can and `readers` threads reading `SUBSCRIBERS` subscriptions of it
    /// (held idle, never read, when there are no readers), for `secs`.
    /// Readers-only (`publishers == 0`) read a log of `PREFILL` events
    /// published before.
    fn run(name: &str, publishers: usize, readers: usize, secs: f64) -> Run {
        let replay = publishers == 0;
        let broker = if replay {
            Broker::builder()
                .retain_events(PREFILL)
                .retain_bytes(usize::MAX)
                .retain_forever()
                .build()
        } else {
            full_broker()
        };
        let subs = subscribe(&broker, SUBSCRIBERS);
        let base = broker.last_event_id().seq();
        if replay {
            for _ in 0..PREFILL {
                broker.publish(event()).unwrap();
            }
        }
        let (groups, idle) = if readers == 0 {
            (Vec::new(), subs)
        } else {
            (split(subs, readers), Vec::new())
        };
        let stop = AtomicBool::new(false);
        let barrier = Barrier::new(publishers + readers + 1);
        let (published, outs) = thread::scope(|s| {
            let pubs: Vec<_> = (0..publishers)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let start = Instant::now();
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            broker.publish(event()).unwrap();
                            n += 1;
                        }
                        (n, start.elapsed())
                    })
                })
                .collect();
            let reads: Vec<_> = groups
                .into_iter()
                .map(|subs| {
                    let (stop, barrier) = (&stop, &barrier);
                    s.spawn(move || read_loop(subs, stop, barrier, replay))
                })
                .collect();
            barrier.wait();
            // The run's wall time: the threads work meanwhile, nothing is
            // waited for.
            thread::sleep(Duration::from_secs_f64(secs));
            stop.store(true, Ordering::Relaxed);
            let published: Vec<(u64, Duration)> =
                pubs.into_iter().map(|t| t.join().unwrap()).collect();
            let outs: Vec<ReaderOut> = reads.into_iter().map(|t| t.join().unwrap()).collect();
            (published, outs)
        });

        let total: u64 = published.iter().map(|(n, _)| n).sum();
        let rate = |n: u64, t: Duration| n as f64 / t.as_secs_f64();
        let mut result = Run {
            name: name.to_owned(),
            publishers,
            readers,
            publishes: published.iter().fold(0.0, |sum, &(n, t)| sum + rate(n, t)),
            deliveries: 0.0,
            calls: 0.0,
            empties: 0.0,
            missed: 0.0,
            lag_reports: 0,
            dry: false,
        };
        let mut all = Vec::new();
        for out in outs {
            let delivered = out.tallies.iter().map(|t| t.delivered).sum();
            let missed = out.tallies.iter().map(|t| t.missed).sum();
            result.deliveries += rate(delivered, out.elapsed);
            result.missed += rate(missed, out.elapsed);
            result.calls += rate(out.calls, out.elapsed);
            result.empties += rate(out.empties, out.elapsed);
            result.lag_reports += out.lag_reports;
            result.dry |= out.dry;
            all.extend(out.subs.into_iter().zip(out.tallies));
        }
        all.extend(idle.into_iter().map(|sub| (sub, Tally::default())));

        // Nothing lost silently. Readers-only: what each read is exactly
        // the events up to its position (one topic: consecutive seqs).
        // Otherwise: once drained, each got every event published during
        // the run or was told exactly how many it missed.
        for (mut sub, mut tally) in all {
            if replay {
                assert_eq!(sub.position().seq(), base + tally.delivered);
                continue;
            }
            while let Some(message) = sub.try_next() {
                match message {
                    Message::Event(_) => tally.delivered += 1,
                    Message::Lagged { missed, .. } => tally.missed += missed,
                    Message::Resync { reason, .. } => panic!("unexpected resync: {reason:?}"),
                }
            }
            assert_eq!(tally.delivered + tally.missed, total);
        }
        result
    }

    fn scaling(cores: usize, secs: f64) -> Vec<Run> {
        println!();
        println!("== 2. Scaling with threads: {secs:.1} s per run, {SUBSCRIBERS} subscriptions ==");
        println!(
            "publishers publish to one topic as fast as they can (log full: each evicts one); \
             readers split the {SUBSCRIBERS}"
        );
        println!(
            "subscriptions and call try_next once per subscription per pass; with no readers \
             they stay registered, unread."
        );
        println!(
            "readers-only runs read a log of {PREFILL} events published before. Rates are \
             per second; 'wall/lock op'"
        );
        println!(
            "is 1 s / (publishes + try_next calls per second): the lock's time per operation \
             if it was the bottleneck."
        );
        let mut configs = vec![(1, 0)];
        if cores > 1 {
            configs.push((cores, 0));
        }
        configs.push((1, 1));
        if cores > 2 {
            configs.push((1, cores - 1));
        }
        configs.push((0, 1));
        if cores > 1 {
            configs.push((0, cores));
        }
        println!(
            "  {:<22} {:>12} {:>12} {:>12} {:>12} {:>12} {:>10}",
            "run", "publishes", "deliveries", "per reader", "try_next", "missed", "wall/lock op"
        );
        configs
            .into_iter()
            .map(|(p, r)| {
                let name = if p == 0 {
                    format!("readers only, R={r}")
                } else {
                    format!("P={p} R={r}")
                };
                let run = run(&name, p, r, secs);
                println!(
                    "  {:<22} {:>12.0} {:>12.0} {:>12.0} {:>12.0} {:>12.0} {:>9.1}ns{}",
                    run.name,
                    run.publishes,
                    run.deliveries,
                    run.deliveries / r.max(1) as f64,
                    run.calls,
                    run.missed,
                    1e9 / run.lock_ops(),
                    if run.dry { " (ran dry)" } else { "" }
                );
                run
            })
            .collect()
    }

    // ----------------------------------------------------------------------
    // Part 3: the model

    /// One way of reading in the model: the lock time per delivery, and
    /// how many events one write carries.
    struct Reading {
        label: String,
        per_write: usize,
        lock_ns: f64,
    }

    fn model(holds: &Holds, runs: &[Run], write_us: f64) -> Value {
        let c = CONNECTIONS as f64;
        let publish_row = holds.publish_with(CONNECTIONS, true);
        let publish = publish_row.ns.median;
        let publish_inside = holds.inside(publish_row);
        // Per delivery, the read of the event and the empty read after it;
        // a batch of k shares one of each among its k events.
        let mut readings = vec![Reading {
            label: "try_next".into(),
            per_write: 1,
            lock_ns: holds.read_one.median + holds.read_empty.median,
        }];
        for k in BATCHES {
            readings.push(Reading {
                label: format!("route {k}/lock"),
                per_write: k,
                lock_ns: (holds.route(k).median + holds.route_empty.median) / k as f64,
            });
        }
        println!();
        println!("== 3. Lock utilisation model: {CONNECTIONS} connections on one topic ==");
        println!(
            "busy = (events/s x publish hold + deliveries/s x lock per delivery) / 1 s, with the \
             single-thread upper bounds above;"
        );
        println!(
            "publish hold with {CONNECTIONS} parked watchers: {publish:.0} ns (inside the lock \
             est. {publish_inside:.0} ns)."
        );
        println!("lock per delivery (the read, and the empty read after it, shared by a batch):");
        println!(
            "  try_next:       {:.1} + {:.1} = {:.1} ns",
            holds.read_one.median, holds.read_empty.median, readings[0].lock_ns
        );
        for (k, reading) in BATCHES.iter().zip(&readings[1..]) {
            println!(
                "  route {k:>2}/lock: ({:.1} + {:.1}) / {k} = {:.1} ns",
                holds.route(*k).median,
                holds.route_empty.median,
                reading.lock_ns
            );
        }
        let busy =
            |rate: f64, reading: &Reading| (rate * publish + rate * c * reading.lock_ns) / 1e9;
        // Cores the kernel's writes take: one write per batch.
        let cores_for = |deliveries: f64, reading: &Reading| {
            deliveries / reading.per_write as f64 * write_us / 1e6
        };
        print!("  {:>8} {:>12}", "events/s", "deliveries/s");
        for reading in &readings {
            print!(" {:>15}", format!("busy {}", reading.label));
        }
        println!(" {:>14}", "cores to write");
        let mut rates = Vec::new();
        for rate in [1.0, 10.0, 100.0] {
            let deliveries = rate * c;
            print!("  {rate:>8} {deliveries:>12.0}");
            for reading in &readings {
                print!(" {:>14.1}%", busy(rate, reading) * 100.0);
            }
            println!(" {:>14.1}", cores_for(deliveries, &readings[0]));
            rates.push(json!({
                "events_per_s": rate,
                "deliveries_per_s": deliveries,
                "busy": readings.iter().map(|r| json!({
                    "reading": r.label,
                    "fraction": busy(rate, r),
                })).collect::<Vec<_>>(),
                "cores_for_writes_one_per_delivery": cores_for(deliveries, &readings[0]),
            }));
        }
        // Part 2's readers-only runs: how much longer a lock operation took
        // with every thread contending than with one.
        let single = runs.iter().find(|r| r.publishers == 0 && r.readers == 1);
        let most = runs
            .iter()
            .filter(|r| r.publishers == 0)
            .max_by_key(|r| r.readers);
        let contention = match (single, most) {
            (Some(single), Some(most)) if most.readers > 1 => {
                let factor = single.calls / most.calls;
                println!(
                    "part 2, readers only: 1 thread {:.0} try_next/s ({:.1} ns each), {} threads \
                     {:.0}/s in all ({:.1} ns of wall each): x{factor:.2} per lock op contended",
                    single.calls,
                    1e9 / single.calls,
                    most.readers,
                    most.calls,
                    1e9 / most.calls
                );
                Some((most.readers, factor))
            }
            _ => None,
        };
        println!(
            "lock 100% busy at (one {write_us} µs write per batch; 'cores' = what the writes \
             need at that rate):"
        );
        let mut saturation = Vec::new();
        for reading in &readings {
            let events = 1e9 / (publish + c * reading.lock_ns);
            let deliveries = events * c;
            let cores = cores_for(deliveries, reading);
            let verdict = |machine: f64| {
                if machine > cores {
                    format!("{machine:.0} cores: lock first")
                } else {
                    let share = machine / cores * 100.0;
                    format!("{machine:.0} cores: writes first (lock {share:.0}% busy)")
                }
            };
            print!(
                "  {:<14} {events:>7.1} events/s = {deliveries:>10.0} deliveries/s, {cores:>5.1} \
                 cores; {}; {}",
                reading.label,
                verdict(16.0),
                verdict(64.0)
            );
            let contended = contention.map(|(threads, factor)| {
                let deliveries = deliveries / factor;
                print!("; x{factor:.2} contended ({threads} threads): {deliveries:.0}/s");
                deliveries
            });
            println!();
            saturation.push(json!({
                "reading": reading.label,
                "events_per_write": reading.per_write,
                "lock_ns_per_delivery": round(reading.lock_ns),
                "events_per_s": events,
                "deliveries_per_s": deliveries,
                "cores_for_writes": cores,
                "deliveries_per_s_contended": contended,
            }));
        }
        json!({
            "connections": CONNECTIONS,
            "publish_hold_ns": round(publish),
            "publish_inside_lock_estimate_ns": round(publish_inside),
            "contention_factor": contention.map(|(_, factor)| factor),
            "rates": rates,
            "saturation": saturation,
        })
    }
}
