//! The broker contract, case by case (the proptest model in `model/local.rs`
//! covers random sequences).

use std::time::Duration;

use tower_sse::{Broker, Event, EventId, ManualClock, Message, PublishError, ResyncReason, Topics};

fn topics(names: &[&str]) -> Topics {
    Topics::parse(names).unwrap()
}

fn data_of(message: Option<Message>) -> String {
    match message {
        Some(Message::Event(event)) => event.data().to_owned(),
        other => panic!("expected an event, got {other:?}"),
    }
}

fn broker() -> Broker {
    Broker::builder().epoch(7).build()
}

#[test]
fn ids_are_epoch_and_one_sequence_for_all_topics() {
    let broker = broker();
    let a = broker
        .publish(Event::new("t").topic("a").data("1"))
        .unwrap();
    let b = broker
        .publish(Event::new("t").topic("b").data("2"))
        .unwrap();
    assert_eq!(a, EventId::new(7, 1));
    assert_eq!(b.to_string(), "7-2");
    assert_eq!(broker.last_event_id(), b);
}

#[test]
fn no_id_means_live_from_now_without_resync() {
    let broker = broker();
    broker.publish(Event::new("t").data("old")).unwrap();
    let mut sub = broker.subscribe(&topics(&["public"]), None).unwrap();
    assert!(sub.try_next().is_none());
    broker.publish(Event::new("t").data("new")).unwrap();
    assert_eq!(data_of(sub.try_next()), "new");
    assert!(sub.try_next().is_none());
}

#[test]
fn resume_replays_exactly_what_followed_the_id() {
    let broker = broker();
    let ids: Vec<_> = (0..5)
        .map(|i| broker.publish(Event::new("t").data(i.to_string())).unwrap())
        .collect();
    let mut sub = broker
        .subscribe(&topics(&["public"]), Some(&ids[1].to_string()))
        .unwrap();
    for expected in ["2", "3", "4"] {
        assert_eq!(data_of(sub.try_next()), expected);
    }
    assert!(sub.try_next().is_none());
    assert_eq!(sub.position(), ids[4]);
}

#[test]
fn resume_from_zero_replays_everything_retained() {
    let broker = broker();
    broker.publish(Event::new("t").data("a")).unwrap();
    let mut sub = broker.subscribe(&topics(&["public"]), Some("7-0")).unwrap();
    assert_eq!(data_of(sub.try_next()), "a");
}

#[test]
fn unusable_ids_resync_then_go_live() {
    let broker = broker();
    broker.publish(Event::new("t").data("a")).unwrap();
    let junk = "x".repeat(10_000);
    let cases: [(&str, ResyncReason); 8] = [
        ("", ResyncReason::Malformed),
        ("abc", ResyncReason::Malformed),
        ("1-2-3", ResyncReason::Malformed),
        ("7-99999999999999999999999", ResyncReason::Malformed),
        (&junk, ResyncReason::Malformed),
        ("8-1", ResyncReason::UnknownEpoch),
        ("7-2", ResyncReason::Future),
        ("7-18446744073709551615", ResyncReason::Future),
    ];
    for (id, expected) in cases {
        let mut sub = broker.subscribe(&topics(&["public"]), Some(id)).unwrap();
        match sub.try_next() {
            Some(Message::Resync {
                reason,
                resume_from,
            }) => {
                assert_eq!(reason, expected, "id {id:?}");
                assert_eq!(resume_from, EventId::new(7, 1));
            }
            other => panic!("id {id:?}: expected resync, got {other:?}"),
        }
        assert!(sub.try_next().is_none());
    }
}

#[test]
fn resume_boundaries_at_the_oldest_retained_event() {
    let broker = Broker::builder().epoch(7).retain_events(3).build();
    for i in 1..=6 {
        broker.publish(Event::new("t").data(i.to_string())).unwrap();
    }
    // Retained: 4, 5, 6. Resuming from 3 (oldest-1) loses nothing.
    let mut sub = broker.subscribe(&topics(&["public"]), Some("7-3")).unwrap();
    assert_eq!(data_of(sub.try_next()), "4");
    // From 2 (oldest-2), event 3 is gone.
    let mut sub = broker.subscribe(&topics(&["public"]), Some("7-2")).unwrap();
    assert!(matches!(
        sub.try_next(),
        Some(Message::Resync {
            reason: ResyncReason::Expired,
            ..
        })
    ));
    // From the newest: nothing to replay, no resync.
    let mut sub = broker.subscribe(&topics(&["public"]), Some("7-6")).unwrap();
    assert!(sub.try_next().is_none());
}

#[test]
fn evictions_of_other_topics_do_not_resync_a_quiet_topic() {
    let broker = Broker::builder().epoch(7).retain_events(2).build();
    let quiet = broker
        .publish(Event::new("t").topic("quiet").data("q"))
        .unwrap();
    broker
        .publish(Event::new("t").topic("quiet").data("q2"))
        .unwrap();
    let mut live = broker
        .subscribe(&topics(&["quiet"]), Some(&quiet.to_string()))
        .unwrap();
    for i in 0..10 {
        broker
            .publish(Event::new("t").topic("busy").data(i.to_string()))
            .unwrap();
    }
    // q2 was evicted before `live` read it: that is a lag, reported.
    match live.try_next() {
        Some(Message::Lagged { missed, .. }) => assert_eq!(missed, 1),
        other => panic!("expected lag, got {other:?}"),
    }
    let mut idle = broker.subscribe(&topics(&["quiet"]), None).unwrap();
    for i in 0..10 {
        broker
            .publish(Event::new("t").topic("busy").data(i.to_string()))
            .unwrap();
    }
    assert!(idle.try_next().is_none());
    assert!(live.try_next().is_none());
}

#[test]
fn a_lagging_reader_is_told_how_many_it_missed() {
    let broker = Broker::builder().epoch(7).retain_events(4).build();
    let mut sub = broker.subscribe(&topics(&["public"]), None).unwrap();
    for i in 1..=10 {
        broker.publish(Event::new("t").data(i.to_string())).unwrap();
    }
    match sub.try_next() {
        Some(Message::Lagged {
            missed,
            resume_from,
        }) => {
            assert_eq!(missed, 6);
            assert_eq!(resume_from, EventId::new(7, 6));
        }
        other => panic!("expected lag, got {other:?}"),
    }
    for expected in 7..=10 {
        assert_eq!(data_of(sub.try_next()), expected.to_string());
    }
    let stats = broker.stats();
    assert_eq!((stats.lagged_events, stats.lag_reports), (6, 1));
}

#[test]
fn age_retention_uses_the_injected_clock() {
    let clock = ManualClock::new();
    let broker = Broker::builder()
        .epoch(7)
        .retain_for(Duration::from_secs(30))
        .clock(clock.clone())
        .build();
    let first = broker.publish(Event::new("t").data("old")).unwrap();
    clock.advance(Duration::from_secs(20));
    broker.publish(Event::new("t").data("newer")).unwrap();
    clock.advance(Duration::from_secs(11));
    let mut sub = broker.subscribe(&topics(&["public"]), Some("7-0")).unwrap();
    assert!(matches!(
        sub.try_next(),
        Some(Message::Resync {
            reason: ResyncReason::Expired,
            ..
        })
    ));
    let mut sub = broker
        .subscribe(&topics(&["public"]), Some(&first.to_string()))
        .unwrap();
    assert_eq!(data_of(sub.try_next()), "newer");
    assert_eq!(broker.stats().retained_events, 1);
}

#[test]
fn byte_retention_bounds_the_log() {
    let broker = Broker::builder().epoch(7).retain_bytes(1_000).build();
    for _ in 0..100 {
        broker
            .publish(Event::new("t").data("x".repeat(100)))
            .unwrap();
    }
    let stats = broker.stats();
    assert!(stats.retained_bytes <= 1_000, "{stats:?}");
    assert!(stats.retained_events >= 1);
}

#[test]
fn bad_events_are_refused_with_a_reason() {
    let broker = Broker::builder().max_event_bytes(16).build();
    assert_eq!(
        broker.publish(Event::new("a\nb").data("x")),
        Err(PublishError::InvalidEventType)
    );
    assert_eq!(
        broker.publish(Event::new("a\rb").data("x")),
        Err(PublishError::InvalidEventType)
    );
    assert_eq!(
        broker.publish(Event::new("")),
        Err(PublishError::EmptyEventType)
    );
    assert_eq!(
        broker.publish(Event::new("t").data(vec![0xff, 0xfe])),
        Err(PublishError::NotUtf8 { valid_up_to: 0 })
    );
    // The limit counts the type and the payload: both go out in every frame.
    assert_eq!(
        broker.publish(Event::new("t").data("x".repeat(16))),
        Err(PublishError::TooLarge {
            size: 17,
            limit: 16
        })
    );
    assert_eq!(
        broker.publish(Event::new("t".repeat(17))),
        Err(PublishError::TooLarge {
            size: 17,
            limit: 16
        })
    );
    assert_eq!(broker.stats().published, 0);
    // At the limit exactly: accepted.
    assert!(broker.publish(Event::new("t").data("x".repeat(15))).is_ok());
    assert_eq!(
        broker.publish(Event::new("t").topic("no spaces")),
        Err(PublishError::InvalidTopic)
    );
    assert_eq!(
        broker.publish(Event::new("t").topic("$system")),
        Err(PublishError::InvalidTopic)
    );
    assert_eq!(broker.stats().published, 1, "only the event at the limit");
}

#[test]
fn topics_are_isolated_and_system_events_reach_everyone() {
    let broker = broker();
    let mut a = broker.subscribe(&topics(&["a"]), None).unwrap();
    let mut b = broker.subscribe(&topics(&["b"]), None).unwrap();
    broker
        .publish(Event::new("t").topic("a").data("for a"))
        .unwrap();
    broker
        .publish_system(Event::new("maintenance").data("{}"))
        .unwrap();
    assert_eq!(data_of(a.try_next()), "for a");
    match b.try_next() {
        Some(Message::Event(event)) => {
            assert!(event.is_system());
            assert_eq!(event.event_type(), "maintenance");
        }
        other => panic!("expected the system event, got {other:?}"),
    }
    assert_eq!(data_of(a.try_next()), "{}");
    assert!(b.try_next().is_none());
}

#[test]
fn a_subscriber_of_several_topics_sees_one_increasing_order() {
    let broker = broker();
    let mut sub = broker.subscribe(&topics(&["a", "b"]), Some("7-0")).unwrap();
    for i in 0..20 {
        let topic = if i % 3 == 0 { "a" } else { "b" };
        broker
            .publish(Event::new("t").topic(topic).data(i.to_string()))
            .unwrap();
    }
    let mut last = 0;
    for i in 0..20 {
        match sub.try_next() {
            Some(Message::Event(event)) => {
                assert!(event.id().seq() > last);
                last = event.id().seq();
                assert_eq!(event.data(), i.to_string());
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn drop_unsubscribes_and_close_ends_streams() {
    let broker = broker();
    let sub = broker.subscribe(&topics(&["a"]), None).unwrap();
    let mut other = broker.subscribe(&topics(&["a"]), None).unwrap();
    assert_eq!(broker.stats().subscribers, 2);
    drop(sub);
    assert_eq!(broker.stats().subscribers, 1);
    broker
        .publish(Event::new("t").topic("a").data("last"))
        .unwrap();
    broker.close();
    assert_eq!(
        broker.publish(Event::new("t").topic("a")),
        Err(PublishError::Closed)
    );
    assert!(broker.subscribe(&topics(&["a"]), None).is_err());
    assert_eq!(data_of(other.try_next()), "last");
    assert!(other.try_next().is_none());
    assert!(other.is_finished());
    drop(other);
    let stats = broker.stats();
    assert_eq!(stats.subscribers, 0);
}

#[test]
fn unwatched_empty_topics_are_forgotten() {
    let broker = Broker::builder().epoch(7).retain_events(1).build();
    for i in 0..100 {
        let sub = broker
            .subscribe(&topics(&[&format!("user-{i}")]), None)
            .unwrap();
        broker
            .publish(Event::new("t").topic(format!("user-{i}")))
            .unwrap();
        drop(sub);
    }
    // Only the last event is retained, so at most its topic remains.
    assert!(broker.stats().topics <= 1, "{:?}", broker.stats());
}

#[test]
fn a_pruned_topic_cannot_be_resumed_past_what_it_lost() {
    let broker = Broker::builder().epoch(7).retain_events(1).build();
    let before = broker
        .publish(Event::new("t").topic("gone").data("1"))
        .unwrap();
    broker
        .publish(Event::new("t").topic("gone").data("2"))
        .unwrap();
    broker
        .publish(Event::new("t").topic("other").data("x"))
        .unwrap();
    // "gone" holds nothing now and was forgotten; event 2 was lost.
    let mut sub = broker
        .subscribe(&topics(&["gone"]), Some(&before.to_string()))
        .unwrap();
    assert!(matches!(
        sub.try_next(),
        Some(Message::Resync {
            reason: ResyncReason::Expired,
            ..
        })
    ));
}

/// A waker that counts how often it is woken.
struct CountingWaker(std::sync::atomic::AtomicUsize);

impl std::task::Wake for CountingWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_publish_wakes_only_the_watchers_of_its_topic() {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    let broker = broker();
    let counter = Arc::new(CountingWaker(Default::default()));
    let waker = Waker::from(counter.clone());
    let mut cx = Context::from_waker(&waker);
    let mut others: Vec<_> = (0..1_000)
        .map(|_| broker.subscribe(&topics(&["other"]), None).unwrap())
        .collect();
    for sub in &mut others {
        assert!(sub.poll_recv(&mut cx).is_pending());
    }
    let mut watcher = broker.subscribe(&topics(&["hot"]), None).unwrap();
    let watcher_counter = Arc::new(CountingWaker(Default::default()));
    let watcher_waker = Waker::from(watcher_counter.clone());
    assert!(watcher
        .poll_recv(&mut Context::from_waker(&watcher_waker))
        .is_pending());

    for i in 0..100 {
        broker
            .publish(Event::new("t").topic("hot").data(i.to_string()))
            .unwrap();
    }
    assert_eq!(
        counter.0.load(Ordering::SeqCst),
        0,
        "other topics were woken"
    );
    // Woken once: it has not polled again, so later publishes find no waker.
    assert_eq!(watcher_counter.0.load(Ordering::SeqCst), 1);
    match watcher.poll_recv(&mut Context::from_waker(&watcher_waker)) {
        Poll::Ready(Some(Message::Event(event))) => assert_eq!(event.data(), "0"),
        other => panic!("{other:?}"),
    }
    // A system event does reach every subscription.
    broker
        .publish_system(Event::new("maintenance").data("{}"))
        .unwrap();
    assert_eq!(counter.0.load(Ordering::SeqCst), 1_000);
}

/// A direct message of a shared stream (what a mailbox kept in Redis
/// appends), for the mirrored broker's tests below.
fn direct_entry(seq: u64, topic: &str) -> tower_sse::broker::Mirrored {
    tower_sse::broker::Mirrored {
        stream_seq: seq,
        age: Duration::ZERO,
        topic: topic.into(),
        event_type: Some("notification".into()),
        data: format!("direct {seq}").into(),
        direct: Some(tower_sse::broker::MirroredDirect { key: seq }),
    }
}

fn event_entry(seq: u64, topic: &str) -> tower_sse::broker::Mirrored {
    tower_sse::broker::Mirrored {
        direct: None,
        event_type: None,
        ..direct_entry(seq, topic)
    }
}

/// A mirrored broker joined to an empty stream of epoch 9.
fn joined_mirror() -> Broker {
    let broker = Broker::builder()
        .epoch(1)
        .retain_forever()
        .mirrored()
        .build();
    broker.mirror_reset(9, []);
    broker
}

/// A stream of `client`'s private topic and the public topic `a`.
fn client_stream(
    broker: &Broker,
    client: &str,
) -> (tower_sse::Subscription, tower_sse::mailbox::Connection) {
    tower_sse::mailbox::Mailbox::new(broker.clone())
        .subscribe(client, None)
        .unwrap()
}

#[test]
fn a_mirrored_entry_older_than_the_broker_ages_in_full() {
    // A replica that joins a stream takes its tail, which may be older
    // than the replica: the bound on age holds from each entry's publish,
    // as on every other replica, not from when this one started.
    let clock = ManualClock::new();
    let broker = Broker::builder()
        .epoch(1)
        .retain_for(Duration::from_secs(30))
        .clock(clock.clone())
        .mirrored()
        .build();
    let aged = |seq, secs| tower_sse::broker::Mirrored {
        age: Duration::from_secs(secs),
        ..event_entry(seq, "a")
    };
    // At the clock's origin: 31 s old is past the bound, 10 s is not.
    broker.mirror_reset(9, [aged(1, 31), aged(2, 10)]);
    let stats = broker.stats();
    assert_eq!((stats.evicted, stats.retained_events), (1, 1), "{stats:?}");
    let mut sub = broker
        .subscribe(&topics(&["a"]), Some(&broker.mirrored_id(1).to_string()))
        .unwrap();
    assert_eq!(data_of(sub.try_next()), "direct 2");
    // 20 s on, the second is 30 s old: kept. A second later it is not.
    clock.advance(Duration::from_secs(20));
    broker.evict_expired();
    assert_eq!(broker.stats().retained_events, 1);
    clock.advance(Duration::from_secs(1));
    broker.evict_expired();
    assert_eq!(broker.stats().retained_events, 0);
    // Live entries of any age count the same way, and so do absurd ones.
    broker.mirror([aged(3, 40), aged(4, u64::MAX), aged(5, 0)]);
    let stats = broker.stats();
    assert_eq!((stats.evicted, stats.retained_events), (4, 1), "{stats:?}");
}

#[test]
fn a_bound_on_age_past_any_clock_evicts_nothing_by_age() {
    let clock = ManualClock::new();
    let broker = Broker::builder()
        .epoch(1)
        .retain_for(Duration::MAX)
        .clock(clock.clone())
        .mirrored()
        .build();
    broker.mirror_reset(
        9,
        [tower_sse::broker::Mirrored {
            age: Duration::from_secs(u64::MAX),
            ..event_entry(1, "a")
        }],
    );
    clock.advance(Duration::from_secs(1 << 40));
    broker.evict_expired();
    assert_eq!(broker.stats().retained_events, 1);
}

#[test]
fn a_mirrored_direct_message_reaches_its_watchers_under_the_stream_id_and_is_never_replayed() {
    let broker = joined_mirror();
    let (mut bob, _c1) = client_stream(&broker, "bob");
    let (mut ann, _c2) = client_stream(&broker, "ann");
    let outcome = broker.mirror([
        direct_entry(1, "$client/bob"),
        event_entry(2, "$system"),
        direct_entry(3, "$client/cy"),
    ]);
    assert_eq!((outcome.direct, outcome.skipped), (2, 1));
    match bob.try_next() {
        Some(Message::Event(event)) => {
            assert_eq!(event.id(), broker.mirrored_id(1));
            assert_eq!(
                (event.event_type(), event.data()),
                ("notification", "direct 1")
            );
        }
        other => panic!("expected the direct message, got {other:?}"),
    }
    // The one for a client with no stream here reached nobody, and nobody
    // else got anything: no lag for the seqs it took.
    assert!(bob.try_next().is_none());
    assert!(ann.try_next().is_none());
    // A stream resuming from before it is not sent it again: never retained.
    let mailbox = tower_sse::mailbox::Mailbox::new(broker.clone());
    let before = broker.mirrored_id(0).to_string();
    let (mut again, _c3) = mailbox.subscribe("bob", Some(&before)).unwrap();
    assert!(again.try_next().is_none());
    assert_eq!(broker.stats().retained_events, 0);
}

#[test]
fn a_direct_message_in_a_backfill_reaches_nobody_and_a_bad_one_is_skipped() {
    let broker = joined_mirror();
    let (mut bob, _c) = client_stream(&broker, "bob");
    // Rejoining with a tail holding a direct message: history, not news.
    let outcome = broker.mirror_reset(9, [direct_entry(1, "$client/bob")]);
    assert_eq!(outcome.skipped, 0);
    let mut messages = Vec::new();
    while let Some(message) = bob.try_next() {
        messages.push(message);
    }
    assert!(
        messages.iter().all(|m| !matches!(m, Message::Event(_))),
        "{messages:?}"
    );
    // Not a topic of direct messages: the public `a`, the system topic.
    let outcome = broker.mirror([direct_entry(2, "a"), direct_entry(3, "$system")]);
    assert_eq!((outcome.direct, outcome.skipped), (0, 2));
    assert_eq!(broker.stats().mirror.unwrap().skipped, 2);
}

/// Everything `sub` yields now, and whether it has ended.
fn drain(sub: &mut tower_sse::Subscription) -> (Vec<Message>, bool) {
    let mut got = Vec::new();
    while let Some(message) = sub.try_next() {
        got.push(message);
    }
    (got, sub.is_finished())
}

#[test]
fn a_lost_stretch_or_a_new_epoch_ends_the_streams_of_direct_topics_before_any_id_past_it() {
    for reset in [false, true] {
        let broker = joined_mirror();
        let (mut bob, _c1) = client_stream(&broker, "bob");
        let mut public = broker.subscribe(&topics(&["a"]), None).unwrap();
        broker.mirror([direct_entry(1, "$client/bob")]);
        if reset {
            // The stream lost its data: a new epoch, whose first entries
            // may have held direct messages this mirror never saw.
            broker.mirror_reset(10, [event_entry(1, "a"), event_entry(2, "a")]);
        } else {
            // Entries 2 to 4 trimmed before this mirror read them.
            broker.mirror([event_entry(5, "a")]);
        }
        let (got, ended) = drain(&mut bob);
        assert!(ended, "reset {reset}: {got:?}");
        // It showed the direct message it had, and no id past the break.
        let ids: Vec<_> = got
            .iter()
            .filter_map(|m| match m {
                Message::Event(e) => Some(e.id()),
                _ => None,
            })
            .collect();
        assert!(ids.len() <= 1, "reset {reset}: {got:?}");
        // A stream of public topics only is told as ever, and goes on.
        let (got, ended) = drain(&mut public);
        assert!(!ended && !got.is_empty(), "reset {reset}: {got:?}");
    }
}

#[test]
fn a_stream_that_stops_reading_the_shared_streams_direct_messages_is_cut_and_holds_nothing() {
    let broker = Broker::builder()
        .epoch(1)
        .retain_bytes(1 << 20)
        .retain_forever()
        .mirrored()
        .build();
    broker.mirror_reset(9, []);
    let (mut bob, _c) = client_stream(&broker, "bob");
    let big = "x".repeat(16 * 1024);
    let entries = (1..=40).map(|seq| tower_sse::broker::Mirrored {
        data: big.clone().into(),
        ..direct_entry(seq, "$client/bob")
    });
    broker.mirror(entries);
    // 40 x 16 KiB unread is past what one stream may hold (256 KiB here):
    // cut, its inbox freed at once, nothing more put in.
    assert_eq!(broker.stats().direct_bytes, 0);
    broker.mirror([direct_entry(41, "$client/bob")]);
    assert_eq!(broker.stats().direct_bytes, 0);
    let (got, ended) = drain(&mut bob);
    assert!(ended && got.is_empty(), "{got:?}");
    // Another client's stream is not touched.
    let (mut ann, _c2) = client_stream(&broker, "ann");
    broker.mirror([direct_entry(42, "$client/ann")]);
    let (got, ended) = drain(&mut ann);
    assert!(!ended && got.len() == 1, "{got:?}");
}

/// The defaults are the README's ("Configuration at a glance"): a broker
/// built with none set refuses an event one byte over 1 MiB, keeps the
/// 2,000 newest events, holds at most 8 MiB of them and forgets them after
/// 30 s.
#[test]
fn a_default_broker_keeps_the_documented_bounds() {
    let readme = include_str!("../../README.md");
    assert!(readme.contains("| replay: events / bytes / age | 2000 / 8 MiB / 30 s |"));
    assert!(readme.contains("| largest event (type and payload) | 1 MiB |"));

    let clock = ManualClock::new();
    let broker = Broker::builder().clock(clock.clone()).build();
    let mib = 1 << 20;
    let oversized = broker.publish(Event::new("t").data("x".repeat(mib)));
    assert_eq!(
        oversized,
        Err(PublishError::TooLarge {
            size: mib + 1,
            limit: mib
        })
    );
    // Nine events of 1 MiB: the oldest go to keep the log within 8 MiB.
    for _ in 0..9 {
        broker
            .publish(Event::new("t").data("x".repeat(mib - 1)))
            .unwrap();
    }
    let stats = broker.stats();
    assert_eq!(stats.retained_events, 7, "{stats:?}");
    assert!(stats.retained_bytes <= 8 * mib, "{stats:?}");
    for n in 0..2_001 {
        broker.publish(Event::new("t").data(n.to_string())).unwrap();
    }
    assert_eq!(broker.stats().retained_events, 2_000);

    clock.advance(Duration::from_secs(30));
    broker.evict_expired();
    assert_eq!(
        broker.stats().retained_events,
        2_000,
        "30 s old: still kept"
    );
    clock.advance(Duration::from_millis(1));
    broker.evict_expired();
    assert_eq!(broker.stats().retained_events, 0, "older than 30 s: gone");
}

/// What a log line or a failed assertion shows of the broker's types: each
/// names itself and what it holds.
#[test]
fn debug_output_names_the_type_and_its_state() {
    let builder = Broker::builder().epoch(7).retain_events(12);
    let shown = format!("{builder:?}");
    assert!(shown.starts_with("BrokerBuilder {"), "{shown}");
    assert!(
        shown.contains("max_events: 12") && shown.contains("epoch: Some(7)"),
        "{shown}"
    );

    let broker = builder.build();
    let mut sub = broker.subscribe(&topics(&["a", "b"]), Some("7-0")).unwrap();
    broker
        .publish(Event::new("t").topic("a").data("hello"))
        .unwrap();
    let shown = format!("{broker:?}");
    assert!(
        shown.starts_with("Broker { epoch: 7, stats: BrokerStats {"),
        "{shown}"
    );
    assert!(shown.contains("published: 1"), "{shown}");

    let shown = format!("{sub:?}");
    assert!(shown.starts_with("Subscription { topics: 2,"), "{shown}");
    assert!(shown.contains("finished: false"), "{shown}");

    let Some(Message::Event(event)) = sub.try_next() else {
        panic!("the event");
    };
    let shown = format!("{event:?}");
    assert!(shown.starts_with("ReceivedEvent { id: EventId"), "{shown}");
    assert!(
        shown.contains(r#"topic: "a""#) && shown.contains(r#"data: "hello""#),
        "{shown}"
    );
}
