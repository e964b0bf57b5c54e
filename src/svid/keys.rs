//! P-256 keys: generated with ring, held as PKCS#8 that is zeroized on drop, and never
//! printed by `Debug`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("key generation failed")]
    Generate,
    #[error("not a P-256 PKCS#8 private key")]
    Parse,
    #[error("signing failed")]
    Sign,
}

/// Private key bytes (PKCS#8 DER). Zeroized on drop; `Debug` shows only the length.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<Vec<u8>>);

impl SecretKey {
    pub fn new(der: Vec<u8>) -> Self {
        Self(Zeroizing::new(der))
    }

    pub fn der(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({} bytes)", self.0.len())
    }
}

/// An ECDSA P-256 signing key.
pub struct EcKey {
    pkcs8: SecretKey,
    pair: EcdsaKeyPair,
}

impl std::fmt::Debug for EcKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcKey")
            .field("public", &hex::encode(self.public_point()))
            .finish()
    }
}

impl EcKey {
    /// # Errors
    /// The system random source failed.
    pub fn generate() -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| KeyError::Generate)?;
        Self::from_pkcs8(SecretKey::new(doc.as_ref().to_vec()))
    }

    /// # Errors
    /// The bytes are not a P-256 PKCS#8 key.
    pub fn from_pkcs8(pkcs8: SecretKey) -> Result<Self, KeyError> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.der(),
            &SystemRandom::new(),
        )
        .map_err(|_| KeyError::Parse)?;
        Ok(Self { pkcs8, pair })
    }

    pub fn pkcs8(&self) -> &SecretKey {
        &self.pkcs8
    }

    /// Uncompressed point: 0x04 || x || y.
    pub fn public_point(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// JWK `x` and `y`, base64url.
    pub fn jwk_xy(&self) -> (String, String) {
        let p = self.public_point();
        (
            URL_SAFE_NO_PAD.encode(&p[1..33]),
            URL_SAFE_NO_PAD.encode(&p[33..65]),
        )
    }

    /// ES256 signature in JWS form (r || s, 64 bytes).
    ///
    /// # Errors
    /// ring failed to sign (should not happen with a valid key).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.pair
            .sign(&SystemRandom::new(), message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| KeyError::Sign)
    }

    /// The same key for rcgen, to sign certificates.
    ///
    /// # Errors
    /// rcgen refused the key.
    pub fn to_rcgen(&self) -> Result<rcgen::KeyPair, KeyError> {
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from(self.pkcs8.der().to_vec());
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|_| KeyError::Parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_private_key() {
        let k = EcKey::generate().unwrap();
        let secret_hex = hex::encode(k.pkcs8().der());
        let shown = format!("{k:?} {:?}", k.pkcs8());
        assert!(!shown.contains(&secret_hex));
        assert!(shown.contains("bytes"));
    }

    #[test]
    fn round_trips_through_pkcs8() {
        let k = EcKey::generate().unwrap();
        let again = EcKey::from_pkcs8(k.pkcs8().clone()).unwrap();
        assert_eq!(k.public_point(), again.public_point());
        assert!(EcKey::from_pkcs8(SecretKey::new(vec![1, 2, 3])).is_err());
        assert!(k.to_rcgen().is_ok());
    }
}
