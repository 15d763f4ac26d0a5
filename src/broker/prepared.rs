//! Publishing in two steps: [`Prepared::new`] checks and encodes an event
//! outside the broker's lock, [`Prepared::stamp`] gives it its id inside.

use std::time::Duration;

use bytes::Bytes;

use super::event::{Event, Topic};
use super::state::Entry;
use super::PublishError;
use crate::wire::{self, EventId, RESERVED_EVENT_TYPES};

/// Fixed per-entry bookkeeping counted against the byte bound, so that a
/// flood of empty events is bounded too.
const ENTRY_OVERHEAD: usize = 64;

/// Who is publishing: the app, or the crate itself, which alone may use
/// the [event types it speaks](RESERVED_EVENT_TYPES) and is not held to the
/// app's payload limit (its own events are bounded where they are made).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    App,
    Crate,
}

/// An event checked and encoded, waiting for its id.
#[derive(Debug)]
pub(crate) struct Prepared {
    event_type: Option<Box<str>>,
    data: Bytes,
    /// The payload has no line break: its bytes are a slice of the frame.
    single_line: bool,
    /// `event:` and `data:` lines after [`wire::ID_HEADROOM`] free bytes.
    body: Vec<u8>,
    cost: usize,
}

impl Prepared {
    /// Checks `event` (type, size, UTF-8) and encodes its frame but for
    /// the id.
    pub(crate) fn new(
        event: Event,
        origin: Origin,
        max_event_bytes: usize,
        max_retained_bytes: usize,
    ) -> Result<Self, PublishError> {
        let Event {
            event_type, data, ..
        } = event;
        if let Some(t) = &event_type {
            if t.is_empty() {
                return Err(PublishError::EmptyEventType);
            }
            if t.contains(['\r', '\n']) {
                return Err(PublishError::InvalidEventType);
            }
            if origin == Origin::App && RESERVED_EVENT_TYPES.contains(&t.as_str()) {
                return Err(PublishError::ReservedEventType);
            }
        }
        // The type travels in every frame too: it counts, or a megabyte
        // type would slip past the limit.
        let size = data.len() + event_type.as_ref().map_or(0, String::len);
        if origin == Origin::App && size > max_event_bytes {
            return Err(PublishError::TooLarge {
                size,
                limit: max_event_bytes,
            });
        }
        let text = std::str::from_utf8(&data).map_err(|e| PublishError::NotUtf8 {
            valid_up_to: e.valid_up_to(),
        })?;
        let single_line = !text.contains(['\r', '\n']);
        let body = wire::encode_body(event_type.as_deref(), text);
        let cost = body.len() + ENTRY_OVERHEAD + if single_line { 0 } else { data.len() };
        if cost > max_retained_bytes {
            // Report the size that would fit with this event's framing.
            return Err(PublishError::TooLarge {
                size,
                limit: max_retained_bytes.saturating_sub(cost - size),
            });
        }
        Ok(Self {
            event_type: event_type
                .filter(|t| t != "message")
                .map(String::into_boxed_str),
            data,
            single_line,
            body,
            cost,
        })
    }

    /// Writes the id into the frame: the entry as readers see it.
    pub(crate) fn stamp(
        self,
        epoch: u64,
        seq: u64,
        at: Duration,
        topic_key: usize,
        topic: Topic,
    ) -> Entry {
        let body_len = self.body.len() - wire::ID_HEADROOM;
        let frame = wire::stamp_id(self.body, EventId::new(epoch, seq));
        let data = if self.single_line {
            // The frame ends with `data: PAYLOAD\n\n`: share it.
            let end = frame.len() - 2;
            frame.slice(end - self.data.len()..end)
        } else {
            self.data
        };
        Entry {
            seq,
            at,
            topic_key,
            topic,
            event_type: self.event_type,
            data,
            id_line: frame.len() - body_len,
            frame,
            cost: self.cost,
        }
    }
}
