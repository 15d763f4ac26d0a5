//! Whether the runtime is busy enough for write coalescing to pay.
//!
//! Coalescing trades latency for CPU: a stream that receives events faster
//! than one per window waits up to a window to write them together. On a
//! runtime with time to spare that is latency paid for nothing, so the
//! layer's ticker samples how busy the runtime's workers were (tokio's own
//! per-worker busy time) and streams coalesce only while they are mostly
//! busy. Coalescing then frees CPU and the measured load falls: the gap
//! between the two thresholds keeps it from switching off again at once.

use std::time::Duration;

/// A moving average of the runtime's load, and what it decided.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LoadMeter {
    load: f64,
    busy: bool,
}

impl LoadMeter {
    /// How far back the average looks: a spike shorter than this does not
    /// switch coalescing on, a steady load does within a few times this.
    const MEMORY: Duration = Duration::from_millis(100);
    /// Above this share of the workers' time spent running tasks,
    /// coalescing starts: the runtime is close to falling behind.
    const ON: f64 = 0.75;
    /// Below this share, it stops. Coalescing roughly halves the work of a
    /// busy fan-out, so the load it leads to must not switch it off again.
    const OFF: f64 = 0.35;

    /// Counts a period of `elapsed` in which the workers spent `busy` (per
    /// worker, on average) running tasks; returns whether writes should
    /// now be coalesced.
    pub(crate) fn sample(&mut self, busy: Duration, elapsed: Duration) -> bool {
        if elapsed.is_zero() {
            return self.busy;
        }
        let load = (busy.as_secs_f64() / elapsed.as_secs_f64()).clamp(0.0, 1.0);
        let weight = elapsed.as_secs_f64() / (elapsed + Self::MEMORY).as_secs_f64();
        self.load += (load - self.load) * weight;
        self.busy = if self.busy {
            self.load >= Self::OFF
        } else {
            self.load > Self::ON
        };
        self.busy
    }

    /// The current average, between 0 and 1.
    #[cfg(test)]
    pub(crate) fn load(&self) -> f64 {
        self.load
    }
}

#[cfg(test)]
mod tests {
    use super::LoadMeter;
    use std::time::Duration;

    const STEP: Duration = Duration::from_millis(25);

    /// Feeds `n` steps at `load`; returns after how many the meter
    /// decided `busy`, if it did.
    fn feed(meter: &mut LoadMeter, n: usize, load: f64, busy: bool) -> Option<usize> {
        (1..=n).find(|_| meter.sample(STEP.mul_f64(load), STEP) == busy)
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
        let mut meter = LoadMeter::default();
        feed(&mut meter, 1000, 0.97, true).expect("never turned on");
        assert_eq!(feed(&mut meter, 10_000, 0.5, false), None);
    }

    #[test]
    fn a_quiet_runtime_turns_it_off_again() {
        let mut meter = LoadMeter::default();
        feed(&mut meter, 1000, 1.0, true).expect("never turned on");
        let took = feed(&mut meter, 1000, 0.05, false).expect("never turned off");
        assert!(took * STEP.as_millis() as usize <= 500, "took {took} steps");
    }

    #[test]
    fn bad_readings_neither_panic_nor_stick() {
        let mut meter = LoadMeter::default();
        // No time passed; more busy time than time (several workers'
        // counters read at slightly different moments).
        assert!(!meter.sample(Duration::from_millis(5), Duration::ZERO));
        assert!(meter.load() == 0.0);
        feed(&mut meter, 100, 3.0, true).expect("a full load is a full load");
        assert!(meter.load() <= 1.0);
    }
}
