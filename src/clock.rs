//! Time, made injectable.
//!
//! Retention by age needs "now". Tests must never sleep to see an event age
//! out, so the broker reads time through [`Clock`] and tests drive a
//! [`ManualClock`] instead.

use std::fmt;
use std::time::{Duration, Instant};

use crate::sync::{Arc, AtomicU64, Ordering};

/// A monotonic source of time for retention.
///
/// Only differences between readings matter: [`Clock::now`] is the time
/// elapsed since an arbitrary origin fixed when the clock was made.
pub trait Clock: Send + Sync + 'static {
    /// Time elapsed since this clock's origin. Must never go backwards.
    fn now(&self) -> Duration;
}

/// The real monotonic clock ([`Instant`]); the broker's default.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose origin is the moment of this call.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to, for tests.
///
/// Clones share the same time, so a test keeps one handle and gives the
/// other to the broker.
///
/// ```
/// use std::time::Duration;
/// use tower_sse::{Broker, Event, ManualClock};
///
/// let clock = ManualClock::new();
/// let broker = Broker::builder()
///     .retain_for(Duration::from_secs(30))
///     .clock(clock.clone())
///     .build();
/// broker.publish(Event::new("tick").data("1")).unwrap();
/// assert_eq!(broker.stats().retained_events, 1);
/// clock.advance(Duration::from_secs(31));
/// broker.evict_expired();
/// assert_eq!(broker.stats().retained_events, 0);
/// ```
#[derive(Clone)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at its origin.
    pub fn new() -> Self {
        Self {
            nanos: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves the clock forward by `by` (saturating at `u64::MAX` nanoseconds).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let mut current = self.nanos.load(Ordering::Acquire);
        loop {
            let next = current.saturating_add(by);
            match self
                .nanos
                .compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}
