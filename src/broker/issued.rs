//! Recognising a token this broker handed out, so its signature need not be checked again.
//!
//! An ES256 verification costs more than everything else an introspection or a delegated
//! OpenTask does with a token. The broker keeps the SHA-256 of each token it mints (in its
//! table entry, until the token expires), so a presented token whose bytes hash to that value
//! is one it signed itself. Everything else is still checked: the key id, audience and expiry
//! by [`Broker::verify_token`], the task and token state by its callers.

use std::time::SystemTime;

use subtle::ConstantTimeEq;

use super::Broker;
use crate::svid::jwt::{self, JwtError, ParsedJwt, VerifiedJwt};

impl Broker {
    /// Verifies `token` (already parsed as `parsed`) for `audience` against this trust
    /// domain's current bundle, without its signature when its bytes are ones minted here.
    ///
    /// # Errors
    /// The first failed check, as [`jwt::verify_parsed`] reports it.
    pub(super) fn verify_token(
        &self,
        token: &str,
        parsed: ParsedJwt,
        audience: &str,
        now: SystemTime,
    ) -> Result<VerifiedJwt, JwtError> {
        let bundle = self.issuer.current_bundle();
        let signature = self.signature_check_for(&parsed, token);
        jwt::verify_parsed(
            token,
            parsed,
            audience,
            now,
            |td| (td == &bundle.trust_domain).then_some(bundle.as_ref()),
            signature,
        )
    }

    /// `IssuedHere` when `token` (already parsed as `parsed`) is byte for byte one this
    /// broker minted and still remembers; `Check` otherwise (a token minted upstream by
    /// SPIRE, one forgotten after a restart, or bytes that differ in any way).
    fn signature_check_for(&self, parsed: &ParsedJwt, token: &str) -> jwt::Signature {
        let kept = parsed
            .claims
            .get("jti")
            .and_then(serde_json::Value::as_str)
            .and_then(|jti| self.lock().token(jti).and_then(|t| t.digest));
        match kept {
            // Constant time: the comparison must not tell a forger how many bytes matched.
            Some(d) if bool::from(d.ct_eq(&jwt::digest(token))) => jwt::Signature::IssuedHere,
            _ => jwt::Signature::Check,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{caller, kit, mint_request, open_task, with_payload, AGENT, TOOL};
    use crate::svid::jwt::{self, Signature};

    #[tokio::test]
    async fn only_the_exact_bytes_minted_here_skip_the_signature_check() {
        let k = kit();
        let task = open_task(&k).await;
        let minted = k
            .broker
            .mint(&caller(AGENT), mint_request(&task.task_id, TOOL, &["read"]))
            .await
            .unwrap()
            .token;
        let check = |token: &str| {
            let parsed = jwt::parse(token).unwrap();
            k.broker.signature_check_for(&parsed, token)
        };
        assert!(matches!(check(&minted), Signature::IssuedHere));

        // One scope more in the payload: same jti, other bytes.
        let widened = with_payload(&minted, |c| c["scope"] = "read write".into());
        assert!(matches!(check(&widened), Signature::Check));

        // The same claims signed again by the same key (a valid signature, other bytes): the
        // shortcut does not apply, and the full check would accept it on its own merits.
        let parsed = jwt::parse(&minted).unwrap();
        let resigned = k.issuer.sign(&parsed.claims);
        assert_ne!(resigned, minted, "ECDSA signatures are randomised");
        assert!(matches!(check(&resigned), Signature::Check));

        // A jti this broker never issued.
        let stranger = with_payload(&minted, |c| c["jti"] = "not-ours".into());
        assert!(matches!(check(&stranger), Signature::Check));
    }
}
