//! Health and readiness routes.
//!
//! [`HealthLayer`] answers two paths itself and passes everything else on:
//!
//! - `GET /health`: always `200` while the process serves at all, with
//!   `{"status", "mode", "reason", "since", "shutting_down", "subscribers",
//!   "dropped", "uptime", "version"}`: what an operator looks at.
//!   `status` is `ok`, `read-only`, `degraded` or `shutting-down`;
//!   `subscribers` (every subscription of the broker: open streams and
//!   in-process subscribers alike) and `dropped` (events subscribers missed
//!   because they lagged) come from the [`Broker`] given with
//!   [`HealthLayer::broker`], and so does `mirror` for a broker that
//!   mirrors a shared stream (a replica of the Redis backplane): its
//!   place in the stream, `lag` and `reconnects` among them
//!   ([`MirrorStats`](crate::broker::MirrorStats)), `null` otherwise, and
//!   `hub` for a broker built with a [hub](crate::upstream): its
//!   upstreams, open and in all, and their failures
//!   ([`HubStats`](crate::HubStats)), `null` otherwise; `uptime` is in
//!   seconds, to the millisecond.
//! - `GET /ready`: `200` when the server should receive traffic, `503` with
//!   the reason when degraded or shutting down: what a load balancer polls.
//!   Read-only stays ready, since reads are still served.
//!
//! `HEAD` answers the same status and headers; other methods get `405`.
//!
//! ```
//! use axum::Router;
//! use tower_sse::mode::ServerMode;
//! use tower_sse::{Broker, HealthLayer};
//!
//! let broker = Broker::new();
//! let mode = ServerMode::new();
//! let app: Router = Router::new().layer(HealthLayer::new(mode).broker(&broker));
//! ```

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::mode::{Mode, ServerMode};
use crate::response::{json, method_not_allowed};
pub use crate::response::{ResponseBody, ResponseFuture};
use crate::Broker;

/// Layer serving the health and readiness routes; see the
/// [module docs](crate::health).
#[derive(Clone)]
#[must_use]
pub struct HealthLayer {
    mode: ServerMode,
    broker: Option<Broker>,
    health_path: Arc<str>,
    ready_path: Arc<str>,
}

impl HealthLayer {
    /// Reports `mode` at `/health` and `/ready`.
    pub fn new(mode: ServerMode) -> Self {
        Self {
            mode,
            broker: None,
            health_path: Arc::from("/health"),
            ready_path: Arc::from("/ready"),
        }
    }

    /// Includes `broker`'s subscriber and dropped-event counts.
    pub fn broker(mut self, broker: &Broker) -> Self {
        self.broker = Some(broker.clone());
        self
    }

    /// Serves health at `path` instead of `/health`.
    pub fn health_path(mut self, path: impl AsRef<str>) -> Self {
        self.health_path = Arc::from(path.as_ref());
        self
    }

    /// Serves readiness at `path` instead of `/ready`.
    pub fn ready_path(mut self, path: impl AsRef<str>) -> Self {
        self.ready_path = Arc::from(path.as_ref());
        self
    }

    fn health(&self) -> Response<Bytes> {
        let state = self.mode.current();
        let status = if state.shutting_down {
            "shutting-down"
        } else {
            match state.mode {
                Mode::Normal => "ok",
                other => other.as_str(),
            }
        };
        let stats = self.broker.as_ref().map(Broker::stats);
        let body = serde_json::json!({
            "status": status,
            "mode": state.mode.as_str(),
            "reason": state.reason,
            "since": state.since_rfc3339(),
            "shutting_down": state.shutting_down,
            "subscribers": stats.map(|s| s.subscribers),
            "dropped": stats.map(|s| s.lagged_events),
            "mirror": stats.and_then(|s| s.mirror),
            "hub": stats.and_then(|s| s.hub),
            // Whole milliseconds, so that the number prints short.
            "uptime": self.mode.uptime().as_millis() as f64 / 1000.0,
            "version": env!("CARGO_PKG_VERSION"),
        });
        json(StatusCode::OK, &body)
    }

    fn ready(&self) -> Response<Bytes> {
        let state = self.mode.current();
        let ready = state.is_ready();
        let reason = if state.shutting_down {
            Some("shutting down".to_owned())
        } else if ready {
            None
        } else {
            state.reason.clone()
        };
        let body = serde_json::json!({
            "ready": ready,
            "mode": state.mode.as_str(),
            "reason": reason,
        });
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json(status, &body)
    }
}

impl<S> Layer<S> for HealthLayer {
    type Service = Health<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Health {
            inner,
            layer: self.clone(),
        }
    }
}

impl fmt::Debug for HealthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthLayer")
            .field("health_path", &self.health_path)
            .field("ready_path", &self.ready_path)
            .field("broker", &self.broker.is_some())
            .finish()
    }
}

/// The service made by [`HealthLayer`].
#[derive(Clone)]
pub struct Health<S> {
    inner: S,
    layer: HealthLayer,
}

impl<S> Health<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for Health<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Health<S>
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
        let path = request.uri().path();
        let health = path == &*self.layer.health_path;
        if !health && path != &*self.layer.ready_path {
            return ResponseFuture::future(self.inner.call(request));
        }
        let method = request.method();
        if method != Method::GET && method != Method::HEAD {
            return ResponseFuture::answer(method_not_allowed("GET, HEAD"));
        }
        let mut response = if health {
            self.layer.health()
        } else {
            self.layer.ready()
        };
        if method == Method::HEAD {
            *response.body_mut() = Bytes::new();
        }
        ResponseFuture::answer(response)
    }
}
