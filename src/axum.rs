//! Glue for [axum](https://docs.rs/axum): the events route as a `Router` to
//! merge, and [`Broker`] as an extractor for handlers that publish.
//!
//! [`SseLayer`] works on an axum `Router` as it is (`Router::layer`); this
//! module is for apps that prefer routes to layers.
//!
//! ```
//! use axum::{http::StatusCode, routing::post, Router};
//! use tower_sse::{Broker, Event, SseLayer};
//!
//! async fn create(broker: Broker, body: String) -> StatusCode {
//!     match broker.publish(Event::new("item.created").data(body)) {
//!         Ok(_) => StatusCode::CREATED,
//!         Err(_) => StatusCode::UNPROCESSABLE_ENTITY,
//!     }
//! }
//!
//! let broker = Broker::new();
//! let app: Router = Router::new()
//!     .route("/items", post(create))
//!     .merge(tower_sse::axum::events_router(SseLayer::new(broker.clone())))
//!     .with_state(broker);
//! ```

use std::convert::Infallible;

use axum::extract::{FromRef, FromRequestParts};
use axum::Router;
use bytes::Bytes;
use http::request::Parts;
use http::{Response, StatusCode};
use http_body_util::Empty;
use tower_layer::Layer;
use tower_service::Service;

use crate::{Broker, SseLayer};

/// A `Router` with one route, the events route of `layer` at its
/// [`path`](SseLayer::path); merge it into the app's router.
pub fn events_router<S>(layer: SseLayer) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let path = layer.config.path.to_string();
    Router::new().route_service(&path, layer.layer(NotFound))
}

/// The events route's inner service when mounted as a route: it only sees
/// requests for other paths, which a route never sends it.
#[derive(Clone, Copy, Debug)]
struct NotFound;

impl<R> Service<R> for NotFound {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: R) -> Self::Future {
        let mut response = Response::new(Empty::new());
        *response.status_mut() = StatusCode::NOT_FOUND;
        std::future::ready(Ok(response))
    }
}

/// Extracts the app's [`Broker`] from its state, for handlers that publish.
impl<S> FromRequestParts<S> for Broker
where
    Broker: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Infallible;

    async fn from_request_parts(_parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Broker::from_ref(state))
    }
}
