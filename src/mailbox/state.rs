//! What a mailbox holds, under its one lock, and the bookkeeping of its
//! bounds: per target, per sender and in all, in counts and in bytes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use super::record::Record;
use super::stream::client_topic;
use super::{Limits, TraceId};
use crate::Broker;

#[derive(Default)]
pub(super) struct State {
    pub(super) records: HashMap<TraceId, Record>,
    /// Every record by expiry, to purge without scanning.
    pub(super) expiry: BTreeMap<(Duration, u64), TraceId>,
    /// Each target's notifications, oldest first, and what they count.
    pub(super) by_target: HashMap<Box<str>, Held>,
    /// What each sender's notifications (and their replies) count, and its
    /// finished ones, oldest first (may name traces purged since).
    pub(super) by_sender: HashMap<Box<str>, Share>,
    /// Open streams per client.
    pub(super) online: HashMap<Box<str>, usize>,
    /// Notifications that became finished (delivered, and not expecting a
    /// reply or their reply seen by the sender), oldest first: what a full
    /// mailbox forgets first. May name traces purged since.
    pub(super) finished: VecDeque<TraceId>,
    /// Per sender, the replies it has not shown it received, in reply
    /// order: sent again when a stream of the sender opens.
    pub(super) unseen_replies: HashMap<Box<str>, Vec<TraceId>>,
    /// Bytes counted in all.
    pub(super) bytes: usize,
    pub(super) next: u64,
    pub(super) counters: Counters,
}

/// A target's notifications.
#[derive(Default)]
pub(super) struct Held {
    pub(super) traces: VecDeque<TraceId>,
    pub(super) bytes: usize,
}

/// What a sender holds.
#[derive(Default)]
pub(super) struct Share {
    pub(super) count: usize,
    pub(super) bytes: usize,
    pub(super) finished: VecDeque<TraceId>,
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counters {
    pub(super) sent: u64,
    pub(super) delivered: u64,
    pub(super) published: u64,
    pub(super) dropped: u64,
    pub(super) expired: u64,
    pub(super) forgotten: u64,
    pub(super) refused_sender: u64,
    pub(super) refused_full: u64,
}

/// What a direct message of the mailbox is, in the key that names it for
/// [`Broker::retract_direct`].
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Notification,
    Reply,
}

pub(super) fn key(serial: u64, kind: Kind) -> u64 {
    serial * 2
        + match kind {
            Kind::Notification => 0,
            Kind::Reply => 1,
        }
}

impl State {
    /// Whether `sender` can take `count` more notifications and `bytes`
    /// more bytes within its share, forgetting its own finished
    /// notifications (oldest first) to make room if needed.
    pub(super) fn sender_has_room(
        &mut self,
        broker: &Broker,
        sender: &str,
        count: usize,
        bytes: usize,
        limits: &Limits,
    ) -> bool {
        let over = |state: &State| {
            state.by_sender.get(sender).map_or(
                (
                    count.saturating_sub(limits.per_sender),
                    bytes.saturating_sub(limits.per_sender_bytes),
                ),
                |share| {
                    (
                        (share.count + count).saturating_sub(limits.per_sender),
                        (share.bytes + bytes).saturating_sub(limits.per_sender_bytes),
                    )
                },
            )
        };
        let (count_over, bytes_over) = over(self);
        if count_over == 0 && bytes_over == 0 {
            return true;
        }
        self.forget_finished(broker, count_over, bytes_over, Some(sender));
        over(self) == (0, 0)
    }

    /// By how many notifications and bytes the mailbox would be over its
    /// capacity with one more of `cost` bytes, once `drop` is dropped.
    pub(super) fn over_capacity(
        &self,
        drop: &[TraceId],
        cost: usize,
        limits: &Limits,
    ) -> (usize, usize) {
        let (mut count, mut bytes) = (self.records.len() + 1, self.bytes + cost);
        for record in drop.iter().filter_map(|trace| self.records.get(trace)) {
            count -= 1;
            bytes -= record.total_cost();
        }
        (
            count.saturating_sub(limits.capacity),
            bytes.saturating_sub(limits.capacity_bytes),
        )
    }

    /// The target's oldest notifications to drop so that one more of
    /// `cost` bytes fits its bounds.
    pub(super) fn target_overflow(&self, to: &str, cost: usize, limits: &Limits) -> Vec<TraceId> {
        let Some(held) = self.by_target.get(to) else {
            return Vec::new();
        };
        let mut count = held.traces.len() + 1;
        let mut bytes = held.bytes + cost;
        let mut drop = Vec::new();
        for trace in &held.traces {
            if count <= limits.per_target && bytes <= limits.per_target_bytes {
                break;
            }
            count -= 1;
            bytes -= self.records[trace].notification_cost();
            drop.push(trace.clone());
        }
        drop
    }

    pub(super) fn purge_expired(&mut self, broker: &Broker, now: Duration) -> usize {
        let mut purged = 0;
        while let Some(entry) = self.expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let trace = entry.remove();
            if self.forget(broker, &trace) {
                purged += 1;
            }
        }
        self.counters.expired += purged as u64;
        crate::metrics::mailbox_expired(purged as u64);
        purged
    }

    /// Forgets the oldest finished notifications (of `sender` only, if
    /// given) until `count` of them and `bytes` bytes are freed, or none
    /// finished is left.
    pub(super) fn forget_finished(
        &mut self,
        broker: &Broker,
        mut count: usize,
        mut bytes: usize,
        sender: Option<&str>,
    ) {
        while count > 0 || bytes > 0 {
            let queue = match sender {
                Some(sender) => match self.by_sender.get_mut(sender) {
                    Some(share) => &mut share.finished,
                    None => return,
                },
                None => &mut self.finished,
            };
            let Some(trace) = queue.pop_front() else {
                return;
            };
            let Some(record) = self.records.get(&trace).filter(|r| r.is_finished()) else {
                continue;
            };
            let cost = record.total_cost();
            self.forget(broker, &trace);
            self.counters.forgotten += 1;
            count = count.saturating_sub(1);
            bytes = bytes.saturating_sub(cost);
        }
    }

    /// Marks `trace` delivered (if it was not) and takes its frames back
    /// from every stream that has not read them.
    pub(super) fn mark_delivered(&mut self, broker: &Broker, trace: &TraceId) {
        let record = self.records.get_mut(trace).expect("held");
        if record.delivered_at.is_some() {
            return;
        }
        record.delivered_at = Some(SystemTime::now());
        self.counters.delivered += 1;
        crate::metrics::mailbox_delivered();
        broker.retract_direct(
            &client_topic(&record.to),
            key(record.serial, Kind::Notification),
        );
        self.note_if_finished(trace);
    }

    /// The sender showed it received the reply to `trace`.
    pub(super) fn mark_reply_seen(&mut self, broker: &Broker, trace: &TraceId) {
        let record = self.records.get_mut(trace).expect("held");
        record.reply_seen = true;
        broker.retract_direct(&client_topic(&record.from), key(record.serial, Kind::Reply));
        self.note_if_finished(trace);
    }

    /// Queues `trace` among the finished records, if it now is one.
    pub(super) fn note_if_finished(&mut self, trace: &TraceId) {
        let record = &self.records[trace];
        if !record.is_finished() {
            return;
        }
        let records = &self.records;
        note(&mut self.finished, trace, records);
        if let Some(share) = self.by_sender.get_mut(&*record.from) {
            note(&mut share.finished, trace, records);
        }
    }

    /// Removes `trace` everywhere, its frames from every stream that has
    /// not read them too; whether it was held.
    pub(super) fn forget(&mut self, broker: &Broker, trace: &TraceId) -> bool {
        let Some(record) = self.records.remove(trace) else {
            return false;
        };
        self.expiry.remove(&(record.expires_at, record.serial));
        let cost = record.notification_cost();
        let total = record.total_cost();
        self.bytes -= total;
        if let Some(held) = self.by_target.get_mut(&*record.to) {
            held.traces.retain(|t| t != trace);
            held.bytes -= cost;
            if held.traces.is_empty() {
                self.by_target.remove(&*record.to);
            }
        }
        if let Some(share) = self.by_sender.get_mut(&*record.from) {
            share.count -= 1;
            share.bytes -= total;
            if share.count == 0 {
                self.by_sender.remove(&*record.from);
            }
        }
        let to = client_topic(&record.to);
        broker.retract_direct(&to, key(record.serial, Kind::Notification));
        if record.reply.is_some() {
            broker.retract_direct(&client_topic(&record.from), key(record.serial, Kind::Reply));
            if let Some(replies) = self.unseen_replies.get_mut(&*record.from) {
                replies.retain(|t| t != trace);
                if replies.is_empty() {
                    self.unseen_replies.remove(&*record.from);
                }
            }
        }
        true
    }
}

/// Appends `trace` to a queue of finished records. Records leave the
/// mailbox by other ways too (expiry, the target's bounds) and stay in the
/// queue until popped; so that the queue stays within a small multiple of
/// what is held, it is swept of them once it is twice that long.
fn note(queue: &mut VecDeque<TraceId>, trace: &TraceId, records: &HashMap<TraceId, Record>) {
    if queue.len() >= 2 * records.len() + 64 {
        queue.retain(|t| records.get(t).is_some_and(Record::is_finished));
    }
    queue.push_back(trace.clone());
}
