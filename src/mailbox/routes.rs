//! HTTP routes for notification status, replies and acknowledgements.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use tower_layer::Layer;
use tower_service::Service;

use super::{MailboxStore, ReplyError, TraceId, Unavailable};
use crate::response::{json, json_error as error, method_not_allowed, with_retry_after};
pub use crate::response::{ResponseBody, ResponseFuture};

type Identify = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// Serves a mailbox's routes (a [`Mailbox`](super::Mailbox), or any
/// [`MailboxStore`]) and passes every other request on:
///
/// | route | who | answers |
/// |---|---|---|
/// | `GET {prefix}/{trace}` | its sender or its target | `200` status JSON ([`Status`](super::Status)) |
/// | `POST {prefix}/{trace}/reply` with a JSON body | its target | `200` status JSON |
/// | `POST {prefix}/{trace}/ack` | its target | `204`: marks it delivered |
///
/// The prefix defaults to `/notifications`. Identity comes from the app:
/// [`identify`](MailboxLayer::identify) reads it from the request (from
/// the extensions your auth middleware set), never from anything the client
/// may choose. No identity → `401`. A trace that is unknown, purged, or not
/// the caller's → `404` alike, so that traces cannot be probed. A reply body
/// over the mailbox's payload limit → `413`; not JSON → `400`; a second
/// reply → `409`; a reply to a notification expecting none → `409`; after
/// expiry → `410` (`404` once the expired notification is purged). Mount [`RequireWritableLayer`](crate::RequireWritableLayer)
/// outside it to refuse replies while the server is read-only.
///
/// ```
/// use http::request::Parts;
/// use tower_sse::mailbox::{Mailbox, MailboxLayer};
/// use tower_sse::Broker;
///
/// #[derive(Clone)]
/// struct User(String);
///
/// let mailbox = Mailbox::new(Broker::new());
/// let layer = MailboxLayer::new(mailbox)
///     .identify(|parts: &Parts| parts.extensions.get::<User>().map(|u| u.0.clone()));
/// ```
#[derive(Clone)]
#[must_use]
pub struct MailboxLayer {
    mailbox: Arc<dyn MailboxStore>,
    identify: Identify,
    prefix: Arc<str>,
}

impl MailboxLayer {
    /// Serves `mailbox`'s routes under `/notifications`, with no identity
    /// (every request gets `401`) until [`identify`](MailboxLayer::identify).
    /// The mailbox is a [`Mailbox`](super::Mailbox) or a `RedisMailbox`
    /// (any [`MailboxStore`]); with one kept in Redis, a route that cannot
    /// reach it answers `503` with `Retry-After`.
    pub fn new(mailbox: impl MailboxStore) -> Self {
        Self::shared(Arc::new(mailbox))
    }

    /// The same, for a store already shared.
    pub fn shared(mailbox: Arc<dyn MailboxStore>) -> Self {
        Self {
            mailbox,
            identify: Arc::new(|_| None),
            prefix: Arc::from("/notifications"),
        }
    }

    /// Reads the caller's client id from the request.
    pub fn identify<F>(mut self, identify: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.identify = Arc::new(identify);
        self
    }

    /// Serves the routes under `prefix` instead (no trailing slash).
    pub fn prefix(mut self, prefix: impl AsRef<str>) -> Self {
        self.prefix = Arc::from(prefix.as_ref().trim_end_matches('/'));
        self
    }

    /// `(trace, action)` if `path` is one of the routes.
    fn route<'a>(&self, path: &'a str) -> Option<(&'a str, Action)> {
        let rest = path.strip_prefix(&*self.prefix)?.strip_prefix('/')?;
        match rest.split_once('/') {
            None => Some((rest, Action::Status)),
            Some((trace, "reply")) => Some((trace, Action::Reply)),
            Some((trace, "ack")) => Some((trace, Action::Ack)),
            Some(_) => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Status,
    Reply,
    Ack,
}

impl<S> Layer<S> for MailboxLayer {
    type Service = MailboxRoutes<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MailboxRoutes {
            inner,
            layer: self.clone(),
        }
    }
}

impl fmt::Debug for MailboxLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxLayer")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The service made by [`MailboxLayer`].
#[derive(Clone)]
pub struct MailboxRoutes<S> {
    inner: S,
    layer: MailboxLayer,
}

impl<S: fmt::Debug> fmt::Debug for MailboxRoutes<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxRoutes")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

fn not_found() -> Response<Bytes> {
    error(StatusCode::NOT_FOUND, "no such notification")
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for MailboxRoutes<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: http_body::Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let Some((trace, action)) = self.layer.route(request.uri().path()) else {
            return ResponseFuture::future(self.inner.call(request));
        };
        let answer = |response: Response<Bytes>| ResponseFuture::answer(response);
        let trace = TraceId::parse(trace);
        let (parts, body) = request.into_parts();
        let method = &parts.method;
        match action {
            Action::Status if method != Method::GET && method != Method::HEAD => {
                return answer(method_not_allowed("GET, HEAD"));
            }
            Action::Reply | Action::Ack if method != Method::POST => {
                return answer(method_not_allowed("POST"));
            }
            _ => {}
        }
        let Some(client) = (self.layer.identify)(&parts) else {
            return answer(error(StatusCode::UNAUTHORIZED, "who is asking?"));
        };
        let Some(trace) = trace else {
            return answer(not_found());
        };
        let mailbox = self.layer.mailbox.clone();
        ResponseFuture::later(match action {
            Action::Status => Box::pin(async move {
                match mailbox.status_for(&trace, &client).await {
                    Ok(Some(status)) => json(StatusCode::OK, &serde_json::json!(status)),
                    Ok(None) => not_found(),
                    Err(e) => unavailable(&e),
                }
            }),
            Action::Ack => Box::pin(async move {
                match mailbox.ack(&trace, &client).await {
                    Ok(true) => {
                        let mut response = Response::new(Bytes::new());
                        *response.status_mut() = StatusCode::NO_CONTENT;
                        response
                    }
                    Ok(false) => not_found(),
                    Err(e) => unavailable(&e),
                }
            }),
            Action::Reply => Box::pin(reply(mailbox, trace, client, body)),
        })
    }
}

/// `503` with `Retry-After`: the mailbox's store did not answer.
fn unavailable(e: &Unavailable) -> Response<Bytes> {
    tracing::warn!(error = %e, "a mailbox route could not reach its store");
    with_retry_after(
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the mailbox is unavailable, try again later",
        ),
        e.retry_after(),
    )
}

async fn reply<ReqBody>(
    mailbox: Arc<dyn MailboxStore>,
    trace: TraceId,
    client: String,
    body: ReqBody,
) -> Response<Bytes>
where
    ReqBody: http_body::Body,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Refuse what is not the caller's before reading a byte of the body.
    match mailbox.is_target(&trace, &client).await {
        Ok(true) => {}
        Ok(false) => return not_found(),
        Err(e) => return unavailable(&e),
    }
    let limit = mailbox.max_payload();
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a reply is at most {limit} bytes"),
            )
        }
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            )
        }
    };
    let payload: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(value) => value,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the reply must be JSON: {e}"),
            )
        }
    };
    match mailbox.reply(&trace, &client, payload).await {
        Ok(status) => json(StatusCode::OK, &serde_json::json!(status)),
        Err(ReplyError::NotFound | ReplyError::NotTarget) => not_found(),
        Err(e @ (ReplyError::AlreadyReplied | ReplyError::NoReplyExpected)) => {
            error(StatusCode::CONFLICT, e)
        }
        Err(e @ ReplyError::Expired) => error(StatusCode::GONE, e),
        Err(e @ ReplyError::TooLarge { .. }) => error(StatusCode::PAYLOAD_TOO_LARGE, e),
        Err(ReplyError::Full { retry_after }) => with_retry_after(
            error(
                StatusCode::INSUFFICIENT_STORAGE,
                "the mailbox has no room for this reply",
            ),
            retry_after,
        ),
        Err(e @ ReplyError::Payload(_)) => error(StatusCode::BAD_REQUEST, e),
        Err(ReplyError::Unavailable(e)) => unavailable(&e),
    }
}
