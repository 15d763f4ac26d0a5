//! Health probes: a periodic async check that degrades the server after
//! repeated failures and restores it after repeated successes.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::ServerMode;

/// Default time between two checks.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// Default time a check may take before it counts as failed.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default consecutive failures before the server is degraded.
pub const DEFAULT_FAIL_AFTER: u32 = 3;
/// Default consecutive successes before a degraded probe recovers.
pub const DEFAULT_RECOVER_AFTER: u32 = 2;

type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// A named async check run by [`ServerMode::spawn_probe`].
///
/// The check runs every [`interval`](Probe::interval) (default 5 s) and fails
/// when it returns an error, panics, or runs longer than
/// [`timeout`](Probe::timeout) (default 2 s; the check is then cancelled).
/// After [`fail_after`](Probe::fail_after) consecutive failures (default 3)
/// the server is degraded with the probe's name and first error as reason;
/// after [`recover_after`](Probe::recover_after) consecutive successes
/// (default 2) that cause is lifted. In between, a flapping check changes
/// nothing, so clients are not flooded with state changes.
///
/// ```no_run
/// # async fn ping() -> Result<(), std::io::Error> { Ok(()) }
/// use std::time::Duration;
/// use tower_sse::mode::{Probe, ServerMode};
///
/// # #[tokio::main] async fn main() {
/// let mode = ServerMode::new();
/// let probe = mode.spawn_probe(
///     Probe::new("storage", || async { ping().await }).interval(Duration::from_secs(10)),
/// );
/// // ...
/// probe.stop(); // and its cause, if any, is lifted
/// # }
/// ```
pub struct Probe {
    name: String,
    check: Check,
    interval: Duration,
    timeout: Duration,
    fail_after: u32,
    recover_after: u32,
}

impl Probe {
    /// A probe named `name` (used in the degraded reason) running `check`.
    pub fn new<F, Fut, E>(name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        let check: Check = Arc::new(move || {
            let future = check();
            Box::pin(async move { future.await.map_err(|e| e.to_string()) })
        });
        Self {
            name: name.into(),
            check,
            interval: DEFAULT_PROBE_INTERVAL,
            timeout: DEFAULT_PROBE_TIMEOUT,
            fail_after: DEFAULT_FAIL_AFTER,
            recover_after: DEFAULT_RECOVER_AFTER,
        }
    }

    /// Time between the starts of two checks.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Longest a check may run before it counts as a failure.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Consecutive failures before the server is degraded (at least 1).
    pub fn fail_after(mut self, n: u32) -> Self {
        self.fail_after = n.max(1);
        self
    }

    /// Consecutive successes before the probe's cause is lifted (at least 1).
    pub fn recover_after(mut self, n: u32) -> Self {
        self.recover_after = n.max(1);
        self
    }
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probe")
            .field("name", &self.name)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("fail_after", &self.fail_after)
            .field("recover_after", &self.recover_after)
            .finish_non_exhaustive()
    }
}

/// A running probe. Dropping it leaves the probe running; [`stop`](ProbeHandle::stop) ends it.
pub struct ProbeHandle {
    task: JoinHandle<()>,
    mode: std::sync::Weak<super::Inner>,
    id: u64,
}

impl fmt::Debug for ProbeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeHandle")
            .field("finished", &self.task.is_finished())
            .finish_non_exhaustive()
    }
}

impl ProbeHandle {
    /// Stops the probe and lifts its degraded cause, if any.
    pub fn stop(self) {
        self.task.abort();
        if let Some(inner) = self.mode.upgrade() {
            ServerMode { inner }.probe_passing(self.id);
        }
    }

    /// Whether the probe's task has ended (it ends by itself once every
    /// handle on its mode is gone).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

static NEXT_PROBE: AtomicU64 = AtomicU64::new(0);

/// A fresh id for a cause that comes and goes like a probe's (one probe, or
/// the backplane's reader).
pub(crate) fn next_probe_id() -> u64 {
    NEXT_PROBE.fetch_add(1, Ordering::Relaxed)
}

impl ServerMode {
    /// Runs `probe` on the current tokio runtime until stopped. Several
    /// probes can run; the server is degraded while any of them is.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like `tokio::spawn`.
    pub fn spawn_probe(&self, probe: Probe) -> ProbeHandle {
        let id = next_probe_id();
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(run(probe, id, weak.clone()));
        ProbeHandle {
            task,
            mode: weak,
            id,
        }
    }
}

async fn run(probe: Probe, id: u64, mode: std::sync::Weak<super::Inner>) {
    let mut timer = tokio::time::interval(probe.interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut failures, mut successes) = (0u32, 0u32);
    loop {
        timer.tick().await;
        let outcome = check_once(&probe).await;
        let Some(inner) = mode.upgrade() else {
            return;
        };
        let mode = ServerMode { inner };
        match outcome {
            Ok(()) => {
                failures = 0;
                successes = successes.saturating_add(1);
                if successes >= probe.recover_after {
                    mode.probe_passing(id);
                }
            }
            Err(error) => {
                successes = 0;
                failures = failures.saturating_add(1);
                tracing::warn!(probe = %probe.name, %error, failures, "probe failed");
                if failures >= probe.fail_after {
                    mode.probe_failing(id, &probe.name, error);
                }
            }
        }
    }
}

/// One check, in its own task so that a panic is caught as a failure and a
/// hang is cut off by the timeout.
async fn check_once(probe: &Probe) -> Result<(), String> {
    let mut task = tokio::spawn((probe.check)());
    match tokio::time::timeout(probe.timeout, &mut task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) if join.is_panic() => Err("the check panicked".to_owned()),
        Ok(Err(_)) => Err("the check was cancelled".to_owned()),
        Err(_) => {
            task.abort();
            Err(format!("no answer within {:?}", probe.timeout))
        }
    }
}
