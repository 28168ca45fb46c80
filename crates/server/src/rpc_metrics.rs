//! Rate, errors and duration of every RPC, as the OpenTelemetry RPC semantic conventions name
//! them: the histogram `rpc.server.call.duration` (seconds) with `rpc.system`, `rpc.service`,
//! `rpc.method` and `rpc.grpc.status_code`. Its count is the rate, its status codes the errors.
//!
//! The duration runs until the response head: for unary calls the whole call; for streams the
//! time to open them. The status is the head's `grpc-status` (a refusal, whatever the method)
//! or OK; a stream that fails after it opened counts as OK here (its own span says more).
//! Calls to methods that do not exist (UNIMPLEMENTED) are counted under `unknown`, so a caller
//! cannot grow the label set with made-up paths.

use opentelemetry::KeyValue;
use opentelemetry::metrics::Histogram;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// Bucket bounds in seconds: from a cached read (a millisecond) to a long rebuild stream's start.
const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    duration: Histogram<f64>,
}

impl Default for RpcMetricsLayer {
    fn default() -> RpcMetricsLayer {
        RpcMetricsLayer {
            duration: opentelemetry::global::meter("caselog")
                .f64_histogram("rpc.server.call.duration")
                .with_unit("s")
                .with_description("duration of RPCs until the response head, by method and gRPC status code")
                .with_boundaries(BOUNDS.to_vec())
                .build(),
        }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics {
            inner,
            duration: self.duration.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    duration: Histogram<f64>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// gRPC's UNIMPLEMENTED: what the router answers for a method it does not have.
const UNIMPLEMENTED: i64 = 12;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let started = Instant::now();
        let duration = self.duration.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let status = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
            // The call's span (see `telemetry::rpc_span`) carries the same status.
            tracing::Span::current().record("rpc.grpc.status_code", status);
            let (service, method) = match path.trim_start_matches('/').split_once('/') {
                Some((service, method)) if status != UNIMPLEMENTED => (service.to_owned(), method.to_owned()),
                _ => ("unknown".to_owned(), "unknown".to_owned()),
            };
            duration.record(
                started.elapsed().as_secs_f64(),
                &[
                    KeyValue::new("rpc.system", "grpc"),
                    KeyValue::new("rpc.service", service),
                    KeyValue::new("rpc.method", method),
                    KeyValue::new("rpc.grpc.status_code", status),
                ],
            );
            Ok(response)
        })
    }
}
