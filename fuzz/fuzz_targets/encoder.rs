//! The SSE encoder, checked by round trip through an independent parser.
//!
//! Any event type and payload bytes are published through a [`Broker`].
//! Either the broker refuses them with the one right [`PublishError`], or
//! the frame a subscription reads back parses (with
//! `tests/it/support/sse_parser.rs`, written from the WHATWG spec and sharing
//! no code with the crate) to exactly one event with the same type
//! (`message` by default), the payload with CRLF and CR turned into LF, and
//! the id `publish` returned.
#![no_main]

#[allow(dead_code)]
#[path = "../../tests/it/support/sse_parser.rs"]
mod sse_parser;

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tower_sse::{Broker, Event, Message, PublishError, Topics};

/// Events (type and payload) above this are refused up front (`TooLarge`
/// with this limit).
const MAX_EVENT_BYTES: usize = 2_048;
/// The replay log's byte bound: an event whose frame would not fit is
/// refused too (`TooLarge` with a smaller limit). A payload of many line
/// breaks reaches it below `MAX_EVENT_BYTES`.
const RETAIN_BYTES: usize = 8_192;
/// What the broker charges per event beyond its frame's `event:`/`data:`
/// lines: the id headroom (46) and the entry overhead (64), as
/// `tests/it/model/local.rs` counts them.
const FIXED_COST: usize = 46 + 64;

#[derive(Arbitrary, Debug)]
struct Input {
    /// `None` publishes `Event::message()`; bytes that are not UTF-8 are
    /// decoded lossily (an event type is a `String`).
    event_type: Option<Vec<u8>>,
    payload: Vec<u8>,
}

fn broker() -> &'static Broker {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    BROKER.get_or_init(|| {
        Broker::builder()
            .retain_events(4)
            .retain_bytes(RETAIN_BYTES)
            .retain_forever()
            .max_event_bytes(MAX_EVENT_BYTES)
            .build()
    })
}

/// Splits at LF, CR and CRLF, as an SSE parser does.
fn lines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(['\r', '\n']) {
        out.push(&rest[..at]);
        let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[at + skip..];
    }
    out.push(rest);
    out
}

/// What the broker should charge the replay log for the event, from the
/// frame the spec calls for (`event:` unless `message`, one `data:` per
/// line, blank line), plus the payload once more when it spans several
/// lines (then it is stored apart from the frame).
fn expected_cost(event_type: Option<&str>, text: &str) -> usize {
    let event_line = match event_type {
        Some(t) if t != "message" => "event: \n".len() + t.len(),
        _ => 0,
    };
    let lines = lines(text);
    let data_lines: usize = lines.iter().map(|l| "data: \n".len() + l.len()).sum();
    let stored_apart = if lines.len() > 1 { text.len() } else { 0 };
    event_line + data_lines + 1 + FIXED_COST + stored_apart
}

/// The refusal the rules call for, if any, in the order the broker checks
/// them: the type, the size bound, UTF-8, then what the log can hold.
fn expected_refusal(event_type: Option<&str>, payload: &[u8]) -> Option<PublishError> {
    match event_type {
        Some("") => return Some(PublishError::EmptyEventType),
        Some(t) if t.contains(['\r', '\n']) => return Some(PublishError::InvalidEventType),
        // The types the crate itself sends, spelled out again here.
        Some(
            "resync" | "server.state" | "shutdown" | "notification" | "notification.reply",
        ) => return Some(PublishError::ReservedEventType),
        _ => {}
    }
    // The bound counts the type with the payload.
    let size = payload.len() + event_type.map_or(0, str::len);
    if size > MAX_EVENT_BYTES {
        return Some(PublishError::TooLarge {
            size,
            limit: MAX_EVENT_BYTES,
        });
    }
    let text = match std::str::from_utf8(payload) {
        Ok(text) => text,
        Err(e) => {
            return Some(PublishError::NotUtf8 {
                valid_up_to: e.valid_up_to(),
            })
        }
    };
    let cost = expected_cost(event_type, text);
    if cost > RETAIN_BYTES {
        return Some(PublishError::TooLarge {
            size,
            limit: RETAIN_BYTES.saturating_sub(cost - size),
        });
    }
    None
}

fuzz_target!(|input: Input| {
    let broker = broker();
    let event_type = input
        .event_type
        .as_deref()
        .map(|t| String::from_utf8_lossy(t).into_owned());
    let event = match &event_type {
        Some(t) => Event::new(t.clone()),
        None => Event::message(),
    }
    .data(input.payload.clone());

    let mut sub = broker
        .subscribe(&Topics::parse(["public"]).unwrap(), None)
        .unwrap();
    let result = broker.publish(event);
    let expected = expected_refusal(event_type.as_deref(), &input.payload);

    let id = match (result, expected) {
        (Err(got), Some(want)) => {
            assert_eq!(got, want, "type {event_type:?}");
            assert!(sub.try_next().is_none(), "a refused event was delivered");
            return;
        }
        (Err(got), None) => panic!("refused with {got:?}, type {event_type:?}"),
        (Ok(id), Some(want)) => panic!("published as {id}, expected {want:?}"),
        (Ok(id), None) => id,
    };
    let text = std::str::from_utf8(&input.payload).unwrap();
    let want_type = event_type.as_deref().unwrap_or("message");

    let Some(Message::Event(received)) = sub.try_next() else {
        panic!("the published event was not delivered");
    };
    assert!(sub.try_next().is_none());
    assert_eq!(received.id(), id);
    assert_eq!(received.event_type(), want_type);
    assert_eq!(received.data(), text);

    let frame = received.frame();
    let parsed = sse_parser::parse(frame);
    assert_eq!(parsed.events.len(), 1, "frame {frame:?}");
    let event = &parsed.events[0];
    assert_eq!(event.event_type, want_type, "frame {frame:?}");
    assert_eq!(
        event.data,
        text.replace("\r\n", "\n").replace('\r', "\n"),
        "frame {frame:?}"
    );
    assert_eq!(event.last_event_id, id.to_string(), "frame {frame:?}");
    assert_eq!(parsed.last_event_id, id.to_string());
    assert_eq!(parsed.retry, None);
    // Cut anywhere, the frame reads the same: nothing depends on chunking.
    let at = input.payload.len() % (frame.len() + 1);
    assert_eq!(
        sse_parser::parse_chunks([&frame[..at], &frame[at..]]),
        parsed
    );
});
