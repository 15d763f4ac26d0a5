//! The mailbox held against a model over random sequences of send, open,
//! read, close, reply, ack and clock advance (fake clock), plus the cases
//! a random walk rarely reaches.
#![cfg(not(loom))]

use std::collections::VecDeque;
use std::time::Duration;

use proptest::prelude::*;
use tower_sse::mailbox::{Connection, Mailbox, ReplyError, SendError, TraceId};
use tower_sse::{Broker, ManualClock, Message, Subscription};

const CLIENTS: [&str; 3] = ["ann", "bob", "cy"];
const EPOCH: u64 = 5;
const PER_TARGET: usize = 3;
const CAPACITY: usize = 6;

#[derive(Clone, Debug)]
enum Op {
    Send {
        to: usize,
        from: usize,
        reply: bool,
        ttl: u64,
    },
    Open {
        client: usize,
        resume: bool,
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
        4 => (0..3usize, 0..3usize, any::<bool>(), 1..60u64)
            .prop_map(|(to, from, reply, ttl)| Op::Send { to, from, reply, ttl }),
        3 => (0..3usize, any::<bool>()).prop_map(|(client, resume)| Op::Open { client, resume }),
        4 => (0..6usize).prop_map(|conn| Op::Read { conn }),
        2 => (0..6usize).prop_map(|conn| Op::Close { conn }),
        2 => (0..12usize, 0..3usize).prop_map(|(record, by)| Op::Reply { record, by }),
        1 => (0..12usize, 0..3usize).prop_map(|(record, by)| Op::Ack { record, by }),
        2 => (0..30u64).prop_map(|secs| Op::Advance { secs }),
    ]
}

#[derive(Debug)]
struct Rec {
    trace: TraceId,
    to: usize,
    from: usize,
    expects_reply: bool,
    expires_at: u64,
    delivered: bool,
    replied: bool,
    last_sent: Option<u64>,
    /// Seq of the last frame that carried the reply to the sender.
    reply_sent: Option<u64>,
    reply_seen: bool,
    gone: bool,
}

struct Conn {
    sub: Subscription,
    _connection: Connection,
    client: usize,
    /// Frames published to this client since the connection opened:
    /// (seq, event type, trace).
    expected: VecDeque<(u64, &'static str, TraceId)>,
}

#[derive(Default)]
struct Model {
    recs: Vec<Rec>,
    queues: [VecDeque<usize>; 3],
    seq: u64,
    now: u64,
    last_read: [Option<u64>; 3],
    /// Every frame published to each client's topic.
    history: [Vec<(u64, &'static str, TraceId)>; 3],
    /// Records in the order they became finished (delivered, and not
    /// expecting a reply or its reply seen): what a full mailbox forgets
    /// first.
    finished: VecDeque<usize>,
    /// Per sender, replied records whose reply it has not shown it got.
    unseen_replies: [Vec<usize>; 3],
}

impl Model {
    fn held(&self) -> usize {
        self.recs.iter().filter(|r| !r.gone).count()
    }

    fn is_finished(&self, i: usize) -> bool {
        let rec = &self.recs[i];
        rec.delivered && (!rec.expects_reply || rec.reply_seen)
    }

    /// Marks record `i` delivered; queues it as finished if it now is.
    fn deliver(&mut self, i: usize) {
        if !self.recs[i].delivered {
            self.recs[i].delivered = true;
            if self.is_finished(i) {
                self.finished.push_back(i);
            }
        }
    }

    /// A full mailbox forgets its oldest finished records first.
    fn make_room(&mut self) {
        while self.held() >= CAPACITY {
            let Some(i) = self.finished.pop_front() else {
                return;
            };
            if !self.recs[i].gone && self.is_finished(i) {
                self.recs[i].gone = true;
                let to = self.recs[i].to;
                self.queues[to].retain(|&j| j != i);
            }
        }
    }

    fn purge(&mut self) {
        for (i, rec) in self.recs.iter_mut().enumerate() {
            if !rec.gone && rec.expires_at <= self.now {
                rec.gone = true;
                self.queues[rec.to].retain(|&j| j != i);
            }
        }
    }

    fn publish(
        &mut self,
        conns: &mut [Conn],
        client: usize,
        kind: &'static str,
        trace: &TraceId,
    ) -> u64 {
        self.seq += 1;
        for conn in conns.iter_mut().filter(|c| c.client == client) {
            conn.expected.push_back((self.seq, kind, trace.clone()));
        }
        self.history[client].push((self.seq, kind, trace.clone()));
        self.seq
    }
}

fn run(ops: Vec<Op>) {
    let clock = ManualClock::new();
    let broker = Broker::builder()
        .epoch(EPOCH)
        .retain_events(100_000)
        .retain_forever()
        .build();
    let mailbox = Mailbox::builder(broker.clone())
        .per_target(PER_TARGET)
        .capacity(CAPACITY)
        .clock(clock.clone())
        .build();
    let mut model = Model::default();
    let mut conns: Vec<Conn> = Vec::new();

    for op in ops {
        match op {
            Op::Send {
                to,
                from,
                reply,
                ttl,
            } => {
                model.purge();
                if model.held() >= CAPACITY && model.queues[to].len() < PER_TARGET {
                    model.make_room();
                }
                let full = model.held() >= CAPACITY && model.queues[to].len() < PER_TARGET;
                let result = mailbox.send(
                    CLIENTS[to],
                    CLIENTS[from],
                    serde_json::json!({"n": model.recs.len()}),
                    reply,
                    Some(Duration::from_secs(ttl)),
                );
                if full {
                    assert_eq!(result, Err(SendError::Full));
                    continue;
                }
                let trace = result.unwrap();
                let index = model.recs.len();
                model.recs.push(Rec {
                    trace: trace.clone(),
                    to,
                    from,
                    expects_reply: reply,
                    expires_at: model.now + ttl,
                    delivered: false,
                    replied: false,
                    last_sent: None,
                    reply_sent: None,
                    reply_seen: false,
                    gone: false,
                });
                model.queues[to].push_back(index);
                if model.queues[to].len() > PER_TARGET {
                    let dropped = model.queues[to].pop_front().unwrap();
                    model.recs[dropped].gone = true;
                }
                if conns.iter().any(|c| c.client == to) {
                    let seq = model.publish(&mut conns, to, "notification", &trace);
                    model.recs[index].last_sent = Some(seq);
                }
            }
            Op::Open { client, resume } => {
                if conns.len() >= 6 {
                    continue;
                }
                let resume_id = if resume {
                    model.last_read[client]
                } else {
                    None
                };
                let resume_str = resume_id.map(|seq| format!("{EPOCH}-{seq}"));
                let (sub, connection) = mailbox
                    .subscribe(CLIENTS[client], resume_str.as_deref())
                    .unwrap();
                model.purge();
                // A resumed stream first replays what its topic got since.
                let replay: VecDeque<_> = match resume_id {
                    Some(seen) => model.history[client]
                        .iter()
                        .filter(|f| f.0 > seen)
                        .cloned()
                        .collect(),
                    None => VecDeque::new(),
                };
                conns.push(Conn {
                    sub,
                    _connection: connection,
                    client,
                    expected: replay,
                });
                let queue: Vec<usize> = model.queues[client].iter().copied().collect();
                for i in queue {
                    if model.recs[i].delivered {
                        continue;
                    }
                    if let (Some(seen), Some(sent)) = (resume_id, model.recs[i].last_sent) {
                        if sent <= seen {
                            model.deliver(i);
                            continue;
                        }
                        // Still retained (retention is unbounded here): the
                        // resumed stream replays it, no need to send again.
                        continue;
                    }
                    let trace = model.recs[i].trace.clone();
                    let seq = model.publish(&mut conns, client, "notification", &trace);
                    model.recs[i].last_sent = Some(seq);
                }
                // Then replies to what this client sent, the same way.
                let replies = std::mem::take(&mut model.unseen_replies[client]);
                for i in replies {
                    if model.recs[i].gone {
                        continue;
                    }
                    if let (Some(seen), Some(sent)) = (resume_id, model.recs[i].reply_sent) {
                        if sent <= seen {
                            model.recs[i].reply_seen = true;
                            if model.is_finished(i) {
                                model.finished.push_back(i);
                            }
                            continue;
                        }
                        model.unseen_replies[client].push(i);
                        continue;
                    }
                    let trace = model.recs[i].trace.clone();
                    let seq = model.publish(&mut conns, client, "notification.reply", &trace);
                    model.recs[i].reply_sent = Some(seq);
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
                    let (seq, kind, trace) = conn
                        .expected
                        .pop_front()
                        .unwrap_or_else(|| panic!("unexpected frame {got:?}"));
                    assert_eq!(got, (seq, kind.to_owned(), trace.to_string()));
                    model.last_read[conn.client] = Some(seq);
                }
                assert!(
                    conn.expected.is_empty(),
                    "frames missing: {:?}",
                    conn.expected
                );
            }
            Op::Close { conn } => {
                if !conns.is_empty() {
                    let index = conn % conns.len();
                    conns.remove(index);
                }
            }
            Op::Reply { record, by } => {
                if model.recs.is_empty() {
                    continue;
                }
                let i = record % model.recs.len();
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
                    Ok(())
                };
                let trace = rec.trace.clone();
                let result = mailbox.reply(&trace, CLIENTS[by], "ok");
                assert_eq!(result.as_ref().map(|_| ()).map_err(Clone::clone), expected);
                if let Ok(status) = result {
                    assert!(status.replied && status.delivered);
                    let from = model.recs[i].from;
                    model.recs[i].replied = true;
                    model.recs[i].delivered = true;
                    // To the sender's open streams; an offline sender
                    // gets it when it connects.
                    if conns.iter().any(|c| c.client == from) {
                        let seq = model.publish(&mut conns, from, "notification.reply", &trace);
                        model.recs[i].reply_sent = Some(seq);
                    }
                    model.unseen_replies[from].push(i);
                }
            }
            Op::Ack { record, by } => {
                if model.recs.is_empty() {
                    continue;
                }
                let i = record % model.recs.len();
                model.purge();
                let trace = model.recs[i].trace.clone();
                let expected = !model.recs[i].gone && model.recs[i].to == by;
                assert_eq!(mailbox.ack(&trace, CLIENTS[by]), expected);
                if expected {
                    model.deliver(i);
                }
            }
            Op::Advance { secs } => {
                clock.advance(Duration::from_secs(secs));
                model.now += secs;
            }
        }

        // Every view of every notification agrees with the model.
        model.purge();
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
        for queue in &model.queues {
            assert!(queue.len() <= PER_TARGET);
        }
        assert_eq!(mailbox.stats().held, model.held());
        assert!(model.held() <= CAPACITY);
    }

    // Nothing retained and unconfirmed is lost: a fresh stream of each
    // client gets every one of them.
    drop(conns);
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
            .map(|&i| ("notification", i));
        let replies = model.unseen_replies[c]
            .iter()
            .filter(|&&i| !model.recs[i].gone && !model.recs[i].reply_seen)
            .map(|&i| ("notification.reply", i));
        let expected: Vec<(String, String)> = notifications
            .chain(replies)
            .map(|(kind, i)| (kind.to_owned(), model.recs[i].trace.to_string()))
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
    let trace = mailbox.send("bob", "ann", "q?", true, None).unwrap();
    clock.advance(Duration::from_secs(61));
    assert_eq!(mailbox.reply(&trace, "bob", "a"), Err(ReplyError::Expired));
    assert_eq!(mailbox.purge_expired(), 1);
    assert_eq!(mailbox.reply(&trace, "bob", "a"), Err(ReplyError::NotFound));
    assert!(mailbox.status(&trace).is_none());
}

#[test]
fn a_full_mailbox_forgets_finished_notifications_first() {
    let mailbox = Mailbox::builder(Broker::new()).capacity(3).build();
    let asked = mailbox.send("bob", "ann", "q?", true, None).unwrap();
    let told = mailbox.send("bob", "ann", "fyi", false, None).unwrap();
    let pending = mailbox.send("cy", "ann", "later", false, None).unwrap();
    assert_eq!(
        mailbox.send("dan", "ann", "x", false, None),
        Err(SendError::Full)
    );

    // Delivered but awaiting its reply: still live, still counted.
    assert!(mailbox.ack(&asked, "bob"));
    assert_eq!(
        mailbox.send("dan", "ann", "x", false, None),
        Err(SendError::Full)
    );
    // Delivered and expecting nothing: room is made by forgetting it.
    assert!(mailbox.ack(&told, "bob"));
    let first = mailbox.send("dan", "ann", "x", false, None).unwrap();
    assert!(mailbox.status(&told).is_none());
    assert_eq!(mailbox.stats().forgotten, 1);
    assert_eq!(mailbox.stats().held, 3);
    // Replied, but the sender has not seen the reply: held for it.
    mailbox.reply(&asked, "bob", "yes").unwrap();
    assert_eq!(
        mailbox.send("dan", "ann", "y", false, None),
        Err(SendError::Full)
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
    mailbox.send("dan", "ann", "y", false, None).unwrap();
    assert!(mailbox.status(&asked).is_none());
    // What is not finished is never forgotten.
    assert_eq!(
        mailbox.send("dan", "ann", "z", false, None),
        Err(SendError::Full)
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
        mailbox.send("", "ann", 1, false, None),
        Err(SendError::InvalidClientId)
    );
    assert_eq!(
        mailbox.send("bob", "a\nb", 1, false, None),
        Err(SendError::InvalidClientId)
    );
    assert_eq!(
        mailbox.send(&"x".repeat(129), "ann", 1, false, None),
        Err(SendError::InvalidClientId)
    );
    assert!(matches!(
        mailbox.send("bob", "ann", "y".repeat(20), false, None),
        Err(SendError::TooLarge { limit: 16, .. })
    ));
    let trace = mailbox.send("bob", "ann", 1, true, None).unwrap();
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
    let trace = mailbox.send("bob", "ann", "hi", false, None).unwrap();
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
    let trace = mailbox.send("bob", "ann", "hi", false, None).unwrap();
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
fn a_stream_that_lags_past_a_notification_gets_it_again() {
    let broker = Broker::builder().retain_events(2).build();
    let mailbox = Mailbox::new(broker.clone());
    let (mut sub, _connection) = mailbox.subscribe("bob", None).unwrap();
    let trace = mailbox.send("bob", "ann", "hi", false, None).unwrap();
    for _ in 0..5 {
        broker
            .publish_system(tower_sse::Event::new("noise"))
            .unwrap();
    }
    assert!(matches!(sub.try_next(), Some(Message::Lagged { .. })));
    // The in-process stream reports the lag itself; the events route hands
    // it to the mailbox, which sends again. Here: a fresh connection does.
    let (mut again, _c) = mailbox.subscribe("bob", None).unwrap();
    let Some(Message::Event(event)) = again.try_next() else {
        panic!()
    };
    assert!(event.data().contains(trace.as_str()));
}

#[tokio::test(start_paused = true)]
async fn the_janitor_purges_and_never_outlives_its_handle_or_keeps_the_mailbox() {
    let (mailbox, clock) = mailbox_with_clock();
    mailbox.send("bob", "ann", 1, false, None).unwrap();
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
    janitor.stop().await;

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
