//! The mailbox held against a model over random sequences of send, open,
//! read, close, reply, ack and clock advance (fake clock), with every bound
//! in counts and in bytes, plus the cases a random walk rarely reaches.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use proptest::prelude::*;
use tower_sse::mailbox::{
    Connection, Mailbox, Notification, ReplyError, SendError, TraceId, RECORD_OVERHEAD,
};
use tower_sse::{Broker, ManualClock, Message, Subscription};

use crate::support::mailbox_bounds::{
    bounded, CAPACITY, CAPACITY_BYTES, CLIENTS, EPOCH, PER_SENDER, PER_SENDER_BYTES, PER_TARGET,
    PER_TARGET_BYTES, RETRY_AFTER,
};

#[derive(Clone, Debug)]
enum Op {
    Send {
        to: usize,
        from: usize,
        reply: bool,
        ttl: u64,
        pad: usize,
    },
    Open {
        client: usize,
        /// Which earlier stream of the client the new one resumes from, as
        /// a tab reconnecting with its `Last-Event-ID`.
        resume: Option<usize>,
    },
    Read {
        conn: usize,
    },
    Close {
        conn: usize,
    },
    Reply {
        record: usize,
        by: usize,
        pad: usize,
    },
    Ack {
        record: usize,
        by: usize,
    },
    Advance {
        secs: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..3usize, any::<bool>(), 1..60u64, 0..200usize)
            .prop_map(|(to, from, reply, ttl, pad)| Op::Send { to, from, reply, ttl, pad }),
        3 => (0..3usize, proptest::option::of(0..8usize))
            .prop_map(|(client, resume)| Op::Open { client, resume }),
        4 => (0..6usize).prop_map(|conn| Op::Read { conn }),
        2 => (0..6usize).prop_map(|conn| Op::Close { conn }),
        2 => (0..12usize, 0..3usize, 0..400usize)
            .prop_map(|(record, by, pad)| Op::Reply { record, by, pad }),
        1 => (0..12usize, 0..3usize).prop_map(|(record, by)| Op::Ack { record, by }),
        2 => (0..30u64).prop_map(|secs| Op::Advance { secs }),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Notification,
    Reply,
}

impl Kind {
    fn event_type(self) -> &'static str {
        match self {
            Kind::Notification => "notification",
            Kind::Reply => "notification.reply",
        }
    }
}

/// Where a notification or its reply went: the newest frame to any stream
/// and the newest to every stream open then.
#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    last: Option<u64>,
    to_all: Option<u64>,
}

#[derive(Debug)]
struct Rec {
    trace: TraceId,
    to: usize,
    from: usize,
    expects_reply: bool,
    expires_at: u64,
    /// What the notification counts, and its reply.
    cost: usize,
    reply_cost: usize,
    delivered: bool,
    replied: bool,
    sent: Sent,
    reply_sent: Sent,
    reply_seen: bool,
    gone: bool,
}

struct Conn {
    sub: Subscription,
    _connection: Connection,
    client: usize,
    /// Its place in the model's `positions` of its client.
    slot: usize,
    /// The last id it read (or resumed from): what its tab would send as
    /// `Last-Event-ID`.
    position: Option<u64>,
    /// Frames sent to it and not yet read: (seq, kind, record).
    expected: VecDeque<(u64, Kind, usize)>,
    /// Every frame it ever got, to check it gets each at most once.
    got: HashSet<(Kind, usize)>,
}

#[derive(Default)]
struct Model {
    recs: Vec<Rec>,
    queues: [VecDeque<usize>; 3],
    seq: u64,
    now: u64,
    /// Positions of every stream each client had, in opening order.
    positions: [Vec<Option<u64>>; 3],
    /// Records in the order they became finished (delivered, and not
    /// expecting a reply or its reply seen): what a full mailbox forgets
    /// first; and the same per sender.
    finished: VecDeque<usize>,
    finished_by_sender: [VecDeque<usize>; 3],
    /// Per sender, replied records whose reply it has not shown it got.
    unseen_replies: [Vec<usize>; 3],
}

impl Model {
    fn held(&self) -> impl Iterator<Item = &Rec> + Clone {
        self.recs.iter().filter(|r| !r.gone)
    }

    fn bytes(&self) -> usize {
        self.held().map(|r| r.cost + r.reply_cost).sum()
    }

    fn is_finished(&self, i: usize) -> bool {
        let rec = &self.recs[i];
        rec.delivered && (!rec.expects_reply || rec.reply_seen)
    }

    fn note_if_finished(&mut self, i: usize) {
        if self.is_finished(i) {
            self.finished.push_back(i);
            self.finished_by_sender[self.recs[i].from].push_back(i);
        }
    }

    /// Takes back the unread frames of `kind` for record `i`.
    fn retract(conns: &mut [Conn], kind: Kind, i: usize) {
        for conn in conns.iter_mut() {
            conn.expected.retain(|f| (f.1, f.2) != (kind, i));
        }
    }

    fn deliver(&mut self, conns: &mut [Conn], i: usize) {
        if !self.recs[i].delivered {
            self.recs[i].delivered = true;
            Self::retract(conns, Kind::Notification, i);
            self.note_if_finished(i);
        }
    }

    fn reply_seen(&mut self, conns: &mut [Conn], i: usize) {
        self.recs[i].reply_seen = true;
        Self::retract(conns, Kind::Reply, i);
        self.note_if_finished(i);
    }

    fn forget(&mut self, conns: &mut [Conn], i: usize) {
        let rec = &mut self.recs[i];
        if rec.gone {
            return;
        }
        rec.gone = true;
        let (to, from) = (rec.to, rec.from);
        self.queues[to].retain(|&j| j != i);
        self.unseen_replies[from].retain(|&j| j != i);
        Self::retract(conns, Kind::Notification, i);
        Self::retract(conns, Kind::Reply, i);
    }

    /// Forgets the oldest finished records (of `sender` only, if given)
    /// until `count` of them and `bytes` bytes are freed.
    fn forget_finished(
        &mut self,
        conns: &mut [Conn],
        mut count: usize,
        mut bytes: usize,
        sender: Option<usize>,
    ) {
        while count > 0 || bytes > 0 {
            let popped = match sender {
                Some(s) => self.finished_by_sender[s].pop_front(),
                None => self.finished.pop_front(),
            };
            let Some(i) = popped else {
                return;
            };
            if self.recs[i].gone || !self.is_finished(i) {
                continue;
            }
            let cost = self.recs[i].cost + self.recs[i].reply_cost;
            self.forget(conns, i);
            count = count.saturating_sub(1);
            bytes = bytes.saturating_sub(cost);
        }
    }

    fn sender_over(&self, sender: usize, count: usize, bytes: usize) -> (usize, usize) {
        let mine = self.held().filter(|r| r.from == sender);
        let (held, held_bytes) = mine.fold((0, 0), |(n, b), r| (n + 1, b + r.cost + r.reply_cost));
        (
            (held + count).saturating_sub(PER_SENDER),
            (held_bytes + bytes).saturating_sub(PER_SENDER_BYTES),
        )
    }

    fn sender_has_room(
        &mut self,
        conns: &mut [Conn],
        sender: usize,
        count: usize,
        bytes: usize,
    ) -> bool {
        let (count_over, bytes_over) = self.sender_over(sender, count, bytes);
        if (count_over, bytes_over) == (0, 0) {
            return true;
        }
        self.forget_finished(conns, count_over, bytes_over, Some(sender));
        self.sender_over(sender, count, bytes) == (0, 0)
    }

    fn purge(&mut self, conns: &mut [Conn]) {
        for i in 0..self.recs.len() {
            if !self.recs[i].gone && self.recs[i].expires_at <= self.now {
                self.forget(conns, i);
            }
        }
    }

    /// Sends a frame of `kind` for record `i` to every open stream of
    /// `client` (`one: None`) or to stream `one`.
    fn send(
        &mut self,
        conns: &mut [Conn],
        client: usize,
        kind: Kind,
        i: usize,
        one: Option<usize>,
    ) {
        let targets: Vec<usize> = match one {
            Some(c) => vec![c],
            None => (0..conns.len())
                .filter(|&c| conns[c].client == client)
                .collect(),
        };
        if targets.is_empty() {
            return;
        }
        self.seq += 1;
        for c in targets {
            conns[c].expected.push_back((self.seq, kind, i));
        }
        let sent = match kind {
            Kind::Notification => &mut self.recs[i].sent,
            Kind::Reply => &mut self.recs[i].reply_sent,
        };
        sent.last = sent.last.max(Some(self.seq));
        if one.is_none() {
            sent.to_all = sent.to_all.max(Some(self.seq));
        }
    }
}

fn payload(n: usize, pad: usize) -> serde_json::Value {
    serde_json::json!({"n": n, "pad": "x".repeat(pad)})
}

fn json_len(value: &serde_json::Value) -> usize {
    serde_json::to_vec(value).unwrap().len()
}

fn run(ops: Vec<Op>) {
    let clock = ManualClock::new();
    let broker = Broker::builder()
        .epoch(EPOCH)
        .retain_events(100_000)
        .retain_forever()
        .build();
    let mailbox = bounded(Mailbox::builder(broker.clone()), &clock).build();
    let mut model = Model::default();
    let mut conns: Vec<Conn> = Vec::new();

    for op in ops {
        match op {
            Op::Send {
                to,
                from,
                reply,
                ttl,
                pad,
            } => {
                let value = payload(model.recs.len(), pad);
                let cost =
                    RECORD_OVERHEAD + CLIENTS[to].len() + CLIENTS[from].len() + json_len(&value);
                model.purge(&mut conns);
                let mut notification = Notification::to(CLIENTS[to])
                    .from(CLIENTS[from])
                    .json(&value)
                    .unwrap()
                    .ttl(Duration::from_secs(ttl));
                if reply {
                    notification = notification.expects_reply();
                }
                let result = mailbox.send(notification);
                if !model.sender_has_room(&mut conns, from, 1, cost) {
                    assert_eq!(
                        result,
                        Err(SendError::SenderOverShare {
                            retry_after: RETRY_AFTER
                        })
                    );
                    continue;
                }
                // The target's oldest go to make room for it.
                let mut drop = Vec::new();
                let (mut count, mut bytes) = (
                    model.queues[to].len() + 1,
                    model.queues[to]
                        .iter()
                        .map(|&i| model.recs[i].cost)
                        .sum::<usize>()
                        + cost,
                );
                for &i in &model.queues[to] {
                    if count <= PER_TARGET && bytes <= PER_TARGET_BYTES {
                        break;
                    }
                    count -= 1;
                    bytes -= model.recs[i].cost;
                    drop.push(i);
                }
                let over = |model: &Model| {
                    let live = drop.iter().filter(|&&i| !model.recs[i].gone);
                    let freed: usize = live
                        .clone()
                        .map(|&i| model.recs[i].cost + model.recs[i].reply_cost)
                        .sum();
                    let count = model.held().count() + 1 - live.count();
                    let bytes = model.bytes() + cost - freed;
                    (
                        count.saturating_sub(CAPACITY),
                        bytes.saturating_sub(CAPACITY_BYTES),
                    )
                };
                let (count_over, bytes_over) = over(&model);
                if count_over > 0 || bytes_over > 0 {
                    model.forget_finished(&mut conns, count_over, bytes_over, None);
                    if over(&model) != (0, 0) {
                        assert_eq!(
                            result,
                            Err(SendError::Full {
                                retry_after: RETRY_AFTER
                            })
                        );
                        continue;
                    }
                }
                for i in drop {
                    model.forget(&mut conns, i);
                }
                let trace = result.unwrap();
                let index = model.recs.len();
                model.recs.push(Rec {
                    trace,
                    to,
                    from,
                    expects_reply: reply,
                    expires_at: model.now + ttl,
                    cost,
                    reply_cost: 0,
                    delivered: false,
                    replied: false,
                    sent: Sent::default(),
                    reply_sent: Sent::default(),
                    reply_seen: false,
                    gone: false,
                });
                model.queues[to].push_back(index);
                model.send(&mut conns, to, Kind::Notification, index, None);
            }
            Op::Open { client, resume } => {
                if conns.len() >= 6 {
                    continue;
                }
                let resume_id = resume.and_then(|r| {
                    let positions = &model.positions[client];
                    (!positions.is_empty())
                        .then(|| positions[r % positions.len()])
                        .flatten()
                });
                let resume_str = resume_id.map(|seq| format!("{EPOCH}-{seq}"));
                let (sub, connection) = mailbox
                    .subscribe(CLIENTS[client], resume_str.as_deref())
                    .unwrap();
                model.purge(&mut conns);
                conns.push(Conn {
                    sub,
                    _connection: connection,
                    client,
                    slot: model.positions[client].len(),
                    position: resume_id,
                    expected: VecDeque::new(),
                    got: HashSet::new(),
                });
                model.positions[client].push(resume_id);
                let c = conns.len() - 1;
                let seam = Some(model.seq);
                let queue: Vec<usize> = model.queues[client].iter().copied().collect();
                for i in queue {
                    if model.recs[i].delivered {
                        continue;
                    }
                    let sent = model.recs[i].sent;
                    if sent.last.is_some() && sent.last <= resume_id {
                        model.deliver(&mut conns, i);
                    } else if sent.to_all <= seam {
                        model.send(&mut conns, client, Kind::Notification, i, Some(c));
                    }
                }
                // Then replies to what this client sent, the same way.
                let replies = std::mem::take(&mut model.unseen_replies[client]);
                for i in replies {
                    if model.recs[i].gone {
                        continue;
                    }
                    let sent = model.recs[i].reply_sent;
                    if sent.last.is_some() && sent.last <= resume_id {
                        model.reply_seen(&mut conns, i);
                        continue;
                    }
                    if sent.to_all <= seam {
                        model.send(&mut conns, client, Kind::Reply, i, Some(c));
                    }
                    model.unseen_replies[client].push(i);
                }
            }
            Op::Read { conn } => {
                if conns.is_empty() {
                    continue;
                }
                let index = conn % conns.len();
                let conn = &mut conns[index];
                while let Some(message) = conn.sub.try_next() {
                    let Message::Event(event) = message else {
                        panic!("unexpected {message:?}");
                    };
                    let data: serde_json::Value = serde_json::from_str(event.data()).unwrap();
                    let got = (
                        event.id().seq(),
                        event.event_type().to_owned(),
                        data["trace"].as_str().unwrap().to_owned(),
                    );
                    let (seq, kind, i) = conn
                        .expected
                        .pop_front()
                        .unwrap_or_else(|| panic!("unexpected frame {got:?}"));
                    let trace = model.recs[i].trace.to_string();
                    assert_eq!(got, (seq, kind.event_type().to_owned(), trace));
                    assert!(
                        conn.got.insert((kind, i)),
                        "{kind:?} of {i} twice on one stream"
                    );
                    conn.position = Some(seq);
                }
                assert!(
                    conn.expected.is_empty(),
                    "frames missing: {:?}",
                    conn.expected
                );
                model.positions[conn.client][conn.slot] = conn.position;
            }
            Op::Close { conn } => {
                if !conns.is_empty() {
                    let index = conn % conns.len();
                    conns.remove(index);
                }
            }
            Op::Reply { record, by, pad } => {
                if model.recs.is_empty() {
                    continue;
                }
                let i = record % model.recs.len();
                let value = serde_json::json!(format!("ok{}", "y".repeat(pad)));
                let reply_cost = CLIENTS[by].len() + json_len(&value);
                let trace = model.recs[i].trace.clone();
                let result = mailbox.reply(&trace, CLIENTS[by], &value);
                let rec = &model.recs[i];
                let expected = if rec.gone {
                    Err(ReplyError::NotFound)
                } else if rec.to != by {
                    Err(ReplyError::NotTarget)
                } else if rec.expires_at <= model.now {
                    Err(ReplyError::Expired)
                } else if !rec.expects_reply {
                    Err(ReplyError::NoReplyExpected)
                } else if rec.replied {
                    Err(ReplyError::AlreadyReplied)
                } else {
                    let from = rec.from;
                    let room = model.sender_has_room(&mut conns, from, 0, reply_cost) && {
                        let over = (model.bytes() + reply_cost).saturating_sub(CAPACITY_BYTES);
                        if over > 0 {
                            model.forget_finished(&mut conns, 0, over, None);
                        }
                        model.bytes() + reply_cost <= CAPACITY_BYTES
                    };
                    if room {
                        Ok(())
                    } else {
                        Err(ReplyError::Full {
                            retry_after: RETRY_AFTER,
                        })
                    }
                };
                assert_eq!(result.as_ref().map(|_| ()).map_err(Clone::clone), expected);
                if let Ok(status) = result {
                    assert!(status.replied && status.delivered);
                    let from = model.recs[i].from;
                    model.recs[i].replied = true;
                    model.recs[i].reply_cost = reply_cost;
                    model.deliver(&mut conns, i);
                    model.unseen_replies[from].push(i);
                    // To the sender's open streams; an offline sender
                    // gets it when it connects.
                    model.send(&mut conns, from, Kind::Reply, i, None);
                }
            }
            Op::Ack { record, by } => {
                if model.recs.is_empty() {
                    continue;
                }
                let i = record % model.recs.len();
                model.purge(&mut conns);
                let trace = model.recs[i].trace.clone();
                let expected = !model.recs[i].gone && model.recs[i].to == by;
                assert_eq!(mailbox.ack(&trace, CLIENTS[by]), expected);
                if expected {
                    model.deliver(&mut conns, i);
                }
            }
            Op::Advance { secs } => {
                clock.advance(Duration::from_secs(secs));
                model.now += secs;
            }
        }

        // Every view of every notification agrees with the model.
        model.purge(&mut conns);
        for rec in &model.recs {
            let status = mailbox.status(&rec.trace);
            if rec.gone {
                assert!(status.is_none(), "{:?} should be gone", rec.trace);
                continue;
            }
            let status = status.unwrap_or_else(|| panic!("{:?} lost", rec.trace));
            assert_eq!(status.to, CLIENTS[rec.to]);
            assert_eq!(status.from, CLIENTS[rec.from]);
            assert_eq!(status.delivered, rec.delivered, "{:?}", rec.trace);
            assert_eq!(status.replied, rec.replied);
            // Only the sender and the target see it.
            for (c, name) in CLIENTS.iter().enumerate() {
                let visible = mailbox.status_for(&rec.trace, name).is_some();
                assert_eq!(visible, c == rec.to || c == rec.from);
            }
        }
        let stats = mailbox.stats();
        assert_eq!(stats.held, model.held().count());
        assert_eq!(stats.bytes, model.bytes());
        assert!(stats.held <= CAPACITY && stats.bytes <= CAPACITY_BYTES);
        for c in 0..3 {
            let to_c = model.held().filter(|r| r.to == c);
            assert!(to_c.clone().count() <= PER_TARGET);
            assert!(to_c.map(|r| r.cost).sum::<usize>() <= PER_TARGET_BYTES);
            let from_c = model.held().filter(|r| r.from == c);
            assert!(from_c.clone().count() <= PER_SENDER);
            assert!(from_c.map(|r| r.cost + r.reply_cost).sum::<usize>() <= PER_SENDER_BYTES);
        }
        // Nothing waits in an inbox that no stream of the model expects.
        if conns.iter().all(|c| c.expected.is_empty()) {
            assert_eq!(broker.stats().direct_bytes, 0);
        }
        // Notifications never take a place in the replay log.
        assert_eq!(broker.stats().retained_events, 0);
    }

    // Nothing unconfirmed is lost: a fresh stream of each client gets every
    // one of them.
    drop(conns);
    assert_eq!(broker.stats().direct_bytes, 0, "inboxes leaked");
    for (c, name) in CLIENTS.iter().enumerate() {
        let (mut sub, _connection) = mailbox.subscribe(name, None).unwrap();
        let mut got = Vec::new();
        while let Some(Message::Event(event)) = sub.try_next() {
            let data: serde_json::Value = serde_json::from_str(event.data()).unwrap();
            got.push((
                event.event_type().to_owned(),
                data["trace"].as_str().unwrap().to_owned(),
            ));
        }
        // Its unconfirmed notifications, then the replies it has not seen.
        let notifications = model.queues[c]
            .iter()
            .filter(|&&i| !model.recs[i].delivered)
            .map(|&i| (Kind::Notification, i));
        let replies = model.unseen_replies[c]
            .iter()
            .filter(|&&i| !model.recs[i].gone && !model.recs[i].reply_seen)
            .map(|&i| (Kind::Reply, i));
        let expected: Vec<(String, String)> = notifications
            .chain(replies)
            .map(|(kind, i)| {
                (
                    kind.event_type().to_owned(),
                    model.recs[i].trace.to_string(),
                )
            })
            .collect();
        assert_eq!(got, expected, "client {name}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mailbox_matches_the_model(ops in prop::collection::vec(op(), 1..80)) {
        run(ops);
    }
}

fn mailbox_with_clock() -> (Mailbox, ManualClock) {
    let clock = ManualClock::new();
    let mailbox = Mailbox::builder(Broker::builder().epoch(EPOCH).build())
        .ttl(Duration::from_secs(60))
        .clock(clock.clone())
        .build();
    (mailbox, clock)
}

#[test]
fn a_reply_after_expiry_is_refused_as_expired_until_purged() {
    let (mailbox, clock) = mailbox_with_clock();
    let trace = mailbox
        .send(
            Notification::to("bob")
                .from("ann")
                .json(&"q?")
                .unwrap()
                .expects_reply(),
        )
        .unwrap();
    clock.advance(Duration::from_secs(61));
    assert_eq!(mailbox.reply(&trace, "bob", "a"), Err(ReplyError::Expired));
    assert_eq!(mailbox.purge_expired(), 1);
    assert_eq!(mailbox.reply(&trace, "bob", "a"), Err(ReplyError::NotFound));
    assert!(mailbox.status(&trace).is_none());
}

#[test]
fn a_full_mailbox_forgets_finished_notifications_first() {
    let mailbox = Mailbox::builder(Broker::new()).capacity(3).build();
    let asked = mailbox
        .send(
            Notification::to("bob")
                .from("ann")
                .json(&"q?")
                .unwrap()
                .expects_reply(),
        )
        .unwrap();
    let told = mailbox
        .send(Notification::to("bob").from("ann").json(&"fyi").unwrap())
        .unwrap();
    let pending = mailbox
        .send(Notification::to("cy").from("ann").json(&"later").unwrap())
        .unwrap();
    assert_eq!(
        mailbox.send(Notification::to("dan").from("ann").json(&"x").unwrap()),
        Err(SendError::Full {
            retry_after: tower_sse::mailbox::DEFAULT_RETRY_AFTER
        })
    );

    // Delivered but awaiting its reply: still live, still counted.
    assert!(mailbox.ack(&asked, "bob"));
    assert_eq!(
        mailbox.send(Notification::to("dan").from("ann").json(&"x").unwrap()),
        Err(SendError::Full {
            retry_after: tower_sse::mailbox::DEFAULT_RETRY_AFTER
        })
    );
    // Delivered and expecting nothing: room is made by forgetting it.
    assert!(mailbox.ack(&told, "bob"));
    let first = mailbox
        .send(Notification::to("dan").from("ann").json(&"x").unwrap())
        .unwrap();
    assert!(mailbox.status(&told).is_none());
    assert_eq!(mailbox.stats().forgotten, 1);
    assert_eq!(mailbox.stats().held, 3);
    // Replied, but the sender has not seen the reply: held for it.
    mailbox.reply(&asked, "bob", "yes").unwrap();
    assert_eq!(
        mailbox.send(Notification::to("dan").from("ann").json(&"y").unwrap()),
        Err(SendError::Full {
            retry_after: tower_sse::mailbox::DEFAULT_RETRY_AFTER
        })
    );
    // The sender connects and is sent the reply; reconnecting past it
    // shows it arrived, and the notification is finished.
    let (mut sub, connection) = mailbox.subscribe("ann", None).unwrap();
    let Some(Message::Event(reply)) = sub.try_next() else {
        panic!("the reply is sent to its sender")
    };
    assert_eq!(reply.event_type(), "notification.reply");
    drop((sub, connection));
    let _again = mailbox
        .subscribe("ann", Some(&reply.id().to_string()))
        .unwrap();
    mailbox
        .send(Notification::to("dan").from("ann").json(&"y").unwrap())
        .unwrap();
    assert!(mailbox.status(&asked).is_none());
    // What is not finished is never forgotten.
    assert_eq!(
        mailbox.send(Notification::to("dan").from("ann").json(&"z").unwrap()),
        Err(SendError::Full {
            retry_after: tower_sse::mailbox::DEFAULT_RETRY_AFTER
        })
    );
    for trace in [&pending, &first] {
        assert!(!mailbox.status(trace).unwrap().delivered);
    }
    assert_eq!(mailbox.stats().forgotten, 2);
}

#[test]
fn sends_with_bad_ids_or_payloads_are_refused() {
    let mailbox = Mailbox::builder(Broker::new()).max_payload(16).build();
    assert_eq!(
        mailbox.send(Notification::to("").from("ann").json(&1).unwrap()),
        Err(SendError::InvalidClientId)
    );
    assert_eq!(
        mailbox.send(Notification::to("bob").from("a\nb").json(&1).unwrap()),
        Err(SendError::InvalidClientId)
    );
    assert_eq!(
        mailbox.send(
            Notification::to("x".repeat(129))
                .from("ann")
                .json(&1)
                .unwrap()
        ),
        Err(SendError::InvalidClientId)
    );
    assert!(matches!(
        mailbox.send(
            Notification::to("bob")
                .from("ann")
                .json(&"y".repeat(20))
                .unwrap()
        ),
        Err(SendError::TooLarge { limit: 16, .. })
    ));
    let trace = mailbox
        .send(
            Notification::to("bob")
                .from("ann")
                .json(&1)
                .unwrap()
                .expects_reply(),
        )
        .unwrap();
    assert!(matches!(
        mailbox.reply(&trace, "bob", "z".repeat(20)),
        Err(ReplyError::TooLarge { limit: 16, .. })
    ));
    assert_eq!(mailbox.stats().held, 1);
}

#[test]
fn every_tab_of_a_client_gets_a_live_notification() {
    let mailbox = Mailbox::new(Broker::new());
    let (mut tab1, _c1) = mailbox.subscribe("bob", None).unwrap();
    let (mut tab2, _c2) = mailbox.subscribe("bob", None).unwrap();
    let (mut other, _c3) = mailbox.subscribe("ann", None).unwrap();
    let trace = mailbox
        .send(Notification::to("bob").from("ann").json(&"hi").unwrap())
        .unwrap();
    for tab in [&mut tab1, &mut tab2] {
        let Some(Message::Event(event)) = tab.try_next() else {
            panic!()
        };
        assert!(event.data().contains(trace.as_str()));
    }
    assert!(
        other.try_next().is_none(),
        "ann must not see bob's notification"
    );
}

#[test]
fn a_confirmed_notification_is_not_sent_again() {
    let mailbox = Mailbox::new(Broker::new());
    let trace = mailbox
        .send(Notification::to("bob").from("ann").json(&"hi").unwrap())
        .unwrap();
    let (mut sub, connection) = mailbox.subscribe("bob", None).unwrap();
    let Some(Message::Event(event)) = sub.try_next() else {
        panic!()
    };
    drop((sub, connection));
    let seen = event.id().to_string();
    let (mut sub, _connection) = mailbox.subscribe("bob", Some(&seen)).unwrap();
    assert!(sub.try_next().is_none());
    assert!(mailbox.status(&trace).unwrap().delivered);
}

#[test]
fn an_id_of_a_newer_epoch_proves_nothing_about_a_copy_sent_in_an_older_one() {
    // A mirrored broker's epoch changes when its stream starts again, and
    // its seqs start again too: the new ids soon run past the old ones.
    let broker = Broker::builder().epoch(1).mirrored().build();
    let mailbox = Mailbox::new(broker.clone());
    let trace = mailbox
        .send(Notification::to("bob").from("ann").json(&"hi").unwrap())
        .unwrap();
    let (mut sub, connection) = mailbox.subscribe("bob", None).unwrap();
    assert!(matches!(sub.try_next(), Some(Message::Event(_))));
    drop((sub, connection));
    let entry = |seq: u64| tower_sse::broker::Mirrored {
        stream_seq: seq,
        age: Duration::ZERO,
        topic: "news".into(),
        event_type: None,
        data: "x".into(),
        direct: None,
    };
    broker.mirror_reset(2, (1..=3).map(entry));
    let seen = broker.mirrored_id(3).to_string();
    let (mut sub, _connection) = mailbox.subscribe("bob", Some(&seen)).unwrap();
    let Some(Message::Event(again)) = sub.try_next() else {
        panic!("the notification was not sent again")
    };
    assert_eq!(again.event_type(), "notification");
    assert!(!mailbox.status(&trace).unwrap().delivered);
}

#[test]
fn a_stream_that_lags_still_gets_its_notifications_in_id_order() {
    let broker = Broker::builder().epoch(EPOCH).retain_events(2).build();
    let mailbox = Mailbox::new(broker.clone());
    let (mut sub, _connection) = mailbox.subscribe("bob", None).unwrap();
    let trace = mailbox
        .send(Notification::to("bob").from("ann").json(&"hi").unwrap())
        .unwrap(); // 5-1
    for _ in 0..5 {
        broker
            .publish_system(tower_sse::Event::new("noise"))
            .unwrap(); // 5-2 to 5-6: 5-2 to 5-4 evicted unread
    }
    // The notification is not in the log, so not evicted: it comes first,
    // then the lag (ids keep increasing), then what is retained.
    let Some(Message::Event(event)) = sub.try_next() else {
        panic!("the notification first")
    };
    assert_eq!(event.id().seq(), 1);
    assert!(event.data().contains(trace.as_str()));
    match sub.try_next() {
        Some(Message::Lagged {
            missed,
            resume_from,
        }) => assert_eq!((missed, resume_from.seq()), (3, 4)),
        other => panic!("{other:?}"),
    }
    let seqs: Vec<u64> = std::iter::from_fn(|| sub.try_next())
        .map(|m| match m {
            Message::Event(e) => e.id().seq(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seqs, [5, 6]);
    assert_eq!(broker.stats().retained_events, 2);
}

/// A sender pours more notifications on one client than the replay log
/// holds (the way to make a re-send through the log evict the very
/// position its stream was moved to, over and over). The sender is
/// refused past its share, the client gets what was accepted once, with no
/// lag, confirms it by reconnecting, and nobody else's events are touched.
#[test]
fn a_flood_of_large_notifications_never_touches_the_replay_log() {
    let broker = Broker::new(); // 8 MiB of replay
    let mailbox = Mailbox::new(broker.clone());
    let public = tower_sse::Topics::parse(["public"]).unwrap();
    for n in 0..100 {
        broker
            .publish(tower_sse::Event::new("note").data(format!("{n}")))
            .unwrap();
    }
    let before = broker.stats();
    let big = "x".repeat(65_000);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        match mailbox.send(Notification::to("bob").from("mallory").json(&big).unwrap()) {
            Ok(trace) => accepted.push(trace),
            Err(SendError::SenderOverShare { .. }) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    // At most the sender's share: 512 KiB with the default replay log.
    assert!(accepted.len() <= 512 * 1024 / 65_000, "{}", accepted.len());
    assert_eq!(accepted.len() + refused, 300);
    assert_eq!(mailbox.stats().refused_sender, refused as u64);

    let (mut sub, connection) = mailbox.subscribe("bob", None).unwrap();
    let mut last = None;
    let mut got = 0;
    while let Some(message) = sub.try_next() {
        let Message::Event(event) = message else {
            panic!("{message:?}")
        };
        got += 1;
        last = Some(event.id());
    }
    assert_eq!(got, accepted.len());
    drop((sub, connection));
    let (_sub, _connection) = mailbox
        .subscribe("bob", Some(&last.unwrap().to_string()))
        .unwrap();
    for trace in &accepted {
        assert!(mailbox.status(trace).unwrap().delivered);
    }
    let after = broker.stats();
    assert_eq!(after.lag_reports, 0);
    assert_eq!(
        (after.evicted, after.retained_events),
        (0, before.retained_events)
    );
    // A reader resuming from the first public event still gets them all.
    let mut reader = broker
        .subscribe(&public, Some(&format!("{}-1", broker.epoch())))
        .unwrap();
    assert_eq!(std::iter::from_fn(|| reader.try_next()).count(), 99);
}

#[test]
fn a_sender_over_its_share_is_refused_and_others_are_not() {
    let mailbox = Mailbox::builder(Broker::new())
        .per_sender(2)
        .capacity(100)
        .build();
    let first = mailbox
        .send(Notification::to("bob").from("mallory").json(&1).unwrap())
        .unwrap();
    mailbox
        .send(Notification::to("cy").from("mallory").json(&2).unwrap())
        .unwrap();
    assert!(matches!(
        mailbox.send(Notification::to("dan").from("mallory").json(&3).unwrap()),
        Err(SendError::SenderOverShare { .. })
    ));
    // Anyone else still can.
    mailbox
        .send(Notification::to("bob").from("ann").json(&4).unwrap())
        .unwrap();
    // Once one of its notifications is finished, it is forgotten to make
    // room for the sender's next.
    assert!(mailbox.ack(&first, "bob"));
    mailbox
        .send(Notification::to("dan").from("mallory").json(&5).unwrap())
        .unwrap();
    assert!(mailbox.status(&first).is_none());
    assert_eq!(mailbox.stats().refused_sender, 1);
}

#[test]
fn the_bounds_are_in_bytes_too() {
    let payload = "x".repeat(1000);
    let cost = tower_sse::mailbox::RECORD_OVERHEAD + 3 + 3 + payload.len() + 2;
    // A target holds two of these, the mailbox five.
    let mailbox = Mailbox::builder(Broker::new())
        .per_target_bytes(2 * cost + 10)
        .per_sender_bytes(1 << 20)
        .capacity_bytes(5 * cost + 10)
        .build();
    let first = mailbox
        .send(Notification::to("bob").from("ann").json(&payload).unwrap())
        .unwrap();
    mailbox
        .send(Notification::to("bob").from("ann").json(&payload).unwrap())
        .unwrap();
    mailbox
        .send(Notification::to("bob").from("ann").json(&payload).unwrap())
        .unwrap();
    // The target's oldest made room.
    assert!(mailbox.status(&first).is_none());
    assert_eq!(mailbox.stats().dropped, 1);
    assert_eq!(mailbox.stats().bytes, 2 * cost);
    for to in ["cyx", "dan"] {
        mailbox
            .send(Notification::to(to).from("ann").json(&payload).unwrap())
            .unwrap();
    }
    mailbox
        .send(Notification::to("cyx").from("ann").json(&payload).unwrap())
        .unwrap();
    assert!(matches!(
        mailbox.send(Notification::to("eve").from("ann").json(&payload).unwrap()),
        Err(SendError::Full { .. })
    ));
    assert_eq!(mailbox.stats().bytes, 5 * cost);
    // One payload larger than a target may hold at all.
    assert!(matches!(
        mailbox.send(
            Notification::to("eve")
                .from("ann")
                .json(&"y".repeat(3 * cost))
                .unwrap()
        ),
        Err(SendError::TooLarge { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn the_janitor_purges_and_never_outlives_its_handle_or_keeps_the_mailbox() {
    let (mailbox, clock) = mailbox_with_clock();
    mailbox
        .send(Notification::to("bob").from("ann").json(&1).unwrap())
        .unwrap();
    let janitor = mailbox.spawn_janitor(Duration::from_secs(1));
    clock.advance(Duration::from_secs(61));
    tokio::time::timeout(Duration::from_secs(30), async {
        while mailbox.stats().held > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await
    .expect("the janitor never purged");
    assert_eq!(mailbox.stats().expired, 1);
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    assert_eq!(tasks(), 1, "the janitor");
    janitor.stop().await;
    assert_eq!(tasks(), 0, "stopped means gone, not going");

    // A janitor whose mailbox is dropped ends by itself.
    let janitor = mailbox.spawn_janitor(Duration::from_secs(1));
    drop(mailbox);
    tokio::time::timeout(Duration::from_secs(30), async {
        while !janitor.is_finished() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await
    .expect("the janitor kept running without its mailbox");
}

/// What a log line or a failed assertion shows of the mailbox's types:
/// each names itself and what it holds.
#[test]
fn debug_output_names_the_type_and_its_state() {
    let builder = Mailbox::builder(Broker::new()).per_target(17);
    let shown = format!("{builder:?}");
    assert!(shown.starts_with("MailboxBuilder { limits:"), "{shown}");
    assert!(shown.contains("17"), "{shown}");
    let mailbox = builder.build();
    let shown = format!("{mailbox:?}");
    assert!(
        shown.starts_with("Mailbox { stats: MailboxStats {"),
        "{shown}"
    );
    let text = "0123456789abcdef0123456789abcdef";
    let trace = TraceId::parse(text).unwrap();
    assert_eq!(format!("{trace:?}"), format!("{text:?}"));
    let layer = tower_sse::mailbox::MailboxLayer::new(mailbox);
    let shown = format!("{layer:?}");
    assert!(shown.starts_with(r#"MailboxLayer { prefix: "/"#), "{shown}");
}

/// The defaults are the README's ("Configuration at a glance"): a mailbox
/// built with none set holds a notification 24 hours, refuses a payload a
/// byte over 64 KiB, and lets one sender hold 1,024 notifications.
#[test]
fn a_default_mailbox_keeps_the_documented_bounds() {
    let readme = include_str!("../../README.md");
    assert!(readme.contains("| notifications: TTL / payload | 24 h / 64 KiB |"));
    assert!(readme.contains("| notifications per sender | 1024, 512 KiB |"));

    let clock = ManualClock::new();
    let mailbox = Mailbox::builder(Broker::new()).clock(clock.clone()).build();
    // A JSON string: its two quotes count.
    let limit = 64 * 1024;
    let oversized = Notification::to("bob")
        .from("ann")
        .json(&"x".repeat(limit - 1))
        .unwrap();
    assert_eq!(
        mailbox.send(oversized),
        Err(SendError::TooLarge {
            size: limit + 1,
            limit
        })
    );
    let fits = Notification::to("bob")
        .from("ann")
        .json(&"x".repeat(limit - 2))
        .unwrap();
    mailbox.send(fits).unwrap();

    clock.advance(Duration::from_secs(24 * 60 * 60 - 1));
    assert_eq!(mailbox.purge_expired(), 0, "not yet 24 hours old");
    clock.advance(Duration::from_secs(2));
    assert_eq!(mailbox.purge_expired(), 1, "over 24 hours old");

    for n in 0..1_024 {
        mailbox
            .send(
                Notification::to(format!("c{n}"))
                    .from("ann")
                    .json(&n)
                    .unwrap(),
            )
            .unwrap();
    }
    assert!(matches!(
        mailbox.send(Notification::to("c").from("ann").json(&0).unwrap()),
        Err(SendError::SenderOverShare { .. })
    ));
}

/// Why a send was refused, as a log line says it.
#[test]
fn a_refused_send_says_why() {
    let cases = [
        (
            SendError::InvalidClientId,
            "a client id is 1 to 128 bytes without control characters",
        ),
        (
            SendError::TooLarge {
                size: 70,
                limit: 64,
            },
            "the payload is 70 bytes, over the limit of 64",
        ),
        (
            SendError::SenderOverShare {
                retry_after: Duration::from_secs(1),
            },
            "the sender holds as many notifications as one sender may",
        ),
        (
            SendError::Full {
                retry_after: Duration::from_secs(1),
            },
            "the mailbox is full",
        ),
    ];
    for (error, message) in cases {
        assert_eq!(error.to_string(), message);
    }
}

/// A trace in a URL is 32 lowercase hex digits, nothing else.
#[test]
fn a_trace_is_32_lowercase_hex_digits() {
    let good = "0123456789abcdef0123456789abcdef";
    assert_eq!(
        TraceId::parse(good).map(|t| t.as_str().to_owned()),
        Some(good.to_owned())
    );
    for bad in [
        "",
        "abc",
        &good[1..],
        &format!("{good}0"),
        &good.replace('a', "A"),
        &good.replace('f', "g"),
    ] {
        assert!(TraceId::parse(bad).is_none(), "{bad:?}");
    }
}

/// Every frame sent for a notification counts once: none while its target
/// is away, one when a stream of it opens, one more for a second stream.
#[test]
fn each_notification_frame_sent_is_counted() {
    let mailbox = Mailbox::new(Broker::new());
    mailbox
        .send(Notification::to("bob").from("ann").json(&"hi").unwrap())
        .unwrap();
    assert_eq!(mailbox.stats().published, 0);
    let (mut first, connection) = mailbox.subscribe("bob", None).unwrap();
    assert_eq!(connection.client(), "bob");
    assert!(matches!(first.try_next(), Some(Message::Event(_))));
    assert_eq!(mailbox.stats().published, 1);
    let (mut second, _second) = mailbox.subscribe("bob", None).unwrap();
    assert!(matches!(second.try_next(), Some(Message::Event(_))));
    assert_eq!(mailbox.stats().published, 2);
}

/// A reply that would take the mailbox over its byte bound forgets what
/// is finished to make room, as a send does.
#[test]
fn a_reply_over_the_byte_bound_forgets_what_is_finished() {
    let ask = || {
        Notification::to("bob")
            .from("ann")
            .json(&"q?")
            .unwrap()
            .expects_reply()
    };
    let tell = || Notification::to("bob").from("ann").json(&"fyi").unwrap();
    // What each costs, measured on a mailbox with room for everything.
    let probe = Mailbox::new(Broker::new());
    let asked = probe.send(ask()).unwrap();
    probe.send(tell()).unwrap();
    let both = probe.stats().bytes;
    probe.reply(&asked, "bob", "yes").unwrap();
    let reply = probe.stats().bytes - both;

    let mailbox = Mailbox::builder(Broker::new())
        .capacity_bytes(both + reply - 1)
        .build();
    let asked = mailbox.send(ask()).unwrap();
    let told = mailbox.send(tell()).unwrap();
    assert!(mailbox.ack(&told, "bob"));
    mailbox.reply(&asked, "bob", "yes").unwrap();
    let stats = mailbox.stats();
    assert_eq!(stats.forgotten, 1, "{stats:?}");
    assert!(mailbox.status(&told).is_none());
    assert!(stats.bytes < both + reply, "{stats:?}");
}
