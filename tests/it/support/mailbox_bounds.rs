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
