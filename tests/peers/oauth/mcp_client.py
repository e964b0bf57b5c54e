"""An MCP client (the official MCP Python SDK) that gets its token from the broker.

argv: issuer, MCP server URL, agent SPIFFE ID. The SDK discovers the server's RFC 9728
metadata, then the broker's RFC 8414 metadata, and runs client_credentials with
private_key_jwt (PrivateKeyJWTOAuthProvider), the assertion being the agent's own JWT-SVID
for the audience the SDK asks for. It lists and calls a tool, then checks that the server
refuses a token for another resource, one whose task was closed, and an expired one.
Prints one JSON object.
"""

import asyncio
import json
import sys
import time
import uuid

import httpx
import httpx2
from mcp import ClientSession
from mcp.client.auth.extensions.client_credentials import PrivateKeyJWTOAuthProvider
from mcp.client.streamable_http import streamable_http_client

from svid import assertion

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class Memory:
    def __init__(self):
        self.tokens = None
        self.info = None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens):
        self.tokens = tokens

    async def get_client_info(self):
        return self.info

    async def set_client_info(self, info):
        self.info = info


def grant(issuer: str, agent: str, resource: str, **extra) -> dict:
    r = httpx.post(f"{issuer}/token", data={
        "grant_type": "client_credentials",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion(issuer, agent),
        "resource": resource,
        "scope": "read",
        **extra,
    })
    r.raise_for_status()
    return r.json()


def status_with(url: str, token: str) -> int:
    r = httpx.post(url, headers={
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "probe", "version": "0"}}})
    return r.status_code


async def run(issuer: str, url: str, agent: str) -> dict:
    async def provide(audience: str) -> str:
        return assertion(audience, agent)

    storage = Memory()
    provider = PrivateKeyJWTOAuthProvider(
        server_url=url, storage=storage, client_id=agent,
        assertion_provider=provide, scope="read", issuer=issuer,
    )
    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = [t.name for t in (await session.list_tools()).tools]
                result = await session.call_tool("whoami", {})
    whoami = getattr(result, "structured_content", None) or json.loads(result.content[0].text)
    whoami = whoami.get("result", whoami)
    return {
        "tools": tools,
        "whoami": whoami,
        "sdk_token_aud": whoami["claims"]["aud"],
    }


def main() -> int:
    issuer, url, agent = sys.argv[1:4]
    out = asyncio.run(run(issuer, url, agent))
    # Refusals, with tokens from the broker's token endpoint.
    ok = grant(issuer, agent, url)
    out["fresh"] = status_with(url, ok["access_token"])
    other = grant(issuer, agent, url + "/other")
    out["other_resource"] = status_with(url, other["access_token"])
    closed = grant(issuer, agent, url)
    r = httpx.post(f"{issuer}/revoke", data={
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion(issuer, agent),
        "token": closed["access_token"],
    })
    r.raise_for_status()
    out["closed_task"] = status_with(url, closed["access_token"])
    short = grant(issuer, agent, url)
    time.sleep(short["expires_in"] + 1)
    out["expired"] = status_with(url, short["access_token"])
    out["nonce"] = uuid.uuid4().hex
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
