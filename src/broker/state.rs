//! The log and the registry of subscribers, all behind one mutex.
//!
//! One lock, held briefly, is what makes the contract easy to keep: the id
//! of an event is assigned in the same critical section that makes it
//! visible, and a subscription takes its replay position in the same
//! critical section that registers it, so there is no seam where an event
//! could be seen twice or not at all.
//!
//! Layout: every retained event sits once in `log` (global order, used for
//! eviction) and once in its topic's `entries` (used for reading). Eviction
//! is strictly first-in first-out by sequence number, whatever bound
//! triggers it, so every retained event is newer than every evicted one;
//! the readers' lag accounting relies on that.

use std::collections::{HashMap, VecDeque};
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use slab::Slab;

use super::coalesce::Windows;
use super::event::Topic;
use super::hub::Links;
use crate::sync::Arc;

/// A published event as retained: immutable, shared by every reader.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) seq: u64,
    /// When it was published, in the log's time ([`log_time`]).
    pub(crate) at: Duration,
    pub(crate) topic_key: usize,
    pub(crate) topic: Topic,
    pub(crate) event_type: Option<Box<str>>,
    /// The payload: a slice of `frame` when it is a single line, else its own bytes.
    pub(crate) data: Bytes,
    pub(crate) frame: Bytes,
    /// Where the frame's `id:` line ends.
    pub(crate) id_line: usize,
    /// What the entry counts against the byte bound.
    pub(crate) cost: usize,
}

/// One topic's retained events and who watches it.
#[derive(Debug)]
pub(crate) struct TopicLog {
    pub(crate) name: Topic,
    pub(crate) entries: VecDeque<Arc<Entry>>,
    /// Ordinal (position in this topic's own history) of `entries[0]`,
    /// which is also how many of its events were evicted.
    pub(crate) evicted: u64,
    /// Highest sequence number evicted from this topic, 0 if none. A topic
    /// created after others were pruned starts at the highest seq any
    /// pruned topic evicted, since what it may have lost is unknown.
    pub(crate) last_evicted_seq: u64,
    pub(crate) published: u64,
    /// Keys into [`State::subs`] of the subscriptions watching this topic.
    pub(crate) watchers: Slab<usize>,
}

impl TopicLog {
    /// Ordinal the next published event of this topic will get.
    pub(crate) fn end(&self) -> u64 {
        self.evicted + self.entries.len() as u64
    }
}

/// A direct message waiting in a subscription's inbox: an event sent to
/// that subscription alone (or to the subscriptions of a topic at that
/// moment), never retained in the log. `key` names it for
/// [`State::retract`].
#[derive(Debug)]
pub(crate) struct Direct {
    pub(crate) key: u64,
    pub(crate) entry: Arc<Entry>,
}

/// A registered subscription, as the publisher sees it.
#[derive(Debug, Default)]
pub(crate) struct SubSlot {
    pub(crate) waker: Option<Waker>,
    /// Direct messages not yet read, in seq order.
    pub(crate) inbox: VecDeque<Direct>,
    /// The frame this subscription is handing out in slices, as `(seq,
    /// bytes handed out so far)`: a frame larger than a body frame goes out
    /// in copied slices, so that a stalled writer holds one slice, not a
    /// whole event that may have been evicted since.
    pub(crate) sending: Option<(u64, usize)>,
    /// Read as SSE frames, so it takes keep-alives.
    pub(crate) keeps_alive: bool,
    /// Wrote something since the last keep-alive tick; a new stream starts
    /// so, having just sent its response head.
    pub(crate) active: bool,
    /// A tick found it quiet: its next read sends a keep-alive.
    pub(crate) keep_alive_due: bool,
    /// Wrote within its coalescing window: publishes do not wake it until
    /// the window ends (see `coalesce::Windows`).
    pub(crate) in_window: bool,
    /// Something for it came during its window: wake it when the window ends.
    pub(crate) woken_in_window: bool,
    /// Ended by the broker before it shows anything more (see
    /// [`State::cut`]): its next read ends the stream, and nothing more is
    /// put in its inbox.
    pub(crate) cut: bool,
}

/// How far before the clock's origin a publish time can lie in the log's
/// time. A mirrored entry can be older than the broker that mirrors it (a
/// replica joining a stream takes its tail), and its age must count in
/// full: the bound on age is the same on every replica, however long each
/// has run. About 136 years.
const BEFORE_ORIGIN: Duration = Duration::from_secs(1 << 32);

/// The log's time of an entry published `age` before the clock read `now`:
/// the clock's reading moved on by [`BEFORE_ORIGIN`], so that no age short
/// of that is cut short.
pub(crate) fn log_time(now: Duration, age: Duration) -> Duration {
    now.saturating_add(BEFORE_ORIGIN).saturating_sub(age)
}

/// Retention limits, fixed at build time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_events: usize,
    pub(crate) max_bytes: usize,
    pub(crate) max_age: Option<Duration>,
}

#[derive(Debug)]
pub(crate) struct State {
    /// The first half of every id; fixed, unless a mirror resets it.
    pub(crate) epoch: u64,
    pub(crate) next_seq: u64,
    pub(crate) log: VecDeque<Arc<Entry>>,
    pub(crate) retained_bytes: usize,
    pub(crate) topics: Slab<TopicLog>,
    pub(crate) topic_index: HashMap<Topic, usize>,
    pub(crate) pruned_evicted_seq: u64,
    pub(crate) subs: Slab<SubSlot>,
    pub(crate) windows: Windows,
    pub(crate) closed: bool,
    pub(crate) close_frame: Option<Bytes>,
    /// Sent on every new stream of the events route where its replay ends
    /// (see `Broker::publish_system_greeting`), with the seq of the event
    /// it repeats.
    pub(crate) greeting: Option<Greeting>,
    /// Bytes of direct messages waiting in inboxes (each copy counted).
    pub(crate) direct_bytes: usize,
    /// A broker whose log mirrors a shared stream (see `mirror.rs`).
    pub(crate) mirror: Option<Mirror>,
    /// Lost stretches of the log, for readers made before them.
    pub(crate) breaks: Breaks,
    /// The fed topics' upstream slots (see `hub.rs`).
    pub(crate) links: Links,
    pub(crate) counters: Counters,
}

/// Where a mirrored log stands in its stream.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Mirror {
    /// The seq, in the stream, of the last entry mirrored (0: none yet).
    pub(crate) stream_seq: u64,
    /// The stream's last seq, as its reader last saw it.
    pub(crate) top: u64,
    /// Stream entries that could not be taken (they did not parse).
    pub(crate) skipped: u64,
    /// Times the reader lost the stream and found it again.
    pub(crate) reconnects: u64,
    /// Whether the mirror joined its stream ([`Broker::mirror_reset`]):
    /// from then on, an entry past the next one is after a hole, even the
    /// first. Before, a mirror starts wherever the entries fed to it do.
    ///
    /// [`Broker::mirror_reset`]: super::Broker::mirror_reset
    pub(crate) joined: bool,
}

/// What readers made before them cannot see in the log: the stretches of
/// a mirror that were lost (its reader fell behind what the stream trimmed)
/// and the resets to a new epoch (the stream lost its data). Both count
/// up; a reader remembers where they stood when it was made.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Breaks {
    /// Resets to a new epoch so far.
    pub(crate) resets: u64,
    /// Lost stretches so far, and the entries they held in all.
    pub(crate) gaps: u64,
    pub(crate) gap_missed: u64,
    /// The seq the last lost stretch ends at.
    pub(crate) gap_end: u64,
    /// The seq a reader resumes after when it resyncs for the last reset:
    /// the end of the backfill the new epoch started with.
    pub(crate) reset_seq: u64,
}

/// The latest system event that greets new streams: its frame without the
/// `id:` line, and the seq it was published with.
#[derive(Clone, Debug)]
pub(crate) struct Greeting {
    pub(crate) seq: u64,
    pub(crate) frame: Bytes,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    pub(crate) published: u64,
    /// Frames handed to streams of the events route, counted under the
    /// lock their read takes anyway (a counter shared by every write would
    /// be a cache line all cores fight over).
    pub(crate) framed: u64,
    pub(crate) evicted: u64,
    pub(crate) lagged_events: u64,
    pub(crate) lag_reports: u64,
    pub(crate) resyncs: u64,
    pub(crate) direct: u64,
    pub(crate) cut: u64,
}

impl SubSlot {
    /// Takes the waker to wake for something new to read, unless a
    /// coalescing window holds it until the window ends.
    fn take_waker(&mut self, out: &mut Vec<Waker>) {
        if self.in_window {
            self.woken_in_window = true;
        } else if let Some(waker) = self.waker.take() {
            out.push(waker);
        }
    }
}

impl State {
    pub(crate) fn new(epoch: u64) -> Self {
        Self {
            epoch,
            next_seq: 1,
            log: VecDeque::new(),
            retained_bytes: 0,
            topics: Slab::new(),
            topic_index: HashMap::new(),
            pruned_evicted_seq: 0,
            subs: Slab::new(),
            windows: Windows::default(),
            closed: false,
            close_frame: None,
            greeting: None,
            direct_bytes: 0,
            mirror: None,
            breaks: Breaks::default(),
            links: Links::default(),
            counters: Counters::default(),
        }
    }

    /// The next seq for an event of this broker's own, if it has one left:
    /// a mirror's own frames take the seqs between two of the stream's.
    pub(crate) fn take_seq(&mut self) -> Option<u64> {
        let seq = self.next_seq;
        if self.mirror.is_some() && seq & super::mirror::LOCAL_MASK == super::mirror::LOCAL_MASK {
            return None;
        }
        self.next_seq += 1;
        Some(seq)
    }

    /// The key of `topic`'s log, creating it if needed.
    pub(crate) fn topic_key(&mut self, topic: &Topic) -> usize {
        if let Some(&key) = self.topic_index.get(topic) {
            return key;
        }
        // A topic of direct messages only retains nothing, so it has lost
        // nothing to eviction, whatever other topics lost.
        let last_evicted_seq = if topic.is_direct_only() {
            0
        } else {
            self.pruned_evicted_seq
        };
        let key = self.topics.insert(TopicLog {
            name: topic.clone(),
            entries: VecDeque::new(),
            evicted: 0,
            last_evicted_seq,
            published: 0,
            watchers: Slab::new(),
        });
        self.topic_index.insert(topic.clone(), key);
        key
    }

    /// Forgets a topic that holds no events and has no watchers, so that
    /// short-lived topics (one per user, per request) do not pile up.
    pub(crate) fn prune_topic(&mut self, key: usize) {
        let topic = &self.topics[key];
        if topic.entries.is_empty() && topic.watchers.is_empty() {
            let topic = self.topics.remove(key);
            if !topic.name.is_direct_only() {
                self.pruned_evicted_seq = self.pruned_evicted_seq.max(topic.last_evicted_seq);
            }
            self.topic_index.remove(&topic.name);
        }
    }

    /// Appends `entry` to the log, then evicts down to the limits.
    pub(crate) fn append(&mut self, entry: Arc<Entry>, limits: &Limits, now: Duration) {
        self.retained_bytes += entry.cost;
        let topic = &mut self.topics[entry.topic_key];
        topic.published += 1;
        topic.entries.push_back(entry.clone());
        self.log.push_back(entry);
        self.counters.published += 1;
        self.evict(limits, now);
    }

    /// Evicts from the front until every bound holds.
    pub(crate) fn evict(&mut self, limits: &Limits, now: Duration) {
        // Published before this, it is older than the bound (0 if the bound
        // reaches back past the log's time: nothing is).
        let cutoff = limits.max_age.map(|age| log_time(now, age));
        while let Some(front) = self.log.front() {
            let over = self.log.len() > limits.max_events
                || self.retained_bytes > limits.max_bytes
                || cutoff.is_some_and(|cutoff| front.at < cutoff);
            if !over {
                break;
            }
            self.evict_front();
        }
    }

    /// Evicts the oldest entry.
    fn evict_front(&mut self) {
        let Some(entry) = self.log.pop_front() else {
            return;
        };
        self.retained_bytes -= entry.cost;
        self.counters.evicted += 1;
        let key = entry.topic_key;
        let topic = &mut self.topics[key];
        let popped = topic.entries.pop_front();
        debug_assert!(popped.is_some_and(|p| p.seq == entry.seq));
        topic.evicted += 1;
        topic.last_evicted_seq = entry.seq;
        self.prune_topic(key);
    }

    /// A stretch of a mirrored log was lost (its reader fell behind what
    /// the stream trimmed): `missed` entries, up to seq `through`.
    /// Everything retained before it is evicted too, so that a reader lags
    /// past all of it at once, ids increasing; no id before it is honoured
    /// any more; and every reader made before it is told (see `Breaks`).
    pub(crate) fn lose_stretch(&mut self, through: u64, missed: u64, out: &mut Vec<Waker>) {
        while !self.log.is_empty() {
            self.evict_front();
        }
        self.expire_through(through);
        self.breaks.gaps += 1;
        self.breaks.gap_missed += missed;
        self.breaks.gap_end = through;
        self.take_all_wakers(out);
    }

    /// No id before `through` is honoured any more: what came up to it is
    /// not in the log (lost, or never mirrored).
    pub(crate) fn expire_through(&mut self, through: u64) {
        for (_, topic) in self.topics.iter_mut() {
            if !topic.name.is_direct_only() {
                topic.last_evicted_seq = topic.last_evicted_seq.max(through);
            }
        }
        self.pruned_evicted_seq = self.pruned_evicted_seq.max(through);
    }

    /// A mirrored log starts again under a new epoch: everything of the
    /// log goes, and every reader made before resyncs (see `Breaks`). The
    /// mirror cuts the readers of direct messages ([`cut_direct_watchers`](
    /// State::cut_direct_watchers)): no id of the new epoch can stand for
    /// what they had unread.
    pub(crate) fn reset(&mut self, epoch: u64, out: &mut Vec<Waker>) {
        while !self.log.is_empty() {
            self.evict_front();
        }
        for (_, topic) in self.topics.iter_mut() {
            topic.last_evicted_seq = 0;
        }
        self.pruned_evicted_seq = 0;
        self.epoch = epoch;
        self.next_seq = 1;
        if let Some(greeting) = &mut self.greeting {
            // Its event is gone with the old epoch; it still says the state.
            greeting.seq = 0;
        }
        self.breaks.resets += 1;
        self.take_all_wakers(out);
    }

    /// A stream entry a mirror could not take.
    pub(crate) fn skip_mirrored(&mut self) {
        if let Some(mirror) = &mut self.mirror {
            mirror.skipped += 1;
        }
    }

    /// Takes the wakers of every subscription watching topic `key`.
    pub(crate) fn take_topic_wakers(&mut self, key: usize, out: &mut Vec<Waker>) {
        let topic = &self.topics[key];
        for (_, &sub) in topic.watchers.iter() {
            self.subs[sub].take_waker(out);
        }
    }

    /// Puts a direct message in the inbox of subscription `sub` and takes
    /// its waker.
    pub(crate) fn push_direct(
        &mut self,
        sub: usize,
        key: u64,
        entry: &Arc<Entry>,
        out: &mut Vec<Waker>,
    ) {
        let slot = &mut self.subs[sub];
        if slot.cut {
            return;
        }
        slot.inbox.push_back(Direct {
            key,
            entry: entry.clone(),
        });
        slot.take_waker(out);
        self.direct_bytes += entry.frame.len();
    }

    /// Ends subscription `sub` before it shows anything more: its inbox is
    /// emptied (what it held is freed at once, even for a reader that never
    /// reads again), nothing more goes in, and its next read ends the
    /// stream. Its client reconnects from the last id it read, so nothing
    /// it had not read counts as read.
    pub(crate) fn cut(&mut self, sub: usize, out: &mut Vec<Waker>) {
        let slot = &mut self.subs[sub];
        slot.cut = true;
        let freed: usize = slot.inbox.drain(..).map(|d| d.entry.frame.len()).sum();
        slot.take_waker(out);
        self.direct_bytes -= freed;
    }

    /// The subscriptions watching topic `key`.
    pub(crate) fn watchers(&self, key: usize) -> Vec<usize> {
        self.topics[key]
            .watchers
            .iter()
            .map(|(_, &sub)| sub)
            .collect()
    }

    /// Cuts every subscription watching a topic of direct messages: their
    /// stream lost direct messages it cannot be told of otherwise (a lost
    /// stretch, or a new epoch, of a mirrored stream that carries them).
    pub(crate) fn cut_direct_watchers(&mut self, out: &mut Vec<Waker>) {
        let direct: Vec<usize> = self
            .topics
            .iter()
            .filter(|(_, topic)| topic.name.is_direct_only())
            .map(|(key, _)| key)
            .collect();
        let watchers: Vec<usize> = direct
            .into_iter()
            .flat_map(|key| self.watchers(key))
            .collect();
        for sub in watchers {
            self.cut(sub, out);
        }
    }

    /// Removes the unread direct messages named `key` from the inboxes of
    /// the watchers of topic `topic`, except one being handed out in slices
    /// (it cannot be taken back halfway).
    pub(crate) fn retract(&mut self, topic: usize, key: u64) {
        let Some(log) = self.topics.get(topic) else {
            return;
        };
        let mut freed = 0;
        for (_, &sub) in log.watchers.iter() {
            let slot = &mut self.subs[sub];
            let sending = slot.sending.map(|(seq, _)| seq);
            slot.inbox.retain(|direct| {
                let keep = direct.key != key || sending == Some(direct.entry.seq);
                if !keep {
                    freed += direct.entry.frame.len();
                }
                keep
            });
        }
        self.direct_bytes -= freed;
    }

    /// A keep-alive period passed: a stream that wrote nothing since the
    /// previous one is due a keep-alive and woken; the others only forget
    /// that they were active. An idle stream is thus woken once every two
    /// ticks, and nobody else at all.
    pub(crate) fn keep_alive_tick(&mut self, out: &mut Vec<Waker>) {
        for (_, slot) in self.subs.iter_mut() {
            if !slot.keeps_alive {
                continue;
            }
            if std::mem::take(&mut slot.active) {
                continue;
            }
            slot.keep_alive_due = true;
            if let Some(waker) = slot.waker.take() {
                out.push(waker);
            }
        }
    }

    /// Takes the wakers of every subscription.
    pub(crate) fn take_all_wakers(&mut self, out: &mut Vec<Waker>) {
        out.extend(self.windows.take_ender());
        for (_, slot) in self.subs.iter_mut() {
            if let Some(waker) = slot.waker.take() {
                out.push(waker);
            }
        }
    }
}
