//! The mailbox kept in Redis against the in-memory one (feature `redis`):
//! random sequences of send, reply, ack, status, clock advance, purge, a
//! stream opening and a client resuming with the id it last read, run on both
//! side by side with the same small bounds and one fake clock, every
//! answer and the counters compared after every step. The in-memory
//! mailbox is proven against its model (`mailbox.rs`); a Redis store that
//! answers as it does, step for step, keeps the same model.
//!
//! One `redis-server` serves the whole run; each case has a replica of its
//! own on a stream key of its own, so no case sees another's records.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use redis::aio::MultiplexedConnection;
use tower_sse::backplane::{RedisBackplane, Replica};
use tower_sse::mailbox::{Mailbox, MailboxStats, Notification, RedisMailbox, Status, TraceId};
use tower_sse::{Broker, ManualClock, Message, Subscription};

use crate::support::mailbox_bounds::{bounded, CLIENTS, EPOCH};
use crate::support::redis::RedisServer;
use crate::support::wait::{eventually, within};

// About 9 s on two cores. At 128 cases (2 s) some deliberate bugs in the
// Lua (a per-sender bound off by one, say) went unnoticed in one run of
// three; at 512 every one tried was caught in every run.
const CASES: u32 = 512;
const MAX_OPS: usize = 40;

#[derive(Clone, Debug)]
enum Op {
    Send {
        to: usize,
        from: usize,
        expects_reply: bool,
        ttl: u64,
        pad: usize,
    },
    /// A reply by `by`, or by the record's target if `None`.
    Reply {
        record: usize,
        by: Option<usize>,
        pad: usize,
    },
    /// A confirmation by `by`, or by the record's target if `None`.
    Ack {
        record: usize,
        by: Option<usize>,
    },
    /// The status of a record, and what one client may see of it.
    Status {
        record: usize,
        asker: usize,
    },
    Advance {
        secs: u64,
    },
    /// Both purge what is past its TTL now, the same number.
    Purge,
    /// A stream of the client opens without a `Last-Event-ID` and is
    /// dropped at once: it proves nothing, so no record may change.
    Open {
        client: usize,
    },
    /// A stream of the client opens and is sent what is held for it; the
    /// client reads them all (`read: None`) or the first `read` of them
    /// (modulo what came), the connection breaks, and the client comes
    /// back with the id it read last as its `Last-Event-ID`: what that
    /// proves is delivered, or its reply seen.
    Resume {
        client: usize,
        read: Option<usize>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    // Mostly small payloads; some large, a few past what one target may
    // hold (1500 bytes with the overhead), so `TooLarge` comes too.
    let pad = prop_oneof![3 => 0..100usize, 1 => 600..1300usize];
    // Times in steps of 5 s, so that the clock often stands exactly at an
    // expiry, where `<` and `<=` part.
    let ttl = (1..=8u64).prop_map(|n| n * 5);
    // Mostly the record's target, else anyone (often refused).
    let by = || prop_oneof![3 => Just(None), 1 => (0..3usize).prop_map(Some)];
    prop_oneof![
        5 => (0..3usize, 0..3usize, any::<bool>(), ttl, pad).prop_map(
            |(to, from, expects_reply, ttl, pad)| Op::Send { to, from, expects_reply, ttl, pad }
        ),
        3 => (0..12usize, by(), 0..400usize)
            .prop_map(|(record, by, pad)| Op::Reply { record, by, pad }),
        2 => (0..12usize, by()).prop_map(|(record, by)| Op::Ack { record, by }),
        2 => (0..12usize, 0..3usize).prop_map(|(record, asker)| Op::Status { record, asker }),
        2 => (0..=4u64).prop_map(|n| Op::Advance { secs: n * 5 }),
        1 => Just(Op::Purge),
        1 => (0..3usize).prop_map(|client| Op::Open { client }),
        2 => (0..3usize, prop_oneof![Just(None), (0..4usize).prop_map(Some)])
            .prop_map(|(client, read)| Op::Resume { client, read }),
    ]
}

/// The two mailboxes of one case and what ties their records together.
struct Pair {
    memory: Mailbox,
    redis: RedisMailbox,
    replica: Replica,
    clock: ManualClock,
    /// A connection of the test's own, to read where the stream stands.
    conn: MultiplexedConnection,
    meta: String,
    /// Accepted sends, in order.
    records: Vec<Record>,
    /// A trace's record, per side: to name the record a frame is for.
    memory_index: HashMap<String, usize>,
    redis_index: HashMap<String, usize>,
}

/// An accepted send: its trace in each store (each makes its own), and
/// its target.
struct Record {
    memory: TraceId,
    redis: TraceId,
    to: usize,
}

/// A mailbox frame as a client sees it: its type, the record it is for
/// (its index, the same on both sides) and its id (each store's own).
#[derive(Debug)]
struct Frame {
    kind: String,
    record: usize,
    id: String,
}

/// What must agree of a status: everything but the trace and the times,
/// which differ between the stores by construction.
fn view(status: &Status) -> impl PartialEq + std::fmt::Debug {
    (
        status.from.clone(),
        status.to.clone(),
        status.expects_reply,
        status.delivered,
        status.replied,
        status
            .reply
            .as_ref()
            .map(|reply| (reply.by.clone(), reply.payload.clone())),
    )
}

/// The counters that must agree. `published` counts frames, and the Redis
/// store appends one even when nobody watches; `online` is per replica.
/// Both legitimately differ.
fn comparable(mut stats: MailboxStats) -> MailboxStats {
    stats.published = 0;
    stats.online = 0;
    stats
}

impl Pair {
    async fn new(redis: &RedisServer, case: usize) -> Self {
        let key = format!("case{case}:events");
        let replica = RedisBackplane::new(&redis.url())
            .expect("URL")
            .stream(&key)
            .block(Duration::from_millis(100))
            .publish_timeout(Duration::from_millis(2000))
            .start(Broker::builder());
        eventually("the replica to be in step with Redis", || {
            replica.stats().connected
        })
        .await;
        let clock = ManualClock::new();
        let memory_broker = Broker::builder()
            .epoch(EPOCH)
            .retain_events(100_000)
            .retain_forever()
            .build();
        let memory = bounded(Mailbox::builder(memory_broker), &clock).build();
        let redis_mailbox =
            bounded(Mailbox::builder(replica.broker().clone()), &clock).redis(&replica);
        let conn = redis::Client::open(redis.url())
            .expect("URL")
            .get_multiplexed_async_connection()
            .await
            .expect("a connection to the test's redis-server");
        Self {
            memory,
            redis: redis_mailbox,
            replica,
            clock,
            conn,
            meta: format!("{key}:meta"),
            records: Vec::new(),
            memory_index: HashMap::new(),
            redis_index: HashMap::new(),
        }
    }

    /// The record an op names, if any was accepted yet: its index, its
    /// traces, and `by` or else its target.
    fn record(&self, n: usize, by: Option<usize>) -> Option<(usize, TraceId, TraceId, &str)> {
        if self.records.is_empty() {
            return None;
        }
        let i = n % self.records.len();
        let record = &self.records[i];
        let by = CLIENTS[by.unwrap_or(record.to)];
        Some((i, record.memory.clone(), record.redis.clone(), by))
    }

    async fn step(&mut self, op: &Op) {
        match *op {
            Op::Send {
                to,
                from,
                expects_reply,
                ttl,
                pad,
            } => {
                let value = serde_json::json!({"n": self.records.len(), "pad": "x".repeat(pad)});
                let mut notification = Notification::to(CLIENTS[to])
                    .from(CLIENTS[from])
                    .json(&value)
                    .unwrap()
                    .ttl(Duration::from_secs(ttl));
                if expects_reply {
                    notification = notification.expects_reply();
                }
                let memory = self.memory.send(notification.clone());
                let redis = self.redis.send(notification).await;
                assert_eq!(
                    memory.as_ref().map(drop),
                    redis.as_ref().map(drop),
                    "send: memory {memory:?}, redis {redis:?}"
                );
                if let (Ok(memory), Ok(redis)) = (memory, redis) {
                    let i = self.records.len();
                    self.memory_index.insert(memory.to_string(), i);
                    self.redis_index.insert(redis.to_string(), i);
                    self.records.push(Record { memory, redis, to });
                }
            }
            Op::Reply { record, by, pad } => {
                let Some((i, on_memory, on_redis, by)) = self.record(record, by) else {
                    return;
                };
                let value = serde_json::json!(format!("ok{}", "y".repeat(pad)));
                let memory = self.memory.reply(&on_memory, by, &value);
                let redis = self.redis.reply(&on_redis, by, &value).await;
                match (&memory, &redis) {
                    (Ok(m), Ok(r)) => {
                        assert_eq!(view(m), view(r), "reply to record {i}");
                        assert_eq!((&m.trace, &r.trace), (&on_memory, &on_redis));
                    }
                    (m, r) => assert_eq!(
                        m.as_ref().err(),
                        r.as_ref().err(),
                        "reply to record {i}: memory {m:?}, redis {r:?}"
                    ),
                }
            }
            Op::Ack { record, by } => {
                let Some((i, on_memory, on_redis, by)) = self.record(record, by) else {
                    return;
                };
                let memory = self.memory.ack(&on_memory, by);
                let redis = self.redis.ack(&on_redis, by).await.unwrap();
                assert_eq!(memory, redis, "ack of record {i} by {by}");
            }
            Op::Status { record, asker } => {
                let Some((i, on_memory, on_redis, _)) = self.record(record, None) else {
                    return;
                };
                self.compare_status(i).await;
                let memory = self.memory.status_for(&on_memory, CLIENTS[asker]);
                let redis = self
                    .redis
                    .status_for(&on_redis, CLIENTS[asker])
                    .await
                    .unwrap();
                assert_eq!(
                    memory.as_ref().map(view),
                    redis.as_ref().map(view),
                    "record {i} as {} sees it",
                    CLIENTS[asker]
                );
            }
            Op::Advance { secs } => self.clock.advance(Duration::from_secs(secs)),
            Op::Purge => {
                let purged = self.memory.purge_expired();
                assert_eq!(self.redis.purge_expired().await.unwrap(), purged, "purged");
            }
            Op::Open { client } => {
                drop(self.memory.subscribe(CLIENTS[client], None).unwrap());
                drop(self.redis.subscribe(CLIENTS[client], None).await.unwrap());
            }
            Op::Resume { client, read } => self.resume(client, read).await,
        }
    }

    /// Both stores agree on record `i`: held or not, and what is known of it.
    async fn compare_status(&self, i: usize) {
        let Record {
            memory: on_memory,
            redis: on_redis,
            ..
        } = &self.records[i];
        let memory = self.memory.status(on_memory);
        let redis = self.redis.status(on_redis).await.unwrap();
        assert_eq!(
            memory.as_ref().map(view),
            redis.as_ref().map(view),
            "status of record {i}"
        );
        if let (Some(m), Some(r)) = (&memory, &redis) {
            assert_eq!((&m.trace, &r.trace), (on_memory, on_redis));
        }
    }

    async fn compare_stats(&self, after: impl std::fmt::Debug) {
        let memory = self.memory.stats();
        let redis = self.redis.stats().await.unwrap();
        assert_eq!(
            comparable(memory),
            comparable(redis),
            "stats after {after:?}: memory {memory:?}, redis {redis:?}"
        );
    }

    /// Waits until this replica's mirror holds every entry of the stream:
    /// then a stream opened here has every frame appended so far behind
    /// it, and a stream open here has been handed every one for it.
    async fn caught_up(&mut self) {
        let seq: Option<u64> = redis::cmd("HGET")
            .arg(&self.meta)
            .arg("seq")
            .query_async(&mut self.conn)
            .await
            .expect("the stream's seq");
        let seq = seq.unwrap_or(0);
        let broker = self.replica.broker();
        eventually("the replica to mirror the stream's tail", || {
            broker
                .mirror_position()
                .is_some_and(|(_, mirrored)| mirrored >= seq)
        })
        .await;
    }

    /// Opens a stream of `client` on both, compares what each sends it,
    /// then comes back on both with the id of the last frame read (`read`,
    /// modulo what came; `None`: all) as `Last-Event-ID`; none read, no
    /// `Last-Event-ID`.
    async fn resume(&mut self, client: usize, read: Option<usize>) {
        let name = CLIENTS[client];
        // Not waiting would let a frame appended before the stream opened
        // but mirrored after reach it from the stream, though its record
        // was confirmed since: a frame the Redis store does not take back,
        // by design (see `RedisMailbox`), and not what is compared here.
        self.caught_up().await;
        let (mut sub, connection) = self.memory.subscribe(name, None).unwrap();
        let memory = frames(&mut sub, &self.memory_index);
        drop((sub, connection));
        let (mut sub, guard) = self.redis.subscribe(name, None).await.unwrap();
        self.caught_up().await;
        let redis = frames(&mut sub, &self.redis_index);
        drop((sub, guard));
        let sent = |frames: &[Frame]| -> Vec<(String, usize)> {
            frames.iter().map(|f| (f.kind.clone(), f.record)).collect()
        };
        assert_eq!(
            sent(&memory),
            sent(&redis),
            "what a new stream of {name} is sent"
        );
        let read = read.map_or(memory.len(), |read| read % (memory.len() + 1));
        if read == 0 {
            return;
        }
        let (memory_id, redis_id) = (&memory[read - 1].id, &redis[read - 1].id);
        drop(self.memory.subscribe(name, Some(memory_id)).unwrap());
        drop(self.redis.subscribe(name, Some(redis_id)).await.unwrap());
    }
}

/// The mailbox frames `sub` holds now, in order. The Redis replica's
/// broker also sends its own `server.*` events; they are not the
/// mailbox's.
fn frames(sub: &mut Subscription, index: &HashMap<String, usize>) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(message) = sub.try_next() {
        let Message::Event(event) = message else {
            panic!("a mailbox stream got {message:?}");
        };
        if event.event_type().starts_with("server.") {
            continue;
        }
        let data: serde_json::Value = serde_json::from_str(event.data()).expect("JSON");
        let trace = data["trace"].as_str().expect("a trace");
        frames.push(Frame {
            kind: event.event_type().to_owned(),
            record: *index
                .get(trace)
                .unwrap_or_else(|| panic!("a frame for an unknown trace {trace}")),
            id: event.id().to_string(),
        });
    }
    frames
}

async fn run(redis: &RedisServer, case: usize, ops: &[Op]) {
    let mut pair = Pair::new(redis, case).await;
    for op in ops {
        within("a step on both mailboxes", pair.step(op)).await;
        // Compared as they stand, without purging first: both purge what
        // expired at the same steps (send, status, ack, a stream opening)
        // and not at the others (a reply answers `Expired` until a purge),
        // so after every step they must hold the same, expired or not.
        pair.compare_stats(op).await;
    }
    // Every record, then what a new stream of each client is sent (which
    // proves nothing, so changes nothing).
    for i in 0..pair.records.len() {
        pair.compare_status(i).await;
    }
    for client in 0..CLIENTS.len() {
        pair.resume(client, Some(0)).await;
    }
    pair.compare_stats("the last streams").await;
}

/// The runtime every case runs on: two workers, so that the replica's
/// reader runs beside the case, built once so that a case costs only its
/// replica.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_redis_mailbox_answers_as_the_in_memory_one() {
    let runtime = runtime();
    let redis = runtime.block_on(RedisServer::start());
    let case = AtomicUsize::new(0);
    // `PROPTEST_CASES` runs more (3000 take about a minute).
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES);
    let mut runner = TestRunner::new(Config {
        cases,
        // A failing case is kept in tests/proptest-regressions and run
        // first from then on.
        source_file: Some(file!()),
        ..Config::default()
    });
    let started = Instant::now();
    let result = runner.run(&prop::collection::vec(op(), 1..=MAX_OPS), |ops| {
        let n = case.fetch_add(1, Ordering::Relaxed);
        runtime.block_on(run(&redis, n, &ops));
        Ok(())
    });
    eprintln!(
        "{} cases (shrinking included) in {:.1?}",
        case.load(Ordering::Relaxed),
        started.elapsed()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A disagreement the random walk found about once in 300 cases (the
/// Redis store kept unseen replies in the order of their notifications),
/// pinned so that every run checks it: a sender with two replies it has
/// not seen, given in the other order than the notifications were sent. In memory they are held for it, sent again
/// and, once its `Last-Event-ID` proves them, finished in the order they
/// were given; so a sender over its share forgets the one answered first.
/// Both stores must agree on that order, and so on what is forgotten.
#[test]
fn unseen_replies_are_sent_again_and_finished_in_the_order_they_were_given() {
    let send = |to, expects_reply| Op::Send {
        to,
        from: 0,
        expects_reply,
        ttl: 50,
        pad: 0,
    };
    let reply = |record| Op::Reply {
        record,
        by: None,
        pad: 0,
    };
    let ops = [
        send(1, true),
        send(2, true),
        reply(1),
        reply(0),
        // Ann gets both replies and proves it.
        Op::Resume {
            client: 0,
            read: None,
        },
        // Ann at her share (4): her next send forgets her oldest finished.
        send(2, false),
        send(2, false),
        send(2, false),
        Op::Status {
            record: 0,
            asker: 0,
        },
    ];
    let runtime = runtime();
    runtime.block_on(async {
        let redis = RedisServer::start().await;
        run(&redis, 0, &ops).await;
    });
}
