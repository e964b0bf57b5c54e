//! PEM text (RFC 7468) of certificates and keys, through the `pem` crate: 64-character lines,
//! `\n` line endings.

use zeroize::{Zeroize, Zeroizing};

pub const CERTIFICATE: &str = "CERTIFICATE";
pub const PRIVATE_KEY: &str = "PRIVATE KEY";

/// PEM text of one DER block under `label` (`CERTIFICATE`, `PRIVATE KEY`, ...).
pub fn encode(label: &str, der: &[u8]) -> String {
    let block = ::pem::Pem::new(label, der);
    ::pem::encode_config(&block, config())
}

/// PEM text of certificates, one block after another.
pub fn certificates<'a>(ders: impl IntoIterator<Item = &'a [u8]>) -> String {
    ders.into_iter()
        .map(|der| encode(CERTIFICATE, der))
        .collect()
}

/// PEM text of a PKCS#8 private key; the copies made on the way are wiped.
pub fn private_key(pkcs8: &[u8]) -> Zeroizing<String> {
    let block = ::pem::Pem::new(PRIVATE_KEY, pkcs8);
    let text = Zeroizing::new(::pem::encode_config(&block, config()));
    block.into_contents().zeroize();
    text
}

fn config() -> ::pem::EncodeConfig {
    ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_64_and_reads_back() {
        let der: Vec<u8> = (0..=255).collect();
        let text = encode(CERTIFICATE, &der);
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(text.ends_with("\n-----END CERTIFICATE-----\n"));
        assert!(text.lines().all(|l| l.len() <= 64));
        let both = certificates([der.as_slice(), &der[..3]]);
        let back: Vec<Vec<u8>> = rustls_pemfile::certs(&mut both.as_bytes())
            .map(|c| c.unwrap().to_vec())
            .collect();
        assert_eq!(back, vec![der.clone(), der[..3].to_vec()]);
        let key = private_key(&der);
        let read = rustls_pemfile::private_key(&mut key.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(read.secret_der(), der.as_slice());
    }
}
