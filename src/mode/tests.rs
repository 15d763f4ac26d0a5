//! The mode's state machine held against a model over random operation
//! sequences, including the probe causes only the crate can set directly.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{Mode, ServerMode};
use crate::{Broker, Message, Topics};

#[derive(Clone, Debug)]
enum Op {
    SetReadOnly(u8),
    ClearReadOnly,
    ToggleReadOnly(u8),
    SetDegraded(u8),
    ClearDegraded,
    ToggleDegraded(u8),
    ProbeFailing(u64, u8),
    ProbePassing(u64),
    BeginShutdown,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3).prop_map(Op::SetReadOnly),
        3 => Just(Op::ClearReadOnly),
        3 => (0u8..3).prop_map(Op::ToggleReadOnly),
        4 => (0u8..3).prop_map(Op::SetDegraded),
        3 => Just(Op::ClearDegraded),
        2 => (0u8..3).prop_map(Op::ToggleDegraded),
        4 => (0u64..3, 0u8..3).prop_map(|(id, e)| Op::ProbeFailing(id, e)),
        4 => (0u64..3).prop_map(Op::ProbePassing),
        1 => Just(Op::BeginShutdown),
    ]
}

#[derive(Default, Debug)]
struct Model {
    read_only: Option<String>,
    degraded: Option<String>,
    probes: BTreeMap<u64, String>,
    shutting_down: bool,
}

impl Model {
    fn derive(&self) -> (Mode, Option<String>) {
        if let Some(r) = &self.degraded {
            (Mode::Degraded, Some(r.clone()))
        } else if let Some((id, e)) = self.probes.iter().next() {
            (Mode::Degraded, Some(format!("probe{id}: {e}")))
        } else if let Some(r) = &self.read_only {
            (Mode::ReadOnly, Some(r.clone()))
        } else {
            (Mode::Normal, None)
        }
    }
}

fn last_state_event(sub: &mut crate::Subscription) -> Option<serde_json::Value> {
    let mut last = None;
    while let Some(message) = sub.try_next() {
        if let Message::Event(event) = message {
            assert_eq!(event.event_type(), "server.state");
            assert!(event.is_system());
            last = Some(serde_json::from_str(event.data()).unwrap());
        }
    }
    last
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mode_matches_the_model_and_every_view_agrees(ops in prop::collection::vec(op(), 1..60)) {
        let mode = ServerMode::new();
        let broker = Broker::builder().retain_forever().retain_events(100_000).build();
        broker.follow_mode(&mode);
        let mut sub = broker.subscribe(&Topics::parse(["any"]).unwrap(), Some(&format!("{}-0", broker.epoch()))).unwrap();
        // Following publishes the initial state once.
        let initial = last_state_event(&mut sub).unwrap();
        prop_assert_eq!(&initial["mode"], "normal");
        let rx = mode.watch();
        let mut model = Model::default();
        let mut changes = 0u64;
        let mut previous = mode.current();

        for op in ops {
            match &op {
                Op::SetReadOnly(r) => { model.read_only = Some(format!("ro{r}")); mode.set_read_only(format!("ro{r}")); }
                Op::ClearReadOnly => { model.read_only = None; mode.clear_read_only(); }
                Op::ToggleReadOnly(r) => {
                    model.read_only = match model.read_only.take() { Some(_) => None, None => Some(format!("ro{r}")) };
                    let on = mode.toggle_read_only(format!("ro{r}"));
                    prop_assert_eq!(on, model.read_only.is_some());
                }
                Op::SetDegraded(r) => { model.degraded = Some(format!("deg{r}")); mode.set_degraded(format!("deg{r}")); }
                Op::ClearDegraded => { model.degraded = None; mode.clear_degraded(); }
                Op::ToggleDegraded(r) => {
                    model.degraded = match model.degraded.take() { Some(_) => None, None => Some(format!("deg{r}")) };
                    let on = mode.toggle_degraded(format!("deg{r}"));
                    prop_assert_eq!(on, model.degraded.is_some());
                }
                Op::ProbeFailing(id, e) => {
                    model.probes.entry(*id).or_insert_with(|| format!("err{e}"));
                    mode.probe_failing(*id, &format!("probe{id}"), format!("err{e}"));
                }
                Op::ProbePassing(id) => { model.probes.remove(id); mode.probe_passing(*id); }
                Op::BeginShutdown => { model.shutting_down = true; mode.begin_shutdown(); }
            }
            let (expected_mode, expected_reason) = model.derive();
            let current = mode.current();
            prop_assert_eq!(current.mode, expected_mode);
            prop_assert_eq!(&current.reason, &expected_reason);
            prop_assert_eq!(current.shutting_down, model.shutting_down);
            prop_assert_eq!(&*rx.borrow(), &current);
            let causes = mode.causes();
            prop_assert_eq!(&causes.read_only, &model.read_only);
            prop_assert_eq!(&causes.degraded, &model.degraded);
            prop_assert_eq!(causes.failing_probes.len(), model.probes.len());
            prop_assert_eq!(current.is_writable(), expected_mode == Mode::Normal && !model.shutting_down);
            prop_assert_eq!(current.is_ready(), expected_mode != Mode::Degraded && !model.shutting_down);

            let changed = current.mode != previous.mode
                || current.reason != previous.reason
                || current.shutting_down != previous.shutting_down;
            if current.mode == previous.mode {
                prop_assert_eq!(current.since, previous.since);
            }
            // One event per actual change, none otherwise; the last one is the current state.
            match last_state_event(&mut sub) {
                Some(event) => {
                    prop_assert!(changed, "an event without a change after {:?}", op);
                    changes += 1;
                    prop_assert_eq!(&event["mode"], current.mode.as_str());
                    prop_assert_eq!(event["reason"].as_str(), current.reason.as_deref());
                    let since = current.since_rfc3339();
                    prop_assert_eq!(event["since"].as_str(), Some(since.as_str()));
                }
                None => prop_assert!(!changed, "a change without an event after {:?}", op),
            }
            previous = current;
        }
        prop_assert_eq!(broker.stats().published, changes + 1);
    }
}

#[test]
fn concurrent_changes_end_in_one_state_every_view_agrees_on() {
    let mode = ServerMode::new();
    let broker = Broker::builder()
        .retain_forever()
        .retain_events(1_000_000)
        .build();
    broker.follow_mode(&mode);
    let mut sub = broker
        .subscribe(&Topics::parse(["any"]).unwrap(), None)
        .unwrap();
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let mode = mode.clone();
            scope.spawn(move || {
                for i in 0..500u64 {
                    match (t + i) % 6 {
                        0 => mode.set_read_only(format!("ro{t}")),
                        1 => mode.clear_read_only(),
                        2 => mode.set_degraded(format!("deg{i}")),
                        3 => mode.clear_degraded(),
                        4 => mode.probe_failing(t, "p", format!("e{i}")),
                        _ => mode.probe_passing(t),
                    }
                }
            });
        }
    });
    let current = mode.current();
    assert_eq!(*mode.watch().borrow(), current);
    let last = last_state_event(&mut sub).expect("some change was published");
    assert_eq!(last["mode"], current.mode.as_str());
    assert_eq!(last["reason"].as_str(), current.reason.as_deref());
}

#[test]
fn a_reason_of_any_length_is_cut_and_every_view_still_agrees() {
    use super::MAX_REASON_BYTES;

    let mode = ServerMode::new();
    // A payload limit far below a state event: the crate's own event
    // is not held to it.
    let broker = Broker::builder().max_event_bytes(16).build();
    broker.follow_mode(&mode);
    let mut sub = broker
        .subscribe(&Topics::parse(["any"]).unwrap(), None)
        .unwrap();

    // One megabyte, with a two-byte character across the cut.
    let long = format!(
        "{}é{}",
        "r".repeat(MAX_REASON_BYTES - 1),
        "x".repeat(1 << 20)
    );
    let cut = format!("{}…", "r".repeat(MAX_REASON_BYTES - 1));
    mode.set_degraded(long.clone());
    let current = mode.current();
    assert_eq!(current.mode, Mode::Degraded);
    assert_eq!(current.reason.as_deref(), Some(cut.as_str()));
    assert_eq!(*mode.watch().borrow(), current);
    let event = last_state_event(&mut sub).expect("the change was published");
    assert_eq!(event["mode"], "degraded");
    assert_eq!(event["reason"].as_str(), Some(cut.as_str()));

    // A probe's error and the operator's reason are cut the same way.
    mode.clear_degraded();
    mode.probe_failing(1, "storage", long.clone());
    let reason = mode.current().reason.unwrap();
    assert_eq!(reason.len(), MAX_REASON_BYTES + '…'.len_utf8());
    assert!(reason.starts_with("storage: rrr") && reason.ends_with('…'));
    assert_eq!(
        last_state_event(&mut sub).unwrap()["reason"].as_str(),
        Some(reason.as_str())
    );
    mode.probe_passing(1);
    mode.set_read_only(long);
    assert_eq!(mode.current().reason.as_deref(), Some(cut.as_str()));
    let event = last_state_event(&mut sub).unwrap();
    assert_eq!(event["mode"], "read-only");

    // Up to the bound, a reason is kept whole.
    let exact = "y".repeat(MAX_REASON_BYTES);
    mode.set_read_only(exact.clone());
    assert_eq!(mode.current().reason, Some(exact));
}
