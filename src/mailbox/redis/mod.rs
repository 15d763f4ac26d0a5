//! The mailbox kept in Redis (feature `redis`): [`RedisMailbox`].

use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_core::future::BoxFuture;
use redis::{Script, Value};

use super::record::{notification_json, reply_json, status_from_frames};
use super::store::{sealed, MailboxStore};
use super::stream::{client_topic, hook_topic};
use super::{
    Limits, MailboxBuilder, MailboxStats, Notification, Reply, ReplyError, SendError, Status,
    TraceId, Unavailable,
};
use crate::backplane::{Replica, APPEND};
use crate::broker::EventId;
use crate::clock::Clock;
use crate::sse::StreamGuard;
use crate::wire::{NOTIFICATION_EVENT, REPLY_EVENT};
use crate::{Event, Subscription};

/// What a refusal for an unreachable store suggests (`Retry-After`).
pub const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// How many expired notifications one step purges at most.
const PURGE_BATCH: usize = 256;

/// A mailbox kept in Redis, beside the backplane's stream, so that the
/// replicas behind one load balancer are one mailbox. Cheap to clone.
/// Built with [`MailboxBuilder::redis`], its bounds set as for a
/// [`Mailbox`](super::Mailbox). Feature `redis`.
///
/// - **One atomic step per change.** Each operation ([`send`], [`reply`],
///   [`ack`], a stream opening, a status) is one Lua script, run after the
///   backplane's own `append`: what the in-memory mailbox does under its
///   lock, Redis does in one step, so two replicas racing on one record (a
///   reply on A while a confirmation lands on B) end where one process
///   would. The bounds are the in-memory mailbox's, counted alike, for the
///   whole service.
/// - **Frames go through the stream.** A notification (and a reply) is
///   appended to the backplane's stream in the same step that holds it, as
///   a direct message for the client's private topic: every replica's
///   reader hands it to the streams of that client open there, under the
///   same id on every replica, and never retains it.
/// - **A stream that opens** is sent a copy of what is held for its client
///   by its own replica, as a frame of that stream alone (nothing reaches
///   the shared stream, however often clients reconnect), and the copies'
///   ids are recorded in Redis before the stream shows any id: its events
///   wait for both steps (at most twice the publish timeout). So every
///   stream open while a notification is unconfirmed holds a copy whose id
///   is recorded, and a `Last-Event-ID` at or past the newest recorded one
///   proves receipt, on any replica. A stream that could not be sent its
///   copies ends before it shows any id, and so does one that may have
///   missed a direct message of the shared stream (its reader lost a
///   stretch, or the stream a new epoch): none of its ids can stand for
///   what it never got.
/// - **Expiry is part of every step** that reads records: each first
///   purges what expired (the oldest 256 at most, any other expired record
///   counting as gone), by the mailbox's clock, inside its own atomic
///   step: no janitor, nothing for replicas to race on.
///   [`purge_expired`](RedisMailbox::purge_expired) does it on demand.
/// - **Faults.** Redis unreachable (or the replica's reader not in step):
///   every operation fails at once or within the backplane's publish
///   timeout with [`Unavailable`]; the routes answer `503` with
///   `Retry-After`; open streams keep serving what they can, and a stream
///   of a named client that opens meanwhile ends after its `retry:` hint
///   (its client comes back until Redis answers). What
///   `send` acknowledged is in Redis: a replica that dies right after loses
///   nothing. What survives a Redis restart is what Redis persisted (with
///   `appendfsync always`, everything acknowledged; without persistence,
///   nothing: the mailbox is then empty and its [stats](RedisMailbox::stats)
///   say so, `held` 0).
///
/// Differences from the in-memory mailbox: a delivered notification's
/// frames are not taken back from streams that have not read them (a
/// stream may still show it once; the trace tells a duplicate);
/// a frame is appended even when nobody watches, and takes a place in the
/// stream's retention; `published` counts appended frames. The keys are
/// the backplane stream's plus `STREAM:mailbox:*`, on one Redis (not a
/// cluster).
///
/// [`send`]: RedisMailbox::send
/// [`reply`]: RedisMailbox::reply
/// [`ack`]: RedisMailbox::ack
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_sse::backplane::RedisBackplane;
/// use tower_sse::mailbox::{Mailbox, MailboxLayer, Notification};
/// use tower_sse::{Broker, SseLayer};
///
/// let replica = RedisBackplane::new("redis://127.0.0.1:6379")?.start(Broker::builder());
/// let mailbox = Mailbox::builder(replica.broker().clone()).redis(&replica);
/// let events = SseLayer::new(replica.broker().clone()).hook(mailbox.clone());
/// let routes = MailboxLayer::new(mailbox.clone());
///
/// let hi = Notification::to("bob").from("alice").json("hi")?;
/// let trace = mailbox.send(hi).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisMailbox {
    shared: Arc<Shared>,
}

struct Shared {
    replica: Replica,
    prefix: String,
    script: Script,
    /// The mailbox's own clock, if one was given; else Redis's.
    clock: Option<Box<dyn Clock>>,
    limits: Limits,
    /// Open streams per client, on this replica.
    online: Mutex<HashMap<Box<str>, usize>>,
}

/// Serials for trace ids: one count for the process, however many
/// mailboxes it runs (the ids are keyed per process, so unique across
/// processes too).
static SERIAL: AtomicU64 = AtomicU64::new(0);

impl MailboxBuilder {
    /// Builds a mailbox kept in Redis beside `replica`'s stream, shared by
    /// every replica of the service (its keys: the stream's, then
    /// `:mailbox`). Time for expiry is Redis's, unless a
    /// [`clock`](MailboxBuilder::clock) was given. Serve it with
    /// [`SseLayer::hook`](crate::SseLayer::hook) on the replica's broker.
    pub fn redis(self, replica: &Replica) -> RedisMailbox {
        let script = Script::new(&format!("{APPEND}{}", include_str!("mailbox.lua")));
        let prefix = format!("{}:mailbox", replica.keys().0);
        RedisMailbox {
            shared: Arc::new(Shared {
                replica: replica.clone(),
                prefix,
                script,
                clock: self.clock_given.then_some(self.clock),
                limits: self.limits,
                online: Mutex::default(),
            }),
        }
    }
}

/// What a step answered: its outcome, and what came with it.
struct Answer {
    outcome: String,
    rest: Vec<Value>,
}

impl RedisMailbox {
    /// The replica it delivers through.
    pub fn replica(&self) -> &Replica {
        &self.shared.replica
    }

    /// Runs the step `op` with `args`.
    async fn step(&self, op: &str, args: &[&[u8]]) -> Result<Answer, Unavailable> {
        let shared = &self.shared;
        let limits = &shared.limits;
        let now = shared
            .clock
            .as_ref()
            .map(|clock| millis(clock.now()).to_string())
            .unwrap_or_default();
        let (epoch, retention, token) = (
            crate::backplane::Replica::new_epoch().to_string(),
            shared.replica.retention().to_string(),
            shared.replica.token(),
        );
        let header = [
            shared.prefix.as_str(),
            &now,
            &wall_millis(SystemTime::now()).to_string(),
            &epoch,
            &retention,
            &token,
            &limits.per_target.to_string(),
            &limits.per_target_bytes.to_string(),
            &limits.per_sender.to_string(),
            &limits.per_sender_bytes.to_string(),
            &limits.capacity.to_string(),
            &limits.capacity_bytes.to_string(),
            op,
        ]
        .map(|arg| arg.as_bytes().to_vec());
        let all: Vec<Vec<u8>> = header
            .into_iter()
            .chain(args.iter().map(|arg| arg.to_vec()))
            .collect();
        let value = shared
            .replica
            .run_script(&shared.script, &all)
            .await
            .map_err(unavailable)?;
        let Value::Array(mut items) = value else {
            return Err(unavailable(format!("redis: unexpected answer {value:?}")));
        };
        if items.is_empty() {
            return Err(unavailable("redis: empty answer".into()));
        }
        let rest = items.split_off(1);
        let outcome = text(&items[0]).unwrap_or_default();
        Ok(Answer { outcome, rest })
    }

    /// Sends `notification`; see [`Mailbox::send`](super::Mailbox::send).
    /// Returns once Redis holds it and its frame is in the stream; a
    /// replica that dies after that loses nothing. Refused as in memory,
    /// and with [`SendError::Unavailable`] when Redis cannot be reached
    /// (the notification may then be held or not).
    pub async fn send(&self, notification: Notification) -> Result<TraceId, SendError> {
        let limits = &self.shared.limits;
        let cost = limits.check(&notification)?;
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed) + 1;
        let trace = TraceId::generate(serial);
        let data = notification_json(
            &trace,
            &notification.from,
            &notification.payload,
            notification.expects_reply,
            SystemTime::now(),
        );
        // A frame the replicas' brokers would refuse would reach nobody,
        // though held: refused here, as the payload over the limit it is.
        self.fits(NOTIFICATION_EVENT, &data)
            .map_err(|limit| SendError::TooLarge {
                size: notification.payload.len(),
                limit,
            })?;
        let ttl = millis(notification.ttl.unwrap_or(limits.ttl));
        let answer = self
            .step(
                "send",
                &[
                    trace.as_str().as_bytes(),
                    notification.from.as_bytes(),
                    notification.to.as_bytes(),
                    if notification.expects_reply {
                        b"1"
                    } else {
                        b"0"
                    },
                    ttl.to_string().as_bytes(),
                    cost.to_string().as_bytes(),
                    &data,
                ],
            )
            .await
            .map_err(|unavailable| {
                crate::metrics::mailbox_refused("unavailable");
                SendError::Unavailable(unavailable)
            })?;
        match answer.outcome.as_str() {
            "ok" => {
                crate::metrics::mailbox_sent();
                Ok(trace)
            }
            "sender" => {
                crate::metrics::mailbox_refused("sender");
                Err(SendError::SenderOverShare {
                    retry_after: limits.retry_after,
                })
            }
            "full" => {
                crate::metrics::mailbox_refused("full");
                Err(SendError::Full {
                    retry_after: limits.retry_after,
                })
            }
            other => {
                crate::metrics::mailbox_refused("unavailable");
                Err(SendError::Unavailable(unexpected(other)))
            }
        }
    }

    /// Whether a frame of `event_type` with `data` is one the broker sends;
    /// if not, about the largest payload it would take.
    fn fits(&self, event_type: &str, data: &[u8]) -> Result<(), usize> {
        let event = Event::new(event_type.to_owned()).data(data.to_vec());
        match self.replica().broker().check_own(event) {
            Err(crate::PublishError::TooLarge { size, limit }) => {
                Err(limit.saturating_sub(size.saturating_sub(data.len())))
            }
            _ => Ok(()),
        }
    }

    /// The status of `trace`; `None` if unknown, purged or expired.
    pub async fn status(&self, trace: &TraceId) -> Result<Option<Status>, Unavailable> {
        let answer = self.step("status", &[trace.as_str().as_bytes()]).await?;
        Ok(answer.rest.first().and_then(status))
    }

    /// The status of `trace` as `client` sees it: only its sender and its
    /// target may; anyone else gets `None`, as for an unknown trace.
    pub async fn status_for(
        &self,
        trace: &TraceId,
        client: &str,
    ) -> Result<Option<Status>, Unavailable> {
        Ok(self
            .status(trace)
            .await?
            .filter(|status| status.from == client || status.to == client))
    }

    /// Replies to `trace` on behalf of `by`; see
    /// [`Mailbox::reply`](super::Mailbox::reply). The sender's streams get
    /// the reply on whatever replica they are.
    pub async fn reply(
        &self,
        trace: &TraceId,
        by: &str,
        payload: impl serde::Serialize,
    ) -> Result<Status, ReplyError> {
        let limits = &self.shared.limits;
        let payload = limits.reply_payload(payload)?;
        let cost = by.len() + payload.len();
        let reply = Reply {
            by: by.to_owned(),
            payload: Bytes::from(payload),
            at: SystemTime::now(),
        };
        let data = reply_json(trace, &reply);
        self.fits(REPLY_EVENT, &data)
            .map_err(|limit| ReplyError::TooLarge {
                size: reply.payload.len(),
                limit,
            })?;
        // Names this reply, so that one retried after a broken connection
        // that went through is answered as taken, not as a second reply.
        let token = self.shared.replica.token();
        let answer = self
            .step(
                "reply",
                &[
                    trace.as_str().as_bytes(),
                    by.as_bytes(),
                    cost.to_string().as_bytes(),
                    &data,
                    token.as_bytes(),
                ],
            )
            .await
            .map_err(ReplyError::Unavailable)?;
        match answer.outcome.as_str() {
            "ok" => {
                answer.rest.first().and_then(status).ok_or_else(|| {
                    ReplyError::Unavailable(unexpected("a record that does not read"))
                })
            }
            "notfound" => Err(ReplyError::NotFound),
            "nottarget" => Err(ReplyError::NotTarget),
            "expired" => Err(ReplyError::Expired),
            "noreply" => Err(ReplyError::NoReplyExpected),
            "replied" => Err(ReplyError::AlreadyReplied),
            "full" => Err(ReplyError::Full {
                retry_after: limits.retry_after,
            }),
            other => Err(ReplyError::Unavailable(unexpected(other))),
        }
    }

    /// Marks `trace` delivered on its target's word; false if unknown or
    /// `client` is not its target.
    pub async fn ack(&self, trace: &TraceId, client: &str) -> Result<bool, Unavailable> {
        let answer = self
            .step("ack", &[trace.as_str().as_bytes(), client.as_bytes()])
            .await?;
        Ok(answer.outcome == "ok")
    }

    /// Whether `client` is the target of `trace`, expired or not.
    async fn is_target(&self, trace: &TraceId, client: &str) -> Result<bool, Unavailable> {
        let answer = self.step("target", &[trace.as_str().as_bytes()]).await?;
        Ok(answer.rest.first().and_then(text).as_deref() == Some(client))
    }

    /// Purges every notification past its TTL now; returns how many.
    pub async fn purge_expired(&self) -> Result<usize, Unavailable> {
        let mut purged = 0;
        loop {
            let answer = self
                .step("purge", &[PURGE_BATCH.to_string().as_bytes()])
                .await?;
            let number = |i: usize| answer.rest.get(i).and_then(integer).unwrap_or(0);
            purged += number(0);
            if number(1) < PURGE_BATCH {
                return Ok(purged);
            }
        }
    }

    /// Counters and sizes of the whole mailbox, as Redis holds them
    /// (`online`: this replica's clients).
    pub async fn stats(&self) -> Result<MailboxStats, Unavailable> {
        let answer = self.step("stats", &[]).await?;
        let fields = answer.rest.first().map(pairs).unwrap_or_default();
        let n = |name: &str| {
            fields
                .get(name)
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
                .map_or(0, |v| u64::try_from(v).unwrap_or(0))
        };
        let online = lock(&self.shared.online).len();
        Ok(MailboxStats {
            held: usize::try_from(n("held")).unwrap_or(usize::MAX),
            bytes: usize::try_from(n("bytes")).unwrap_or(usize::MAX),
            sent: n("sent"),
            delivered: n("delivered"),
            published: n("published"),
            dropped: n("dropped"),
            expired: n("expired"),
            forgotten: n("forgotten"),
            refused_sender: n("refused_sender"),
            refused_full: n("refused_full"),
            online,
        })
    }

    /// Opens an in-process stream of `client`'s notifications, for
    /// transports other than the events route: subscribes to the client's
    /// private topic, then sends it what is held for it. Keep the guard as
    /// long as the subscription is read. Fails if Redis cannot be reached
    /// (a stream that could not be sent what is held must not go on: its
    /// ids would seem to prove what it never got), or the broker is closed.
    pub async fn subscribe(
        &self,
        client: &str,
        last_event_id: Option<&str>,
    ) -> Result<(Subscription, StreamGuard), Unavailable> {
        let topics = crate::Topics::one(client_topic(client));
        let subscription = self
            .replica()
            .broker()
            .subscribe(&topics, last_event_id)
            .map_err(|_| unavailable("the broker is closed".into()))?;
        let proof = last_event_id.filter(|_| !subscription.starts_with_resync());
        let present = self.present(client);
        self.connect(client, &self.probe(&subscription), proof)
            .await?;
        Ok((subscription, StreamGuard::new(present)))
    }

    /// Counts a stream of `client` open until the guard drops.
    fn present(&self, client: &str) -> Present {
        *lock(&self.shared.online)
            .entry(Box::from(client))
            .or_default() += 1;
        Present {
            shared: self.shared.clone(),
            client: Box::from(client),
        }
    }

    /// What the opening needs of a subscription, taken at once: it runs
    /// after the subscription was handed on.
    fn probe(&self, subscription: &Subscription) -> Probe {
        Probe {
            seam: subscription.seam(),
            key: subscription.key(),
        }
    }

    /// A stream of `client` opened (`probe`): confirm what its
    /// `Last-Event-ID` (`proof`) shows it received, send that one stream a
    /// copy of everything else held for it and of the replies it has not
    /// seen (unless it gets one from the stream already), and record where
    /// the copies went, all before the stream shows any id.
    async fn connect(
        &self,
        client: &str,
        probe: &Probe,
        proof: Option<&str>,
    ) -> Result<(), Unavailable> {
        let seam = probe.seam;
        let seen = proof
            .and_then(|id| id.parse::<EventId>().ok())
            .filter(|id| id.epoch() == seam.epoch());
        let (seen_epoch, seen_s, seen_k) = match seen {
            Some(id) => {
                let (s, k) = split(id);
                (id.epoch().to_string(), s.to_string(), k.to_string())
            }
            None => Default::default(),
        };
        let answer = self
            .step(
                "connect",
                &[
                    client.as_bytes(),
                    seen_epoch.as_bytes(),
                    seen_s.as_bytes(),
                    seen_k.as_bytes(),
                    seam.epoch().to_string().as_bytes(),
                    split(seam).0.to_string().as_bytes(),
                ],
            )
            .await?;
        let Some(Value::Array(copies)) = answer.rest.first() else {
            return Ok(());
        };
        let broker = self.shared.replica.broker();
        let topic = client_topic(client);
        let mut sent: Vec<Vec<u8>> = Vec::new();
        for copy in copies {
            let parsed = match copy {
                Value::Array(fields) => match &fields[..] {
                    [kind, trace, data, key] => Some((
                        text(kind),
                        text(trace),
                        redis::from_redis_value_ref::<Vec<u8>>(data).ok(),
                        text(key).and_then(|k| k.parse::<u64>().ok()),
                    )),
                    _ => None,
                },
                _ => None,
            };
            let Some((Some(kind), Some(trace), Some(data), Some(key))) = parsed else {
                return Err(unexpected("a copy that does not read"));
            };
            let event_type = if kind == "r" {
                REPLY_EVENT
            } else {
                NOTIFICATION_EVENT
            };
            let event = Event::new(event_type).data(data);
            let id = match broker.send_direct_to_key(probe.key, &topic, key, event) {
                Ok(Some(id)) => id,
                // The stream is gone: nothing to send it, nothing to record.
                Ok(None) => return Ok(()),
                // Not sent (the broker closed, or had no id left for it):
                // the stream must not go on without it.
                Err(e) => return Err(unavailable(format!("a copy was not sent: {e}"))),
            };
            let (s, k) = split(id);
            sent.extend(
                [
                    kind,
                    trace,
                    id.epoch().to_string(),
                    s.to_string(),
                    k.to_string(),
                ]
                .map(String::into_bytes),
            );
        }
        if sent.is_empty() {
            return Ok(());
        }
        let args: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
        self.step("copied", &args).await.map(drop)
    }
}

/// An id as the mailbox's store keeps it: the stream seq it falls at or
/// after, and which of a replica's own frames after it (0: the entry).
fn split(id: EventId) -> (u64, u64) {
    (
        crate::broker::stream_seq(id.seq()),
        id.seq() & crate::broker::LOCAL_MASK,
    )
}

/// A stream of a client, counted open until dropped.
struct Present {
    shared: Arc<Shared>,
    client: Box<str>,
}

impl Drop for Present {
    fn drop(&mut self) {
        let mut online = lock(&self.shared.online);
        if let Some(n) = online.get_mut(&*self.client) {
            *n -= 1;
            if *n == 0 {
                online.remove(&*self.client);
            }
        }
    }
}

/// The events route plugs the mailbox into the streams of named clients,
/// as for the in-memory mailbox; the stream's events wait until Redis has
/// answered the opening (at most twice the publish timeout). Each opening
/// runs as a task on the current tokio runtime (the events route always
/// has one), aborted if the stream ends first.
impl crate::sse::StreamHook for RedisMailbox {
    fn topic(&self, client: &str) -> Result<Option<crate::Topic>, crate::Rejection> {
        hook_topic(client)
    }

    fn opened(
        &self,
        client: &str,
        subscription: &Subscription,
        last_event_id: Option<&str>,
    ) -> StreamGuard {
        let present = self.present(client);
        let proof = last_event_id
            .filter(|_| !subscription.starts_with_resync())
            .map(str::to_owned);
        let probe = self.probe(subscription);
        let mailbox = self.clone();
        let client = client.to_owned();
        let (done, ready) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let verdict = match mailbox.connect(&client, &probe, proof.as_deref()).await {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    tracing::warn!(error = %e, client, "ending a stream whose opening failed: it comes back after its retry hint");
                    ControlFlow::Break(())
                }
            };
            let _ = done.send(verdict);
        });
        // A task that ended without a verdict (aborted, panicked) did not
        // open the stream either.
        StreamGuard::new((present, AbortOnDrop(task)))
            .ready_after(async move { ready.await.unwrap_or(ControlFlow::Break(())) })
    }
}

/// A subscription's place in the stream, and how to address it alone.
struct Probe {
    seam: EventId,
    key: usize,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl sealed::Sealed for RedisMailbox {}

impl MailboxStore for RedisMailbox {
    fn send(&self, notification: Notification) -> BoxFuture<'static, Result<TraceId, SendError>> {
        let mailbox = self.clone();
        Box::pin(async move { RedisMailbox::send(&mailbox, notification).await })
    }

    fn status_for(
        &self,
        trace: &TraceId,
        client: &str,
    ) -> BoxFuture<'static, Result<Option<Status>, Unavailable>> {
        let (mailbox, trace, client) = (self.clone(), trace.clone(), client.to_owned());
        Box::pin(async move { RedisMailbox::status_for(&mailbox, &trace, &client).await })
    }

    fn reply(
        &self,
        trace: &TraceId,
        by: &str,
        payload: serde_json::Value,
    ) -> BoxFuture<'static, Result<Status, ReplyError>> {
        let (mailbox, trace, by) = (self.clone(), trace.clone(), by.to_owned());
        Box::pin(async move { RedisMailbox::reply(&mailbox, &trace, &by, payload).await })
    }

    fn ack(&self, trace: &TraceId, client: &str) -> BoxFuture<'static, Result<bool, Unavailable>> {
        let (mailbox, trace, client) = (self.clone(), trace.clone(), client.to_owned());
        Box::pin(async move { RedisMailbox::ack(&mailbox, &trace, &client).await })
    }

    fn stats(&self) -> BoxFuture<'static, Result<MailboxStats, Unavailable>> {
        let mailbox = self.clone();
        Box::pin(async move { RedisMailbox::stats(&mailbox).await })
    }

    fn is_target(
        &self,
        trace: &TraceId,
        client: &str,
    ) -> BoxFuture<'static, Result<bool, Unavailable>> {
        let (mailbox, trace, client) = (self.clone(), trace.clone(), client.to_owned());
        Box::pin(async move { RedisMailbox::is_target(&mailbox, &trace, &client).await })
    }

    fn max_payload(&self) -> usize {
        self.shared.limits.max_payload
    }
}

impl fmt::Debug for RedisMailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisMailbox")
            .field("prefix", &self.shared.prefix)
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn unavailable(reason: String) -> Unavailable {
    Unavailable {
        reason,
        retry_after: UNAVAILABLE_RETRY_AFTER,
    }
}

fn unexpected(what: &str) -> Unavailable {
    unavailable(format!("redis: unexpected answer {what:?}"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn wall_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, millis)
}

fn text(value: &Value) -> Option<String> {
    redis::from_redis_value_ref::<String>(value).ok()
}

fn integer(value: &Value) -> Option<usize> {
    redis::from_redis_value_ref::<usize>(value).ok()
}

/// A flat list of fields and values (`HGETALL`).
fn pairs(value: &Value) -> HashMap<String, Vec<u8>> {
    let Value::Array(items) = value else {
        return HashMap::new();
    };
    items
        .chunks_exact(2)
        .filter_map(|pair| {
            let key = text(&pair[0])?;
            let value: Vec<u8> = redis::from_redis_value_ref(&pair[1]).ok()?;
            Some((key, value))
        })
        .collect()
}

/// A status from a record's fields; `None` for no record.
fn status(value: &Value) -> Option<Status> {
    let fields = pairs(value);
    let to = std::str::from_utf8(fields.get("to")?).ok()?;
    let delivered_at = fields
        .get("dl")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    status_from_frames(
        to,
        fields.get("nd")?,
        delivered_at,
        fields.get("rd").map(Vec::as_slice),
    )
}
