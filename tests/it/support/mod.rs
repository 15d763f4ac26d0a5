//! What the tests share, each written once: servers on loopback and the
//! inner services under the layers, hyper's client on connections the
//! test owns, an SSE reader, raw sockets, bounded waits, a seeded
//! generator, the full stack of the mode tests, and a process of its own
//! for a test that measures the whole process, and an in-memory pub/sub
//! bus for the hub's upstream, and the mailbox models' bounds. Two are deliberate
//! second implementations that share no code with the crate: a parser
//! written from the SSE standard and a sequential model of the broker.

pub mod broker_model;
pub mod bus;
pub mod client;
pub mod h2;
pub mod inner;
pub mod mailbox_bounds;
pub mod process;
pub mod raw;
#[cfg(feature = "redis")]
pub mod redis;
pub mod rng;
pub mod server;
pub mod sse;
pub mod sse_parser;
pub mod stack;
pub mod trace;
pub mod wait;
