//! The protobuf codec every generated service and client uses: prost's, with smaller buffers.
//!
//! tonic gives each call an encode buffer of 8 KiB up front (and a decode buffer of the same
//! size), and a streaming call keeps its buffer for as long as it is open. The Workload API's
//! streams stay open for the life of a workload, so ten thousand of them held ~100 MB of mostly
//! empty buffers. Our messages are small (a JWT-SVID response is under 1 KiB; an X.509-SVID
//! response with its bundle 2–4 KiB), so buffers start at [`BUFFER_BYTES`] and grow by that
//! step when a message needs more.

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstCodec;

/// Initial size and growth step of a call's encode and decode buffers.
pub const BUFFER_BYTES: usize = 1024;

/// Encoded bytes after which a stream hands what it has to the transport (tonic's default).
pub const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

/// [`ProstCodec`] with [`BUFFER_BYTES`] buffers.
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SmallEncoder<<ProstCodec<T, U> as Codec>::Encoder>;
    type Decoder = SmallDecoder<<ProstCodec<T, U> as Codec>::Decoder>;

    fn encoder(&mut self) -> Self::Encoder {
        SmallEncoder(ProstCodec::<T, U>::raw_encoder(settings()))
    }

    fn decoder(&mut self) -> Self::Decoder {
        SmallDecoder(ProstCodec::<T, U>::raw_decoder(settings()))
    }
}

/// prost's encoder, reporting [`BUFFER_BYTES`] buffers to tonic.
#[derive(Debug)]
pub struct SmallEncoder<E>(E);

impl<E: Encoder<Error = Status>> Encoder for SmallEncoder<E> {
    type Item = E::Item;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        self.0.encode(item, dst)
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}

/// prost's decoder, reporting [`BUFFER_BYTES`] buffers to tonic.
#[derive(Debug)]
pub struct SmallDecoder<D>(D);

impl<D: Decoder<Error = Status>> Decoder for SmallDecoder<D> {
    type Item = D::Item;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        self.0.decode(src)
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::workload as pb;

    #[test]
    fn encoders_and_decoders_report_the_small_buffers() {
        let mut c = SmallBufferCodec::<pb::X509svidResponse, pb::X509svidRequest>::default();
        assert_eq!(
            format!("{:?}", c.encoder().buffer_settings()),
            format!("{:?}", settings())
        );
        assert_eq!(
            format!("{:?}", c.decoder().buffer_settings()),
            format!("{:?}", settings())
        );
    }
}
