//! Write coalescing, as the events route decides it: the setting, the
//! switch that streams read, and the meter of the runtime's load behind it.
//! (The windows themselves, which streams are in one and who wakes them at
//! its end, are the broker's: `broker::coalesce`.)
//!
//! Coalescing trades latency for CPU: a stream that receives events faster
//! than one per window waits up to a window to write them together. On a
//! runtime with time to spare that is latency paid for nothing, so the
//! layer's ticker samples how busy the runtime's workers were (tokio's own
//! per-worker busy time) and streams coalesce only while they are mostly
//! busy.
//!
//! Coalescing then frees CPU and the measured load falls, so while it is
//! on the meter scales each sample up by what it saves: the frames the
//! streams wrote per write. What it averages is thus about the load the
//! runtime would have without coalescing, and coalescing stops when that
//! is low. Judged by the measured load alone, coalescing that a burst (of
//! connections, say) switched on would stay on under any moderate load,
//! adding latency where events come further apart than the window and
//! there is nothing to merge.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::broker::Broker;

/// How streams coalesce their writes, as configured.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Coalesce {
    pub(crate) window: Duration,
    /// Whatever the load, rather than only while the runtime is busy.
    pub(crate) always: bool,
}

impl Coalesce {
    /// `None` for a zero window: no coalescing at all.
    pub(crate) fn new(window: Duration, always: bool) -> Option<Self> {
        (!window.is_zero()).then_some(Self { window, always })
    }
}

/// Whether the streams of a layer coalesce now, and what it saves: set by
/// the ticker, read by every stream at each write.
#[derive(Debug, Default)]
pub(crate) struct Coalescing {
    /// The ticker found the runtime busy.
    on: AtomicBool,
    /// Writes made while coalescing, and the frames they carried, since
    /// the ticker last looked.
    writes: AtomicUsize,
    frames: AtomicUsize,
}

impl Coalescing {
    /// The window streams coalesce in right now, if any.
    pub(crate) fn window(&self, coalesce: Option<Coalesce>) -> Option<Duration> {
        coalesce
            .filter(|c| c.always || self.on.load(Ordering::Relaxed))
            .map(|c| c.window)
    }

    /// Counts a write of `frames` made in a window that the load opened
    /// (not one of `SseLayer::coalesce_always`).
    pub(crate) fn count(&self, coalesce: Option<Coalesce>, frames: usize) {
        if coalesce.is_some_and(|c| !c.always) {
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.frames.fetch_add(frames, Ordering::Relaxed);
        }
    }

    /// Switches coalescing on or off; whether that changed anything.
    pub(crate) fn switch(&self, on: bool) -> bool {
        let changed = self.on.swap(on, Ordering::Relaxed) != on;
        if changed {
            crate::metrics::coalescing(on);
        }
        changed
    }

    /// Whether it is on (for the tests of the ticker).
    #[cfg(test)]
    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Frames per write since the last call (1 when nothing was written):
    /// about how many times as many writes streams would make without
    /// coalescing.
    fn take_gain(&self) -> f64 {
        let writes = self.writes.swap(0, Ordering::Relaxed);
        let frames = self.frames.swap(0, Ordering::Relaxed);
        if writes == 0 {
            return 1.0;
        }
        (frames as f64 / writes as f64).max(1.0)
    }
}

/// Reads how long the runtime's workers have spent running tasks so far,
/// on average: the measure of load.
pub(crate) type BusyClock = Box<dyn FnMut() -> Duration + Send>;

/// tokio's own per-worker busy time, where the platform has the 64-bit
/// atomics it needs.
pub(crate) fn busy_clock(handle: &tokio::runtime::Handle) -> Option<BusyClock> {
    #[cfg(target_has_atomic = "64")]
    {
        let metrics = handle.metrics();
        let workers = metrics.num_workers().max(1);
        let divisor = u32::try_from(workers).unwrap_or(u32::MAX);
        Some(Box::new(move || {
            (0..workers)
                .map(|worker| metrics.worker_total_busy_duration(worker))
                .sum::<Duration>()
                / divisor
        }))
    }
    #[cfg(not(target_has_atomic = "64"))]
    {
        let _ = handle;
        None
    }
}

/// Samples the runtime's load into a [`LoadMeter`] and switches
/// [`Coalescing`] by what it decides: every 25 ms while events are
/// published, every 100 ms otherwise.
pub(crate) struct LoadSampler {
    clock: BusyClock,
    meter: LoadMeter,
    /// When the busy time was last read, and what it was.
    at: Instant,
    busy: Duration,
    /// The broker's count of published events at the last sample.
    published: Option<u64>,
    next: Instant,
}

impl LoadSampler {
    /// How often the load is sampled while events are published.
    const SAMPLE: Duration = Duration::from_millis(25);
    /// How often it is sampled while none are, to notice that some are.
    const QUIET_SAMPLE: Duration = Duration::from_millis(100);

    pub(crate) fn new(mut clock: BusyClock, now: Instant) -> Self {
        let busy = clock();
        Self {
            clock,
            meter: LoadMeter::default(),
            at: now,
            busy,
            published: None,
            next: now + Self::QUIET_SAMPLE,
        }
    }

    /// When the next sample is due.
    pub(crate) fn due(&self) -> Instant {
        self.next
    }

    /// Takes a sample if one is due.
    pub(crate) fn sample(&mut self, now: Instant, broker: &Broker, coalescing: &Coalescing) {
        if self.next > now {
            return;
        }
        let busy = (self.clock)();
        let on = self.meter.sample(
            busy.saturating_sub(self.busy),
            now.duration_since(self.at),
            coalescing.take_gain(),
        );
        if coalescing.switch(on) {
            tracing::debug!(
                coalescing = on,
                load = self.meter.load(),
                "write coalescing switched"
            );
        }
        (self.at, self.busy) = (now, busy);
        let count = broker.published();
        let quiet = self.published.replace(count) == Some(count);
        self.next = now
            + if quiet {
                Self::QUIET_SAMPLE
            } else {
                Self::SAMPLE
            };
    }
}

/// A moving average of the runtime's load, and what it decided.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoadMeter {
    load: f64,
    busy: bool,
    /// Time sampled so far.
    now: Duration,
    /// When coalescing last started, and last stopped.
    on_since: Duration,
    off_since: Option<Duration>,
    /// How long coalescing stays on at least, once started: nothing at
    /// first, so that a spike (a burst of connections) does not hold it.
    min_on: Duration,
}

impl Default for LoadMeter {
    fn default() -> Self {
        Self {
            load: 0.0,
            busy: false,
            now: Duration::ZERO,
            on_since: Duration::ZERO,
            off_since: None,
            min_on: Duration::ZERO,
        }
    }
}

impl LoadMeter {
    /// How far back the average looks: a spike shorter than this does not
    /// switch coalescing on, a steady load does within a few times this.
    const MEMORY: Duration = Duration::from_millis(100);
    /// Above this share of the workers' time spent running tasks,
    /// coalescing starts: the runtime is close to falling behind.
    const ON: f64 = 0.75;
    /// Below this share (as it would be without coalescing), it stops.
    const OFF: f64 = 0.6;
    /// Coalescing that had to start again within `RELAPSE` of stopping
    /// (it was what kept the load down) stays on at least this long, then
    /// twice as long at each further relapse, up to `MAX_ON`.
    const MIN_ON: Duration = Duration::from_secs(1);
    /// See `MIN_ON`.
    const RELAPSE: Duration = Duration::from_secs(2);
    /// The longest it is held on; after this long off, the hold is
    /// forgotten.
    const MAX_ON: Duration = Duration::from_secs(64);

    /// Counts a period of `elapsed` in which the workers spent `busy` (per
    /// worker, on average) running tasks, and, while coalescing, wrote
    /// `gain` frames per write; returns whether writes should now be
    /// coalesced.
    pub(crate) fn sample(&mut self, busy: Duration, elapsed: Duration, gain: f64) -> bool {
        if elapsed.is_zero() {
            return self.busy;
        }
        self.now = self.now.saturating_add(elapsed);
        let mut load = (busy.as_secs_f64() / elapsed.as_secs_f64()).clamp(0.0, 1.0);
        if self.busy && gain.is_finite() {
            load = (load * gain.max(1.0)).min(1.0);
        }
        let weight = elapsed.as_secs_f64() / elapsed.saturating_add(Self::MEMORY).as_secs_f64();
        self.load += (load - self.load) * weight;
        if self.busy {
            if self.load < Self::OFF && self.now - self.on_since >= self.min_on {
                self.busy = false;
                self.off_since = Some(self.now);
            }
        } else if self.load > Self::ON {
            let off_for = self.off_since.map(|since| self.now - since);
            if off_for.is_some_and(|off| off < Self::RELAPSE) {
                self.min_on = (self.min_on * 2).clamp(Self::MIN_ON, Self::MAX_ON);
            } else if off_for.is_some_and(|off| off >= Self::MAX_ON) {
                self.min_on = Duration::ZERO;
            }
            self.busy = true;
            self.on_since = self.now;
        }
        self.busy
    }

    /// The current average, between 0 and 1.
    pub(crate) fn load(&self) -> f64 {
        self.load
    }
}

#[cfg(test)]
mod tests {
    use super::LoadMeter;
    use std::time::Duration;

    const STEP: Duration = Duration::from_millis(25);

    /// Feeds `n` steps at `load`, with coalescing merging nothing;
    /// returns after how many the meter decided `busy`, if it did.
    fn feed(meter: &mut LoadMeter, n: usize, load: f64, busy: bool) -> Option<usize> {
        feed_gain(meter, n, load, 1.0, busy)
    }

    /// `feed`, with coalescing writing `gain` frames per write.
    fn feed_gain(
        meter: &mut LoadMeter,
        n: usize,
        load: f64,
        gain: f64,
        busy: bool,
    ) -> Option<usize> {
        (1..=n).find(|_| meter.sample(STEP.mul_f64(load), STEP, gain) == busy)
    }

    #[test]
    fn a_saturated_runtime_turns_coalescing_on_within_a_few_tenths_of_a_second() {
        let mut meter = LoadMeter::default();
        let took = feed(&mut meter, 1000, 1.0, true).expect("never turned on");
        let after = STEP * took as u32;
        assert!(
            after >= Duration::from_millis(100) && after <= Duration::from_millis(300),
            "took {after:?}"
        );
    }

    #[test]
    fn a_short_spike_does_not() {
        let mut meter = LoadMeter::default();
        assert_eq!(feed(&mut meter, 2, 1.0, true), None);
        assert_eq!(feed(&mut meter, 1000, 0.1, true), None);
    }

    #[test]
    fn a_runtime_two_thirds_busy_keeps_writing_at_once() {
        let mut meter = LoadMeter::default();
        assert_eq!(feed(&mut meter, 10_000, 0.66, true), None);
        assert!((meter.load() - 0.66).abs() < 0.01, "{}", meter.load());
    }

    #[test]
    fn once_on_it_stays_on_at_the_lower_load_coalescing_leads_to() {
        // Two frames per write: half the load, but as much work waiting.
        let mut meter = LoadMeter::default();
        feed(&mut meter, 1000, 0.97, true).expect("never turned on");
        assert_eq!(feed_gain(&mut meter, 10_000, 0.5, 2.0, false), None);
        assert!(meter.load() > 0.95, "{}", meter.load());
    }

    #[test]
    fn coalescing_that_merges_nothing_goes_off_under_a_moderate_load() {
        // A burst switched it on; then half a core's load with events
        // further apart than the window: one frame per write.
        let mut meter = LoadMeter::default();
        feed(&mut meter, 1000, 1.0, true).expect("never turned on");
        let took = STEP * feed(&mut meter, 1000, 0.5, false).expect("held on") as u32;
        assert!(took <= Duration::from_millis(500), "took {took:?}");
        assert_eq!(feed(&mut meter, 10_000, 0.5, true), None);
        // Merging a few frames does not save enough to keep it either.
        feed(&mut meter, 1000, 1.0, true).expect("never turned on");
        assert!(feed_gain(&mut meter, 1000, 0.5, 1.1, false).is_some());
    }

    #[test]
    fn a_quiet_runtime_turns_it_off_again() {
        let mut meter = LoadMeter::default();
        feed(&mut meter, 1000, 1.0, true).expect("never turned on");
        let took = STEP * feed(&mut meter, 1000, 0.05, false).expect("never turned off") as u32;
        assert!(took <= Duration::from_millis(500), "took {took:?}");
    }

    #[test]
    fn a_burst_of_work_is_not_held_on_after_it_ends() {
        // Half a second flat out (say, a thousand clients connecting),
        // then a light load: coalescing goes off within a few tenths.
        let mut meter = LoadMeter::default();
        assert!(feed(&mut meter, 20, 1.0, true).is_some());
        let took = STEP * feed(&mut meter, 1000, 0.2, false).expect("held on") as u32;
        assert!(took <= Duration::from_millis(500), "took {took:?}");
        assert_eq!(feed(&mut meter, 1000, 0.2, true), None);
    }

    /// A load that coalescing more than halves, 0.9 without and 0.2 with,
    /// in a way the frames per write do not show (they say 1): the hold is
    /// what keeps it on. Returns the switches over `span`, and the share
    /// of it spent coalescing.
    fn relapsing(meter: &mut LoadMeter, span: Duration) -> (usize, f64) {
        let (mut switches, mut on) = (0, 0);
        let steps = span.as_millis() / STEP.as_millis();
        let mut busy = meter.sample(Duration::ZERO, STEP, 1.0);
        for _ in 0..steps {
            let load = if busy { 0.2 } else { 0.9 };
            let now = meter.sample(STEP.mul_f64(load), STEP, 1.0);
            switches += usize::from(now != busy);
            on += usize::from(now);
            busy = now;
        }
        (switches, on as f64 / steps as f64)
    }

    #[test]
    fn a_load_that_only_coalescing_keeps_down_keeps_it_on_longer_each_time() {
        let mut meter = LoadMeter::default();
        let (switches, on) = relapsing(&mut meter, Duration::from_secs(300));
        // On after 0.2 s, off at once, then held 1, 2, 4, ... 64 s with a
        // relapse of a few tenths of a second after each: about ten cycles
        // in five minutes, where no hold would make several hundred.
        assert!(switches <= 24, "{switches} switches");
        assert!(on > 0.95, "coalescing {:.1} % of the time", on * 100.0);
        assert_eq!(meter.min_on, LoadMeter::MAX_ON);
    }

    #[test]
    fn a_load_that_coalescing_keeps_down_by_merging_never_switches_it_off() {
        // 0.9 without, 0.4 with, at 2.25 frames per write.
        let mut meter = LoadMeter::default();
        let mut busy = false;
        let mut switches = 0;
        for _ in 0..12_000 {
            let (load, gain) = if busy { (0.4, 2.25) } else { (0.9, 1.0) };
            let now = meter.sample(STEP.mul_f64(load), STEP, gain);
            switches += usize::from(now != busy);
            busy = now;
        }
        assert_eq!(switches, 1);
        assert!(busy);
    }

    #[test]
    fn the_hold_is_forgotten_after_a_long_quiet_spell() {
        let mut meter = LoadMeter::default();
        relapsing(&mut meter, Duration::from_secs(300));
        feed(&mut meter, 100_000, 0.0, false).expect("never turned off");
        let mut quiet = 0;
        while meter.now - meter.off_since.unwrap() < LoadMeter::MAX_ON {
            meter.sample(Duration::ZERO, STEP, 1.0);
            quiet += 1;
        }
        assert!(quiet > 0);
        feed(&mut meter, 1000, 1.0, true).expect("never turned on");
        assert_eq!(meter.min_on, Duration::ZERO);
    }

    #[test]
    fn bad_readings_neither_panic_nor_stick() {
        let mut meter = LoadMeter::default();
        // No time passed; more busy time than time (several workers'
        // counters read at slightly different moments).
        assert!(!meter.sample(Duration::from_millis(5), Duration::ZERO, 1.0));
        assert!(meter.load() == 0.0);
        feed(&mut meter, 100, 3.0, true).expect("a full load is a full load");
        assert!(meter.load() <= 1.0);
        // A gain that is no number, or below one, counts as one: an idle
        // runtime is idle whatever the gain says.
        for gain in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
            let mut meter = LoadMeter::default();
            feed(&mut meter, 1000, 1.0, true).expect("never turned on");
            assert!(
                feed_gain(&mut meter, 1000, 0.0, gain, false).is_some(),
                "{gain}"
            );
            feed_gain(&mut meter, 1000, 0.0, gain, true);
            assert!(meter.load() < 1e-6, "{gain}: {}", meter.load());
        }
    }

    proptest::proptest! {
        /// Whatever the readings (clocks read out of step, huge gaps), the
        /// meter neither panics nor leaves [0, 1], and it only switches
        /// across its thresholds.
        #[test]
        fn any_readings_keep_the_meter_sane(
            readings in proptest::collection::vec(
                (0u64..u64::MAX, 0u64..u64::MAX, proptest::num::f64::ANY),
                1..200,
            ),
        ) {
            let mut meter = LoadMeter::default();
            for (busy, elapsed, gain) in readings {
                let before = meter.busy;
                let now = meter.sample(
                    Duration::from_nanos(busy),
                    Duration::from_nanos(elapsed),
                    gain,
                );
                proptest::prop_assert!((0.0..=1.0).contains(&meter.load()));
                if now && !before {
                    proptest::prop_assert!(meter.load() > LoadMeter::ON);
                }
                if before && !now {
                    proptest::prop_assert!(meter.load() < LoadMeter::OFF);
                }
            }
        }
    }
}
