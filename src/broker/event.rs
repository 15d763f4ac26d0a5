//! What is published: [`Event`], and the [`Topic`]s that
//! decide who receives it.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use std::sync::Arc;

use bytes::Bytes;

/// The topic an [`Event`] goes to when it names none.
pub const DEFAULT_TOPIC: &str = "public";

/// The longest topic name accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;

/// An event to publish: a type, a topic and a UTF-8 payload.
///
/// Nothing is checked until [`Broker::publish`](crate::Broker::publish), which
/// refuses an event type containing CR or LF (it would inject SSE fields), an
/// empty type, a payload that is not UTF-8 and a payload larger than the
/// broker's limit, each with its own [`PublishError`](crate::PublishError).
///
/// ```
/// use tower_sse::{Broker, Event};
///
/// let broker = Broker::new();
/// let id = broker
///     .publish(Event::new("item.created").topic("items").data(r#"{"id":7}"#))
///     .unwrap();
/// assert_eq!(id.seq(), 1);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub(crate) event_type: Option<String>,
    pub(crate) topic: String,
    pub(crate) data: Bytes,
}

impl Event {
    /// An event of type `event_type` on the [default topic](DEFAULT_TOPIC),
    /// with an empty payload.
    ///
    /// The type is what a browser listens for with
    /// `source.addEventListener(type, ...)`; `"message"` is the type that
    /// `source.onmessage` sees, and is written to the wire as no `event:`
    /// line at all.
    pub fn new(event_type: impl Into<String>) -> Self {
        Self {
            event_type: Some(event_type.into()),
            topic: DEFAULT_TOPIC.to_owned(),
            data: Bytes::new(),
        }
    }

    /// An event of the default type `message`, seen by `source.onmessage`.
    pub fn message() -> Self {
        Self {
            event_type: None,
            topic: DEFAULT_TOPIC.to_owned(),
            data: Bytes::new(),
        }
    }

    /// Sends the event to `topic` instead of the default one.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// Sets the payload. It must be UTF-8, which `publish` checks.
    ///
    /// Line breaks in the payload (LF, CR or CRLF) are carried as separate
    /// `data:` lines and arrive at an `EventSource` as LF: a client reads the
    /// payload back exactly, except that CR and CRLF become LF.
    pub fn data(mut self, data: impl Into<Bytes>) -> Self {
        self.data = data.into();
        self
    }

    /// Sets the payload to `value` serialized as JSON.
    ///
    /// ```
    /// # fn main() -> Result<(), serde_json::Error> {
    /// use tower_sse::Event;
    ///
    /// let event = Event::new("count").json(&serde_json::json!({ "n": 3 }))?;
    /// assert_eq!(event.payload(), br#"{"n":3}"#);
    /// # Ok(())
    /// # }
    /// ```
    pub fn json<T: serde::Serialize + ?Sized>(self, value: &T) -> Result<Self, serde_json::Error> {
        let bytes = serde_json::to_vec(value)?;
        Ok(self.data(bytes))
    }

    /// The event type; `"message"` for [`Event::message`].
    pub fn event_type(&self) -> &str {
        self.event_type.as_deref().unwrap_or("message")
    }

    /// The topic name.
    pub fn topic_name(&self) -> &str {
        &self.topic
    }

    /// The payload, as given.
    pub fn payload(&self) -> &[u8] {
        &self.data
    }
}

/// A validated topic name.
///
/// 1 to [`MAX_TOPIC_LEN`] bytes of ASCII letters, digits and `- _ . : / @`.
/// The narrow alphabet keeps names safe to log, to put in URLs and to use as
/// keys in other systems; names starting with `$` are reserved for the
/// broker's system events.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, InvalidTopic> {
        validate_topic(name)?;
        Ok(Self(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn system() -> Self {
        Self(Arc::from(SYSTEM_TOPIC))
    }

    /// A reserved topic other than the system topic: it carries direct
    /// messages only, never retained events.
    pub(crate) fn is_direct_only(&self) -> bool {
        self.0.starts_with('$') && &*self.0 != SYSTEM_TOPIC
    }

    /// A reserved topic, `$` and `name`: no one outside the crate can name
    /// it, so no authorizer can grant it; it carries direct messages only.
    pub(crate) fn reserved(name: &str) -> Self {
        Self(Arc::from(format!("${name}")))
    }
}

/// The reserved topic every subscription watches implicitly.
pub(crate) const SYSTEM_TOPIC: &str = "$system";

fn validate_topic(name: &str) -> Result<(), InvalidTopic> {
    if name.is_empty() || name.len() > MAX_TOPIC_LEN {
        return Err(InvalidTopic(()));
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(InvalidTopic(()))
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for Topic {
    type Err = InvalidTopic;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Topic {
    type Error = InvalidTopic;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

/// A topic name broke the rules of [`Topic`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidTopic(());

impl InvalidTopic {
    pub(crate) fn new() -> Self {
        Self(())
    }
}

impl fmt::Display for InvalidTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a topic is 1 to {MAX_TOPIC_LEN} bytes of ASCII letters, digits and - _ . : / @"
        )
    }
}

impl std::error::Error for InvalidTopic {}

/// The set of topics a subscription watches: sorted, without duplicates,
/// never empty.
///
/// ```
/// use tower_sse::Topics;
///
/// let topics = Topics::parse(["items", "chat", "items"]).unwrap();
/// assert_eq!(topics.len(), 2);
/// assert!(Topics::parse(["bad topic"]).is_err());
/// assert!(Topics::parse(Vec::<&str>::new()).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Topics(Vec<Topic>);

impl Topics {
    /// Validates every name; an empty list is refused too, since a
    /// subscription to nothing is almost certainly a mistake.
    pub fn parse<I, S>(names: I) -> Result<Self, InvalidTopic>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let topics = names
            .into_iter()
            .map(|name| Topic::new(name.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_topics(topics)
    }

    /// Builds the set from topics already validated.
    pub fn from_topics(topics: impl IntoIterator<Item = Topic>) -> Result<Self, InvalidTopic> {
        let mut topics: Vec<Topic> = topics.into_iter().collect();
        topics.sort();
        topics.dedup();
        if topics.is_empty() {
            return Err(InvalidTopic(()));
        }
        Ok(Self(topics))
    }

    /// These topics plus `extra` (which may be a reserved topic).
    pub(crate) fn with(&self, extra: Topic) -> Self {
        let mut topics = self.0.clone();
        if let Err(at) = topics.binary_search(&extra) {
            topics.insert(at, extra);
        }
        Self(topics)
    }

    /// Just the one topic.
    pub fn one(topic: Topic) -> Self {
        Self(vec![topic])
    }

    /// How many topics.
    #[allow(clippy::len_without_is_empty)] // never empty by construction
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `name` is one of them.
    pub fn contains(&self, name: &str) -> bool {
        self.0.binary_search_by(|t| t.as_str().cmp(name)).is_ok()
    }

    /// The topics, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Topic> {
        self.0.iter()
    }
}

impl From<Topic> for Topics {
    fn from(topic: Topic) -> Self {
        Self::one(topic)
    }
}

impl<'a> IntoIterator for &'a Topics {
    type Item = &'a Topic;
    type IntoIter = std::slice::Iter<'a, Topic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}
