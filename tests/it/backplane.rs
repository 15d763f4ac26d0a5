//! Replicas on a real Redis (feature `redis`): two replicas in one process
//! on one `redis-server` the test starts, publishing on either and reading
//! on both, resuming on one from the other's ids, and every fault of the
//! design: Redis down at start, killed and restarted with and without its
//! data, a replica cut off while the stream trims past it, and entries
//! written by something else; and two demo processes on one Redis, as one
//! service.

use std::time::Duration;

use tower_sse::backplane::{BackplaneError, RedisBackplane, Replica};
use tower_sse::mode::{Mode, ServerMode};
use tower_sse::{
    Broker, Event, EventId, Message, PublishError, ResyncReason, Subscription, Topics,
};

use http::{Method, StatusCode};

use crate::support::client;
use crate::support::process::Demo;
use crate::support::redis::{Proxy, RedisServer};
use crate::support::wait::{eventually, eventually_async, within};

/// The tests' backplane settings: a short block, so that a reader looks
/// at the stream often, and a short publish timeout.
fn backplane(url: &str) -> RedisBackplane {
    RedisBackplane::new(url)
        .expect("URL")
        .stream("test:events")
        .block(Duration::from_millis(100))
        .publish_timeout(Duration::from_millis(500))
}

fn replica_on(url: &str, mode: Option<&ServerMode>, builder: tower_sse::BrokerBuilder) -> Replica {
    let mut backplane = backplane(url);
    if let Some(mode) = mode {
        backplane = backplane.mode(mode);
    }
    backplane.start(builder)
}

fn replica(url: &str) -> Replica {
    replica_on(url, None, Broker::builder())
}

async fn in_step(replica: &Replica) {
    eventually("the replica to be in step with Redis", || {
        replica.stats().connected
    })
    .await;
}

fn topics(names: &[&str]) -> Topics {
    Topics::parse(names).unwrap()
}

fn event(topic: &str, data: &str) -> Event {
    Event::new("t").topic(topic).data(data.to_owned())
}

/// The next `n` messages of `sub`, waiting for each.
async fn take(sub: &mut Subscription, n: usize) -> Vec<Message> {
    let mut got = Vec::new();
    for _ in 0..n {
        let message = within("a message", sub.recv()).await.expect("stream open");
        got.push(message);
    }
    got
}

/// `(id, data)` of each event; panics on anything else.
fn events(messages: &[Message]) -> Vec<(EventId, String)> {
    messages
        .iter()
        .map(|m| match m {
            Message::Event(e) => (e.id(), e.data().to_owned()),
            other => panic!("expected an event, got {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_on_one_replica_reaches_the_other_with_the_same_id() {
    let redis = RedisServer::start().await;
    let (a, b) = (replica(&redis.url()), replica(&redis.url()));
    in_step(&a).await;
    in_step(&b).await;
    let mut on_a = a.broker().subscribe(&topics(&["x"]), None).unwrap();
    let mut on_b = b.broker().subscribe(&topics(&["x"]), None).unwrap();

    let first = a.publish(event("x", "from a")).await.unwrap();
    let second = b.publish(event("x", "from b")).await.unwrap();
    assert!(second > first);
    let expected = vec![(first, "from a".to_owned()), (second, "from b".to_owned())];
    assert_eq!(events(&take(&mut on_a, 2).await), expected);
    assert_eq!(events(&take(&mut on_b, 2).await), expected);
    // The broker itself refuses: publishing goes through the backplane.
    assert_eq!(
        a.broker().publish(event("x", "local")),
        Err(PublishError::Mirrored)
    );
    assert_eq!(a.stats().mirror.lag, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_replica_from_an_id_the_first_gave_it() {
    let redis = RedisServer::start().await;
    let a = replica(&redis.url());
    in_step(&a).await;
    let mut ids = Vec::new();
    for n in 0..6 {
        let topic = if n % 2 == 0 { "x" } else { "y" };
        ids.push(a.publish(event(topic, &format!("{n}"))).await.unwrap());
    }
    // A replica started afterwards takes the stream's retained tail.
    let b = replica(&redis.url());
    in_step(&b).await;
    eventually("b to mirror everything", || {
        b.stats().mirror.mirrored == a.stats().mirror.mirrored
    })
    .await;
    // Seen up to the second event on A: the rest of `x`, once, in order.
    let mut resumed = b
        .broker()
        .subscribe(&topics(&["x"]), Some(&ids[1].to_string()))
        .unwrap();
    let replayed = events(&take(&mut resumed, 2).await);
    assert_eq!(
        replayed,
        vec![(ids[2], "2".to_owned()), (ids[4], "4".to_owned())]
    );
    // Then live, across the seam.
    let live = a.publish(event("x", "live")).await.unwrap();
    assert_eq!(
        events(&take(&mut resumed, 1).await),
        vec![(live, "live".to_owned())]
    );
    assert!(resumed.try_next().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_on_both_replicas_make_one_order_that_both_deliver() {
    let redis = RedisServer::start().await;
    let (a, b) = (replica(&redis.url()), replica(&redis.url()));
    in_step(&a).await;
    in_step(&b).await;
    let mut on_a = a.broker().subscribe(&topics(&["x", "y"]), None).unwrap();
    let mut on_b = b.broker().subscribe(&topics(&["x", "y"]), None).unwrap();
    let mut publishers = Vec::new();
    for (replica, topic) in [(&a, "x"), (&b, "y"), (&a, "y"), (&b, "x")] {
        let replica = replica.clone();
        publishers.push(tokio::spawn(async move {
            for n in 0..25 {
                replica
                    .publish(event(topic, &format!("{topic}{n}")))
                    .await
                    .unwrap();
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let seen_a = events(&take(&mut on_a, 100).await);
    let seen_b = events(&take(&mut on_b, 100).await);
    assert_eq!(seen_a, seen_b, "the replicas disagree on the order");
    assert!(seen_a.windows(2).all(|w| w[0].0 < w[1].0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_degrades_the_mode_until_it_comes_up() {
    let redis = RedisServer::start().await;
    let proxy = Proxy::start(redis.addr()).await;
    proxy.cut();
    let mode = ServerMode::new();
    let a = replica_on(&proxy.url(), Some(&mode), Broker::builder());
    let degraded = mode.current();
    assert_eq!(degraded.mode, Mode::Degraded);
    assert!(degraded.reason.unwrap().starts_with("redis"));
    // Publishing fails at once, with a reason, never hangs.
    let refused = within("a refusal", a.publish(event("x", "no"))).await;
    assert!(
        matches!(&refused, Err(BackplaneError::Unavailable(why)) if why.starts_with("redis")),
        "{refused:?}"
    );
    // Streams open meanwhile, and stay open.
    let mut sub = a.broker().subscribe(&topics(&["x"]), None).unwrap();

    proxy.mend();
    in_step(&a).await;
    eventually("the mode to recover", || {
        mode.current().mode == Mode::Normal
    })
    .await;
    let id = a.publish(event("x", "yes")).await.unwrap();
    // A stream opened before the replica joined the stream is told it
    // joined (its ids so far were no replica's), then gets what follows.
    let got = take(&mut sub, 2).await;
    assert!(
        matches!(&got[0], Message::Resync { reason: ResyncReason::UnknownEpoch, resume_from } if resume_from.epoch() == id.epoch()),
        "{got:?}"
    );
    assert_eq!(events(&got[1..]), vec![(id, "yes".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_with_its_data_loses_nothing_and_repeats_nothing() {
    let mut redis = RedisServer::start_persistent().await;
    let mode = ServerMode::new();
    let a = replica_on(&redis.url(), Some(&mode), Broker::builder());
    in_step(&a).await;
    let mut sub = a.broker().subscribe(&topics(&["x"]), None).unwrap();
    let mut published = Vec::new();
    for n in 0..5 {
        published.push((
            a.publish(event("x", &format!("{n}"))).await.unwrap(),
            format!("{n}"),
        ));
    }
    redis.kill();
    eventually("the reader to notice", || !a.stats().connected).await;
    assert_eq!(mode.current().mode, Mode::Degraded);
    assert!(a.publish(event("x", "lost")).await.is_err());
    redis.restart().await;
    in_step(&a).await;
    for n in 5..10 {
        published.push((
            a.publish(event("x", &format!("{n}"))).await.unwrap(),
            format!("{n}"),
        ));
    }
    assert_eq!(events(&take(&mut sub, 10).await), published);
    assert!(sub.try_next().is_none(), "an event came twice");
    assert!(a.stats().mirror.reconnects >= 1);
    // The epoch survived with the data: old ids are honoured.
    let mut resumed = a
        .broker()
        .subscribe(&topics(&["x"]), Some(&published[7].0.to_string()))
        .unwrap();
    assert_eq!(
        events(&take(&mut resumed, 2).await),
        published[8..].to_vec()
    );
}

/// How many `command`s Redis has run (from a script or not), by its own
/// count. `xrevrange` is what a retried publish does to find its first
/// attempt, and a reader only as it joins; `evalsha` is a script call,
/// which a reader makes once per look at the stream (after each empty
/// read).
async fn calls(redis: &RedisServer, command: &str) -> u64 {
    let stats: String = redis.query(redis::cmd("INFO").arg("commandstats")).await;
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |rest| {
            rest.split(',')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a count")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_reply_is_lost_is_retried_after_a_pause_and_appended_once() {
    let redis = RedisServer::start().await;
    let proxy = Proxy::start(redis.addr()).await;
    // The reader's read blocks a minute: its own script calls (one per
    // empty read) cannot take the replies the proxy loses.
    let a = backplane(&proxy.url())
        .block(Duration::from_secs(60))
        .start(Broker::builder());
    in_step(&a).await;
    let mut sub = a.broker().subscribe(&topics(&["x"]), None).unwrap();
    // The first publish loads the script, so the next one is one call.
    // A first attempt appends at once: it never reads the stream back
    // (Redis counts the commands its scripts run).
    let searches = calls(&redis, "xrevrange").await;
    let first = a.publish(event("x", "first")).await.unwrap();
    assert_eq!(calls(&redis, "xrevrange").await, searches);

    // The first attempt and the first retry are cut off; the second
    // retry gets its answer.
    proxy.lose_script_replies(2);
    let started = std::time::Instant::now();
    let second = a.publish(event("x", "second")).await.unwrap();
    let took = started.elapsed();
    assert!(proxy.replies_lost(), "the publish was never cut off");
    // Each retry looked for the first attempt.
    assert_eq!(calls(&redis, "xrevrange").await, searches + 2);
    // The last found it in the stream: one entry, whose id is the one
    // returned.
    assert_eq!(
        events(&take(&mut sub, 2).await),
        vec![(first, "first".to_owned()), (second, "second".to_owned())]
    );
    let length: usize = redis.query(redis::cmd("XLEN").arg("test:events")).await;
    assert_eq!(length, 2, "a retry appended the event again");
    // The retries waited their pauses (25 ms, then 50) rather than hammer
    // Redis.
    assert!(took >= Duration::from_millis(75), "retried after {took:?}");

    // Three retries at most: with every reply lost, the publish gives up
    // and says the event may or may not be in. (It is, once: Redis ran
    // the first attempt, and each retry found it.)
    proxy.lose_script_replies(5);
    match a.publish(event("x", "third")).await {
        Err(BackplaneError::Unavailable(why)) => assert!(why.starts_with("redis"), "{why}"),
        other => panic!("expected the publish to give up, got {other:?}"),
    }
    assert_eq!(calls(&redis, "xrevrange").await, searches + 5);
    proxy.lose_script_replies(0);
    let length: usize = redis.query(redis::cmd("XLEN").arg("test:events")).await;
    assert_eq!(length, 3, "a retry appended the event again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_cannot_reach_redis_waits_longer_each_time() {
    // A "Redis" that hangs up on every connection, noting when each came:
    // the reader must not hammer it. Its pauses double from 100 ms, so the
    // fifth attempt comes at least 800 ms after the fourth.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = replica(&format!("redis://{}/", listener.local_addr().unwrap()));
    let mut attempts = Vec::new();
    within("five attempts to connect", async {
        while attempts.len() < 5 {
            let (conn, _) = listener.accept().await.expect("accept");
            attempts.push(std::time::Instant::now());
            drop(conn);
        }
    })
    .await;
    let pauses: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    for (n, pause) in pauses.iter().enumerate() {
        let least = Duration::from_millis(100 << n);
        assert!(
            *pause >= least,
            "pause {n} was {pause:?}, less than {least:?}: {pauses:?}"
        );
    }
    assert!(!a.stats().connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_open_streams_stay_open_with_keep_alives_and_carry_on() {
    let mut redis = RedisServer::start_persistent().await;
    let mode = ServerMode::new();
    let a = replica_on(&redis.url(), Some(&mode), Broker::builder());
    a.broker().follow_mode(&mode);
    in_step(&a).await;
    let layer = tower_sse::SseLayer::new(a.broker().clone()).keep_alive(Duration::from_millis(100));
    let addr = crate::support::server::serve_axum(axum::Router::new().layer(layer)).await;
    let mut stream = client::get(addr, "/events", &[]).await;
    assert_eq!(stream.status, StatusCode::OK);
    let next_event = async |stream: &mut crate::support::sse::Client| {
        let frame = stream.next_non_comment().await.expect("the stream open");
        (
            frame.event_type().unwrap_or("message").to_owned(),
            frame.data().unwrap_or_default(),
        )
    };
    assert_eq!(next_event(&mut stream).await.0, "server.state");
    let first = a.publish(event("public", "1")).await.unwrap();
    assert_eq!(next_event(&mut stream).await, ("t".into(), "1".into()));

    redis.kill();
    let (kind, data) = next_event(&mut stream).await;
    assert_eq!(kind, "server.state");
    assert!(
        data.contains("degraded") && data.contains("redis"),
        "{data}"
    );
    assert!(matches!(
        a.publish(event("public", "lost")).await,
        Err(BackplaneError::Unavailable(_))
    ));
    // Still open, and kept alive.
    let seen = stream.raw().len();
    stream
        .wait_raw("two keep-alives while Redis is down", |raw| {
            raw[seen..].lines().filter(|line| *line == ":").count() >= 2
        })
        .await;
    assert!(a.stats().error.is_some_and(|why| why.starts_with("redis")));

    // Back with its data: the same stream carries on, nothing to resync.
    redis.restart().await;
    in_step(&a).await;
    let second = a.publish(event("public", "2")).await.unwrap();
    assert_eq!(second.epoch(), first.epoch());
    let mut after = Vec::new();
    while after.last().is_none_or(|(kind, _)| kind != "t") {
        after.push(next_event(&mut stream).await);
    }
    assert_eq!(after.pop(), Some(("t".into(), "2".into())));
    assert!(
        after
            .iter()
            .all(|(kind, data)| kind == "server.state" && !data.contains("degraded")),
        "{after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_fails_publishes_in_bounded_time_and_degrades_the_mode() {
    let redis = RedisServer::start().await;
    let mode = ServerMode::new();
    let a = replica_on(&redis.url(), Some(&mode), Broker::builder());
    in_step(&a).await;
    let mut sub = a.broker().subscribe(&topics(&["x"]), None).unwrap();
    a.publish(event("x", "1")).await.unwrap();

    redis.freeze();
    // The publish timeout (500 ms here) bounds it: `within` only turns a
    // hang into a failure.
    let stuck = within(
        "a publish to a frozen Redis to give up",
        a.publish(event("x", "2")),
    )
    .await;
    assert!(
        matches!(stuck, Err(BackplaneError::Unavailable(_))),
        "{stuck:?}"
    );
    eventually("the mode to say Redis is not answering", || {
        mode.current().mode == Mode::Degraded
    })
    .await;
    assert!(!a.stats().connected);
    assert!(matches!(
        a.publish(event("x", "3")).await,
        Err(BackplaneError::Unavailable(_))
    ));

    // Back: the replica recovers by itself. The publish that gave up may
    // or may not have been appended (it was on its way when Redis froze);
    // either way every replica sees the same stream, in order.
    redis.thaw();
    in_step(&a).await;
    eventually("the mode to recover", || {
        mode.current().mode == Mode::Normal
    })
    .await;
    let last = a.publish(event("x", "4")).await.unwrap();
    let mut got = Vec::new();
    while got.last().is_none_or(|(id, _)| *id != last) {
        got.extend(events(&take(&mut sub, 1).await));
    }
    let data: Vec<&str> = got.iter().map(|(_, data)| data.as_str()).collect();
    assert!(data == ["1", "4"] || data == ["1", "2", "4"], "{data:?}");
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_replica_handle_releases_the_mode() {
    // A replica that never got in step (nothing listens there) holds the
    // mode degraded; the app drops it: the mode no longer waits for it.
    let mut redis = RedisServer::start().await;
    redis.kill();
    let mode = ServerMode::new();
    let a = replica_on(&redis.url(), Some(&mode), Broker::builder());
    assert_eq!(mode.current().mode, Mode::Degraded);
    let other = a.clone();
    drop(a);
    // One handle left: still running, still degraded.
    assert_eq!(mode.current().mode, Mode::Degraded);
    drop(other);
    eventually("the mode to be released", || {
        mode.current().mode == Mode::Normal
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_replica_handle_stops_its_reader_at_once() {
    // The reader blocks a minute per read: only an abort ends it sooner.
    let redis = RedisServer::start().await;
    let a = backplane(&redis.url())
        .block(Duration::from_secs(60))
        .start(Broker::builder());
    in_step(&a).await;
    let readers = || async {
        let list: String = redis.query(redis::cmd("CLIENT").arg("LIST")).await;
        list.lines()
            .filter(|line| line.contains("cmd=xread"))
            .count()
    };
    eventually_async("the reader to block in XREAD", || async {
        readers().await == 1
    })
    .await;
    drop(a);
    eventually_async("the reader's connection to close", || async {
        readers().await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_without_its_data_starts_a_new_epoch_and_everyone_resyncs() {
    let mut redis = RedisServer::start().await;
    let a = replica(&redis.url());
    in_step(&a).await;
    let mut sub = a.broker().subscribe(&topics(&["x"]), None).unwrap();
    let old = a.publish(event("x", "old")).await.unwrap();
    assert_eq!(
        events(&take(&mut sub, 1).await),
        vec![(old, "old".to_owned())]
    );

    redis.restart().await;
    // The reader notices the stream lost its data: a new epoch, a resync.
    match within("the resync", sub.recv()).await {
        Some(Message::Resync {
            reason,
            resume_from,
        }) => {
            assert_eq!(reason, ResyncReason::UnknownEpoch);
            assert_ne!(resume_from.epoch(), old.epoch());
        }
        other => panic!("{other:?}"),
    }
    in_step(&a).await;
    let new = a.publish(event("x", "new")).await.unwrap();
    assert_ne!(new.epoch(), old.epoch());
    assert_eq!(
        events(&take(&mut sub, 1).await),
        vec![(new, "new".to_owned())]
    );
    // An id of the old epoch is not honoured against the new stream.
    let mut stale = a
        .broker()
        .subscribe(&topics(&["x"]), Some(&old.to_string()))
        .unwrap();
    assert!(matches!(
        stale.try_next(),
        Some(Message::Resync {
            reason: ResyncReason::UnknownEpoch,
            ..
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_while_the_stream_trims_past_it_reports_the_lag() {
    let redis = RedisServer::start().await;
    let proxy = Proxy::start(redis.addr()).await;
    // The stream keeps about 8 events.
    let a = replica_on(&redis.url(), None, Broker::builder().retain_events(8));
    let b = replica_on(&proxy.url(), None, Broker::builder().retain_events(8));
    in_step(&a).await;
    in_step(&b).await;
    let mut sub = b.broker().subscribe(&topics(&["x"]), None).unwrap();
    let before = a.publish(event("x", "before")).await.unwrap();
    assert_eq!(
        events(&take(&mut sub, 1).await),
        vec![(before, "before".to_owned())]
    );

    proxy.cut();
    eventually("b to lose Redis", || !b.stats().connected).await;
    let mut last = before;
    for n in 0..40 {
        last = a.publish(event("x", &format!("{n}"))).await.unwrap();
    }
    let length: usize = redis.query(redis::cmd("XLEN").arg("test:events")).await;
    assert!(length < 40, "the stream was not trimmed: {length}");
    proxy.mend();
    // The hole is reported with the count of entries lost, then what the
    // stream still has follows, up to the last.
    match within("the lag report", sub.recv()).await {
        Some(Message::Lagged { missed, .. }) => assert!(missed >= 40 - length as u64, "{missed}"),
        other => panic!("{other:?}"),
    }
    let mut tail = Vec::new();
    while tail.last().is_none_or(|(id, _)| *id < last) {
        tail.extend(events(&take(&mut sub, 1).await));
    }
    assert!(tail.windows(2).all(|w| w[0].0 < w[1].0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_lost_writes_and_took_others_under_their_seqs_starts_a_new_epoch() {
    // What a failover to a Redis replica that missed the last writes looks
    // like, once other replicas published again: the same seqs, other
    // events. The replica that saw the lost writes must not keep them
    // under ids that now name other events elsewhere.
    let redis = RedisServer::start().await;
    let proxy = Proxy::start(redis.addr()).await;
    let a = replica_on(&proxy.url(), None, Broker::builder());
    let b = replica(&redis.url());
    in_step(&a).await;
    in_step(&b).await;
    for n in 0..3 {
        a.publish(event("x", &format!("{n}"))).await.unwrap();
    }
    eventually("a to mirror 3", || a.stats().mirror.mirrored == 3).await;
    let mut sub = a.broker().subscribe(&topics(&["x"]), None).unwrap();
    proxy.cut();
    eventually("a to lose Redis", || !a.stats().connected).await;
    // The last write is lost: the stream as a Redis that missed it holds
    // it (a stream keeps its last id past an XDEL, so it is rebuilt). Then
    // another replica publishes in its place.
    let kept: redis::streams::StreamRangeReply = redis
        .query(
            redis::cmd("XRANGE")
                .arg("test:events")
                .arg("1-0")
                .arg("2-0"),
        )
        .await;
    assert_eq!(kept.ids.len(), 2);
    let _: u64 = redis.query(redis::cmd("DEL").arg("test:events")).await;
    for entry in &kept.ids {
        let mut add = redis::cmd("XADD");
        add.arg("test:events").arg(&entry.id);
        for (field, value) in &entry.map {
            let value: Vec<u8> = redis::from_redis_value_ref(value).expect("a bulk string");
            add.arg(field).arg(value);
        }
        let _: String = redis.query(&add).await;
    }
    let _: u64 = redis
        .query(redis::cmd("HSET").arg("test:events:meta").arg("seq").arg(2))
        .await;
    let other = b.publish(event("x", "other")).await.unwrap();
    assert_eq!(other, b.broker().mirrored_id(3));
    proxy.mend();
    match within("a resync", sub.recv()).await {
        Some(Message::Resync {
            reason: ResyncReason::UnknownEpoch,
            resume_from,
        }) => assert_ne!(resume_from.epoch(), other.epoch()),
        other => panic!("expected a resync, got {other:?}"),
    }
    in_step(&a).await;
    // Both replicas follow the new epoch, and agree again.
    let after = a.publish(event("x", "after")).await.unwrap();
    assert_ne!(after.epoch(), other.epoch());
    assert_eq!(
        events(&take(&mut sub, 1).await),
        vec![(after, "after".to_owned())]
    );
    eventually("b to follow", || b.stats().mirror.epoch == after.epoch()).await;
    // Found at its one reconnect.
    assert_eq!(a.stats().mirror.reconnects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_retains_any_number_of_events_is_a_replica_like_any_other() {
    // Bound by bytes only: Redis still gets a count it takes.
    let redis = RedisServer::start().await;
    let a = replica_on(
        &redis.url(),
        None,
        Broker::builder().retain_events(usize::MAX),
    );
    in_step(&a).await;
    let mut sub = a.broker().subscribe(&topics(&["x"]), None).unwrap();
    let id = a.publish(event("x", "1")).await.unwrap();
    assert_eq!(events(&take(&mut sub, 1).await), vec![(id, "1".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_is_aged_when_it_is_read_not_when_the_read_began() {
    // An entry's age is Redis's time now less the time Redis gave it; the
    // reader keeps the offset between its clock and Redis's from its last
    // step, and reads its own clock for "now". A reader that took "now" at
    // the step would age entries by less the longer its read had blocked.
    let max_age = Duration::from_millis(7_500);
    let redis = RedisServer::start().await;
    let a = backplane(&redis.url())
        .block(Duration::from_secs(60))
        .start(Broker::builder().retain_for(max_age));
    in_step(&a).await;
    // Redis's own view: the reader's XREAD has blocked for more than 5 s
    // (`idle` counts whole seconds of Redis's clock: 6 is more than 5 s),
    // so its last step is at least that old.
    let blocked = async {
        loop {
            let clients: String = redis.query(redis::cmd("CLIENT").arg("LIST")).await;
            let blocked = clients.lines().any(|line| {
                let field = |name: &str| {
                    line.split(' ')
                        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                };
                field("cmd") == Some("xread")
                    && field("flags").is_some_and(|flags| flags.contains('b'))
                    && field("idle")
                        .and_then(|idle| idle.parse::<u64>().ok())
                        .is_some_and(|idle| idle >= 6)
            });
            if blocked {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // Longer than the shared patience, shorter than the read's block.
    tokio::time::timeout(Duration::from_secs(30), blocked)
        .await
        .expect("the reader's XREAD to block for 5 s");
    // An entry as this backplane writes them, 10 s old by Redis's clock.
    let epoch: String = redis
        .query(redis::cmd("HGET").arg("test:events:meta").arg("epoch"))
        .await;
    let (secs, micros): (u64, u64) = redis.query(&redis::cmd("TIME")).await;
    let at = secs * 1_000 + micros / 1_000 - 10_000;
    let _: String = redis
        .query(
            redis::cmd("XADD")
                .arg("test:events")
                .arg("1-0")
                .arg("epoch")
                .arg(&epoch)
                .arg("topic")
                .arg("x")
                .arg("type")
                .arg("t")
                .arg("data")
                .arg("old")
                .arg("at")
                .arg(at),
        )
        .await;
    let _: u64 = redis
        .query(redis::cmd("HSET").arg("test:events:meta").arg("seq").arg(1))
        .await;
    eventually("the entry to be mirrored", || {
        a.stats().mirror.mirrored == 1
    })
    .await;
    // Older than the log keeps: evicted as it was appended. Aged from the
    // step, it would have been 5 s younger, and kept.
    let stats = a.broker().stats();
    assert_eq!((stats.evicted, stats.retained_events), (1, 0), "{stats:?}");
    assert_eq!(a.stats().mirror.skipped, 0);
    // A replica that joins now takes the stream's tail: the old entry is
    // as old there, however young the replica, and a fresh one is kept.
    let fresh = a.publish(event("x", "fresh")).await.unwrap();
    let b = replica_on(&redis.url(), None, Broker::builder().retain_for(max_age));
    in_step(&b).await;
    let stats = b.broker().stats();
    assert_eq!((stats.evicted, stats.retained_events), (1, 1), "{stats:?}");
    let mut sub = b
        .broker()
        .subscribe(
            &topics(&["x"]),
            Some(&b.broker().mirrored_id(1).to_string()),
        )
        .unwrap();
    assert_eq!(
        events(&take(&mut sub, 1).await),
        vec![(fresh, "fresh".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_written_by_something_else_are_skipped_and_counted() {
    let redis = RedisServer::start().await;
    let a = replica(&redis.url());
    in_step(&a).await;
    let mut sub = a.broker().subscribe(&topics(&["x"]), None).unwrap();
    let first = a.publish(event("x", "1")).await.unwrap();
    // Another program's entries: its own id scheme, its own fields.
    let _: String = redis
        .query(
            redis::cmd("XADD")
                .arg("test:events")
                .arg("*")
                .arg("foo")
                .arg("bar"),
        )
        .await;
    let _: String = redis
        .query(
            redis::cmd("XADD")
                .arg("test:events")
                .arg("*")
                .arg("epoch")
                .arg("1")
                .arg("topic")
                .arg("x"),
        )
        .await;
    eventually("the foreign entries to be skipped", || {
        a.stats().mirror.skipped == 2
    })
    .await;
    assert_eq!(
        events(&take(&mut sub, 1).await),
        vec![(first, "1".to_owned())]
    );
    assert!(sub.try_next().is_none());
    // Passed over once: the reader reads on from them, not again from the
    // last entry it mirrored, at every look at the stream.
    let looks = calls(&redis, "evalsha").await;
    eventually_async("the reader to look at the stream twice more", || async {
        calls(&redis, "evalsha").await >= looks + 2
    })
    .await;
    assert_eq!(a.stats().mirror.skipped, 2);
    // Past the foreign ids, nothing can be appended: a clear error, and
    // no seq is taken for it.
    for _ in 0..3 {
        match a.publish(event("x", "2")).await {
            Err(BackplaneError::Unavailable(why)) => {
                assert!(why.contains("did not write"), "{why}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    // Each refused once: an answer from Redis is not a broken connection
    // to try again on.
    let errors: String = redis.query(redis::cmd("INFO").arg("errorstats")).await;
    assert!(
        errors
            .lines()
            .any(|line| line.trim() == "errorstat_FOREIGN:count=3"),
        "{errors}"
    );
    let seq: u64 = redis
        .query(redis::cmd("HGET").arg("test:events:meta").arg("seq"))
        .await;
    assert_eq!(seq, 1);
    // The operator deletes the key: publishing goes on, with no hole.
    let _: u64 = redis.query(redis::cmd("DEL").arg("test:events")).await;
    let next = a.publish(event("x", "2")).await.unwrap();
    assert_eq!(next, a.broker().mirrored_id(2));
    assert_eq!(
        events(&take(&mut sub, 1).await),
        vec![(next, "2".to_owned())]
    );
    assert_eq!(a.stats().mirror.missed, 0);
}

#[tokio::test]
async fn bad_input_is_refused_with_a_clear_error() {
    assert!(matches!(
        RedisBackplane::new("http://not-redis"),
        Err(BackplaneError::InvalidUrl(_))
    ));
    let redis = RedisServer::start().await;
    let a = replica_on(&redis.url(), None, Broker::builder().max_event_bytes(16));
    in_step(&a).await;
    for (event, error) in [
        (Event::new("t").topic("x").data("x".repeat(17)), "TooLarge"),
        (Event::new("resync").topic("x"), "ReservedEventType"),
        (Event::new("t").topic("bad topic"), "InvalidTopic"),
        (Event::new("t").topic("x").data(vec![0xff]), "NotUtf8"),
    ] {
        let refused = a.publish(event).await;
        assert!(
            matches!(&refused, Err(BackplaneError::Publish(e)) if format!("{e:?}").starts_with(error)),
            "{refused:?}"
        );
    }
    let length: usize = redis.query(redis::cmd("XLEN").arg("test:events")).await;
    assert_eq!(length, 0, "a refused event reached Redis");
}

/// `(id, data)` of the next `n` events of type `message` on `stream`,
/// passing over `server.state`.
async fn messages(stream: &mut crate::support::sse::Client, n: usize) -> Vec<(String, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        let event = stream.next_event().await;
        match event.event.as_str() {
            "message" => got.push((event.id, event.data)),
            "server.state" => {}
            other => panic!("unexpected {other:?} event: {event:?}"),
        }
    }
    got
}

/// Publishes `data` on `topic` through a demo; returns the id it answers.
async fn publish_on(demo: &Demo, topic: &str, data: u32) -> String {
    let body = format!(r#"{{"topic": "{topic}", "data": {data}}}"#);
    let reply = client::fetch(demo.addr(), Method::POST, "/publish", &[], &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()["id"].as_str().expect("an id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_demo_processes_on_one_redis_behave_as_one_service() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    // One told with the flag, the other with the environment.
    let a = Demo::start(&["--redis", &url], &[]).await;
    let b = Demo::start(&[], &[("REDIS_URL", &url)]).await;
    a.ready().await;
    b.ready().await;
    let mut on_a = client::get(a.addr(), "/events?topic=t", &[]).await;
    let mut on_b = client::get(b.addr(), "/events?topic=t", &[]).await;

    // Published on either, delivered on both, with the same ids.
    let first = publish_on(&a, "t", 1).await;
    let second = publish_on(&b, "t", 2).await;
    let both = vec![(first, "1".to_owned()), (second.clone(), "2".to_owned())];
    assert_eq!(messages(&mut on_a, 2).await, both);
    assert_eq!(messages(&mut on_b, 2).await, both);

    // Cut from B after the second; two more while away; resumed on A.
    drop(on_b);
    let third = publish_on(&a, "t", 3).await;
    let fourth = publish_on(&b, "t", 4).await;
    let mut resumed = client::get(a.addr(), "/events?topic=t", &[("last-event-id", &second)]).await;
    assert_eq!(
        messages(&mut resumed, 2).await,
        vec![(third, "3".to_owned()), (fourth, "4".to_owned())]
    );
    // Then live, from the other replica.
    let fifth = publish_on(&b, "t", 5).await;
    assert_eq!(
        messages(&mut resumed, 1).await,
        vec![(fifth.clone(), "5".to_owned())]
    );
    assert_eq!(messages(&mut on_a, 3).await.len(), 3);

    // Both report the backplane.
    let stats = client::fetch(b.addr(), Method::GET, "/stats", &[], "")
        .await
        .json();
    assert_eq!(stats["backplane"]["connected"], true);
    assert_eq!(stats["backplane"]["mirrored"], 5);

    // Redis goes away (and comes back empty): the streams stay open and are
    // told, `/health` says why, publishing answers 503 until it is back.
    let mut redis = redis;
    redis.kill();
    let degraded = on_a.next_of_type("server.state").await;
    assert!(
        degraded.data.contains(r#""mode":"degraded""#),
        "{degraded:?}"
    );
    assert!(degraded.data.contains("redis"), "{degraded:?}");
    let health = client::fetch(a.addr(), Method::GET, "/health", &[], "")
        .await
        .json();
    assert!(
        health["reason"].as_str().unwrap().starts_with("redis"),
        "{health}"
    );
    assert_eq!(health["mirror"]["mirrored"], 5, "{health}");
    let refused = client::fetch(a.addr(), Method::POST, "/publish", &[], r#"{"data": 0}"#).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    redis.restart().await;
    // Its data is gone: a new epoch, and a resync rather than a silent gap.
    let resync = on_a.next_of_type("resync").await;
    for demo in [&a, &b] {
        eventually_async("the demo to be ready again", || async {
            client::fetch(demo.addr(), Method::GET, "/ready", &[], "")
                .await
                .status
                == StatusCode::OK
        })
        .await;
    }
    let after = publish_on(&b, "t", 6).await;
    let epoch = |id: &str| id.split('-').next().unwrap().to_owned();
    assert_ne!(epoch(&after), epoch(&fifth));
    assert_eq!(epoch(&resync.id), epoch(&after));
    assert_eq!(messages(&mut on_a, 1).await, vec![(after, "6".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_refuses_a_redis_url_that_does_not_parse() {
    let output = tokio::process::Command::new(Demo::binary())
        .args(["--addr", "127.0.0.1:0", "--redis", "http://not-redis"])
        .output()
        .await
        .expect("run the demo");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a Redis URL"), "{stderr}");
}

/// What a log line or a failed assertion shows of the backplane: its
/// stream and timings (nothing connects to build it).
#[tokio::test]
async fn debug_output_names_the_type_and_its_settings() {
    let backplane = RedisBackplane::new("redis://127.0.0.1:1/")
        .unwrap()
        .stream("app:events")
        .block(Duration::from_millis(250));
    let shown = format!("{backplane:?}");
    assert!(
        shown.starts_with(r#"RedisBackplane { stream: "app:events""#),
        "{shown}"
    );
    assert!(shown.contains("block: 250ms"), "{shown}");
    // A replica shows its stream and where it stands.
    let replica = backplane.start(Broker::builder());
    let shown = format!("{replica:?}");
    assert!(
        shown.starts_with(
            r#"Replica { stream: "app:events", stats: ReplicaStats { connected: false"#
        ),
        "{shown}"
    );
}

#[tokio::test]
async fn a_replica_that_refuses_what_another_published_says_so() {
    // Current-thread: the reader logs on the test's thread.
    let (log, _subscriber) = crate::support::trace::capture(
        tracing::Level::WARN,
        tracing_subscriber::fmt::format::FmtSpan::NONE,
    );
    let redis = RedisServer::start().await;
    let a = replica(&redis.url());
    // B's log retains 1000 bytes: an event of 2000 cannot be mirrored.
    let b = replica_on(&redis.url(), None, Broker::builder().retain_bytes(1_000));
    in_step(&a).await;
    in_step(&b).await;
    let big = a.publish(event("x", &"y".repeat(2_000))).await.unwrap();
    let small = a.publish(event("x", "small")).await.unwrap();
    eventually("b to mirror both", || b.stats().mirror.mirrored == 2).await;
    assert_eq!(b.stats().mirror.skipped, 1);
    assert_eq!(a.stats().mirror.skipped, 0);
    let mut sub = b
        .broker()
        .subscribe(&topics(&["x"]), Some(&big.to_string()))
        .unwrap();
    assert_eq!(
        events(&take(&mut sub, 1).await),
        vec![(small, "small".to_owned())]
    );
    let text = log.text();
    assert_eq!(
        text.matches("replicas of one service need the same limits")
            .count(),
        1,
        "{text}"
    );
    assert!(text.contains("skipped=1"), "{text}");
}

/// A refused publish keeps the broker's own error as its source, for an
/// error report that walks the chain; an outage has none.
#[test]
fn a_refused_publish_keeps_the_brokers_error_as_its_source() {
    use std::error::Error;

    let refused = BackplaneError::Publish(PublishError::InvalidEventType);
    let source = refused.source().expect("the broker's error");
    assert_eq!(
        source.to_string(),
        PublishError::InvalidEventType.to_string()
    );
    assert!(refused.to_string().starts_with("publish refused: "));
}
