//! The hub on a real Redis (feature `redis`): `RedisPubSub` feeding a
//! broker's topics from the pub/sub channels of a `redis-server` the test
//! starts, watched from Redis itself (`PUBSUB NUMSUB`, the receivers a
//! `PUBLISH` reaches, the pub/sub clients) and from the broker's
//! `HubStats`. One upstream subscription per topic however many watch it,
//! the linger, resuming within and after it, Redis killed under the
//! streams, frozen, and down at the first subscribe, topics kept apart, a
//! payload the broker refuses, one over the buffer, a broker closed or
//! dropped; and the `upstream` example as a process, over HTTP.

use std::time::Duration;

use http::{Method, StatusCode};
use tower_sse::upstream::{Hub, RedisPubSub, DEFAULT_LINGER};
use tower_sse::{Broker, EventId, HubStats, Message, ResyncReason, Subscription, Topics};

use crate::support::client;
use crate::support::process::Demo;
use crate::support::redis::RedisServer;
use crate::support::sse::Client;
use crate::support::wait::{eventually, eventually_async, within};

/// A linger short enough that waiting it out keeps the suite fast.
const SHORT_LINGER: Duration = Duration::from_millis(150);
/// A linger no test outlasts: coming back within it cannot be a matter of
/// timing.
const LONG_LINGER: Duration = Duration::from_secs(30);

/// A broker whose every topic is fed from the pub/sub channels of the
/// Redis at `url`, retrying fast.
fn broker(url: &str, linger: Duration) -> Broker {
    let pubsub = RedisPubSub::new(url)
        .expect("URL")
        .timeout(Duration::from_millis(500));
    Broker::builder()
        .hub(
            Hub::new(pubsub)
                .linger(linger)
                .retry(Duration::from_millis(20), Duration::from_millis(200)),
        )
        .build()
}

fn hub(broker: &Broker) -> HubStats {
    broker.stats().hub.expect("a broker built with a hub")
}

fn subscribe(broker: &Broker, topics: &[&str], last_event_id: Option<&str>) -> Subscription {
    broker
        .subscribe(&Topics::parse(topics).unwrap(), last_event_id)
        .expect("broker open")
}

/// How many subscriptions Redis counts on `channel`.
async fn numsub(redis: &RedisServer, channel: &str) -> i64 {
    let (name, count): (String, i64) = redis
        .query(redis::cmd("PUBSUB").arg("NUMSUB").arg(channel))
        .await;
    assert_eq!(name, channel);
    count
}

/// Publishes `payload` on `channel`; returns how many subscriptions Redis
/// handed it to.
async fn publish(redis: &RedisServer, channel: &str, payload: &[u8]) -> i64 {
    redis
        .query(redis::cmd("PUBLISH").arg(channel).arg(payload))
        .await
}

/// Waits until Redis counts `count` subscriptions on `channel`.
async fn numsub_becomes(redis: &RedisServer, channel: &str, count: i64) {
    eventually_async(&format!("PUBSUB NUMSUB {channel} == {count}"), || async {
        numsub(redis, channel).await == count
    })
    .await;
}

/// Waits until the broker's hub counters satisfy `condition`.
async fn hub_becomes(broker: &Broker, what: &str, condition: impl Fn(&HubStats) -> bool) {
    eventually_async(what, || async { condition(&hub(broker)) }).await;
}

/// Waits until `channel`'s upstream is open: Redis has the subscription
/// and the broker's driver took it up, so a `PUBLISH` now reaches it.
async fn subscribed(redis: &RedisServer, broker: &Broker, channel: &str, open: usize) {
    numsub_becomes(redis, channel, 1).await;
    hub_becomes(broker, "the upstreams to be open", |h| h.open == open).await;
}

/// Lets a linger pass as a hub measures it: a broker of its own with the
/// same linger closes the subscription of a topic watched and left a
/// linger after it was left. Twice: a linger that was running when this
/// was called has ended, and its driver has had a whole linger more to
/// act on it.
async fn linger_passes(redis: &RedisServer, linger: Duration) {
    let clock = broker(&redis.url(), linger);
    for witness in ["linger:1", "linger:2"] {
        let sub = subscribe(&clock, &[witness], None);
        subscribed(redis, &clock, witness, 1).await;
        drop(sub);
        numsub_becomes(redis, witness, 0).await;
        hub_becomes(&clock, "the witness to be released", |h| h.upstreams == 0).await;
    }
}

async fn next(sub: &mut Subscription) -> Message {
    within("a message", sub.recv())
        .await
        .expect("subscription open")
}

/// The next message, which must be an event of type `message` with
/// `data` on `topic`; returns its id.
async fn next_event(sub: &mut Subscription, topic: &str, data: &str) -> EventId {
    match next(sub).await {
        Message::Event(event) => {
            assert_eq!(
                (event.topic().as_str(), event.event_type(), event.data()),
                (topic, "message", data),
                "{event:?}"
            );
            event.id()
        }
        other => panic!("expected the event {data:?} on {topic}, got {other:?}"),
    }
}

/// The next message, which must be a resync for `reason`.
async fn next_resync(sub: &mut Subscription, reason: ResyncReason) {
    match next(sub).await {
        Message::Resync { reason: got, .. } if got == reason => {}
        other => panic!("expected a resync ({reason:?}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_subscriptions_share_one_redis_subscription_until_the_linger_ends() {
    let redis = RedisServer::start().await;
    let broker = broker(&redis.url(), SHORT_LINGER);
    let mut subs: Vec<Subscription> = (0..50)
        .map(|_| subscribe(&broker, &["room:1"], None))
        .collect();
    subscribed(&redis, &broker, "room:1", 1).await;
    let stats = hub(&broker);
    assert_eq!(
        (stats.upstreams, stats.open, stats.opens),
        (1, 1, 1),
        "{stats:?}"
    );

    // Redis hands the message to one subscription; the broker to all 50.
    assert_eq!(publish(&redis, "room:1", b"hello").await, 1);
    let mut ids = Vec::new();
    for sub in &mut subs {
        ids.push(next_event(sub, "room:1", "hello").await);
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert!(subs.iter_mut().all(|sub| sub.try_next().is_none()));
    // Still one, and never opened again.
    assert_eq!(numsub(&redis, "room:1").await, 1);
    let stats = hub(&broker);
    assert_eq!(
        (
            stats.upstreams,
            stats.open,
            stats.opens,
            stats.events,
            stats.failures
        ),
        (1, 1, 1, 1, 0),
        "{stats:?}"
    );

    // All but one gone (one from the middle: whichever the hub counted
    // first or last is gone): a linger later, the subscription stays.
    let mut last = subs.swap_remove(25);
    drop(subs);
    linger_passes(&redis, SHORT_LINGER).await;
    assert_eq!(numsub(&redis, "room:1").await, 1);
    let stats = hub(&broker);
    assert_eq!(
        (stats.upstreams, stats.open, stats.opens),
        (1, 1, 1),
        "{stats:?}"
    );
    assert_eq!(publish(&redis, "room:1", b"to the last").await, 1);
    next_event(&mut last, "room:1", "to the last").await;

    // The last one gone: a linger later the subscription is too.
    drop(last);
    numsub_becomes(&redis, "room:1", 0).await;
    hub_becomes(&broker, "the upstream to be released", |h| {
        h.upstreams == 0 && h.open == 0
    })
    .await;
    assert_eq!(publish(&redis, "room:1", b"unheard").await, 0);

    // One comes back: a new subscription, live from now.
    let mut back = subscribe(&broker, &["room:1"], None);
    subscribed(&redis, &broker, "room:1", 1).await;
    let stats = hub(&broker);
    assert_eq!(
        (stats.upstreams, stats.opens, stats.failures),
        (1, 2, 0),
        "{stats:?}"
    );
    assert_eq!(publish(&redis, "room:1", b"again").await, 1);
    let again = next_event(&mut back, "room:1", "again").await;
    assert!(again > ids[0]);
    assert_eq!(numsub(&redis, "room:1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_back_within_the_linger_resumes_what_redis_sent_meanwhile() {
    let redis = RedisServer::start().await;
    let broker = broker(&redis.url(), LONG_LINGER);
    let mut sub = subscribe(&broker, &["room:1"], None);
    subscribed(&redis, &broker, "room:1", 1).await;
    assert_eq!(publish(&redis, "room:1", b"one").await, 1);
    let seen = next_event(&mut sub, "room:1", "one").await;

    // Gone; the subscription stays for the linger and keeps taking events.
    drop(sub);
    eventually("the subscription to be gone", || {
        broker.stats().subscribers == 0
    })
    .await;
    for payload in ["two", "three"] {
        assert_eq!(publish(&redis, "room:1", payload.as_bytes()).await, 1);
    }
    hub_becomes(&broker, "the events to be in the log", |h| h.events == 3).await;
    assert_eq!(numsub(&redis, "room:1").await, 1);

    // Back with the last id it saw: exactly what it missed, then live,
    // no resync anywhere.
    let mut back = subscribe(&broker, &["room:1"], Some(&seen.to_string()));
    let two = next_event(&mut back, "room:1", "two").await;
    let three = next_event(&mut back, "room:1", "three").await;
    assert!(seen < two && two < three);
    assert!(back.try_next().is_none());
    assert_eq!(publish(&redis, "room:1", b"four").await, 1);
    next_event(&mut back, "room:1", "four").await;
    assert_eq!(numsub(&redis, "room:1").await, 1);
    let stats = hub(&broker);
    assert_eq!(
        (stats.upstreams, stats.open, stats.opens, stats.failures),
        (1, 1, 1, 0),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_after_the_linger_closed_the_upstream_starts_with_a_resync() {
    let redis = RedisServer::start().await;
    let broker = broker(&redis.url(), SHORT_LINGER);
    let mut sub = subscribe(&broker, &["room:1"], None);
    subscribed(&redis, &broker, "room:1", 1).await;
    assert_eq!(publish(&redis, "room:1", b"one").await, 1);
    let seen = next_event(&mut sub, "room:1", "one").await;

    drop(sub);
    numsub_becomes(&redis, "room:1", 0).await;
    hub_becomes(&broker, "the upstream to be released", |h| h.upstreams == 0).await;
    // Lost for good: nobody was subscribed.
    assert_eq!(publish(&redis, "room:1", b"lost").await, 0);

    // The event it saw is still retained; what came after it is not known.
    let mut back = subscribe(&broker, &["room:1"], Some(&seen.to_string()));
    next_resync(&mut back, ResyncReason::Expired).await;
    subscribed(&redis, &broker, "room:1", 1).await;
    assert_eq!(publish(&redis, "room:1", b"two").await, 1);
    let two = next_event(&mut back, "room:1", "two").await;
    assert!(two > seen);
    assert_eq!(hub(&broker).opens, 2);

    // A control: resuming from an id the upstream was open since is exact.
    let mut exact = subscribe(&broker, &["room:1"], Some(&two.to_string()));
    assert!(exact.try_next().is_none());
    assert_eq!(publish(&redis, "room:1", b"three").await, 1);
    next_event(&mut back, "room:1", "three").await;
    next_event(&mut exact, "room:1", "three").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_the_subscribers_is_a_resync_and_the_upstream_comes_back() {
    let mut redis = RedisServer::start().await;
    let broker = broker(&redis.url(), SHORT_LINGER);
    let mut subs: Vec<Subscription> = (0..3)
        .map(|_| subscribe(&broker, &["room:1"], None))
        .collect();
    subscribed(&redis, &broker, "room:1", 1).await;
    assert_eq!(publish(&redis, "room:1", b"before").await, 1);
    for sub in &mut subs {
        next_event(sub, "room:1", "before").await;
    }

    redis.kill();
    for sub in &mut subs {
        next_resync(sub, ResyncReason::Upstream).await;
    }
    let stats = hub(&broker);
    assert!(stats.failures >= 1, "{stats:?}");
    // Redis is dead: no attempt can have opened it again.
    assert_eq!(
        (stats.upstreams, stats.open, stats.opens),
        (1, 0, 1),
        "{stats:?}"
    );

    // Back, empty: the hub subscribes again by itself.
    redis.restart().await;
    subscribed(&redis, &broker, "room:1", 1).await;
    assert_eq!(hub(&broker).opens, 2);
    assert_eq!(publish(&redis, "room:1", b"after").await, 1);
    // One resync for the outage, however many attempts failed.
    for sub in &mut subs {
        next_event(sub, "room:1", "after").await;
        assert!(sub.try_next().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_is_noticed_by_its_ping_and_a_resync() {
    let redis = RedisServer::start().await;
    let broker = broker(&redis.url(), SHORT_LINGER);
    let mut sub = subscribe(&broker, &["room:1"], None);
    subscribed(&redis, &broker, "room:1", 1).await;

    // Its connection stays open; only the ping (every 5 s, 500 ms to
    // answer here) can tell.
    redis.freeze();
    next_resync(&mut sub, ResyncReason::Upstream).await;
    let stats = hub(&broker);
    assert!(stats.failures >= 1, "{stats:?}");
    assert_eq!(stats.open, 0, "{stats:?}");

    redis.thaw();
    hub_becomes(&broker, "the upstream to open again", |h| {
        h.opens >= 2 && h.open == 1
    })
    .await;
    numsub_becomes(&redis, "room:1", 1).await;
    assert_eq!(publish(&redis, "room:1", b"after").await, 1);
    next_event(&mut sub, "room:1", "after").await;
    assert!(sub.try_next().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_the_first_subscribe_is_a_resync_until_it_comes_up() {
    let mut redis = RedisServer::start().await;
    let url = redis.url();
    redis.kill();
    let broker = broker(&url, SHORT_LINGER);
    let mut sub = subscribe(&broker, &["room:1"], None);
    next_resync(&mut sub, ResyncReason::Upstream).await;
    // And it keeps trying, with back-off.
    hub_becomes(&broker, "the opens to be retried", |h| h.failures >= 2).await;
    let stats = hub(&broker);
    assert_eq!(
        (stats.upstreams, stats.open, stats.opens),
        (1, 0, 0),
        "{stats:?}"
    );

    redis.restart().await;
    subscribed(&redis, &broker, "room:1", 1).await;
    assert_eq!(hub(&broker).opens, 1);
    assert_eq!(publish(&redis, "room:1", b"hello").await, 1);
    next_event(&mut sub, "room:1", "hello").await;
    assert!(sub.try_next().is_none());
    // The router and the drivers did not die on the way: another topic
    // opens on the same `RedisPubSub`.
    let mut other = subscribe(&broker, &["room:2"], None);
    subscribed(&redis, &broker, "room:2", 2).await;
    assert_eq!(publish(&redis, "room:2", b"too").await, 1);
    next_event(&mut other, "room:2", "too").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_kept_apart_and_a_payload_that_is_not_utf8_is_a_resync() {
    let redis = RedisServer::start().await;
    let broker = broker(&redis.url(), SHORT_LINGER);
    let mut one = subscribe(&broker, &["room:1"], None);
    let mut two = subscribe(&broker, &["room:2"], None);
    let mut both = subscribe(&broker, &["room:1", "room:2"], None);
    numsub_becomes(&redis, "room:1", 1).await;
    subscribed(&redis, &broker, "room:2", 2).await;

    // room:2's event reaches room:2's subscribers only: room:1's next
    // message is room:1's own, published after it.
    assert_eq!(publish(&redis, "room:2", b"for two").await, 1);
    next_event(&mut two, "room:2", "for two").await;
    next_event(&mut both, "room:2", "for two").await;
    assert_eq!(publish(&redis, "room:1", b"for one").await, 1);
    next_event(&mut one, "room:1", "for one").await;
    next_event(&mut both, "room:1", "for one").await;

    // Not UTF-8: refused, and room:1's streams are told in its place.
    assert_eq!(publish(&redis, "room:1", &[0xff, 0xfe]).await, 1);
    next_resync(&mut one, ResyncReason::Upstream).await;
    next_resync(&mut both, ResyncReason::Upstream).await;
    assert_eq!(hub(&broker).refused, 1);
    assert_eq!(publish(&redis, "room:1", b"still").await, 1);
    next_event(&mut one, "room:1", "still").await;
    next_event(&mut both, "room:1", "still").await;
    // room:2 was not told anything.
    assert_eq!(publish(&redis, "room:2", b"two again").await, 1);
    next_event(&mut two, "room:2", "two again").await;
    next_event(&mut both, "room:2", "two again").await;
    assert!(two.try_next().is_none());

    // A refusal is no failure: nothing was subscribed again.
    let stats = hub(&broker);
    assert_eq!(
        (
            stats.upstreams,
            stats.open,
            stats.opens,
            stats.failures,
            stats.events,
            stats.refused
        ),
        (2, 2, 2, 0, 4, 1),
        "{stats:?}"
    );
    assert_eq!(numsub(&redis, "room:1").await, 1);
    assert_eq!(numsub(&redis, "room:2").await, 1);
}

/// A message over the channel's byte bound, even one arriving while
/// nothing is buffered, breaks the channel's stream at once: its streams
/// get a resync, and the channel is subscribed again and flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_buffer_breaks_the_stream_and_it_is_subscribed_again() {
    let redis = RedisServer::start().await;
    // Eight bytes of payload at most waiting for the driver.
    let pubsub = RedisPubSub::new(&redis.url())
        .expect("URL")
        .timeout(Duration::from_millis(500))
        .buffer(16, 8);
    let broker = Broker::builder()
        .hub(
            Hub::new(pubsub)
                .linger(SHORT_LINGER)
                .retry(Duration::from_millis(20), Duration::from_millis(200)),
        )
        .build();
    let mut sub = subscribe(&broker, &["room:1"], None);
    subscribed(&redis, &broker, "room:1", 1).await;
    assert_eq!(publish(&redis, "room:1", b"fits").await, 1);
    next_event(&mut sub, "room:1", "fits").await;

    assert_eq!(publish(&redis, "room:1", b"nine bytes").await, 1);
    next_resync(&mut sub, ResyncReason::Upstream).await;
    hub_becomes(&broker, "the channel to be subscribed again", |h| {
        h.opens == 2 && h.open == 1
    })
    .await;
    numsub_becomes(&redis, "room:1", 1).await;
    assert_eq!(publish(&redis, "room:1", b"again").await, 1);
    next_event(&mut sub, "room:1", "again").await;
    let stats = hub(&broker);
    assert_eq!(
        (stats.failures, stats.events, stats.refused),
        (1, 2, 0),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_broker_unsubscribes_at_once_whatever_the_linger() {
    let redis = RedisServer::start().await;
    let broker = broker(&redis.url(), LONG_LINGER);
    let mut sub = subscribe(&broker, &["room:1"], None);
    subscribed(&redis, &broker, "room:1", 1).await;
    broker.close();
    assert!(within("the stream to end", sub.recv()).await.is_none());
    // Long before the linger would have ended.
    numsub_becomes(&redis, "room:1", 0).await;
    hub_becomes(&broker, "the upstream to be released", |h| {
        h.upstreams == 0 && h.open == 0
    })
    .await;
}

/// The pub/sub connections Redis has open.
async fn pubsub_clients(redis: &RedisServer) -> usize {
    let list: String = redis
        .query(redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub"))
        .await;
    list.lines().filter(|line| !line.trim().is_empty()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_broker_lets_go_of_its_subscriptions_and_its_connection() {
    let redis = RedisServer::start().await;
    let broker = broker(&redis.url(), SHORT_LINGER);
    let subs = [
        subscribe(&broker, &["room:1"], None),
        subscribe(&broker, &["room:2"], None),
    ];
    numsub_becomes(&redis, "room:1", 1).await;
    subscribed(&redis, &broker, "room:2", 2).await;
    // One connection carries every channel.
    assert_eq!(pubsub_clients(&redis).await, 1);

    drop(subs);
    drop(broker);
    numsub_becomes(&redis, "room:1", 0).await;
    numsub_becomes(&redis, "room:2", 0).await;
    eventually_async("the pub/sub connection to close", || async {
        pubsub_clients(&redis).await == 0
    })
    .await;
}

/// Two hubs on clones of one `RedisPubSub` share its connection and each
/// channel's one `SUBSCRIBE`: both get every message, and the channel is
/// unsubscribed only once neither watches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_on_one_connection_each_get_every_message() {
    let redis = RedisServer::start().await;
    let pubsub = RedisPubSub::new(&redis.url())
        .expect("URL")
        .timeout(Duration::from_millis(500));
    let hub_on = |pubsub: RedisPubSub| {
        Broker::builder()
            .hub(Hub::new(pubsub).linger(SHORT_LINGER))
            .build()
    };
    let (a, b) = (hub_on(pubsub.clone()), hub_on(pubsub));
    let mut on_a = subscribe(&a, &["room:1"], None);
    let mut on_b = subscribe(&b, &["room:1"], None);
    subscribed(&redis, &a, "room:1", 1).await;
    hub_becomes(&b, "b's upstream to be open", |h| h.open == 1).await;
    assert_eq!(pubsub_clients(&redis).await, 1);
    for n in 0..20 {
        let data = format!("m{n}");
        assert_eq!(publish(&redis, "room:1", data.as_bytes()).await, 1);
        next_event(&mut on_a, "room:1", &data).await;
        next_event(&mut on_b, "room:1", &data).await;
    }
    for broker in [&a, &b] {
        let stats = hub(broker);
        assert_eq!((stats.opens, stats.failures), (1, 0), "{stats:?}");
    }
    // One hub letting go leaves the other's subscription in place.
    drop(on_a);
    hub_becomes(&a, "a's upstream to close", |h| h.upstreams == 0).await;
    assert_eq!(numsub(&redis, "room:1").await, 1);
    assert_eq!(publish(&redis, "room:1", b"still").await, 1);
    next_event(&mut on_b, "room:1", "still").await;
    drop(on_b);
    numsub_becomes(&redis, "room:1", 0).await;
}

/// What Redis sent a channel before the connection broke is not thrown
/// away: the channel gives it first, then the loss, so the hub's resync
/// stands where the gap begins; and the loss is logged with how many
/// channels it broke. (One thread: the log is this thread's.)
#[tokio::test]
async fn what_came_before_the_connection_broke_comes_before_the_loss() {
    use futures_util::StreamExt;
    use tower_sse::upstream::{RedisPubSubError, Upstream};
    use tower_sse::{Event, Topic};
    use tracing_subscriber::fmt::format::FmtSpan;
    let (log, _subscriber) = crate::support::trace::capture(tracing::Level::INFO, FmtSpan::NONE);
    let mut redis = RedisServer::start().await;
    let pubsub = RedisPubSub::new(&redis.url())
        .expect("URL")
        .timeout(Duration::from_millis(500));
    let (room_1, room_2) = (Topic::new("room:1").unwrap(), Topic::new("room:2").unwrap());
    let mut unread = within("room:1 open", pubsub.open(&room_1)).await.unwrap();
    let mut read = within("room:2 open", pubsub.open(&room_2)).await.unwrap();
    for data in ["one", "two"] {
        assert_eq!(publish(&redis, "room:1", data.as_bytes()).await, 1);
    }
    assert_eq!(publish(&redis, "room:2", b"three").await, 1);
    let three = within("room:2's message", read.next()).await.unwrap();
    assert_eq!(three, Ok(Event::message().data("three")));
    // room:1's messages came first on the connection: they are held now.
    redis.kill();
    let lost = within("room:2's loss", read.next()).await.unwrap();
    assert_eq!(lost.unwrap_err(), RedisPubSubError::ConnectionLost);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(within("room:1's next", unread.next()).await.unwrap());
    }
    assert_eq!(
        got,
        [
            Ok(Event::message().data("one")),
            Ok(Event::message().data("two")),
            Err(RedisPubSubError::ConnectionLost),
        ]
    );
    assert!(
        log.has("lost the Redis pub/sub connection", "channels=2"),
        "{}",
        log.text()
    );
}

/// A channel Redis refuses to subscribe to (an ACL) fails alone: the
/// connection stays, and the other channels' streams are not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_redis_refuses_fails_alone() {
    let redis = RedisServer::start().await;
    let _: String = redis
        .query(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg("rooms")
                .arg("on")
                .arg(">secret")
                .arg("~*")
                .arg("resetchannels")
                .arg("&room:*")
                .arg("+@all"),
        )
        .await;
    let url = format!("redis://rooms:secret@{}/", redis.addr());
    let broker = Broker::builder()
        .hub(
            Hub::new(
                RedisPubSub::new(&url)
                    .expect("URL")
                    .timeout(Duration::from_millis(500)),
            )
            .linger(SHORT_LINGER)
            .retry(Duration::from_millis(20), Duration::from_millis(100)),
        )
        .build();
    let mut room = subscribe(&broker, &["room:1"], None);
    subscribed(&redis, &broker, "room:1", 1).await;
    let mut secret = subscribe(&broker, &["secret:1"], None);
    next_resync(&mut secret, ResyncReason::Upstream).await;
    // Refused again and again, at each back-off...
    hub_becomes(&broker, "several refusals", |h| h.failures >= 5).await;
    assert_eq!(numsub(&redis, "secret:1").await, 0);
    // ... while room:1 keeps its one connection and subscription.
    assert_eq!(hub(&broker).opens, 1);
    assert_eq!(pubsub_clients(&redis).await, 1);
    assert_eq!(publish(&redis, "room:1", b"undisturbed").await, 1);
    next_event(&mut room, "room:1", "undisturbed").await;
    assert!(room.try_next().is_none(), "no resync on room:1");
}

/// The `/health` JSON of a server.
async fn health_of(addr: std::net::SocketAddr) -> serde_json::Value {
    let reply = client::fetch(addr, Method::GET, "/health", &[], "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()
}

/// `(id, data)` of the next event of type `message` on `stream`, passing
/// over `server.state`.
async fn next_message(stream: &mut Client) -> (String, String) {
    loop {
        let event = stream.next_event().await;
        match event.event.as_str() {
            "message" => return (event.id, event.data),
            "server.state" => {}
            other => panic!("unexpected {other:?} event: {event:?}"),
        }
    }
}

/// Opens a stream of `room:1` on `addr`.
async fn watch(addr: std::net::SocketAddr) -> Client {
    let stream = client::get(addr, "/events?topic=room:1", &[]).await;
    assert_eq!(stream.status, StatusCode::OK);
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_example_serves_one_redis_subscription_to_many_streams() {
    let redis = RedisServer::start().await;
    let server = Demo::start_example(
        "upstream",
        &["--redis", &redis.url(), "--linger-ms", "200"],
        &[],
    )
    .await;
    let addr = server.addr();
    let mut streams = [watch(addr).await, watch(addr).await];
    numsub_becomes(&redis, "room:1", 1).await;
    eventually_async(
        "both streams to count and the upstream to be open",
        || async {
            let health = health_of(addr).await;
            health["subscribers"] == 2 && health["hub"]["open"] == 1
        },
    )
    .await;

    assert_eq!(publish(&redis, "room:1", b"hello").await, 1);
    let (first, data) = next_message(&mut streams[0]).await;
    assert_eq!(data, "hello");
    assert_eq!(next_message(&mut streams[1]).await, (first, data));
    let health = health_of(addr).await;
    let hub = &health["hub"];
    assert_eq!(
        (
            &hub["upstreams"],
            &hub["open"],
            &hub["opens"],
            &hub["events"]
        ),
        (&1.into(), &1.into(), &1.into(), &1.into()),
        "{health}"
    );
    assert_eq!(numsub(&redis, "room:1").await, 1);

    // Both gone: `--linger-ms 200` later, not the default linger, Redis
    // has no subscription left.
    let left = tokio::time::Instant::now();
    drop(streams);
    numsub_becomes(&redis, "room:1", 0).await;
    assert!(
        left.elapsed() < DEFAULT_LINGER,
        "unsubscribed after {:?}: --linger-ms was not honoured",
        left.elapsed()
    );
    eventually_async("the hub to have no upstream left", || async {
        health_of(addr).await["hub"]["upstreams"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_example_takes_redis_url_and_port_from_the_environment() {
    let redis = RedisServer::start().await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("address").port()
    };
    let server = Demo::launch(
        "upstream",
        &["--linger-ms", "200"],
        &[("REDIS_URL", &redis.url()), ("PORT", &port.to_string())],
    )
    .await;
    assert_eq!(server.addr().port(), port);
    assert!(server.addr().ip().is_loopback());

    let mut stream = watch(server.addr()).await;
    // The Redis of `REDIS_URL` is the one subscribed to.
    numsub_becomes(&redis, "room:1", 1).await;
    eventually_async("the upstream to be open", || async {
        health_of(server.addr()).await["hub"]["open"] == 1
    })
    .await;
    assert_eq!(publish(&redis, "room:1", b"from env").await, 1);
    assert_eq!(next_message(&mut stream).await.1, "from env");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_example_refuses_arguments_it_does_not_know() {
    for (args, env, says) in [
        (&["--bogus"][..], &[][..], "unknown argument"),
        (&["--linger-ms", "soon"][..], &[][..], "not a number"),
        (&["--redis"][..], &[][..], "needs a value"),
        (&[][..], &[("PORT", "http")][..], "not a port number"),
    ] {
        let output = tokio::process::Command::new(Demo::example("upstream"))
            .args(args)
            .env_remove("PORT")
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output();
        let output = within("the example to exit", output)
            .await
            .expect("run the example");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains("usage:"), "{stderr}");
    }
    // A URL that is not Redis's is refused before listening.
    let output = tokio::process::Command::new(Demo::example("upstream"))
        .args(["--addr", "127.0.0.1:0", "--redis", "http://not-redis"])
        .kill_on_drop(true)
        .output();
    let output = within("the example to exit", output)
        .await
        .expect("run the example");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid Redis URL"), "{stderr}");
}

/// What a log line or a failed assertion shows of the Redis upstream: its
/// timeout and buffer bounds (nothing connects to build it).
#[test]
fn debug_output_names_the_type_and_its_settings() {
    let upstream = tower_sse::upstream::RedisPubSub::new("redis://127.0.0.1:1/")
        .unwrap()
        .timeout(std::time::Duration::from_secs(3))
        .buffer(10, 2048);
    let shown = format!("{upstream:?}");
    assert!(shown.starts_with("RedisPubSub { timeout: 3s"), "{shown}");
    assert!(shown.contains("10") && shown.contains("2048"), "{shown}");
}
