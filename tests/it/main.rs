//! The integration tests: one binary, one module per subject, and
//! [`support`], what they share. A module that needs a feature (or a
//! platform) builds only with it; under `--cfg loom` nothing here builds,
//! the loom models being the `loom` test target.
#![cfg(not(loom))]

#[cfg(feature = "redis")]
mod backplane;
mod broker;
mod health;
mod hook;
mod http;
mod http2;
mod mailbox;
mod mailbox_http;
#[cfg(feature = "redis")]
mod mailbox_redis;
#[cfg(feature = "redis")]
mod mailbox_redis_model;
mod mode;
mod model;
mod observe;
mod probe;
mod require_writable;
mod security;
#[cfg(feature = "serve")]
mod serve;
mod shutdown;
#[cfg(all(feature = "signal", unix))]
mod signal;
mod soak;
#[cfg(feature = "tcp")]
mod stalled_reader;
mod support;
mod tower_http;
mod upstream;
mod upstream_model;
#[cfg(feature = "redis")]
mod upstream_redis;
#[cfg(all(feature = "tcp", target_os = "linux"))]
mod vanished_peer;
mod wire;
