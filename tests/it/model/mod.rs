//! The broker held against models over random operation sequences, in its
//! two variants: a broker that publishes its own events (`local`: each
//! message predicted by a sequential model of the log), and a broker that
//! mirrors a stream as a backplane's reader feeds it (`mirror`: entries
//! arriving in stream order, holes where the stream trimmed what was not
//! read yet, a restart of the stream under a new epoch, each message held
//! against the contract).

mod local;
mod mirror;
