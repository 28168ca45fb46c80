//! Every request's deadline: the shorter of the client's `grpc-timeout` and the server's
//! request timeout. When it passes before the service has answered, the call ends with
//! `DEADLINE_EXCEEDED`, the code gRPC defines for it (tonic's own timeout answers `CANCELLED
//! "Timeout expired"`, which clients cannot tell from a call they cancelled themselves).
//!
//! Dropping the service's future at the deadline cancels the work it has not yet done, as the
//! client's own cancellation does.

use crate::error::{Error, to_status};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    server_timeout: Duration,
}

impl DeadlineLayer {
    pub fn new(server_timeout: Duration) -> DeadlineLayer {
        DeadlineLayer { server_timeout }
    }
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            server_timeout: self.server_timeout,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    server_timeout: Duration,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Deadline<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let client_timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout);
        let (timeout, whose) = match client_timeout {
            Some(client) if client < self.server_timeout => (client, "the client's deadline"),
            _ => (self.server_timeout, "the server's request timeout"),
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(timeout, response).await {
                Ok(answered) => answered,
                Err(_) => {
                    let expired = Error::DeadlineExceeded {
                        whose,
                        millis: timeout.as_millis(),
                    };
                    Ok(to_status(expired).into_http::<ResBody>())
                }
            }
        })
    }
}

/// `grpc-timeout`: at most eight digits and a unit (H, M, S, m, u, n), as the gRPC over HTTP/2
/// protocol defines it; anything else is ignored, as if absent.
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let split = text.len().checked_sub(1)?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_as_the_protocol_writes_them() {
        assert_eq!(parse_grpc_timeout("300m"), Some(Duration::from_millis(300)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "123456789S", "12x", "-1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
