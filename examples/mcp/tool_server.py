"""A demo MCP tool server (official MCP Python SDK) that accepts the broker's task tokens.

It publishes RFC 9728 metadata naming the broker, checks each bearer token against the
broker's JWKS (signature, audience = this server's URL, expiry) and asks the broker's
introspection endpoint whether the token's task is still open (authenticating with its own
JWT-SVID, spiffe://example.org/demo/tool, a configured introspector).
"""

import os
import uuid

import httpx
import jwt
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from spiffe import SpiffeId, WorkloadApiClient

# serve.sh exports its ports (MCP_DEMO_BROKER_PORT, MCP_DEMO_TOOL_PORT; 8800 and 8801 by default).
PORT = int(os.environ.get("MCP_DEMO_TOOL_PORT", "8801"))
ISSUER = f"http://127.0.0.1:{os.environ.get('MCP_DEMO_BROKER_PORT', '8800')}"
RESOURCE = f"http://127.0.0.1:{PORT}/mcp"
ME = "spiffe://example.org/demo/tool"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def my_assertion() -> str:
    """A fresh JWT-SVID for the broker (a unique second audience makes it fresh)."""
    client = WorkloadApiClient(default_timeout=10.0)
    try:
        aud = {ISSUER, f"urn:svid-broker:nonce:{uuid.uuid4().hex}"}
        return client.fetch_jwt_svid(aud, subject=SpiffeId(ME)).token
    finally:
        client.close()


class BrokerTokenVerifier:
    def __init__(self):
        meta = httpx.get(f"{ISSUER}/.well-known/oauth-authorization-server").json()
        self.introspection = meta["introspection_endpoint"]
        self.jwks = jwt.PyJWKClient(meta["jwks_uri"])

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            key = self.jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(token, key.key, algorithms=["ES256"], audience=RESOURCE)
        except jwt.PyJWTError as e:
            print(f"tool: refused a token: {e}", flush=True)
            return None
        async with httpx.AsyncClient() as c:
            r = await c.post(self.introspection, data={
                "client_assertion_type": JWT_BEARER,
                "client_assertion": my_assertion(),
                "token": token,
            })
        if not r.json().get("active"):
            print("tool: refused a token: its task is closed", flush=True)
            return None
        return AccessToken(
            token=token, client_id=claims["sub"], scopes=claims.get("scope", "").split(),
            expires_at=claims["exp"], resource=RESOURCE, subject=claims["sub"], claims=claims,
        )


server = MCPServer(
    "svid-broker demo tool",
    token_verifier=BrokerTokenVerifier(),
    auth=AuthSettings(
        issuer_url=ISSUER, resource_server_url=RESOURCE,
        required_scopes=["read"], validate_token_resource=True,
    ),
)


@server.tool()
def forecast(city: str) -> str:
    """Tomorrow's weather (made up), and who asked."""
    t = get_access_token()
    return f"sunny in {city}; asked by {t.subject} in task {t.claims['task_id']}"


if __name__ == "__main__":
    server.run("streamable-http", host="127.0.0.1", port=PORT)
