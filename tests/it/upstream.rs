//! The hub over an in-memory bus, on Tokio's paused clock: one upstream
//! subscription per topic, the linger, resume on the same server, every
//! fault (failed opens with their back-off, a broken or ended upstream, a
//! refused event, an open that never completes, no runtime at all) told
//! to the streams as a `resync`, and the stats that show it.
//!
//! Time is Tokio's, paused: it moves only when every task is idle, to the
//! next timer, so a linger or a back-off passes exactly when the test says.

use std::time::Duration;

use tokio::time::{sleep, Instant};
use tower_sse::upstream::Hub;
use tower_sse::{Broker, Event, EventId, HubStats, Message, ResyncReason, Subscription, Topics};

use crate::support::bus::Bus;

const LINGER: Duration = Duration::from_millis(1_000);
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_millis(1_600);

fn hub_broker(bus: &Bus) -> Broker {
    Broker::builder()
        .hub(
            Hub::new(bus.clone())
                .linger(LINGER)
                .retry(RETRY_MIN, RETRY_MAX),
        )
        .build()
}

fn subscribe(broker: &Broker, topic: &str, resume: Option<EventId>) -> Subscription {
    let resume = resume.map(|id| id.to_string());
    broker
        .subscribe(&Topics::parse([topic]).unwrap(), resume.as_deref())
        .unwrap()
}

/// Lets every task run until all are idle, moving the clock by 1 ms.
async fn settle() {
    sleep(Duration::from_millis(1)).await;
}

fn stats(broker: &Broker) -> HubStats {
    broker.stats().hub.expect("a broker with a hub")
}

/// What `sub` has ready now, with events as their data.
fn drain(sub: &mut Subscription) -> Vec<Seen> {
    std::iter::from_fn(|| sub.try_next())
        .map(Seen::from)
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Event(String, EventId),
    Resync(ResyncReason),
    Lagged,
}

impl From<Message> for Seen {
    fn from(message: Message) -> Self {
        match message {
            Message::Event(event) => Seen::Event(event.data().to_owned(), event.id()),
            Message::Resync { reason, .. } => Seen::Resync(reason),
            Message::Lagged { .. } => Seen::Lagged,
        }
    }
}

/// Publishes `data` on `room:1` of the bus and returns its id as `sub`
/// got it, which must be all `sub` gets.
async fn bus_event(bus: &Bus, sub: &mut Subscription, data: &str) -> EventId {
    bus.publish("room:1", data.to_owned());
    settle().await;
    match &drain(sub)[..] {
        [Seen::Event(got, id)] if got == data => *id,
        other => panic!("expected only {data:?}, got {other:?}"),
    }
}

fn data(seen: &[Seen]) -> Vec<&str> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Event(data, _) => Some(data.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn many_streams_of_a_topic_share_one_upstream_subscription() {
    let bus = Bus::default();
    let broker = hub_broker(&bus);
    let mut subs: Vec<_> = (0..20)
        .map(|_| subscribe(&broker, "room:1", None))
        .collect();
    settle().await;
    assert_eq!(bus.open_now("room:1"), 1);
    assert_eq!(bus.attempts("room:1").len(), 1);
    let hub = stats(&broker);
    assert_eq!((hub.upstreams, hub.open, hub.opens), (1, 1, 1));

    assert_eq!(bus.publish("room:1", "hello"), 1);
    settle().await;
    let seen: Vec<_> = subs.iter_mut().map(drain).collect();
    let Seen::Event(_, id) = &seen[0][0] else {
        panic!("{:?}", seen[0])
    };
    for got in &seen {
        assert_eq!(got, &[Seen::Event("hello".into(), *id)]);
    }
    assert_eq!(stats(&broker).events, 1);
    assert_eq!(bus.peak("room:1"), 1);
}

#[tokio::test(start_paused = true)]
async fn the_upstream_closes_a_linger_after_the_last_stream_left() {
    let bus = Bus::default();
    let broker = hub_broker(&bus);
    let subs: Vec<_> = (0..3).map(|_| subscribe(&broker, "room:1", None)).collect();
    settle().await;
    let left = Instant::now();
    drop(subs);
    sleep(LINGER - Duration::from_millis(5)).await;
    assert_eq!(bus.open_now("room:1"), 1, "still lingering");
    sleep(Duration::from_millis(10)).await;
    assert_eq!(bus.open_now("room:1"), 0);
    assert!(left.elapsed() >= LINGER);
    let hub = stats(&broker);
    assert_eq!((hub.upstreams, hub.open, hub.opens), (0, 0, 1));

    // One coming back opens it again.
    let mut sub = subscribe(&broker, "room:1", None);
    settle().await;
    assert_eq!(bus.open_now("room:1"), 1);
    assert_eq!(stats(&broker).opens, 2);
    bus.publish("room:1", "again");
    settle().await;
    assert_eq!(data(&drain(&mut sub)), ["again"]);
}

#[tokio::test(start_paused = true)]
async fn a_stream_back_within_the_linger_resumes_without_a_reopen() {
    let bus = Bus::default();
    let broker = hub_broker(&bus);
    let mut sub = subscribe(&broker, "room:1", None);
    settle().await;
    let last = bus_event(&bus, &mut sub, "one").await;
    drop(sub);
    // While nobody watches, within the linger, events still come in.
    sleep(LINGER / 2).await;
    bus.publish("room:1", "two");
    settle().await;

    let mut back = subscribe(&broker, "room:1", Some(last));
    settle().await;
    bus.publish("room:1", "three");
    settle().await;
    assert_eq!(data(&drain(&mut back)), ["two", "three"]);
    assert_eq!(stats(&broker).opens, 1);
    assert_eq!(bus.attempts("room:1").len(), 1);

    // A stream that came back resets the linger: it runs from the last
    // one to leave.
    sleep(LINGER / 2 + Duration::from_millis(10)).await;
    drop(back);
    sleep(LINGER - Duration::from_millis(5)).await;
    assert_eq!(bus.open_now("room:1"), 1);
    sleep(Duration::from_millis(10)).await;
    assert_eq!(bus.open_now("room:1"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_resume_onto_a_reopened_upstream_starts_with_a_resync() {
    let bus = Bus::default();
    let broker = hub_broker(&bus);
    let mut sub = subscribe(&broker, "room:1", None);
    settle().await;
    let last = bus_event(&bus, &mut sub, "one").await;
    drop(sub);
    sleep(LINGER * 2).await;
    // Lost: nobody was subscribed to the bus.
    assert_eq!(bus.publish("room:1", "missed"), 0);

    let mut back = subscribe(&broker, "room:1", Some(last));
    settle().await;
    let Some(Message::Resync {
        reason: ResyncReason::Expired,
        resume_from,
    }) = back.try_next()
    else {
        panic!("a resync first")
    };
    assert_eq!(drain(&mut back), []);
    // Where the resync leaves the client resumes cleanly: no second one.
    drop(back);
    let mut again = subscribe(&broker, "room:1", Some(resume_from));
    settle().await;
    bus.publish("room:1", "live");
    settle().await;
    assert_eq!(data(&drain(&mut again)), ["live"]);
    assert_eq!(stats(&broker).opens, 2);

    // A fresh client (no id) has nothing to resume: no resync.
    let mut fresh = subscribe(&broker, "room:2", None);
    settle().await;
    assert_eq!(drain(&mut fresh), []);
}

#[tokio::test(start_paused = true)]
async fn failed_opens_are_retried_with_back_off_and_told_once() {
    let bus = Bus::default();
    bus.fail_opens("room:1", 4);
    let broker = hub_broker(&bus);
    let mut sub = subscribe(&broker, "room:1", None);
    settle().await;
    assert_eq!(drain(&mut sub), [Seen::Resync(ResyncReason::Upstream)]);
    sleep(Duration::from_secs(5)).await;
    assert_eq!(bus.open_now("room:1"), 1);
    // One resync for the whole outage.
    assert_eq!(drain(&mut sub), []);
    let attempts = bus.attempts("room:1");
    assert_eq!(attempts.len(), 5);
    for (i, pair) in attempts.windows(2).enumerate() {
        let pause = pair[1] - pair[0];
        let nominal = RETRY_MIN * 2u32.pow(i as u32);
        assert!(
            pause >= nominal.mul_f64(0.8)
                && pause <= nominal.mul_f64(1.2) + Duration::from_millis(2),
            "pause {i} was {pause:?}, around {nominal:?} expected"
        );
    }
    let hub = stats(&broker);
    assert_eq!((hub.failures, hub.opens, hub.open), (4, 1, 1));

    bus.publish("room:1", "finally");
    settle().await;
    assert_eq!(data(&drain(&mut sub)), ["finally"]);
}

#[tokio::test(start_paused = true)]
async fn the_back_off_stops_at_its_bound() {
    let bus = Bus::default();
    bus.fail_opens("room:1", 14);
    let broker = hub_broker(&bus);
    let _sub = subscribe(&broker, "room:1", None);
    sleep(Duration::from_secs(30)).await;
    let attempts = bus.attempts("room:1");
    assert_eq!(attempts.len(), 15);
    let pauses: Vec<Duration> = attempts.windows(2).map(|p| p[1] - p[0]).collect();
    let longest = *pauses.iter().max().unwrap();
    assert!(
        longest <= RETRY_MAX.mul_f64(1.2) + Duration::from_millis(2),
        "{longest:?}"
    );
    assert!(longest >= RETRY_MAX.mul_f64(0.8), "{longest:?}");
    // At the bound, each pause is still drawn afresh (the chance of ten
    // equal draws is 1 in 1001^9): topics that failed together keep
    // drifting apart however long the outage.
    let at_bound = &pauses[4..];
    assert!(
        at_bound.iter().any(|pause| *pause != at_bound[0]),
        "{at_bound:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_broken_upstream_puts_a_resync_in_the_order_and_reopens() {
    for end in [false, true] {
        let bus = Bus::default();
        let broker = hub_broker(&bus);
        let mut sub = subscribe(&broker, "room:1", None);
        settle().await;
        bus.publish("room:1", "before");
        settle().await;
        if end {
            bus.end_channel("room:1");
        } else {
            bus.break_channel("room:1");
        }
        settle().await;
        assert_eq!(
            bus.open_now("room:1"),
            0,
            "dropped once broken (end: {end})"
        );
        sleep(RETRY_MIN * 2).await;
        assert_eq!(bus.open_now("room:1"), 1, "open again (end: {end})");
        bus.publish("room:1", "after");
        settle().await;
        let seen = drain(&mut sub);
        assert!(
            matches!(
                &seen[..],
                [Seen::Event(a, _), Seen::Resync(ResyncReason::Upstream), Seen::Event(b, _)]
                    if a == "before" && b == "after"
            ),
            "{seen:?} (end: {end})"
        );
        let hub = stats(&broker);
        assert_eq!((hub.failures, hub.opens), (1, 2));
    }
}

#[tokio::test(start_paused = true)]
async fn an_event_the_broker_refuses_is_told_as_a_resync() {
    let bus = Bus::default();
    let broker = hub_broker(&bus);
    let mut sub = subscribe(&broker, "room:1", None);
    settle().await;
    bus.publish("room:1", &[0xff, 0xfe][..]);
    bus.publish("room:1", "fine");
    settle().await;
    let seen = drain(&mut sub);
    assert!(
        matches!(&seen[..], [Seen::Resync(ResyncReason::Upstream), Seen::Event(d, _)] if d == "fine"),
        "{seen:?}"
    );
    let hub = stats(&broker);
    assert_eq!((hub.refused, hub.events, hub.failures), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn an_open_that_never_completes_holds_up_nobody() {
    let bus = Bus::default();
    bus.hang_opens("stuck");
    let broker = hub_broker(&bus);
    let stuck = subscribe(&broker, "stuck", None);
    let mut other = subscribe(&broker, "room:1", None);
    settle().await;
    assert_eq!(bus.attempts("stuck").len(), 1);
    assert_eq!(bus.open_now("room:1"), 1);
    bus.publish("room:1", "flows");
    settle().await;
    broker
        .publish(Event::new("app").topic("room:1").data("mine"))
        .unwrap();
    settle().await;
    assert_eq!(data(&drain(&mut other)), ["flows", "mine"]);
    let hub = stats(&broker);
    assert_eq!((hub.upstreams, hub.open), (2, 1));

    // Its last stream leaving ends the attempt once the linger is over.
    drop(stuck);
    sleep(LINGER + Duration::from_millis(5)).await;
    assert_eq!(stats(&broker).upstreams, 1);
}

#[tokio::test(start_paused = true)]
async fn closing_the_broker_drops_every_upstream() {
    let bus = Bus::default();
    bus.hang_opens("stuck");
    let broker = hub_broker(&bus);
    let mut subs = vec![
        subscribe(&broker, "room:1", None),
        subscribe(&broker, "room:2", None),
        subscribe(&broker, "stuck", None),
    ];
    settle().await;
    assert_eq!(bus.open_total(), 2);
    broker.close();
    settle().await;
    assert_eq!(bus.open_total(), 0);
    assert_eq!(stats(&broker).upstreams, 0);
    for sub in &mut subs {
        assert!(sub.recv().await.is_none());
    }
    drop(subs);
    settle().await;
    assert_eq!(stats(&broker).upstreams, 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_broker_ends_its_upstreams() {
    let bus = Bus::default();
    let broker = hub_broker(&bus);
    let sub = subscribe(&broker, "room:1", None);
    settle().await;
    assert_eq!(bus.open_now("room:1"), 1);
    drop(sub);
    drop(broker);
    settle().await;
    assert_eq!(bus.open_now("room:1"), 0);
}

#[tokio::test(start_paused = true)]
async fn only_the_topics_of_the_rule_are_fed() {
    let bus = Bus::default();
    let broker = Broker::builder()
        .hub(Hub::new(bus.clone()).topics(|topic| topic.as_str().starts_with("room:")))
        .build();
    let mut public = subscribe(&broker, "public", None);
    let _room = subscribe(&broker, "room:1", None);
    settle().await;
    assert!(bus.attempts("public").is_empty());
    assert_eq!(bus.open_now("room:1"), 1);
    broker
        .publish(Event::new("app").topic("public").data("app's own"))
        .unwrap();
    assert_eq!(data(&drain(&mut public)), ["app's own"]);
    assert_eq!(stats(&broker).upstreams, 1);
}

#[tokio::test(start_paused = true)]
async fn a_broker_without_a_hub_reports_none() {
    assert_eq!(Broker::new().stats().hub, None);
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

#[test]
fn without_a_runtime_the_topic_is_told_and_the_next_subscriber_tries_again() {
    let bus = Bus::default();
    // Built and subscribed outside any runtime: no task can run.
    let broker = hub_broker(&bus);
    let mut first = subscribe(&broker, "room:1", None);
    assert_eq!(drain(&mut first), [Seen::Resync(ResyncReason::Upstream)]);
    let hub = stats(&broker);
    assert_eq!((hub.upstreams, hub.open, hub.failures), (1, 0, 1));

    // The next stream, within a runtime, starts a driver for the slot,
    // which still counts the first stream: both get the bus's events.
    paused_runtime().block_on(async {
        let mut second = subscribe(&broker, "room:1", None);
        settle().await;
        assert_eq!(bus.open_now("room:1"), 1);
        bus.publish("room:1", "now");
        settle().await;
        assert_eq!(data(&drain(&mut second)), ["now"]);
        assert_eq!(data(&drain(&mut first)), ["now"]);
        // The second leaving does not close it: the first still watches.
        drop(second);
        sleep(LINGER * 2).await;
        assert_eq!(bus.open_now("room:1"), 1);
        drop(first);
        sleep(LINGER * 2).await;
        assert_eq!(bus.open_now("room:1"), 0);
        assert_eq!(stats(&broker).upstreams, 0);
    });
}

#[test]
fn a_driver_whose_runtime_shuts_down_gives_its_topic_up() {
    let bus = Bus::default();
    let broker = Broker::builder()
        .hub(Hub::new(bus.clone()).linger(LINGER))
        .build();
    let mut sub = paused_runtime().block_on(async {
        let sub = subscribe(&broker, "room:1", None);
        settle().await;
        assert_eq!(bus.open_now("room:1"), 1);
        sub
    });
    // The runtime is gone, and its tasks with it: the stream is told.
    assert_eq!(bus.open_now("room:1"), 0);
    assert_eq!(drain(&mut sub), [Seen::Resync(ResyncReason::Upstream)]);
    let hub = stats(&broker);
    assert_eq!((hub.upstreams, hub.open, hub.failures), (1, 0, 1));
    // Orphaned, not gone: a stream on another runtime revives it.
    paused_runtime().block_on(async {
        let _other = subscribe(&broker, "room:1", None);
        settle().await;
        assert_eq!(bus.open_now("room:1"), 1);
        bus.publish("room:1", "back");
        settle().await;
        assert_eq!(data(&drain(&mut sub)), ["back"]);
    });
}

#[tokio::test(start_paused = true)]
async fn a_stream_returning_to_an_idle_topic_whose_upstream_broke_reopens_it_at_once() {
    let bus = Bus::default();
    let broker = Broker::builder()
        .hub(
            Hub::new(bus.clone())
                .linger(Duration::from_secs(600))
                .retry(RETRY_MIN, RETRY_MAX),
        )
        .build();
    let first = subscribe(&broker, "room:1", None);
    settle().await;
    drop(first);
    settle().await;
    bus.break_channel("room:1");
    // Broken while nobody watches: it stays shut.
    sleep(RETRY_MAX * 2).await;
    assert_eq!(bus.open_now("room:1"), 0);
    assert_eq!(bus.attempts("room:1").len(), 1);

    let mut back = subscribe(&broker, "room:1", None);
    settle().await;
    assert_eq!(
        bus.open_now("room:1"),
        1,
        "opened again, not after the linger"
    );
    // It came during the outage: told so, then live.
    assert_eq!(drain(&mut back), [Seen::Resync(ResyncReason::Upstream)]);
    bus.publish("room:1", "live");
    settle().await;
    assert_eq!(data(&drain(&mut back)), ["live"]);
}

#[tokio::test(start_paused = true)]
async fn a_stream_arriving_during_an_outage_is_told() {
    let bus = Bus::default();
    bus.fail_opens("room:1", 3);
    let broker = hub_broker(&bus);
    let mut first = subscribe(&broker, "room:1", None);
    settle().await;
    assert_eq!(drain(&mut first), [Seen::Resync(ResyncReason::Upstream)]);
    let mut second = subscribe(&broker, "room:1", None);
    assert_eq!(drain(&mut second), [Seen::Resync(ResyncReason::Upstream)]);
    sleep(Duration::from_secs(2)).await;
    assert_eq!(bus.open_now("room:1"), 1);
    // Once it is open again, a newcomer starts live, untold.
    let mut third = subscribe(&broker, "room:1", None);
    assert_eq!(drain(&mut third), []);
    assert_eq!(drain(&mut first), []);
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_panics_is_a_failure_not_a_dead_topic() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tower_sse::upstream::Upstream;
    use tower_sse::Topic;

    /// Panics in its first `open`, and its first stream panics when polled.
    struct Flaky {
        bus: Bus,
        opens: Arc<AtomicUsize>,
    }

    impl Upstream for Flaky {
        type Stream =
            futures_util::stream::BoxStream<'static, Result<Event, crate::support::bus::BusError>>;
        type Error = crate::support::bus::BusError;

        fn open(
            &self,
            topic: &Topic,
        ) -> impl std::future::Future<Output = Result<Self::Stream, Self::Error>> + Send + 'static
        {
            use futures_util::StreamExt;

            let n = self.opens.fetch_add(1, Ordering::SeqCst);
            assert!(n != 0, "the app's open panics");
            let opening = self.bus.open(topic);
            async move {
                let stream = opening.await?;
                Ok(if n == 1 {
                    futures_util::stream::poll_fn(|_| panic!("the app's stream panics")).boxed()
                } else {
                    stream.boxed()
                })
            }
        }
    }

    let bus = Bus::default();
    let broker = Broker::builder()
        .hub(
            Hub::new(Flaky {
                bus: bus.clone(),
                opens: Arc::default(),
            })
            .retry(RETRY_MIN, RETRY_MAX),
        )
        .build();
    let mut sub = subscribe(&broker, "room:1", None);
    sleep(Duration::from_secs(2)).await;
    // Two outages: the open that panicked, and the stream that did once
    // open.
    assert_eq!(
        drain(&mut sub),
        [
            Seen::Resync(ResyncReason::Upstream),
            Seen::Resync(ResyncReason::Upstream)
        ]
    );
    let hub = stats(&broker);
    assert_eq!((hub.failures, hub.opens, hub.open), (2, 2, 1));
    assert_eq!(bus.publish("room:1", "alive"), 1);
    settle().await;
    assert_eq!(data(&drain(&mut sub)), ["alive"]);
}

#[tokio::test(start_paused = true)]
async fn an_open_past_its_timeout_is_a_failure() {
    let bus = Bus::default();
    bus.hang_opens("room:1");
    let broker = Broker::builder()
        .hub(
            Hub::new(bus.clone())
                .open_timeout(Duration::from_secs(1))
                .retry(RETRY_MIN, RETRY_MAX),
        )
        .build();
    let mut sub = subscribe(&broker, "room:1", None);
    sleep(Duration::from_millis(999)).await;
    assert_eq!(drain(&mut sub), []);
    sleep(Duration::from_millis(2)).await;
    assert_eq!(drain(&mut sub), [Seen::Resync(ResyncReason::Upstream)]);
    assert_eq!(stats(&broker).failures, 1);
    sleep(Duration::from_secs(5)).await;
    assert!(bus.attempts("room:1").len() >= 3);
}

#[tokio::test(start_paused = true)]
async fn absurd_settings_are_clamped_not_a_panic() {
    let bus = Bus::default();
    bus.fail_opens("room:1", 2);
    let broker = Broker::builder()
        .hub(
            Hub::new(bus.clone())
                .retry(Duration::MAX, Duration::MAX)
                .linger(Duration::MAX)
                .open_timeout(Duration::MAX),
        )
        .build();
    let mut sub = subscribe(&broker, "room:1", None);
    settle().await;
    assert_eq!(drain(&mut sub), [Seen::Resync(ResyncReason::Upstream)]);
    // A day at most between attempts, give or take its fifth.
    let day = Duration::from_secs(24 * 60 * 60);
    sleep(day * 3).await;
    assert_eq!(bus.open_now("room:1"), 1);
    let attempts = bus.attempts("room:1");
    assert_eq!(attempts.len(), 3);
    for pause in attempts.windows(2).map(|p| p[1] - p[0]) {
        assert!(
            pause >= day.mul_f64(0.8) && pause <= day.mul_f64(1.2) + Duration::from_millis(2),
            "{pause:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_resync_is_retained_in_the_order_for_clients_resuming_across_it() {
    let bus = Bus::default();
    let broker = hub_broker(&bus);
    let mut sub = subscribe(&broker, "room:1", None);
    settle().await;
    let before = bus_event(&bus, &mut sub, "before").await;
    bus.break_channel("room:1");
    sleep(RETRY_MIN * 2).await;
    bus.publish("room:1", "after");
    settle().await;
    drop(sub);

    // A client that saw `before` on this server, back within the linger:
    // the resync, then what came after, in order.
    let mut back = subscribe(&broker, "room:1", Some(before));
    let seen = drain(&mut back);
    assert!(
        matches!(&seen[..], [Seen::Resync(ResyncReason::Upstream), Seen::Event(d, _)] if d == "after"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn the_resync_reaches_the_wire_as_the_frame_clients_know() {
    use crate::support::{client, server};

    let bus = Bus::default();
    bus.fail_opens("room:1", 1);
    let broker = hub_broker(&bus);
    let service = tower::Layer::layer(
        &tower_sse::SseLayer::new(broker.clone())
            .path("/events")
            .authorize(tower_sse::sse::any_topic),
        crate::support::inner::echo_inner(),
    );
    let addr = server::serve_hyper(service).await;
    let mut stream = client::get(addr, "/events?topic=room:1", &[]).await;
    let (_, frame) = stream
        .frames_until(|frame| frame.event_type() == Some("resync"))
        .await;
    assert_eq!(frame.json(), serde_json::json!({ "reason": "upstream" }));
    assert!(frame.id().is_some());
    crate::support::wait::eventually("the upstream to open", || bus.open_now("room:1") == 1).await;
    bus.publish("room:1", "hello");
    let (_, frame) = stream
        .frames_until(|frame| frame.data().as_deref() == Some("hello"))
        .await;
    assert_eq!(frame.event_type(), None);
}

/// On a replica of the Redis backplane, whose ids are the shared
/// stream's, a hub feeds no topic: a bus's events would get different ids
/// on each replica. The backplane's events still flow.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_backplane_replica_feeds_no_topic_from_a_hub() {
    use tower_sse::backplane::RedisBackplane;

    use crate::support::redis::RedisServer;
    use crate::support::wait::{eventually, within};

    let redis = RedisServer::start().await;
    let bus = Bus::default();
    let replica = RedisBackplane::new(&redis.url())
        .unwrap()
        .stream("test:hub")
        .start(Broker::builder().hub(Hub::new(bus.clone()).linger(LINGER)));
    eventually("the replica in step", || replica.stats().connected).await;
    let broker = replica.broker().clone();
    let mut sub = subscribe(&broker, "room:1", None);
    replica
        .publish(Event::new("app").topic("room:1").data("shared"))
        .await
        .unwrap();
    let Some(Message::Event(event)) = within("an event", sub.recv()).await else {
        panic!("the backplane's event")
    };
    assert_eq!(event.data(), "shared");
    assert!(bus.attempts("room:1").is_empty());
    assert_eq!(stats(&broker).upstreams, 0);
    // No seq of the mirror was taken for the topic.
    assert_eq!(broker.last_event_id(), event.id());
}

/// What a log line or a failed assertion shows of the hub: its upstream's
/// type and its timings.
#[test]
fn debug_output_names_the_type_and_its_settings() {
    let hub = Hub::new(Bus::default()).linger(Duration::from_secs(9));
    let shown = format!("{hub:?}");
    assert!(shown.starts_with("Hub { upstream: "), "{shown}");
    assert!(
        shown.contains("Bus") && shown.contains("linger: 9s"),
        "{shown}"
    );
}
