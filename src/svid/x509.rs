//! X.509-SVIDs and CA certificates, shaped by the SPIFFE X.509-SVID rules:
//! one URI SAN; leaf `cA=false` with basicConstraints present; key usage critical with
//! digitalSignature only; EKU serverAuth + clientAuth; a CA has `cA=true` + keyCertSign and,
//! if it carries a SPIFFE ID, no path.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, SanType, SerialNumber,
};
use spiffe::{SpiffeId, TrustDomain};
use x509_parser::prelude::*;

use super::keys::{EcKey, KeyError, SecretKey};

/// NotBefore is set this far in the past, so a peer whose clock is slightly behind accepts a
/// fresh certificate (SPIRE uses the same 10 seconds).
pub const BACKDATE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum X509Error {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("certificate parse failed: {0}")]
    Parse(String),
    #[error("not a valid X.509-SVID: {0}")]
    Rule(&'static str),
}

/// A signed X.509-SVID with its private key.
#[derive(Clone, Debug)]
pub struct X509Svid {
    pub spiffe_id: SpiffeId,
    /// DER certificates, leaf first, then intermediates up to (not including) the root.
    pub chain: Vec<Vec<u8>>,
    pub key: SecretKey,
    pub not_after: SystemTime,
    /// Serial number, hex.
    pub serial: String,
}

/// A CA certificate with the key that signs under it.
pub struct CaCert {
    pub cert_der: Vec<u8>,
    /// Certificates above this CA, for chains into an operator's PKI (empty when self-signed).
    pub chain_above: Vec<Vec<u8>>,
    pub key: EcKey,
    pub not_after: SystemTime,
    issuer: Issuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for CaCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaCert")
            .field("not_after", &self.not_after)
            .field("key", &self.key)
            .finish()
    }
}

impl CaCert {
    /// A self-signed CA for `trust_domain`, valid from now (backdated) for `ttl`.
    ///
    /// # Errors
    /// Key or certificate generation failed.
    pub fn self_signed(
        trust_domain: &TrustDomain,
        ttl: Duration,
        key: EcKey,
    ) -> Result<Self, X509Error> {
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "svid-broker");
        dn.push(DnType::CommonName, format!("{trust_domain} CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(
            trust_domain
                .id_string()
                .try_into()
                .map_err(|_| X509Error::Rule("trust domain URI"))?,
        )];
        params.serial_number = Some(random_serial());
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + ttl).into();
        let rkey = key.to_rcgen()?;
        let cert = params.self_signed(&rkey)?;
        let cert_der = cert.der().to_vec();
        Self::from_parts(cert_der, Vec::new(), key)
    }

    /// A CA from existing DER (persisted, or an operator's intermediate).
    ///
    /// # Errors
    /// The certificate does not parse, is not a CA, or does not match the key.
    pub fn from_parts(
        cert_der: Vec<u8>,
        chain_above: Vec<Vec<u8>>,
        key: EcKey,
    ) -> Result<Self, X509Error> {
        let (_, cert) =
            X509Certificate::from_der(&cert_der).map_err(|e| X509Error::Parse(e.to_string()))?;
        if !cert.is_ca() {
            return Err(X509Error::Rule(
                "CA certificate lacks basicConstraints cA=true",
            ));
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_point() {
            return Err(X509Error::Rule(
                "CA certificate does not match its private key",
            ));
        }
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
        let issuer = Issuer::from_ca_cert_der(&cert_der.clone().into(), key.to_rcgen()?)?;
        Ok(Self {
            cert_der,
            chain_above,
            key,
            not_after,
            issuer,
        })
    }

    /// Signs an X.509-SVID for `id`, valid for `ttl` but never past this CA's own expiry.
    ///
    /// # Errors
    /// Key or certificate generation failed.
    pub fn mint_svid(&self, id: &SpiffeId, ttl: Duration) -> Result<X509Svid, X509Error> {
        let now = SystemTime::now();
        let not_after = (now + ttl).min(self.not_after);
        let leaf_key = EcKey::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "svid-broker");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names =
            vec![SanType::URI(id.to_string().try_into().map_err(|_| {
                X509Error::Rule("SPIFFE ID is not a valid URI")
            })?)];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        let serial_hex = hex::encode(serial.to_bytes());
        params.serial_number = Some(serial);
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&leaf_key.to_rcgen()?, &self.issuer)?;
        let mut chain = vec![cert.der().to_vec()];
        // Operator-provided intermediates travel with the leaf; the root is in the bundle.
        if !self.chain_above.is_empty() {
            chain.push(self.cert_der.clone());
            chain.extend(
                self.chain_above
                    .iter()
                    .take(self.chain_above.len().saturating_sub(1))
                    .cloned(),
            );
        }
        Ok(X509Svid {
            spiffe_id: id.clone(),
            chain,
            key: leaf_key.pkcs8().clone(),
            not_after,
            serial: serial_hex,
        })
    }
}

/// 128 random bits with the top bit clear, so the DER integer stays positive.
fn random_serial() -> SerialNumber {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

/// What a leaf certificate says, after checking it against the X.509-SVID rules.
#[derive(Debug)]
pub struct LeafFacts {
    pub spiffe_id: SpiffeId,
    pub not_after: SystemTime,
}

/// Checks a leaf against the X.509-SVID rules (used before publishing and in tests).
///
/// # Errors
/// The first rule the certificate breaks.
pub fn check_leaf(der: &[u8]) -> Result<LeafFacts, X509Error> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| X509Error::Parse(e.to_string()))?;
    let bc = cert
        .basic_constraints()
        .map_err(|_| X509Error::Rule("duplicate basicConstraints"))?
        .ok_or(X509Error::Rule("basicConstraints missing"))?;
    if bc.value.ca {
        return Err(X509Error::Rule("leaf has cA=true"));
    }
    let ku = cert
        .key_usage()
        .map_err(|_| X509Error::Rule("duplicate keyUsage"))?
        .ok_or(X509Error::Rule("keyUsage missing"))?;
    if !ku.critical {
        return Err(X509Error::Rule("keyUsage not critical"));
    }
    if !ku.value.digital_signature() {
        return Err(X509Error::Rule("keyUsage lacks digitalSignature"));
    }
    if ku.value.key_cert_sign() || ku.value.crl_sign() {
        return Err(X509Error::Rule("leaf keyUsage has keyCertSign or cRLSign"));
    }
    if let Some(eku) = cert
        .extended_key_usage()
        .map_err(|_| X509Error::Rule("duplicate EKU"))?
    {
        if !eku.value.server_auth || !eku.value.client_auth {
            return Err(X509Error::Rule("EKU lacks serverAuth or clientAuth"));
        }
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|_| X509Error::Rule("duplicate SAN"))?
        .ok_or(X509Error::Rule("no subjectAltName"))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(X509Error::Rule("not exactly one URI SAN"));
    };
    let spiffe_id =
        crate::spiffe_id::parse(uri).map_err(|_| X509Error::Rule("URI SAN is not a SPIFFE ID"))?;
    if spiffe_id.path().is_empty() {
        return Err(X509Error::Rule("leaf SPIFFE ID has no path"));
    }
    let not_after = SystemTime::UNIX_EPOCH
        + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
    Ok(LeafFacts {
        spiffe_id,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> CaCert {
        let td = TrustDomain::new("example.org").unwrap();
        CaCert::self_signed(&td, Duration::from_secs(3600), EcKey::generate().unwrap()).unwrap()
    }

    #[test]
    fn minted_leaf_follows_the_rules() {
        let ca = ca();
        let id = SpiffeId::new("spiffe://example.org/agent/a").unwrap();
        let svid = ca.mint_svid(&id, Duration::from_secs(600)).unwrap();
        let facts = check_leaf(&svid.chain[0]).unwrap();
        assert_eq!(facts.spiffe_id, id);
        assert_eq!(svid.chain.len(), 1);
        assert!(EcKey::from_pkcs8(svid.key.clone()).is_ok());
    }

    #[test]
    fn leaf_never_outlives_its_ca() {
        let ca = ca();
        let id = SpiffeId::new("spiffe://example.org/a").unwrap();
        let svid = ca.mint_svid(&id, Duration::from_secs(10 * 3600)).unwrap();
        assert!(svid.not_after <= ca.not_after);
    }

    #[test]
    fn ca_is_rejected_as_a_leaf_and_key_mismatch_is_caught() {
        let ca = ca();
        assert!(matches!(check_leaf(&ca.cert_der), Err(X509Error::Rule(_))));
        let other = EcKey::generate().unwrap();
        assert!(CaCert::from_parts(ca.cert_der.clone(), vec![], other).is_err());
    }
}
