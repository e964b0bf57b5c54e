"""A demo agent: one task from open to close, through the MCP SDK and the broker.

1. The MCP SDK finds the tool's authorization server (RFC 9728, then RFC 8414) and runs
   client_credentials with private_key_jwt: the assertion is this agent's JWT-SVID from the
   Workload API. The broker opens a task for that one tool and mints a 2-minute token.
2. The agent lists the tool's tools and calls one.
3. It closes the task by revoking the token (RFC 7009), and the tool refuses the token.
"""

import asyncio
import os
import uuid

import httpx
import httpx2
from mcp import ClientSession
from mcp.client.auth.extensions.client_credentials import PrivateKeyJWTOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from spiffe import SpiffeId, WorkloadApiClient

# serve.sh's ports (MCP_DEMO_BROKER_PORT, MCP_DEMO_TOOL_PORT; 8800 and 8801 by default).
ISSUER = f"http://127.0.0.1:{os.environ.get('MCP_DEMO_BROKER_PORT', '8800')}"
TOOL = f"http://127.0.0.1:{os.environ.get('MCP_DEMO_TOOL_PORT', '8801')}/mcp"
ME = "spiffe://example.org/demo/agent"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def jwt_svid(audience: str) -> str:
    client = WorkloadApiClient(default_timeout=10.0)
    try:
        aud = {audience, f"urn:svid-broker:nonce:{uuid.uuid4().hex}"}
        return client.fetch_jwt_svid(aud, subject=SpiffeId(ME)).token
    finally:
        client.close()


class Memory:
    tokens = None
    info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.info

    async def set_client_info(self, info):
        self.info = info


async def main() -> None:
    async def assertion(audience: str) -> str:
        return jwt_svid(audience)

    storage = Memory()
    auth = PrivateKeyJWTOAuthProvider(
        server_url=TOOL, storage=storage, client_id=ME,
        assertion_provider=assertion, scope="read", issuer=ISSUER,
    )
    async with httpx2.AsyncClient(auth=auth, timeout=30) as http:
        async with streamable_http_client(TOOL, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                token = storage.tokens.access_token
                print(f"1. token from the broker: expires in {storage.tokens.expires_in}s, scope {storage.tokens.scope!r}")
                tools = await session.list_tools()
                print(f"2. tools: {[t.name for t in tools.tools]}")
                result = await session.call_tool("forecast", {"city": "Lisbon"})
                print(f"   forecast: {result.content[0].text}")
    r = httpx.post(f"{ISSUER}/revoke", data={
        "client_assertion_type": JWT_BEARER, "client_assertion": jwt_svid(ISSUER), "token": token,
    })
    print(f"3. task closed (revoke: HTTP {r.status_code})")
    again = httpx.post(TOOL, headers={
        "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
    }, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    print(f"   the tool now answers the same token with HTTP {again.status_code}")


if __name__ == "__main__":
    asyncio.run(main())
