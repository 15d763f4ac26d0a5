//! One upstream subscription per topic: the broker's side of the hub.
//!
//! Some topics are fed from outside (a bus channel per room, say). The
//! broker keeps, under its one lock, a *slot* per fed topic that someone
//! watches or watched within the linger: how many subscriptions watch it,
//! and which driver owns it. A driver (the runtime's side, one task per
//! slot: `crate::upstream`) holds the upstream subscription and reads
//! the slot through a [`Link`], its handle on it.
//!
//! # The lock order
//!
//! There is one lock: the broker's. The slot table lives under it, next to
//! the registry of subscriptions, so counting a watcher is part of the same
//! critical section that registers or drops a subscription, and a driver's
//! event is committed under it only while the driver's slot is current. No
//! user code runs under it: the app's rule (which topics are fed) is asked
//! before the lock is taken, a new slot's driver is started after it is
//! released, and drivers open, poll and drop their upstreams outside it.
//!
//! # Why at most one upstream per topic
//!
//! A slot is made only when a fed topic has none, and then its driver is
//! started; the slot goes only when that driver, having dropped its
//! upstream, finds nobody watching ([`Links::release`]). So two drivers of
//! one topic never hold an upstream at the same time, whatever races a
//! reopen and a teardown. A driver that dies without releasing (its
//! runtime shut down) leaves the slot *orphaned*: still counting its
//! watchers, and given a new driver by the next one to watch it.

use std::collections::HashMap;
use std::task::Waker;

use super::event::{Event, Topic};
use super::prepared::Origin;
use super::state::State;
use super::{EventId, PublishError, Shared, Via};
use crate::sync::lock;
use crate::wire::{self, ResyncReason};

/// The runtime's side of the hub: which topics are fed, and starting a
/// slot's driver.
pub(crate) trait Opener: Send + Sync + 'static {
    /// Whether the upstream feeds `topic`. Asked outside the lock, once
    /// per topic of each subscribe.
    fn feeds(&self, broker: &super::Broker, topic: &Topic) -> bool;

    /// Starts the driver of a slot that has none, outside the lock. The
    /// driver owns the slot until [`Broker::link_release`](super::Broker::link_release)
    /// says it is gone, or gives it up with
    /// [`Broker::link_abandon`](super::Broker::link_abandon).
    fn start(&self, broker: &super::Broker, link: Link);
}

/// A driver's handle on its topic's slot. A link whose slot is gone,
/// orphaned, or given to another driver since is stale: its events are
/// refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) topic: Topic,
    generation: u64,
}

/// What a driver must do now, from [`Broker::link_status`](super::Broker::link_status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkStatus {
    /// Someone watches the topic: keep the upstream open (or open it).
    Watched,
    /// Nobody watches it since the `n`-th time its watchers fell to zero:
    /// once the linger has passed with the count unchanged, drop the
    /// upstream and release the slot.
    Idle(u64),
    /// The broker is closed, or the slot is not this driver's: drop the
    /// upstream and release.
    Closed,
}

#[derive(Debug)]
struct Slot {
    /// Which driver owns it; `None` while orphaned.
    generation: Option<u64>,
    watchers: usize,
    /// Times `watchers` fell to zero.
    idle: u64,
    /// The seq the slot was made at: nothing of the topic before it is
    /// known to be complete.
    since: u64,
    /// The driver holds an open upstream.
    up: bool,
    /// An outage was reported (a `resync` published) and the upstream has
    /// not been open again since.
    down: bool,
    waker: Option<Waker>,
}

/// The slots of the fed topics, and the hub's counters.
#[derive(Debug, Default)]
pub(crate) struct Links {
    slots: HashMap<Topic, Slot>,
    generations: u64,
    counters: HubStats,
}

/// Counters of a broker's upstreams, in [`BrokerStats::hub`](super::BrokerStats::hub).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct HubStats {
    /// Topics with an upstream now: watched, or left within the linger.
    pub upstreams: usize,
    /// Of those, how many hold an open upstream subscription.
    pub open: usize,
    /// Upstream subscriptions opened since the broker was built.
    pub opens: u64,
    /// Opens that failed or timed out, open upstreams that ended or
    /// failed, and drivers that could not run (no runtime).
    pub failures: u64,
    /// Events the upstreams delivered into the log.
    pub events: u64,
    /// Events the broker refused (too large, not UTF-8, a reserved type):
    /// each is reported to the topic's streams as a `resync`.
    pub refused: u64,
}

/// What joining fed topics asks of the caller once the lock is released.
#[derive(Debug, Default)]
pub(crate) struct Joined {
    /// Slots without a driver: start one for each.
    pub(crate) start: Vec<Link>,
    /// Drivers whose topic was idle: wake them, to open again if shut.
    pub(crate) wake: Vec<Waker>,
}

impl Links {
    /// A subscription starts watching `topic`, a fed topic. A topic
    /// without a slot gets one, starting at `mark()` (see
    /// [`since`](Links::since)); a slot without a driver gets a new one
    /// (its link in `joined.start`); an idle slot's driver is woken.
    /// Returns whether the slot is in an outage, which the new stream must
    /// be told of.
    pub(crate) fn watch(
        &mut self,
        topic: &Topic,
        mark: impl FnOnce() -> u64,
        joined: &mut Joined,
    ) -> bool {
        let slot = self.slots.entry(topic.clone()).or_insert_with(|| Slot {
            generation: None,
            watchers: 0,
            idle: 0,
            since: mark(),
            up: false,
            down: false,
            waker: None,
        });
        slot.watchers += 1;
        if slot.watchers == 1 {
            joined.wake.extend(slot.waker.take());
        }
        if slot.generation.is_none() {
            self.generations += 1;
            slot.generation = Some(self.generations);
            joined.start.push(Link {
                topic: topic.clone(),
                generation: self.generations,
            });
        }
        slot.down
    }

    /// A subscription that watched `topic` is dropped. The last one wakes
    /// the driver, which starts its linger; an orphaned slot, with no
    /// driver to linger, goes at once.
    pub(crate) fn unwatch(&mut self, topic: &Topic, wakers: &mut Vec<Waker>) {
        let Some(slot) = self.slots.get_mut(topic) else {
            // Gone with a closed broker.
            return;
        };
        debug_assert!(slot.watchers > 0);
        slot.watchers = slot.watchers.saturating_sub(1);
        if slot.watchers > 0 {
            return;
        }
        if slot.generation.is_none() {
            self.slots.remove(topic);
            return;
        }
        slot.idle += 1;
        wakers.extend(slot.waker.take());
    }

    /// Where `topic`'s slot starts, `0` if it has none: a client resuming
    /// from before it may have missed events the upstream was not there to
    /// take.
    pub(crate) fn since(&self, topic: &Topic) -> u64 {
        self.slots.get(topic).map_or(0, |slot| slot.since)
    }

    /// `link`'s slot, and the counters, if the link is current.
    fn slot(&mut self, link: &Link) -> Option<(&mut Slot, &mut HubStats)> {
        let slot = self
            .slots
            .get_mut(&link.topic)
            .filter(|slot| slot.generation == Some(link.generation))?;
        Some((slot, &mut self.counters))
    }

    /// Whether `link` still owns its slot.
    pub(crate) fn is_current(&self, link: &Link) -> bool {
        self.slots
            .get(&link.topic)
            .is_some_and(|slot| slot.generation == Some(link.generation))
    }

    /// What the driver of `link` must do; `waker` is woken when that
    /// changes.
    pub(crate) fn status(
        &mut self,
        link: &Link,
        closed: bool,
        waker: Option<&Waker>,
    ) -> LinkStatus {
        let Some((slot, _)) = self.slot(link) else {
            return LinkStatus::Closed;
        };
        if let Some(waker) = waker {
            if !slot.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                slot.waker = Some(waker.clone());
            }
        }
        if closed {
            LinkStatus::Closed
        } else if slot.watchers > 0 {
            LinkStatus::Watched
        } else {
            LinkStatus::Idle(slot.idle)
        }
    }

    /// The driver of `link` dropped its upstream. Returns whether it is
    /// done: the slot is gone (nobody watches, or the broker is closed).
    /// Otherwise someone came back meanwhile: the driver opens again, and
    /// the topic's streams are owed a `resync` for the moment it was shut.
    pub(crate) fn release(&mut self, link: &Link, closed: bool) -> bool {
        let Some((slot, counters)) = self.slot(link) else {
            return true;
        };
        if std::mem::replace(&mut slot.up, false) {
            counters.open -= 1;
        }
        if slot.watchers > 0 && !closed {
            // Its upstream was closed for a moment: what the bus sent
            // meanwhile is lost, and the streams are told.
            slot.down = true;
            return false;
        }
        self.slots.remove(&link.topic);
        true
    }

    /// The driver of `link` stops without releasing (it could not run, or
    /// its runtime shut down): the slot is orphaned, keeping its count of
    /// watchers for the next driver, or goes if nobody watches.
    pub(crate) fn abandon(&mut self, link: &Link) {
        let Some((slot, counters)) = self.slot(link) else {
            return;
        };
        if std::mem::replace(&mut slot.up, false) {
            counters.open -= 1;
        }
        counters.failures += 1;
        slot.generation = None;
        slot.down = true;
        slot.waker = None;
        if slot.watchers == 0 {
            self.slots.remove(&link.topic);
        }
    }

    /// The driver of `link` opened its upstream. Returns `false` for a
    /// stale link.
    pub(crate) fn up(&mut self, link: &Link) -> bool {
        let Some((slot, counters)) = self.slot(link) else {
            return false;
        };
        if !std::mem::replace(&mut slot.up, true) {
            counters.open += 1;
        }
        slot.down = false;
        counters.opens += 1;
        true
    }

    /// The upstream of `link` failed to open, or failed or ended once
    /// open. Returns whether this starts an outage the topic's streams
    /// must be told of (the first failure since it was last open).
    pub(crate) fn down(&mut self, link: &Link) -> bool {
        let Some((slot, counters)) = self.slot(link) else {
            return false;
        };
        if std::mem::replace(&mut slot.up, false) {
            counters.open -= 1;
        }
        counters.failures += 1;
        !std::mem::replace(&mut slot.down, true)
    }

    /// Counts an upstream event taken into the log.
    pub(crate) fn count_event(&mut self) {
        self.counters.events += 1;
    }

    /// Counts an upstream event the broker refused, if `link` is current.
    pub(crate) fn count_refused(&mut self, link: &Link) {
        if let Some((_, counters)) = self.slot(link) {
            counters.refused += 1;
        }
    }

    /// Every driver's waker, for a closing broker.
    pub(crate) fn take_all_wakers(&mut self, out: &mut Vec<Waker>) {
        out.extend(self.slots.values_mut().filter_map(|slot| slot.waker.take()));
    }

    pub(crate) fn stats(&self) -> HubStats {
        HubStats {
            upstreams: self.slots.len(),
            ..self.counters
        }
    }
}

impl super::Broker {
    /// What the driver of `link` must do now; `waker` is woken when that
    /// changes.
    pub(crate) fn link_status(&self, link: &Link, waker: Option<&Waker>) -> LinkStatus {
        let mut state = lock(&self.shared.state);
        let closed = state.closed;
        state.links.status(link, closed, waker)
    }

    /// The driver of `link` opened its upstream. Returns `false` for a
    /// stale link, whose driver must drop it.
    pub(crate) fn link_up(&self, link: &Link) -> bool {
        lock(&self.shared.state).links.up(link)
    }

    /// Publishes an event of `link`'s upstream to its topic, whatever
    /// topic the event names. An event the broker refuses is reported to
    /// the topic's streams as a `resync` (they miss it); a stale link's
    /// is dropped ([`PublishError::Closed`]).
    pub(crate) fn link_publish(&self, link: &Link, event: Event) -> Result<EventId, PublishError> {
        let event = event.topic(link.topic.as_str());
        match self.prepare(event, Origin::App) {
            Ok(prepared) => self.commit(link.topic.clone(), prepared, Via::Upstream(link)),
            Err(error) => {
                lock(&self.shared.state).links.count_refused(link);
                self.link_resync(link);
                Err(error)
            }
        }
    }

    /// The upstream of `link` failed to open, or failed or ended once
    /// open: the first failure of an outage publishes a `resync` to the
    /// topic, at the place in its order where events may be missing.
    pub(crate) fn link_down(&self, link: &Link) {
        let outage = lock(&self.shared.state).links.down(link);
        if outage {
            self.link_resync(link);
        }
    }

    /// The driver of `link` dropped its upstream. Returns whether it is
    /// done; if not, someone came back meanwhile: it opens again, and the
    /// topic's streams get a `resync` for the moment it was shut.
    pub(crate) fn link_release(&self, link: &Link) -> bool {
        let done = {
            let mut state = lock(&self.shared.state);
            let closed = state.closed;
            state.links.release(link, closed)
        };
        if !done {
            self.link_resync(link);
        }
        done
    }

    /// The driver of `link` stops without releasing its slot: it could
    /// not be started (no runtime), or its runtime shut down under it. Its
    /// topic's streams are told, and the slot is orphaned: the next stream
    /// to watch the topic starts a new driver.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn link_abandon(&self, link: &Link) {
        self.link_resync(link);
        lock(&self.shared.state).links.abandon(link);
    }

    /// Publishes the crate's `resync` to `link`'s topic: events the
    /// upstream sent may be missing here.
    fn link_resync(&self, link: &Link) {
        let data = format!(r#"{{"reason":"{}"}}"#, ResyncReason::Upstream.as_str());
        let event = Event::new(wire::RESYNC_EVENT).data(data);
        if let Ok(prepared) = self.prepare(event, Origin::Crate) {
            // Refused only once the broker is closed or the link is stale,
            // when nobody is left to tell.
            let _ = self.commit(link.topic.clone(), prepared, Via::UpstreamResync(link));
        }
    }

    /// Counters of the upstreams, if the broker was built with a hub.
    pub(crate) fn hub_stats(state: &State, shared: &Shared) -> Option<HubStats> {
        shared.opener.as_ref().map(|_| state.links.stats())
    }
}
