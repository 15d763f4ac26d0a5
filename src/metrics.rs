//! Counters and gauges through the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`).
//!
//! A library does not choose where its numbers go: the app installs a
//! recorder (`metrics-exporter-prometheus`, StatsD, ...) and every metric
//! below reaches it. Without a recorder, or without the feature, each
//! costs nothing or a load of the global recorder.
//!
//! Names follow Prometheus conventions: counters end in `_total`, sizes
//! are in bytes. Labels have a small fixed set of values; there is no
//! per-topic or per-client label, since topics and clients are chosen by
//! users and would grow a recorder's memory without bound. Several
//! brokers or layers in one process add to the same series.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `tower_sse_events_published_total` | counter | | events committed by [`Broker::publish`](crate::Broker::publish) and upstreams on this process |
//! | `tower_sse_streams_opened_total` | counter | | event streams opened on the events route |
//! | `tower_sse_streams_open` | gauge | | event streams open now |
//! | `tower_sse_stream_starts_total` | counter | `resume`: `live`, `replay`, `resync` | how streams started: live, replaying from `Last-Event-ID`, or told to resync |
//! | `tower_sse_replayed_events_total` | counter | | events retained after the ids streams resumed from |
//! | `tower_sse_frames_delivered_total` | counter | | event frames handed to the server (resync and final frames included, not keep-alives) |
//! | `tower_sse_delivered_bytes_total` | counter | | bytes of those frames |
//! | `tower_sse_keep_alives_total` | counter | | keep-alive comments sent |
//! | `tower_sse_resyncs_total` | counter | `reason`: `lagged`, `expired`, `malformed-id`, `unknown-epoch`, `future-id`, `upstream` | `resync` frames, by the reason they carry |
//! | `tower_sse_missed_events_total` | counter | | events readers lost by falling behind (the sum of `lagged` resyncs' `missed`) |
//! | `tower_sse_streams_cut_total` | counter | | streams ended because the event they were writing was evicted |
//! | `tower_sse_refusals_total` | counter | `status` | events-route requests refused, by HTTP status (`400`, `401`, `403`, `405`, ...) |
//! | `tower_sse_backoffs_total` | counter | `reason`: `over_capacity`, `closed` | requests answered with a short `retry:` stream instead of a subscription |
//! | `tower_sse_coalescing` | gauge | | `1` while write coalescing is on, `0` while off |
//! | `tower_sse_mailbox_sent_total` | counter | | notifications the mailbox took |
//! | `tower_sse_mailbox_refused_total` | counter | `reason`: `sender`, `full`, `unavailable` | sends refused: a sender over its share, the mailbox full, its store unreachable |
//! | `tower_sse_mailbox_delivered_total` | counter | | notifications their clients confirmed |
//! | `tower_sse_mailbox_expired_total` | counter | | notifications purged at their expiry |
//! | `tower_sse_backplane_connected` | gauge | | `1` while the replica's reader is connected to Redis |
//! | `tower_sse_backplane_reader_lag` | gauge | | stream entries the reader has not mirrored yet |
//! | `tower_sse_backplane_reconnects_total` | counter | | times the reader reconnected to Redis |
//! | `tower_sse_backplane_mirrored_total` | counter | | stream entries mirrored into the local broker |
//!
//! A mailbox kept in Redis counts its sends and refusals here, per
//! replica; what happens to a notification after that happens in Redis,
//! for all replicas at once, and is counted there:
//! [`RedisMailbox::stats`](crate::mailbox::RedisMailbox::stats).
//!
//! The demo installs the Prometheus exporter and serves `/metrics`
//! (`cargo run --example demo`).

use crate::wire::ResyncReason;

/// Events committed by this process's brokers.
pub const EVENTS_PUBLISHED: &str = "tower_sse_events_published_total";
/// Event streams opened.
pub const STREAMS_OPENED: &str = "tower_sse_streams_opened_total";
/// Event streams open now.
pub const STREAMS_OPEN: &str = "tower_sse_streams_open";
/// How streams started, by the `resume` label.
pub const STREAM_STARTS: &str = "tower_sse_stream_starts_total";
/// Events retained after the ids streams resumed from.
pub const REPLAYED_EVENTS: &str = "tower_sse_replayed_events_total";
/// Frames handed to the server.
pub const FRAMES_DELIVERED: &str = "tower_sse_frames_delivered_total";
/// Bytes of the frames handed to the server.
pub const DELIVERED_BYTES: &str = "tower_sse_delivered_bytes_total";
/// Keep-alive comments sent.
pub const KEEP_ALIVES: &str = "tower_sse_keep_alives_total";
/// `resync` frames, by the `reason` label.
pub const RESYNCS: &str = "tower_sse_resyncs_total";
/// Events readers lost by falling behind.
pub const MISSED_EVENTS: &str = "tower_sse_missed_events_total";
/// Streams cut mid-frame by an eviction.
pub const STREAMS_CUT: &str = "tower_sse_streams_cut_total";
/// Events-route requests refused, by the `status` label.
pub const REFUSALS: &str = "tower_sse_refusals_total";
/// Requests sent a `retry:` back-off, by the `reason` label.
pub const BACKOFFS: &str = "tower_sse_backoffs_total";
/// Whether write coalescing is on.
pub const COALESCING: &str = "tower_sse_coalescing";
/// Notifications the mailbox took.
pub const MAILBOX_SENT: &str = "tower_sse_mailbox_sent_total";
/// Sends the mailbox refused, by the `reason` label.
pub const MAILBOX_REFUSED: &str = "tower_sse_mailbox_refused_total";
/// Notifications confirmed by their clients.
pub const MAILBOX_DELIVERED: &str = "tower_sse_mailbox_delivered_total";
/// Notifications purged at their expiry.
pub const MAILBOX_EXPIRED: &str = "tower_sse_mailbox_expired_total";
/// Whether the backplane's reader is connected.
pub const BACKPLANE_CONNECTED: &str = "tower_sse_backplane_connected";
/// Entries of the shared stream not mirrored yet.
pub const BACKPLANE_READER_LAG: &str = "tower_sse_backplane_reader_lag";
/// Reconnects of the backplane's reader.
pub const BACKPLANE_RECONNECTS: &str = "tower_sse_backplane_reconnects_total";
/// Entries mirrored from the shared stream.
pub const BACKPLANE_MIRRORED: &str = "tower_sse_backplane_mirrored_total";

/// Every metric's name, for a test or an exporter's allow-list.
pub const ALL: &[&str] = &[
    EVENTS_PUBLISHED,
    STREAMS_OPENED,
    STREAMS_OPEN,
    STREAM_STARTS,
    REPLAYED_EVENTS,
    FRAMES_DELIVERED,
    DELIVERED_BYTES,
    KEEP_ALIVES,
    RESYNCS,
    MISSED_EVENTS,
    STREAMS_CUT,
    REFUSALS,
    BACKOFFS,
    COALESCING,
    MAILBOX_SENT,
    MAILBOX_REFUSED,
    MAILBOX_DELIVERED,
    MAILBOX_EXPIRED,
    BACKPLANE_CONNECTED,
    BACKPLANE_READER_LAG,
    BACKPLANE_RECONNECTS,
    BACKPLANE_MIRRORED,
];

/// Whether the facade is compiled in: the feature is on and this is not a
/// loom build (loom explores the broker alone).
macro_rules! with_facade {
    ($($body:tt)*) => {
        #[cfg(all(feature = "metrics", not(loom)))]
        {
            $($body)*
        }
    };
}

fn count(name: &'static str, n: u64) {
    with_facade! { ::metrics::counter!(name).increment(n); }
    let _ = (name, n);
}

fn count_labelled(name: &'static str, label: &'static str, value: &'static str, n: u64) {
    with_facade! { ::metrics::counter!(name, label => value).increment(n); }
    let _ = (name, label, value, n);
}

fn set(name: &'static str, value: f64) {
    with_facade! { ::metrics::gauge!(name).set(value); }
    let _ = (name, value);
}

pub(crate) fn published() {
    count(EVENTS_PUBLISHED, 1);
}

pub(crate) fn stream_opened() {
    count(STREAMS_OPENED, 1);
    with_facade! { ::metrics::gauge!(STREAMS_OPEN).increment(1.0); }
}

pub(crate) fn stream_closed() {
    with_facade! { ::metrics::gauge!(STREAMS_OPEN).decrement(1.0); }
}

/// How a stream started: `replayed` events after its id, or a resync.
pub(crate) fn stream_started(resume: &'static str, replayed: u64) {
    count_labelled(STREAM_STARTS, "resume", resume, 1);
    if replayed > 0 {
        count(REPLAYED_EVENTS, replayed);
    }
}

pub(crate) fn delivered(frames: usize, bytes: usize) {
    count(FRAMES_DELIVERED, frames as u64);
    count(DELIVERED_BYTES, bytes as u64);
}

pub(crate) fn keep_alive() {
    count(KEEP_ALIVES, 1);
}

/// A `resync` frame went to a reader; `missed` for a lag.
pub(crate) fn resync(reason: ResyncReason, missed: u64) {
    count_labelled(RESYNCS, "reason", reason.as_str(), 1);
    if missed > 0 {
        count(MISSED_EVENTS, missed);
    }
}

pub(crate) fn stream_cut() {
    count(STREAMS_CUT, 1);
}

pub(crate) fn refused(status: http_status::Status) {
    count_labelled(REFUSALS, "status", status.0, 1);
}

pub(crate) fn backoff(reason: &'static str) {
    count_labelled(BACKOFFS, "reason", reason, 1);
}

pub(crate) fn coalescing(on: bool) {
    set(COALESCING, if on { 1.0 } else { 0.0 });
}

pub(crate) fn mailbox_sent() {
    count(MAILBOX_SENT, 1);
}

pub(crate) fn mailbox_refused(reason: &'static str) {
    count_labelled(MAILBOX_REFUSED, "reason", reason, 1);
}

pub(crate) fn mailbox_delivered() {
    count(MAILBOX_DELIVERED, 1);
}

pub(crate) fn mailbox_expired(n: u64) {
    if n > 0 {
        count(MAILBOX_EXPIRED, n);
    }
}

#[cfg(feature = "redis")]
pub(crate) fn backplane_connected(on: bool) {
    set(BACKPLANE_CONNECTED, if on { 1.0 } else { 0.0 });
}

#[cfg(feature = "redis")]
pub(crate) fn backplane_lag(entries: u64) {
    set(BACKPLANE_READER_LAG, entries as f64);
}

#[cfg(feature = "redis")]
pub(crate) fn backplane_reconnect() {
    count(BACKPLANE_RECONNECTS, 1);
}

#[cfg(feature = "redis")]
pub(crate) fn backplane_mirrored(entries: u64) {
    if entries > 0 {
        count(BACKPLANE_MIRRORED, entries);
    }
}

/// HTTP statuses as label values without allocating; the refusals the
/// crate makes are few, and anything else is `other`.
pub(crate) mod http_status {
    /// A status as a static label value.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Status(pub(crate) &'static str);

    impl Status {
        /// The label of `code`.
        pub(crate) fn of(code: u16) -> Self {
            Self(match code {
                400 => "400",
                401 => "401",
                403 => "403",
                404 => "404",
                405 => "405",
                406 => "406",
                409 => "409",
                410 => "410",
                413 => "413",
                422 => "422",
                429 => "429",
                500 => "500",
                503 => "503",
                _ => "other",
            })
        }
    }
}
