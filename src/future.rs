use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::ResponseBody;

pin_project! {
    /// Response future of this crate's middleware: the inner service's
    /// future, or the middleware's own answer, ready at once.
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Future { #[pin] future: F },
        Ready { response: Option<Response<ResponseBody<B>>>, _marker: PhantomData<fn() -> B> },
        Boxed { future: Pin<Box<dyn Future<Output = Response<ResponseBody<B>>> + Send>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn future(future: F) -> Self {
        Self {
            kind: Kind::Future { future },
        }
    }

    pub(crate) fn ready(response: Response<ResponseBody<B>>) -> Self {
        Self {
            kind: Kind::Ready {
                response: Some(response),
                _marker: PhantomData,
            },
        }
    }
}

impl<F, B> ResponseFuture<F, B> {
    /// An answer that needs to wait (e.g. for the request body); only for
    /// routes off the hot path.
    pub(crate) fn boxed(
        future: Pin<Box<dyn Future<Output = Response<ResponseBody<B>>> + Send>>,
    ) -> Self {
        Self {
            kind: Kind::Boxed { future },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Future { future } => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(ResponseBody::inner))),
            KindProj::Ready { response, .. } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            KindProj::Boxed { future } => future.as_mut().poll(cx).map(Ok),
        }
    }
}

impl<F, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
