use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tower_layer::Layer;

use super::authorize::{public_only, Authorize};
use super::load::LoadMeter;
use super::service::Sse;
use crate::broker::{Broker, WeakBroker};
use crate::mailbox::Mailbox;

/// Default `retry:` hint sent on connect: how long a browser waits before
/// reconnecting after the stream ends.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(3);
/// Default `retry:` hint for a connection refused over the limit or during
/// shutdown.
pub const DEFAULT_BUSY_RETRY: Duration = Duration::from_secs(30);
/// Default longest silence on an idle stream before a keep-alive comment.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Default coalescing window: while the runtime is busy, a stream that
/// wrote waits this long for more events before it is woken again.
pub const DEFAULT_COALESCE: Duration = Duration::from_millis(20);
/// Default most topics one connection may watch.
pub const DEFAULT_MAX_TOPICS: usize = 32;
/// Default most bytes written to a connection in one body frame when it
/// has a backlog.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 64 * 1024;

/// Serves the events route from a [`Broker`] and passes every other request
/// to the wrapped service.
///
/// `GET` on the path (default `/events`) answers `200 text/event-stream`:
/// a `retry:` hint, then what the client missed since its
/// `Last-Event-ID` header or `lastEventId` query parameter (the header wins),
/// then live events, with a keep-alive comment when idle. See the
/// [module docs](crate::sse) for every answer it gives and why.
///
/// ```
/// use std::time::Duration;
/// use tower_sse::{Broker, SseLayer};
///
/// let layer = SseLayer::new(Broker::new())
///     .path("/api/events")
///     .authorize(tower_sse::sse::any_topic)
///     .retry(Duration::from_secs(2))
///     .max_connections(10_000);
/// ```
#[derive(Clone)]
#[must_use]
pub struct SseLayer {
    pub(crate) config: Config,
}

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) broker: Broker,
    pub(crate) path: Arc<str>,
    pub(crate) authorizer: Arc<dyn Authorize>,
    pub(crate) retry: Duration,
    pub(crate) busy_retry: Duration,
    pub(crate) keep_alive: Option<Duration>,
    pub(crate) coalesce: Option<Coalesce>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_topics: usize,
    pub(crate) max_batch_bytes: usize,
    pub(crate) mailbox: Option<Mailbox>,
    pub(crate) runtime: Arc<Runtime>,
}

/// How streams coalesce their writes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Coalesce {
    pub(crate) window: Duration,
    /// Whatever the load, rather than only while the runtime is busy.
    pub(crate) always: bool,
}

impl Coalesce {
    /// `None` for a zero window: no coalescing at all.
    fn new(window: Duration, always: bool) -> Option<Self> {
        (!window.is_zero()).then_some(Self { window, always })
    }
}

/// State shared by every service made from one layer.
#[derive(Default)]
pub(crate) struct Runtime {
    pub(crate) connections: AtomicUsize,
    /// Bytes of the frames the streams last handed to their servers: what
    /// the servers are writing (see [`SseLayer::in_flight_bytes`]).
    pub(crate) in_flight: AtomicUsize,
    /// The ticker found the runtime busy: streams coalesce their writes.
    pub(crate) busy: AtomicBool,
    /// Writes made while coalescing, and the frames they carried, since
    /// the ticker last looked: how much coalescing is saving.
    coalesced_writes: AtomicUsize,
    coalesced_frames: AtomicUsize,
    ticker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl SseLayer {
    /// Serves `broker`'s events at `/events`, to the default topic only
    /// (see [`authorize`](SseLayer::authorize)).
    pub fn new(broker: Broker) -> Self {
        Self {
            config: Config {
                broker,
                path: Arc::from("/events"),
                authorizer: Arc::new(public_only),
                retry: DEFAULT_RETRY,
                busy_retry: DEFAULT_BUSY_RETRY,
                keep_alive: Some(DEFAULT_KEEP_ALIVE),
                coalesce: Coalesce::new(DEFAULT_COALESCE, false),
                max_connections: None,
                max_topics: DEFAULT_MAX_TOPICS,
                max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
                mailbox: None,
                runtime: Arc::default(),
            },
        }
    }

    /// Serves the route at `path` (exact match) instead of `/events`.
    pub fn path(mut self, path: impl AsRef<str>) -> Self {
        self.config.path = Arc::from(path.as_ref());
        self
    }

    /// Decides each connection's topics with `authorizer` (default:
    /// [`public_only`](crate::sse::public_only)).
    pub fn authorize(mut self, authorizer: impl Authorize) -> Self {
        self.config.authorizer = Arc::new(authorizer);
        self
    }

    /// The reconnection delay hinted to clients with `retry:` (default 3 s).
    pub fn retry(mut self, delay: Duration) -> Self {
        self.config.retry = delay;
        self
    }

    /// The reconnection delay hinted to a client refused over the
    /// connection limit or while the broker is closed (default 30 s).
    pub fn busy_retry(mut self, delay: Duration) -> Self {
        self.config.busy_retry = delay;
        self
    }

    /// Sends a keep-alive comment on a stream that has been silent for
    /// about `interval` (default 15 s), so that proxies do not cut it and
    /// a vanished client is noticed when the write fails.
    pub fn keep_alive(mut self, interval: Duration) -> Self {
        self.config.keep_alive = Some(interval.max(Duration::from_millis(10)));
        self
    }

    /// Sends no keep-alive comments.
    pub fn no_keep_alive(mut self) -> Self {
        self.config.keep_alive = None;
        self
    }

    /// Coalesces writes while the runtime is busy: after a stream writes,
    /// events published within `window` do not wake it one by one but go
    /// out together when the window ends (default 20 ms).
    ///
    /// A fan-out spends most of its CPU in the kernel, one system call and
    /// one TCP segment per write; coalescing turns many small writes into
    /// fewer larger ones and can halve that. It costs latency, and only a
    /// stream receiving events faster than one per window pays it (at most
    /// `window` plus a quarter of it): the first event after a quiet spell
    /// still goes out at once. As that latency buys nothing while the
    /// runtime has time to spare, the layer's ticker samples how busy
    /// tokio's workers are (their own busy-time counters, averaged over
    /// about 100 ms), and streams coalesce once they are more than 75 %
    /// busy, until the load they would have without it falls under 60 %
    /// (the measured load times the events each write carried, so that
    /// coalescing that merges little stops even if a burst started it).
    /// Coalescing that has to start again soon after stopping stays on for
    /// a second, then twice as long at each further restart (up to 64 s),
    /// so a load that only coalescing keeps down does not make it switch
    /// back and forth, while a burst of work (clients connecting) does not
    /// hold it on. A runtime that keeps up thus writes every event at once;
    /// one that does not halves its writes or better.
    ///
    /// [`Duration::ZERO`] turns coalescing off; see
    /// [`coalesce_always`](SseLayer::coalesce_always) to coalesce whatever
    /// the load.
    pub fn coalesce(mut self, window: Duration) -> Self {
        self.config.coalesce = Coalesce::new(window, false);
        self
    }

    /// Coalesces writes within `window` whatever the load (see
    /// [`coalesce`](SseLayer::coalesce)): the least CPU per event, and a
    /// latency of up to `window` for streams that receive more than one
    /// event per window, even on an idle server.
    pub fn coalesce_always(mut self, window: Duration) -> Self {
        self.config.coalesce = Coalesce::new(window, true);
        self
    }

    /// Serves at most `n` streams at once from services made by this layer;
    /// past that a client gets a short `200` stream with a
    /// [`busy_retry`](SseLayer::busy_retry) hint (default: no limit).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = Some(n);
        self
    }

    /// Refuses, with 400, a grant of more than `n` topics (default 32).
    pub fn max_topics(mut self, n: usize) -> Self {
        self.config.max_topics = n.max(1);
        self
    }

    /// The most bytes in one body frame (default 64 KiB, at least 1 KiB): a
    /// backlog goes out in frames of up to this size, and an event larger
    /// than this goes out in slices of it, each copied, so that what a
    /// stalled reader's write holds is bounded by this, not by the largest
    /// event.
    pub fn max_batch_bytes(mut self, n: usize) -> Self {
        self.config.max_batch_bytes = n.max(1024);
        self
    }

    /// Delivers `mailbox`'s notifications on the streams of the client the
    /// authorizer names ([`Grant::client`](crate::Grant::client)): held ones
    /// first, then live.
    pub fn mailbox(mut self, mailbox: Mailbox) -> Self {
        self.config.mailbox = Some(mailbox);
        self
    }

    /// Streams served right now by services made from this layer.
    pub fn connections(&self) -> usize {
        self.config.runtime.connections.load(Ordering::Relaxed)
    }

    /// Bytes of the body frames that streams from this layer handed to
    /// their servers last: under [`tower_sse::serve`](crate::serve), which
    /// asks a stream for its next frame only once the previous one is
    /// written, exactly what the streams' writes hold now. Each is at most
    /// [`max_batch_bytes`](SseLayer::max_batch_bytes), however large the
    /// events: a larger one goes out in slices of that size, so that a
    /// reader that stops reading holds one slice, never a whole event the
    /// log has evicted since. (hyper queues up to 16 frames per
    /// connection; this counts the last of them.)
    pub fn in_flight_bytes(&self) -> usize {
        self.config.runtime.in_flight.load(Ordering::Relaxed)
    }

    /// Whether streams from this layer coalesce their writes right now:
    /// always with [`coalesce_always`](SseLayer::coalesce_always), never
    /// once coalescing is off, and otherwise while the runtime is busy (see
    /// [`coalesce`](SseLayer::coalesce)). Worth exporting next to
    /// [`connections`](SseLayer::connections): a server that coalesces most
    /// of the time is near the end of its CPU.
    pub fn is_coalescing(&self) -> bool {
        self.config
            .runtime
            .coalesce_window(self.config.coalesce)
            .is_some()
    }
}

impl Runtime {
    /// The window streams coalesce in right now, if any.
    pub(crate) fn coalesce_window(&self, coalesce: Option<Coalesce>) -> Option<Duration> {
        coalesce
            .filter(|c| c.always || self.busy.load(Ordering::Relaxed))
            .map(|c| c.window)
    }

    /// Counts a write of `frames` made in a window that the load opened
    /// (not one of [`SseLayer::coalesce_always`]).
    pub(crate) fn count_coalesced(&self, coalesce: Option<Coalesce>, frames: usize) {
        if coalesce.is_some_and(|c| !c.always) {
            self.coalesced_writes.fetch_add(1, Ordering::Relaxed);
            self.coalesced_frames.fetch_add(frames, Ordering::Relaxed);
        }
    }

    /// Frames per write since the last call (1 when nothing was written):
    /// about how many times as many writes streams would make without
    /// coalescing.
    fn take_coalescing_gain(&self) -> f64 {
        let writes = self.coalesced_writes.swap(0, Ordering::Relaxed);
        let frames = self.coalesced_frames.swap(0, Ordering::Relaxed);
        if writes == 0 {
            return 1.0;
        }
        (frames as f64 / writes as f64).max(1.0)
    }
}

impl Config {
    /// Makes sure one task ticks the broker for keep-alives. Started
    /// lazily, on the runtime of the first connection, and again if that
    /// runtime went away; it stops once the broker or the layer is gone.
    pub(crate) fn ensure_ticker(&self) {
        if self.keep_alive.is_none() && self.coalesce.is_none() {
            return;
        }
        let mut ticker = self
            .runtime
            .ticker
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if ticker.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let broker = self.broker.downgrade();
        let runtime = Arc::downgrade(&self.runtime);
        let busy_clock = match self.coalesce {
            Some(Coalesce { always: false, .. }) => {
                let clock = busy_clock(&handle);
                // Without the runtime's busy time, coalesce as before.
                self.runtime.busy.store(clock.is_none(), Ordering::Relaxed);
                clock
            }
            _ => None,
        };
        *ticker = Some(handle.spawn(tick(
            broker,
            runtime,
            self.keep_alive,
            self.coalesce,
            busy_clock,
        )));
    }
}

/// Reads how long the runtime's workers have spent running tasks so far,
/// on average: the ticker's measure of load (see [`LoadMeter`]).
type BusyClock = Box<dyn FnMut() -> Duration + Send>;

/// tokio's own per-worker busy time, where the platform has the 64-bit
/// atomics it needs.
fn busy_clock(handle: &tokio::runtime::Handle) -> Option<BusyClock> {
    #[cfg(target_has_atomic = "64")]
    {
        let metrics = handle.metrics();
        let workers = metrics.num_workers().max(1);
        let divisor = u32::try_from(workers).unwrap_or(u32::MAX);
        Some(Box::new(move || {
            (0..workers)
                .map(|worker| metrics.worker_total_busy_duration(worker))
                .sum::<Duration>()
                / divisor
        }))
    }
    #[cfg(not(target_has_atomic = "64"))]
    {
        let _ = handle;
        None
    }
}

/// The one timer of all the streams of a layer.
///
/// Keep-alive: ticks at half the interval; a stream sends a keep-alive at a
/// tick when it sent nothing since the previous one, so no stream stays
/// silent longer than about `interval`, and an idle one is woken once per
/// `interval`. Coalescing: while any window is open, ends those that are
/// over every quarter window; while none is, sleeps until a stream opens
/// one, so an idle server is not woken 200 times a second for nothing.
/// Load (with a `busy_clock`): samples the runtime's busy time every 25 ms
/// while events are published and every 100 ms otherwise, and tells the
/// streams whether to coalesce (see [`LoadMeter`]).
async fn tick(
    broker: WeakBroker,
    runtime: Weak<Runtime>,
    keep_alive: Option<Duration>,
    coalesce: Option<Coalesce>,
    mut busy_clock: Option<BusyClock>,
) {
    use std::future::{poll_fn, Future};
    use std::task::Poll;
    use tokio::time::{sleep_until, Instant};

    /// How often the ticker looks whether its layer or broker is gone
    /// when nothing else wakes it.
    const LIVENESS: Duration = Duration::from_secs(1);
    /// How often the load is sampled while events are published.
    const SAMPLE: Duration = Duration::from_millis(25);
    /// How often it is sampled while none are, to notice that some are.
    const QUIET_SAMPLE: Duration = Duration::from_millis(100);

    let keep_alive_every = keep_alive.map(|interval| interval / 2);
    let release_every = coalesce.map(|c| (c.window / 4).max(Duration::from_millis(1)));
    if keep_alive_every.is_none() && release_every.is_none() {
        return;
    }
    let mut meter = LoadMeter::default();
    let mut sampled = busy_clock.as_mut().map(|clock| (Instant::now(), clock()));
    let mut published = None;
    let mut next_sample = sampled.map(|(at, _)| at + QUIET_SAMPLE);
    let mut next_keep_alive = keep_alive_every.map(|every| Instant::now() + every);
    // `Some` while a coalescing window is open.
    let mut next_release: Option<Instant> = None;
    loop {
        let wake_at = [
            next_keep_alive,
            next_release,
            next_sample,
            Some(Instant::now() + LIVENESS),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(|| Instant::now() + LIVENESS);
        let mut sleep = std::pin::pin!(sleep_until(wake_at));
        // Waits for the time, or, while no window is open, for one to open.
        let watch_windows = next_release.is_none() && release_every.is_some();
        let window_opened = poll_fn(|cx| {
            if watch_windows {
                let opened = match broker.upgrade() {
                    Some(broker) => broker.poll_throttled(cx),
                    None => Poll::Ready(()),
                };
                if opened.is_ready() {
                    return Poll::Ready(true);
                }
            }
            sleep.as_mut().poll(cx).map(|()| false)
        })
        .await;
        let Some(runtime) = runtime.upgrade() else {
            return;
        };
        let Some(broker) = broker.upgrade().filter(|broker| !broker.is_closed()) else {
            return;
        };
        let now = Instant::now();
        if let (Some(clock), Some((at, busy))) = (busy_clock.as_mut(), sampled.as_mut()) {
            if next_sample.is_some_and(|due| due <= now) {
                let busy_now = clock();
                let coalescing = meter.sample(
                    busy_now.saturating_sub(*busy),
                    now.duration_since(*at),
                    runtime.take_coalescing_gain(),
                );
                if runtime.busy.swap(coalescing, Ordering::Relaxed) != coalescing {
                    tracing::debug!(coalescing, load = meter.load(), "write coalescing switched");
                }
                (*at, *busy) = (now, busy_now);
                let count = broker.published();
                let quiet = published.replace(count) == Some(count);
                next_sample = Some(now + if quiet { QUIET_SAMPLE } else { SAMPLE });
            }
        }
        if let Some(every) = release_every {
            if window_opened {
                next_release = Some(now + every);
            } else if next_release.is_some_and(|at| at <= now) {
                next_release = broker.release_throttled().then(|| now + every);
            }
        }
        if let (Some(at), Some(every)) = (next_keep_alive, keep_alive_every) {
            if at <= now {
                broker.tick();
                next_keep_alive = Some(now + every);
            }
        }
    }
}

impl<S> Layer<S> for SseLayer {
    type Service = Sse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Sse::new(inner, self.config.clone())
    }
}

impl fmt::Debug for SseLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseLayer")
            .field("path", &self.config.path)
            .field("retry", &self.config.retry)
            .field("keep_alive", &self.config.keep_alive)
            .field("coalesce", &self.config.coalesce)
            .field("max_connections", &self.config.max_connections)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use super::{tick, BusyClock, Coalesce, Runtime};
    use crate::broker::Frames;
    use crate::{Broker, Event, ManualClock, Topics};

    use crate::test_util::WakeCount as Count;

    /// Lets the ticker run after tokio's (paused) clock moved.
    async fn settle() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_ticker_parked_while_no_window_is_open_ends_the_next_one_on_time() {
        const WINDOW: Duration = Duration::from_millis(20);
        let clock = ManualClock::new();
        let broker = Broker::builder().clock(clock.clone()).build();
        let runtime = Arc::new(Runtime::default());
        let ticker = tokio::spawn(tick(
            broker.downgrade(),
            Arc::downgrade(&runtime),
            None,
            Some(Coalesce {
                window: WINDOW,
                always: true,
            }),
            None,
        ));
        let mut stream = broker
            .subscribe(&Topics::parse(["a"]).unwrap(), None)
            .unwrap();
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut poll =
            || stream.poll_frames(&mut Context::from_waker(&waker), 1 << 16, Some(WINDOW));

        // A long idle spell: no window is open, the ticker is parked.
        tokio::time::advance(Duration::from_secs(3600)).await;
        settle().await;

        // A write opens a window; a publish inside it waits for its end.
        broker
            .publish(Event::new("t").topic("a").data("1"))
            .unwrap();
        assert!(matches!(poll(), Poll::Ready(Frames::Data { .. })));
        assert!(poll().is_pending());
        settle().await;
        broker
            .publish(Event::new("t").topic("a").data("2"))
            .unwrap();
        assert_eq!(count.get(), 0, "woken inside its window");

        // The window ends; the ticker, woken when it opened, checks every
        // quarter window and wakes the stream within one such step rather
        // than at its one-second liveness check.
        clock.advance(WINDOW);
        tokio::time::advance(WINDOW / 4).await;
        settle().await;
        assert_eq!(count.get(), 1, "not woken when its window ended");
        assert!(matches!(poll(), Poll::Ready(Frames::Data { .. })));

        drop(stream);
        drop(broker);
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert!(ticker.is_finished(), "the ticker outlived its broker");
    }

    /// A ticker that measures load from `busy`, nanoseconds of busy time
    /// the test adds as it moves the (paused) clock.
    fn measuring_ticker(
        broker: &Broker,
        runtime: &Arc<Runtime>,
    ) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
        let busy = Arc::new(AtomicU64::new(0));
        let clock: BusyClock = {
            let busy = busy.clone();
            Box::new(move || Duration::from_nanos(busy.load(Ordering::Relaxed)))
        };
        let ticker = tokio::spawn(tick(
            broker.downgrade(),
            Arc::downgrade(runtime),
            None,
            Some(Coalesce {
                window: Duration::from_millis(20),
                always: false,
            }),
            Some(clock),
        ));
        (busy, ticker)
    }

    /// Runs the (paused) clock for `span` in 5 ms steps, the runtime busy
    /// `load` of each; returns when `runtime.busy` first equalled `until`,
    /// if it did. While coalescing, a write of `frames` is counted at
    /// each step.
    async fn run_at(
        (load, frames): (f64, usize),
        span: Duration,
        busy: &AtomicU64,
        runtime: &Runtime,
        until: bool,
    ) -> Option<Duration> {
        const STEP: Duration = Duration::from_millis(5);
        let coalesce = Coalesce::new(Duration::from_millis(20), false);
        let mut spent = Duration::ZERO;
        while spent < span {
            busy.fetch_add(STEP.mul_f64(load).as_nanos() as u64, Ordering::Relaxed);
            if runtime.coalesce_window(coalesce).is_some() {
                runtime.count_coalesced(coalesce, frames);
            }
            tokio::time::advance(STEP).await;
            settle().await;
            spent += STEP;
            if runtime.busy.load(Ordering::Relaxed) == until {
                return Some(spent);
            }
        }
        None
    }

    #[tokio::test(start_paused = true)]
    async fn streams_coalesce_only_while_the_runtime_is_busy() {
        let broker = Broker::new();
        let runtime = Arc::new(Runtime::default());
        let (busy, ticker) = measuring_ticker(&broker, &runtime);
        let second = Duration::from_secs(1);

        // Two-thirds busy, with events published: no reason to coalesce.
        for _ in 0..10 {
            broker.publish(Event::new("t").data("x")).unwrap();
            assert_eq!(
                run_at((0.66, 1), second / 10, &busy, &runtime, true).await,
                None
            );
        }
        // Flat out: it starts within a few tenths of a second.
        let took = run_at((1.0, 1), second, &busy, &runtime, true).await;
        assert!(took.is_some_and(|t| t <= second / 2), "{took:?}");
        // Half busy while streams write two frames a time: it stays on.
        for _ in 0..50 {
            broker.publish(Event::new("t").data("x")).unwrap();
            assert_eq!(
                run_at((0.5, 2), second / 10, &busy, &runtime, false).await,
                None
            );
        }
        // The same load, one frame a time: coalescing saves nothing, so it
        // stops.
        let took = run_at((0.5, 1), second, &busy, &runtime, false).await;
        assert!(took.is_some_and(|t| t <= second / 2), "{took:?}");
        // Flat out again, then idle: it stops, sampled at the quiet pace.
        let took = run_at((1.0, 1), 5 * second, &busy, &runtime, true).await;
        assert!(took.is_some(), "{took:?}");
        let took = run_at((0.0, 1), 5 * second, &busy, &runtime, false).await;
        assert!(took.is_some_and(|t| t <= 3 * second), "{took:?}");

        drop(broker);
        tokio::time::advance(2 * second).await;
        settle().await;
        assert!(ticker.is_finished(), "the ticker outlived its broker");
    }

    /// Polls `body` for its next data frame, giving up after `wait` of the
    /// (paused) clock.
    async fn next_data(
        body: &mut crate::ResponseBody<http_body_util::Empty<bytes::Bytes>>,
        wait: Duration,
    ) -> Option<String> {
        use http_body_util::BodyExt;
        loop {
            let frame = tokio::time::timeout(wait, body.frame()).await.ok()??.ok()?;
            if let Ok(data) = frame.into_data() {
                return Some(String::from_utf8_lossy(&data).into_owned());
            }
        }
    }

    /// Opens a stream through `layer`; returns its body after the `retry:`
    /// hint.
    async fn open(
        layer: &super::SseLayer,
    ) -> crate::ResponseBody<http_body_util::Empty<bytes::Bytes>> {
        use tower::{Layer, ServiceExt};
        let inner = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::new()))
        });
        let request = http::Request::get("/events")
            .header("accept", "text/event-stream")
            .body(())
            .unwrap();
        let response = layer.layer(inner).oneshot(request).await.unwrap();
        let mut body = response.into_body();
        let retry = next_data(&mut body, Duration::from_millis(1)).await;
        assert!(retry.is_some_and(|r| r.starts_with("retry:")));
        body
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_server_writes_every_event_at_once_unless_told_to_coalesce_always() {
        use http_body::Body;
        use std::pin::Pin;

        const WINDOW: Duration = Duration::from_millis(20);
        let clock = ManualClock::new();
        let broker = Broker::builder().clock(clock.clone()).build();
        let publish = |data: &'static str| broker.publish(Event::new("t").data(data)).unwrap();

        let adaptive = super::SseLayer::new(broker.clone()).coalesce(WINDOW);
        let always = super::SseLayer::new(broker.clone()).coalesce_always(WINDOW);
        let mut streams = [open(&adaptive).await, open(&always).await];
        settle().await; // the layers' tickers start
        assert!(!adaptive.is_coalescing() && always.is_coalescing());
        assert!(!super::SseLayer::new(broker.clone())
            .coalesce_always(Duration::ZERO)
            .is_coalescing());
        let counts = [Arc::new(Count::default()), Arc::new(Count::default())];
        let wakers = counts.each_ref().map(|count| Waker::from(count.clone()));

        // Polls stream `i` as a server does: once, then again only when woken.
        let mut poll = |i: usize| {
            let mut cx = Context::from_waker(&wakers[i]);
            match Pin::new(&mut streams[i]).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let data = frame.into_data().expect("a data frame");
                    Some(String::from_utf8_lossy(&data).into_owned())
                }
                Poll::Pending => None,
                other => panic!("stream ended: {other:?}"),
            }
        };
        publish("1");
        for i in 0..2 {
            assert!(poll(i).is_some_and(|f| f.contains("data: 1")));
            assert_eq!(poll(i), None);
        }

        // Within the window of the first write: the adaptive stream, on a
        // runtime with nothing else to do, is woken; the other waits.
        publish("2");
        assert_eq!((counts[0].get(), counts[1].get()), (1, 0));
        assert!(poll(0).is_some_and(|f| f.contains("data: 2")));
        settle().await; // the ticker sees the window open
        clock.advance(WINDOW);
        tokio::time::advance(WINDOW).await;
        settle().await;
        assert_eq!(counts[1].get(), 1, "not woken when its window ended");
        assert!(poll(1).is_some_and(|f| f.contains("data: 2")));
    }
}
