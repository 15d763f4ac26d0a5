//! The mailbox kept in Redis (feature `redis`): replicas in one process on
//! one `redis-server` the test starts, each with its own broker and
//! reader, sending on one and receiving, replying, confirming and asking
//! for a status on another; the races of two replicas on one record; and
//! the faults: Redis unreachable, restarted without its data.

use std::time::Duration;

use tower_sse::backplane::{RedisBackplane, Replica};
use tower_sse::mailbox::{Mailbox, Notification, RedisMailbox, ReplyError, SendError};
use tower_sse::{Broker, Event, Message, Subscription};

use crate::support::redis::RedisServer;
use crate::support::wait::{eventually, within};

fn replica(url: &str) -> Replica {
    RedisBackplane::new(url)
        .expect("URL")
        .stream("test:events")
        .block(Duration::from_millis(100))
        .publish_timeout(Duration::from_millis(500))
        .start(Broker::builder())
}

async fn in_step(replica: &Replica) {
    eventually("the replica to be in step with Redis", || {
        replica.stats().connected
    })
    .await;
}

/// A replica and its mailbox, in step with Redis.
async fn node(redis: &RedisServer) -> (Replica, RedisMailbox) {
    let replica = replica(&redis.url());
    in_step(&replica).await;
    let mailbox = Mailbox::builder(replica.broker().clone()).redis(&replica);
    (replica, mailbox)
}

fn note(to: &str, from: &str, text: &str) -> Notification {
    Notification::to(to).from(from).json(text).unwrap()
}

/// The next event of `sub`: its type, id and data as JSON.
async fn next_event(sub: &mut Subscription) -> (String, String, serde_json::Value) {
    loop {
        match within("a message", sub.recv()).await.expect("stream open") {
            // The broker's own events (`server.state`) are not the mailbox's.
            Message::Event(e) if e.event_type().starts_with("server.") => continue,
            Message::Event(e) => {
                let data = serde_json::from_str(e.data()).expect("JSON");
                return (e.event_type().to_owned(), e.id().to_string(), data);
            }
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_sent_on_one_replica_is_held_and_delivered_on_another() {
    let redis = RedisServer::start().await;
    let (_a, on_a) = node(&redis).await;
    let (_b, on_b) = node(&redis).await;
    let trace = on_a.send(note("bob", "alice", "lunch?")).await.unwrap();
    // Bob connects to B: it is there, with the same trace.
    let (mut sub, _guard) = on_b.subscribe("bob", None).await.unwrap();
    let (kind, id, data) = next_event(&mut sub).await;
    assert_eq!(kind, "notification");
    assert_eq!(data["trace"], trace.as_str());
    assert_eq!(data["payload"], "lunch?");
    // Status on B, from A's send; nobody else sees it.
    let status = on_b.status_for(&trace, "alice").await.unwrap().unwrap();
    assert!(!status.delivered);
    assert_eq!(on_b.status_for(&trace, "eve").await.unwrap(), None);
    // Bob's EventSource comes back to A with the id it got on B: proven.
    let (_sub, _guard) = on_a.subscribe("bob", Some(&id)).await.unwrap();
    let status = on_a.status(&trace).await.unwrap().unwrap();
    assert!(status.delivered, "the id B gave proves it on A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_notification_and_its_reply_cross_replicas() {
    let redis = RedisServer::start().await;
    let (_a, on_a) = node(&redis).await;
    let (_b, on_b) = node(&redis).await;
    let (mut bob, _g1) = on_b.subscribe("bob", None).await.unwrap();
    let (mut alice, _g2) = on_a.subscribe("alice", None).await.unwrap();
    let lunch = Notification::to("bob")
        .from("alice")
        .json("lunch?")
        .unwrap()
        .expects_reply();
    let trace = on_a.send(lunch).await.unwrap();
    let (kind, _, data) = next_event(&mut bob).await;
    assert_eq!(
        (kind.as_str(), data["trace"].as_str()),
        ("notification", Some(trace.as_str()))
    );
    let status = on_b
        .reply(&trace, "bob", serde_json::json!("yes"))
        .await
        .unwrap();
    assert!(status.replied && status.delivered);
    let (kind, _, data) = next_event(&mut alice).await;
    assert_eq!(kind, "notification.reply");
    assert_eq!(data["payload"], "yes");
    assert_eq!(data["by"], "bob");
    // A second reply, on A this time, is refused.
    assert_eq!(
        on_a.reply(&trace, "bob", "again").await.unwrap_err(),
        ReplyError::AlreadyReplied
    );
    let stats = on_a.stats().await.unwrap();
    assert_eq!((stats.held, stats.sent, stats.delivered), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_gives_unavailable_and_a_restart_without_data_empties_it() {
    let mut redis = RedisServer::start().await;
    let (a, on_a) = node(&redis).await;
    let trace = on_a.send(note("bob", "alice", "hi")).await.unwrap();
    assert_eq!(on_a.stats().await.unwrap().held, 1);
    redis.kill();
    eventually("the replica to see Redis gone", || !a.stats().connected).await;
    assert!(matches!(
        on_a.send(note("bob", "alice", "hi")).await,
        Err(SendError::Unavailable(_))
    ));
    assert!(matches!(
        on_a.reply(&trace, "bob", "x").await,
        Err(ReplyError::Unavailable(_))
    ));
    assert!(on_a.status(&trace).await.is_err());
    assert!(on_a.ack(&trace, "bob").await.is_err());
    redis.restart().await;
    in_step(&a).await;
    let stats = on_a.stats().await.unwrap();
    assert_eq!(stats.held, 0, "a Redis without its data holds nothing");
    assert_eq!(on_a.status(&trace).await.unwrap(), None);
    let _ = a.broker().publish(Event::new("t").topic("x").data("{}"));
}
