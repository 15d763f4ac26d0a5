//! The wire format, checked end to end: events go through a real
//! [`Broker`], come back out of a [`Subscription`](tower_sse::Subscription)
//! as frames, and are read by two parsers that share nothing with the crate:
//! `support/sse_parser.rs`, written from the WHATWG spec, and the
//! `eventsource-stream` crate. What they dispatch must be what was published.

use std::convert::Infallible;

use eventsource_stream::EventStream;
use futures_util::{FutureExt, StreamExt};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};
use tower_sse::{Broker, Event, EventId, Message, PublishError, ResyncReason, Topics};

use crate::support::sse_parser::{parse, parse_chunks, Dispatched, Parsed};

// ---------------------------------------------------------------------------
// Helpers

fn public() -> Topics {
    Topics::parse(["public"]).unwrap()
}

/// What a client reads for a payload: the parser ends a line at CRLF, CR
/// and LF alike and joins `data:` lines with LF.
fn normalize(payload: &str) -> String {
    payload.replace("\r\n", "\n").replace('\r', "\n")
}

fn dispatched(event_type: &str, data: &str, last_event_id: &str) -> Dispatched {
    Dispatched {
        event_type: event_type.to_owned(),
        data: data.to_owned(),
        last_event_id: last_event_id.to_owned(),
    }
}

/// Cuts `bytes` at the given points (in any order, duplicates allowed).
fn split_at(bytes: &[u8], cuts: &[Index]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    cuts.push(0);
    cuts.push(bytes.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

fn parse_split(chunks: &[Vec<u8>]) -> Parsed {
    parse_chunks(chunks.iter().map(Vec::as_slice))
}

/// Runs `eventsource-stream` over the chunks; also returns every `retry`
/// it saw.
fn eventsource_stream(chunks: &[Vec<u8>]) -> (Vec<Dispatched>, Vec<u128>) {
    let source = futures_util::stream::iter(chunks.iter().cloned().map(Ok::<_, Infallible>));
    // Every chunk is ready at once, so the stream never waits: one poll.
    let results = EventStream::new(source)
        .collect::<Vec<_>>()
        .now_or_never()
        .expect("an in-memory stream is always ready");
    let mut events = Vec::new();
    let mut retries = Vec::new();
    for result in results {
        let event = result.expect("eventsource-stream refused the stream");
        if let Some(retry) = event.retry {
            retries.push(retry.as_millis());
        }
        events.push(Dispatched {
            event_type: event.event,
            data: event.data,
            last_event_id: event.id,
        });
    }
    (events, retries)
}

/// Every message ready on `sub`, in order.
fn drain(sub: &mut tower_sse::Subscription) -> Vec<Message> {
    std::iter::from_fn(|| sub.try_next()).collect()
}

fn frames_of(messages: &[Message]) -> Vec<u8> {
    messages.iter().flat_map(|m| m.frame().to_vec()).collect()
}

fn json_of(data: &str) -> serde_json::Map<String, Value> {
    match serde_json::from_str(data) {
        Ok(Value::Object(map)) => map,
        other => panic!("resync data {data:?} is not a JSON object: {other:?}"),
    }
}

/// An event to publish: `None` is [`Event::message`].
#[derive(Clone, Debug)]
struct Spec {
    event_type: Option<String>,
    payload: String,
}

impl Spec {
    fn event(&self) -> Event {
        let event = match &self.event_type {
            None => Event::message(),
            Some(t) => Event::new(t.clone()),
        };
        event.data(self.payload.clone())
    }

    fn expected(&self, id: EventId) -> Dispatched {
        Dispatched {
            event_type: self.event_type.clone().unwrap_or_else(|| "message".into()),
            data: normalize(&self.payload),
            last_event_id: id.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------
// Strategies

/// Pieces of an event type: anything but CR and LF, biased towards what
/// could confuse a parser if written carelessly.
fn type_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(" ".to_owned()),
        Just("  ".to_owned()),
        Just(":".to_owned()),
        Just(": ".to_owned()),
        Just("data: x".to_owned()),
        Just("id: 1".to_owned()),
        Just("retry: 1".to_owned()),
        Just("message".to_owned()),
        Just("\0".to_owned()),
        Just("\t".to_owned()),
        Just("\u{FEFF}".to_owned()),
        Just("\u{2028}\u{2029}\u{85}\u{B}\u{C}".to_owned()),
        Just("é😀€".to_owned()),
        "[^\r\n]{1,6}",
    ]
}

fn event_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some("message".to_owned())),
        6 => vec(type_piece(), 1..5).prop_map(|pieces| Some(pieces.concat())),
    ]
}

/// Pieces of a payload: every line break and combination of them, spaces,
/// colons and text that looks like SSE fields, and arbitrary Unicode.
fn payload_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("\n".to_owned()),
        3 => Just("\r".to_owned()),
        3 => Just("\r\n".to_owned()),
        2 => Just("\r\r\n".to_owned()),
        1 => Just("\n\r".to_owned()),
        1 => Just("\n\n".to_owned()),
        2 => Just(" ".to_owned()),
        2 => Just(":".to_owned()),
        1 => Just(": comment".to_owned()),
        1 => Just("data: x".to_owned()),
        1 => Just("event: injected".to_owned()),
        1 => Just("id: 666".to_owned()),
        1 => Just("retry: 1".to_owned()),
        1 => Just("\0".to_owned()),
        1 => Just("\u{FEFF}".to_owned()),
        1 => Just("\u{2028}\u{85}".to_owned()),
        3 => "[ -~]{0,8}",
        4 => any::<String>(),
    ]
}

fn payload() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        9 => vec(payload_piece(), 0..8).prop_map(|pieces| pieces.concat()),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    (event_type(), payload()).prop_map(|(event_type, payload)| Spec {
        event_type,
        payload,
    })
}

fn epoch() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(7), Just(u64::MAX), any::<u64>()]
}

/// A string that cannot be an event type: it holds a CR or an LF.
fn type_with_line_break() -> impl Strategy<Value = String> {
    (
        "[^\r\n]{0,6}",
        prop_oneof![Just("\r"), Just("\n"), Just("\r\n"), Just("\n\r")],
        any::<String>(),
    )
        .prop_map(|(before, brk, after)| format!("{before}{brk}{after}"))
}

/// Bytes that are not UTF-8.
fn not_utf8() -> impl Strategy<Value = Vec<u8>> {
    let bad = prop_oneof![
        Just(vec![0xFF]),
        Just(vec![0xC0, 0x80]),             // overlong
        Just(vec![0x80]),                   // lone continuation
        Just(vec![0xE2, 0x82]),             // truncated
        Just(vec![0xED, 0xA0, 0x80]),       // surrogate
        Just(vec![0xF4, 0x90, 0x80, 0x80]), // above U+10FFFF
        vec(any::<u8>(), 1..16).prop_filter("not UTF-8", |b| std::str::from_utf8(b).is_err()),
    ];
    (any::<String>(), bad, vec(any::<u8>(), 0..8))
        .prop_map(|(before, bad, after)| {
            let mut bytes = before.into_bytes();
            bytes.extend(bad);
            bytes.extend(after);
            bytes
        })
        // What follows may complete a truncated sequence.
        .prop_filter("not UTF-8", |b| std::str::from_utf8(b).is_err())
}

// ---------------------------------------------------------------------------
// Round trips

/// Publishes `specs`, reads them back from a subscription that resumes from
/// the start, and checks what the subscription hands out. Returns the
/// frames and what a client must dispatch for each.
fn publish_and_read(epoch: u64, specs: &[Spec]) -> (Vec<Vec<u8>>, Vec<Dispatched>) {
    let broker = Broker::builder().epoch(epoch).retain_forever().build();
    let ids: Vec<EventId> = specs
        .iter()
        .map(|spec| broker.publish(spec.event()).expect("a valid event"))
        .collect();
    let mut sub = broker
        .subscribe(&public(), Some(&format!("{epoch}-0")))
        .unwrap();
    let messages = drain(&mut sub);
    assert_eq!(messages.len(), specs.len(), "{messages:?}");
    let mut frames = Vec::new();
    let mut expected = Vec::new();
    for ((message, spec), &id) in messages.iter().zip(specs).zip(&ids) {
        let Message::Event(event) = message else {
            panic!("expected an event, got {message:?}");
        };
        assert_eq!(event.id(), id);
        assert_eq!(event.data(), spec.payload);
        assert_eq!(
            event.event_type(),
            spec.event_type.as_deref().unwrap_or("message")
        );
        assert_eq!(&message.frame(), event.frame());
        frames.push(event.frame().to_vec());
        expected.push(spec.expected(id));
    }
    (frames, expected)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn both_parsers_read_back_what_was_published(
        epoch in epoch(),
        specs in vec(spec(), 1..6),
        cuts in vec(any::<Index>(), 0..12),
        bom in any::<bool>(),
    ) {
        let (frames, expected) = publish_and_read(epoch, &specs);

        // Each frame on its own is exactly one event, whatever the payload
        // and type: nothing was injected, no field, no event, no retry.
        for (frame, expected) in frames.iter().zip(&expected) {
            let parsed = parse(frame);
            prop_assert_eq!(&parsed.events, std::slice::from_ref(expected));
            prop_assert_eq!(parsed.retry, None);
            prop_assert_eq!(&parsed.last_event_id, &expected.last_event_id);
            // A frame is exactly one blank-line-terminated block: the only
            // blank line is its end.
            prop_assert!(frame.ends_with(b"\n\n"));
            prop_assert!(!frame[..frame.len() - 1].windows(2).any(|w| w == b"\n\n"));
            prop_assert!(!frame.contains(&b'\r'));
        }

        // The stream, cut anywhere, read by the spec parser.
        let stream: Vec<u8> = frames.concat();
        let chunks = split_at(&stream, &cuts);
        let parsed = parse_split(&chunks);
        prop_assert_eq!(&parsed.events, &expected);
        prop_assert_eq!(parsed.retry, None);
        prop_assert_eq!(&parsed.last_event_id, &expected.last().unwrap().last_event_id);

        // A leading BOM is the decoder's business and changes nothing.
        if bom {
            let mut with_bom = b"\xEF\xBB\xBF".to_vec();
            with_bom.extend_from_slice(&stream);
            let chunks = split_at(&with_bom, &cuts);
            prop_assert_eq!(&parse_split(&chunks).events, &expected);
        }

        // And by eventsource-stream.
        let (events, retries) = eventsource_stream(&chunks);
        prop_assert_eq!(&events, &expected);
        prop_assert!(retries.is_empty());
    }

    #[test]
    fn line_breaks_in_the_event_type_are_refused(
        event_type in type_with_line_break(),
        payload in payload(),
    ) {
        let broker = Broker::builder().epoch(7).build();
        let mut sub = broker.subscribe(&public(), Some("7-0")).unwrap();
        let result = broker.publish(Event::new(event_type).data(payload));
        prop_assert_eq!(result, Err(PublishError::InvalidEventType));
        prop_assert_eq!(broker.stats().published, 0);
        prop_assert_eq!(broker.last_event_id(), EventId::new(7, 0));
        prop_assert!(sub.try_next().is_none());
    }

    #[test]
    fn payloads_that_are_not_utf8_are_refused(bytes in not_utf8()) {
        let valid_up_to = std::str::from_utf8(&bytes).unwrap_err().valid_up_to();
        let broker = Broker::builder().epoch(7).build();
        let mut sub = broker.subscribe(&public(), Some("7-0")).unwrap();
        prop_assert_eq!(
            broker.publish(Event::new("t").data(bytes.clone())),
            Err(PublishError::NotUtf8 { valid_up_to })
        );
        prop_assert_eq!(
            broker.publish(Event::message().data(bytes)),
            Err(PublishError::NotUtf8 { valid_up_to })
        );
        prop_assert_eq!(broker.stats().published, 0);
        prop_assert!(sub.try_next().is_none());
    }
}

#[test]
fn known_awkward_payloads_round_trip() {
    let cases: &[(Option<&str>, &str, &str)] = &[
        (None, "", ""),
        (None, "\n", "\n"),
        (None, "\r", "\n"),
        (None, "\r\n", "\n"),
        (None, "\r\r\n", "\n\n"),
        (None, "\n\r", "\n\n"),
        (None, " leading", " leading"),
        (None, "  two", "  two"),
        (None, "a\n b\r\n  c\rd\n", "a\n b\n  c\nd\n"),
        (None, ":not a comment", ":not a comment"),
        (
            None,
            "\n\ndata: x\n\nevent: e\n",
            "\n\ndata: x\n\nevent: e\n",
        ),
        (Some(" "), "x", "x"),
        (Some(" leading: colon"), "x", "x"),
        (Some(":"), "x", "x"),
        (Some("message"), "x", "x"),
        (Some("data"), "\r\r", "\n\n"),
        (Some("é😀\0\u{2028}"), "ü", "ü"),
    ];
    let specs: Vec<Spec> = cases
        .iter()
        .map(|&(event_type, payload, _)| Spec {
            event_type: event_type.map(str::to_owned),
            payload: payload.to_owned(),
        })
        .collect();
    let (frames, expected) = publish_and_read(3, &specs);
    for ((expected, &(event_type, _, data)), seq) in expected.iter().zip(cases).zip(1..) {
        // The helper's expectation, spelled out once by hand.
        let want = dispatched(event_type.unwrap_or("message"), data, &format!("3-{seq}"));
        assert_eq!(expected, &want);
    }
    let stream = frames.concat();
    assert_eq!(parse(&stream).events, expected);
    assert_eq!(
        parse_chunks(stream.chunks(1)).events,
        expected,
        "byte by byte"
    );
    let (events, _) = eventsource_stream(std::slice::from_ref(&stream));
    assert_eq!(events, expected);
    let bytes: Vec<Vec<u8>> = stream.iter().map(|&b| vec![b]).collect();
    let (events, _) = eventsource_stream(&bytes);
    assert_eq!(events, expected, "eventsource-stream, byte by byte");
}

#[test]
fn frames_are_the_documented_bytes() {
    let broker = Broker::builder().epoch(7).build();
    broker.publish(Event::message().data("hi")).unwrap();
    broker.publish(Event::new("t").data(" a\r\nb\r")).unwrap();
    // The default type, named explicitly, is still left out.
    broker.publish(Event::new("message").data("")).unwrap();
    let mut sub = broker.subscribe(&public(), Some("7-0")).unwrap();
    let stream = frames_of(&drain(&mut sub));
    assert_eq!(
        String::from_utf8(stream).unwrap(),
        "id: 7-1\ndata: hi\n\n\
         id: 7-2\nevent: t\ndata:  a\ndata: b\ndata: \n\n\
         id: 7-3\ndata: \n\n"
    );
}

#[test]
fn an_empty_event_type_is_refused() {
    let broker = Broker::builder().epoch(7).build();
    for data in ["", "x", "a\nb"] {
        assert_eq!(
            broker.publish(Event::new("").data(data)),
            Err(PublishError::EmptyEventType)
        );
    }
    // Empty wins over the other checks on the same event.
    assert_eq!(
        broker.publish(Event::new("").data(vec![0xFF])),
        Err(PublishError::EmptyEventType)
    );
    assert_eq!(
        broker.publish(Event::new("a\nb").data(vec![0xFF])),
        Err(PublishError::InvalidEventType)
    );
    assert_eq!(broker.stats().published, 0);
    assert_eq!(broker.last_event_id(), EventId::new(7, 0));
}

#[test]
fn line_breaks_in_the_type_are_refused_for_system_events_too() {
    let broker = Broker::builder().epoch(7).build();
    for t in ["\r", "\n", "a\r\nevent: b", "x\n\ndata: y"] {
        assert_eq!(
            broker.publish_system(Event::new(t).data("x")),
            Err(PublishError::InvalidEventType),
            "{t:?}"
        );
    }
    assert_eq!(
        broker.publish_system(Event::new("")),
        Err(PublishError::EmptyEventType)
    );
    assert_eq!(broker.stats().published, 0);
}

// ---------------------------------------------------------------------------
// Resync and lag frames

/// Parses the one frame of `message` with both parsers and checks it is a
/// `resync` event carrying `resume_from`; returns its JSON.
fn resync_json(message: &Message, resume_from: EventId) -> serde_json::Map<String, Value> {
    let frame = message.frame();
    let parsed = parse(&frame);
    assert_eq!(parsed.events.len(), 1, "{parsed:?}");
    let event = &parsed.events[0];
    assert_eq!(event.event_type, "resync");
    assert_eq!(event.last_event_id, resume_from.to_string());
    assert_eq!(parsed.retry, None);
    let (events, _) = eventsource_stream(&[frame.to_vec()]);
    assert_eq!(events, parsed.events, "eventsource-stream");
    json_of(&event.data)
}

#[test]
fn a_malformed_id_gets_a_resync_frame() {
    for epoch in [0, 7, u64::MAX] {
        let broker = Broker::builder().epoch(epoch).build();
        broker.publish(Event::new("t").data("before")).unwrap();
        broker.publish(Event::new("t").data("before")).unwrap();
        for bad in ["garbage", "", "7", "-", "1-", "-1", "1-2-3", " 1-1", "1-+1"] {
            let mut sub = broker.subscribe(&public(), Some(bad)).unwrap();
            let message = sub.try_next().expect("a resync");
            let Message::Resync {
                reason,
                resume_from,
            } = message
            else {
                panic!("{bad:?}: expected a resync, got {message:?}");
            };
            assert_eq!(reason, ResyncReason::Malformed, "{bad:?}");
            // Live from now: it continues after the newest event.
            assert_eq!(resume_from, broker.last_event_id(), "{bad:?}");
            let json = resync_json(&message, resume_from);
            assert_eq!(Value::Object(json), json!({ "reason": "malformed-id" }));
            assert!(sub.try_next().is_none());
        }
    }
}

#[test]
fn every_resync_reason_is_written_as_documented() {
    let broker = Broker::builder().epoch(7).retain_events(2).build();
    for n in 0..5 {
        broker.publish(Event::new("t").data(n.to_string())).unwrap();
    }
    let cases = [
        ("garbage", ResyncReason::Malformed, "malformed-id"),
        ("8-1", ResyncReason::UnknownEpoch, "unknown-epoch"),
        ("7-99", ResyncReason::Future, "future-id"),
        ("7-1", ResyncReason::Expired, "expired"),
    ];
    for (id, want, text) in cases {
        let mut sub = broker.subscribe(&public(), Some(id)).unwrap();
        let message = sub.try_next().expect("a resync");
        let Message::Resync {
            reason,
            resume_from,
        } = message
        else {
            panic!("{id}: expected a resync, got {message:?}");
        };
        assert_eq!(reason, want, "{id}");
        assert_eq!(reason.as_str(), text);
        assert_eq!(reason.to_string(), text);
        let json = resync_json(&message, resume_from);
        assert_eq!(Value::Object(json), json!({ "reason": text }), "{id}");
    }
}

#[test]
fn a_resync_then_live_events_read_as_one_stream() {
    let broker = Broker::builder().epoch(7).build();
    broker.publish(Event::new("t").data("old")).unwrap();
    let mut sub = broker.subscribe(&public(), Some("garbage")).unwrap();
    let id = broker.publish(Event::new("t").data("new\r\nline")).unwrap();
    let messages = drain(&mut sub);
    assert_eq!(messages.len(), 2, "{messages:?}");
    let stream = frames_of(&messages);
    let want = [
        dispatched("resync", r#"{"reason":"malformed-id"}"#, "7-1"),
        dispatched("t", "new\nline", &id.to_string()),
    ];
    assert_eq!(parse(&stream).events, want);
    assert_eq!(eventsource_stream(&[stream]).0, want);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_lag_frame_counts_exactly_what_was_evicted(
        retain in 1usize..5,
        overflow in 1u64..12,
        epoch in epoch(),
        cuts in vec(any::<Index>(), 0..8),
    ) {
        let broker = Broker::builder()
            .epoch(epoch)
            .retain_events(retain)
            .retain_forever()
            .build();
        let mut sub = broker.subscribe(&public(), None).unwrap();
        let total = retain as u64 + overflow;
        let ids: Vec<EventId> = (0..total)
            .map(|n| broker.publish(Event::new("n").data(n.to_string())).unwrap())
            .collect();
        prop_assert_eq!(broker.stats().evicted, overflow);

        let messages = drain(&mut sub);
        prop_assert_eq!(messages.len(), 1 + retain, "{:?}", messages);
        let Message::Lagged { missed, resume_from } = messages[0] else {
            panic!("expected a lag report first, got {:?}", messages[0]);
        };
        prop_assert_eq!(missed, overflow);
        // Every event up to the last evicted one is accounted for.
        prop_assert_eq!(resume_from, ids[overflow as usize - 1]);
        let stats = broker.stats();
        prop_assert_eq!((stats.lagged_events, stats.lag_reports), (overflow, 1));

        let json = resync_json(&messages[0], resume_from);
        prop_assert_eq!(
            Value::Object(json),
            json!({ "reason": "lagged", "missed": overflow })
        );

        // The report and the retained events, read as one stream.
        let mut want = vec![dispatched(
            "resync",
            &format!(r#"{{"reason":"lagged","missed":{overflow}}}"#),
            &resume_from.to_string(),
        )];
        for (n, id) in ids.iter().enumerate().skip(overflow as usize) {
            want.push(dispatched("n", &n.to_string(), &id.to_string()));
        }
        let stream = frames_of(&messages);
        let chunks = split_at(&stream, &cuts);
        prop_assert_eq!(&parse_split(&chunks).events, &want);
        prop_assert_eq!(&eventsource_stream(&chunks).0, &want);
    }
}
