//! Refuses writes while the server is not writable.
//!
//! [`RequireWritableLayer`] answers unsafe methods (`POST`, `PUT`, `PATCH`,
//! `DELETE` by default) with `503 Service Unavailable`, a `Retry-After`
//! header and a JSON body naming the mode and its reason, while the
//! [`ServerMode`] is read-only, degraded or shutting down. Safe methods
//! always pass, and so do requests an exemption predicate accepts (a login
//! route, the admin switch that lifts read-only). A refused request never
//! reaches the inner service.
//!
//! ```
//! use axum::{routing::post, Router};
//! use tower_sse::mode::ServerMode;
//! use tower_sse::RequireWritableLayer;
//!
//! let mode = ServerMode::new();
//! let app: Router = Router::new()
//!     .route("/items", post(|| async { "created" }))
//!     .route("/admin/read-only", post(|| async { "toggled" }))
//!     .layer(
//!         RequireWritableLayer::new(mode.clone())
//!             .exempt(|parts| parts.uri.path().starts_with("/admin/")),
//!     );
//! ```

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::mode::{ModeState, ServerMode};
use crate::response::{json, with_retry_after};
pub use crate::response::{ResponseBody, ResponseFuture};

/// Default `Retry-After` on a refused write.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);

type Exempt = Arc<dyn Fn(&Parts) -> bool + Send + Sync>;

/// Layer refusing writes while the server is not writable; see the
/// [module docs](crate::require_writable).
#[derive(Clone)]
#[must_use]
pub struct RequireWritableLayer {
    mode: ServerMode,
    methods: Arc<[Method]>,
    exempt: Option<Exempt>,
    retry_after: Duration,
}

impl RequireWritableLayer {
    /// Guards `POST`, `PUT`, `PATCH` and `DELETE` by `mode`.
    pub fn new(mode: ServerMode) -> Self {
        Self {
            mode,
            methods: Arc::from([Method::POST, Method::PUT, Method::PATCH, Method::DELETE]),
            exempt: None,
            retry_after: DEFAULT_RETRY_AFTER,
        }
    }

    /// Guards exactly these methods instead.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Lets through any request for which `predicate` returns true, whatever
    /// the mode (checked only for requests that would be refused).
    pub fn exempt<F>(mut self, predicate: F) -> Self
    where
        F: Fn(&Parts) -> bool + Send + Sync + 'static,
    {
        self.exempt = Some(Arc::new(predicate));
        self
    }

    /// The `Retry-After` sent with a refusal (default 30 s).
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = delay;
        self
    }
}

impl<S> Layer<S> for RequireWritableLayer {
    type Service = RequireWritable<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireWritable {
            inner,
            layer: self.clone(),
        }
    }
}

impl fmt::Debug for RequireWritableLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireWritableLayer")
            .field("methods", &self.methods)
            .field("exempt", &self.exempt.is_some())
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

/// The service made by [`RequireWritableLayer`].
#[derive(Clone)]
pub struct RequireWritable<S> {
    inner: S,
    layer: RequireWritableLayer,
}

impl<S> RequireWritable<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for RequireWritable<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireWritable")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireWritable<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if !self.layer.methods.contains(request.method()) {
            return ResponseFuture::future(self.inner.call(request));
        }
        let state = self.layer.mode.current();
        if state.is_writable() {
            return ResponseFuture::future(self.inner.call(request));
        }
        let (parts, body) = request.into_parts();
        if self
            .layer
            .exempt
            .as_ref()
            .is_some_and(|exempt| exempt(&parts))
        {
            return ResponseFuture::future(self.inner.call(Request::from_parts(parts, body)));
        }
        ResponseFuture::answer(refusal(&state, self.layer.retry_after))
    }
}

fn refusal(state: &ModeState, retry_after: Duration) -> Response<Bytes> {
    let error = if state.shutting_down {
        "the server is shutting down"
    } else if state.mode == crate::mode::Mode::ReadOnly {
        "the server is read-only"
    } else {
        "the server is degraded"
    };
    let body = serde_json::json!({
        "error": error,
        "mode": state.mode.as_str(),
        "reason": state.reason.as_deref().or(state.shutting_down.then_some("shutting down")),
        "since": state.since_rfc3339(),
        "shutting_down": state.shutting_down,
    });
    with_retry_after(json(StatusCode::SERVICE_UNAVAILABLE, &body), retry_after)
}
