//! `RequireWritableLayer`: unsafe methods refused with a 503 naming the
//! mode while the server is read-only, degraded or shutting down, without
//! calling the inner service; which methods, the `Retry-After` hint and
//! exemptions are the app's to choose.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{header, Method, StatusCode};
use tower::Layer;
use tower_sse::mode::ServerMode;
use tower_sse::{RequireWritableLayer, Shutdown};

use crate::support::client::{call, request, Reply};
use crate::support::inner::counting_inner;
use crate::support::stack::{app, followed_broker};

const UNSAFE: [Method; 4] = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
const SAFE: [Method; 3] = [Method::GET, Method::HEAD, Method::OPTIONS];

/// A 503 refusal naming `mode` and `reason`, with `Retry-After: retry`.
fn assert_refused(reply: &Reply, mode: &str, reason: Option<&str>, retry: &str, what: &str) {
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{what}");
    assert_eq!(reply.header(header::RETRY_AFTER), Some(retry), "{what}");
    assert_eq!(
        reply.header(header::CONTENT_TYPE),
        Some("application/json"),
        "{what}"
    );
    let body = reply.json();
    assert_eq!(body["mode"], mode, "{what}: {body}");
    assert_eq!(body["reason"].as_str(), reason, "{what}: {body}");
    assert!(body["error"].is_string(), "{what}: {body}");
}

#[tokio::test]
async fn require_writable_lets_everything_through_in_normal_mode() {
    let mode = ServerMode::new();
    let (calls, inner) = counting_inner();
    let service = RequireWritableLayer::new(mode.clone()).layer(inner);
    for (n, method) in SAFE.iter().chain(UNSAFE.iter()).enumerate() {
        let reply = call(service.clone(), request(method.clone(), "/items")).await;
        assert_eq!(reply.status, StatusCode::OK, "{method}");
        assert_eq!(reply.text(), "inner", "{method}");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            n + 1,
            "{method} reached inner"
        );
    }
}

#[tokio::test]
async fn require_writable_refuses_unsafe_methods_without_calling_inner() {
    let mode = ServerMode::new();
    let (calls, inner) = counting_inner();
    let service = RequireWritableLayer::new(mode.clone()).layer(inner);

    for (change, name, reason) in [
        (
            (|m| m.set_read_only("maintenance")) as fn(&ServerMode),
            "read-only",
            "maintenance",
        ),
        (|m| m.set_degraded("disk full"), "degraded", "disk full"),
    ] {
        change(&mode);
        for method in UNSAFE {
            let reply = call(service.clone(), request(method.clone(), "/items")).await;
            assert_refused(
                &reply,
                name,
                Some(reason),
                "30",
                &format!("{method} {name}"),
            );
            assert_eq!(
                reply.json()["error"],
                format!("the server is {name}"),
                "{method}"
            );
            assert_eq!(reply.json()["since"], mode.current().since_rfc3339());
            assert_eq!(calls.load(Ordering::SeqCst), 0, "{method} reached inner");
        }
    }
    // Safe methods pass, still degraded.
    for (n, method) in SAFE.into_iter().enumerate() {
        let reply = call(service.clone(), request(method.clone(), "/items")).await;
        assert_eq!(reply.status, StatusCode::OK, "{method}");
        assert_eq!(calls.load(Ordering::SeqCst), n + 1);
    }
    // Lifting one cause leaves the other in force.
    mode.clear_degraded();
    let reply = call(service.clone(), request(Method::POST, "/items")).await;
    assert_refused(
        &reply,
        "read-only",
        Some("maintenance"),
        "30",
        "after clear_degraded",
    );
    mode.clear_read_only();
    let reply = call(service.clone(), request(Method::POST, "/items")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), SAFE.len() + 1);
}

#[tokio::test]
async fn require_writable_methods_and_retry_after_are_configurable() {
    let mode = ServerMode::new();
    mode.set_read_only("maintenance");
    let (calls, inner) = counting_inner();

    let post_only = RequireWritableLayer::new(mode.clone())
        .methods([Method::POST])
        .retry_after(Duration::from_secs(120))
        .layer(inner.clone());
    let reply = call(post_only.clone(), request(Method::POST, "/x")).await;
    assert_refused(&reply, "read-only", Some("maintenance"), "120", "POST");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    for (n, method) in [Method::PUT, Method::PATCH, Method::DELETE]
        .into_iter()
        .enumerate()
    {
        let reply = call(post_only.clone(), request(method.clone(), "/x")).await;
        assert_eq!(reply.status, StatusCode::OK, "{method} is not guarded");
        assert_eq!(calls.load(Ordering::SeqCst), n + 1);
    }

    // Any method can be guarded, a safe one included.
    let guard_get = RequireWritableLayer::new(mode.clone())
        .methods([Method::GET])
        .layer(inner);
    let before = calls.load(Ordering::SeqCst);
    let reply = call(guard_get.clone(), request(Method::GET, "/x")).await;
    assert_refused(
        &reply,
        "read-only",
        Some("maintenance"),
        "30",
        "guarded GET",
    );
    let reply = call(guard_get, request(Method::POST, "/x")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn require_writable_exempts_what_the_predicate_accepts() {
    let mode = ServerMode::new();
    mode.set_read_only("maintenance");
    let (calls, inner) = counting_inner();
    let service = RequireWritableLayer::new(mode.clone())
        .exempt(|parts| parts.uri.path().starts_with("/admin/"))
        .layer(inner);

    let reply = call(service.clone(), request(Method::POST, "/admin/switch")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let reply = call(service.clone(), request(Method::POST, "/items")).await;
    assert_refused(
        &reply,
        "read-only",
        Some("maintenance"),
        "30",
        "POST /items",
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    mode.set_degraded("disk full");
    let reply = call(service, request(Method::DELETE, "/admin/switch")).await;
    assert_eq!(reply.status, StatusCode::OK, "exempt while degraded too");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // The admin switch of the full app lifts read-only through the guard.
    let (broker, mode) = followed_broker(6);
    let app = app(&broker, &mode);
    mode.set_read_only("maintenance");
    let reply = call(app.clone(), request(Method::POST, "/items")).await;
    assert_refused(&reply, "read-only", Some("maintenance"), "30", "app POST");
    let reply = call(app.clone(), request(Method::POST, "/admin/read-only")).await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "off"));
    assert!(mode.is_writable());
    let reply = call(app, request(Method::POST, "/items")).await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "created"));
}

#[tokio::test]
async fn require_writable_refuses_writes_while_shutting_down() {
    let mode = ServerMode::new();
    let (calls, inner) = counting_inner();
    let service = RequireWritableLayer::new(mode.clone()).layer(inner);
    let shutdown = Shutdown::new().mode(&mode);
    shutdown.trigger();
    assert!(shutdown.is_triggered());
    assert!(!mode.is_writable());

    for method in UNSAFE {
        let reply = call(service.clone(), request(method.clone(), "/items")).await;
        assert_refused(
            &reply,
            "normal",
            Some("shutting down"),
            "30",
            &format!("{method}"),
        );
        let body = reply.json();
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("shutting down"), "{method}: {body}");
        assert_eq!(body["shutting_down"], true);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let reply = call(service, request(Method::GET, "/items")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
