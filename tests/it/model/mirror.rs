//! The broker's mirror mode, what the Redis backplane's reader feeds, held
//! against a simulated stream over random operation sequences. The stream
//! gives each entry a dense seq under an epoch and trims its oldest (never
//! its newest, as Redis's `MAXLEN` does not); the reader feeds the mirror in
//! stream order, across a hole when the stream trimmed what it had not read
//! yet, re-reads what it had read after a reconnect, and (re)joins with the
//! stream's retained tail; the stream may restart without its data.
//! Subscribers open live, with an id some subscriber was given, with the id
//! of another replica whose reader is a little ahead, or with a stale, too
//! far ahead or garbage id, and drain.
//!
//! The model does not predict every message as `local.rs` does: it holds
//! each one against the contract. Events are the stream's own, of the
//! subscriber's topics, in stream order, under `mirrored_id`, each once. A
//! `Lagged` accounts for at least what was missed of its topics, and for
//! exactly what the broker counts: its topics' entries evicted unread plus
//! every entry of a hole, whatever its topic (which topics a hole held is
//! unknown). A reset, or an id that cannot be honoured, is a `Resync`; an
//! id of another epoch is never honoured. Nothing goes missing without one
//! of them, and a drained subscriber has nothing of its topics left behind.
//!
//! Three cases the model found are kept as tests of their own at the end.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use proptest::prelude::*;
use tower_sse::broker::{MirrorOutcome, Mirrored};
use tower_sse::{Broker, EventId, Message, ResyncReason, Subscription, Topics};

use crate::support::broker_model::TOPICS;

/// The stream's first epoch; the broker starts in an epoch of its own, as
/// a real one does, so that its reader joins the stream before reading.
const FIRST_EPOCH: u64 = 7_000;
/// How many stream entries ahead of its mirror a client's id is still
/// honoured, as in the crate: an id further ahead is from the future.
const AHEAD: u64 = 1 << 16;

#[derive(Clone, Debug)]
enum Op {
    /// Entries appended to the stream, one per topic given.
    Publish(Vec<usize>),
    /// The reader reads up to `n` entries after where it stands.
    Read(usize),
    /// The reader reconnects and reads from `back` entries before where it
    /// stands (0: where it stands), up to `back + n` entries.
    Reconnect {
        back: u64,
        n: usize,
    },
    /// The stream trims up to `n` of its oldest entries.
    Trim(usize),
    /// The stream lost its data and starts again under a new epoch; the
    /// reader notices at once, or at its next read.
    Restart {
        noticed: bool,
    },
    /// The reader (re)joins the stream with its retained tail.
    Join,
    Subscribe {
        topics: u8,
        resume: Resume,
    },
    /// Reads up to `max` messages, or until there is none.
    Drain {
        sub: usize,
        max: Option<usize>,
    },
    Drop(usize),
}

#[derive(Clone, Debug)]
enum Resume {
    None,
    /// An id some subscriber was given (index into them, modulo).
    Given(usize),
    /// An id from another replica whose reader stands `by` entries ahead
    /// of this one's: of an entry there, or `off` either side of it (its
    /// own frame after it, a lag that ended before it).
    Ahead {
        by: u64,
        off: i8,
    },
    /// The id of the entry `back` entries before where the mirror stands.
    Stale(u64),
    /// An id further ahead of the mirror than any replica can be.
    FarAhead,
    Garbage,
}

fn op() -> impl Strategy<Value = Op> {
    let resume = prop_oneof![
        2 => Just(Resume::None),
        4 => (0usize..64).prop_map(Resume::Given),
        2 => (1u64..4, -1i8..=1).prop_map(|(by, off)| Resume::Ahead { by, off }),
        2 => (0u64..8).prop_map(Resume::Stale),
        1 => Just(Resume::FarAhead),
        1 => Just(Resume::Garbage),
    ];
    prop_oneof![
        8 => prop::collection::vec(0..TOPICS.len(), 1..5).prop_map(Op::Publish),
        6 => (1usize..8).prop_map(Op::Read),
        2 => (0u64..4, 0usize..4).prop_map(|(back, n)| Op::Reconnect { back, n }),
        4 => (1usize..8).prop_map(Op::Trim),
        1 => any::<bool>().prop_map(|noticed| Op::Restart { noticed }),
        1 => Just(Op::Join),
        4 => (1u8..8, resume).prop_map(|(topics, resume)| Op::Subscribe { topics, resume }),
        8 => (0usize..6, prop::option::of(1usize..4)).prop_map(|(sub, max)| Op::Drain { sub, max }),
        1 => (0usize..6).prop_map(Op::Drop),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn the_mirror_keeps_the_contract_against_a_simulated_stream(
        retain in 1usize..8,
        ops in prop::collection::vec(op(), 1..100),
    ) {
        run(retain, ops);
    }
}

/// The shared stream: every entry of every epoch (its topic), and which of
/// the current epoch's are retained.
struct Stream {
    epoch: u64,
    /// Topic of each entry, by epoch, by seq - 1.
    history: HashMap<u64, Vec<usize>>,
    /// Seq of the oldest entry retained; everything from it to the newest is.
    oldest: u64,
}

impl Stream {
    fn top(&self) -> u64 {
        self.history[&self.epoch].len() as u64
    }

    fn topic(&self, epoch: u64, seq: u64) -> usize {
        self.history[&epoch][(seq - 1) as usize]
    }

    /// The retained entries after `seq`, at most `n`, as the reader gets them.
    fn read_after(&self, seq: u64, n: usize) -> Vec<Mirrored> {
        let epoch = self.epoch;
        (seq.max(self.oldest - 1) + 1..=self.top())
            .take(n)
            .map(|s| entry(epoch, s, self.topic(epoch, s)))
            .collect()
    }
}

fn entry(epoch: u64, seq: u64, topic: usize) -> Mirrored {
    Mirrored {
        stream_seq: seq,
        age: Duration::ZERO,
        topic: TOPICS[topic].into(),
        event_type: None,
        data: data(epoch, seq).into(),
        direct: None,
    }
}

fn data(epoch: u64, seq: u64) -> String {
    format!("{epoch}/{seq}")
}

/// What the broker's log should hold, kept the broker's way: first in,
/// first out, bounded by count.
struct Mirror {
    epoch: u64,
    /// Resets so far (a rejoin in the same epoch is one too).
    resets: u64,
    /// The stream seq mirrored through (0: nothing since the last reset).
    through: u64,
    /// The next entry starts the mirror wherever it is: the first of a
    /// backfill.
    fresh: bool,
    /// Where readers made before the last reset resync to: the end of its
    /// backfill.
    reset_seq: u64,
    /// The stream seq the last reset's backfill started at (0: empty).
    backfill_from: u64,
    /// Local seq and topic of every retained entry.
    log: VecDeque<(u64, usize)>,
    /// Local seq and topic of every entry evicted since the last reset.
    evicted: Vec<(u64, usize)>,
    /// Holes recorded since the last reset: the local seq each ends at and
    /// how many stream entries it held.
    holes: Vec<(u64, u64)>,
    /// Stream entries lost in holes, in every epoch.
    missed: u64,
}

/// A subscriber and what the model knows of it.
struct Sub {
    real: Subscription,
    topics: Vec<usize>,
    /// The mirror's resets when it was made or last resynced.
    resets: u64,
    /// Everything of its topics up to this local seq was delivered or
    /// accounted for.
    pos: u64,
    first: First,
    /// Where a resync decided at subscribe time puts it.
    live: u64,
    /// Its lag counts are predictable exactly: it did not resume ahead of
    /// the mirror (entries it skipped may be counted as missed).
    exact: bool,
    /// The mirror's holes it was told of (index into `Mirror::holes`).
    holes_seen: usize,
    /// The id it resumed from, ahead of the mirror, until a reset.
    ahead_of: Option<u64>,
    /// It was told it lagged since it resumed ahead.
    lagged: bool,
    /// The last event it received in this epoch.
    last_event: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum First {
    Nothing,
    /// The id given at subscribe time cannot be honoured.
    Resync(ResyncReason),
    /// Honoured, or refused as expired: other topics lost events after the
    /// id, and what a topic the broker forgot had lost is unknown to it.
    MaybeExpired,
}

struct Run {
    broker: Broker,
    /// The local seq of stream seq 1.
    spacing: u64,
    retain: usize,
    stream: Stream,
    mirror: Mirror,
    subs: Vec<Sub>,
    /// Ids subscribers were given, for others to resume from.
    given: Vec<EventId>,
    lagged: u64,
}

fn run(retain: usize, ops: Vec<Op>) {
    let broker = Broker::builder()
        .epoch(FIRST_EPOCH - 1)
        .retain_events(retain)
        .retain_forever()
        .mirrored()
        .build();
    let spacing = broker.mirrored_id(1).seq();
    let mut run = Run {
        broker,
        spacing,
        retain,
        stream: Stream {
            epoch: FIRST_EPOCH,
            history: HashMap::from([(FIRST_EPOCH, Vec::new())]),
            oldest: 1,
        },
        mirror: Mirror {
            epoch: FIRST_EPOCH - 1,
            resets: 0,
            through: 0,
            fresh: true,
            reset_seq: 0,
            backfill_from: 0,
            log: VecDeque::new(),
            evicted: Vec::new(),
            holes: Vec::new(),
            missed: 0,
        },
        subs: Vec::new(),
        given: Vec::new(),
        lagged: 0,
    };
    for op in ops {
        run.apply(op);
        run.check_broker();
    }
    for i in 0..run.subs.len() {
        run.drain(i, None);
    }
}

impl Run {
    fn local(&self, stream_seq: u64) -> u64 {
        stream_seq * self.spacing
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Publish(topics) => {
                let history = self.stream.history.get_mut(&self.stream.epoch).unwrap();
                history.extend(topics);
            }
            Op::Read(n) => {
                self.notice_restart();
                let batch = self.stream.read_after(self.mirror.through, n);
                self.mirror(batch);
            }
            Op::Reconnect { back, n } => {
                // Where the reader resumes from after a reconnect: where the
                // mirror stands, or, having lost track of its last reply,
                // a little before (what it reads again is ignored).
                self.notice_restart();
                let from = self.mirror.through.saturating_sub(back);
                let batch = self.stream.read_after(from, back as usize + n);
                self.mirror(batch);
            }
            Op::Trim(n) => {
                // Redis's `MAXLEN` keeps at least the newest entry.
                let top = self.stream.top();
                let mut oldest = (self.stream.oldest + n as u64).min(top.max(1));
                if self.mirror.fresh && self.mirror.epoch == self.stream.epoch {
                    oldest = 1;
                }
                self.stream.oldest = oldest;
            }
            Op::Restart { noticed } => {
                let epoch = self.stream.epoch + 1;
                self.stream.epoch = epoch;
                self.stream.history.insert(epoch, Vec::new());
                self.stream.oldest = 1;
                if noticed {
                    self.join();
                }
            }
            Op::Join => self.join(),
            Op::Subscribe { topics, resume } => self.subscribe(topics, resume),
            Op::Drain { sub, max } => {
                if !self.subs.is_empty() {
                    self.drain(sub % self.subs.len(), max);
                }
            }
            Op::Drop(sub) => {
                if !self.subs.is_empty() {
                    self.subs.remove(sub % self.subs.len());
                }
            }
        }
    }

    /// A reader in another epoch than the stream's joins it before reading.
    fn notice_restart(&mut self) {
        if self.stream.epoch != self.mirror.epoch {
            self.join();
        }
    }

    /// Feeds `batch` to the broker and the model, and compares what the
    /// broker made of it.
    fn mirror(&mut self, batch: Vec<Mirrored>) {
        let mut expected = MirrorOutcome::default();
        for entry in &batch {
            self.mirror_one(entry, &mut expected);
        }
        let outcome = self.broker.mirror(batch);
        assert_eq!(outcome, expected);
    }

    fn mirror_one(&mut self, entry: &Mirrored, outcome: &mut MirrorOutcome) {
        let seq = entry.stream_seq;
        let m = &mut self.mirror;
        if seq <= m.through {
            outcome.duplicates += 1;
            return;
        }
        if !std::mem::take(&mut m.fresh) && seq > m.through + 1 {
            let missed = seq - m.through - 1;
            m.evicted.extend(m.log.drain(..));
            m.holes.push((seq * self.spacing - 1, missed));
            m.missed += missed;
            outcome.missed += missed;
        }
        m.through = seq;
        let topic = TOPICS.iter().position(|t| *t == entry.topic).unwrap();
        m.log.push_back((seq * self.spacing, topic));
        while m.log.len() > self.retain {
            m.evicted.push(m.log.pop_front().unwrap());
        }
        outcome.appended += 1;
    }

    /// The reader joins the stream with its retained tail, as many entries
    /// as the broker retains.
    fn join(&mut self) {
        let top = self.stream.top();
        let from = top.saturating_sub(self.retain as u64);
        let tail = self.stream.read_after(from, self.retain);
        // What the stream retains always ends at its newest entry.
        assert!(tail.last().map_or(top == 0, |e| e.stream_seq == top));
        let m = &mut self.mirror;
        m.epoch = self.stream.epoch;
        m.resets += 1;
        m.through = 0;
        m.log.clear();
        m.evicted.clear();
        m.holes.clear();
        m.fresh = true;
        m.backfill_from = tail.first().map_or(0, |e| e.stream_seq);
        let mut expected = MirrorOutcome::default();
        for entry in &tail {
            self.mirror_one(entry, &mut expected);
        }
        let m = &mut self.mirror;
        m.reset_seq = m.through * self.spacing;
        m.fresh = false;
        let outcome = self.broker.mirror_reset(self.stream.epoch, tail);
        assert_eq!(outcome, expected);
    }

    fn subscribe(&mut self, mask: u8, resume: Resume) {
        let topics: Vec<usize> = (0..TOPICS.len()).filter(|i| mask & (1 << i) != 0).collect();
        let names: Vec<&str> = topics.iter().map(|&i| TOPICS[i]).collect();
        let newest = self.local(self.mirror.through);
        let id = match resume {
            Resume::None => None,
            Resume::Given(_) if self.given.is_empty() => None,
            Resume::Given(i) => Some(self.given[i % self.given.len()]),
            Resume::Ahead { by, off } => {
                // The other replica is in step with the stream, whatever
                // epoch this one is in.
                let stream = &self.stream;
                let base = if stream.epoch == self.mirror.epoch {
                    self.mirror.through
                } else {
                    0
                };
                let seq = self.local((base + by).min(stream.top()));
                let seq = seq.saturating_add_signed(off.into());
                Some(EventId::new(stream.epoch, seq))
            }
            Resume::Stale(back) => Some(EventId::new(
                self.mirror.epoch,
                self.local(self.mirror.through.saturating_sub(back)),
            )),
            Resume::FarAhead => Some(EventId::new(
                self.mirror.epoch,
                self.local(self.mirror.through + AHEAD + 1),
            )),
            Resume::Garbage => None,
        };
        // An id of this epoch from before the backfill: entries the mirror
        // never held come after it.
        let before_backfill = |id: EventId| {
            let from = self.mirror.backfill_from;
            id.epoch() == self.mirror.epoch && from > 1 && id.seq() < self.local(from - 1)
        };
        let text = match resume {
            Resume::Garbage => Some("x-1".to_owned()),
            _ => id.map(|id| id.to_string()),
        };
        let own = |topic: usize| topics.contains(&topic);
        let (first, pos, exact) = match (&resume, id) {
            (Resume::Garbage, _) => (First::Resync(ResyncReason::Malformed), newest, true),
            (_, None) => (First::Nothing, newest, true),
            (_, Some(id)) if id.epoch() != self.mirror.epoch => {
                (First::Resync(ResyncReason::UnknownEpoch), newest, true)
            }
            (_, Some(id)) if id.seq() > newest => {
                // Another replica's own frames after a stream entry mean
                // nothing here: the id stands for that entry.
                let entry = id.seq() / self.spacing * self.spacing;
                if entry / self.spacing > self.mirror.through + AHEAD {
                    (First::Resync(ResyncReason::Future), newest, true)
                } else if entry <= newest {
                    (First::Nothing, newest, true)
                } else {
                    (First::Nothing, entry, false)
                }
            }
            (_, Some(id)) => {
                let q = id.seq();
                let m = &self.mirror;
                let lost_own = m.evicted.iter().any(|&(s, t)| s > q && own(t))
                    || m.holes.iter().any(|&(through, _)| through > q)
                    || before_backfill(id);
                let lost_any = m.evicted.iter().any(|&(s, _)| s > q)
                    || (m.backfill_from > 1 && q < self.local(m.backfill_from) - 1);
                if lost_own {
                    (First::Resync(ResyncReason::Expired), newest, true)
                } else if lost_any {
                    (First::MaybeExpired, q, true)
                } else {
                    (First::Nothing, q, true)
                }
            }
        };
        let real = self
            .broker
            .subscribe(&Topics::parse(&names).unwrap(), text.as_deref())
            .unwrap();
        self.subs.push(Sub {
            real,
            topics,
            resets: self.mirror.resets,
            pos,
            first,
            live: newest,
            exact,
            holes_seen: self.mirror.holes.len(),
            ahead_of: (!exact).then_some(pos),
            lagged: false,
            last_event: 0,
        });
    }

    /// Reads up to `max` messages from subscriber `i` (all there are with
    /// `None`), holding each against the contract.
    fn drain(&mut self, i: usize, max: Option<usize>) {
        let mut read = 0;
        while max.is_none_or(|max| read < max) {
            let Some(message) = self.subs[i].real.try_next() else {
                self.caught_up(i);
                return;
            };
            read += 1;
            self.receive(i, message);
        }
    }

    /// Stream seqs of the mirror's epoch, of `topics`, whose local seq is
    /// in `(after, through]`.
    fn own_between(&self, topics: &[usize], after: u64, through: u64) -> Vec<u64> {
        let Some(history) = self.stream.history.get(&self.mirror.epoch) else {
            return Vec::new();
        };
        let top = history.len() as u64;
        (after / self.spacing + 1..=(through / self.spacing).min(top))
            .filter(|&s| topics.contains(&history[(s - 1) as usize]))
            .collect()
    }

    fn receive(&mut self, i: usize, message: Message) {
        let epoch = self.mirror.epoch;
        let sub = &mut self.subs[i];
        let context = format!("sub {i} on {:?} at {}: {message:?}", sub.topics, sub.pos);

        // A resync decided at subscribe time comes before anything else.
        match std::mem::replace(&mut sub.first, First::Nothing) {
            First::Nothing => {}
            First::Resync(reason) => {
                let Message::Resync {
                    reason: got,
                    resume_from,
                } = message
                else {
                    panic!("{context}: expected a resync ({reason:?}) first");
                };
                assert_eq!(got, reason, "{context}");
                self.resynced_at_subscribe(i, resume_from);
                return;
            }
            First::MaybeExpired => {
                // Otherwise it was honoured (a resync for a reset may
                // follow).
                if let Message::Resync {
                    reason: ResyncReason::Expired,
                    resume_from,
                } = message
                {
                    self.resynced_at_subscribe(i, resume_from);
                    return;
                }
            }
        }

        // Then a reset since it was made or last resynced: a resync to
        // just after the new epoch's backfill, what came since being news.
        if sub.resets != self.mirror.resets {
            let Message::Resync {
                reason,
                resume_from,
            } = message
            else {
                panic!("{context}: expected a resync for the reset");
            };
            assert_eq!(reason, ResyncReason::UnknownEpoch, "{context}");
            let m = &self.mirror;
            let front = m.log.front().map_or(m.through * self.spacing, |e| e.0 - 1);
            assert_eq!(
                resume_from,
                EventId::new(epoch, m.reset_seq.max(front)),
                "{context}"
            );
            sub.resets = m.resets;
            sub.pos = resume_from.seq();
            sub.exact = true;
            sub.ahead_of = None;
            sub.last_event = 0;
            sub.holes_seen = m.holes.len();
            self.given.push(resume_from);
            return;
        }

        match message {
            Message::Resync { .. } => panic!("{context}: a resync out of nowhere"),
            Message::Lagged {
                missed,
                resume_from,
            } => {
                assert_eq!(resume_from.epoch(), epoch, "{context}");
                let to = resume_from.seq();
                let (topics, pos, exact) = (sub.topics.clone(), sub.pos, sub.exact);
                assert!(missed > 0, "{context}");
                assert!(to >= pos, "{context}: the stream went back");
                let lost = self.own_between(&topics, pos, to);
                assert!(
                    missed >= lost.len() as u64,
                    "{context}: missed {lost:?} of its topics"
                );
                let m = &self.mirror;
                if exact {
                    // Its topics' entries evicted unread, and every entry
                    // of the holes since it last heard of one.
                    let own = |t: usize| topics.contains(&t);
                    let evicted = m.evicted.iter().filter(|&&(s, t)| s > pos && own(t));
                    let new_holes = &m.holes[self.subs[i].holes_seen..];
                    let expected_missed = evicted.clone().count() as u64
                        + new_holes.iter().map(|&(_, n)| n).sum::<u64>();
                    assert_eq!(missed, expected_missed, "{context}");
                    let expected_to = evicted
                        .map(|&(s, _)| s)
                        .chain(new_holes.iter().map(|&(through, _)| through))
                        .fold(pos, u64::max);
                    assert_eq!(to, expected_to, "{context}");
                    assert!(to > pos, "{context}");
                }
                let sub = &mut self.subs[i];
                sub.holes_seen = m.holes.len();
                sub.pos = to;
                sub.lagged = true;
                self.lagged += missed;
                self.given.push(resume_from);
            }
            Message::Event(event) => {
                let id = event.id();
                assert_eq!(id.epoch(), epoch, "{context}");
                let seq = id.seq() / self.spacing;
                assert_eq!(id, self.broker.mirrored_id(seq), "{context}");
                let topic = TOPICS
                    .iter()
                    .position(|t| *t == event.topic().as_str())
                    .unwrap();
                assert_eq!(self.stream.topic(epoch, seq), topic, "{context}");
                assert_eq!(event.data(), data(epoch, seq), "{context}");
                let (topics, pos) = (sub.topics.clone(), sub.pos);
                assert!(topics.contains(&topic), "{context}: not its topic");
                assert!(id.seq() > sub.last_event, "{context}: out of order");
                sub.last_event = id.seq();
                assert!(id.seq() > pos, "{context}: seen already, or out of order");
                let skipped = self.own_between(&topics, pos, id.seq() - 1);
                assert!(
                    skipped.is_empty(),
                    "{context}: silently skipped stream entries {skipped:?}"
                );
                self.subs[i].pos = id.seq();
                self.given.push(id);
            }
        }
    }

    fn resynced_at_subscribe(&mut self, i: usize, resume_from: EventId) {
        let sub = &mut self.subs[i];
        // The resync is decided against the epoch the subscription was
        // made in; the one it names is that epoch's newest then.
        assert_eq!(resume_from.seq(), sub.live, "sub {i}");
        sub.pos = sub.live;
        sub.exact = true;
        self.given.push(resume_from);
    }

    /// Subscriber `i` has nothing more to read: everything of its topics
    /// mirrored so far was delivered or accounted for.
    fn caught_up(&mut self, i: usize) {
        let sub = &mut self.subs[i];
        assert!(
            matches!(sub.first, First::Nothing | First::MaybeExpired),
            "sub {i}: its resync ({:?}) never came",
            sub.first
        );
        sub.first = First::Nothing;
        assert_eq!(
            sub.resets, self.mirror.resets,
            "sub {i}: no resync for the reset"
        );
        let (topics, pos) = (sub.topics.clone(), sub.pos);
        let behind = self.own_between(&topics, pos, self.local(self.mirror.through));
        assert!(
            behind.is_empty(),
            "sub {i} on {topics:?} at {pos}: stream entries {behind:?} neither delivered nor accounted for"
        );
    }

    fn check_broker(&self) {
        assert_eq!(
            self.broker.mirror_position(),
            Some((self.mirror.epoch, self.mirror.through))
        );
        let stats = self.broker.stats();
        let mirror = stats.mirror.expect("a mirror");
        assert_eq!(
            (mirror.epoch, mirror.mirrored, mirror.missed, mirror.skipped),
            (
                self.mirror.epoch,
                self.mirror.through,
                self.mirror.missed,
                0
            )
        );
        assert_eq!(stats.retained_events, self.mirror.log.len());
        assert_eq!(stats.subscribers, self.subs.len());
        assert_eq!(stats.lagged_events, self.lagged);
    }
}

// Cases the model found in the broker, one test each.

fn sub_of_a(broker: &Broker, resume: Option<EventId>) -> Subscription {
    let resume = resume.map(|id| id.to_string());
    broker
        .subscribe(&Topics::parse(["a"]).unwrap(), resume.as_deref())
        .unwrap()
}

fn entries_of_a(epoch: u64, seqs: impl IntoIterator<Item = u64>) -> Vec<Mirrored> {
    seqs.into_iter().map(|seq| entry(epoch, seq, 0)).collect()
}

fn drained(sub: &mut Subscription) -> Vec<Message> {
    std::iter::from_fn(|| sub.try_next()).collect()
}

/// The stream restarted without its data; the reader joined it while it
/// was empty, and entries 1 and 2 were trimmed before its first read. A
/// reader made after the reset must be told it lagged.
#[test]
fn a_hole_before_the_first_entry_after_an_empty_reset_is_reported() {
    let broker = Broker::builder().epoch(1).mirrored().build();
    broker.mirror_reset(2, []);
    let mut sub = sub_of_a(&broker, None);
    let outcome = broker.mirror(entries_of_a(2, [3]));
    let got = drained(&mut sub);
    assert!(
        matches!(got.first(), Some(Message::Lagged { missed: 2.., .. })),
        "{outcome:?} {got:?}"
    );
}

/// The stream held entries 1 to 4; the reader joined it with its newest
/// two. A client that saw entry 1 (on another replica) cannot be given
/// entry 3 next: entry 2 never reached this mirror.
#[test]
fn an_id_from_before_the_backfill_is_not_honoured() {
    let broker = Broker::builder()
        .epoch(1)
        .retain_events(2)
        .mirrored()
        .build();
    broker.mirror_reset(5, entries_of_a(5, [3, 4]));
    let mut sub = sub_of_a(&broker, Some(broker.mirrored_id(1)));
    let got = drained(&mut sub);
    assert!(
        matches!(
            got.first(),
            Some(Message::Resync {
                reason: ResyncReason::Expired,
                ..
            })
        ),
        "{got:?}"
    );
}

/// A client that saw entries 1 to 3 on a replica ahead of this one resumes
/// here while this mirror stands at 1; the reader then mirrors 2 to 6 in
/// two batches, and entry 2 is evicted before the client reads. Entries 2
/// and 3 were seen already: neither is missed nor sent again.
#[test]
fn entries_seen_ahead_stay_skipped_when_an_eviction_passes_them() {
    let broker = Broker::builder()
        .epoch(1)
        .retain_events(4)
        .mirrored()
        .build();
    broker.mirror_reset(9, entries_of_a(9, [1]));
    let seen = broker.mirrored_id(3);
    let mut sub = sub_of_a(&broker, Some(seen));
    broker.mirror(entries_of_a(9, 2..=4));
    broker.mirror(entries_of_a(9, 5..=6));
    let got = drained(&mut sub);
    let ids: Vec<EventId> = got
        .iter()
        .filter_map(|m| match m {
            Message::Event(event) => Some(event.id()),
            _ => None,
        })
        .collect();
    assert_eq!(
        ids,
        [
            broker.mirrored_id(4),
            broker.mirrored_id(5),
            broker.mirrored_id(6)
        ],
        "{got:?}"
    );
    assert!(
        got.iter().all(|m| matches!(m, Message::Event(_))),
        "{got:?}"
    );
}

/// An entry whose seq leaves no room for its id (a foreign tool's, say) is
/// refused and counted, never a panic or a wrapped seq.
#[test]
fn an_entry_past_the_largest_seq_is_refused() {
    let broker = Broker::builder().epoch(1).mirrored().build();
    broker.mirror_reset(3, entries_of_a(3, [1]));
    let mut sub = sub_of_a(&broker, None);
    for seq in [tower_sse::broker::MAX_STREAM_SEQ + 1, u64::MAX] {
        let outcome = broker.mirror([entry(3, seq, 0)]);
        assert_eq!(outcome.skipped, 1, "{seq}");
    }
    assert_eq!(broker.stats().mirror.unwrap().skipped, 2);
    assert!(drained(&mut sub).is_empty());
    let outcome = broker.mirror(entries_of_a(3, [2]));
    assert_eq!(outcome.appended, 1);
    let got = drained(&mut sub);
    assert!(
        matches!(&got[..], [Message::Event(e)] if e.id() == broker.mirrored_id(2)),
        "{got:?}"
    );
}
