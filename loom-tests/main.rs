//! Loom models of the broker's concurrency claims (see the README).
#![cfg(loom)]
