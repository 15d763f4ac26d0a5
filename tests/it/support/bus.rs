//! An in-memory pub/sub bus as an [`Upstream`]: a topic is a channel, a
//! publish reaches the channel's subscriptions open at that moment and is
//! lost otherwise, as on Redis pub/sub. It records what the hub did to it
//! (opens, attempts and when, how many subscriptions of a channel were open
//! at once) and lets a test make opens fail or hang, and break or end the
//! open subscriptions.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower_sse::upstream::Upstream;
use tower_sse::{Event, Topic};

/// Why a bus subscription failed.
#[derive(Debug)]
pub struct BusError(pub &'static str);

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

type Item = Result<Event, BusError>;

#[derive(Default)]
struct State {
    /// Open subscriptions per channel: their key and sender.
    open: HashMap<String, Vec<(u64, mpsc::UnboundedSender<Item>)>>,
    /// The most subscriptions of one channel open at once.
    peak: HashMap<String, usize>,
    /// When each open was attempted.
    attempts: HashMap<String, Vec<Instant>>,
    /// Opens to fail, per channel.
    failing: HashMap<String, usize>,
    /// Channels whose opens never complete.
    hanging: HashSet<String>,
    next_key: u64,
}

/// The bus; clones share it.
#[derive(Clone, Default)]
pub struct Bus {
    state: Arc<Mutex<State>>,
}

impl Bus {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Publishes `data` (as an event of type `message`) on `channel`;
    /// returns how many subscriptions it reached.
    pub fn publish(&self, channel: &str, data: impl Into<bytes::Bytes>) -> usize {
        let data = data.into();
        let state = self.state();
        let subs = state.open.get(channel).map(Vec::as_slice).unwrap_or(&[]);
        subs.iter()
            .filter(|(_, tx)| tx.send(Ok(Event::message().data(data.clone()))).is_ok())
            .count()
    }

    /// Subscriptions of `channel` open now.
    pub fn open_now(&self, channel: &str) -> usize {
        self.state().open.get(channel).map_or(0, Vec::len)
    }

    /// Subscriptions open now, every channel.
    pub fn open_total(&self) -> usize {
        self.state().open.values().map(Vec::len).sum()
    }

    /// The most subscriptions of `channel` that were ever open at once.
    pub fn peak(&self, channel: &str) -> usize {
        self.state().peak.get(channel).copied().unwrap_or(0)
    }

    /// The most subscriptions of any one channel ever open at once.
    pub fn peak_any(&self) -> usize {
        self.state().peak.values().copied().max().unwrap_or(0)
    }

    /// When each open of `channel` was attempted, failed ones included.
    pub fn attempts(&self, channel: &str) -> Vec<Instant> {
        self.state()
            .attempts
            .get(channel)
            .cloned()
            .unwrap_or_default()
    }

    /// The next `n` opens of `channel` fail.
    pub fn fail_opens(&self, channel: &str, n: usize) {
        self.state().failing.insert(channel.to_owned(), n);
    }

    /// Opens of `channel` never complete.
    pub fn hang_opens(&self, channel: &str) {
        self.state().hanging.insert(channel.to_owned());
    }

    /// Every open subscription of `channel` yields an error.
    pub fn break_channel(&self, channel: &str) {
        let state = self.state();
        for (_, tx) in state.open.get(channel).map(Vec::as_slice).unwrap_or(&[]) {
            let _ = tx.send(Err(BusError("the bus broke")));
        }
    }

    /// Every open subscription of `channel` ends.
    pub fn end_channel(&self, channel: &str) {
        if let Some(subs) = self.state().open.get_mut(channel) {
            // The receivers see the end; their drop unregisters them.
            for (_, tx) in subs.iter_mut() {
                let (dead, _) = mpsc::unbounded_channel();
                *tx = dead;
            }
        }
    }
}

/// One open subscription; unregisters when dropped.
pub struct BusStream {
    rx: mpsc::UnboundedReceiver<Item>,
    channel: String,
    key: u64,
    bus: Bus,
}

impl Stream for BusStream {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

impl Drop for BusStream {
    fn drop(&mut self) {
        if let Some(subs) = self.bus.state().open.get_mut(&self.channel) {
            subs.retain(|(key, _)| *key != self.key);
        }
    }
}

impl Upstream for Bus {
    type Stream = BusStream;
    type Error = BusError;

    fn open(
        &self,
        topic: &Topic,
    ) -> impl std::future::Future<Output = Result<BusStream, BusError>> + Send + 'static {
        let bus = self.clone();
        let channel = topic.as_str().to_owned();
        async move {
            let hang = {
                let mut state = bus.state();
                state
                    .attempts
                    .entry(channel.clone())
                    .or_default()
                    .push(Instant::now());
                if let Some(n) = state.failing.get_mut(&channel).filter(|n| **n > 0) {
                    *n -= 1;
                    return Err(BusError("the bus refused the subscription"));
                }
                state.hanging.contains(&channel)
            };
            if hang {
                std::future::pending::<()>().await;
            }
            let mut state = bus.state();
            let (tx, rx) = mpsc::unbounded_channel();
            state.next_key += 1;
            let key = state.next_key;
            let subs = state.open.entry(channel.clone()).or_default();
            subs.push((key, tx));
            let now = subs.len();
            let peak = state.peak.entry(channel.clone()).or_default();
            *peak = (*peak).max(now);
            drop(state);
            Ok(BusStream {
                rx,
                channel,
                key,
                bus,
            })
        }
    }
}
