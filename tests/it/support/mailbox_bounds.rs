//! The small bounds the mailbox's models run with (the in-memory model in
//! `mailbox.rs`, the Redis store against it in `mailbox_redis_model.rs`),
//! so that random walks hit every bound, and each alone: a notification
//! costs at least 283 bytes (`RECORD_OVERHEAD`, two ids, the payload), so
//! one more small one than each count allows still fits its byte bound
//! (the count binds), while two or three large ones pass it (the bytes
//! bind). With byte bounds much closer to the counts, a count that was off
//! by one would go unnoticed.

use std::time::Duration;

pub const CLIENTS: [&str; 3] = ["ann", "bob", "cy"];
pub const EPOCH: u64 = 5;
pub const PER_TARGET: usize = 3;
pub const PER_SENDER: usize = 4;
pub const CAPACITY: usize = 6;
pub const PER_TARGET_BYTES: usize = 1500;
pub const PER_SENDER_BYTES: usize = 1800;
pub const CAPACITY_BYTES: usize = 3000;
pub const RETRY_AFTER: Duration = Duration::from_secs(7);

/// `builder` with these bounds, reading time from `clock`.
pub fn bounded(
    builder: tower_sse::mailbox::MailboxBuilder,
    clock: &tower_sse::ManualClock,
) -> tower_sse::mailbox::MailboxBuilder {
    builder
        .per_target(PER_TARGET)
        .per_target_bytes(PER_TARGET_BYTES)
        .per_sender(PER_SENDER)
        .per_sender_bytes(PER_SENDER_BYTES)
        .capacity(CAPACITY)
        .capacity_bytes(CAPACITY_BYTES)
        .retry_after(RETRY_AFTER)
        .clock(clock.clone())
}
