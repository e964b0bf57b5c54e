"""Authlib as a plain OAuth client and PyJWT's PyJWKClient as a verifier, against the broker.

argv: issuer, agent SPIFFE ID, resource. Discovers the metadata (RFC 8414), gets a token with
client_credentials authenticated by the agent's JWT-SVID (private_key_jwt, RFC 7523), checks
it with PyJWKClient on jwks_uri for that resource and not for another, and prints JSON.
Exits non-zero on any failure.
"""

import json
import sys

import httpx
import jwt
from authlib.integrations.httpx_client import OAuth2Client

from svid import assertion

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def main() -> int:
    issuer, agent, resource = sys.argv[1:4]
    meta = httpx.get(f"{issuer}/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == issuer, meta

    client = OAuth2Client(client_id=agent, token_endpoint_auth_method="none")
    token = client.fetch_token(
        meta["token_endpoint"],
        grant_type="client_credentials",
        client_assertion_type=JWT_BEARER,
        client_assertion=assertion(issuer, agent),
        resource=resource,
        scope="read",
    )
    access = token["access_token"]

    jwks = jwt.PyJWKClient(meta["jwks_uri"])
    key = jwks.get_signing_key_from_jwt(access)
    claims = jwt.decode(
        access, key.key, algorithms=["ES256"], audience=resource,
        options={"require": ["exp", "iat", "sub", "aud", "jti"]},
    )
    try:
        jwt.decode(access, key.key, algorithms=["ES256"], audience=resource + "/other")
        other_audience = "accepted"
    except jwt.InvalidAudienceError:
        other_audience = "rejected"

    # Authlib's error for a refused request: a second use of one assertion.
    used = assertion(issuer, agent)
    client.fetch_token(
        meta["token_endpoint"], grant_type="client_credentials",
        client_assertion_type=JWT_BEARER, client_assertion=used, resource=resource,
    )
    try:
        client.fetch_token(
            meta["token_endpoint"], grant_type="client_credentials",
            client_assertion_type=JWT_BEARER, client_assertion=used, resource=resource,
        )
        replay = "accepted"
    except Exception as e:  # noqa: BLE001 - Authlib raises OAuthError
        replay = getattr(e, "error", repr(e))

    print(json.dumps({
        "token_type": token["token_type"],
        "expires_in": token["expires_in"],
        "claims": claims,
        "kid": key.key_id,
        "other_audience": other_audience,
        "replay": replay,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
