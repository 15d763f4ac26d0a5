//! A stream hook that cannot finish opening a stream at once (a mailbox
//! kept across the network) holds the stream's events back with
//! `StreamGuard::ready_after`: nothing but the `retry:` hint goes out
//! until it is done, then everything, in order, nothing lost; or, if it
//! could not finish, the stream ends having shown nothing else.

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::Request;
use http_body_util::{BodyExt, Empty};
use tokio::sync::oneshot;
use tower::{Layer, ServiceExt};
use tower_sse::sse::{StreamGuard, StreamHook};
use tower_sse::{Broker, Event, Grant, Rejection, SseLayer, Subscription, Topic, Topics};

/// Holds each stream back until the test lets it go on, or ends it.
#[derive(Default)]
struct Slow {
    release: Arc<Mutex<Vec<oneshot::Sender<ControlFlow<()>>>>>,
}

impl StreamHook for Slow {
    fn topic(&self, _client: &str) -> Result<Option<Topic>, Rejection> {
        Ok(None)
    }

    fn opened(&self, _client: &str, _: &Subscription, _: Option<&str>) -> StreamGuard {
        let (release, released) = oneshot::channel();
        self.release.lock().unwrap().push(release);
        StreamGuard::new(())
            .ready_after(async move { released.await.unwrap_or(ControlFlow::Break(())) })
    }
}

fn authorize(_: &Parts) -> Result<Grant, Rejection> {
    Ok(Grant::new(Topics::parse(["a"]).unwrap()).client("ann"))
}

type Body = tower_sse::sse::ResponseBody<Empty<Bytes>>;

/// A stream of `ann` opened under `Slow`, past its `retry:` hint, with an
/// event published since, and the handle that lets its hook decide.
async fn held_stream() -> (Body, oneshot::Sender<ControlFlow<()>>) {
    let broker = Broker::builder().epoch(1).build();
    let hook = Slow::default();
    let release = hook.release.clone();
    let service = SseLayer::new(broker.clone())
        .authorize(authorize)
        .hook(hook)
        .layer(tower::service_fn(|_: Request<Empty<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Empty::<Bytes>::new()))
        }));
    let request = Request::get("/events").body(Empty::new()).unwrap();
    let mut body = service.oneshot(request).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"retry:"), "{first:?}");
    broker
        .publish(Event::new("t").topic("a").data("1"))
        .unwrap();
    let decide = release
        .lock()
        .unwrap()
        .pop()
        .expect("the hook saw the stream open");
    (body, decide)
}

#[tokio::test(start_paused = true)]
async fn a_hook_holds_the_events_back_until_it_is_ready() {
    let (mut body, release) = held_stream().await;
    // Held back: the body has nothing to give while the hook is not ready
    // (the clock is paused: the wait passes as soon as all is idle).
    let held = tokio::time::timeout(Duration::from_millis(50), body.frame()).await;
    assert!(held.is_err(), "an event went out before the hook was ready");
    release.send(ControlFlow::Continue(())).unwrap();
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let text = String::from_utf8_lossy(&frame);
    assert!(text.contains("data: 1"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_hook_that_could_not_open_the_stream_ends_it_before_any_event() {
    let (mut body, release) = held_stream().await;
    release.send(ControlFlow::Break(())).unwrap();
    // The end, and nothing before it: no id the client could resume from.
    let mut rest = Vec::new();
    while let Some(frame) = body.frame().await {
        rest.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}
