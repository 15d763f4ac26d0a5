//! The reading side: a [`Subscription`] is a cursor into the log.
//!
//! A subscription holds no queue of retained events. It remembers, for
//! each topic it watches, the ordinal of the next event to read, and reads
//! the shared log under the broker's lock. A reader that falls behind
//! therefore costs nothing but its cursor, and when events it has not read
//! are evicted it sees it (the topic's eviction count passed its cursor)
//! and reports [`Message::Lagged`] with the exact number missed, never a
//! silent gap.
//!
//! Direct messages (sent to the watchers of a topic at one moment, never
//! retained) wait in the subscription's own inbox instead, and are merged
//! with the log by id: they are never evicted, so a lag never skips one.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_core::Stream;

use super::event::Topic;
use super::hub::Joined;
use super::mirror::{stream_seq, AHEAD, LOCAL_MASK};
use super::state::{Breaks, Entry, Greeting, State, SubSlot};
use super::{Message, ReceivedEvent, Shared};
use crate::clock::Clock;
use crate::sync::{lock, Arc};
use crate::wire::{self, EventId, ResyncReason};

#[derive(Debug)]
struct Cursor {
    topic_key: usize,
    /// Key of this subscription in the topic's `watchers`.
    watcher_key: usize,
    /// Ordinal of the next event of the topic to read.
    next: u64,
    /// The topic is fed from an upstream, and this cursor counts as one of
    /// the watchers of its slot (see `hub.rs`).
    fed: bool,
}

/// A live feed of the events of some topics, from a [`Broker`](crate::Broker).
///
/// Implements [`Stream`]: each item is a [`Message`], in strictly
/// increasing id order, and the stream ends after
/// [`Broker::close`](crate::Broker::close). Dropping it unsubscribes.
///
/// ```
/// use tower_sse::{Broker, Event, Message, Topics};
///
/// let broker = Broker::new();
/// let mut sub = broker.subscribe(&Topics::parse(["news"]).unwrap(), None).unwrap();
/// broker.publish(Event::new("headline").topic("news").data("hello")).unwrap();
/// broker.publish(Event::new("other").topic("sport").data("not for us")).unwrap();
/// match sub.try_next() {
///     Some(Message::Event(event)) => assert_eq!(event.data(), "hello"),
///     other => panic!("unexpected {other:?}"),
/// }
/// assert!(sub.try_next().is_none());
/// ```
pub struct Subscription {
    shared: Arc<Shared>,
    reader: Reader,
    resumed: Resumed,
    /// Resyncs are reported by whoever reads the subscription
    /// ([`Subscription::report`]), in its own span, not as they are read.
    defer_reports: bool,
}

/// How a subscription started, as decided when it was made: what
/// [`Subscription::resumed`] reports (and the events route records on its
/// stream's span and in its metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resumed {
    /// No id was given: live from now.
    Live,
    /// The id was honoured: `events` retained events of its topics came
    /// after it when it was made, and are delivered first (none for an id a
    /// replica's mirror has not reached yet).
    Replay {
        /// Events retained after the id, across its topics.
        events: u64,
    },
    /// The id could not be honoured (or a fed topic's upstream is down):
    /// the first message is a [`Message::Resync`] with this reason.
    Resync(ResyncReason),
}

/// Everything a subscription owns; the broker's lock is taken by
/// [`Subscription`] and this is handed the state.
#[derive(Debug)]
struct Reader {
    epoch: u64,
    key: usize,
    cursors: Box<[Cursor]>,
    /// Every event of the watched topics with a seq up to here has been
    /// delivered or reported missed.
    pos: u64,
    /// A `Resync` decided at subscribe time, delivered first.
    pending: Option<Message>,
    /// The broker's greeting when this subscription was made, sent by
    /// `poll_frames` where the replay ends: it is the state as of `seam`.
    /// Dropped if the replay itself delivers the event it repeats.
    greeting: Option<Greeting>,
    /// The newest seq when this subscription was made: events up to here
    /// are replay, later ones live.
    seam: u64,
    finished: bool,
    /// The log's breaks (lost stretches, resets) when it was made or last
    /// told of them.
    breaks: Breaks,
    /// A mirror's reader resumed from an id its mirror has not reached
    /// yet: entries up to here are skipped as they arrive.
    skip_through: u64,
    /// Resyncs (reason, events missed) taken under the lock and not yet
    /// reported: logged and counted once the lock is released.
    told: Vec<(ResyncReason, u64)>,
}

/// What a reader reads next, decided under the lock by [`Reader::peek`]
/// and taken by [`Reader::take`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// The resync decided at subscribe time.
    Resync,
    /// The mirrored log started again under a new epoch.
    Reset,
    /// `missed` events of its topics were evicted unread; it continues
    /// after `to`.
    Lag { missed: u64, to: u64 },
    /// The retained event under cursor `i`.
    Log(usize),
    /// The direct message at the front of its inbox.
    Direct,
}

/// What [`Subscription::poll_frames`] produced.
#[derive(Debug)]
pub(crate) enum Frames {
    /// Encoded frames, everything available up to the batch limit: `bytes`
    /// holds `frames` of them (a slice of a larger frame counts as one).
    Data { bytes: Bytes, frames: usize },
    /// Nothing to send, but the keep-alive is due.
    KeepAlive,
    /// The broker was closed and everything is delivered.
    End,
    /// The stream must end at once: the event it was handing out in slices
    /// was evicted before its last slice. The client, which never got the
    /// end of that frame, reconnects and is told what it missed.
    Cut,
}

impl Subscription {
    /// `fed[i]` says whether `topics[i]` is fed from an upstream; what
    /// joining their slots asks of the caller once the lock is released
    /// goes to `joined`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        state: &mut State,
        topics: &[Topic],
        fed: &[bool],
        resume: Option<&str>,
        joined: &mut Joined,
    ) -> Self {
        // A new stream has just sent its response head (and, on the events
        // route, its `retry:` hint): its first keep-alive is due one whole
        // interval later, as for a stream that just wrote.
        let key = state.subs.insert(SubSlot {
            active: true,
            ..SubSlot::default()
        });
        let mut cursors = Vec::with_capacity(topics.len() + 1);
        let system = Topic::system();
        let mut outage = false;
        for (i, topic) in topics.iter().chain(std::iter::once(&system)).enumerate() {
            let fed = fed.get(i).copied().unwrap_or(false);
            if fed {
                // A new slot takes a seq of its own, which no event gets:
                // a client resuming from before it may have missed what
                // the upstream was not there to take.
                let State {
                    links,
                    next_seq,
                    mirror,
                    ..
                } = &mut *state;
                outage |= links.watch(
                    topic,
                    || match mirror {
                        // Ids of a mirror are the stream's: take none.
                        Some(_) => *next_seq - 1,
                        None => {
                            *next_seq += 1;
                            *next_seq - 1
                        }
                    },
                    joined,
                );
            }
            let topic_key = state.topic_key(topic);
            let log = &mut state.topics[topic_key];
            let watcher_key = log.watchers.insert(key);
            cursors.push(Cursor {
                topic_key,
                watcher_key,
                next: log.end(),
                fed,
            });
        }
        let newest = state.next_seq - 1;
        let mut sub = Reader {
            epoch: state.epoch,
            key,
            cursors: cursors.into_boxed_slice(),
            pos: newest,
            pending: None,
            greeting: state.greeting.clone(),
            seam: newest,
            finished: false,
            breaks: state.breaks,
            skip_through: 0,
            told: Vec::new(),
        };
        let refused = match resume {
            Some(resume) => sub.seek(state, resume).err(),
            // A stream starting live on a topic whose upstream is down
            // (the outage's resync came before it): it is told too.
            None => outage.then_some(ResyncReason::Upstream),
        };
        let resumed = match (refused, resume) {
            (Some(reason), _) => {
                state.counters.resyncs += 1;
                sub.pending = Some(Message::Resync {
                    reason,
                    resume_from: EventId::new(sub.epoch, newest),
                });
                Resumed::Resync(reason)
            }
            (None, Some(_)) => Resumed::Replay {
                events: sub
                    .cursors
                    .iter()
                    .map(|c| state.topics[c.topic_key].end().saturating_sub(c.next))
                    .sum(),
            },
            (None, None) => Resumed::Live,
        };
        Self {
            shared,
            reader: sub,
            resumed,
            defer_reports: false,
        }
    }
}

impl Reader {
    /// Positions every cursor just after `resume`, if that loses nothing.
    fn seek(&mut self, state: &State, resume: &str) -> Result<(), ResyncReason> {
        let id: EventId = resume.parse().map_err(|_| ResyncReason::Malformed)?;
        if id.epoch() != self.epoch {
            return Err(ResyncReason::UnknownEpoch);
        }
        let mut seq = id.seq();
        if seq >= state.next_seq {
            let Some(mirror) = state.mirror else {
                return Err(ResyncReason::Future);
            };
            // Another replica's reader may be a little ahead of this one's,
            // and its own frames (after the stream entry of `seq`) mean
            // nothing here.
            seq &= !LOCAL_MASK;
            if stream_seq(seq) > mirror.stream_seq + AHEAD {
                return Err(ResyncReason::Future);
            }
            if seq >= state.next_seq {
                self.pos = seq;
                self.skip_through = seq;
                return Ok(());
            }
        }
        if self.cursors.iter().any(|c| {
            let log = &state.topics[c.topic_key];
            log.last_evicted_seq > seq || (c.fed && state.links.since(&log.name) > seq)
        }) {
            return Err(ResyncReason::Expired);
        }
        for cursor in self.cursors.iter_mut() {
            let log = &state.topics[cursor.topic_key];
            cursor.next = log.evicted + log.entries.partition_point(|e| e.seq <= seq) as u64;
        }
        self.pos = seq;
        Ok(())
    }

    /// What comes next, if anything is available now, with the lock held.
    ///
    /// Evictions past a cursor come first (a lag report), except for direct
    /// messages older than where the lag moves the stream: those go out
    /// before it, so that ids keep increasing. Everything retained older
    /// than such a message was evicted (eviction is first in, first out),
    /// so nothing of the log is owed before it.
    fn peek(&self, state: &State) -> Option<Next> {
        // The common case first: one topic, nothing owed but its log, no
        // eviction past the cursor.
        if let [cursor] = &*self.cursors {
            let log = &state.topics[cursor.topic_key];
            if self.pending.is_none()
                && state.breaks.resets == self.breaks.resets
                && state.breaks.gaps == self.breaks.gaps
                && log.evicted <= cursor.next
                && state.subs[self.key].inbox.is_empty()
            {
                let index = (cursor.next - log.evicted) as usize;
                return (index < log.entries.len()).then_some(Next::Log(0));
            }
        }
        if self.pending.is_some() {
            return Some(Next::Resync);
        }
        if state.breaks.resets != self.breaks.resets {
            return Some(Next::Reset);
        }
        let direct = state.subs[self.key].inbox.front().map(|d| d.entry.seq);
        let mut missed = 0;
        let mut to = self.pos;
        if state.breaks.gaps != self.breaks.gaps {
            // A lost stretch of a mirrored log: nothing before it is left.
            missed += state.breaks.gap_missed - self.breaks.gap_missed;
            to = to.max(state.breaks.gap_end);
        }
        for cursor in self.cursors.iter() {
            let log = &state.topics[cursor.topic_key];
            if log.evicted > cursor.next {
                missed += log.evicted - cursor.next;
                to = to.max(log.last_evicted_seq);
            }
        }
        if missed > 0 {
            if direct.is_some_and(|seq| seq <= to) {
                return Some(Next::Direct);
            }
            return Some(Next::Lag { missed, to });
        }
        let mut best = direct.map(|seq| (seq, Next::Direct));
        for (i, cursor) in self.cursors.iter().enumerate() {
            let log = &state.topics[cursor.topic_key];
            let index = (cursor.next - log.evicted) as usize;
            if let Some(entry) = log.entries.get(index) {
                if best.is_none_or(|(seq, _)| entry.seq < seq) {
                    best = Some((entry.seq, Next::Log(i)));
                }
            }
        }
        best.map(|(_, next)| next)
    }

    /// The entry `next` names, without taking it.
    fn entry<'s>(&self, state: &'s State, next: Next) -> Option<&'s Arc<Entry>> {
        match next {
            Next::Log(i) => {
                let cursor = &self.cursors[i];
                let log = &state.topics[cursor.topic_key];
                log.entries.get((cursor.next - log.evicted) as usize)
            }
            Next::Direct => state.subs[self.key].inbox.front().map(|d| &d.entry),
            Next::Resync | Next::Reset | Next::Lag { .. } => None,
        }
    }

    /// Takes `next`, which [`peek`](Reader::peek) just returned.
    fn take(&mut self, state: &mut State, next: Next) -> Message {
        match next {
            Next::Resync => {
                let message = self.pending.take().expect("peeked");
                if let Message::Resync { reason, .. } = &message {
                    self.told.push((*reason, 0));
                }
                message
            }
            Next::Reset => {
                // Just after the backfill the new epoch started with; what
                // came after it is news.
                let from = state.breaks.reset_seq;
                for cursor in self.cursors.iter_mut() {
                    let log = &state.topics[cursor.topic_key];
                    cursor.next =
                        log.evicted + log.entries.partition_point(|e| e.seq <= from) as u64;
                }
                self.epoch = state.epoch;
                self.breaks = state.breaks;
                self.skip_through = 0;
                self.pos = from.max(state.log.front().map_or(state.next_seq, |e| e.seq) - 1);
                // Unread direct messages were given seqs just after the
                // backfill: they come after the resync, with their ids.
                if let Some(direct) = state.subs[self.key].inbox.front() {
                    self.pos = self.pos.min(direct.entry.seq - 1);
                }
                self.seam = self.pos;
                self.greeting = None;
                state.counters.resyncs += 1;
                self.told.push((ResyncReason::UnknownEpoch, 0));
                Message::Resync {
                    reason: ResyncReason::UnknownEpoch,
                    resume_from: EventId::new(self.epoch, self.pos),
                }
            }
            Next::Lag { missed, to } => {
                for cursor in self.cursors.iter_mut() {
                    let log = &state.topics[cursor.topic_key];
                    cursor.next = cursor.next.max(log.evicted);
                }
                self.pos = to;
                self.breaks.gaps = state.breaks.gaps;
                self.breaks.gap_missed = state.breaks.gap_missed;
                state.counters.lagged_events += missed;
                state.counters.lag_reports += 1;
                self.told.push((ResyncReason::Lagged, missed));
                Message::Lagged {
                    missed,
                    resume_from: EventId::new(self.epoch, to),
                }
            }
            Next::Log(i) => {
                let cursor = &mut self.cursors[i];
                let log = &state.topics[cursor.topic_key];
                let entry = log.entries[(cursor.next - log.evicted) as usize].clone();
                cursor.next += 1;
                self.event(entry)
            }
            Next::Direct => {
                let direct = state.subs[self.key].inbox.pop_front().expect("peeked");
                state.direct_bytes -= direct.entry.frame.len();
                self.event(direct.entry)
            }
        }
    }

    fn event(&mut self, entry: Arc<Entry>) -> Message {
        if self.note(&entry) {
            return Message::Resync {
                reason: ResyncReason::Upstream,
                resume_from: EventId::new(self.epoch, entry.seq),
            };
        }
        Message::Event(ReceivedEvent {
            epoch: self.epoch,
            entry,
        })
    }

    /// Notes `entry` as read; whether it is an upstream's resync.
    fn note(&mut self, entry: &Entry) -> bool {
        self.pos = self.pos.max(entry.seq);
        let resync = entry.event_type.as_deref() == Some(wire::RESYNC_EVENT);
        if resync {
            // Only the crate publishes these: its topic's upstream lost
            // events here.
            self.told.push((ResyncReason::Upstream, 0));
        }
        resync
    }

    /// Takes `next`, an entry of the log or of the inbox whose frame the
    /// caller has already, as [`take`](Reader::take) would, without
    /// making a message of it (no reference taken on the entry).
    fn pass(&mut self, state: &mut State, next: Next) {
        match next {
            Next::Log(i) => {
                let cursor = &mut self.cursors[i];
                let log = &state.topics[cursor.topic_key];
                let entry = &log.entries[(cursor.next - log.evicted) as usize];
                cursor.next += 1;
                self.note(entry);
            }
            Next::Direct => {
                let direct = state.subs[self.key].inbox.pop_front().expect("peeked");
                state.direct_bytes -= direct.entry.frame.len();
                self.note(&direct.entry);
            }
            Next::Resync | Next::Reset | Next::Lag { .. } => {
                self.take(state, next);
            }
        }
    }

    /// Passes over the entries a client resuming ahead of this mirror has
    /// seen already, as they arrive.
    fn skip_seen(&mut self, state: &State) {
        if self.skip_through == 0 {
            return;
        }
        let mut lagging = false;
        for cursor in self.cursors.iter_mut() {
            let log = &state.topics[cursor.topic_key];
            if cursor.next < log.evicted {
                // The `$system` log holds this replica's own frames, which
                // the client never saw, whatever their seqs.
                let own = log.name.as_str().starts_with('$');
                if own || log.last_evicted_seq > self.skip_through {
                    // Evicted unread, and not all seen: that is a lag,
                    // reported as such; what is retained after it and was
                    // seen is skipped once the report moved the cursor.
                    lagging = true;
                    continue;
                }
                // Evicted unread, but the client saw all of it.
                cursor.next = log.evicted;
            }
            // Only the stream's entries: this replica's own frames are
            // news to the client (they go out without an id, see `fill`).
            while log
                .entries
                .get((cursor.next - log.evicted) as usize)
                .is_some_and(|entry| entry.seq <= self.skip_through && entry.seq & LOCAL_MASK == 0)
            {
                cursor.next += 1;
            }
        }
        if !lagging && state.next_seq > self.skip_through {
            self.skip_through = 0;
        }
    }

    /// The next message, if one is available now, with the lock held.
    fn next_locked(&mut self, state: &mut State) -> Option<Message> {
        if state.subs[self.key].cut {
            // Ended by the broker (`State::cut`): nothing more, as closed.
            self.finished = true;
            return None;
        }
        self.skip_seen(state);
        let next = self.peek(state)?;
        Some(self.take(state, next))
    }

    /// Whether everything replayed has been taken: the next message, if
    /// any, is live (or a resync decided at subscribe time, which has no
    /// replay). Where the greeting goes. Direct messages are all live.
    fn at_seam(&self, state: &State) -> bool {
        if self.pending.is_some() || self.pos >= self.seam {
            return true;
        }
        // The oldest entry still to read, past any eviction (a lag report
        // comes first and moves the cursor there).
        self.cursors
            .iter()
            .filter_map(|cursor| {
                let log = &state.topics[cursor.topic_key];
                let index = cursor.next.max(log.evicted) - log.evicted;
                log.entries.get(index as usize).map(|entry| entry.seq)
            })
            .min()
            .is_none_or(|seq| seq > self.seam)
    }

    fn park(&self, state: &mut State, cx: &mut Context<'_>) {
        let slot = &mut state.subs[self.key];
        match &slot.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
    }

    /// Fills `batch` with what is available, up to `max_bytes`, for the
    /// events route. A frame that fits goes in whole (as the shared bytes
    /// themselves when it is the only one); a frame larger than a whole
    /// batch goes out in copied slices of `max_bytes`, one batch each, so
    /// that a stream never holds more than `max_bytes` of the log, even
    /// of an event evicted since. Returns false when the stream must be
    /// cut: the event it was slicing is gone.
    fn fill(&mut self, state: &mut State, batch: &mut Batch, max_bytes: usize) -> bool {
        if state.subs[self.key].cut {
            return false;
        }
        self.skip_seen(state);
        loop {
            let room = max_bytes.saturating_sub(batch.len());
            if room == 0 {
                return true;
            }
            let sending = state.subs[self.key].sending;
            if sending.is_none() && self.greeting.is_some() && self.at_seam(state) {
                let greeting = self.greeting.as_ref().expect("checked");
                if greeting.frame.len() > room && !batch.is_empty() {
                    return true;
                }
                batch.push(self.greeting.take().expect("checked").frame);
                continue;
            }
            let Some(next) = self.peek(state) else {
                // Nothing to read, yet a frame was half sent: it is gone.
                return sending.is_none();
            };
            let Some(entry) = self.entry(state, next) else {
                if sending.is_some() {
                    // A lag passed the event being sliced.
                    return false;
                }
                if room < wire::MAX_RESYNC_FRAME && !batch.is_empty() {
                    return true;
                }
                batch.push(self.take(state, next).frame());
                continue;
            };
            let offset = match sending {
                Some((seq, offset)) if seq == entry.seq => offset,
                Some(_) => return false,
                None => 0,
            };
            // A frame of this replica's own under a seq the client is past
            // (it resumed from another replica's id ahead of this one): it
            // goes without its id, which would send the client back.
            let frame = if entry.seq <= self.pos {
                entry.frame.slice(entry.id_line..)
            } else {
                entry.frame.clone()
            };
            let len = frame.len();
            if offset == 0 && len <= room {
                if let (Some(greeting), Next::Log(_)) = (&self.greeting, next) {
                    if entry.seq == greeting.seq {
                        // Replayed: the client has the current state.
                        self.greeting = None;
                    }
                }
                self.pass(state, next);
                batch.push(frame);
                continue;
            }
            if !batch.is_empty() {
                return true;
            }
            let end = len.min(offset + max_bytes);
            batch.push_slice(Bytes::copy_from_slice(&frame[offset..end]));
            if end == len {
                state.subs[self.key].sending = None;
                self.pass(state, next);
                batch.frames += 1;
            } else {
                state.subs[self.key].sending = Some((entry.seq, end));
            }
            return true;
        }
    }
}

impl Subscription {
    /// Locks and hands the state to `f`, with the broker's clock. A read
    /// neither reads the clock nor evicts by age: what it reads was
    /// retained when it got there, and publishes, subscriptions and ticks
    /// keep the age bound (a resume never gets what aged out).
    fn with_state<R>(&mut self, f: impl FnOnce(&mut Reader, &mut State, &dyn Clock) -> R) -> R {
        let result = {
            let mut state = lock(&self.shared.state);
            f(&mut self.reader, &mut state, &*self.shared.clock)
        };
        if !self.defer_reports && self.has_reports() {
            self.report();
        }
        result
    }

    /// From now on the resyncs read are reported only by
    /// [`report`](Subscription::report), which the events route calls in
    /// its stream's span.
    pub(crate) fn defer_reports(&mut self) {
        self.defer_reports = true;
    }

    /// Whether resyncs were read and not reported yet.
    #[inline]
    pub(crate) fn has_reports(&self) -> bool {
        !self.reader.told.is_empty()
    }

    /// Logs and counts the resyncs read since the last report, outside the
    /// lock (a subscriber's or recorder's work must not hold up the
    /// broker). A lag is `info`: the reader lost events. A resync is
    /// `debug`: the id it gave could not be honoured (a client's choice,
    /// and after a restart every client's), or its upstream failed, which
    /// the driver reports once for all its readers.
    #[cold]
    pub(crate) fn report(&mut self) {
        for (reason, missed) in self.reader.told.drain(..) {
            crate::metrics::resync(reason, missed);
            #[cfg(not(loom))]
            match reason {
                ResyncReason::Lagged => {
                    tracing::info!(missed, "stream lagged: events evicted before it read them")
                }
                reason => tracing::debug!(reason = reason.as_str(), "stream told to resync"),
            }
        }
    }

    /// How this subscription started: live, replaying after the id it was
    /// given, or told to resync.
    pub fn resumed(&self) -> Resumed {
        self.resumed
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Its key in the broker's registry.
    pub(crate) fn key(&self) -> usize {
        self.reader.key
    }

    /// The newest seq when it was made: everything sent to its topics
    /// after that reached it.
    pub(crate) fn seam(&self) -> EventId {
        EventId::new(self.reader.epoch, self.reader.seam)
    }

    /// The next message if one is ready, without waiting.
    ///
    /// Returns `None` both when nothing is available yet and when the stream
    /// has ended; [`Subscription::is_finished`] tells which.
    pub fn try_next(&mut self) -> Option<Message> {
        if self.reader.finished {
            return None;
        }
        self.with_state(|sub, state, _| {
            let message = sub.next_locked(state);
            if message.is_none() && state.closed {
                sub.finished = true;
            }
            message
        })
    }

    /// Whether this subscription begins with a [`Message::Resync`] not yet
    /// read: the id it was given was not honoured.
    pub(crate) fn starts_with_resync(&self) -> bool {
        matches!(self.reader.pending, Some(Message::Resync { .. }))
    }

    /// Whether the stream has ended (the broker was closed and every
    /// message was read).
    pub fn is_finished(&self) -> bool {
        self.reader.finished
    }

    /// The id this subscription would resume from: every event of its
    /// topics up to it has been delivered or reported missed.
    pub fn position(&self) -> EventId {
        EventId::new(self.reader.epoch, self.reader.pos)
    }

    /// Receives the next message, waiting for one.
    ///
    /// Cancel safe: dropping the future loses nothing.
    pub fn recv(&mut self) -> Recv<'_> {
        Recv { sub: self }
    }

    /// Polls for the next message.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        if self.reader.finished {
            return Poll::Ready(None);
        }
        self.with_state(|sub, state, _| match sub.next_locked(state) {
            Some(message) => Poll::Ready(Some(message)),
            None if state.closed || sub.finished => {
                sub.finished = true;
                Poll::Ready(None)
            }
            None => {
                sub.park(state, cx);
                Poll::Pending
            }
        })
    }

    /// Everything available now, encoded as one chunk of SSE frames of at
    /// most `max_bytes` (a larger frame goes out in slices, one per call).
    ///
    /// One lock acquisition for the whole batch; a single event is passed on
    /// as the shared frame itself, without copying.
    ///
    /// With a `coalesce` window, a stream that writes is not woken by
    /// publishes again until the window has passed (see
    /// [`Broker::end_coalescing_windows`]): what arrives meanwhile goes out
    /// together, in one write, at most that much later.
    pub(crate) fn poll_frames(
        &mut self,
        cx: &mut Context<'_>,
        max_bytes: usize,
        coalesce: Option<Duration>,
    ) -> Poll<Frames> {
        if self.reader.finished {
            return Poll::Ready(Frames::End);
        }
        let mut releaser = None;
        let polled = self.with_state(|sub, state, clock| {
            let mut batch = Batch::default();
            if !sub.fill(state, &mut batch, max_bytes) {
                sub.finished = true;
                state.subs[sub.key].sending = None;
                state.counters.cut += 1;
                state.counters.lag_reports += 1;
                state.counters.lagged_events += 1;
                return Poll::Ready(Frames::Cut);
            }
            let slot = &mut state.subs[sub.key];
            slot.keeps_alive = true;
            // A slice of a frame counts as one.
            let frames = batch.frames.max(1);
            if let Some(bytes) = batch.finish() {
                slot.active = true;
                state.counters.framed += frames as u64;
                if let Some(window) = coalesce {
                    let State { windows, subs, .. } = &mut *state;
                    releaser = windows.open(subs, sub.key, clock.now().saturating_add(window));
                }
                return Poll::Ready(Frames::Data { bytes, frames });
            }
            if state.closed {
                sub.finished = true;
                return Poll::Ready(match state.close_frame.clone() {
                    Some(bytes) => Frames::Data { bytes, frames: 1 },
                    None => Frames::End,
                });
            }
            if std::mem::take(&mut slot.keep_alive_due) {
                slot.active = true;
                sub.park(state, cx);
                return Poll::Ready(Frames::KeepAlive);
            }
            sub.park(state, cx);
            Poll::Pending
        });
        if let Some(releaser) = releaser {
            releaser.wake();
        }
        polled
    }
}

impl Message {
    /// The SSE frame for this message, as sent on the events route.
    pub fn frame(&self) -> Bytes {
        match self {
            Message::Event(event) => event.entry.frame.clone(),
            Message::Resync {
                reason,
                resume_from,
            } => wire::resync_frame(*reason, None, *resume_from),
            Message::Lagged {
                missed,
                resume_from,
            } => wire::resync_frame(ResyncReason::Lagged, Some(*missed), *resume_from),
        }
    }
}

/// Collects frames, copying only when there is more than one.
#[derive(Default)]
struct Batch {
    first: Option<Bytes>,
    rest: BytesMut,
    /// Whole frames collected.
    frames: usize,
}

impl Batch {
    fn len(&self) -> usize {
        self.first.as_ref().map_or(0, Bytes::len) + self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a whole frame.
    fn push(&mut self, frame: Bytes) {
        self.frames += 1;
        self.push_slice(frame);
    }

    /// Adds bytes that are not a whole frame (or are, for `push`).
    fn push_slice(&mut self, bytes: Bytes) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(bytes);
            return;
        }
        if let Some(first) = self.first.take() {
            self.rest.reserve(first.len() + bytes.len());
            self.rest.extend_from_slice(&first);
        }
        self.rest.extend_from_slice(&bytes);
    }

    fn finish(self) -> Option<Bytes> {
        match self.first {
            Some(first) => Some(first),
            None if self.rest.is_empty() => None,
            None => Some(self.rest.freeze()),
        }
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.get_mut().poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut wakers = Vec::new();
        {
            let mut state = lock(&self.shared.state);
            for cursor in self.reader.cursors.iter() {
                let log = &mut state.topics[cursor.topic_key];
                log.watchers.remove(cursor.watcher_key);
                if cursor.fed {
                    let name = log.name.clone();
                    state.links.unwatch(&name, &mut wakers);
                }
                state.prune_topic(cursor.topic_key);
            }
            let slot = state.subs.remove(self.reader.key);
            state.direct_bytes -= slot
                .inbox
                .iter()
                .map(|d| d.entry.frame.len())
                .sum::<usize>();
        }
        wakers.into_iter().for_each(std::task::Waker::wake);
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("topics", &self.reader.cursors.len().saturating_sub(1))
            .field("position", &self.position())
            .field("finished", &self.reader.finished)
            .finish()
    }
}

/// Future returned by [`Subscription::recv`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Recv<'a> {
    sub: &'a mut Subscription,
}

impl std::future::Future for Recv<'_> {
    type Output = Option<Message>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.get_mut().sub.poll_recv(cx)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use super::Frames;
    use crate::{Broker, Event, Topics};

    use crate::test_util::WakeCount as Count;

    fn poll(sub: &mut crate::Subscription, waker: &Waker) -> Poll<Frames> {
        sub.poll_frames(&mut Context::from_waker(waker), 1 << 16, None)
    }

    /// Everything a stream sends, batch after batch of at most `max_bytes`,
    /// as text.
    fn drain_text(sub: &mut crate::Subscription, max_bytes: usize) -> String {
        let waker = Waker::from(Arc::new(Count::default()));
        let mut out = String::new();
        while let Poll::Ready(Frames::Data { bytes, .. }) =
            sub.poll_frames(&mut Context::from_waker(&waker), max_bytes, None)
        {
            out.push_str(std::str::from_utf8(&bytes).unwrap());
        }
        out
    }

    /// Stream entry `seq` of topic `a`, its payload its seq.
    fn entry(seq: u64) -> crate::broker::Mirrored {
        crate::broker::Mirrored {
            stream_seq: seq,
            age: std::time::Duration::ZERO,
            topic: "a".into(),
            event_type: None,
            data: format!("{seq}").into(),
            direct: None,
        }
    }

    /// The route's load meter reads what the streams were handed from the
    /// broker's count: each batch adds its frames, a slice of a frame
    /// counts as one, and what publishes nothing adds nothing.
    #[test]
    fn each_batch_counts_its_frames_for_the_load_meter() {
        let broker = Broker::builder().epoch(7).build();
        let topics = Topics::parse(["a"]).unwrap();
        let mut sub = broker.subscribe(&topics, None).unwrap();
        let waker = Waker::from(Arc::new(Count::default()));
        assert!(poll(&mut sub, &waker).is_pending());
        assert_eq!(broker.activity(), (0, 0));

        for n in 0..3 {
            broker
                .publish(Event::new("e").topic("a").data(n.to_string()))
                .unwrap();
        }
        let Poll::Ready(Frames::Data { frames, .. }) = poll(&mut sub, &waker) else {
            panic!("three events to send");
        };
        assert_eq!(frames, 3);
        assert_eq!(broker.activity(), (3, 3));

        broker
            .publish(Event::new("e").topic("a").data("x".repeat(100)))
            .unwrap();
        let sliced = |sub: &mut crate::Subscription| {
            sub.poll_frames(&mut Context::from_waker(&waker), 40, None)
        };
        let mut slices = 0;
        while let Poll::Ready(Frames::Data { frames, .. }) = sliced(&mut sub) {
            assert_eq!(frames, 1);
            slices += 1;
        }
        assert!(slices > 1, "the event went out in slices");
        assert_eq!(broker.activity(), (4, 3 + slices));
    }

    #[test]
    fn the_greeting_goes_where_the_replay_ends() {
        let broker = Broker::builder().epoch(7).build();
        let state = |s: &str| Event::new("server.state").data(format!("{{\"mode\":\"{s}\"}}"));
        let topics = Topics::parse(["a"]).unwrap();
        let first = broker
            .publish(Event::new("e").topic("a").data("0"))
            .unwrap();
        broker.publish_system_greeting(state("degraded")).unwrap(); // 7-2
        broker.publish_system_greeting(state("read-only")).unwrap(); // 7-3
        let last_a = broker
            .publish(Event::new("e").topic("a").data("1"))
            .unwrap(); // 7-4
        broker
            .publish(Event::new("e").topic("b").data("other topic"))
            .unwrap(); // 7-5
        let greeting = "event: server.state\ndata: {\"mode\":\"read-only\"}\n\n";

        // Live from now: the greeting first.
        let mut fresh = broker.subscribe(&topics, None).unwrap();
        assert_eq!(drain_text(&mut fresh, 1 << 16), greeting);

        // The replay holds the latest state event itself: the states in
        // order, then the event, and no greeting repeating the state.
        let mut resumed = broker.subscribe(&topics, Some(&first.to_string())).unwrap();
        assert_eq!(
            drain_text(&mut resumed, 1 << 16),
            "id: 7-2\nevent: server.state\ndata: {\"mode\":\"degraded\"}\n\n\
             id: 7-3\nevent: server.state\ndata: {\"mode\":\"read-only\"}\n\n\
             id: 7-4\nevent: e\ndata: 1\n\n"
        );

        // Nothing of its topics to replay (7-5 is another topic's).
        let mut caught_up = broker
            .subscribe(&topics, Some(&last_a.to_string()))
            .unwrap();
        assert_eq!(drain_text(&mut caught_up, 1 << 16), greeting);

        // A replay without the state event: the greeting follows it, also
        // when every batch holds one frame, and live events follow that.
        let replay_then_greeting = format!("id: 7-4\nevent: e\ndata: 1\n\n{greeting}");
        let mut resumed = broker.subscribe(&topics, Some("7-3")).unwrap();
        assert_eq!(drain_text(&mut resumed, 1), replay_then_greeting);
        let mut resumed = broker.subscribe(&topics, Some("7-3")).unwrap();
        broker
            .publish(Event::new("e").topic("a").data("live"))
            .unwrap(); // 7-6
        assert_eq!(
            drain_text(&mut resumed, 1),
            format!("{replay_then_greeting}id: 7-6\nevent: e\ndata: live\n\n")
        );
    }

    /// The last event replayed may be the newest of all, its seq the
    /// seam itself: the greeting still follows it.
    #[test]
    fn the_greeting_follows_a_replay_that_ends_at_the_newest_event() {
        let broker = Broker::builder().epoch(7).build();
        let topics = Topics::parse(["a"]).unwrap();
        let state = Event::new("server.state").data("{\"mode\":\"degraded\"}");
        broker.publish_system_greeting(state).unwrap(); // 7-1
        let first = broker
            .publish(Event::new("e").topic("a").data("0"))
            .unwrap(); // 7-2
        broker
            .publish(Event::new("e").topic("a").data("1"))
            .unwrap(); // 7-3, the newest
        let mut resumed = broker.subscribe(&topics, Some(&first.to_string())).unwrap();
        assert_eq!(
            drain_text(&mut resumed, 1 << 16),
            "id: 7-3\nevent: e\ndata: 1\n\n\
             event: server.state\ndata: {\"mode\":\"degraded\"}\n\n"
        );
    }

    /// Whoever ends the coalescing windows parks while none is open, is
    /// woken when a stream opens one, and is ready until it ends.
    #[test]
    fn the_window_ender_parks_only_while_no_window_is_open() {
        use std::time::Duration;

        let clock = crate::ManualClock::new();
        let broker = Broker::builder().epoch(7).clock(clock.clone()).build();
        let mut sub = broker
            .subscribe(&Topics::parse(["a"]).unwrap(), None)
            .unwrap();
        let ender = Arc::new(Count::default());
        let ender_waker = Waker::from(ender.clone());
        let mut ender_cx = Context::from_waker(&ender_waker);
        assert!(broker.poll_coalescing(&mut ender_cx).is_pending());

        broker
            .publish(Event::new("e").topic("a").data("1"))
            .unwrap();
        let waker = Waker::from(Arc::new(Count::default()));
        let window = Some(Duration::from_millis(10));
        let polled = sub.poll_frames(&mut Context::from_waker(&waker), 1 << 16, window);
        assert!(matches!(polled, Poll::Ready(Frames::Data { .. })));
        assert_eq!(ender.get(), 1, "opening the window wakes the ender");
        assert!(broker.poll_coalescing(&mut ender_cx).is_ready());

        clock.advance(Duration::from_millis(10));
        assert!(!broker.end_coalescing_windows(), "no window left open");
        assert!(broker.poll_coalescing(&mut ender_cx).is_pending());
    }

    /// A lag report does not push a batch past its bound: one that would
    /// not fit behind what the batch holds goes first in the next.
    #[test]
    fn a_lag_report_waits_for_the_next_batch_rather_than_overflow_one() {
        let broker = Broker::builder().epoch(7).retain_events(2).build();
        let greeting = "event: server.state\ndata: {\"mode\":\"degraded\"}\n\n";
        let state = Event::new("server.state").data("{\"mode\":\"degraded\"}");
        broker.publish_system_greeting(state).unwrap();
        let mut sub = broker
            .subscribe(&Topics::parse(["a"]).unwrap(), None)
            .unwrap();
        for n in 0..4 {
            broker
                .publish(Event::new("e").topic("a").data(n.to_string()))
                .unwrap();
        }
        let max_bytes = greeting.len() + 10;
        let waker = Waker::from(Arc::new(Count::default()));
        let mut batches = Vec::new();
        while let Poll::Ready(Frames::Data { bytes, frames }) =
            sub.poll_frames(&mut Context::from_waker(&waker), max_bytes, None)
        {
            assert!(bytes.len() <= max_bytes || frames == 1, "{bytes:?}");
            batches.push(String::from_utf8(bytes.to_vec()).unwrap());
        }
        assert_eq!(batches[0], greeting);
        assert_eq!(
            batches[1],
            "id: 7-3\nevent: resync\ndata: {\"reason\":\"lagged\",\"missed\":2}\n\n"
        );
    }

    #[test]
    fn keep_alives_go_only_to_quiet_streams_once_per_two_ticks() {
        let broker = Broker::new();
        let topics = Topics::parse(["a"]).unwrap();
        let mut stream = broker.subscribe(&topics, None).unwrap();
        let mut in_process = broker.subscribe(&topics, None).unwrap();
        let (count, other) = (Arc::new(Count::default()), Arc::new(Count::default()));
        let waker = Waker::from(count.clone());
        let other_waker = Waker::from(other.clone());
        assert!(poll(&mut stream, &waker).is_pending());
        assert!(in_process
            .poll_recv(&mut Context::from_waker(&other_waker))
            .is_pending());

        // New counts as active: the first tick leaves it alone; quiet
        // since then, the second makes it due.
        broker.tick();
        assert_eq!(count.get(), 0);
        broker.tick();
        assert_eq!(count.get(), 1);
        assert!(matches!(
            poll(&mut stream, &waker),
            Poll::Ready(Frames::KeepAlive)
        ));
        assert!(poll(&mut stream, &waker).is_pending());
        // It just wrote: the next tick leaves it alone.
        broker.tick();
        assert_eq!(count.get(), 1);
        broker.tick();
        assert_eq!(count.get(), 2);
        assert!(matches!(
            poll(&mut stream, &waker),
            Poll::Ready(Frames::KeepAlive)
        ));

        // Data counts as activity: no keep-alive while events flow.
        broker.tick();
        broker
            .publish(Event::new("t").topic("a").data("x"))
            .unwrap();
        assert!(matches!(
            poll(&mut stream, &waker),
            Poll::Ready(Frames::Data { .. })
        ));
        broker.tick();
        assert!(poll(&mut stream, &waker).is_pending());

        // A subscription read as a Stream never hears of ticks.
        assert_eq!(other.get(), 1, "woken by the publish only");
    }

    #[test]
    fn a_coalescing_stream_gets_what_came_during_its_window_in_one_write() {
        use std::time::Duration;

        let clock = crate::ManualClock::new();
        let broker = Broker::builder().clock(clock.clone()).build();
        let topics = Topics::parse(["a"]).unwrap();
        let mut stream = broker.subscribe(&topics, None).unwrap();
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let window = Some(Duration::from_millis(20));
        let poll = |sub: &mut crate::Subscription| {
            sub.poll_frames(&mut Context::from_waker(&waker), 1 << 16, window)
        };
        assert!(poll(&mut stream).is_pending());

        // Quiet until now: the first event wakes it at once.
        broker
            .publish(Event::new("t").topic("a").data("1"))
            .unwrap();
        assert_eq!(count.get(), 1);
        assert!(matches!(
            poll(&mut stream),
            Poll::Ready(Frames::Data { .. })
        ));
        assert!(poll(&mut stream).is_pending());

        // Within its window: publishes do not wake it...
        broker
            .publish(Event::new("t").topic("a").data("2"))
            .unwrap();
        broker
            .publish(Event::new("t").topic("a").data("3"))
            .unwrap();
        assert_eq!(count.get(), 1);
        clock.advance(Duration::from_millis(19));
        broker.end_coalescing_windows();
        assert_eq!(count.get(), 1, "woken before the window ended");
        // ...until it ends; then both go out together.
        clock.advance(Duration::from_millis(1));
        broker.end_coalescing_windows();
        assert_eq!(count.get(), 2);
        match poll(&mut stream) {
            Poll::Ready(Frames::Data { bytes, frames }) => {
                assert_eq!(frames, 2, "two events in one write");
                let text = std::str::from_utf8(&bytes).unwrap();
                assert!(
                    text.contains("data: 2\n") && text.contains("data: 3\n"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        // A window with nothing published wakes nobody when it ends.
        assert!(poll(&mut stream).is_pending());
        clock.advance(Duration::from_millis(20));
        broker.end_coalescing_windows();
        assert_eq!(count.get(), 2);
        // And the next event, after a quiet window, goes out at once.
        broker
            .publish(Event::new("t").topic("a").data("4"))
            .unwrap();
        assert_eq!(count.get(), 3);
        // Closing wakes it whatever its window.
        assert!(matches!(
            poll(&mut stream),
            Poll::Ready(Frames::Data { .. })
        ));
        assert!(poll(&mut stream).is_pending());
        broker.close();
        assert_eq!(count.get(), 4);
    }

    #[test]
    fn a_notification_unread_at_a_mirror_reset_ends_its_stream_before_any_id_of_the_new_epoch() {
        use crate::broker::Topic;

        let broker = Broker::builder().epoch(1).mirrored().build();
        broker.mirror_reset(5, [entry(1)]);
        let private = Topic::reserved("client/x");
        let topics = Topics::parse(["a"]).unwrap().with(private.clone());
        let mut sub = broker.subscribe(&topics, None).unwrap();
        let mut public = broker
            .subscribe(&Topics::parse(["a"]).unwrap(), None)
            .unwrap();
        let sent = broker
            .send_direct(&private, 1, Event::new("notification").data("n"))
            .unwrap()
            .expect("a watcher");
        assert_eq!(sent.epoch(), 5);
        assert!(broker.stats().direct_bytes > 0);

        // The stream lost its data: a new epoch, with one entry. The
        // stream of the client ends, having shown nothing of it: no id of
        // the new epoch could stand for what it had unread (the client
        // comes back from its old id, and its mailbox sends it again).
        broker.mirror_reset(9, [entry(1)]);
        assert_eq!(broker.stats().direct_bytes, 0);
        assert_eq!(drain_text(&mut sub, 1 << 16), "");
        assert!(sub.try_next().is_none() && sub.is_finished());
        // A stream of public topics only resyncs, as ever.
        let text = drain_text(&mut public, 1 << 16);
        assert!(text.starts_with("id: 9-"), "{text}");
        assert!(text.contains("event: resync"), "{text}");
        // Nothing more reaches the ended one.
        assert!(broker
            .send_direct(&private, 2, Event::new("notification").data("m"))
            .unwrap()
            .is_some());
        assert_eq!(broker.stats().direct_bytes, 0);
    }

    #[test]
    fn a_state_change_evicted_before_a_client_resumed_ahead_reads_it_is_a_lag() {
        let broker = Broker::builder()
            .epoch(1)
            .retain_events(3)
            .mirrored()
            .build();
        broker.mirror_reset(5, [entry(1), entry(2)]);
        let topics = Topics::parse(["a"]).unwrap();
        // The client saw up to entry 6 on another replica.
        let seen = broker.mirrored_id(6).to_string();
        let mut sub = broker.subscribe(&topics, Some(&seen)).unwrap();
        broker
            .publish_system_greeting(Event::new("server.state").data("{\"mode\":\"degraded\"}"))
            .unwrap();
        // Entries 3 to 6 arrive; the state change is evicted unread. The
        // client saw the entries, not this replica's state change.
        broker.mirror([entry(3), entry(4), entry(5), entry(6)]);
        let text = drain_text(&mut sub, 1 << 16);
        assert!(
            text.contains("\"reason\":\"lagged\",\"missed\":1"),
            "{text}"
        );
        assert!(
            !text.contains("data: 4") && !text.contains("data: 6"),
            "{text}"
        );
    }

    #[test]
    fn frames_of_this_replica_reach_a_client_that_resumed_from_another_replicas_id() {
        use crate::broker::Topic;
        use crate::EventId;

        let state = |s: &str| Event::new("server.state").data(format!("{{\"mode\":\"{s}\"}}"));
        let broker = Broker::builder().epoch(1).mirrored().build();
        broker.mirror_reset(5, [entry(1), entry(2)]);
        let private = Topic::reserved("client/x");
        let topics = Topics::parse(["a"]).unwrap().with(private.clone());

        // In step with the replica that gave the id, which is one of that
        // replica's own frames after entry 2: it stands for entry 2.
        let theirs = EventId::new(5, broker.mirrored_id(2).seq() + 5);
        let mut in_step = broker
            .subscribe(&topics, Some(&theirs.to_string()))
            .unwrap();
        let change = broker.publish_system_greeting(state("degraded")).unwrap();
        assert!(change.seq() < theirs.seq());
        broker.mirror([entry(3)]);
        assert_eq!(
            drain_text(&mut in_step, 1 << 16),
            format!(
                "id: {change}\nevent: server.state\ndata: {{\"mode\":\"degraded\"}}\n\n\
                 id: {}\ndata: 3\n\n",
                broker.mirrored_id(3)
            )
        );

        // Behind it: the client saw entry 4 there. After the greeting (the
        // state when it connected), what this replica says meanwhile
        // reaches it without an id (which would send it back); entry 4 is
        // not sent again.
        let seen = EventId::new(5, broker.mirrored_id(4).seq() + 2);
        let mut behind = broker.subscribe(&topics, Some(&seen.to_string())).unwrap();
        broker.publish_system_greeting(state("read-only")).unwrap();
        broker
            .send_direct(&private, 1, Event::new("notification").data("n"))
            .unwrap()
            .expect("a watcher");
        broker.mirror([entry(4), entry(5)]);
        assert_eq!(
            drain_text(&mut behind, 1 << 16),
            format!(
                "event: server.state\ndata: {{\"mode\":\"degraded\"}}\n\n\
                 event: server.state\ndata: {{\"mode\":\"read-only\"}}\n\n\
                 event: notification\ndata: n\n\n\
                 id: {}\ndata: 5\n\n",
                broker.mirrored_id(5)
            )
        );
    }
}
