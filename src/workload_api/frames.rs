//! FetchX509SVID on the wire without tonic's per-call encoder.
//!
//! tonic encodes a streaming response into a buffer that each call keeps for as long as it is
//! open, at the size of its largest message: about 2 KiB for an X.509-SVID response, the
//! largest part of an idle stream's memory (`heaptrack`, BENCHMARKS.md). Here every message
//! is encoded into a frame of its exact size, handed to HTTP/2 and freed once written, so an
//! idle stream holds no message bytes. Everything else (the caller, the records, the stream of
//! messages, the statuses) is the same code as the tonic path; only the last step, bytes on
//! the wire, differs. Requests to every other RPC go to the generated server unchanged.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;

use super::streams::BoxStream;
use super::WorkloadApi;
use crate::proto::workload as pb;
use crate::proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use crate::server::limits::{GRPC_MESSAGE_PREFIX_BYTES, MAX_EMPTY_REQUEST_BYTES};

/// The RPC served here.
pub const FETCH_X509_SVID_PATH: &str = "/SpiffeWorkloadAPI/FetchX509SVID";

/// The Workload API service: FetchX509SVID here, every other RPC by the generated server.
#[derive(Clone)]
pub struct WorkloadApiService {
    api: Arc<WorkloadApi>,
    generated: SpiffeWorkloadApiServer<WorkloadApi>,
}

impl WorkloadApiService {
    /// `configure` sets the generated server's limits (its message size bound).
    pub fn new(
        api: WorkloadApi,
        configure: impl FnOnce(
            SpiffeWorkloadApiServer<WorkloadApi>,
        ) -> SpiffeWorkloadApiServer<WorkloadApi>,
    ) -> Self {
        let api = Arc::new(api);
        let generated = configure(SpiffeWorkloadApiServer::from_arc(api.clone()));
        Self { api, generated }
    }
}

impl NamedService for WorkloadApiService {
    const NAME: &'static str = <SpiffeWorkloadApiServer<WorkloadApi> as NamedService>::NAME;
}

impl tower::Service<http::Request<Body>> for WorkloadApiService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() == FETCH_X509_SVID_PATH {
            let api = self.api.clone();
            Box::pin(async move { Ok(api.fetch_x509svid_frames(req).await) })
        } else {
            tower::Service::call(&mut self.generated, req)
        }
    }
}

impl WorkloadApi {
    async fn fetch_x509svid_frames(&self, req: http::Request<Body>) -> http::Response<Body> {
        let (parts, body) = req.into_parts();
        let stream = match read_empty_request(body).await {
            Ok(()) => {
                let request = tonic::Request::from_http(http::Request::from_parts(parts, ()));
                self.fetch_x509svid_stream(&request).await
            }
            Err(status) => self.record("FetchX509SVID", Err(status)),
        };
        match stream {
            Ok(stream) => http::Response::builder()
                .status(http::StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .body(Body::new(Frames::Streaming(stream)))
                .unwrap_or_else(|_| Status::internal("building the response").into_http()),
            Err(status) => status.into_http(),
        }
    }
}

/// Reads a request that must hold exactly one message with no fields; see
/// [`parse_empty_request`].
async fn read_empty_request(body: Body) -> Result<(), Status> {
    let bytes = body.collect().await?.to_bytes();
    parse_empty_request(&bytes)
}

/// Checks a request body that must hold exactly one message with no fields (fields a newer
/// client adds are skipped). The call layer (`server::calls`) bounds the body in size and time
/// before it is read, which is what bounds memory; the size is checked again here only so that
/// the answer to an oversize request does not depend on that layer being in place.
///
/// These are a caller's bytes read before it is known, so this parser is a fuzz target
/// (`svid_broker::fuzzing::grpc_request`).
///
/// # Errors
/// `InvalidArgument` for no message, more than one, one over the bound, or bytes that are not
/// the message; `Unimplemented` for a compressed one (we offer no compression).
pub fn parse_empty_request(bytes: &[u8]) -> Result<(), Status> {
    if bytes.len() > GRPC_MESSAGE_PREFIX_BYTES + MAX_EMPTY_REQUEST_BYTES {
        return Err(Status::invalid_argument(format!(
            "request message over {MAX_EMPTY_REQUEST_BYTES} bytes, the most this RPC takes"
        )));
    }
    let Some((prefix, message)) = bytes.split_at_checked(GRPC_MESSAGE_PREFIX_BYTES) else {
        return Err(Status::invalid_argument("request message missing"));
    };
    if prefix[0] != 0 {
        return Err(Status::unimplemented(
            "compressed request messages are not supported",
        ));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len != message.len() {
        return Err(Status::invalid_argument(
            "expected exactly one whole request message",
        ));
    }
    pb::X509svidRequest::decode(message)
        .map(drop)
        .map_err(|e| Status::invalid_argument(format!("failed to decode Protobuf message: {e}")))
}

/// A stream's messages as gRPC frames, each allocated at its exact size, then its status as
/// trailers.
enum Frames {
    Streaming(BoxStream<pb::X509svidResponse>),
    Done,
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let Frames::Streaming(stream) = &mut *self else {
            return Poll::Ready(None);
        };
        let ended = match stream.as_mut().poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(msg))) => return Poll::Ready(Some(Ok(Frame::data(frame(&msg))))),
            Poll::Ready(Some(Err(status))) => status,
            Poll::Ready(None) => Status::ok(""),
        };
        *self = Frames::Done;
        let mut trailers = http::HeaderMap::new();
        if let Err(unsendable) = ended.add_header(&mut trailers) {
            trailers.clear();
            let _ = Status::internal(unsendable.message().to_string()).add_header(&mut trailers);
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Frames::Done)
    }
}

/// One uncompressed gRPC message frame: a zero flag, the length, the message.
fn frame(msg: &impl Message) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(GRPC_MESSAGE_PREFIX_BYTES + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    msg.encode(&mut buf)
        .expect("the buffer was sized by encoded_len");
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(bytes: &[u8]) -> Body {
        Body::new(http_body_util::Full::new(Bytes::copy_from_slice(bytes)))
    }

    #[tokio::test]
    async fn the_request_is_exactly_one_empty_message() {
        assert!(read_empty_request(body(&[0, 0, 0, 0, 0])).await.is_ok());
        // An unknown field is skipped.
        assert!(read_empty_request(body(&[0, 0, 0, 0, 2, 0x08, 0x01]))
            .await
            .is_ok());
        let code =
            |b: &'static [u8]| async move { read_empty_request(body(b)).await.unwrap_err().code() };
        assert_eq!(code(&[]).await, tonic::Code::InvalidArgument);
        assert_eq!(code(&[0, 0, 0]).await, tonic::Code::InvalidArgument);
        assert_eq!(code(&[1, 0, 0, 0, 0]).await, tonic::Code::Unimplemented);
        assert_eq!(code(&[0, 0, 0, 0, 1]).await, tonic::Code::InvalidArgument);
        assert_eq!(
            code(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).await,
            tonic::Code::InvalidArgument,
            "two messages"
        );
        assert_eq!(
            code(&[0, 0, 0, 0, 1, 0xff]).await,
            tonic::Code::InvalidArgument
        );
        // At the bound: one unknown length-delimited field filling all 1,024 bytes.
        let mut at = vec![0u8, 0, 0, 0x04, 0x00, 0x12, 0xfd, 0x07];
        at.resize(GRPC_MESSAGE_PREFIX_BYTES + MAX_EMPTY_REQUEST_BYTES, b'a');
        assert!(
            parse_empty_request(&at).is_ok(),
            "{:?}",
            parse_empty_request(&at)
        );
        let mut over = vec![0u8; GRPC_MESSAGE_PREFIX_BYTES + MAX_EMPTY_REQUEST_BYTES + 1];
        over[1..5].copy_from_slice(&((MAX_EMPTY_REQUEST_BYTES + 1) as u32).to_be_bytes());
        let e = read_empty_request(body(&over)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn a_frame_is_the_prefix_and_the_message_at_its_exact_size() {
        let msg = pb::X509svidResponse {
            svids: vec![pb::X509svid {
                spiffe_id: "spiffe://example.org/a".into(),
                x509_svid: vec![1; 700],
                x509_svid_key: vec![2; 138],
                bundle: vec![3; 500],
                hint: String::new(),
            }],
            crl: Vec::new(),
            federated_bundles: Default::default(),
        };
        let f = frame(&msg);
        assert_eq!(f.len(), 5 + msg.encoded_len());
        assert_eq!(f[0], 0);
        assert_eq!(
            u32::from_be_bytes([f[1], f[2], f[3], f[4]]) as usize,
            msg.encoded_len()
        );
        assert_eq!(pb::X509svidResponse::decode(&f[5..]).unwrap(), msg);
    }
}
