//! The `Last-Event-ID` / `lastEventId` parser, through the public service.
//!
//! Any bytes go in as a `Last-Event-ID` header value (when `http` accepts
//! them as one), as a percent-encoded `lastEventId` query value, as a raw
//! query string, or as a header alongside a valid query id (the header
//! wins). Each request goes through an `SseLayer` service over a broker
//! holding a known log, and the stream is read as far as it goes without
//! waiting. The answer is always `200` (a raw query naming another topic
//! aside, which the default authorizer refuses with its own status), the
//! stream starts with the `retry:` hint, and then holds exactly what the
//! id calls for, decided here from the documented rules: nothing (no id,
//! live), one `resync` frame whose JSON `reason` is the documented one, or
//! the replay of the retained events after the id.
//!
//! Besides: `EventId::from_str` agrees with the documented grammar, never
//! panics, and `parse(format(id)) == id`.
#![no_main]

#[path = "../common/form.rs"]
mod form;
#[allow(dead_code)]
#[path = "../../tests/it/support/sse_parser.rs"]
mod sse_parser;

use std::convert::Infallible;
use std::future::{poll_fn, Ready};
use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use arbitrary::Arbitrary;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Empty;
use libfuzzer_sys::fuzz_target;
use tower::{Layer, ServiceExt};
use tower_sse::sse::{public_only, Sse};
use tower_sse::{Broker, Event, EventId, SseLayer};

const EPOCH: u64 = 7;
/// Events published before the run: seqs 1 to 8 ...
const NEWEST: u64 = 8;
/// ... of which the log keeps the last 5, so 1 to 3 are evicted: an id
/// before 3 has lost events, 3 to 8 resume, above 8 is in the future.
const RETAIN: usize = 5;
const LAST_EVICTED: u64 = NEWEST - RETAIN as u64;
/// A valid id of this broker, for the query when the header must win.
const QUERY_ID: &str = "7-5";

/// The service behind the layer; never reached (every request is for the
/// events route).
#[derive(Clone)]
struct Inner;

impl tower::Service<Request<()>> for Inner {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        panic!("the inner service was called")
    }
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    service: Sse<Inner>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let broker = Broker::builder()
            .epoch(EPOCH)
            .retain_events(RETAIN)
            .retain_forever()
            .build();
        for seq in 1..=NEWEST {
            let id = broker
                .publish(Event::new("t").data(format!("e{seq}")))
                .unwrap();
            assert_eq!(id, EventId::new(EPOCH, seq));
        }
        let layer = SseLayer::new(broker).no_keep_alive();
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
            service: layer.layer(Inner),
        }
    })
}

#[derive(Arbitrary, Debug)]
enum Place {
    Header,
    Query,
    RawQuery,
    HeaderOverQuery,
}

#[derive(Arbitrary, Debug)]
struct Input {
    place: Place,
    epoch: u64,
    seq: u64,
    value: Vec<u8>,
}

/// `EPOCH-SEQ` as documented: ASCII digits only, each part 1 to 20 digits
/// and within `u64`, joined at the first `-`.
fn parse_id(text: &str) -> Option<(u64, u64)> {
    fn number(part: &str) -> Option<u64> {
        if part.is_empty() || part.len() > 20 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n = part
            .bytes()
            .fold(0u128, |n, b| n * 10 + u128::from(b - b'0'));
        u64::try_from(n).ok()
    }
    let (epoch, seq) = text.split_once('-')?;
    Some((number(epoch)?, number(seq)?))
}

/// What the stream should hold after its `retry:` hint.
#[derive(Debug, PartialEq)]
enum Want {
    Live,
    Resync(&'static str),
    /// The retained events after this seq.
    Replay(u64),
}

fn want(id: Option<&str>) -> Want {
    let Some(text) = id else {
        return Want::Live;
    };
    match parse_id(text) {
        None => Want::Resync("malformed-id"),
        Some((epoch, _)) if epoch != EPOCH => Want::Resync("unknown-epoch"),
        Some((_, seq)) if seq > NEWEST => Want::Resync("future-id"),
        Some((_, seq)) if seq < LAST_EVICTED => Want::Resync("expired"),
        Some((_, seq)) => Want::Replay(seq),
    }
}

/// The id parser against the grammar, and the round trip.
fn check_event_id(text: &str, epoch: u64, seq: u64) {
    let parsed = text.parse::<EventId>().ok();
    assert_eq!(
        parsed.map(|id| (id.epoch(), id.seq())),
        parse_id(text),
        "{text:?}"
    );
    if let Some(id) = parsed {
        assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
    }
    let id = EventId::new(epoch, seq);
    assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
    assert_eq!(id.to_string(), format!("{epoch}-{seq}"));
}

/// Sends `request` and reads the stream as far as it goes without waiting.
fn respond(request: Request<()>) -> (StatusCode, Option<HeaderValue>, Vec<Bytes>) {
    let fixture = fixture();
    fixture.runtime.block_on(async {
        let response = fixture.service.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let mut body = pin!(response.into_body());
        let mut frames = Vec::new();
        poll_fn(|cx| {
            // A handful of frames at most: the log holds five events.
            while frames.len() < 16 {
                match body.as_mut().poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        frames.push(frame.into_data().expect("only data frames"))
                    }
                    Poll::Ready(Some(Err(never))) => match never {},
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            Poll::Ready(())
        })
        .await;
        (status, content_type, frames)
    })
}

fn check_stream(frames: &[Bytes], want: &Want, context: &dyn std::fmt::Debug) {
    assert_eq!(
        frames.first().map(|f| &f[..]),
        Some(&b"retry: 3000\n"[..]),
        "{context:?}"
    );
    let parsed = sse_parser::parse_chunks(frames.iter().map(|f| &f[..]));
    assert_eq!(parsed.retry, Some(3000));
    let events: Vec<(&str, &str, &str)> = parsed
        .events
        .iter()
        .map(|e| (&*e.event_type, &*e.data, &*e.last_event_id))
        .collect();
    match want {
        Want::Live => assert_eq!(events, [], "{context:?}"),
        Want::Resync(reason) => {
            let [("resync", data, id)] = events[..] else {
                panic!("{context:?}: want a resync ({reason}), got {events:?}");
            };
            let json: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(json, serde_json::json!({ "reason": reason }), "{context:?}");
            // The stream continues from the newest event.
            assert_eq!(id, format!("{EPOCH}-{NEWEST}"));
        }
        Want::Replay(after) => {
            let replay: Vec<(String, String, String)> = (after + 1..=NEWEST)
                .map(|seq| ("t".into(), format!("e{seq}"), format!("{EPOCH}-{seq}")))
                .collect();
            let got: Vec<(String, String, String)> = events
                .iter()
                .map(|(t, d, i)| (t.to_string(), d.to_string(), i.to_string()))
                .collect();
            assert_eq!(got, replay, "{context:?}");
        }
    }
}

fuzz_target!(|input: Input| {
    let text = String::from_utf8_lossy(&input.value);
    check_event_id(&text, input.epoch, input.seq);

    let request = Request::get("/events");
    let (request, id): (_, Option<String>) = match input.place {
        Place::Header | Place::HeaderOverQuery => {
            let Ok(value) = HeaderValue::from_bytes(&input.value) else {
                return;
            };
            // Bytes that are not UTF-8 cannot be an id.
            let id = std::str::from_utf8(&input.value).unwrap_or("").to_owned();
            let request = match input.place {
                Place::Header => request,
                _ => Request::get(format!("/events?lastEventId={QUERY_ID}")),
            };
            (request.header("last-event-id", value), Some(id))
        }
        Place::Query => {
            // Percent-encoded, it decodes back to the bytes (U+FFFD for
            // what is not UTF-8); only the first `lastEventId` counts.
            let uri = format!(
                "/events?a=b&lastEventId={}&lastEventId={QUERY_ID}",
                form::encode_all(&input.value)
            );
            (Request::get(uri), Some(text.into_owned()))
        }
        Place::RawQuery => {
            let Ok(uri) = http::Uri::try_from([b"/events?".as_slice(), &input.value].concat())
            else {
                return;
            };
            let query = uri.query().unwrap_or_default().as_bytes().to_vec();
            let id = form::pairs(&query)
                .into_iter()
                .find(|(key, _)| key == "lastEventId")
                .map(|(_, value)| value);
            (Request::get(uri), id)
        }
    };
    let request = request.body(()).unwrap();

    // A raw query may name topics: the default authorizer's answer stands.
    let (parts, ()) = request.into_parts();
    let refusal = public_only(&parts).err();
    let request = Request::from_parts(parts, ());

    let (status, content_type, frames) = respond(request);
    let context = (&input, &id, &frames);
    if let Some(refusal) = refusal {
        assert_eq!(status, refusal.status(), "{context:?}");
        assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR);
        return;
    }
    assert_eq!(status, StatusCode::OK, "{context:?}");
    assert_eq!(
        content_type.as_ref().map(HeaderValue::as_bytes),
        Some(&b"text/event-stream"[..])
    );
    check_stream(&frames, &want(id.as_deref()), &context);
});
