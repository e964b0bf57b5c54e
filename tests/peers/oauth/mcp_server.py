"""An MCP server (the official MCP Python SDK) protected by the broker's task tokens.

argv: issuer, port, own SPIFFE ID (a `[broker] introspectors` entry). The server publishes
RFC 9728 Protected Resource Metadata naming the broker as its authorization server, and its
token verifier checks each bearer token with PyJWT against the broker's jwks_uri (signature,
`aud` = this server's resource URI, `exp`), then asks the broker's introspection endpoint
(RFC 7662, client-authenticated with this server's own JWT-SVID) whether its task is still
open. Tool `whoami` answers with the token's claims.
"""

import sys

import httpx
import jwt
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

from svid import assertion

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class BrokerTokenVerifier:
    def __init__(self, issuer: str, resource: str, me: str):
        meta = httpx.get(f"{issuer}/.well-known/oauth-authorization-server").json()
        self.issuer = issuer
        self.resource = resource
        self.me = me
        self.introspection = meta["introspection_endpoint"]
        self.jwks = jwt.PyJWKClient(meta["jwks_uri"])

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            key = self.jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(token, key.key, algorithms=["ES256"], audience=self.resource)
        except jwt.PyJWTError as e:
            print(f"refused: {e}", file=sys.stderr, flush=True)
            return None
        async with httpx.AsyncClient() as c:
            r = await c.post(self.introspection, data={
                "client_assertion_type": JWT_BEARER,
                "client_assertion": assertion(self.issuer, self.me),
                "token": token,
            })
        if r.status_code != 200 or not r.json().get("active"):
            print(f"refused: inactive ({r.status_code})", file=sys.stderr, flush=True)
            return None
        return AccessToken(
            token=token,
            client_id=claims["sub"],
            scopes=claims.get("scope", "").split(),
            expires_at=claims["exp"],
            resource=self.resource,
            subject=claims["sub"],
            claims=claims,
        )


def main() -> None:
    issuer, port, me = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    resource = f"http://127.0.0.1:{port}/mcp"
    server = MCPServer(
        "broker-protected tool",
        token_verifier=BrokerTokenVerifier(issuer, resource, me),
        auth=AuthSettings(
            issuer_url=issuer,
            resource_server_url=resource,
            required_scopes=["read"],
            validate_token_resource=True,
        ),
    )

    @server.tool()
    def whoami() -> dict:
        """The caller's task token claims, as this server verified them."""
        from mcp.server.auth.middleware.auth_context import get_access_token

        t = get_access_token()
        return {"sub": t.subject, "scopes": t.scopes, "claims": t.claims}

    print("serving", flush=True)
    server.run("streamable-http", host="127.0.0.1", port=port)


if __name__ == "__main__":
    main()
