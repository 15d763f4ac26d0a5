//! Inner services for the layers under test: one that echoes what reached
//! it, so a test can tell a request passed through unchanged, and one that
//! counts its calls, so a test can tell one never did.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use tower::Service;

/// Served by hyper: answers `inner METHOD TARGET x-probe=VALUE` with an
/// `x-inner: yes` header.
pub fn echo_inner() -> impl Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(|request: Request<Incoming>| async move {
        let probe = request
            .headers()
            .get("x-probe")
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .unwrap_or_default();
        let body = format!(
            "inner {} {} x-probe={probe}",
            request.method(),
            request
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("")
        );
        let response = Response::builder()
            .header("x-inner", "yes")
            .body(Full::new(Bytes::from(body)))
            .expect("response");
        Ok::<_, Infallible>(response)
    })
}

/// What [`counting_inner`] returns: a cloneable inner service, called in
/// process.
pub trait InnerService:
    Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone + Send
{
}

impl<T> InnerService for T where
    T: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible>
        + Clone
        + Send
{
}

/// An inner service answering `200 inner`, and the count of its calls.
pub fn counting_inner() -> (Arc<AtomicUsize>, impl InnerService) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = tower::service_fn(move |_request: Request<Full<Bytes>>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"inner")))) }
    });
    (calls, service)
}
