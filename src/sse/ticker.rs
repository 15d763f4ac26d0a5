//! The one timer of all the streams of a layer.
//!
//! - Keep-alive: it ticks the broker at half the interval; a stream sends
//!   a keep-alive at a tick when it sent nothing since the previous one,
//!   so no stream stays silent longer than about the interval, and an idle
//!   one is woken once per interval. No timer per connection.
//! - Coalescing windows: while any is open, it ends those that are over
//!   every quarter window; while none is, it sleeps until a stream opens
//!   one, so an idle server is not woken 200 times a second for nothing.
//! - Load (with a busy clock): it samples the runtime's busy time and
//!   switches coalescing (see [`LoadSampler`]).

use std::future::{poll_fn, Future};
use std::sync::Weak;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::coalesce::{BusyClock, Coalesce, LoadSampler};
use super::streams::Streams;
use crate::broker::{Broker, WeakBroker};

/// How often the ticker looks whether its layer or broker is gone when
/// nothing else wakes it.
const LIVENESS: Duration = Duration::from_secs(1);

pub(crate) struct Ticker {
    broker: WeakBroker,
    streams: Weak<Streams>,
    /// Half the keep-alive interval.
    keep_alive_every: Option<Duration>,
    next_keep_alive: Option<Instant>,
    /// A quarter of the coalescing window.
    release_every: Option<Duration>,
    /// `Some` while a coalescing window is open: when to look again.
    next_release: Option<Instant>,
    load: Option<LoadSampler>,
}

impl Ticker {
    /// A ticker for the streams of one layer; `None` if it has nothing to do.
    pub(crate) fn new(
        broker: WeakBroker,
        streams: Weak<Streams>,
        keep_alive: Option<Duration>,
        coalesce: Option<Coalesce>,
        busy_clock: Option<BusyClock>,
    ) -> Option<Self> {
        let keep_alive_every = keep_alive.map(|interval| interval / 2);
        let release_every = coalesce.map(|c| (c.window / 4).max(Duration::from_millis(1)));
        if keep_alive_every.is_none() && release_every.is_none() {
            return None;
        }
        let now = Instant::now();
        Some(Self {
            broker,
            streams,
            keep_alive_every,
            next_keep_alive: keep_alive_every.map(|every| now + every),
            release_every,
            next_release: None,
            load: busy_clock.map(|clock| LoadSampler::new(clock, now)),
        })
    }

    /// Ticks until the layer or the broker is gone (or closed).
    pub(crate) async fn run(mut self) {
        loop {
            let window_opened = self.wait().await;
            let Some(streams) = self.streams.upgrade() else {
                return;
            };
            let Some(broker) = self.broker.upgrade().filter(|b| !b.is_closed()) else {
                return;
            };
            let now = Instant::now();
            if let Some(load) = &mut self.load {
                load.sample(now, &broker, &streams.coalescing);
            }
            self.end_windows(&broker, window_opened, now);
            self.keep_alive(&broker, now);
        }
    }

    /// Sleeps until the next thing is due or, while no coalescing window
    /// is open, until one opens; returns whether one did.
    fn wait(&self) -> impl Future<Output = bool> + Send + 'static {
        let wake_at = [
            self.next_keep_alive,
            self.next_release,
            self.load.as_ref().map(LoadSampler::due),
        ]
        .into_iter()
        .flatten()
        .chain(std::iter::once(Instant::now() + LIVENESS))
        .min()
        .expect("one at least");
        let watch_windows = self.next_release.is_none() && self.release_every.is_some();
        let broker = self.broker.clone();
        async move {
            let mut sleep = std::pin::pin!(sleep_until(wake_at));
            poll_fn(|cx| {
                if watch_windows {
                    let opened = match broker.upgrade() {
                        Some(broker) => broker.poll_coalescing(cx),
                        None => Poll::Ready(()),
                    };
                    if opened.is_ready() {
                        return Poll::Ready(true);
                    }
                }
                sleep.as_mut().poll(cx).map(|()| false)
            })
            .await
        }
    }

    /// Ends the coalescing windows that are over, looking again every
    /// quarter window while any is open.
    fn end_windows(&mut self, broker: &Broker, window_opened: bool, now: Instant) {
        let Some(every) = self.release_every else {
            return;
        };
        if window_opened {
            self.next_release = Some(now + every);
        } else if self.next_release.is_some_and(|at| at <= now) {
            self.next_release = broker.end_coalescing_windows().then(|| now + every);
        }
    }

    /// Marks a keep-alive period when one is due.
    fn keep_alive(&mut self, broker: &Broker, now: Instant) {
        if let (Some(at), Some(every)) = (self.next_keep_alive, self.keep_alive_every) {
            if at <= now {
                broker.tick();
                self.next_keep_alive = Some(now + every);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use super::Ticker;
    use crate::broker::Frames;
    use crate::sse::coalesce::{BusyClock, Coalesce};
    use crate::sse::streams::Streams;
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
        let streams = Arc::new(Streams::default());
        let ticker = tokio::spawn(
            Ticker::new(
                broker.downgrade(),
                Arc::downgrade(&streams),
                None,
                Some(Coalesce {
                    window: WINDOW,
                    always: true,
                }),
                None,
            )
            .expect("something to do")
            .run(),
        );
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
        streams: &Arc<Streams>,
    ) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
        let busy = Arc::new(AtomicU64::new(0));
        let clock: BusyClock = {
            let busy = busy.clone();
            Box::new(move || Duration::from_nanos(busy.load(Ordering::Relaxed)))
        };
        let ticker = tokio::spawn(
            Ticker::new(
                broker.downgrade(),
                Arc::downgrade(streams),
                None,
                Some(Coalesce {
                    window: Duration::from_millis(20),
                    always: false,
                }),
                Some(clock),
            )
            .expect("something to do")
            .run(),
        );
        (busy, ticker)
    }

    /// Runs the (paused) clock for `span` in 5 ms steps, the runtime busy
    /// `load` of each and `frames` written in each; returns when
    /// coalescing first was `until`, if it did.
    async fn run_at(
        (load, frames): (f64, usize),
        span: Duration,
        (busy, broker): (&AtomicU64, &Broker),
        streams: &Streams,
        until: bool,
    ) -> Option<Duration> {
        const STEP: Duration = Duration::from_millis(5);
        let mut spent = Duration::ZERO;
        while spent < span {
            busy.fetch_add(STEP.mul_f64(load).as_nanos() as u64, Ordering::Relaxed);
            broker.count_framed(frames as u64);
            tokio::time::advance(STEP).await;
            settle().await;
            spent += STEP;
            if streams.coalescing.is_on() == until {
                return Some(spent);
            }
        }
        None
    }

    #[tokio::test(start_paused = true)]
    async fn streams_coalesce_only_while_the_runtime_is_busy() {
        let broker = Broker::new();
        let streams = Arc::new(Streams::default());
        let (busy, ticker) = measuring_ticker(&broker, &streams);
        let second = Duration::from_secs(1);

        // Two-thirds busy, with events published: no reason to coalesce.
        // (A frame costs 33 us here: 100 in 5 ms make 0.66.)
        for _ in 0..10 {
            broker.publish(Event::new("t").data("x")).unwrap();
            assert_eq!(
                run_at((0.66, 100), second / 10, (&busy, &broker), &streams, true).await,
                None
            );
        }
        // Half as many events again: flat out, it starts within a few
        // tenths of a second.
        let took = run_at((1.0, 150), second, (&busy, &broker), &streams, true).await;
        assert!(took.is_some_and(|t| t <= second / 2), "{took:?}");
        // Coalescing halves the load; the frames would still saturate the
        // runtime written one by one: it stays on.
        for _ in 0..50 {
            broker.publish(Event::new("t").data("x")).unwrap();
            assert_eq!(
                run_at((0.5, 150), second / 10, (&busy, &broker), &streams, false).await,
                None
            );
        }
        // A third of the events: a third of a core written one by one, so
        // it stops.
        let took = run_at((0.2, 50), second, (&busy, &broker), &streams, false).await;
        assert!(took.is_some_and(|t| t <= second / 2), "{took:?}");
        // Flat out again, then idle: it stops, sampled at the quiet pace.
        let took = run_at((1.0, 150), 5 * second, (&busy, &broker), &streams, true).await;
        assert!(took.is_some(), "{took:?}");
        let took = run_at((0.0, 0), 5 * second, (&busy, &broker), &streams, false).await;
        assert!(took.is_some_and(|t| t <= 3 * second), "{took:?}");

        drop(broker);
        tokio::time::advance(2 * second).await;
        settle().await;
        assert!(ticker.is_finished(), "the ticker outlived its broker");
    }

    /// Polls `body` for its next data frame, giving up after `wait` of the
    /// (paused) clock.
    async fn next_data(
        body: &mut crate::sse::ResponseBody<http_body_util::Empty<bytes::Bytes>>,
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
        layer: &crate::SseLayer,
    ) -> crate::sse::ResponseBody<http_body_util::Empty<bytes::Bytes>> {
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

        let adaptive = crate::SseLayer::new(broker.clone()).coalesce(WINDOW);
        let always = crate::SseLayer::new(broker.clone()).coalesce_always(WINDOW);
        let mut streams = [open(&adaptive).await, open(&always).await];
        settle().await; // the layers' tickers start
        assert!(!adaptive.is_coalescing() && always.is_coalescing());
        assert!(!crate::SseLayer::new(broker.clone())
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
