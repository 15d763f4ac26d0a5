//! Coalescing windows, the broker's side of write coalescing: a stream of
//! the events route that just wrote opens a window during which publishes
//! do not wake it; when the window ends, a stream that was published to
//! meanwhile is woken and writes it all at once. Whether streams open
//! windows at all is the events route's decision (`sse::coalesce`); who
//! ends them on time is its ticker, which parks here while none is open.
//!
//! The state lives under the broker's lock with the rest, so that a publish
//! racing the end of a window cannot lose its wake-up (a loom model checks
//! it).

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use slab::Slab;

use super::state::SubSlot;

/// The open windows, and whoever ends them.
#[derive(Debug, Default)]
pub(crate) struct Windows {
    /// Streams in their window, with the window's end, in that order
    /// (every window has the same length).
    open: VecDeque<(Duration, usize)>,
    /// Whoever ends the windows, parked while none is open.
    ender: Option<Waker>,
}

impl Windows {
    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Opens the window of the stream `key`, which just wrote, until
    /// `until`. Returns the parked ender's waker, for the caller to wake
    /// once it has let go of the lock.
    pub(crate) fn open(
        &mut self,
        subs: &mut Slab<SubSlot>,
        key: usize,
        until: Duration,
    ) -> Option<Waker> {
        let slot = &mut subs[key];
        if !slot.in_window {
            slot.in_window = true;
            self.open.push_back((until, key));
        }
        self.ender.take()
    }

    /// Ends every window that is over, taking the wakers of the streams
    /// that were published to meanwhile.
    pub(crate) fn end(&mut self, subs: &mut Slab<SubSlot>, now: Duration, out: &mut Vec<Waker>) {
        while let Some(&(until, key)) = self.open.front() {
            if until > now {
                break;
            }
            self.open.pop_front();
            // The key may have been freed and reused since; ending the window
            // of whatever holds it now early only costs a write.
            let Some(slot) = subs.get_mut(key) else {
                continue;
            };
            slot.in_window = false;
            if std::mem::take(&mut slot.woken_in_window) {
                if let Some(waker) = slot.waker.take() {
                    out.push(waker);
                }
            }
        }
    }

    /// Ready while a window is open; otherwise parks `cx`'s task until one
    /// opens.
    pub(crate) fn poll_open(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.open.is_empty() {
            return Poll::Ready(());
        }
        match &mut self.ender {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The parked ender, to wake at close.
    pub(crate) fn take_ender(&mut self) -> Option<Waker> {
        self.ender.take()
    }
}
