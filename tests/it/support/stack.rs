//! The full stack of the mode tests (`mode`, `require_writable`, `health`,
//! `shutdown`), as an app would mount it, and what its event streams must
//! say.

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use http::{header, StatusCode};
use serde_json::json;
use tower_sse::mode::{ModeState, ServerMode};
use tower_sse::sse::any_topic;
use tower_sse::{Broker, HealthLayer, RequireWritableLayer, SseLayer};

use super::client;
use super::sse::{Client, RawFrame};

/// The frame every stream ends with at shutdown, with the default 5 s hint.
pub const SHUTDOWN_FRAME: &str = "retry: 5000\nevent: shutdown\ndata: {\"retry\":5000}";

/// Hang detector for a server that should stop (not a performance bound).
pub const SERVER_STOPS: Duration = Duration::from_secs(20);

/// The full stack, as an app would mount it: writes guarded (with the admin
/// switch exempt), the events route for any topic, health and readiness.
pub fn app(broker: &Broker, mode: &ServerMode) -> Router {
    let switch = mode.clone();
    Router::new()
        .route(
            "/items",
            get(|| async { "items" }).post(|| async { "created" }),
        )
        .route(
            "/admin/read-only",
            post(move || {
                let on = switch.toggle_read_only("operator");
                async move {
                    if on {
                        "on"
                    } else {
                        "off"
                    }
                }
            }),
        )
        .layer(
            RequireWritableLayer::new(mode.clone())
                .exempt(|parts| parts.uri.path().starts_with("/admin/")),
        )
        .layer(SseLayer::new(broker.clone()).authorize(any_topic))
        .layer(HealthLayer::new(mode.clone()).broker(broker))
}

/// A broker with this `epoch` that follows a new mode.
pub fn followed_broker(epoch: u64) -> (Broker, ServerMode) {
    let broker = Broker::builder().epoch(epoch).build();
    let mode = ServerMode::new();
    broker.follow_mode(&mode);
    (broker, mode)
}

/// Connects to the events route and checks the opening: `200
/// text/event-stream`, the `retry:` line, then at once (in the same block)
/// a `server.state` frame without an `id:` line. Returns the client and that greeting.
pub async fn connect_and_greet(addr: SocketAddr, path: &str) -> (Client, RawFrame) {
    let mut client = client::get(addr, path, &[]).await;
    assert_eq!(client.status, StatusCode::OK, "GET {path}");
    assert_eq!(
        client.headers.get(header::CONTENT_TYPE).unwrap(),
        "text/event-stream"
    );
    let greeting = client.next_frame().await.expect("a greeting");
    assert!(
        greeting.text.starts_with("retry: 3000\nevent: "),
        "the stream opens with the retry hint, a line in the greeting's block: {greeting:?}"
    );
    assert!(
        greeting.is_state(),
        "the frame right after `retry:` is the state: {greeting:?}"
    );
    assert_eq!(
        greeting.id(),
        None,
        "the greeting carries no id: {greeting:?}"
    );
    (client, greeting)
}

/// What a `server.state` frame must carry for `state`, outside shutdown:
/// exactly `{mode, reason, since}`.
pub fn assert_state_data(frame: &RawFrame, state: &ModeState) {
    assert!(frame.is_state(), "not a state frame: {frame:?}");
    assert_eq!(
        frame.json(),
        json!({
            "mode": state.mode.as_str(),
            "reason": state.reason,
            "since": state.since_rfc3339(),
        }),
        "frame {frame:?}"
    );
}

/// The last of `frames` is `expected`.
pub fn assert_final_frame(frames: &[RawFrame], expected: &str) {
    let last = frames
        .last()
        .unwrap_or_else(|| panic!("no frame before the end"));
    assert_eq!(last.text, expected, "the last frame; all: {frames:?}");
}
