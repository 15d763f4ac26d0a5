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
//! | `tower_sse_published_events_total` | counter | | events committed by [`Broker::publish`](crate::Broker::publish) and upstreams on this process |
//! | `tower_sse_streams_open` | gauge | | event streams open now |
//! | `tower_sse_stream_starts_total` | counter | `resume`: `live`, `replay`, `resync` | event streams opened, by how they started: live, replaying after their `Last-Event-ID`, or told to resync |
//! | `tower_sse_replayed_events_total` | counter | | events retained after the ids streams resumed from |
//! | `tower_sse_delivered_frames_total` | counter | | event frames handed to the server (resync and final frames included; not the `retry:` hint, not keep-alives) |
//! | `tower_sse_delivered_bytes_total` | counter | | bytes of those frames |
//! | `tower_sse_keep_alives_total` | counter | | keep-alive comments sent |
//! | `tower_sse_resyncs_total` | counter | `reason`: `lagged`, `expired`, `malformed-id`, `unknown-epoch`, `future-id`, `upstream` | `resync` frames read, by the reason they carry (at the start of a stream or in its middle) |
//! | `tower_sse_missed_events_total` | counter | | events readers lost by falling behind (the sum of `lagged` resyncs' `missed`) |
//! | `tower_sse_streams_cut_total` | counter | | streams ended because they could not go on without a silent gap (the frame they were writing was evicted, or direct messages due to them were lost) |
//! | `tower_sse_refusals_total` | counter | `status` | events-route requests refused, by HTTP status (`400`, `401`, `403`, `405`, ..., `other`) |
//! | `tower_sse_backoffs_total` | counter | `reason`: `over_capacity`, `closed` | requests answered with a short `retry:` stream instead of a subscription |
//! | `tower_sse_coalescing` | gauge | | `1` while write coalescing is on, `0` while off (per process: the last layer to switch) |
//! | `tower_sse_mailbox_sent_total` | counter | | notifications the mailbox took |
//! | `tower_sse_mailbox_refused_total` | counter | `reason`: `sender`, `full`, `unavailable` | sends refused: a sender over its share, the mailbox full, its store unreachable |
//! | `tower_sse_mailbox_delivered_total` | counter | | notifications their clients confirmed (in-process mailbox) |
//! | `tower_sse_mailbox_expired_total` | counter | | notifications purged at their expiry (in-process mailbox) |
//! | `tower_sse_backplane_connected` | gauge | | replicas of this process whose reader is in step with Redis |
//! | `tower_sse_backplane_reader_lag` | gauge | | stream entries the reader has not mirrored yet (per process: the last reader to read) |
//! | `tower_sse_backplane_disconnects_total` | counter | | times a reader in step lost Redis |
//! | `tower_sse_backplane_mirrored_total` | counter | | stream entries mirrored into the local broker |
//!
//! A stream records its own frames on the handles it took when it opened:
//! install the recorder before serving, as exporters' docs say anyway.
//! [`describe`] gives every metric its help text and unit (the `# HELP`
//! lines of Prometheus's format).
//!
//! A mailbox kept in Redis counts its sends and refusals here, per
//! replica; what happens to a notification after that happens in Redis,
//! for all replicas at once, and is counted there:
//! [`RedisMailbox::stats`](crate::mailbox::RedisMailbox::stats).
//!
//! The demo installs the Prometheus exporter and serves `/metrics`
//! (`cargo run --example demo`).

use crate::wire::ResyncReason;

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

/// Events committed by this process's brokers.
pub const PUBLISHED_EVENTS: &str = "tower_sse_published_events_total";
/// Event streams open now.
pub const STREAMS_OPEN: &str = "tower_sse_streams_open";
/// Event streams opened, by how they started (the `resume` label).
pub const STREAM_STARTS: &str = "tower_sse_stream_starts_total";
/// Events retained after the ids streams resumed from.
pub const REPLAYED_EVENTS: &str = "tower_sse_replayed_events_total";
/// Frames handed to the server.
pub const DELIVERED_FRAMES: &str = "tower_sse_delivered_frames_total";
/// Bytes of the frames handed to the server.
pub const DELIVERED_BYTES: &str = "tower_sse_delivered_bytes_total";
/// Keep-alive comments sent.
pub const KEEP_ALIVES: &str = "tower_sse_keep_alives_total";
/// `resync` frames, by the `reason` label.
pub const RESYNCS: &str = "tower_sse_resyncs_total";
/// Events readers lost by falling behind.
pub const MISSED_EVENTS: &str = "tower_sse_missed_events_total";
/// Streams cut rather than go on with a silent gap.
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
/// Replicas whose reader is in step with Redis.
pub const BACKPLANE_CONNECTED: &str = "tower_sse_backplane_connected";
/// Entries of the shared stream not mirrored yet.
pub const BACKPLANE_READER_LAG: &str = "tower_sse_backplane_reader_lag";
/// Times a reader in step lost Redis.
pub const BACKPLANE_DISCONNECTS: &str = "tower_sse_backplane_disconnects_total";
/// Entries mirrored from the shared stream.
pub const BACKPLANE_MIRRORED: &str = "tower_sse_backplane_mirrored_total";

/// Every metric: its name, kind and help text.
const METRICS: &[(&str, Kind, &str)] = &[
    (
        PUBLISHED_EVENTS,
        Kind::Counter,
        "Events committed by this process's brokers.",
    ),
    (STREAMS_OPEN, Kind::Gauge, "Event streams open now."),
    (
        STREAM_STARTS,
        Kind::Counter,
        "Event streams opened, by how they started.",
    ),
    (
        REPLAYED_EVENTS,
        Kind::Counter,
        "Events retained after the ids streams resumed from.",
    ),
    (
        DELIVERED_FRAMES,
        Kind::Counter,
        "Event frames handed to the server.",
    ),
    (
        DELIVERED_BYTES,
        Kind::Bytes,
        "Bytes of the event frames handed to the server.",
    ),
    (KEEP_ALIVES, Kind::Counter, "Keep-alive comments sent."),
    (RESYNCS, Kind::Counter, "Resync frames read, by reason."),
    (
        MISSED_EVENTS,
        Kind::Counter,
        "Events readers lost by falling behind.",
    ),
    (
        STREAMS_CUT,
        Kind::Counter,
        "Streams cut rather than go on with a silent gap.",
    ),
    (
        REFUSALS,
        Kind::Counter,
        "Events-route requests refused, by HTTP status.",
    ),
    (
        BACKOFFS,
        Kind::Counter,
        "Requests sent a retry back-off instead of a stream.",
    ),
    (COALESCING, Kind::Gauge, "1 while write coalescing is on."),
    (
        MAILBOX_SENT,
        Kind::Counter,
        "Notifications the mailbox took.",
    ),
    (
        MAILBOX_REFUSED,
        Kind::Counter,
        "Notification sends refused, by reason.",
    ),
    (
        MAILBOX_DELIVERED,
        Kind::Counter,
        "Notifications confirmed by their clients.",
    ),
    (
        MAILBOX_EXPIRED,
        Kind::Counter,
        "Notifications purged at their expiry.",
    ),
    (
        BACKPLANE_CONNECTED,
        Kind::Gauge,
        "Replicas whose reader is in step with Redis.",
    ),
    (
        BACKPLANE_READER_LAG,
        Kind::Gauge,
        "Stream entries the reader has not mirrored yet.",
    ),
    (
        BACKPLANE_DISCONNECTS,
        Kind::Counter,
        "Times a reader in step lost Redis.",
    ),
    (
        BACKPLANE_MIRRORED,
        Kind::Counter,
        "Stream entries mirrored into the local broker.",
    ),
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Bytes,
    Gauge,
}

/// Every metric's name, for a test or an exporter's allow-list.
pub const ALL: [&str; 21] = {
    let mut names = [""; 21];
    let mut i = 0;
    while i < METRICS.len() {
        names[i] = METRICS[i].0;
        i += 1;
    }
    names
};

/// Gives every metric its help text and unit on the recorder installed
/// now; call it once, after installing one.
pub fn describe() {
    for &(name, kind, help) in METRICS {
        with_facade! {
            match kind {
                Kind::Counter => ::metrics::describe_counter!(name, help),
                Kind::Bytes => ::metrics::describe_counter!(name, ::metrics::Unit::Bytes, help),
                Kind::Gauge => ::metrics::describe_gauge!(name, help),
            }
        }
        let _ = (name, kind, help);
    }
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
    count(PUBLISHED_EVENTS, 1);
}

/// How a stream started: `replayed` events after its id, or a resync.
pub(crate) fn stream_started(resume: &'static str, replayed: u64) {
    count_labelled(STREAM_STARTS, "resume", resume, 1);
    if replayed > 0 {
        count(REPLAYED_EVENTS, replayed);
    }
}

/// One open stream's handles, taken when it opens: what it records per
/// frame is an atomic add on each, without looking the metric up. Open
/// while it lives (the gauge of open streams).
pub(crate) struct StreamMetrics {
    #[cfg(all(feature = "metrics", not(loom)))]
    handles: [::metrics::Counter; 3],
}

impl StreamMetrics {
    pub(crate) fn opened() -> Self {
        with_facade! { ::metrics::gauge!(STREAMS_OPEN).increment(1.0); }
        Self {
            #[cfg(all(feature = "metrics", not(loom)))]
            handles: [
                ::metrics::counter!(DELIVERED_FRAMES),
                ::metrics::counter!(DELIVERED_BYTES),
                ::metrics::counter!(KEEP_ALIVES),
            ],
        }
    }

    #[inline]
    pub(crate) fn delivered(&self, frames: usize, bytes: usize) {
        with_facade! {
            self.handles[0].increment(frames as u64);
            self.handles[1].increment(bytes as u64);
        }
        let _ = (frames, bytes);
    }

    #[inline]
    pub(crate) fn keep_alive(&self) {
        with_facade! { self.handles[2].increment(1); }
    }
}

impl Drop for StreamMetrics {
    fn drop(&mut self) {
        with_facade! { ::metrics::gauge!(STREAMS_OPEN).decrement(1.0); }
    }
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

/// A reader came in step with Redis (`true`) or stopped being (`false`);
/// called on those transitions only, so the gauge counts the readers in
/// step.
#[cfg(feature = "redis")]
pub(crate) fn backplane_in_step(on: bool) {
    with_facade! { ::metrics::gauge!(BACKPLANE_CONNECTED).increment(if on { 1.0 } else { -1.0 }); }
    let _ = on;
}

/// A reader in step lost Redis.
#[cfg(feature = "redis")]
pub(crate) fn backplane_disconnected() {
    count(BACKPLANE_DISCONNECTS, 1);
}

/// The reader's lag, asked only when a recorder could take it (it costs a
/// lock of the broker).
#[cfg(feature = "redis")]
pub(crate) fn backplane_lag(entries: impl FnOnce() -> u64) {
    with_facade! { ::metrics::gauge!(BACKPLANE_READER_LAG).set(entries() as f64); }
    let _ = entries;
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
