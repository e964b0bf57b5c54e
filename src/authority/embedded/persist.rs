//! The embedded authority's key material on disk (`keys.json`, 0600) and an operator's CA
//! from PEM files: read back at start, written after every rotation.

use super::*;

pub(super) fn stored_key<K>(
    slot: &Slot<K>,
    kid: String,
    cert_der: String,
    key: &SecretKey,
) -> StoredKey {
    StoredKey {
        kid,
        cert_der,
        key_pkcs8: STANDARD.encode(key.der()),
        issued_at: unix_seconds(slot.issued_at),
        ttl_secs: slot.ttl.as_secs(),
        state: slot.state.as_str().to_string(),
    }
}

pub(super) fn restore(ring: &mut KeyRing, stored: &StoredKeys) -> Result<(), AuthorityError> {
    let now_sys = SystemTime::now();
    let now = Instant::now();
    let corrupt = |reason: &str| {
        AuthorityError::Store(StoreError::Corrupt {
            path: store::KEYS_FILE.into(),
            reason: reason.to_string(),
        })
    };
    let slot_time = |k: &StoredKey| {
        let issued_at = SystemTime::UNIX_EPOCH + Duration::from_secs(k.issued_at.max(0) as u64);
        let age = now_sys.duration_since(issued_at).unwrap_or(Duration::ZERO);
        (issued_at, now.checked_sub(age).unwrap_or(now))
    };
    for k in &stored.cas {
        let key = EcKey::from_pkcs8(SecretKey::new(
            STANDARD
                .decode(&k.key_pkcs8)
                .map_err(|_| corrupt("CA key"))?,
        ))?;
        let der = STANDARD
            .decode(&k.cert_der)
            .map_err(|_| corrupt("CA cert"))?;
        let ca = CaCert::from_parts(der, Vec::new(), key)?;
        let (issued_at, issued) = slot_time(k);
        let state = SlotState::parse(&k.state).ok_or_else(|| corrupt("CA state"))?;
        ring.cas.push(Slot {
            key: Arc::new(ca),
            issued,
            issued_at,
            ttl: Duration::from_secs(k.ttl_secs),
            state,
        });
    }
    for k in &stored.jwt_keys {
        let key = EcKey::from_pkcs8(SecretKey::new(
            STANDARD
                .decode(&k.key_pkcs8)
                .map_err(|_| corrupt("JWT key"))?,
        ))?;
        let (issued_at, issued) = slot_time(k);
        let state = SlotState::parse(&k.state).ok_or_else(|| corrupt("JWT key state"))?;
        ring.jwt_keys.push(Slot {
            key: Arc::new(JwtKey {
                kid: k.kid.clone(),
                key,
            }),
            issued,
            issued_at,
            ttl: Duration::from_secs(k.ttl_secs),
            state,
        });
    }
    // Drop what expired while we were down; `rotate` handles the rest.
    ring.cas.retain(|s| s.age(now) < s.ttl);
    ring.jwt_keys.retain(|s| s.age(now) < s.ttl);
    ring.sequence = stored.sequence;
    Ok(())
}

pub(super) fn load_operator_ca(config: &AuthorityConfig) -> Result<Option<CaCert>, AuthorityError> {
    let (Some(cert_path), Some(key_path)) = (&config.ca_cert_path, &config.ca_key_path) else {
        return Ok(None);
    };
    // Certificates decide what we publish as roots, so they are trusted inputs; the key must
    // also be private to us.
    let trust = crate::fs_trust::FsTrust::current();
    let read_from = |p: &std::path::Path, file: Result<std::fs::File, TrustError>| {
        let mut bytes = Vec::new();
        file.map_err(|e| AuthorityError::OperatorCa(e.to_string()))?
            .read_to_end(&mut bytes)
            .map_err(|e| AuthorityError::OperatorCa(format!("{}: {e}", p.display())))?;
        Ok::<_, AuthorityError>(bytes)
    };
    let read = |what, p| read_from(p, trust.open_input(what, p));
    let certs: Vec<Vec<u8>> =
        rustls_pemfile::certs(&mut read("authority.ca_cert_path", cert_path)?.as_slice())
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| AuthorityError::OperatorCa(format!("{}: {e}", cert_path.display())))?;
    let Some((first, above)) = certs.split_first() else {
        return Err(AuthorityError::OperatorCa(format!(
            "{}: no certificate",
            cert_path.display()
        )));
    };
    let key_pem = zeroize::Zeroizing::new(read_from(
        key_path,
        trust.open_private("authority.ca_key_path", key_path),
    )?);
    let key = rustls_pemfile::pkcs8_private_keys(&mut key_pem.as_slice())
        .next()
        .ok_or_else(|| {
            AuthorityError::OperatorCa(format!("{}: no PKCS#8 key", key_path.display()))
        })?
        .map_err(|e| AuthorityError::OperatorCa(format!("{}: {e}", key_path.display())))?;
    let key = EcKey::from_pkcs8(SecretKey::new(key.secret_pkcs8_der().to_vec())).map_err(|_| {
        AuthorityError::OperatorCa(format!("{}: not a P-256 key", key_path.display()))
    })?;
    let mut above = above.to_vec();
    if let Some(bundle_path) = &config.ca_bundle_path {
        let roots: Vec<Vec<u8>> =
            rustls_pemfile::certs(&mut read("authority.ca_bundle_path", bundle_path)?.as_slice())
                .filter_map(Result::ok)
                .map(|c| c.to_vec())
                .collect();
        if roots.is_empty() {
            return Err(AuthorityError::OperatorCa(format!(
                "{}: no certificate",
                bundle_path.display()
            )));
        }
        above.extend(roots);
    }
    let ca = CaCert::from_parts(first.clone(), above, key)?;
    Ok(Some(ca))
}
