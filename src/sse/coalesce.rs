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
//! It starts only when the runtime is about to fall behind (busy all of
//! the last tenth of a second, or 95 % of it on average): below that,
//! writing each event at once costs latency nothing and CPU the server has
//! to spare. And only while the streams write frames enough to merge: a
//! burst of connections keeps the runtime busy too, but coalescing saves
//! it nothing, and must not earn a hold (below) from it.
//!
//! Coalescing then frees CPU and the measured load falls, so while it is
//! on the meter judges the load the runtime would have without it. Judged
//! by the measured load alone, coalescing that saves half the work would
//! switch itself off and on again; judged by the frames per write (as if a
//! write were all a delivery costs), it would stay on where writing each
//! event at once costs much less than that suggests: a delivery's cost is
//! only partly the write's. What it saves is measured instead: what a
//! frame cost the workers just before coalescing started, against what it
//! costs in the first tenths of a second of coalescing. The measured load
//! times that ratio is the load without coalescing, and it follows the
//! runtime: when whatever made frames dear goes (a noisy neighbour, a
//! client falling behind), the measured load falls with it, and
//! coalescing stops.
//!
//! Only a load close to saturation keeps it on for good. If it stopped
//! wrongly, the runtime is busy again at once, and the hold (1, 2, 4 ...
//! 64 s) keeps it on longer each time. Before any cost is
//! known (coalescing that a burst of connections switched on), the
//! measured load decides the same way.

use std::sync::atomic::{AtomicBool, Ordering};
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

/// Whether the streams of a layer coalesce now: set by the ticker, read by
/// every stream at each write.
#[derive(Debug, Default)]
pub(crate) struct Coalescing {
    /// The ticker found the runtime busy.
    on: AtomicBool,
}

impl Coalescing {
    /// The window streams coalesce in right now, if any.
    pub(crate) fn window(&self, coalesce: Option<Coalesce>) -> Option<Duration> {
        coalesce
            .filter(|c| c.always || self.on.load(Ordering::Relaxed))
            .map(|c| c.window)
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
    /// The broker's counts of published events and of frames handed to
    /// streams at the last sample.
    published: Option<u64>,
    framed: u64,
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
            framed: 0,
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
        let (published, framed) = broker.activity();
        let frames = framed.saturating_sub(std::mem::replace(&mut self.framed, framed));
        let on = self.meter.sample(
            busy.saturating_sub(self.busy),
            now.duration_since(self.at),
            usize::try_from(frames).unwrap_or(usize::MAX),
        );
        if coalescing.switch(on) {
            tracing::debug!(
                coalescing = on,
                load = self.meter.load(),
                "write coalescing switched"
            );
        }
        (self.at, self.busy) = (now, busy);
        let quiet = self.published.replace(published) == Some(published);
        self.next = now
            + if quiet {
                Self::QUIET_SAMPLE
            } else {
                Self::SAMPLE
            };
    }
}

/// Moves the average `into` a quarter of the way to `sample`, if any.
fn average(into: &mut Option<f64>, sample: Option<f64>) {
    if let Some(sample) = sample.filter(|s| s.is_finite()) {
        *into = Some(into.map_or(sample, |old| old + (sample - old) / 4.0));
    }
}

/// A moving average of the runtime's load (as it would be without
/// coalescing), and what it decided.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoadMeter {
    load: f64,
    busy: bool,
    /// What a frame cost the workers, in seconds, while each was written
    /// at once: a moving average over the samples with enough frames.
    cost: Option<f64>,
    /// The same while coalescing, measured in its first tenths of a second
    /// (`CALIBRATE`) each time it starts.
    coalesced_cost: Option<f64>,
    /// How long the workers have been busy all the time, up to now.
    saturated_for: Duration,
    /// How long every sample has had frames enough to merge, up to now.
    framed_for: Duration,
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
            cost: None,
            coalesced_cost: None,
            saturated_for: Duration::ZERO,
            framed_for: Duration::ZERO,
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
    /// coalescing starts: the runtime is about to fall behind.
    const ON: f64 = 0.95;
    /// Busy this much of a period counts as all of it: the workers ran
    /// tasks the whole time. Saturated for `FALLING_BEHIND` (four samples)
    /// while writing frames, the runtime falls behind, and coalescing
    /// starts without waiting for the average: every tenth of a second
    /// lost there is a tenth of a second of events that arrive late.
    const SATURATED: f64 = 0.99;
    /// See `SATURATED`; also how long frames must have been written for
    /// coalescing to start at all.
    const FALLING_BEHIND: Duration = Duration::from_millis(100);
    /// Below this share (as it would be without coalescing), it stops once
    /// its hold is over. A runtime that saturated before coalescing already
    /// wrote several events per write as its streams fell behind, so what a
    /// frame cost then, and with it the estimate, says about 1 however far
    /// past saturation it is: hence the margin under `ON`.
    const OFF: f64 = 0.75;
    /// When, after coalescing starts, what a frame costs coalesced is
    /// measured: from `SETTLE` (before, the streams still write what piled
    /// up) to `CALIBRATE`. Until then, with a cost to compare with, it
    /// stays on.
    const SETTLE: Duration = Duration::from_millis(100);
    /// See `SETTLE`.
    const CALIBRATE: Duration = Duration::from_millis(400);
    /// A sample measures what a frame costs only with at least this many:
    /// with fewer, whatever else the workers did (accepting connections,
    /// the timer) would count as the frames' cost.
    const MIN_FRAMES: usize = 250;
    /// Coalescing that had to start again within `RELAPSE` of stopping
    /// (it was what kept the load down) stays on at least this long, then
    /// twice as long at each further relapse, up to `MAX_ON`: a load near
    /// saturation is looked at again at ever longer intervals.
    const MIN_ON: Duration = Duration::from_secs(1);
    /// See `MIN_ON`.
    const RELAPSE: Duration = Duration::from_secs(2);
    /// The longest it is held on; after this long off, the hold is
    /// forgotten.
    const MAX_ON: Duration = Duration::from_secs(64);

    /// Counts a period of `elapsed` in which the workers spent `busy` (per
    /// worker, on average) running tasks and the streams wrote `frames`;
    /// returns whether writes should now be coalesced.
    pub(crate) fn sample(&mut self, busy: Duration, elapsed: Duration, frames: usize) -> bool {
        if elapsed.is_zero() {
            return self.busy;
        }
        self.now = self.now.saturating_add(elapsed);
        let measured = (busy.as_secs_f64() / elapsed.as_secs_f64()).clamp(0.0, 1.0);
        self.saturated_for = if measured >= Self::SATURATED {
            self.saturated_for.saturating_add(elapsed)
        } else {
            Duration::ZERO
        };
        let cost = (frames >= Self::MIN_FRAMES).then(|| busy.as_secs_f64() / frames as f64);
        self.framed_for = if cost.is_some() {
            self.framed_for.saturating_add(elapsed)
        } else {
            Duration::ZERO
        };
        let load = if self.busy {
            let since = self.now - self.on_since;
            if since > Self::SETTLE && since <= Self::CALIBRATE {
                average(&mut self.coalesced_cost, cost);
            }
            match (self.cost, self.coalesced_cost) {
                (Some(_), _) if since <= Self::CALIBRATE => 1.0,
                // What coalescing saves, applied to what is measured now.
                (Some(cost), Some(coalesced)) if coalesced > 0.0 => {
                    (measured * cost / coalesced).clamp(measured, 1.0)
                }
                _ => measured,
            }
        } else {
            average(&mut self.cost, cost);
            measured
        };
        let weight = elapsed.as_secs_f64() / elapsed.saturating_add(Self::MEMORY).as_secs_f64();
        self.load += (load - self.load) * weight;
        if self.busy {
            if self.load < Self::OFF && self.now - self.on_since >= self.min_on {
                self.busy = false;
                self.off_since = Some(self.now);
            }
        } else if (self.load > Self::ON || self.saturated_for >= Self::FALLING_BEHIND)
            && self.framed_for >= Self::FALLING_BEHIND
        {
            let off_for = self.off_since.map(|since| self.now - since);
            if off_for.is_some_and(|off| off < Self::RELAPSE) {
                self.min_on = (self.min_on * 2).clamp(Self::MIN_ON, Self::MAX_ON);
            } else if off_for.is_some_and(|off| off >= Self::MAX_ON) {
                self.min_on = Duration::ZERO;
            }
            self.busy = true;
            self.on_since = self.now;
            self.coalesced_cost = None;
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

    /// A server under a steady stream of events, as the meter sees it: the
    /// frames it writes per second, and what a frame costs its workers,
    /// part of it per write (saved by coalescing `merge` frames into one)
    /// and part per frame (not saved: bytes, the peer's acks).
    #[derive(Clone, Copy)]
    struct Server {
        frames_per_s: f64,
        per_write: f64,
        per_frame: f64,
        merge: f64,
    }

    impl Server {
        /// A server whose load is `load` writing each frame at once, half
        /// of a frame's cost the write's, merging `merge` frames per write
        /// while coalescing.
        fn at(load: f64, merge: f64) -> Self {
            let frames_per_s = 100_000.0;
            let cost = load / frames_per_s;
            Self {
                frames_per_s,
                per_write: cost / 2.0,
                per_frame: cost / 2.0,
                merge,
            }
        }

        /// One sample's busy time and frames, coalescing or not.
        fn sample(&self, coalescing: bool) -> (Duration, usize) {
            let frames = self.frames_per_s * STEP.as_secs_f64();
            let writes = if coalescing {
                frames / self.merge
            } else {
                frames
            };
            let busy = frames * self.per_frame + writes * self.per_write;
            (Duration::from_secs_f64(busy), frames as usize)
        }

        /// Runs `n` samples; returns after how many the meter decided
        /// `until`, if it did.
        fn run(&self, meter: &mut LoadMeter, n: usize, until: bool) -> Option<usize> {
            (1..=n).find(|_| {
                let (busy, frames) = self.sample(meter.busy);
                meter.sample(busy, STEP, frames) == until
            })
        }

        /// Runs for `span`; returns the switches, and the share of the
        /// time spent coalescing.
        fn switches(&self, meter: &mut LoadMeter, span: Duration) -> (usize, f64) {
            let (mut switches, mut on) = (0, 0);
            let steps = span.as_millis() / STEP.as_millis();
            for _ in 0..steps {
                let before = meter.busy;
                let (busy, frames) = self.sample(before);
                let now = meter.sample(busy, STEP, frames);
                switches += usize::from(now != before);
                on += usize::from(now);
            }
            (switches, on as f64 / steps as f64)
        }
    }

    /// Frames enough per sample to merge.
    const FRAMED: usize = 1_000;

    /// Feeds `n` samples at `load` with `frames` written in each (none:
    /// work that is not frames, connections say); returns after how many
    /// the meter decided `busy`, if it did.
    fn feed(
        meter: &mut LoadMeter,
        n: usize,
        load: f64,
        frames: usize,
        busy: bool,
    ) -> Option<usize> {
        (1..=n).find(|_| meter.sample(STEP.mul_f64(load), STEP, frames) == busy)
    }

    #[test]
    fn a_saturated_runtime_turns_coalescing_on_within_a_few_tenths_of_a_second() {
        let mut meter = LoadMeter::default();
        let took = Server::at(1.0, 2.0)
            .run(&mut meter, 1000, true)
            .expect("never turned on");
        let after = STEP * took as u32;
        assert!(
            after >= Duration::from_millis(100) && after <= Duration::from_millis(150),
            "took {after:?}"
        );
    }

    #[test]
    fn busier_and_busier_turns_it_on_once_the_average_says_so() {
        // Never quite saturated: the average decides, within half a second
        // of passing nineteen twentieths.
        let mut meter = LoadMeter::default();
        let took = Server::at(0.98, 2.0)
            .run(&mut meter, 1000, true)
            .expect("never turned on");
        assert!(
            STEP * took as u32 <= Duration::from_millis(500),
            "took {took}"
        );
        assert!(meter.load() > LoadMeter::ON);
    }

    #[test]
    fn a_short_spike_does_not() {
        let mut meter = LoadMeter::default();
        assert_eq!(feed(&mut meter, 2, 1.0, FRAMED, true), None);
        assert_eq!(Server::at(0.1, 1.0).run(&mut meter, 1000, true), None);
    }

    #[test]
    fn a_runtime_with_time_to_spare_keeps_writing_at_once() {
        // Even nine tenths busy: nothing falls behind, so coalescing
        // would add latency for CPU nobody needs.
        for load in [0.5, 0.66, 0.9] {
            let mut meter = LoadMeter::default();
            assert_eq!(Server::at(load, 3.0).run(&mut meter, 10_000, true), None);
            assert!((meter.load() - load).abs() < 0.01, "{}", meter.load());
        }
    }

    #[test]
    fn a_runtime_that_would_fall_behind_coalesces_and_stays_so() {
        // Saturated writing at once; coalescing merges two and a half
        // frames per write and brings the load well down.
        let server = Server::at(1.3, 2.5);
        let mut meter = LoadMeter::default();
        let (switches, on) = server.switches(&mut meter, Duration::from_secs(300));
        assert!(switches <= 3, "{switches} switches");
        assert!(on > 0.99, "coalescing {:.1} % of the time", on * 100.0);
    }

    #[test]
    fn a_burst_of_connections_neither_turns_it_on_nor_earns_a_hold() {
        // A second flat out with no frames written (a thousand clients
        // connecting): nothing to merge. Then frames at 0.65 of a core
        // written at once, 0.4 coalesced (as frames per write alone would
        // say 0.4 * 2.5 = 1.0: on for good): never coalesced either.
        let mut meter = LoadMeter::default();
        assert_eq!(feed(&mut meter, 40, 1.0, 0, true), None);
        let server = Server::at(0.65, 2.5);
        assert_eq!(server.switches(&mut meter, Duration::from_secs(60)).0, 0);
        assert_eq!(meter.min_on, Duration::ZERO);
    }

    #[test]
    fn a_spike_under_a_moderate_load_is_looked_at_again() {
        // Two thirds busy; then half a second at a third more per frame (a
        // neighbour, a client falling behind): on, with the cost of the
        // spike. Once the spike is over, coalescing goes off at the end of
        // its hold and stays off.
        let server = Server::at(0.7, 2.5);
        let spike = Server::at(1.3, 2.5);
        let mut meter = LoadMeter::default();
        assert_eq!(server.switches(&mut meter, Duration::from_secs(10)).0, 0);
        assert!(spike.run(&mut meter, 20, true).is_some());
        spike.switches(&mut meter, Duration::from_millis(400));
        let took = STEP * server.run(&mut meter, 1000, false).expect("held on") as u32;
        assert!(took <= Duration::from_secs(2), "took {took:?}");
        assert_eq!(server.switches(&mut meter, Duration::from_secs(60)).0, 0);
    }

    #[test]
    fn a_load_just_short_of_saturation_is_coalesced_most_of_the_time() {
        // 0.97 written at once: coalescing, looked at again at doubling
        // intervals.
        let server = Server::at(0.97, 2.5);
        let mut meter = LoadMeter::default();
        let (switches, on) = server.switches(&mut meter, Duration::from_secs(300));
        assert!(switches <= 24, "{switches} switches");
        assert!(on > 0.9, "coalescing {:.1} % of the time", on * 100.0);
    }

    #[test]
    fn started_saturated_it_keeps_coalescing() {
        // Saturated from the first sample: what a frame costs then is what
        // the streams falling behind pay (several events a write already),
        // and what coalescing saves against it keeps it on.
        let server = Server::at(1.3, 2.5);
        let mut meter = LoadMeter::default();
        let (switches, on) = server.switches(&mut meter, Duration::from_secs(300));
        assert!(switches <= 3, "{switches} switches");
        assert!(on > 0.99, "coalescing {:.1} % of the time", on * 100.0);
    }

    #[test]
    fn a_quiet_runtime_turns_it_off_again() {
        let mut meter = LoadMeter::default();
        Server::at(1.3, 2.5)
            .run(&mut meter, 1000, true)
            .expect("never turned on");
        let quiet = Server {
            frames_per_s: 1_000.0,
            ..Server::at(1.3, 2.5)
        };
        let took = STEP
            * quiet
                .run(&mut meter, 1000, false)
                .expect("never turned off") as u32;
        assert!(took <= Duration::from_millis(500), "took {took:?}");
    }

    #[test]
    fn fewer_events_turn_it_off_whatever_they_merge() {
        // Saturated, then a third of the events: the frames at their
        // measured cost say 0.43, off within half a second.
        let mut meter = LoadMeter::default();
        let mut server = Server::at(1.3, 2.5);
        server.run(&mut meter, 1000, true).expect("never turned on");
        server.frames_per_s /= 3.0;
        let took = STEP * server.run(&mut meter, 1000, false).expect("held on") as u32;
        assert!(took <= Duration::from_millis(500), "took {took:?}");
    }

    #[test]
    fn a_burst_of_events_is_not_held_on_after_it_ends() {
        // Half a second of events flat out, then a tenth of them: coalescing
        // goes off once it has measured what it saves.
        let mut meter = LoadMeter::default();
        assert!(Server::at(1.3, 2.5).run(&mut meter, 20, true).is_some());
        let light = Server {
            frames_per_s: 10_000.0,
            ..Server::at(1.3, 2.5)
        };
        let took = STEP * light.run(&mut meter, 1000, false).expect("held on") as u32;
        assert!(took <= Duration::from_secs(1), "took {took:?}");
        assert_eq!(light.switches(&mut meter, Duration::from_secs(60)).0, 0);
    }

    /// A load that coalescing more than halves, 1.0 without and 0.2 with,
    /// where what coalescing saves is measured wrong (its first tenths of a
    /// second cost 0.9 while the streams catch up): the hold is what keeps
    /// it on. Returns the switches over `span`, and the share of it spent
    /// coalescing.
    fn relapsing(meter: &mut LoadMeter, span: Duration) -> (usize, f64) {
        let (mut switches, mut on, mut on_for) = (0, 0, Duration::ZERO);
        let steps = span.as_millis() / STEP.as_millis();
        let mut busy = meter.sample(Duration::ZERO, STEP, FRAMED);
        for _ in 0..steps {
            let load = match busy {
                true if on_for < LoadMeter::CALIBRATE => 0.9,
                true => 0.2,
                false => 1.0,
            };
            let now = meter.sample(STEP.mul_f64(load), STEP, FRAMED);
            on_for = if now { on_for + STEP } else { Duration::ZERO };
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
    fn the_hold_is_forgotten_after_a_long_quiet_spell() {
        let mut meter = LoadMeter::default();
        relapsing(&mut meter, Duration::from_secs(300));
        feed(&mut meter, 100_000, 0.0, 0, false).expect("never turned off");
        let mut quiet = 0;
        while meter.now - meter.off_since.unwrap() < LoadMeter::MAX_ON {
            meter.sample(Duration::ZERO, STEP, 0);
            quiet += 1;
        }
        assert!(quiet > 0);
        feed(&mut meter, 1000, 1.0, FRAMED, true).expect("never turned on");
        assert_eq!(meter.min_on, Duration::ZERO);
    }

    #[test]
    fn bad_readings_neither_panic_nor_stick() {
        let mut meter = LoadMeter::default();
        // No time passed; more busy time than time (several workers'
        // counters read at slightly different moments).
        assert!(!meter.sample(Duration::from_millis(5), Duration::ZERO, 0));
        assert!(meter.load() == 0.0);
        feed(&mut meter, 100, 3.0, FRAMED, true).expect("a full load is a full load");
        assert!(meter.load() <= 1.0);
        // Absurd frame counts: a full load at most, and an idle runtime
        // with nothing written is idle whatever a frame cost before.
        let mut meter = LoadMeter::default();
        assert!(meter.sample(STEP, STEP, usize::MAX) || meter.load() <= 1.0);
        feed(&mut meter, 1000, 1.0, FRAMED, true).expect("never turned on");
        meter.sample(STEP, STEP, usize::MAX);
        assert!(meter.load() <= 1.0);
        feed(&mut meter, 1000, 0.0, 0, false).expect("never turned off");
        feed(&mut meter, 1000, 0.0, 0, true);
        assert!(meter.load() < 1e-6, "{}", meter.load());
    }

    proptest::proptest! {
        /// Whatever the readings (clocks read out of step, huge gaps,
        /// absurd counts), the meter neither panics nor leaves [0, 1], and
        /// it only switches across its thresholds.
        #[test]
        fn any_readings_keep_the_meter_sane(
            readings in proptest::collection::vec(
                (0u64..u64::MAX, 0u64..u64::MAX, proptest::num::usize::ANY),
                1..200,
            ),
        ) {
            let mut meter = LoadMeter::default();
            for (busy, elapsed, frames) in readings {
                let before = meter.busy;
                let now = meter.sample(
                    Duration::from_nanos(busy),
                    Duration::from_nanos(elapsed),
                    frames,
                );
                proptest::prop_assert!((0.0..=1.0).contains(&meter.load()));
                if now && !before {
                    proptest::prop_assert!(
                        meter.load() > LoadMeter::ON
                            || meter.saturated_for >= LoadMeter::FALLING_BEHIND
                    );
                    proptest::prop_assert!(meter.framed_for >= LoadMeter::FALLING_BEHIND);
                }
                if before && !now {
                    proptest::prop_assert!(meter.load() < LoadMeter::OFF);
                }
            }
        }
    }
}
