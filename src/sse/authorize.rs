//! Who may watch what: the authorizer decides a connection's topics from
//! the request, before anything is replayed.

use std::borrow::Cow;
use std::fmt;

use http::request::Parts;
use http::StatusCode;

use crate::broker::{Topic, Topics, DEFAULT_TOPIC};

/// What a connection is allowed to receive, as decided by an [`Authorize`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    topics: Topics,
    client: Option<String>,
}

impl Grant {
    /// Grants `topics`.
    pub fn new(topics: Topics) -> Self {
        Self {
            topics,
            client: None,
        }
    }

    /// Names the connection's client, from the app's own authentication:
    /// with a [`Mailbox`](crate::mailbox::Mailbox) on the layer, the stream
    /// then carries that client's notifications.
    ///
    /// ```
    /// use http::request::Parts;
    /// use tower_sse::{Grant, Rejection, Topics};
    ///
    /// #[derive(Clone)]
    /// struct User(String);
    ///
    /// fn authorize(parts: &Parts) -> Result<Grant, Rejection> {
    ///     let user = parts.extensions.get::<User>().ok_or_else(|| Rejection::unauthorized("log in"))?;
    ///     Ok(Grant::new(Topics::parse(["public"]).unwrap()).client(user.0.clone()))
    /// }
    /// ```
    pub fn client(mut self, id: impl Into<String>) -> Self {
        self.client = Some(id.into());
        self
    }

    /// The topics granted.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The client, if named.
    pub fn client_id(&self) -> Option<&str> {
        self.client.as_deref()
    }
}

impl From<Topics> for Grant {
    fn from(topics: Topics) -> Self {
        Self::new(topics)
    }
}

impl From<Topic> for Grant {
    fn from(topic: Topic) -> Self {
        Self::new(Topics::one(topic))
    }
}

/// Decides, from the request, what a connection may watch.
///
/// Runs before the response starts and before anything is replayed, with
/// the request's head only: read the app's own authentication from the
/// extensions your auth middleware put there, and the requested topics with
/// [`requested_topics`]. Implemented for every
/// `Fn(&Parts) -> Result<impl Into<Grant>, Rejection>`.
///
/// ```
/// use http::request::Parts;
/// use tower_sse::sse::requested_topics;
/// use tower_sse::{Broker, Rejection, SseLayer, Topics};
///
/// #[derive(Clone)]
/// struct User { admin: bool }
///
/// fn topics_for_user(parts: &Parts) -> Result<Topics, Rejection> {
///     let user = parts.extensions.get::<User>().ok_or_else(|| Rejection::unauthorized("log in first"))?;
///     let wanted = requested_topics(parts)?.unwrap_or(Topics::parse(["public"]).unwrap());
///     if wanted.contains("admin") && !user.admin {
///         return Err(Rejection::forbidden("the admin topic is for admins"));
///     }
///     Ok(wanted)
/// }
///
/// let layer = SseLayer::new(Broker::new()).authorize(topics_for_user);
/// ```
pub trait Authorize: Send + Sync + 'static {
    /// The grant for this request, or the answer refusing it.
    fn authorize(&self, request: &Parts) -> Result<Grant, Rejection>;
}

impl<F, G> Authorize for F
where
    F: Fn(&Parts) -> Result<G, Rejection> + Send + Sync + 'static,
    G: Into<Grant>,
{
    fn authorize(&self, request: &Parts) -> Result<Grant, Rejection> {
        self(request).map(Into::into)
    }
}

/// The default authorizer: the [default topic](DEFAULT_TOPIC) only.
///
/// A request naming any other topic (`?topic=...`) is refused with 403, so
/// that mounting the layer exposes nothing that was not meant to be public.
pub fn public_only(request: &Parts) -> Result<Grant, Rejection> {
    match requested_topics(request)? {
        None => Ok(public().into()),
        Some(topics) if topics.iter().all(|t| t.as_str() == DEFAULT_TOPIC) => Ok(topics.into()),
        Some(_) => Err(Rejection::forbidden("only the public topic is served here")),
    }
}

/// An authorizer granting whatever topics the request names
/// (`?topic=a&topic=b`), or the [default topic](DEFAULT_TOPIC) when it names
/// none. Only for data that is public in every topic.
pub fn any_topic(request: &Parts) -> Result<Grant, Rejection> {
    Ok(requested_topics(request)?.unwrap_or_else(public).into())
}

fn public() -> Topics {
    Topics::one(Topic::new(DEFAULT_TOPIC).expect("the default topic is valid"))
}

/// The topics a request asks for with repeated `topic` query parameters;
/// `None` if it names none.
///
/// A name that is not a valid [`Topic`] is a 400 [`Rejection`]. Query
/// strings are percent-decoded first (`topic=room%2F1` is `room/1`).
pub fn requested_topics(request: &Parts) -> Result<Option<Topics>, Rejection> {
    let Some(query) = request.uri.query() else {
        return Ok(None);
    };
    let mut topics = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == "topic" {
            let topic = Topic::new(&value).map_err(|e| Rejection::bad_request(e.to_string()))?;
            topics.push(topic);
        }
    }
    if topics.is_empty() {
        return Ok(None);
    }
    Topics::from_topics(topics)
        .map(Some)
        .map_err(|e| Rejection::bad_request(e.to_string()))
}

/// A refusal of an events request: a status and a message, answered as
/// `{"error": message}`.
///
/// Any answer but 200 makes a browser's `EventSource` stop for good (it
/// only reconnects after a 200 stream ends), which is right for a request
/// that will never succeed: 400 for a malformed request, 401 or 403 for one
/// not allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    status: StatusCode,
    message: Cow<'static, str>,
}

impl Rejection {
    /// A refusal with any status. A success status is replaced by 403: a
    /// refusal must not look like the start of a stream to a client.
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        let status = if status.is_success() {
            StatusCode::FORBIDDEN
        } else {
            status
        };
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400: the request is malformed (a bad topic name, too many topics).
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401: the request carries no acceptable credentials.
    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403: the caller may not watch what it asked for.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// The status answered.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message answered.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn into_response(self) -> http::Response<bytes::Bytes> {
        crate::response::json(self.status, &serde_json::json!({ "error": self.message }))
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for Rejection {}
