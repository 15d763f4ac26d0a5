//! The sequential model of the broker and the runner that holds a real
//! [`Broker`] against it, operation by operation. Shared by the proptest in
//! `model/local.rs` and the `broker_ops` fuzz target (`fuzz/`, which includes this
//! file with `#[path]`); each only generates the operations.
//!
//! The operations: publish (topic, size), publish a system event,
//! subscribe (topics, kind of resume id), poll, drop, clock advance, close.
//! The runner checks invariants 3 (lag reported with exact counts), 7
//! (retention bounds; resume boundaries) and 8 (topic isolation) of the
//! design, message by message.
//!
//! The model is deliberately naive: it remembers every event ever published
//! and whether it was evicted, and answers each question by scanning.

use std::collections::VecDeque;
use std::time::Duration;

use tower_sse::{Broker, Event, EventId, ManualClock, Message, PublishError, ResyncReason, Topics};

const EPOCH: u64 = 1_000;
pub const TOPICS: [&str; 3] = ["a", "b", "c"];
/// Index of the system topic in the model.
const SYSTEM: usize = 3;
const MAX_AGE: u64 = 30;
/// What the broker charges per event beyond its frame (see `ENTRY_OVERHEAD`
/// and the id headroom in the crate).
const FIXED_COST: usize = 64 + 46;

#[derive(Clone, Debug)]
pub enum Resume {
    None,
    Newest,
    /// The seq just before the oldest retained event.
    OldestMinus(u64),
    Seq(u64),
    ForeignEpoch,
    Garbage,
}

#[derive(Clone, Debug)]
pub enum Op {
    Publish { topic: usize, size: usize },
    PublishSystem,
    Subscribe { topics: u8, resume: Resume },
    Poll { sub: usize, times: usize },
    Drop { sub: usize },
    Advance { secs: u64 },
    Close,
}

#[derive(Clone, Debug)]
struct ModelEvent {
    seq: u64,
    topic: usize,
    at: u64,
    cost: usize,
    data: String,
    evicted: bool,
}

#[derive(Debug)]
struct ModelSub {
    topics: Vec<usize>,
    pos: u64,
    /// A resync to deliver first: `None` or the reason.
    pending: Option<ResyncReason>,
    finished: bool,
}

#[derive(Debug)]
struct Model {
    events: Vec<ModelEvent>,
    retained: VecDeque<usize>,
    bytes: usize,
    now: u64,
    max_events: usize,
    max_bytes: usize,
    closed: bool,
    lagged: u64,
    /// Highest seq evicted from any topic the broker has forgotten (one
    /// that held no events and had no watchers): resuming a topic it does
    /// not know is honoured only from after this.
    forgotten_through: u64,
    known: [bool; 4],
    /// For a known topic, `forgotten_through` when it became known.
    floor: [u64; 4],
    watchers: [usize; 4],
}

impl Model {
    fn next_seq(&self) -> u64 {
        self.events.len() as u64 + 1
    }

    fn evict(&mut self) {
        while let Some(&front) = self.retained.front() {
            let e = &self.events[front];
            let too_old = e.at + MAX_AGE < self.now;
            if self.retained.len() > self.max_events || self.bytes > self.max_bytes || too_old {
                self.retained.pop_front();
                self.bytes -= e.cost;
                self.events[front].evicted = true;
                let topic = self.events[front].topic;
                self.forget_if_idle(topic);
            } else {
                break;
            }
        }
    }

    fn retained_in(&self, topic: usize) -> usize {
        self.retained
            .iter()
            .filter(|&&i| self.events[i].topic == topic)
            .count()
    }

    /// The broker starts holding state for `topic` if it did not.
    fn touch(&mut self, topic: usize) {
        if !self.known[topic] {
            self.known[topic] = true;
            self.floor[topic] = self.forgotten_through;
        }
    }

    fn forget_if_idle(&mut self, topic: usize) {
        if self.known[topic] && self.watchers[topic] == 0 && self.retained_in(topic) == 0 {
            self.known[topic] = false;
            let lost = self
                .events
                .iter()
                .filter(|e| e.topic == topic && e.evicted)
                .map(|e| e.seq)
                .max()
                .unwrap_or(0);
            self.forgotten_through = self.forgotten_through.max(lost);
        }
    }

    fn publish(&mut self, topic: usize, data: String) -> u64 {
        let seq = self.next_seq();
        let event_line = "event: t\n".len();
        let cost = event_line + "data: ".len() + data.len() + 2 + FIXED_COST;
        self.events.push(ModelEvent {
            seq,
            topic,
            at: self.now,
            cost,
            data,
            evicted: false,
        });
        self.touch(topic);
        self.retained.push_back(self.events.len() - 1);
        self.bytes += cost;
        self.evict();
        seq
    }

    /// Whether resuming `topics` from `seq` would lose an event.
    fn lost_after(&self, topics: &[usize], seq: u64) -> bool {
        self.events
            .iter()
            .any(|e| e.evicted && e.seq > seq && topics.contains(&e.topic))
    }

    /// The next message a subscription should yield, advancing it.
    fn next(&mut self, sub: &mut ModelSub) -> Option<Expected> {
        if let Some(reason) = sub.pending.take() {
            return Some(Expected::Resync(reason, sub.pos));
        }
        let lost: Vec<u64> = self
            .events
            .iter()
            .filter(|e| e.evicted && e.seq > sub.pos && sub.topics.contains(&e.topic))
            .map(|e| e.seq)
            .collect();
        if let Some(&through) = lost.iter().max() {
            sub.pos = through;
            self.lagged += lost.len() as u64;
            return Some(Expected::Lagged(lost.len() as u64, through));
        }
        let next = self
            .retained
            .iter()
            .map(|&i| &self.events[i])
            .find(|e| e.seq > sub.pos && sub.topics.contains(&e.topic))?;
        sub.pos = next.seq;
        Some(Expected::Event(next.seq, next.topic, next.data.clone()))
    }
}

#[derive(Debug, PartialEq)]
enum Expected {
    Event(u64, usize, String),
    Lagged(u64, u64),
    Resync(ResyncReason, u64),
}

fn actual(message: Message) -> Expected {
    match message {
        Message::Event(e) => {
            let topic = if e.is_system() {
                SYSTEM
            } else {
                TOPICS
                    .iter()
                    .position(|t| *t == e.topic().as_str())
                    .unwrap()
            };
            Expected::Event(e.id().seq(), topic, e.data().to_owned())
        }
        Message::Lagged {
            missed,
            resume_from,
        } => Expected::Lagged(missed, resume_from.seq()),
        Message::Resync {
            reason,
            resume_from,
        } => Expected::Resync(reason, resume_from.seq()),
    }
}

/// Runs `ops` against a broker retaining at most `max_events` events and
/// `max_bytes` bytes (and 30 s), checking every answer and the counters
/// against the model after each operation; panics at the first difference.
pub fn run(max_events: usize, max_bytes: usize, ops: Vec<Op>) {
    let clock = ManualClock::new();
    let broker = Broker::builder()
        .epoch(EPOCH)
        .retain_events(max_events)
        .retain_bytes(max_bytes)
        .retain_for(Duration::from_secs(MAX_AGE))
        .clock(clock.clone())
        .build();
    let mut model = Model {
        events: Vec::new(),
        retained: VecDeque::new(),
        bytes: 0,
        now: 0,
        max_events,
        max_bytes,
        closed: false,
        lagged: 0,
        forgotten_through: 0,
        known: [false; 4],
        floor: [0; 4],
        watchers: [0; 4],
    };
    let mut subs: Vec<(tower_sse::Subscription, ModelSub)> = Vec::new();

    for op in ops {
        match op {
            Op::Publish { topic, size } => {
                let data = "x".repeat(size);
                let result =
                    broker.publish(Event::new("t").topic(TOPICS[topic]).data(data.clone()));
                let cost = "event: t\ndata: \n\n".len() + size + FIXED_COST;
                if cost > max_bytes {
                    // Could never be retained: refused, nothing changes.
                    assert!(
                        matches!(result, Err(PublishError::TooLarge { .. })),
                        "{result:?}"
                    );
                } else if model.closed {
                    assert_eq!(result, Err(PublishError::Closed));
                } else {
                    let seq = model.publish(topic, data);
                    assert_eq!(result, Ok(EventId::new(EPOCH, seq)));
                }
            }
            Op::PublishSystem => {
                let result = broker.publish_system(Event::new("t").data("sys"));
                if model.closed {
                    assert_eq!(result, Err(PublishError::Closed));
                } else {
                    let seq = model.publish(SYSTEM, "sys".into());
                    assert_eq!(result.unwrap().seq(), seq);
                }
            }
            Op::Subscribe { topics, resume } => {
                let mut indices: Vec<usize> = (0..TOPICS.len())
                    .filter(|i| topics & (1 << i) != 0)
                    .collect();
                let names: Vec<&str> = indices.iter().map(|&i| TOPICS[i]).collect();
                let newest = model.next_seq() - 1;
                let oldest = model
                    .retained
                    .front()
                    .map(|&i| model.events[i].seq)
                    .unwrap_or(model.next_seq());
                let id = match resume {
                    Resume::None => None,
                    Resume::Newest => Some(EventId::new(EPOCH, newest).to_string()),
                    Resume::OldestMinus(k) => {
                        Some(EventId::new(EPOCH, oldest.saturating_sub(k)).to_string())
                    }
                    Resume::Seq(s) => Some(EventId::new(EPOCH, s).to_string()),
                    Resume::ForeignEpoch => Some(EventId::new(EPOCH + 1, newest).to_string()),
                    Resume::Garbage => Some("12-x".to_owned()),
                };
                model.evict();
                let result = broker.subscribe(&Topics::parse(&names).unwrap(), id.as_deref());
                if model.closed {
                    assert!(result.is_err());
                    continue;
                }
                let sub = result.unwrap();
                indices.push(SYSTEM);
                for &t in &indices {
                    model.touch(t);
                    model.watchers[t] += 1;
                }
                let mut model_sub = ModelSub {
                    topics: indices.clone(),
                    pos: newest,
                    pending: None,
                    finished: false,
                };
                if let Some(id) = &id {
                    let verdict = match id.parse::<EventId>() {
                        Err(_) => Err(ResyncReason::Malformed),
                        Ok(id) if id.epoch() != EPOCH => Err(ResyncReason::UnknownEpoch),
                        Ok(id) if id.seq() > newest => Err(ResyncReason::Future),
                        Ok(id) if model.lost_after(&indices, id.seq()) => {
                            Err(ResyncReason::Expired)
                        }
                        // What a forgotten topic lost is unknown: the broker
                        // honours no id from before what it may have lost.
                        Ok(id) if indices.iter().any(|&t| model.floor[t] > id.seq()) => {
                            Err(ResyncReason::Expired)
                        }
                        Ok(id) => Ok(id.seq()),
                    };
                    match verdict {
                        Err(reason) => model_sub.pending = Some(reason),
                        Ok(seq) => model_sub.pos = seq,
                    }
                }
                subs.push((sub, model_sub));
            }
            Op::Poll { sub, times } => {
                if subs.is_empty() {
                    continue;
                }
                let index = sub % subs.len();
                let (real, expected_sub) = &mut subs[index];
                for _ in 0..times {
                    let expected = if expected_sub.finished {
                        None
                    } else {
                        model.next(expected_sub)
                    };
                    let got = real.try_next().map(actual);
                    assert_eq!(got, expected, "sub {index}");
                    if expected.is_none() && model.closed {
                        expected_sub.finished = true;
                        assert!(real.is_finished());
                    }
                }
            }
            Op::Drop { sub } => {
                if subs.is_empty() {
                    continue;
                }
                let (real, model_sub) = subs.remove(sub % subs.len());
                drop(real);
                for &t in &model_sub.topics {
                    model.watchers[t] -= 1;
                    model.forget_if_idle(t);
                }
            }
            Op::Advance { secs } => {
                clock.advance(Duration::from_secs(secs));
                model.now += secs;
            }
            Op::Close => {
                broker.close();
                model.closed = true;
            }
        }

        let stats = broker.stats();
        assert!(stats.retained_events <= max_events);
        assert!(stats.retained_bytes <= max_bytes);
        assert_eq!(stats.subscribers, subs.len());
        assert_eq!(stats.published, model.events.len() as u64);
        assert_eq!(stats.lagged_events, model.lagged);
        // Age eviction is lazy (at the next publish or subscribe; a read
        // takes what is still there), so
        // compare sizes after making the broker catch up.
        broker.evict_expired();
        model.evict();
        let stats = broker.stats();
        assert_eq!(stats.retained_events, model.retained.len());
        assert_eq!(stats.retained_bytes, model.bytes);
        for (i, name) in TOPICS.iter().enumerate() {
            let retained = broker.topic_stats(name).map_or(0, |s| s.retained_events);
            assert_eq!(retained, model.retained_in(i), "topic {name}");
        }
    }
}
