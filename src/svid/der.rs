//! Concatenated DER certificates — how the Workload API and SPIRE send chains and bundles —
//! split back into one DER per certificate. Imports nothing from the rest of the crate.

use x509_parser::prelude::{FromDer, X509Certificate};

/// Bytes at `offset` and after are not a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bytes from offset {offset} are not a DER certificate: {reason}")]
pub struct NotCertificates {
    /// Where the first unreadable certificate starts: `der[..offset]` splits cleanly.
    pub offset: usize,
    pub reason: String,
}

/// The certificates `der` concatenates, in order, as slices of it.
///
/// Strict: every byte must belong to a certificate that parses. On success the pieces are
/// non-empty and their concatenation is `der`; empty input gives no pieces (callers that need
/// a certificate check for that).
///
/// # Errors
/// The first certificate that does not parse, with its offset.
pub fn split_certificates(der: &[u8]) -> Result<Vec<&[u8]>, NotCertificates> {
    let mut out = Vec::new();
    let mut rest = der;
    while !rest.is_empty() {
        let offset = der.len() - rest.len();
        let (after, _) = X509Certificate::from_der(rest).map_err(|e| NotCertificates {
            offset,
            reason: e.to_string(),
        })?;
        let (cert, after) = rest.split_at(rest.len() - after.len());
        out.push(cert);
        rest = after;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn splits_back_what_was_concatenated() {
        let (a, b) = (self_signed("a.test"), self_signed("b.test"));
        let joined = [a.clone(), b.clone()].concat();
        assert_eq!(
            split_certificates(&joined).unwrap(),
            vec![a.as_slice(), b.as_slice()]
        );
        assert_eq!(split_certificates(&a).unwrap(), vec![a.as_slice()]);
        assert!(split_certificates(b"").unwrap().is_empty());
    }

    #[test]
    fn any_byte_that_is_not_a_certificate_fails_the_split() {
        let a = self_signed("a.test");
        assert_eq!(split_certificates(b"garbage").unwrap_err().offset, 0);
        let trailing = [a.clone(), b"\x30".to_vec()].concat();
        assert_eq!(split_certificates(&trailing).unwrap_err().offset, a.len());
        let mut cut = [a.clone(), a.clone()].concat();
        cut.pop();
        let err = split_certificates(&cut).unwrap_err();
        assert_eq!(err.offset, a.len());
        assert_eq!(split_certificates(&cut[..err.offset]).unwrap().len(), 1);
    }
}
