"""A relying party that is not ours: verifies a JWT-SVID with only a JWKS, twice, with PyJWT
and with jwcrypto. Run by tests/workload_api_peers.rs.

    python relying_party.py JWKS_FILE TOKEN AUDIENCE

Prints one JSON object: for each library, the verified claims or the error. The JWKS file holds
what FetchJWTBundles sent for the trust domain (`svid-broker api fetch bundles` prints it).
"""

import json
import sys

import jwt as pyjwt
from jwcrypto import jwk, jws
from jwcrypto import jwt as jc_jwt

# JWT-SVID allows RS/ES/PS only.
ALGORITHMS = ["ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]


def with_pyjwt(jwks: dict, token: str, audience: str) -> dict:
    try:
        header = pyjwt.get_unverified_header(token)
        keys = {k.key_id: k for k in pyjwt.PyJWKSet.from_dict(jwks).keys}
        key = keys[header["kid"]]
        claims = pyjwt.decode(
            token,
            key=key.key,
            algorithms=ALGORITHMS,
            audience=audience,
            options={"require": ["sub", "aud", "exp"]},
        )
        return {"ok": True, "claims": claims, "header": header}
    except Exception as e:  # noqa: BLE001 - report any failure
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def spiffe_jwks_to_plain(jwks: dict) -> dict:
    """A SPIFFE bundle marks JWT signing keys `use: jwt-svid` and consumers drop entries of any
    other `use` (SPIFFE Trust Domain and Bundle, section 4). jwcrypto only verifies with keys whose
    `use` is absent or `sig`, so hand it the jwt-svid keys as plain signature keys."""
    keys = []
    for k in jwks.get("keys", []):
        if k.get("use") == "jwt-svid":
            k = dict(k)
            k["use"] = "sig"
            keys.append(k)
    return {"keys": keys}


def with_jwcrypto(jwks: dict, token: str, audience: str) -> dict:
    try:
        keyset = jwk.JWKSet.from_json(json.dumps(spiffe_jwks_to_plain(jwks)))
        t = jc_jwt.JWT(
            jwt=token,
            key=keyset,
            algs=ALGORITHMS,
            check_claims={"sub": None, "exp": None, "aud": audience},
        )
        return {"ok": True, "claims": json.loads(t.claims)}
    except (jws.InvalidJWSSignature, jws.InvalidJWSObject, jc_jwt.JWTExpired,
            jc_jwt.JWTInvalidClaimValue, jc_jwt.JWTMissingClaim, jc_jwt.JWTMissingKey,
            Exception) as e:  # noqa: BLE001
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def main() -> int:
    jwks_file, token, audience = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(jwks_file) as f:
        jwks = json.load(f)
    print(json.dumps({
        "pyjwt": with_pyjwt(jwks, token, audience),
        "jwcrypto": with_jwcrypto(jwks, token, audience),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
