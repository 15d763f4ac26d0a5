//! A broker whose log mirrors a stream shared by several replicas (the
//! Redis backplane): the stream gives every event its place, the same on
//! every replica, and each replica's reader feeds its own log from it, in
//! stream order, with [`Broker::mirror`].
//!
//! Ids stay one increasing sequence on every connection. A stream entry
//! of seq `S` is `EPOCH-(S << LOCAL_BITS)` here, on every replica alike;
//! the seqs in between are this replica's own frames (its `server.state`
//! events, notifications), which never reach the stream.
//!
//! What can go wrong is never silent:
//! - entries missing from the stream (the reader fell behind what the
//!   stream trimmed) are a lost stretch: every reader positioned before it
//!   is told it lagged, with the count ([`Broker::mirror`] finds them);
//! - a stream that lost its data gets a new epoch: every reader resyncs,
//!   and no id of the old epoch is honoured ([`Broker::mirror_reset`],
//!   also how a mirror first joins the stream, with its retained tail);
//! - an entry this broker refuses (it did not parse, or breaks the rules
//!   of an event) is skipped and counted.

use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;

use super::event::{Event, Topic};
use super::prepared::{Origin, Prepared};
use super::state::{self, State};
use super::Broker;
use crate::sync::{lock, Arc};
use crate::wire::EventId;

/// Bits of a mirrored broker's seq left for its own frames between two
/// stream entries.
pub(crate) const LOCAL_BITS: u32 = 20;
/// The low bits of a seq: which of this replica's own frames it is.
pub(crate) const LOCAL_MASK: u64 = (1 << LOCAL_BITS) - 1;

/// How far ahead of this replica's mirror a client's id may be and still be
/// honoured: another replica's reader may be a little ahead of this one's.
/// The stream entries up to it are skipped when they arrive.
pub(crate) const AHEAD: u64 = 1 << 16;

/// The largest stream seq a mirror takes: its seq here, its own frames
/// after it and an id up to 2^16 entries ahead of it all fit in a `u64`.
/// An entry past it is refused like any entry that breaks the rules.
pub const MAX_STREAM_SEQ: u64 = (u64::MAX >> LOCAL_BITS) - AHEAD - 1;

/// The seq here of the stream entry of seq `stream_seq`.
pub(crate) fn local_seq(stream_seq: u64) -> u64 {
    stream_seq.saturating_mul(1 << LOCAL_BITS)
}

/// The stream seq a seq here falls at or after.
pub(crate) fn stream_seq(seq: u64) -> u64 {
    seq >> LOCAL_BITS
}

/// The least a stream may hold unread of the stream's direct messages
/// before it is cut; the most is an eighth of the retained bytes if larger
/// (1 MiB for the default 8 MiB: a whole per-target share of a mailbox's
/// notifications and as much again of replies).
const MIN_UNREAD_DIRECT: usize = 256 * 1024;

/// One entry of the shared stream, as a backplane's reader read it, for
/// [`Broker::mirror`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirrored {
    /// Its seq in the stream, from 1.
    pub stream_seq: u64,
    /// How long ago it was published (the age bound of retention counts
    /// from then, on every replica alike).
    pub age: Duration,
    /// Its topic, as the stream holds it (checked here).
    pub topic: String,
    /// Its type, `None` for the default `message`.
    pub event_type: Option<String>,
    /// Its payload.
    pub data: Bytes,
    /// A direct message rather than an event: see [`MirroredDirect`].
    pub direct: Option<MirroredDirect>,
}

/// A stream entry that is a direct message (a notification or a reply of a
/// mailbox kept in the shared engine): it takes its place and its id in the
/// stream like any entry, the same on every replica, but it is never
/// retained. It goes to the subscriptions watching its topic (a reserved
/// topic of direct messages) when the entry is mirrored, and never to a
/// reader that joins later: entries of a backfill are skipped, since what
/// a mailbox holds is sent again to a stream as it opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MirroredDirect {
    /// Names the message for taking it back from inboxes unread.
    pub key: u64,
}

impl Mirrored {
    /// The entry checked and encoded as the crate's own event (any size an
    /// entry of the stream has; `max_bytes` bounds what the log retains),
    /// `None` if it is not a valid one.
    fn prepare(self, max_bytes: usize) -> Option<Prepared> {
        let event = Event {
            event_type: self.event_type,
            topic: self.topic,
            data: self.data,
        };
        Prepared::new(event, Origin::Crate, usize::MAX, max_bytes).ok()
    }
}

/// A mirrored broker's place in its stream, in [`BrokerStats`](super::BrokerStats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct MirrorStats {
    /// The stream's epoch, as mirrored.
    pub epoch: u64,
    /// The stream seq mirrored so far.
    pub mirrored: u64,
    /// The stream's last seq, as its reader last saw it.
    pub top: u64,
    /// Entries the mirror is behind the stream's top.
    pub lag: u64,
    /// Times the reader lost the stream and found it again.
    pub reconnects: u64,
    /// Stream entries skipped: not events the broker takes.
    pub skipped: u64,
    /// Stream entries lost to the mirror: trimmed before its reader read
    /// them (every stream that crossed them was told it lagged).
    pub missed: u64,
}

/// What [`Broker::mirror`] made of a batch of stream entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MirrorOutcome {
    /// Entries appended to the log.
    pub appended: usize,
    /// Entries skipped: seen before, or refused (see `skipped`).
    pub duplicates: usize,
    /// Entries refused: not an event this broker takes.
    pub skipped: usize,
    /// Entries that were direct messages (handed to the subscriptions
    /// watching their topic, if any).
    pub direct: usize,
    /// Stream entries missing before an entry (a lost stretch).
    pub missed: u64,
}

impl Broker {
    /// Appends entries of the shared stream, in stream order, to a mirrored
    /// log ([`BrokerBuilder::mirrored`](super::BrokerBuilder::mirrored)),
    /// under one lock. An entry already mirrored is ignored; one after a
    /// hole first records the hole as lost (every reader positioned before
    /// it lags past it); one that is not a valid event is skipped and
    /// counted. A broker that is not a mirror takes nothing.
    ///
    /// This is what a backplane's reader calls; the `redis` feature's
    /// `RedisBackplane` is one.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_sse::broker::Mirrored;
    /// use tower_sse::{Broker, Message, Topics};
    ///
    /// let broker = Broker::builder().epoch(7).mirrored().build();
    /// let mut sub = broker.subscribe(&Topics::parse(["a"]).unwrap(), None).unwrap();
    /// let entry = |seq: u64| Mirrored {
    ///     stream_seq: seq,
    ///     age: Duration::ZERO,
    ///     topic: "a".into(),
    ///     event_type: None,
    ///     data: format!("{seq}").into(),
    ///     direct: None,
    /// };
    /// broker.mirror([entry(1), entry(2)]);
    /// let Some(Message::Event(first)) = sub.try_next() else { panic!() };
    /// assert_eq!(first.id(), broker.mirrored_id(1));
    /// ```
    pub fn mirror(&self, entries: impl IntoIterator<Item = Mirrored>) -> MirrorOutcome {
        self.mirror_with(None, entries)
    }

    /// The shared stream lost its data, or this mirror joins a stream for
    /// the first time (or its place in it can no longer be trusted): the
    /// log starts again under `epoch` with `backfill`, the retained tail of
    /// the stream, in stream order. Every reader made before resyncs to just
    /// after the backfill (it gets what is mirrored later), and no id of
    /// the old epoch is honoured from now on. All under one lock, so that
    /// no reader takes the backfill for news.
    pub fn mirror_reset(
        &self,
        epoch: u64,
        backfill: impl IntoIterator<Item = Mirrored>,
    ) -> MirrorOutcome {
        self.mirror_with(Some(epoch), backfill)
    }

    fn mirror_with(
        &self,
        reset: Option<u64>,
        entries: impl IntoIterator<Item = Mirrored>,
    ) -> MirrorOutcome {
        let mut outcome = MirrorOutcome::default();
        let mut wakers = Vec::new();
        {
            let mut state = lock(&self.shared.state);
            if state.closed || state.mirror.is_none() {
                return outcome;
            }
            if let Some(epoch) = reset {
                state.reset(epoch, &mut wakers);
                // Direct messages of the old epoch's stream that did not
                // reach a stream are gone with it: a stream watching such
                // a topic ends before it shows an id of the new epoch, so
                // none of its ids can stand for them.
                state.cut_direct_watchers(&mut wakers);
                if let Some(mirror) = &mut state.mirror {
                    mirror.stream_seq = 0;
                    mirror.top = 0;
                    mirror.joined = false;
                }
            }
            let now = self.shared.clock.now();
            let mut first = None;
            for entry in entries {
                first.get_or_insert(entry.stream_seq);
                let backfill = reset.is_some();
                self.mirror_one(&mut state, entry, backfill, now, &mut outcome, &mut wakers);
            }
            if reset.is_some() {
                // The backfill is the stream's tail: what came before it
                // never reached this mirror, so no id before it is honoured.
                if let Some(first) = first {
                    state.expire_through(local_seq(first.saturating_sub(1)));
                }
                if let Some(mirror) = &mut state.mirror {
                    mirror.joined = true;
                }
                state.breaks.reset_seq = state.next_seq - 1;
            }
        }
        wakers.into_iter().for_each(Waker::wake);
        outcome
    }

    fn mirror_one(
        &self,
        state: &mut State,
        entry: Mirrored,
        backfill: bool,
        now: Duration,
        outcome: &mut MirrorOutcome,
        wakers: &mut Vec<Waker>,
    ) {
        let Some(mirror) = state.mirror else {
            return;
        };
        if entry.stream_seq <= mirror.stream_seq {
            outcome.duplicates += 1;
            return;
        }
        if entry.stream_seq > MAX_STREAM_SEQ {
            state.skip_mirrored();
            outcome.skipped += 1;
            return;
        }
        // A fresh mirror starts wherever the entries fed to it do; one that
        // joined its stream knows where it stands, even before its first.
        if entry.stream_seq > mirror.stream_seq + 1 && (mirror.stream_seq > 0 || mirror.joined) {
            let missed = entry.stream_seq - mirror.stream_seq - 1;
            state.lose_stretch(local_seq(entry.stream_seq) - 1, missed, wakers);
            // The stretch may have held direct messages: a stream watching
            // such a topic ends rather than show an id past them.
            state.cut_direct_watchers(wakers);
            outcome.missed += missed;
        }
        let seq = local_seq(entry.stream_seq);
        state.next_seq = seq + 1;
        if let Some(mirror) = &mut state.mirror {
            mirror.stream_seq = entry.stream_seq;
            mirror.top = mirror.top.max(entry.stream_seq);
        }
        if let Some(direct) = entry.direct {
            if self.mirror_direct(state, entry, direct, backfill, wakers) {
                outcome.direct += 1;
            } else {
                state.skip_mirrored();
                outcome.skipped += 1;
            }
            return;
        }
        let Ok(topic) = Topic::new(&entry.topic) else {
            state.skip_mirrored();
            outcome.skipped += 1;
            return;
        };
        let at = state::log_time(now, entry.age);
        let limits = &self.shared.limits;
        let Some(prepared) = entry.prepare(limits.max_bytes) else {
            state.skip_mirrored();
            outcome.skipped += 1;
            return;
        };
        let topic_key = state.topic_key(&topic);
        state.take_topic_wakers(topic_key, wakers);
        let entry = prepared.stamp(state.epoch, seq, at, topic_key, topic);
        state.append(Arc::new(entry), limits, now);
        outcome.appended += 1;
    }

    /// Hands a direct message of the stream to the subscriptions watching
    /// its topic (none in a backfill); false if it is not one this broker
    /// takes.
    /// `state`'s seq already stands at the entry's.
    fn mirror_direct(
        &self,
        state: &mut State,
        entry: Mirrored,
        direct: MirroredDirect,
        backfill: bool,
        wakers: &mut Vec<Waker>,
    ) -> bool {
        let topic = match entry.topic.strip_prefix('$') {
            Some(name) if Topic::new(name).is_ok() => Topic::reserved(name),
            _ => return false,
        };
        if !topic.is_direct_only() {
            return false;
        }
        let seq = local_seq(entry.stream_seq);
        let limits = &self.shared.limits;
        let Some(prepared) = entry.prepare(limits.max_bytes) else {
            return false;
        };
        let Some(&topic_key) = state.topic_index.get(&topic).filter(|_| !backfill) else {
            // Nobody here watches it (or it is history): taken, not sent.
            return true;
        };
        let watchers = state.watchers(topic_key);
        if watchers.is_empty() {
            return true;
        }
        state.counters.direct += 1;
        let now = self.shared.clock.now();
        let at = state::log_time(now, Duration::ZERO);
        let entry = Arc::new(prepared.stamp(state.epoch, seq, at, topic_key, topic));
        // What one stream may hold unread of them: a reader that stopped
        // reading is cut past it rather than hold ever more.
        let most = (limits.max_bytes / 8).max(MIN_UNREAD_DIRECT);
        for sub in watchers {
            state.push_direct(sub, direct.key, &entry, wakers);
            let unread: usize = state.subs[sub]
                .inbox
                .iter()
                .map(|d| d.entry.frame.len())
                .sum();
            if unread > most {
                state.cut(sub, wakers);
            }
        }
        true
    }

    /// Records the stream's last seq as the reader saw it, for the lag in
    /// [`MirrorStats`].
    pub fn mirror_top(&self, top: u64) {
        if let Some(mirror) = &mut lock(&self.shared.state).mirror {
            mirror.top = top;
        }
    }

    /// Counts a time the reader lost the stream, for [`MirrorStats`].
    pub fn mirror_reconnecting(&self) {
        if let Some(mirror) = &mut lock(&self.shared.state).mirror {
            mirror.reconnects += 1;
        }
    }

    /// Counts a stream entry its reader skipped before it reached the
    /// broker (one it could not read as an entry at all).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn count_skipped_mirror_entry(&self) {
        lock(&self.shared.state).skip_mirrored();
    }

    /// The epoch and the stream seq the mirror stands at (0: nothing
    /// mirrored yet), `None` for a broker that publishes itself.
    pub fn mirror_position(&self) -> Option<(u64, u64)> {
        let state = lock(&self.shared.state);
        state.mirror.map(|mirror| (state.epoch, mirror.stream_seq))
    }

    /// Stream entries the mirror has not reached yet, as far as its
    /// reader last saw the stream's top.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn mirror_lag(&self) -> u64 {
        lock(&self.shared.state)
            .mirror
            .map_or(0, |mirror| mirror.top.saturating_sub(mirror.stream_seq))
    }

    pub(crate) fn mirror_stats(state: &State) -> Option<MirrorStats> {
        state.mirror.map(|mirror| MirrorStats {
            epoch: state.epoch,
            mirrored: mirror.stream_seq,
            top: mirror.top,
            lag: mirror.top.saturating_sub(mirror.stream_seq),
            reconnects: mirror.reconnects,
            skipped: mirror.skipped,
            missed: state.breaks.gap_missed,
        })
    }

    /// The id, on every replica, of the stream entry of seq `stream_seq` in
    /// the current epoch.
    pub fn mirrored_id(&self, stream_seq: u64) -> EventId {
        EventId::new(self.epoch(), local_seq(stream_seq))
    }
}
