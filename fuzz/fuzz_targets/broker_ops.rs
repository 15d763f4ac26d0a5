//! A broker operation sequence, decoded from the fuzzer's bytes, run against
//! the sequential model that `tests/it/model/local.rs` uses (the model and its
//! runner are shared through `tests/it/support/broker_model.rs`).
//!
//! The operations cover the proptest's domain and somewhat beyond it
//! (larger payloads, later resume ids, longer clock jumps, resuming from the
//! oldest retained event itself): the model answers those too.
#![no_main]

#[path = "../../tests/it/support/broker_model.rs"]
mod broker_model;

use arbitrary::{Arbitrary, Result, Unstructured};
use libfuzzer_sys::fuzz_target;

use broker_model::{run, Op, Resume, TOPICS};

/// Longest operation sequence tried (the proptest goes to 119).
const MAX_OPS: usize = 256;

#[derive(Debug)]
struct Input {
    max_events: usize,
    max_bytes: usize,
    ops: Vec<Op>,
}

fn resume(u: &mut Unstructured<'_>) -> Result<Resume> {
    Ok(match u.int_in_range(0..=5u8)? {
        0 => Resume::None,
        1 => Resume::Newest,
        2 => Resume::OldestMinus(u.int_in_range(0..=4)?),
        3 => Resume::Seq(u.int_in_range(0..=300)?),
        4 => Resume::ForeignEpoch,
        _ => Resume::Garbage,
    })
}

fn op(u: &mut Unstructured<'_>) -> Result<Op> {
    // Weighted as the proptest's strategy: 6 publish, 1 system, 3 subscribe,
    // 6 poll, 1 drop, 2 advance, 1 close.
    Ok(match u.int_in_range(0..=19u8)? {
        0..=5 => Op::Publish {
            topic: u.choose_index(TOPICS.len())?,
            size: u.int_in_range(0..=1_600)?,
        },
        6 => Op::PublishSystem,
        7..=9 => Op::Subscribe {
            topics: u.int_in_range(1..=7)?,
            resume: resume(u)?,
        },
        10..=15 => Op::Poll {
            sub: u.int_in_range(0..=15)?,
            times: u.int_in_range(1..=8)?,
        },
        16 => Op::Drop {
            sub: u.int_in_range(0..=15)?,
        },
        17 | 18 => Op::Advance {
            secs: u.int_in_range(0..=60)?,
        },
        _ => Op::Close,
    })
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let max_events = u.int_in_range(1..=8)?;
        let max_bytes = u.int_in_range(200..=1_600)?;
        let mut ops = Vec::new();
        while ops.len() < MAX_OPS && !u.is_empty() {
            ops.push(op(u)?);
        }
        Ok(Self {
            max_events,
            max_bytes,
            ops,
        })
    }
}

fuzz_target!(|input: Input| {
    run(input.max_events, input.max_bytes, input.ops);
});
