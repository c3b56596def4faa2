//! What every RPC of a server passes through (a tower layer under tonic, so unary and
//! streaming calls alike, and calls the interceptors refuse): a `grpc` span named by its
//! method and carrying the operation it works for (the [`OPERATION_HEADER`] the coordinator
//! sets on its calls to agents), and one observation at its end of its method, status code
//! and latency. A stream is observed when its last message and status have gone, or when the
//! client went away (`Cancelled`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tracing::Instrument;

pub use crate::OPERATION_HEADER;

/// Told of every RPC once, at its end: method, status code, arrival.
pub type Observe = fn(&str, tonic::Code, Instant);

/// The layer; `Server::builder().layer(RpcLayer::new(observe))`.
#[derive(Debug, Clone, Copy)]
pub struct RpcLayer {
    observe: Observe,
}

impl RpcLayer {
    pub fn new(observe: Observe) -> Self {
        Self { observe }
    }
}

impl<S> tower_layer::Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            observe: self.observe,
        }
    }
}

/// [`RpcLayer`] around a service.
#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
    observe: Observe,
}

/// The method of a gRPC path (`/corral.v1.VmService/CloneVm` → `CloneVm`).
pub fn method_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or_default()
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower_service::Service<http::Request<B>> for RpcService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: http_body::Body,
{
    type Response = http::Response<Observed<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_of(req.uri().path()).to_string();
        let span = tracing::info_span!("grpc", method = %method, op = tracing::field::Empty);
        if let Some(op) = req
            .headers()
            .get(OPERATION_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            span.record("op", op);
        }
        let end = End {
            method,
            started: Instant::now(),
            observe: self.observe,
            code: None,
        };
        let call = {
            let _in = span.enter();
            self.inner.call(req)
        };
        Box::pin(
            async move {
                let resp = call.await?;
                let mut end = end;
                // A refusal before any message is a "trailers-only" answer: its status is
                // among the headers and its body is empty.
                end.code = resp.headers().get("grpc-status").map(code_of);
                Ok(resp.map(|body| Observed {
                    body,
                    end: Some(end),
                }))
            }
            .instrument(span),
        )
    }
}

fn code_of(v: &http::HeaderValue) -> tonic::Code {
    tonic::Code::from_bytes(v.as_bytes())
}

/// Observes the RPC when dropped: with the status seen, or `Cancelled` when none was.
struct End {
    method: String,
    started: Instant,
    observe: Observe,
    code: Option<tonic::Code>,
}

impl Drop for End {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(tonic::Code::Cancelled);
        (self.observe)(&self.method, code, self.started);
    }
}

pin_project_lite::pin_project! {
    /// A response body that observes its RPC when its status (the trailers) goes out.
    pub struct Observed<B> {
        #[pin]
        body: B,
        end: Option<End>,
    }
}

impl<B: http_body::Body> http_body::Body for Observed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        let done = match &polled {
            Poll::Ready(Some(Ok(frame))) => match frame.trailers_ref() {
                Some(t) => {
                    if let Some(end) = this.end.as_mut() {
                        end.code = t.get("grpc-status").map(code_of).or(end.code);
                    }
                    true
                }
                None => false,
            },
            Poll::Ready(Some(Err(_))) => {
                if let Some(end) = this.end.as_mut() {
                    end.code = end.code.or(Some(tonic::Code::Internal));
                }
                true
            }
            Poll::Ready(None) => true,
            Poll::Pending => false,
        };
        if done {
            // Dropping it observes the RPC, once.
            this.end.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_is_the_last_part_of_the_path() {
        assert_eq!(method_of("/corral.v1.VmService/CloneVm"), "CloneVm");
        assert_eq!(method_of("/grpc.health.v1.Health/Check"), "Check");
        assert_eq!(method_of(""), "");
    }
}
