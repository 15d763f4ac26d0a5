//! What the streams of one [`SseLayer`](crate::SseLayer) share: how many
//! are open, what they are writing, whether they coalesce, and the one
//! ticker that serves them all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::coalesce::{busy_clock, Coalesce, Coalescing};
use super::ticker::Ticker;
use crate::broker::Broker;

/// The state shared by every service made from one layer, and by their
/// streams.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    /// Streams open now.
    pub(crate) open: AtomicUsize,
    /// Bytes of the frames the streams last handed to their servers: what
    /// the servers are writing (see `SseLayer::in_flight_bytes`).
    pub(crate) in_flight: AtomicUsize,
    pub(crate) coalescing: Coalescing,
    ticker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Streams {
    /// Makes sure one task ticks `broker` for keep-alives and coalescing
    /// windows. Started lazily, on the runtime of the first stream, and
    /// again if that runtime went away; it stops once the broker or the
    /// layer is gone.
    pub(crate) fn ensure_ticker(
        self: &Arc<Self>,
        broker: &Broker,
        keep_alive: Option<Duration>,
        coalesce: Option<Coalesce>,
    ) {
        if keep_alive.is_none() && coalesce.is_none() {
            return;
        }
        let mut ticker = self.ticker.lock().unwrap_or_else(|e| e.into_inner());
        if ticker.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let busy_clock = match coalesce {
            Some(Coalesce { always: false, .. }) => {
                let clock = busy_clock(&handle);
                // Without the runtime's busy time, coalesce as before.
                self.coalescing.switch(clock.is_none());
                clock
            }
            Some(Coalesce { always: true, .. }) => {
                crate::metrics::coalescing(true);
                None
            }
            None => None,
        };
        let task = Ticker::new(
            broker.downgrade(),
            Arc::downgrade(self),
            keep_alive,
            coalesce,
            busy_clock,
        );
        *ticker = task.map(|task| handle.spawn(task.run()));
    }
}

/// A place among the open streams, under the layer's limit if it has one,
/// given back on drop; and the bytes of the frame its stream last handed
/// out.
#[derive(Debug)]
pub(crate) struct StreamSlot {
    streams: Arc<Streams>,
    writing: usize,
}

impl StreamSlot {
    /// A place, unless `limit` streams are open already.
    pub(crate) fn acquire(streams: &Arc<Streams>, limit: Option<usize>) -> Option<Self> {
        let previous = streams.open.fetch_add(1, Ordering::AcqRel);
        if limit.is_some_and(|limit| previous >= limit) {
            streams.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self {
            streams: streams.clone(),
            writing: 0,
        })
    }

    pub(crate) fn streams(&self) -> &Streams {
        &self.streams
    }

    /// The stream handed out a frame of `bytes`, in place of the one before
    /// (a server asks a body for its next frame once it is done with the
    /// previous one, or holds a few: hyper's queue).
    pub(crate) fn writing(&mut self, bytes: usize) {
        if bytes != self.writing {
            let in_flight = &self.streams.in_flight;
            in_flight.fetch_add(bytes, Ordering::Relaxed);
            in_flight.fetch_sub(self.writing, Ordering::Relaxed);
            self.writing = bytes;
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.writing(0);
        self.streams.open.fetch_sub(1, Ordering::AcqRel);
    }
}
