//! Probes on tokio's paused clock: hysteresis, timeouts, panics, flapping,
//! several probes, and how they combine with an operator's read-only.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower_sse::mode::{Mode, Probe, ServerMode};
use tower_sse::Broker;

const TICK: Duration = Duration::from_secs(1);

/// A check whose outcomes are scripted; counts its calls.
#[derive(Clone, Default)]
struct Script {
    outcomes: Arc<Mutex<Vec<bool>>>,
    calls: Arc<AtomicUsize>,
}

impl Script {
    fn new(outcomes: &[bool]) -> Self {
        let mut reversed = outcomes.to_vec();
        reversed.reverse();
        Self {
            outcomes: Arc::new(Mutex::new(reversed)),
            calls: Arc::default(),
        }
    }

    /// The probe; once the script runs out it keeps succeeding.
    fn probe(&self, name: &str) -> Probe {
        let script = self.clone();
        Probe::new(name, move || {
            script.calls.fetch_add(1, Ordering::SeqCst);
            let ok = script.outcomes.lock().unwrap().pop().unwrap_or(true);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err("storage unreachable")
                }
            }
        })
        .interval(TICK)
        .fail_after(3)
        .recover_after(2)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Lets the probe run until it has made `n` checks (virtual time only).
async fn until_calls(script: &Script, n: usize) {
    while script.calls() < n {
        tokio::time::sleep(TICK / 10).await;
    }
    // Let the check's outcome be applied.
    tokio::time::sleep(TICK / 10).await;
}

#[tokio::test(start_paused = true)]
async fn degraded_after_n_failures_recovered_after_m_successes() {
    let mode = ServerMode::new();
    let script = Script::new(&[false, false, false, false, true, true]);
    let _probe = mode.spawn_probe(script.probe("storage"));

    until_calls(&script, 2).await;
    assert_eq!(
        mode.current().mode,
        Mode::Normal,
        "two failures are not enough"
    );
    until_calls(&script, 3).await;
    let state = mode.current();
    assert_eq!(state.mode, Mode::Degraded);
    assert_eq!(
        state.reason.as_deref(),
        Some("storage: storage unreachable")
    );
    assert!(!state.is_ready());
    until_calls(&script, 5).await;
    assert_eq!(
        mode.current().mode,
        Mode::Degraded,
        "one success is not enough"
    );
    until_calls(&script, 6).await;
    assert_eq!(mode.current().mode, Mode::Normal);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_check_is_cut_by_its_timeout_and_counts_as_a_failure() {
    let mode = ServerMode::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let _probe = mode.spawn_probe(
        Probe::new("hangs", move || {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Result<(), String>>()
        })
        .interval(TICK)
        .timeout(Duration::from_millis(300))
        .fail_after(2),
    );
    let mut watch = mode.watch();
    tokio::time::timeout(
        Duration::from_secs(60),
        watch.wait_for(|s| s.mode == Mode::Degraded),
    )
    .await
    .expect("the hanging probe never degraded the server")
    .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let reason = mode.current().reason.unwrap();
    assert!(reason.starts_with("hangs: no answer within"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_check_is_a_failure_not_a_dead_task() {
    let mode = ServerMode::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let probe = mode.spawn_probe(
        Probe::new("panics", move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    panic!("check {n} panicked");
                }
                Ok::<(), String>(())
            }
        })
        .interval(TICK)
        .fail_after(3)
        .recover_after(1),
    );
    let mut watch = mode.watch();
    tokio::time::timeout(
        Duration::from_secs(60),
        watch.wait_for(|s| s.mode == Mode::Degraded),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        mode.current().reason.as_deref(),
        Some("panics: the check panicked")
    );
    // The probe lives on, and recovers when the check stops panicking.
    tokio::time::timeout(
        Duration::from_secs(60),
        watch.wait_for(|s| s.mode == Mode::Normal),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!probe.is_finished());
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn a_flapping_check_changes_nothing() {
    let mode = ServerMode::new();
    let broker = Broker::new();
    broker.follow_mode(&mode);
    let published = broker.stats().published;
    let outcomes: Vec<bool> = (0..40).map(|i| i % 3 != 0).collect();
    let script = Script::new(&outcomes);
    let _probe = mode.spawn_probe(script.probe("flappy"));
    let watch = mode.watch();
    until_calls(&script, 40).await;
    assert!(!watch.has_changed().unwrap(), "the mode changed");
    assert_eq!(
        broker.stats().published,
        published,
        "server.state was published"
    );
}

#[tokio::test(start_paused = true)]
async fn degraded_while_any_probe_fails_and_operator_read_only_survives_recovery() {
    let mode = ServerMode::new();
    mode.set_read_only("maintenance");
    let a = Script::new(&[false, false, false, true, true]);
    let b = Script::new(&[false, false, false, false, false, false, true, true]);
    let _pa = mode.spawn_probe(a.probe("a"));
    let _pb = mode.spawn_probe(b.probe("b"));

    until_calls(&a, 3).await;
    until_calls(&b, 3).await;
    assert_eq!(mode.current().mode, Mode::Degraded);
    until_calls(&a, 5).await;
    let state = mode.current();
    assert_eq!(state.mode, Mode::Degraded, "b still fails");
    assert_eq!(state.reason.as_deref(), Some("b: storage unreachable"));
    until_calls(&b, 8).await;
    let state = mode.current();
    assert_eq!(
        state.mode,
        Mode::ReadOnly,
        "recovery does not lift the operator's read-only"
    );
    assert_eq!(state.reason.as_deref(), Some("maintenance"));
    assert!(state.is_ready());
}

#[tokio::test(start_paused = true)]
async fn stopping_a_probe_lifts_its_cause() {
    let mode = ServerMode::new();
    let script = Script::new(&[false; 100]);
    let probe = mode.spawn_probe(script.probe("storage"));
    until_calls(&script, 3).await;
    assert_eq!(mode.current().mode, Mode::Degraded);
    probe.stop();
    assert_eq!(mode.current().mode, Mode::Normal);
    let calls = script.calls();
    tokio::time::sleep(TICK * 5).await;
    assert_eq!(script.calls(), calls, "the stopped probe still runs");
}

#[tokio::test(start_paused = true)]
async fn a_probe_ends_when_its_mode_is_gone() {
    let mode = ServerMode::new();
    let script = Script::new(&[]);
    let probe = mode.spawn_probe(script.probe("storage"));
    until_calls(&script, 1).await;
    drop(mode);
    tokio::time::timeout(Duration::from_secs(60), async {
        while !probe.is_finished() {
            tokio::time::sleep(TICK).await;
        }
    })
    .await
    .expect("the probe outlived its mode");
    assert!(script.calls() <= 3);
}
