//! Reading a connection's first request head, and deciding from it whether
//! the connection is a stream this server drives or one for hyper.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::RequestBody;

/// Headers parsed before handing a head to hyper instead; hyper allows 100
/// and answers a longer head itself.
const MAX_HEADERS: usize = 64;
/// What the head buffer grows by.
const READ_CHUNK: usize = 1024;

/// What the first head turned out to be.
#[derive(Debug)]
pub(super) enum First {
    /// A stream request, parsed; whatever followed its head is dropped, as
    /// its response closes the connection.
    Stream(Box<Request<RequestBody>>),
    /// Anything else, with every byte read so far, for hyper to read again.
    Other(Bytes),
    /// The peer closed before sending a whole head.
    Closed,
}

/// Reads until the first head is complete, or until it is clear that it is
/// not a stream request.
pub(super) async fn read(
    tcp: &mut TcpStream,
    max_bytes: usize,
    stream_paths: &[String],
) -> std::io::Result<First> {
    let mut buf = Vec::with_capacity(READ_CHUNK.min(max_bytes));
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(READ_CHUNK);
        }
        if tcp.read_buf(&mut buf).await? == 0 {
            return Ok(First::Closed);
        }
        match decide(&buf, stream_paths) {
            Decision::Stream(request) => return Ok(First::Stream(request)),
            Decision::Other => return Ok(First::Other(Bytes::from(buf))),
            Decision::Partial if buf.len() >= max_bytes => {
                return Ok(First::Other(Bytes::from(buf)))
            }
            Decision::Partial => {}
        }
    }
}

#[derive(Debug)]
enum Decision {
    Stream(Box<Request<RequestBody>>),
    Other,
    Partial,
}

/// Whether `buf` starts with a whole head of a request this server
/// streams. Everything it is unsure about is `Other`: hyper then answers
/// exactly as it would have.
fn decide(buf: &[u8], stream_paths: &[String]) -> Decision {
    // Most requests that are not streams tell so in their first bytes.
    let start = &buf[..buf.len().min(4)];
    if !b"GET ".starts_with(start) {
        return Decision::Other;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    match head.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Decision::Partial,
        Err(_) => return Decision::Other,
    }
    match to_request(&head, stream_paths) {
        Some(request) => Decision::Stream(Box::new(request)),
        None => Decision::Other,
    }
}

fn to_request(
    head: &httparse::Request<'_, '_>,
    stream_paths: &[String],
) -> Option<Request<RequestBody>> {
    if head.method != Some("GET") || head.version != Some(1) {
        return None;
    }
    let target = head.path?;
    let mut wants_stream = false;
    for field in head.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            // A GET with a body is left to hyper, which reads or refuses it.
            if field.value != b"0" {
                return None;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return None;
        } else if name.eq_ignore_ascii_case("connection") {
            if has_token(field.value, "upgrade") {
                return None;
            }
        } else if name.eq_ignore_ascii_case("accept") {
            wants_stream |= has_media_type(field.value, b"text/event-stream");
        }
    }
    if !wants_stream {
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        if !stream_paths.iter().any(|p| p == path) {
            return None;
        }
    }
    let uri: Uri = target.parse().ok()?;
    let mut map = HeaderMap::with_capacity(head.headers.len());
    for field in head.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(field.value).ok()?;
        map.append(name, value);
    }
    let mut request = Request::new(RequestBody::empty());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = map;
    Some(request)
}

/// Whether the comma-separated header value lists `token`.
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether an `Accept` value lists `media` as acceptable: other
/// parameters are ignored, and a quality of zero (`q=0`, `q=0.000`) says it
/// is not.
fn has_media_type(value: &[u8], media: &[u8]) -> bool {
    value.split(|b| *b == b',').any(|item| {
        let mut parts = item.split(|b| *b == b';');
        let kind = parts.next().unwrap_or(item);
        kind.trim_ascii().eq_ignore_ascii_case(media) && !parts.any(is_zero_quality)
    })
}

/// Whether a media type parameter is `q=0` (with up to three zero decimals).
fn is_zero_quality(parameter: &[u8]) -> bool {
    let parameter = parameter.trim_ascii();
    let Some(at) = parameter.iter().position(|b| *b == b'=') else {
        return false;
    };
    let (name, value) = (&parameter[..at], &parameter[at + 1..]);
    if !name.trim_ascii().eq_ignore_ascii_case(b"q") {
        return false;
    }
    match value.trim_ascii() {
        [b'0'] => true,
        [b'0', b'.', zeros @ ..] => zeros.len() <= 3 && zeros.iter().all(|b| *b == b'0'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide_str(head: &str) -> Decision {
        decide(head.as_bytes(), &["/events".to_owned()])
    }

    #[test]
    fn an_event_source_request_is_a_stream() {
        let head = "GET /events?topics=a HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nLast-Event-ID: 1-2\r\n\r\n";
        let Decision::Stream(request) = decide(head.as_bytes(), &[]) else {
            panic!("not a stream");
        };
        assert_eq!(request.uri(), "/events?topics=a");
        assert_eq!(request.headers()["last-event-id"], "1-2");
        assert_eq!(request.method(), Method::GET);
    }

    #[test]
    fn a_stream_path_is_a_stream_without_accept() {
        assert!(matches!(
            decide_str("GET /events?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Decision::Stream(_)
        ));
        assert!(matches!(
            decide_str("GET /other HTTP/1.1\r\nHost: x\r\n\r\n"),
            Decision::Other
        ));
    }

    #[test]
    fn accept_is_matched_as_a_media_type() {
        for accept in [
            "text/html, text/event-stream;q=0.9",
            "TEXT/EVENT-STREAM",
            " text/event-stream ",
        ] {
            let head = format!("GET /x HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n");
            assert!(
                matches!(decide(head.as_bytes(), &[]), Decision::Stream(_)),
                "{accept}"
            );
        }
        for accept in [
            "text/event-streams",
            "text/event-stream;q=0",
            "text/event-stream; Q=0.000, text/html",
            "text/html;q=0.5, text/event-stream ; q = 0.0",
        ] {
            let head = format!("GET /x HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n");
            assert!(
                matches!(decide(head.as_bytes(), &[]), Decision::Other),
                "{accept}"
            );
        }
        // A quality above zero, however small, is a yes.
        let head = "GET /x HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream;q=0.001\r\n\r\n";
        assert!(matches!(decide(head.as_bytes(), &[]), Decision::Stream(_)));
    }

    #[test]
    fn everything_unusual_goes_to_hyper() {
        for head in [
            "POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "HEAD /events HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /events HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET /events HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            "GET /events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /events HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET /events HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, upgrade\r\n\r\n",
            "GET /events HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            "GET /ev ents HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /events HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "\x16\x03\x01\x02\x00",
        ] {
            assert!(matches!(decide_str(head), Decision::Other), "{head:?}");
        }
    }

    #[test]
    fn a_head_in_pieces_waits_for_its_end() {
        let head = "GET /events HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..head.len() {
            let piece = &head.as_bytes()[..cut];
            assert!(
                matches!(decide(piece, &["/events".to_owned()]), Decision::Partial),
                "{cut}"
            );
        }
    }

    #[test]
    fn too_many_headers_go_to_hyper() {
        let mut head = String::from("GET /events HTTP/1.1\r\nHost: x\r\n");
        for i in 0..MAX_HEADERS {
            head.push_str(&format!("X-{i}: y\r\n"));
        }
        head.push_str("\r\n");
        assert!(matches!(decide_str(&head), Decision::Other));
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Whatever a client sends, deciding never panics, and only a
            /// whole `GET` head is ever taken for a stream (its end may be a
            /// bare LF, which httparse accepts for hyper and for this server
            /// alike).
            #[test]
            fn any_bytes_get_a_decision(
                prefix in prop_oneof![
                    Just(""),
                    Just("GET "),
                    Just("GET /events HTTP/1.1\r\n"),
                    Just("GET /events HTTP/1.1\r\nAccept: text/event-stream\r\n"),
                ],
                rest in proptest::collection::vec(any::<u8>(), 0..600),
            ) {
                let bytes = [prefix.as_bytes(), &rest].concat();
                match decide(&bytes, &["/events".to_owned()]) {
                    Decision::Stream(request) => {
                        prop_assert!(bytes.starts_with(b"GET "));
                        prop_assert!(bytes.windows(2).any(|w| w == b"\n\n")
                            || bytes.windows(3).any(|w| w == b"\n\r\n"));
                        prop_assert_eq!(request.method(), Method::GET);
                    }
                    Decision::Other | Decision::Partial => {}
                }
            }

            /// A well-formed stream request with any extra headers is taken
            /// whole, its headers passed on unchanged and in order; cut
            /// anywhere short of its end, it is still waited for.
            #[test]
            fn a_stream_request_keeps_its_headers(
                headers in proptest::collection::vec(("x-[a-z0-9-]{1,12}", "[ -~]{0,40}"), 0..12),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut head = String::from("GET /events?topic=a HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n");
                for (name, value) in &headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str("\r\n");
                let Decision::Stream(request) = decide(head.as_bytes(), &[]) else {
                    return Err(TestCaseError::fail(format!("not a stream: {head:?}")));
                };
                for (name, _) in &headers {
                    let got: Vec<&[u8]> = request.headers().get_all(name.as_str()).iter().map(|v| v.as_bytes()).collect();
                    let want: Vec<&[u8]> = headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.trim().as_bytes()).collect();
                    prop_assert_eq!(got, want);
                }
                let short = cut.index(head.len());
                prop_assert!(matches!(decide(&head.as_bytes()[..short], &[]), Decision::Partial));
            }
        }
    }
}
