//! The task that drives one topic's upstream: open it while the topic is
//! watched, publish what it yields, open it again after a failure, drop it
//! once the linger has passed with nobody watching.
//!
//! Everything it learns of the topic (watched, idle, closed) comes from
//! the broker's slot through its [`Link`]; it keeps no count of its own.
//! Its steps, in the order `poll` takes them:
//!
//! 1. The slot's status. Closed: drop the upstream, release, end. Idle
//!    since the n-th time the watchers fell to zero: run the linger for n
//!    (a newer n restarts it). Watched: no linger.
//! 2. The linger, once over: drop the upstream, then release the slot;
//!    if someone came back meanwhile, carry on (the broker has told the
//!    topic's streams of the moment it was shut).
//! 3. The upstream: open it if shut and watched (within the open
//!    timeout); wait out the back-off after a failure; publish up to a
//!    batch of its events, then yield.
//!
//! A panic in the app's `open` or stream is a failure like any other. A
//! driver dropped before it released its slot (its runtime shut down, or
//! never ran it) gives the slot up on its way out, so that its topic's
//! streams are told and the next stream of the topic starts a new driver.

use std::convert::Infallible;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio::time::{sleep, Instant, Sleep};

use super::Upstream;
use crate::broker::{Link, LinkStatus, PublishError, WeakBroker};

/// Events published in one poll before the driver lets other tasks run.
const BATCH: usize = 64;

/// What every driver of a hub shares.
pub(super) struct Shared<U> {
    pub(super) upstream: U,
    pub(super) linger: Duration,
    pub(super) retry_min: Duration,
    pub(super) retry_max: Duration,
    pub(super) open_timeout: Duration,
}

type Opening<U> =
    Pin<Box<dyn Future<Output = Result<<U as Upstream>::Stream, <U as Upstream>::Error>> + Send>>;

enum Phase<U: Upstream> {
    /// No upstream: open one when watched.
    Shut,
    /// Opening, until the deadline.
    Opening(Opening<U>, Pin<Box<Sleep>>),
    Open {
        stream: Pin<Box<U::Stream>>,
        since: Instant,
    },
    /// Pausing after a failure.
    Waiting(Pin<Box<Sleep>>),
}

/// The task of one slot; [`run`](Driver::run) it.
pub(super) struct Driver<U: Upstream> {
    shared: std::sync::Arc<Shared<U>>,
    broker: WeakBroker,
    link: Link,
    phase: Phase<U>,
    /// The linger running: for which idle count, and its timer.
    linger: Option<(u64, Pin<Box<Sleep>>)>,
    /// The next pause after a failure.
    pause: Duration,
    /// State of the jitter's generator.
    jitter: u64,
    /// The slot was released (or the broker is gone): nothing to give up.
    done: bool,
}

impl<U: Upstream> Driver<U> {
    pub(super) fn new(shared: std::sync::Arc<Shared<U>>, broker: WeakBroker, link: Link) -> Self {
        Self {
            pause: shared.retry_min,
            jitter: seed(&link),
            shared,
            broker,
            link,
            phase: Phase::Shut,
            linger: None,
            done: false,
        }
    }

    pub(super) fn topic(&self) -> &crate::Topic {
        &self.link.topic
    }

    /// Drives the upstream until the slot is released.
    pub(super) async fn run(mut self) {
        std::future::poll_fn(|cx| self.poll(cx)).await;
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Some(broker) = self.broker.upgrade() else {
                // Nobody holds the broker any more.
                self.done = true;
                return Poll::Ready(());
            };
            let watched = match broker.link_status(&self.link, Some(cx.waker())) {
                LinkStatus::Closed => {
                    self.phase = Phase::Shut;
                    broker.link_release(&self.link);
                    self.done = true;
                    return Poll::Ready(());
                }
                LinkStatus::Watched => {
                    self.linger = None;
                    true
                }
                LinkStatus::Idle(n) => {
                    if self.linger.as_ref().is_none_or(|(m, _)| *m != n) {
                        self.linger = Some((n, Box::pin(sleep(self.shared.linger))));
                    }
                    false
                }
            };
            if let Some((_, timer)) = &mut self.linger {
                if timer.as_mut().poll(cx).is_ready() {
                    self.linger = None;
                    // Dropped before the slot goes: a new driver of the
                    // topic starts only once this one holds nothing.
                    self.phase = Phase::Shut;
                    if broker.link_release(&self.link) {
                        self.done = true;
                        return Poll::Ready(());
                    }
                    continue;
                }
            }
            match &mut self.phase {
                Phase::Shut if watched => {
                    let upstream = &self.shared.upstream;
                    let topic = &self.link.topic;
                    match catch_unwind(AssertUnwindSafe(|| upstream.open(topic))) {
                        Ok(opening) => {
                            let deadline = Box::pin(sleep(self.shared.open_timeout));
                            self.phase = Phase::Opening(Box::pin(opening), deadline);
                        }
                        Err(_) => self.fail(&broker, "it panicked in open"),
                    }
                }
                Phase::Shut => return Poll::Pending,
                Phase::Opening(opening, deadline) => match unwound(|| opening.as_mut().poll(cx)) {
                    Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                        self.fail(&broker, "it did not open in time");
                    }
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(None)) => self.fail(&broker, "it panicked in open"),
                    Poll::Ready(Ok(stream)) => {
                        if broker.link_up(&self.link) {
                            self.phase = Phase::Open {
                                stream: Box::pin(stream),
                                since: Instant::now(),
                            };
                        } else {
                            self.phase = Phase::Shut;
                        }
                    }
                    Poll::Ready(Err(Some(error))) => {
                        self.fail(&broker, &format!("it failed to open: {error}"));
                    }
                },
                Phase::Waiting(timer) => match timer.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => self.phase = Phase::Shut,
                },
                Phase::Open { stream, since } => {
                    let since = *since;
                    let mut taken = 0;
                    let failure = loop {
                        if taken == BATCH {
                            // Let other tasks run; come back at once.
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                        match unwound(|| stream.as_mut().poll_next(cx).map(Ok::<_, Infallible>)) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Err(None)) => break Some("it panicked".to_owned()),
                            Poll::Ready(Err(Some(never))) => match never {},
                            Poll::Ready(Ok(Some(Ok(event)))) => {
                                taken += 1;
                                self.pause = self.shared.retry_min;
                                match broker.link_publish(&self.link, event) {
                                    Ok(_) => {}
                                    // Stale, or the broker closed: the
                                    // status says so on the next round.
                                    Err(PublishError::Closed) => break None,
                                    Err(error) => tracing::warn!(
                                        topic = %self.link.topic,
                                        %error,
                                        "an upstream event was refused; the topic's streams get a resync"
                                    ),
                                }
                            }
                            Poll::Ready(Ok(Some(Err(error)))) => break Some(error.to_string()),
                            Poll::Ready(Ok(None)) => break Some("it ended".to_owned()),
                        }
                    };
                    if let Some(error) = failure {
                        if since.elapsed() >= self.shared.retry_max {
                            // It held a long while: this is a new outage.
                            self.pause = self.shared.retry_min;
                        }
                        self.fail(&broker, &format!("it broke: {error}"));
                    }
                }
            }
        }
    }

    /// The upstream failed (`why`): drops it, tells the broker, and pauses
    /// before the next attempt.
    fn fail(&mut self, broker: &crate::Broker, why: &str) {
        tracing::warn!(topic = %self.link.topic, why, "the topic's upstream failed");
        self.phase = Phase::Shut;
        broker.link_down(&self.link);
        // xorshift64: a fifth either way, so that topics that failed
        // together spread out.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let unit = (self.jitter % 1001) as f64 / 1000.0;
        let pause = self.pause.mul_f64(0.8 + 0.4 * unit);
        self.pause = self.pause.saturating_mul(2).min(self.shared.retry_max);
        self.phase = Phase::Waiting(Box::pin(sleep(pause)));
    }
}

impl<U: Upstream> Drop for Driver<U> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Dropped before releasing: its runtime shut down, or never ran it.
        self.phase = Phase::Shut;
        if let Some(broker) = self.broker.upgrade() {
            broker.link_abandon(&self.link);
        }
    }
}

/// Polls with `poll`, turning a panic into `Err(None)`: the app's code
/// must not take the driver down with it.
fn unwound<T, E>(poll: impl FnOnce() -> Poll<Result<T, E>>) -> Poll<Result<T, Option<E>>> {
    match catch_unwind(AssertUnwindSafe(poll)) {
        Ok(Poll::Ready(result)) => Poll::Ready(result.map_err(Some)),
        Ok(Poll::Pending) => Poll::Pending,
        Err(_) => Poll::Ready(Err(None)),
    }
}

/// A nonzero seed that differs between topics.
fn seed(link: &Link) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(link.topic.as_str()) | 1
}
