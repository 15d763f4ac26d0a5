//! The wire format: event ids and the SSE frames the events route sends,
//! built from plain values. A leaf: it imports nothing else of the crate,
//! and everything that speaks to clients goes through it.
//!
//! An event becomes
//!
//! ```text
//! id: EPOCH-SEQ
//! event: TYPE          (left out for the default type "message")
//! data: LINE           (one per line of the payload)
//! <blank line>
//! ```
//!
//! The payload is split at every LF, CR and CRLF, because a parser ends a
//! line at any of the three; each piece becomes its own `data:` line and the
//! parser joins them with LF. The single space after each colon is the one a
//! parser strips, so a payload that itself starts with a space survives.
//!
//! Publishing encodes an event once, in [`encode_body`], outside the broker's
//! lock and with room left in front for the id; [`stamp_id`] writes the id
//! into that room under the lock, where the id is assigned. Every subscriber
//! then shares the same [`Bytes`].

use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, Bytes, BytesMut};

/// The event type of a `resync` frame: a lag, or an id that cannot be
/// honoured.
pub(crate) const RESYNC_EVENT: &str = "resync";
/// The event type of the last frame of a stream at shutdown.
pub(crate) const SHUTDOWN_EVENT: &str = "shutdown";
/// The event type of the server's mode, on every stream.
pub const STATE_EVENT: &str = "server.state";
/// The event type of a notification, on its target's streams.
pub const NOTIFICATION_EVENT: &str = "notification";
/// The event type of a reply to a notification, on its sender's streams.
pub const REPLY_EVENT: &str = "notification.reply";

/// The event types the crate itself sends on the events route, which
/// [`Broker::publish`](crate::Broker::publish) refuses from anyone else:
/// `resync` (a lag, or an id that cannot be honoured), `server.state` (the
/// server mode), `shutdown` (the last frame of a stream),
/// and `notification` and `notification.reply` (the
/// mailbox).
///
/// Clients act on these (they reload their state, show the server as
/// degraded, stop), so an app route that publishes a type its caller
/// chose must not let the caller speak for the server. Matching is exact,
/// as an `EventSource` matches types.
pub const RESERVED_EVENT_TYPES: [&str; 5] = [
    RESYNC_EVENT,
    STATE_EVENT,
    SHUTDOWN_EVENT,
    NOTIFICATION_EVENT,
    REPLY_EVENT,
];

/// The id of a published event: `EPOCH-SEQ` on the wire.
///
/// `EPOCH` is fixed for a broker's lifetime, so an id from before a restart
/// is recognised as foreign; `SEQ` is one counter for the whole broker
/// (starting at 1), so one id positions a connection that watches several
/// topics. Ids are strictly increasing on every connection.
///
/// `EPOCH-0` is valid and means "nothing seen yet": a client holding it
/// resumes from the first event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    epoch: u64,
    seq: u64,
}

impl EventId {
    /// Builds an id from its parts.
    pub const fn new(epoch: u64, seq: u64) -> Self {
        Self { epoch, seq }
    }

    /// The broker epoch the id belongs to.
    pub const fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The position in the broker's single sequence.
    pub const fn seq(&self) -> u64 {
        self.seq
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

/// Why a string is not an [`EventId`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseEventIdError(());

impl fmt::Display for ParseEventIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event id is two decimal numbers joined by '-' (EPOCH-SEQ)")
    }
}

impl std::error::Error for ParseEventIdError {}

impl FromStr for EventId {
    type Err = ParseEventIdError;

    /// Parses `EPOCH-SEQ`: ASCII digits only (no sign, no spaces), each part
    /// at most 20 digits and within `u64`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        fn number(part: &str) -> Option<u64> {
            if part.is_empty() || part.len() > 20 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            part.parse().ok()
        }
        let (epoch, seq) = s.split_once('-').ok_or(ParseEventIdError(()))?;
        match (number(epoch), number(seq)) {
            (Some(epoch), Some(seq)) => Ok(Self { epoch, seq }),
            _ => Err(ParseEventIdError(())),
        }
    }
}

/// Why a subscription gets [`Message::Resync`](crate::Message::Resync) (at
/// its start, or mid-stream for [`ResyncReason::Upstream`]), or
/// [`ResyncReason::Lagged`] for a lag report on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResyncReason {
    /// The id is not `EPOCH-SEQ` (empty, garbage, out of range).
    Malformed,
    /// The id comes from another broker, e.g. before a restart.
    UnknownEpoch,
    /// The id is newer than anything this broker has published.
    Future,
    /// Events after the id have already been evicted.
    Expired,
    /// The subscription fell behind and events were evicted unread.
    Lagged,
    /// The upstream feeding the topic failed, was shut for a moment, or
    /// sent an event the broker could not take: events may be missing
    /// here. Mid-stream, at the place in the order where they would be; or
    /// first, for a stream that starts while the upstream is down.
    Upstream,
}

impl ResyncReason {
    /// The reason as written in the `resync` frame's JSON `reason`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ResyncReason::Malformed => "malformed-id",
            ResyncReason::UnknownEpoch => "unknown-epoch",
            ResyncReason::Future => "future-id",
            ResyncReason::Expired => "expired",
            ResyncReason::Lagged => "lagged",
            ResyncReason::Upstream => "upstream",
        }
    }
}

impl fmt::Display for ResyncReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Bytes reserved in front of an encoded body for `id: EPOCH-SEQ\n`
/// (4 + 20 + 1 + 20 + 1 at most).
pub(crate) const ID_HEADROOM: usize = 46;

/// The keep-alive: a comment line, which every parser ignores.
///
/// No blank line after it: a blank line closes the block being parsed, and
/// the block open before a stream's first event holds the `retry:` hint
/// (see [`retry_frame`]).
pub(crate) const KEEP_ALIVE: &[u8] = b":\n";

/// Encodes `event:` and `data:` lines and the closing blank line, after
/// [`ID_HEADROOM`] bytes left for [`stamp_id`].
///
/// `event_type` must already be free of CR and LF (checked at publish).
pub(crate) fn encode_body(event_type: Option<&str>, data: &str) -> Vec<u8> {
    let lines = 1 + data.bytes().filter(|b| matches!(b, b'\n' | b'\r')).count();
    let type_len = event_type.map_or(0, |t| t.len() + 8);
    let mut out = Vec::with_capacity(ID_HEADROOM + type_len + data.len() + lines * 7 + 1);
    out.resize(ID_HEADROOM, 0);
    if let Some(event_type) = event_type.filter(|t| *t != "message") {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event_type.as_bytes());
        out.push(b'\n');
    }
    for line in Lines::new(data) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// Writes `id: EPOCH-SEQ\n` just before the body and returns the frame.
pub(crate) fn stamp_id(mut encoded: Vec<u8>, id: EventId) -> Bytes {
    let mut line = [0u8; ID_HEADROOM];
    let len = write_id_line(&mut line, id);
    let start = ID_HEADROOM - len;
    encoded[start..ID_HEADROOM].copy_from_slice(&line[..len]);
    Bytes::from(encoded).slice(start..)
}

/// Writes `id: EPOCH-SEQ\n` at the start of `buf`, returning its length.
fn write_id_line(buf: &mut [u8; ID_HEADROOM], id: EventId) -> usize {
    let mut at = 0;
    for &b in b"id: " {
        buf[at] = b;
        at += 1;
    }
    at += write_decimal(&mut buf[at..], id.epoch());
    buf[at] = b'-';
    at += 1;
    at += write_decimal(&mut buf[at..], id.seq());
    buf[at] = b'\n';
    at + 1
}

fn write_decimal(buf: &mut [u8], mut n: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[i] = digits[len - 1 - i];
    }
    len
}

/// The longest frame [`resync_frame`] makes: the longest id, reason and
/// count.
pub(crate) const MAX_RESYNC_FRAME: usize = 128;

/// The frame telling a client that what it holds is no longer a complete
/// picture: `event: resync`, JSON data naming the reason (and for a lag, how
/// many events were missed), and the id the stream continues from, so a
/// reconnect right after it resumes from here rather than resyncing again.
pub(crate) fn resync_frame(
    reason: ResyncReason,
    missed: Option<u64>,
    resume_from: EventId,
) -> Bytes {
    let mut line = [0u8; ID_HEADROOM];
    let len = write_id_line(&mut line, resume_from);
    let mut out = BytesMut::with_capacity(len + 80);
    out.put_slice(&line[..len]);
    out.put_slice(b"event: resync\ndata: {\"reason\":\"");
    out.put_slice(reason.as_str().as_bytes());
    out.put_slice(b"\"");
    if let Some(missed) = missed {
        let mut digits = [0u8; 20];
        let n = write_decimal(&mut digits, missed);
        out.put_slice(b",\"missed\":");
        out.put_slice(&digits[..n]);
    }
    out.put_slice(b"}\n\n");
    out.freeze()
}

/// `retry: MS`, the reconnection delay an `EventSource` adopts, as a line
/// of its own.
///
/// A parser applies the field as soon as it reads the line. Without a
/// blank line of its own it becomes part of the next event's block instead
/// of a block with no data: the standard says such a block dispatches
/// nothing, but lax clients (Python's `httpx-sse`, for one) report it as an
/// empty `message`, which code expecting every message to carry data then
/// trips over.
pub(crate) fn retry_frame(millis: u64) -> Bytes {
    let mut digits = [0u8; 20];
    let n = write_decimal(&mut digits, millis);
    let mut out = BytesMut::with_capacity(n + 8);
    out.put_slice(b"retry: ");
    out.put_slice(&digits[..n]);
    out.put_slice(b"\n");
    out.freeze()
}

/// The last frame of a stream at shutdown: `retry:` and an `event: shutdown`.
pub(crate) fn shutdown_frame(millis: u64) -> Bytes {
    let mut digits = [0u8; 20];
    let n = write_decimal(&mut digits, millis);
    let mut out = BytesMut::with_capacity(2 * n + 56);
    out.put_slice(b"retry: ");
    out.put_slice(&digits[..n]);
    out.put_slice(b"\nevent: shutdown\ndata: {\"retry\":");
    out.put_slice(&digits[..n]);
    out.put_slice(b"}\n\n");
    out.freeze()
}

/// Splits at LF, CR and CRLF, as an SSE parser does; always yields at least
/// one (possibly empty) line, and an empty last line after a trailing break.
struct Lines<'a> {
    rest: Option<&'a str>,
}

impl<'a> Lines<'a> {
    fn new(s: &'a str) -> Self {
        Self { rest: Some(s) }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match rest.find(['\n', '\r']) {
            None => {
                self.rest = None;
                Some(rest)
            }
            Some(at) => {
                let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
                self.rest = Some(&rest[at + skip..]);
                Some(&rest[..at])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(event_type: Option<&str>, data: &str, seq: u64) -> String {
        let bytes = stamp_id(encode_body(event_type, data), EventId::new(7, seq));
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn single_line_message_has_no_event_line() {
        assert_eq!(frame(None, "hi", 1), "id: 7-1\ndata: hi\n\n");
        assert_eq!(frame(Some("message"), "hi", 1), "id: 7-1\ndata: hi\n\n");
    }

    #[test]
    fn every_line_break_starts_a_data_line() {
        assert_eq!(
            frame(Some("t"), "a\nb\r\nc\rd", 12),
            "id: 7-12\nevent: t\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(frame(None, "a\n", 1), "id: 7-1\ndata: a\ndata: \n\n");
        assert_eq!(frame(None, "", 1), "id: 7-1\ndata: \n\n");
        assert_eq!(
            frame(None, "\r\n\r\n", 1),
            "id: 7-1\ndata: \ndata: \ndata: \n\n"
        );
    }

    #[test]
    fn a_refused_id_says_what_an_id_looks_like() {
        let padded = format!("{}1", "0".repeat(20));
        let refused = [
            "",
            "7",
            "7-",
            "-1",
            "+7-1",
            "7-1 ",
            "7_1",
            "18446744073709551616-0",
            // Within `u64`, but longer than 20 digits.
            &format!("{padded}-1"),
            &format!("1-{padded}"),
        ];
        for text in refused {
            let error = text.parse::<EventId>().unwrap_err();
            assert_eq!(
                error.to_string(),
                "an event id is two decimal numbers joined by '-' (EPOCH-SEQ)",
                "{text:?}"
            );
        }
        assert_eq!("7-1".parse(), Ok(EventId::new(7, 1)));
        assert_eq!(padded[1..].parse::<u64>(), Ok(1), "20 digits are allowed");
        assert_eq!(
            format!("{}-7", &padded[1..]).parse(),
            Ok(EventId::new(1, 7))
        );
    }

    /// A retained frame keeps its whole allocation, which the broker's
    /// byte bound does not see beyond the frame's length: the body is
    /// allocated once, with at most the slack of its estimate (a byte per
    /// line break, and the `event:` line of a type that is not written).
    #[test]
    fn a_body_is_allocated_once_and_nearly_exact() {
        let cases = [
            (Some("t"), "x", 0),
            (Some("update"), "", 0),
            (Some("message"), "x", 15),
            (None, "x", 0),
            (Some("t"), "a\nb\nc", 2),
            (Some("t"), "a\rb", 1),
            (Some("t"), "a\r\nb", 9),
            (Some("t"), &"y".repeat(5000), 0),
        ];
        for (event_type, data, slack) in cases {
            let body = encode_body(event_type, data);
            assert_eq!(
                body.capacity() - body.len(),
                slack,
                "{event_type:?} {data:?}"
            );
        }
    }

    #[test]
    fn ids_fill_the_headroom_at_the_extremes() {
        let bytes = stamp_id(encode_body(None, "x"), EventId::new(u64::MAX, u64::MAX));
        assert_eq!(
            &bytes[..],
            b"id: 18446744073709551615-18446744073709551615\ndata: x\n\n"
        );
        let bytes = stamp_id(encode_body(None, "x"), EventId::new(0, 0));
        assert_eq!(&bytes[..], b"id: 0-0\ndata: x\n\n");
    }

    #[test]
    fn no_resync_frame_is_longer_than_the_bound() {
        let id = EventId::new(u64::MAX, u64::MAX);
        for reason in [
            ResyncReason::Malformed,
            ResyncReason::UnknownEpoch,
            ResyncReason::Future,
            ResyncReason::Expired,
            ResyncReason::Lagged,
            ResyncReason::Upstream,
        ] {
            assert!(resync_frame(reason, Some(u64::MAX), id).len() <= MAX_RESYNC_FRAME);
        }
    }

    #[test]
    fn resync_and_retry_frames() {
        let f = resync_frame(ResyncReason::Lagged, Some(42), EventId::new(3, 9));
        assert_eq!(
            &f[..],
            b"id: 3-9\nevent: resync\ndata: {\"reason\":\"lagged\",\"missed\":42}\n\n"
        );
        let f = resync_frame(ResyncReason::Malformed, None, EventId::new(3, 0));
        assert_eq!(
            &f[..],
            b"id: 3-0\nevent: resync\ndata: {\"reason\":\"malformed-id\"}\n\n"
        );
        assert_eq!(&retry_frame(2500)[..], b"retry: 2500\n");
        assert_eq!(
            &shutdown_frame(5000)[..],
            b"retry: 5000\nevent: shutdown\ndata: {\"retry\":5000}\n\n"
        );
    }
}
