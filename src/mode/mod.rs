//! The server's mode: `normal`, `read-only` or `degraded`, with a reason and
//! the time it was entered.
//!
//! The mode is derived from independent causes, so that clearing one never
//! clears another:
//!
//! - an operator's read-only ([`ServerMode::set_read_only`], a signal);
//! - degraded set by code ([`ServerMode::set_degraded`]);
//! - each [probe](Probe) that is failing.
//!
//! Degraded wins over read-only, read-only over normal. An operator's
//! read-only therefore stays in force after storage recovers, and a
//! recovered probe does not make a read-only server writable.
//!
//! Every change is observable three ways that always agree: [`ServerMode::current`],
//! a [`watch`] channel ([`ServerMode::watch`]), and a `server.state` event
//! on every [`Broker`] that [follows](Broker::follow_mode) the mode, published
//! under the same lock that made the change.
//!
//! ```
//! use tower_sse::mode::{Mode, ServerMode};
//!
//! let mode = ServerMode::new();
//! mode.set_read_only("maintenance");
//! mode.set_degraded("disk full");
//! assert_eq!(mode.current().mode, Mode::Degraded);
//! mode.clear_degraded();
//! // The operator's read-only is still there.
//! assert_eq!(mode.current().mode, Mode::ReadOnly);
//! assert_eq!(mode.current().reason.as_deref(), Some("maintenance"));
//! ```

mod probe;
#[cfg(all(feature = "signal", unix))]
mod signal;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use serde::ser::SerializeStruct;
use tokio::sync::watch;

use crate::{Broker, Event};

#[cfg_attr(not(feature = "redis"), allow(unused_imports))]
pub(crate) use self::probe::next_probe_id;
pub use self::probe::{
    Probe, ProbeHandle, DEFAULT_FAIL_AFTER, DEFAULT_PROBE_INTERVAL, DEFAULT_PROBE_TIMEOUT,
    DEFAULT_RECOVER_AFTER,
};

/// The three modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Reads and writes are served.
    Normal,
    /// Writes are refused, by an operator's decision.
    ReadOnly,
    /// Writes are refused because something the server depends on failed;
    /// readiness reports not ready.
    Degraded,
}

impl Mode {
    /// `"normal"`, `"read-only"` or `"degraded"`, as on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::ReadOnly => "read-only",
            Mode::Degraded => "degraded",
        }
    }

    /// Whether writes are served in this mode.
    pub fn is_writable(&self) -> bool {
        matches!(self, Mode::Normal)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of the server's state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModeState {
    /// The mode.
    pub mode: Mode,
    /// Why the server is not normal; `None` when normal. At most
    /// [`MAX_REASON_BYTES`] (a longer one is cut and ends in `…`).
    pub reason: Option<String>,
    /// When the current mode was entered.
    pub since: SystemTime,
    /// Whether a [`Shutdown`](crate::Shutdown) has begun.
    pub shutting_down: bool,
}

impl ModeState {
    /// Whether writes are served: normal and not shutting down.
    pub fn is_writable(&self) -> bool {
        self.mode.is_writable() && !self.shutting_down
    }

    /// Whether the server should receive traffic: not degraded and not
    /// shutting down (read-only still serves reads).
    pub fn is_ready(&self) -> bool {
        self.mode != Mode::Degraded && !self.shutting_down
    }

    /// `since` as RFC 3339 UTC with milliseconds.
    pub fn since_rfc3339(&self) -> String {
        humantime::format_rfc3339_millis(self.since).to_string()
    }
}

/// `{"mode": "...", "reason": ... , "since": "RFC 3339"}`, plus
/// `"shutting_down": true` while shutting down.
impl serde::Serialize for ModeState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut state = serializer.serialize_struct("ModeState", 4)?;
        state.serialize_field("mode", self.mode.as_str())?;
        state.serialize_field("reason", &self.reason)?;
        state.serialize_field("since", &self.since_rfc3339())?;
        if self.shutting_down {
            state.serialize_field("shutting_down", &true)?;
        } else {
            state.skip_field("shutting_down")?;
        }
        state.end()
    }
}

/// The causes the mode is derived from, from [`ServerMode::causes`]: what
/// an admin page shows, since a degraded mode hides an operator's
/// read-only underneath it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ModeCauses {
    /// The operator's read-only reason, if on.
    pub read_only: Option<String>,
    /// The reason of the degraded cause set by code, if on.
    pub degraded: Option<String>,
    /// Failing probes: `(name, first error)`.
    pub failing_probes: Vec<(String, String)>,
    /// Whether a shutdown has begun.
    pub shutting_down: bool,
}

/// The event type of mode changes on the events route.
pub use crate::wire::STATE_EVENT;

/// A cheap-to-clone handle on the server's mode. See the [module docs](self).
#[derive(Clone)]
pub struct ServerMode {
    inner: Arc<Inner>,
}

struct Inner {
    causes: Mutex<Causes>,
    tx: watch::Sender<ModeState>,
    started: Instant,
}

/// Everything the mode is derived from, and who hears about changes.
///
/// Lock order: `Causes` before any broker's lock; a broker never calls
/// back into the mode.
struct Causes {
    read_only: Option<String>,
    degraded: Option<String>,
    /// Failing probes and their error, by probe id.
    probes: BTreeMap<u64, (String, String)>,
    shutting_down: bool,
    current: ModeState,
    brokers: Vec<Broker>,
}

impl Causes {
    fn derive(&self) -> (Mode, Option<String>) {
        if let Some(reason) = &self.degraded {
            return (Mode::Degraded, Some(bounded(reason)));
        }
        if let Some((name, error)) = self.probes.values().next() {
            return (Mode::Degraded, Some(bounded(&format!("{name}: {error}"))));
        }
        if let Some(reason) = &self.read_only {
            return (Mode::ReadOnly, Some(bounded(reason)));
        }
        (Mode::Normal, None)
    }
}

/// The longest reason a [`ModeState`] carries, in bytes (plus the `…`
/// that marks a cut).
///
/// A reason goes into every `server.state` event, `/health`, `/ready` and
/// `503` answer; a probe's error message can be of any length.
pub const MAX_REASON_BYTES: usize = 1024;

/// `reason`, cut at a character boundary to [`MAX_REASON_BYTES`].
fn bounded(reason: &str) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason.to_owned();
    }
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &reason[..end])
}

impl Default for ServerMode {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerMode {
    /// A server in normal mode.
    pub fn new() -> Self {
        let current = ModeState {
            mode: Mode::Normal,
            reason: None,
            since: SystemTime::now(),
            shutting_down: false,
        };
        let (tx, _) = watch::channel(current.clone());
        Self {
            inner: Arc::new(Inner {
                causes: Mutex::new(Causes {
                    read_only: None,
                    degraded: None,
                    probes: BTreeMap::new(),
                    shutting_down: false,
                    current,
                    brokers: Vec::new(),
                }),
                tx,
                started: Instant::now(),
            }),
        }
    }

    /// The current state.
    pub fn current(&self) -> ModeState {
        self.lock().current.clone()
    }

    /// Every cause in force now, each on its own.
    pub fn causes(&self) -> ModeCauses {
        let causes = self.lock();
        ModeCauses {
            read_only: causes.read_only.clone(),
            degraded: causes.degraded.clone(),
            failing_probes: causes.probes.values().cloned().collect(),
            shutting_down: causes.shutting_down,
        }
    }

    /// Whether writes are served now.
    pub fn is_writable(&self) -> bool {
        self.lock().current.is_writable()
    }

    /// A receiver that sees every change, for tasks that react to the mode.
    pub fn watch(&self) -> watch::Receiver<ModeState> {
        self.inner.tx.subscribe()
    }

    /// How long ago this handle's mode was created (the server's uptime,
    /// when made at start-up).
    pub fn uptime(&self) -> std::time::Duration {
        self.inner.started.elapsed()
    }

    /// Puts the server in operator read-only with `reason` (replacing a
    /// previous operator reason).
    pub fn set_read_only(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.update(|c| c.read_only = Some(reason));
    }

    /// Lifts operator read-only. Degraded causes are untouched.
    pub fn clear_read_only(&self) {
        self.update(|c| c.read_only = None);
    }

    /// Toggles operator read-only, with `reason` when turning it on;
    /// returns whether it is now on.
    pub fn toggle_read_only(&self, reason: impl Into<String>) -> bool {
        self.toggle(reason.into(), |c| &mut c.read_only)
    }

    /// Marks the server degraded by code, with `reason`.
    pub fn set_degraded(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.update(|c| c.degraded = Some(reason));
    }

    /// Toggles the degraded cause set by code, with `reason` when turning it
    /// on; returns whether it is now on.
    pub fn toggle_degraded(&self, reason: impl Into<String>) -> bool {
        self.toggle(reason.into(), |c| &mut c.degraded)
    }

    /// Flips the cause `slot` picks; returns whether it is now on.
    fn toggle(&self, reason: String, slot: fn(&mut Causes) -> &mut Option<String>) -> bool {
        let mut on = false;
        self.update(|c| {
            let cause = slot(c);
            *cause = match cause.take() {
                Some(_) => None,
                None => Some(reason),
            };
            on = cause.is_some();
        });
        on
    }

    /// Lifts the degraded cause set by code. Failing probes still count.
    pub fn clear_degraded(&self) {
        self.update(|c| c.degraded = None);
    }

    pub(crate) fn begin_shutdown(&self) {
        self.update(|c| c.shutting_down = true);
    }

    pub(crate) fn probe_failing(&self, id: u64, name: &str, error: String) {
        self.update(|c| {
            // While failing, keep the first error: a probe whose message
            // varies must not turn into a stream of changes.
            c.probes
                .entry(id)
                .or_insert_with(|| (name.to_owned(), error));
        });
    }

    pub(crate) fn probe_passing(&self, id: u64) {
        self.update(|c| {
            c.probes.remove(&id);
        });
    }

    pub(crate) fn follow(&self, broker: &Broker) {
        let mut causes = self.lock();
        broker.set_state(&causes.current);
        causes.brokers.push(broker.clone());
    }

    fn lock(&self) -> MutexGuard<'_, Causes> {
        self.inner
            .causes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `change`, and if the state it derives differs, records it and
    /// tells the watchers and brokers, all under the lock: the last
    /// `server.state` event is always the current state.
    fn update(&self, change: impl FnOnce(&mut Causes)) {
        let mut causes = self.lock();
        change(&mut causes);
        let (mode, reason) = causes.derive();
        let current = &causes.current;
        if current.mode == mode
            && current.reason == reason
            && current.shutting_down == causes.shutting_down
        {
            return;
        }
        let since = if current.mode == mode {
            current.since
        } else {
            SystemTime::now()
        };
        let next = ModeState {
            mode,
            reason,
            since,
            shutting_down: causes.shutting_down,
        };
        tracing::info!(mode = %next.mode, reason = ?next.reason, shutting_down = next.shutting_down, "server mode changed");
        causes.brokers.retain(|broker| !broker.is_closed());
        for broker in &causes.brokers {
            broker.set_state(&next);
        }
        causes.current = next.clone();
        self.inner.tx.send_replace(next);
    }
}

impl fmt::Debug for ServerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ServerMode").field(&self.current()).finish()
    }
}

impl Broker {
    /// Publishes every change of `mode` as a `server.state` event that
    /// reaches every subscription whatever its topics, with JSON data
    /// `{"mode", "reason", "since"}`; a client connecting to the events
    /// route gets the current state first (after its replay when it
    /// resumes).
    ///
    /// ```
    /// use tower_sse::{mode::ServerMode, Broker, Message, Topics};
    ///
    /// let broker = Broker::new();
    /// let mode = ServerMode::new();
    /// broker.follow_mode(&mode);
    /// let mut sub = broker.subscribe(&Topics::parse(["public"]).unwrap(), None).unwrap();
    /// mode.set_read_only("maintenance");
    /// let Some(Message::Event(event)) = sub.try_next() else { panic!() };
    /// assert_eq!(event.event_type(), "server.state");
    /// assert!(event.data().contains(r#""mode":"read-only""#));
    /// ```
    pub fn follow_mode(&self, mode: &ServerMode) {
        mode.follow(self);
    }

    fn set_state(&self, state: &ModeState) {
        let data = serde_json::to_vec(state).unwrap_or_default();
        // Refused once the broker is closed, when nobody listens; or when
        // the event is too large for the retention limit, which then
        // cannot hold a kilobyte.
        if let Err(error) = self.publish_system_greeting(Event::new(STATE_EVENT).data(data)) {
            if !matches!(error, crate::broker::PublishError::Closed) {
                tracing::warn!(%error, "server.state event not published");
            }
        }
    }
}
