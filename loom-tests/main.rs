//! Loom models of the broker's concurrency claims: invariants 1 to 6 of
//! the design, one named model each.
//!
//! Run with
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test --release --test loom
//! ```
//!
//! Every model runs under a preemption bound (`PREEMPTIONS`, default 3,
//! overridable with `LOOM_MAX_PREEMPTIONS`): loom then explores every
//! interleaving with at most that many forced context switches, which is
//! where ordering bugs of this kind live, and the suite finishes in minutes
//! on two cores. The retained events are held in `loom::sync::Arc`, so loom
//! also reports any leak of an event when a model ends.
#![cfg(loom)]

use loom::thread;
use tower_sse::{Broker, Event, EventId, Message, Topics};

const EPOCH: u64 = 42;
const PREEMPTIONS: usize = 3;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(PREEMPTIONS);
    }
    builder.check(f);
}

fn broker() -> Broker {
    Broker::builder().epoch(EPOCH).retain_forever().build()
}

fn topics(names: &[&str]) -> Topics {
    Topics::parse(names).unwrap()
}

fn publish(broker: &Broker, topic: &str, data: &str) -> EventId {
    broker
        .publish(Event::new("t").topic(topic).data(data.to_owned()))
        .unwrap()
}

/// What a subscription yielded, reduced to what the invariants talk about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Event(u64, String),
    Lagged(u64),
    Resync,
}

fn to_seen(message: Message) -> Seen {
    match message {
        Message::Event(event) => Seen::Event(event.id().seq(), event.data().to_owned()),
        Message::Lagged { missed, .. } => Seen::Lagged(missed),
        Message::Resync { .. } => Seen::Resync,
    }
}

fn drain(sub: &mut tower_sse::Subscription, into: &mut Vec<Seen>) {
    while let Some(message) = sub.try_next() {
        into.push(to_seen(message));
    }
}

fn event_seqs(seen: &[Seen]) -> Vec<u64> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Event(seq, _) => Some(*seq),
            _ => None,
        })
        .collect()
}

/// Invariant 1: a subscription resuming from an id, racing publishes,
/// receives every later event exactly once and in order: nothing is lost or
/// repeated at the seam between replay and live.
#[test]
fn replay_live_seam_is_exactly_once() {
    model(|| {
        let broker = broker();
        let first = publish(&broker, "a", "1");

        let publisher = {
            let broker = broker.clone();
            thread::spawn(move || {
                publish(&broker, "a", "2");
                publish(&broker, "a", "3");
            })
        };
        let subscriber = {
            let broker = broker.clone();
            thread::spawn(move || {
                let mut sub = broker
                    .subscribe(&topics(&["a"]), Some(&first.to_string()))
                    .unwrap();
                let mut seen = Vec::new();
                if let Some(m) = sub.try_next() {
                    seen.push(to_seen(m));
                }
                (sub, seen)
            })
        };
        publisher.join().unwrap();
        let (mut sub, mut seen) = subscriber.join().unwrap();
        drain(&mut sub, &mut seen);
        assert_eq!(
            seen,
            vec![Seen::Event(2, "2".into()), Seen::Event(3, "3".into())]
        );
    });
}

/// Invariant 1, live side: a subscription made with no id while publishes
/// race it sees a gap-free suffix of them, ending with the last.
#[test]
fn live_subscribe_sees_a_gap_free_suffix() {
    model(|| {
        let broker = broker();
        let publisher = {
            let broker = broker.clone();
            thread::spawn(move || {
                publish(&broker, "a", "1");
                publish(&broker, "a", "2");
            })
        };
        let mut sub = broker.subscribe(&topics(&["a"]), None).unwrap();
        let mut seen = Vec::new();
        if let Some(m) = sub.try_next() {
            seen.push(to_seen(m));
        }
        publisher.join().unwrap();
        drain(&mut sub, &mut seen);
        let seqs = event_seqs(&seen);
        assert_eq!(
            seqs.len(),
            seen.len(),
            "no resync or lag expected: {seen:?}"
        );
        let expected: Vec<u64> = (3 - seqs.len() as u64..3).collect();
        assert_eq!(seqs, expected);
    });
}

/// Invariant 2: a subscriber parked in `poll_next` is woken by a later
/// publish. A lost wake-up leaves `block_on` parked for ever, which loom
/// reports as a deadlock.
#[test]
fn parked_subscriber_is_woken_by_publish() {
    model(|| {
        let broker = broker();
        let mut sub = broker.subscribe(&topics(&["a"]), None).unwrap();
        let publisher = {
            let broker = broker.clone();
            thread::spawn(move || {
                publish(&broker, "b", "other topic");
                publish(&broker, "a", "wake");
            })
        };
        let message = loom::future::block_on(sub.recv());
        match message {
            Some(Message::Event(event)) => assert_eq!(event.data(), "wake"),
            other => panic!("expected the event, got {other:?}"),
        }
        publisher.join().unwrap();
    });
}

/// Invariant 3: a reader that falls behind retention is told, and what it
/// received plus what it was told it missed adds up to what was published.
#[test]
fn lag_is_reported_and_counts_add_up() {
    model(|| {
        let broker = Broker::builder()
            .epoch(EPOCH)
            .retain_forever()
            .retain_events(1)
            .build();
        let mut sub = broker.subscribe(&topics(&["a"]), None).unwrap();
        let publisher = {
            let broker = broker.clone();
            thread::spawn(move || {
                for data in ["1", "2", "3"] {
                    publish(&broker, "a", data);
                }
            })
        };
        let mut seen = Vec::new();
        if let Some(m) = sub.try_next() {
            seen.push(to_seen(m));
        }
        publisher.join().unwrap();
        drain(&mut sub, &mut seen);

        let received = event_seqs(&seen);
        let missed: u64 = seen
            .iter()
            .map(|s| match s {
                Seen::Lagged(n) => *n,
                _ => 0,
            })
            .sum();
        assert_eq!(received.len() as u64 + missed, 3, "{seen:?}");
        assert!(received.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(received.last(), Some(&3), "the newest is always retained");
        assert_eq!(broker.stats().lagged_events, missed);
        assert!(!seen.contains(&Seen::Resync));
    });
}

/// Invariant 4: two publishers on different topics; a subscriber of both
/// sees strictly increasing ids, and resuming from the first id it saw
/// still yields the other event: N+1 is never visible before N.
#[test]
fn two_publishers_ids_increase_for_a_subscriber_of_both() {
    model(|| {
        let broker = broker();
        let mut sub = broker.subscribe(&topics(&["a", "b"]), None).unwrap();
        let pa = {
            let broker = broker.clone();
            thread::spawn(move || publish(&broker, "a", "a"))
        };
        let pb = {
            let broker = broker.clone();
            thread::spawn(move || publish(&broker, "b", "b"))
        };
        let first = sub.try_next().map(to_seen);
        pa.join().unwrap();
        pb.join().unwrap();

        let mut seen: Vec<Seen> = first.clone().into_iter().collect();
        drain(&mut sub, &mut seen);
        assert_eq!(event_seqs(&seen), vec![1, 2]);

        // A client that saw only the first event and reconnects with its id
        // must get the other one.
        if let Some(Seen::Event(seq, _)) = first {
            let mut resumed = broker
                .subscribe(
                    &topics(&["a", "b"]),
                    Some(&EventId::new(EPOCH, seq).to_string()),
                )
                .unwrap();
            let mut rest = Vec::new();
            drain(&mut resumed, &mut rest);
            let expected: Vec<u64> = (seq + 1..=2).collect();
            assert_eq!(event_seqs(&rest), expected);
        }
    });
}

/// Invariant 5: dropping a subscription while a publish and a close race
/// it: no panic, no leak (loom checks the events' `Arc`s), counts exact.
#[test]
fn drop_racing_publish_and_close() {
    model(|| {
        let broker = broker();
        let sub = broker.subscribe(&topics(&["a"]), None).unwrap();
        let keep = broker.subscribe(&topics(&["a"]), None).unwrap();
        let dropper = thread::spawn(move || drop(sub));
        let publisher = {
            let broker = broker.clone();
            thread::spawn(move || {
                // Refused once the close won the race; never a panic.
                let _ = broker.publish(Event::new("t").topic("a").data("x"));
            })
        };
        broker.close();
        dropper.join().unwrap();
        publisher.join().unwrap();
        assert_eq!(broker.stats().subscribers, 1);
        drop(keep);
        let stats = broker.stats();
        assert_eq!(stats.subscribers, 0);
        assert!(stats.published <= 1);
        // Nothing watches "a" any more: it is kept only while it holds the event.
        assert_eq!(
            broker.topic_stats("a").map(|s| s.retained_events),
            (stats.published == 1).then_some(1)
        );
    });
}

/// Invariant 6: closing the broker while a subscriber is parked ends the
/// subscriber's stream (after what was already published for it).
#[test]
fn close_racing_parked_subscriber_ends_it() {
    model(|| {
        let broker = broker();
        let mut sub = broker.subscribe(&topics(&["a"]), None).unwrap();
        let closer = {
            let broker = broker.clone();
            thread::spawn(move || {
                publish(&broker, "a", "last");
                broker.close();
            })
        };
        let seen = loom::future::block_on(async {
            let mut seen = Vec::new();
            while let Some(message) = sub.recv().await {
                seen.push(to_seen(message));
            }
            seen
        });
        closer.join().unwrap();
        assert_eq!(seen, vec![Seen::Event(1, "last".into())]);
        assert!(sub.is_finished());
    });
}

/// Mailbox: a notification sent while its target's stream opens is handed
/// to that stream exactly once, whichever wins the race: either the send
/// sees the stream and publishes, or the stream's connect finds it held
/// and sends it.
#[test]
fn notification_racing_connect_reaches_the_stream() {
    use tower_sse::mailbox::{Mailbox, Notification};
    model(|| {
        let mailbox = Mailbox::new(broker());
        let sender = {
            let mailbox = mailbox.clone();
            thread::spawn(move || {
                mailbox
                    .send(Notification::to("bob").from("ann").json(&"hi").unwrap())
                    .unwrap()
            })
        };
        let client = {
            let mailbox = mailbox.clone();
            thread::spawn(move || mailbox.subscribe("bob", None).unwrap())
        };
        let trace = sender.join().unwrap();
        let (mut sub, _connection) = client.join().unwrap();
        let mut seen = Vec::new();
        drain(&mut sub, &mut seen);
        assert_eq!(seen.len(), 1, "{seen:?}");
        match &seen[0] {
            Seen::Event(_, data) => assert!(data.contains(trace.as_str())),
            other => panic!("{other:?}"),
        }
    });
}

/// Mailbox: a notification sent while a stream of its target closes is
/// never lost: unconfirmed, it reaches the next stream.
#[test]
fn notification_racing_disconnect_is_not_lost() {
    use tower_sse::mailbox::{Mailbox, Notification};
    model(|| {
        let mailbox = Mailbox::new(broker());
        let (sub, connection) = mailbox.subscribe("bob", None).unwrap();
        let closer = thread::spawn(move || drop((sub, connection)));
        let sender = {
            let mailbox = mailbox.clone();
            thread::spawn(move || {
                mailbox
                    .send(Notification::to("bob").from("ann").json(&"hi").unwrap())
                    .unwrap()
            })
        };
        closer.join().unwrap();
        let trace = sender.join().unwrap();
        assert!(!mailbox.status(&trace).unwrap().delivered);
        let (mut sub, _connection) = mailbox.subscribe("bob", None).unwrap();
        let mut seen = Vec::new();
        drain(&mut sub, &mut seen);
        assert!(
            seen.iter()
                .any(|s| matches!(s, Seen::Event(_, data) if data.contains(trace.as_str()))),
            "{seen:?}"
        );
        assert_eq!(mailbox.stats().online, 1);
    });
}

/// Direct messages: a notification (never retained) racing publishes that
/// make its stream lag is delivered exactly once, and every id the stream
/// yields, events and lag positions alike, is larger than the one before:
/// a direct message older than where a lag moves the stream goes out
/// first. (Fails if `Reader::peek` reports the lag before such a message.)
#[test]
fn notification_racing_a_lag_keeps_ids_increasing() {
    use tower_sse::mailbox::{Mailbox, Notification};
    model(|| {
        let broker = Broker::builder().epoch(EPOCH).retain_events(1).build();
        let mailbox = Mailbox::new(broker.clone());
        let (mut sub, _connection) = mailbox.subscribe("bob", None).unwrap();
        let sender = {
            let mailbox = mailbox.clone();
            thread::spawn(move || {
                mailbox
                    .send(Notification::to("bob").from("ann").json(&"hi").unwrap())
                    .unwrap()
            })
        };
        let publisher = {
            let broker = broker.clone();
            thread::spawn(move || {
                for _ in 0..2 {
                    broker.publish_system(Event::new("noise")).unwrap();
                }
            })
        };
        let mut got = Vec::new();
        if let Some(message) = sub.try_next() {
            got.push(message);
        }
        sender.join().unwrap();
        publisher.join().unwrap();
        got.extend(std::iter::from_fn(|| sub.try_next()));

        let mut last = 0;
        let (mut notifications, mut noise, mut missed) = (0, 0, 0);
        for message in &got {
            let at = match message {
                Message::Event(event) if event.event_type() == "notification" => {
                    notifications += 1;
                    event.id().seq()
                }
                Message::Event(event) => {
                    noise += 1;
                    event.id().seq()
                }
                Message::Lagged {
                    missed: n,
                    resume_from,
                } => {
                    missed += n;
                    resume_from.seq()
                }
                Message::Resync { .. } => panic!("{got:?}"),
            };
            assert!(at > last, "ids went back: {got:?}");
            last = at;
        }
        assert_eq!(notifications, 1, "{got:?}");
        assert_eq!(noise + missed, 2, "{got:?}");
        assert_eq!(broker.stats().direct_bytes, 0);
    });
}

/// Direct messages: acknowledging a notification while its stream reads it
/// lets it through or takes it back: once the ack is done, the stream has
/// nothing more to read and nothing is left in its inbox. (Fails if
/// `State::retract` keeps what it should take back.)
#[test]
fn ack_racing_the_read_of_a_notification_leaves_nothing_behind() {
    use tower_sse::mailbox::{Mailbox, Notification};
    model(|| {
        let mailbox = Mailbox::new(broker());
        let (mut sub, _connection) = mailbox.subscribe("bob", None).unwrap();
        let trace = mailbox
            .send(Notification::to("bob").from("ann").json(&"hi").unwrap())
            .unwrap();
        let acked = loom::sync::Arc::new(loom::sync::atomic::AtomicBool::new(false));
        let acker = {
            let (mailbox, acked) = (mailbox.clone(), acked.clone());
            thread::spawn(move || {
                assert!(mailbox.ack(&trace, "bob"));
                acked.store(true, loom::sync::atomic::Ordering::SeqCst);
            })
        };
        let acked_before = acked.load(loom::sync::atomic::Ordering::SeqCst);
        let raced = sub.try_next();
        assert!(
            !acked_before || raced.is_none(),
            "read after the ack: {raced:?}"
        );
        acker.join().unwrap();
        let mut after = Vec::new();
        drain(&mut sub, &mut after);
        assert!(
            after.is_empty(),
            "read after the ack: {after:?} ({raced:?})"
        );
        assert_eq!(mailbox.broker().stats().direct_bytes, 0);
    });
}

/// A broker on a manual clock with one subscription of topic `a` and one
/// event published to it, not yet read: what the coalescing models start
/// from.
fn coalescing_setup() -> (tower_sse::ManualClock, Broker, tower_sse::Subscription) {
    let clock = tower_sse::ManualClock::new();
    let broker = Broker::builder()
        .epoch(EPOCH)
        .retain_forever()
        .clock(clock.clone())
        .build();
    let sub = broker.subscribe(&topics(&["a"]), None).unwrap();
    publish(&broker, "a", "1");
    (clock, broker, sub)
}

/// Coalescing: a publish racing the end of a stream's coalescing window
/// still wakes the stream, whichever comes first (a lost wake-up would
/// leave `block_on` parked, which loom reports).
#[test]
fn publish_racing_the_end_of_a_coalescing_window_wakes_the_stream() {
    use std::future::poll_fn;
    use std::time::Duration;
    use tower_sse::loom_internals::{end_coalescing_windows, poll_frames, Frames};

    const WINDOW: Option<Duration> = Some(Duration::from_millis(20));
    model(|| {
        let (clock, broker, mut sub) = coalescing_setup();
        let first = loom::future::block_on(poll_fn(|cx| poll_frames(&mut sub, cx, WINDOW)));
        assert!(matches!(first, Frames::Data(_)));

        let publisher = {
            let broker = broker.clone();
            thread::spawn(move || publish(&broker, "a", "2"))
        };
        let releaser = {
            let broker = broker.clone();
            thread::spawn(move || {
                clock.advance(Duration::from_millis(20));
                end_coalescing_windows(&broker);
            })
        };
        let second = loom::future::block_on(poll_fn(|cx| poll_frames(&mut sub, cx, WINDOW)));
        match second {
            Frames::Data(bytes) => assert!(bytes.ends_with(b"data: 2\n\n")),
            other => panic!("{other:?}"),
        }
        publisher.join().unwrap();
        releaser.join().unwrap();
    });
}

/// Coalescing: the ticker parks while no coalescing window is open, and the
/// stream that opens one wakes it (a lost wake-up would leave `block_on`
/// parked, which loom reports), whichever of the two gets the lock first.
#[test]
fn opening_a_coalescing_window_wakes_the_parked_releaser() {
    use std::future::poll_fn;
    use std::time::Duration;
    use tower_sse::loom_internals::{end_coalescing_windows, poll_coalescing, poll_frames, Frames};

    const WINDOW: Option<Duration> = Some(Duration::from_millis(20));
    model(|| {
        let (clock, broker, mut sub) = coalescing_setup();
        let reader = thread::spawn(move || {
            let first = loom::future::block_on(poll_fn(|cx| poll_frames(&mut sub, cx, WINDOW)));
            assert!(matches!(first, Frames::Data(_)));
            sub
        });
        loom::future::block_on(poll_fn(|cx| poll_coalescing(&broker, cx)));
        let _sub = reader.join().unwrap();
        // The window is open until the clock passes its end.
        assert!(end_coalescing_windows(&broker));
        clock.advance(Duration::from_millis(20));
        assert!(!end_coalescing_windows(&broker));
    });
}
