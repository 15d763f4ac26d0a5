//! Reading an event stream. [`Client`] keeps every byte of one response and
//! reads it two ways: as the events that `eventsource-stream`, a parser
//! that shares nothing with the crate, dispatches; and as the frames on the
//! wire ([`RawFrame`]), so that a test can also check which lines a frame
//! has (that a greeting carries no `id:`, say).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;

use bytes::Bytes;
use eventsource_stream::{Event as SseEvent, EventStream};
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, Stream, StreamExt};
use http::header::AsHeaderName;
use http::{HeaderMap, StatusCode};
use tokio::sync::mpsc;

use super::client::Connection;
use super::wait::within;

/// One response, read chunk by chunk as the test asks for more. Every byte
/// received is kept (`raw`) and fed to `eventsource-stream`, whose events
/// queue up for [`Client::next_event`]; [`Client::next_frame`] splits the
/// same bytes into frames. A test reads one way or the other; what it does
/// not read just accumulates.
pub struct Client {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: BoxStream<'static, Result<Bytes, String>>,
    raw: Vec<u8>,
    ended: bool,
    feed: Option<mpsc::UnboundedSender<Bytes>>,
    parser: Pin<Box<dyn Stream<Item = Result<SseEvent, String>> + Send>>,
    parsed: VecDeque<SseEvent>,
    /// How much of `raw` [`Client::next_frame`] has split off.
    framed: usize,
    _conn: Option<Connection>,
}

impl Client {
    /// Reads `body`; `conn`, if any, is closed when the client is dropped.
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: BoxStream<'static, Result<Bytes, String>>,
        conn: Option<Connection>,
    ) -> Self {
        let (feed, rx) = mpsc::unbounded_channel::<Bytes>();
        let input = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|bytes| (Ok::<_, Infallible>(bytes), rx))
        });
        let parser = EventStream::new(input).map(|item| item.map_err(|e| e.to_string()));
        Self {
            status,
            headers,
            body,
            raw: Vec::new(),
            ended: false,
            feed: Some(feed),
            parser: Box::pin(parser),
            parsed: VecDeque::new(),
            framed: 0,
            _conn: conn,
        }
    }

    /// A header's value, if present.
    pub fn header(&self, name: impl AsHeaderName) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    /// Everything received so far.
    pub fn raw(&self) -> String {
        String::from_utf8(self.raw.clone()).expect("the stream is UTF-8")
    }

    /// Whether the body has ended.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Reads one more chunk; `false` once the body has ended.
    async fn pump(&mut self) -> bool {
        if self.ended {
            return false;
        }
        match self.body.next().await {
            Some(Ok(chunk)) => {
                self.raw.extend_from_slice(&chunk);
                if let Some(feed) = &self.feed {
                    feed.send(chunk).expect("parser input open");
                }
            }
            Some(Err(error)) => panic!("body error: {error}"),
            None => {
                self.ended = true;
                self.feed = None;
            }
        }
        // Outside tokio's cooperative budget: the parser reads a tokio
        // channel, and once a task that reads many clients in a row has
        // spent its budget, that read would say "nothing yet" with the
        // bytes queued, and nothing would wake it again.
        while let Some(Some(item)) = tokio::task::unconstrained(self.parser.next()).now_or_never() {
            self.parsed.push_back(item.expect("valid SSE"));
        }
        !self.ended
    }

    /// The next event the parser dispatches (comments and a frame of
    /// `retry:` alone are not events); fails the test if the stream ends
    /// first or nothing comes within [`PATIENCE`](super::wait::PATIENCE).
    pub async fn next_event(&mut self) -> SseEvent {
        within("the next event", async {
            loop {
                if let Some(event) = self.parsed.pop_front() {
                    return event;
                }
                if !self.pump().await {
                    panic!("the stream ended; received so far: {:?}", self.raw());
                }
            }
        })
        .await
    }

    /// The next event of type `kind`, skipping any other.
    pub async fn next_of_type(&mut self, kind: &str) -> SseEvent {
        loop {
            let event = self.next_event().await;
            if event.event == kind {
                return event;
            }
        }
    }

    /// The next `n` events.
    pub async fn events(&mut self, n: usize) -> Vec<SseEvent> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(self.next_event().await);
        }
        events
    }

    /// Reads to the end of the body; returns the events not yet taken.
    pub async fn events_to_end(&mut self) -> Vec<SseEvent> {
        within("the end of the body", async { while self.pump().await {} }).await;
        self.parsed.drain(..).collect()
    }

    /// Every event the parser has dispatched that [`Client::next_event`]
    /// has not taken: for a client read by frames, a second opinion on the
    /// same bytes.
    pub fn dispatched(&self) -> Vec<SseEvent> {
        self.parsed.iter().cloned().collect()
    }

    /// Reads until `condition` holds for the raw text received.
    pub async fn wait_raw(&mut self, what: &str, condition: impl Fn(&str) -> bool) {
        within(what, async {
            while !condition(&self.raw()) {
                if !self.pump().await {
                    assert!(
                        condition(&self.raw()),
                        "the stream ended before {what}: {:?}",
                        self.raw()
                    );
                    return;
                }
            }
        })
        .await;
    }

    /// The whole body as text (for short answers).
    pub async fn text(mut self) -> String {
        self.events_to_end().await;
        self.raw()
    }

    /// The next frame, `None` once the stream has ended cleanly. Fails the
    /// test if the body fails or ends inside a frame, or nothing comes
    /// within [`PATIENCE`](super::wait::PATIENCE).
    pub async fn next_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, len)) = RawFrame::first(&self.raw[self.framed..]) {
                self.framed += len;
                return Some(frame);
            }
            if self.ended {
                assert_eq!(
                    self.framed,
                    self.raw.len(),
                    "the stream ended inside a frame: {:?}",
                    String::from_utf8_lossy(&self.raw[self.framed..])
                );
                return None;
            }
            within("the next SSE bytes", self.pump()).await;
        }
    }

    /// The next frame that is not a keep-alive comment.
    pub async fn next_non_comment(&mut self) -> Option<RawFrame> {
        loop {
            let frame = self.next_frame().await?;
            if !frame.is_comment() {
                return Some(frame);
            }
        }
    }

    /// Reads frames until one satisfies `stop` (returned, with everything
    /// before it); fails the test if the stream ends first.
    pub async fn frames_until(
        &mut self,
        mut stop: impl FnMut(&RawFrame) -> bool,
    ) -> (Vec<RawFrame>, RawFrame) {
        let mut before = Vec::new();
        loop {
            let frame = self
                .next_frame()
                .await
                .unwrap_or_else(|| panic!("the stream ended first; read so far: {before:?}"));
            if stop(&frame) {
                return (before, frame);
            }
            before.push(frame);
        }
    }

    /// Every remaining frame, up to the end of the stream.
    pub async fn frames_to_end(&mut self) -> Vec<RawFrame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next_frame().await {
            frames.push(frame);
        }
        frames
    }
}

/// One SSE frame as it was on the wire: the lines of one block, without
/// the blank line that ends it; or a comment line alone, since keep-alives
/// have no blank line after them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    pub text: String,
}

impl RawFrame {
    /// The frame `bytes` start with, and how many bytes it took; `None` if
    /// it is not complete yet.
    pub fn first(bytes: &[u8]) -> Option<(Self, usize)> {
        let text = |end: usize| String::from_utf8(bytes[..end].to_vec()).expect("UTF-8 stream");
        if bytes.first() == Some(&b':') {
            if let Some(at) = bytes.iter().position(|&b| b == b'\n') {
                return Some((Self { text: text(at) }, at + 1));
            }
        }
        let at = bytes.windows(2).position(|w| w == b"\n\n")?;
        Some((Self { text: text(at) }, at + 2))
    }

    /// `(field, value)` of every line, a comment as `("", text)`.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.text.split('\n').map(|line| {
            if let Some(comment) = line.strip_prefix(':') {
                return ("", comment);
            }
            match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line, ""),
            }
        })
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields().find(|(f, _)| *f == name).map(|(_, v)| v)
    }

    pub fn id(&self) -> Option<&str> {
        self.field("id")
    }

    pub fn event_type(&self) -> Option<&str> {
        self.field("event")
    }

    /// The `data:` lines joined with LF, `None` if there are none.
    pub fn data(&self) -> Option<String> {
        let lines: Vec<&str> = self
            .fields()
            .filter(|(f, _)| *f == "data")
            .map(|(_, v)| v)
            .collect();
        (!lines.is_empty()).then(|| lines.join("\n"))
    }

    pub fn json(&self) -> serde_json::Value {
        let data = self
            .data()
            .unwrap_or_else(|| panic!("frame has no data: {:?}", self.text));
        serde_json::from_str(&data)
            .unwrap_or_else(|e| panic!("frame data is not JSON ({e}): {:?}", self.text))
    }

    pub fn is_comment(&self) -> bool {
        self.fields().all(|(f, _)| f.is_empty())
    }

    pub fn is_state(&self) -> bool {
        self.event_type() == Some("server.state")
    }
}

/// The sequence number of an `EPOCH-SEQ` id.
pub fn seq_of(id: &str) -> u64 {
    id.split_once('-')
        .and_then(|(_, seq)| seq.parse().ok())
        .unwrap_or_else(|| panic!("not an EPOCH-SEQ id: {id:?}"))
}

/// The parsed JSON data of an event.
pub fn json_of(event: &SseEvent) -> serde_json::Value {
    serde_json::from_str(&event.data)
        .unwrap_or_else(|e| panic!("data is not JSON ({e}): {:?}", event.data))
}

/// What a lax client sees: every block that a blank line closes carries a
/// `data:` line. Some clients (Python's `httpx-sse`) report a block without
/// data as an empty `message`, though the standard dispatches nothing.
pub fn assert_every_block_has_data(raw: &str) {
    let mut blocks: Vec<&str> = raw.split("\n\n").collect();
    // After the last blank line: an unfinished block, or nothing.
    blocks.pop();
    for block in blocks {
        assert!(
            block.lines().any(|line| line.starts_with("data:")),
            "a block without data: {block:?} in {raw:?}"
        );
    }
}

/// The raw text with the comment lines (keep-alives) taken out.
pub fn without_comments(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while !rest.is_empty() {
        let (line, tail) = match rest.find('\n') {
            Some(at) => (&rest[..=at], &rest[at + 1..]),
            None => (rest, ""),
        };
        // Keep-alives are comment lines alone, with no blank line after.
        if !line.starts_with(':') {
            out.push_str(line);
        }
        rest = tail;
    }
    out
}
