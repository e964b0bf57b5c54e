//! Per-call bounds, as a tower layer under tonic: each call reserves its RPC's largest request
//! message from its uid's budget until the request body has arrived, must deliver that body
//! within `request_timeout`, and counts as open (for the idle timeout) until its response
//! ends. It also puts the caller's [`CallerHandle`] where the services look for it, and
//! reports a request that is too large or does not decode as `InvalidArgument` — what the
//! Workload API says for a bad request, and what clients do not retry — instead of tonic's
//! `OutOfRange` and `Internal`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Sleep;
use tonic::body::Body;
use tonic::Status;

use super::caller::CallerHandle;
use super::conn::{CallGuard, ConnInfo};
use super::gate::Reservation;
use super::limits::ConnectionLimits;

#[derive(Clone, Copy, Debug)]
pub struct CallLayer {
    request_timeout: Duration,
}

impl CallLayer {
    pub fn new(request_timeout: Duration) -> Self {
        Self { request_timeout }
    }
}

impl<S> tower::Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallService {
            inner,
            request_timeout: self.request_timeout,
        }
    }
}

#[derive(Clone, Debug)]
pub struct CallService<S> {
    inner: S,
    request_timeout: Duration,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> tower::Service<http::Request<Body>> for CallService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(info) = req.extensions().get::<ConnInfo>().cloned() else {
            // Not one of our Unix connections (in-process tests): nothing to account.
            let fut = self.inner.call(req);
            return Box::pin(async move { fut.await.map(to_invalid_argument) });
        };
        let path = req.uri().path();
        let max = ConnectionLimits::max_request_bytes(path);
        let body_cap = ConnectionLimits::max_request_body_bytes(path);
        let activity = &info.activity;
        let reservation = match activity.gate().reserve(activity.uid(), max) {
            Ok(r) => r,
            Err(refusal) => {
                let status = Status::resource_exhausted(format!(
                    "too many unfinished requests from uid {} (limit {}); finish or cancel some",
                    activity.uid(),
                    refusal.as_str()
                ));
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        };
        let guard = activity.start_call();
        let (mut parts, body) = req.into_parts();
        parts
            .extensions
            .insert::<Arc<CallerHandle>>(info.caller.clone());
        let body = Body::new(BoundedRequest {
            inner: body,
            reservation: Some(reservation),
            body_cap,
            received: 0,
            deadline: Box::pin(tokio::time::sleep(self.request_timeout)),
            timeout: self.request_timeout,
        });
        let fut = self.inner.call(http::Request::from_parts(parts, body));
        Box::pin(async move {
            let resp = to_invalid_argument(fut.await?);
            let (parts, body) = resp.into_parts();
            let body = Body::new(OpenCall {
                inner: body,
                _guard: guard,
            });
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// A request body holding its uid's reservation until it ends, failing with
/// `DeadlineExceeded` if it does not end in time, and with `InvalidArgument` once it is
/// longer than its RPC's bound (when that bound is below tonic's per-service limit, the
/// reservation was sized by it, so it must hold).
struct BoundedRequest {
    inner: Body,
    reservation: Option<Reservation>,
    body_cap: Option<usize>,
    received: usize,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl HttpBody for BoundedRequest {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.reservation = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => {
                if let (Some(cap), Ok(f)) = (this.body_cap, &frame) {
                    this.received += f.data_ref().map_or(0, Bytes::len);
                    if this.received > cap {
                        this.reservation = None;
                        return Poll::Ready(Some(Err(Status::invalid_argument(format!(
                            "request body over {cap} bytes, the most this RPC takes (its \
                             request message has no fields)"
                        )))));
                    }
                }
                if this.inner.is_end_stream() {
                    this.reservation = None;
                }
                Poll::Ready(Some(frame))
            }
            Poll::Pending if this.reservation.is_some() => match this.deadline.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    this.reservation = None;
                    Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                        "request message not received within {:?} (limits.request_timeout)",
                        this.timeout
                    )))))
                }
            },
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its call counted as open.
struct OpenCall {
    inner: Body,
    _guard: CallGuard,
}

impl HttpBody for OpenCall {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The prefix of tonic's message for a request over `max_decoding_message_size`.
const TOO_LARGE: &str = "Error, decoded message length too large";
/// The prefix of prost's message for bytes that are not the request message.
const UNDECODABLE: &str = "failed to decode Protobuf message";

/// Rewrites tonic's own request-decoding failures (a trailers-only response) to
/// `InvalidArgument`, keeping the detail.
fn to_invalid_argument(mut resp: http::Response<Body>) -> http::Response<Body> {
    let Some(status) = Status::from_header_map(resp.headers()) else {
        return resp;
    };
    let message = status.message();
    let replacement = match status.code() {
        tonic::Code::OutOfRange if message.starts_with(TOO_LARGE) => format!(
            "request message too large for this RPC ({}); see the field limits in the API \
             reference (e.g. at most {} audiences of {} bytes)",
            message.trim_start_matches("Error, "),
            super::limits::MAX_AUDIENCES,
            super::limits::MAX_AUDIENCE_BYTES
        ),
        tonic::Code::Internal if message.starts_with(UNDECODABLE) => {
            format!("request is not a valid message for this RPC: {message}")
        }
        _ => return resp,
    };
    let fixed = Status::invalid_argument(replacement);
    let headers = resp.headers_mut();
    headers.remove("grpc-status");
    headers.remove("grpc-message");
    headers.remove("grpc-status-details-bin");
    if fixed.add_header(headers).is_err() {
        tracing::debug!("could not rewrite a decode error's status");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailers_only(status: Status) -> http::Response<Body> {
        status.into_http()
    }

    fn code_and_message(resp: &http::Response<Body>) -> (tonic::Code, String) {
        let s = Status::from_header_map(resp.headers()).unwrap();
        (s.code(), s.message().to_string())
    }

    #[test]
    fn decode_failures_become_invalid_argument() {
        let r = to_invalid_argument(trailers_only(Status::out_of_range(
            "Error, decoded message length too large: found 200000 bytes, the limit is: 133380 bytes",
        )));
        let (code, msg) = code_and_message(&r);
        assert_eq!(code, tonic::Code::InvalidArgument);
        assert!(msg.contains("found 200000 bytes"), "{msg}");
        assert!(msg.contains("audiences"), "{msg}");

        let r = to_invalid_argument(trailers_only(Status::internal(
            "failed to decode Protobuf message: buffer underflow",
        )));
        let (code, msg) = code_and_message(&r);
        assert_eq!(code, tonic::Code::InvalidArgument);
        assert!(msg.contains("buffer underflow"), "{msg}");
    }

    #[test]
    fn other_statuses_are_untouched() {
        for s in [
            Status::internal("signing failed"),
            Status::out_of_range("something else"),
            Status::permission_denied("no identity issued"),
        ] {
            let want = (s.code(), s.message().to_string());
            let r = to_invalid_argument(trailers_only(s));
            assert_eq!(code_and_message(&r), want);
        }
    }
}
