use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Method, Request, Response};
use tower_service::Service;

use super::authorize::{Grant, Rejection};
use super::body::{EventStream, ResponseBody};
use super::future::ResponseFuture;
use super::layer::Config;
use super::streams::StreamSlot;
use crate::broker::{Resumed, Topics};
use crate::metrics::http_status::Status;
use crate::response::{method_not_allowed, with_retry_after};
use crate::wire;

/// Longest `Last-Event-ID` looked at; anything longer cannot be an id and
/// is treated as malformed without being copied.
const MAX_ID_LEN: usize = 64;

/// The service made by [`SseLayer`](crate::SseLayer): answers the events
/// route itself and hands every other request to `inner`.
#[derive(Clone)]
pub struct Sse<S> {
    inner: S,
    /// Shared: a server clones the service for every connection, and its
    /// task keeps the clone as long as the connection lasts.
    config: Arc<Config>,
}

impl<S> Sse<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Sse<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if request.uri().path() != &*self.config.path {
            return ResponseFuture::future(self.inner.call(request));
        }
        let (parts, _body) = request.into_parts();
        ResponseFuture::answer(self.config.respond(&parts))
    }
}

impl Config {
    /// The whole answer of the events route. Every refusal is a clear
    /// status or a short stream; nothing here can panic or answer 500.
    pub(crate) fn respond<B>(&self, parts: &Parts) -> Response<ResponseBody<B>> {
        if parts.method != Method::GET && parts.method != Method::HEAD {
            tracing::debug!(method = %parts.method, "events request refused: method");
            crate::metrics::refused(Status::of(405));
            return method_not_allowed("GET, HEAD").map(ResponseBody::full);
        }
        let grant = match self.authorizer.authorize(parts) {
            Ok(grant) => grant,
            Err(rejection) => return refusal(rejection),
        };
        if grant.topics().len() > self.max_topics {
            return refusal(Rejection::bad_request(format!(
                "at most {} topics per connection",
                self.max_topics
            )));
        }
        // A hook takes part in the streams of named clients.
        let hooked = match (&self.hook, grant.client_id()) {
            (Some(hook), Some(client)) => match hook.topic(client) {
                Ok(topic) => Some((hook, client, topic)),
                Err(rejection) => {
                    tracing::warn!(%rejection, "the stream hook refused the client");
                    return refusal(rejection);
                }
            },
            _ => None,
        };
        if parts.method == Method::HEAD {
            return stream_response(ResponseBody::full(Bytes::new()));
        }
        let Some(slot) = StreamSlot::acquire(&self.streams, self.max_connections) else {
            tracing::debug!("events route over its connection limit");
            crate::metrics::backoff("over_capacity");
            let response = self.busy(b":over capacity\n");
            return with_retry_after(response, self.busy_retry);
        };
        let resume = resume_from(parts);
        let topics = match hooked.as_ref().and_then(|(_, _, topic)| topic.clone()) {
            Some(topic) => grant.topics().with(topic),
            None => grant.topics().clone(),
        };
        let subscription = match self.broker.subscribe(&topics, resume.id.as_deref()) {
            Ok(subscription) => subscription,
            // Closed: the same final frame the open streams got, else a back-off.
            Err(_closed) => match self.broker.close_frame() {
                Some(frame) => return stream_response(ResponseBody::full(frame)),
                None => {
                    crate::metrics::backoff("closed");
                    return self.busy(b":shutting down\n");
                }
            },
        };
        // After subscribing, so that nothing the hook sends from now on can
        // miss this stream.
        let resumed = subscription.resumed();
        let span = stream_span(&grant, resumed);
        let (outcome, replayed) = match resumed {
            Resumed::Live => ("live", 0),
            Resumed::Replay { events } => ("replay", events),
            Resumed::Resync(_) => ("resync", 0),
        };
        crate::metrics::stream_started(outcome, replayed);
        let header = resume.id.as_deref().filter(|_| resume.from_header);
        let guard = hooked.map(|(hook, client, _)| hook.opened(client, &subscription, header));
        self.streams
            .ensure_ticker(&self.broker, self.keep_alive, self.coalesce);
        let first = wire::retry_frame(self.retry.as_millis().try_into().unwrap_or(u64::MAX));
        stream_response(ResponseBody::events(EventStream::new(
            subscription,
            first,
            self.max_batch_bytes,
            self.coalesce,
            slot,
            guard,
            span,
        )))
    }

    /// A short `200` stream: a `retry:` back-off and a comment, then the end.
    /// A browser's `EventSource` reconnects after the delay, where a 503
    /// would make it give up for good.
    fn busy<B>(&self, comment: &'static [u8]) -> Response<ResponseBody<B>> {
        let retry = wire::retry_frame(self.busy_retry.as_millis().try_into().unwrap_or(u64::MAX));
        let mut body = Vec::with_capacity(retry.len() + comment.len());
        body.extend_from_slice(&retry);
        body.extend_from_slice(comment);
        stream_response(ResponseBody::full(Bytes::from(body)))
    }
}

/// Where a client resumes from, and whether its browser said so.
struct Resume {
    id: Option<String>,
    /// The id came in the `Last-Event-ID` header, which an `EventSource`
    /// sets only from ids it received on its own stream. A `lastEventId`
    /// query parameter is whatever the page was handed (e.g. an id rendered
    /// with the page), which proves nothing about what this client received.
    from_header: bool,
}

/// The client's position: the `Last-Event-ID` header, else the
/// `lastEventId` query parameter (browsers cannot set headers on their first
/// connect). Bytes that cannot be an id become the empty string, which the
/// broker answers with a resync.
fn resume_from(parts: &Parts) -> Resume {
    fn bounded(value: &str) -> String {
        if value.len() > MAX_ID_LEN {
            String::new()
        } else {
            value.to_owned()
        }
    }
    if let Some(value) = parts.headers.get("last-event-id") {
        let text = std::str::from_utf8(value.as_bytes()).unwrap_or_default();
        return Resume {
            id: Some(bounded(text)),
            from_header: true,
        };
    }
    let id = parts.uri.query().and_then(|query| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == "lastEventId")
            .map(|(_, value)| bounded(&value))
    });
    Resume {
        id,
        from_header: false,
    }
}

fn stream_response<B>(body: ResponseBody<B>) -> Response<ResponseBody<B>> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn refusal<B>(rejection: Rejection) -> Response<ResponseBody<B>> {
    tracing::debug!(%rejection, "events request refused");
    crate::metrics::refused(Status::of(rejection.status().as_u16()));
    rejection.into_response().map(ResponseBody::full)
}

/// Topic names recorded on a stream's span, at most; the count is always
/// there.
const SPAN_TOPIC_NAMES: usize = 8;

/// The span a stream's events are recorded in: its topics, client and how
/// it started. What the broker reads for it (a lag, a resync) is reported
/// in it too.
fn stream_span(grant: &Grant, resumed: Resumed) -> tracing::Span {
    let span = tracing::info_span!(
        "sse_stream",
        topics = grant.topics().len(),
        topic_names = %TopicNames(grant.topics()),
        client = tracing::field::Empty,
        resume = %ResumedField(resumed),
    );
    if let Some(client) = grant.client_id() {
        span.record("client", client);
    }
    span
}

/// The first [`SPAN_TOPIC_NAMES`] topics, comma-separated, then how many
/// more.
struct TopicNames<'a>(&'a Topics);

impl fmt::Display for TopicNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, topic) in self.0.iter().take(SPAN_TOPIC_NAMES).enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(topic.as_str())?;
        }
        let more = self.0.len().saturating_sub(SPAN_TOPIC_NAMES);
        if more > 0 {
            write!(f, ",+{more} more")?;
        }
        Ok(())
    }
}

/// `live`, `replayed N` or `resync: REASON`.
struct ResumedField(Resumed);

impl fmt::Display for ResumedField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Resumed::Live => f.write_str("live"),
            Resumed::Replay { events } => write!(f, "replayed {events}"),
            Resumed::Resync(reason) => write!(f, "resync: {}", reason.as_str()),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Sse<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sse")
            .field("inner", &self.inner)
            .field("path", &self.config.path)
            .finish_non_exhaustive()
    }
}
