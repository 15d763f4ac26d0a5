//! An event-stream parser written from the WHATWG HTML standard, section
//! "Server-sent events", subsection "Interpreting an event stream", and
//! nothing else: it shares no code with the crate, so the wire tests check
//! the crate's frames against the spec rather than against themselves.
//!
//! The spec, condensed:
//!
//! - the stream is UTF-8 decoded (one leading BOM is stripped, invalid
//!   sequences become U+FFFD);
//! - a line ends at CRLF, at a lone LF or at a lone CR;
//! - a blank line dispatches the event;
//! - a line starting with `:` is a comment and is ignored;
//! - otherwise the field name is everything before the first `:` and the
//!   value everything after it, minus one leading U+0020 SPACE; a line
//!   without `:` is a field name with the empty string as value;
//! - `event` sets the event type buffer, `data` appends the value and an LF
//!   to the data buffer, `id` sets the last event ID buffer unless the value
//!   contains U+0000 NULL, `retry` sets the reconnection time when the value
//!   is only ASCII digits, and every other field is ignored;
//! - dispatching: the last event ID string takes the last event ID buffer's
//!   value (always, even when nothing is dispatched); an empty data buffer
//!   resets the data and event type buffers and dispatches nothing;
//!   otherwise one trailing LF is removed from the data, the type is
//!   `message` unless the event type buffer is non-empty, and both buffers
//!   are reset (the last event ID buffer is not);
//! - at the end of the stream, an incomplete event is discarded.
//!
//! Bytes may be fed in arbitrary chunks, split anywhere (inside a UTF-8
//! sequence, inside the BOM, between the CR and the LF of a CRLF).

/// One dispatched `MessageEvent`, as an `EventSource` would see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatched {
    /// The event's `type` (`message` by default).
    pub event_type: String,
    /// The event's `data`.
    pub data: String,
    /// The event's `lastEventId`.
    pub last_event_id: String,
}

/// Everything a stream produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The dispatched events, in order.
    pub events: Vec<Dispatched>,
    /// The last reconnection time set by a valid `retry` field.
    pub retry: Option<u64>,
    /// The event source's last event ID string at the end of the stream.
    pub last_event_id: String,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The incremental parser.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Whether the decoder is past the point where a BOM may appear.
    started: bool,
    /// Bytes at the start of the stream that may still turn out to be a BOM.
    bom_prefix: Vec<u8>,
    /// The bytes of the line being read (without its terminator).
    line: Vec<u8>,
    /// The previous byte was a CR that ended a line: an LF right after it
    /// belongs to the same terminator, even if it comes in the next chunk.
    after_cr: bool,
    data: String,
    event_type: String,
    last_event_id_buffer: String,
    out: Parsed,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.started {
            self.feed_bytes(chunk);
            return;
        }
        // The decoder strips one leading BOM; it may arrive in pieces.
        self.bom_prefix.extend_from_slice(chunk);
        let have = self.bom_prefix.len().min(BOM.len());
        if self.bom_prefix[..have] != BOM[..have] {
            self.started = true;
            let bytes = std::mem::take(&mut self.bom_prefix);
            self.feed_bytes(&bytes);
        } else if self.bom_prefix.len() >= BOM.len() {
            self.started = true;
            let bytes = std::mem::take(&mut self.bom_prefix);
            self.feed_bytes(&bytes[BOM.len()..]);
        }
    }

    /// Ends the stream: whatever event is incomplete is discarded.
    pub fn finish(self) -> Parsed {
        self.out
    }

    fn feed_bytes(&mut self, bytes: &[u8]) {
        // CR and LF are ASCII and never occur inside a multi-byte UTF-8
        // sequence, so lines can be cut on bytes and decoded one by one;
        // a lossy decode of one line equals the spec's streaming decode
        // (both replace each maximal invalid subpart with one U+FFFD).
        for &b in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, false);
            match b {
                b'\n' if after_cr => {}
                b'\n' => self.end_line(),
                b'\r' => {
                    self.end_line();
                    self.after_cr = true;
                }
                _ => self.line.push(b),
            }
        }
    }

    fn end_line(&mut self) {
        let bytes = std::mem::take(&mut self.line);
        let line = String::from_utf8_lossy(&bytes);
        if line.is_empty() {
            self.dispatch();
        } else if line.starts_with(':') {
            // A comment.
        } else if let Some((field, value)) = line.split_once(':') {
            let value = value.strip_prefix(' ').unwrap_or(value);
            self.process_field(field, value);
        } else {
            self.process_field(&line, "");
        }
    }

    fn process_field(&mut self, field: &str, value: &str) {
        match field {
            "event" => self.event_type = value.to_owned(),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            // An id containing NUL is ignored.
            "id" if !value.contains('\0') => self.last_event_id_buffer = value.to_owned(),
            // "Consists of only ASCII digits": an empty value is not a
            // number, as in every browser.
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                let n = value.bytes().fold(0u64, |n, b| {
                    n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
                });
                self.out.retry = Some(n);
            }
            // Unknown fields, and `id` and `retry` with values refused above.
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        self.out.last_event_id = self.last_event_id_buffer.clone();
        let mut data = std::mem::take(&mut self.data);
        let event_type = std::mem::take(&mut self.event_type);
        if data.is_empty() {
            return;
        }
        if data.ends_with('\n') {
            data.pop();
        }
        self.out.events.push(Dispatched {
            event_type: if event_type.is_empty() {
                "message".to_owned()
            } else {
                event_type
            },
            data,
            last_event_id: self.out.last_event_id.clone(),
        });
    }
}

/// Parses a stream given as chunks.
pub fn parse_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Parsed {
    let mut parser = SseParser::new();
    for chunk in chunks {
        parser.feed(chunk);
    }
    parser.finish()
}

/// Parses a stream given in one piece.
pub fn parse(bytes: &[u8]) -> Parsed {
    parse_chunks([bytes])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event_type: &str, data: &str, id: &str) -> Dispatched {
        Dispatched {
            event_type: event_type.to_owned(),
            data: data.to_owned(),
            last_event_id: id.to_owned(),
        }
    }

    /// Parses `input` whole, then split at every single point and byte by
    /// byte, and checks that every way gives the same result.
    fn parse_every_way(input: &[u8]) -> Parsed {
        let whole = parse(input);
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            assert_eq!(parse_chunks([a, b]), whole, "split at {at}");
        }
        assert_eq!(parse_chunks(input.chunks(1)), whole, "byte by byte");
        whole
    }

    #[test]
    fn spec_example_streams() {
        // The examples of the spec's section, in order.
        let p = parse_every_way(b"data: YHOO\ndata: +2\ndata: 10\n\n");
        assert_eq!(p.events, [ev("message", "YHOO\n+2\n10", "")]);

        let p = parse_every_way(
            b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
        );
        // The bare `id` line resets the last event ID to the empty string.
        assert_eq!(
            p.events,
            [
                ev("message", "first event", "1"),
                ev("message", "second event", ""),
                ev("message", " third event", ""),
            ]
        );

        let p = parse_every_way(b"data\n\ndata\ndata\n\ndata:");
        assert_eq!(p.events, [ev("message", "", ""), ev("message", "\n", "")]);

        let p = parse_every_way(b"data:test\n\ndata: test\n\n");
        assert_eq!(
            p.events,
            [ev("message", "test", ""), ev("message", "test", "")]
        );
    }

    #[test]
    fn one_space_after_the_colon_is_stripped_and_only_one() {
        let p = parse_every_way(b"event:x\ndata:a\ndata: b\ndata:  c\ndata:\t d\n\n");
        assert_eq!(p.events, [ev("x", "a\nb\n c\n\t d", "")]);
        // Only the first colon splits.
        let p = parse_every_way(b"data: a: b:c\nevent: t:: u\n\n");
        assert_eq!(p.events, [ev("t:: u", "a: b:c", "")]);
    }

    #[test]
    fn every_line_terminator() {
        for stream in [
            &b"event: t\ndata: a\ndata: b\n\n"[..],
            b"event: t\rdata: a\rdata: b\r\r",
            b"event: t\r\ndata: a\r\ndata: b\r\n\r\n",
            b"event: t\rdata: a\r\ndata: b\n\r",
        ] {
            let p = parse_every_way(stream);
            assert_eq!(p.events, [ev("t", "a\nb", "")], "{stream:?}");
        }
        // CR CR is two terminators (a blank line), CR LF only one.
        let p = parse_every_way(b"data: a\r\rdata: b\r\n\r\n");
        assert_eq!(p.events, [ev("message", "a", ""), ev("message", "b", "")]);
        // LF CR is two terminators too.
        let p = parse_every_way(b"data: a\n\rdata: b\n\n");
        assert_eq!(p.events, [ev("message", "a", ""), ev("message", "b", "")]);
    }

    #[test]
    fn crlf_split_across_chunks_is_one_terminator() {
        let p = parse_chunks([&b"data: a\r"[..], b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(p.events, [ev("message", "a\nb", "")]);
        // An LF after a CR that merely ended the previous chunk's line is
        // absorbed, but a second LF is a blank line.
        let p = parse_chunks([&b"data: a\r"[..], b"\n", b"\n"]);
        assert_eq!(p.events, [ev("message", "a", "")]);
        // A CR at the end of a chunk followed by a CR is a blank line.
        let p = parse_chunks([&b"data: a\r"[..], b"\rdata: b\n\n"]);
        assert_eq!(p.events, [ev("message", "a", ""), ev("message", "b", "")]);
    }

    #[test]
    fn comments_are_ignored() {
        let p = parse_every_way(b":\n: data: x\n:event: e\ndata: a\n:\n\n:\n\n");
        assert_eq!(p.events, [ev("message", "a", "")]);
        // A comment line is not a blank line: it does not dispatch.
        let p = parse_every_way(b"data: a\n:\n");
        assert_eq!(p.events, []);
    }

    #[test]
    fn field_without_colon_has_an_empty_value() {
        let p = parse_every_way(b"data\n\n");
        assert_eq!(p.events, [ev("message", "", "")]);
        let p = parse_every_way(b"event: t\nevent\ndata: x\n\n");
        assert_eq!(p.events, [ev("message", "x", "")]);
        // A field name is matched exactly: these are all unknown fields.
        let p = parse_every_way(b"data \nData: x\n data: y\ndata : z\n\n");
        assert_eq!(p.events, []);
    }

    #[test]
    fn id_with_nul_is_ignored_and_ids_persist() {
        let p = parse_every_way(b"id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\ndata: c\n\n");
        assert_eq!(
            p.events,
            [
                ev("message", "a", "1"),
                ev("message", "b", "1"),
                ev("message", "c", "1"),
            ]
        );
        assert_eq!(p.last_event_id, "1");
        // `id:` with an empty value clears it; a space-only value keeps the
        // rest after the one stripped space.
        let p = parse_every_way(b"id: 1\ndata: a\n\nid:\ndata: b\n\nid:  2\ndata: c\n\n");
        assert_eq!(
            p.events,
            [
                ev("message", "a", "1"),
                ev("message", "b", ""),
                ev("message", "c", " 2"),
            ]
        );
    }

    #[test]
    fn an_id_without_data_sets_the_last_event_id_without_dispatching() {
        let p = parse_every_way(b"id: 5\n\n");
        assert_eq!(p.events, []);
        assert_eq!(p.last_event_id, "5");
        // Not yet dispatched: the buffer holds it, the string does not.
        let p = parse_every_way(b"id: 5\n");
        assert_eq!(p.last_event_id, "");
    }

    #[test]
    fn empty_data_resets_the_event_type() {
        let p = parse_every_way(b"event: t\n\ndata: x\n\n");
        assert_eq!(p.events, [ev("message", "x", "")]);
        let p = parse_every_way(b"event: t\nevent: u\ndata: x\n\n");
        assert_eq!(p.events, [ev("u", "x", "")]);
    }

    #[test]
    fn only_one_trailing_lf_is_removed() {
        let p = parse_every_way(b"data: a\ndata\ndata\n\n");
        assert_eq!(p.events, [ev("message", "a\n\n", "")]);
    }

    #[test]
    fn retry_takes_only_ascii_digits() {
        let p = parse_every_way(b"retry: 2500\n\n");
        assert_eq!((p.retry, p.events.len()), (Some(2500), 0));
        for bad in [
            &b"retry: 1a\n"[..],
            b"retry: -1\n",
            b"retry: +1\n",
            b"retry: 1 \n",
            b"retry:  1\n",
            b"retry:\n",
            b"retry: \xD9\xA1\n", // ARABIC-INDIC DIGIT ONE
        ] {
            let mut stream = b"retry: 7\n".to_vec();
            stream.extend_from_slice(bad);
            assert_eq!(parse_every_way(&stream).retry, Some(7), "{bad:?}");
        }
        assert_eq!(parse(b"retry:0\n").retry, Some(0));
    }

    #[test]
    fn one_leading_bom_is_stripped() {
        let p = parse_every_way(b"\xEF\xBB\xBFdata: a\n\n");
        assert_eq!(p.events, [ev("message", "a", "")]);
        // A second BOM is part of the first line's field name.
        let p = parse_every_way(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\n");
        assert_eq!(p.events, []);
        // Not at the start: just a character.
        let p = parse_every_way(b"data: \xEF\xBB\xBFa\n\n");
        assert_eq!(p.events, [ev("message", "\u{FEFF}a", "")]);
        // A partial BOM is not stripped.
        let p = parse_every_way(b"\xEF\xBBdata: a\n\ndata: b\n\n");
        assert_eq!(p.events, [ev("message", "b", "")]);
    }

    #[test]
    fn utf8_is_decoded_across_chunks_and_invalid_bytes_replaced() {
        let p = parse_every_way("event: ü\ndata: 😀 €\n\n".as_bytes());
        assert_eq!(p.events, [ev("ü", "😀 €", "")]);
        let p = parse_every_way(b"data: a\xFFb\xE2\x82\n\n");
        assert_eq!(p.events, [ev("message", "a\u{FFFD}b\u{FFFD}", "")]);
    }

    #[test]
    fn an_unterminated_event_is_discarded() {
        let p = parse_every_way(b"data: a\n\ndata: b\n");
        assert_eq!(p.events, [ev("message", "a", "")]);
        let p = parse_every_way(b"data: a\n\ndata: b");
        assert_eq!(p.events, [ev("message", "a", "")]);
    }
}
