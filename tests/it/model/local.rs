//! The broker publishing its own events, held against a sequential model
//! over random operation sequences: publish (topic, size), subscribe
//! (topics, kind of resume id), poll, drop, clock advance, close. Checks
//! invariants 3 (lag reported with exact counts), 7 (retention bounds;
//! resume boundaries) and 8 (topic isolation) of the design, message by
//! message.
//!
//! The model and the runner live in `support/broker_model.rs`, shared with
//! the `broker_ops` fuzz target; this file only generates the operations.

use proptest::prelude::*;

use crate::support::broker_model::{run, Op, Resume, TOPICS};

fn op() -> impl Strategy<Value = Op> {
    let resume = prop_oneof![
        Just(Resume::None),
        Just(Resume::Newest),
        (1u64..3).prop_map(Resume::OldestMinus),
        (0u64..40).prop_map(Resume::Seq),
        Just(Resume::ForeignEpoch),
        Just(Resume::Garbage),
    ];
    prop_oneof![
        6 => (0..TOPICS.len(), 0usize..120).prop_map(|(topic, size)| Op::Publish { topic, size }),
        1 => Just(Op::PublishSystem),
        3 => (1u8..8, resume).prop_map(|(topics, resume)| Op::Subscribe { topics, resume }),
        6 => (0usize..8, 1usize..6).prop_map(|(sub, times)| Op::Poll { sub, times }),
        1 => (0usize..8).prop_map(|sub| Op::Drop { sub }),
        2 => (0u64..25).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Close),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn broker_matches_the_sequential_model(
        max_events in 1usize..8,
        max_bytes in 200usize..1_500,
        ops in prop::collection::vec(op(), 1..120),
    ) {
        run(max_events, max_bytes, ops);
    }
}
