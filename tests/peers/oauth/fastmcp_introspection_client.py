"""Calls the introspecting FastMCP server with task tokens from the broker's token endpoint.

argv: issuer, server URL, agent SPIFFE ID. Prints JSON: the tool's answer with a token for the
server; the HTTP status of a fresh token, of a token for another resource, and of the first
token once its task is closed (revoked, RFC 7009).
"""

import asyncio
import json
import sys

import httpx
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from svid import assertion

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def grant(issuer: str, agent: str, resource: str) -> str:
    r = httpx.post(f"{issuer}/token", data={
        "grant_type": "client_credentials", "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion(issuer, agent), "resource": resource, "scope": "read",
    })
    r.raise_for_status()
    return r.json()["access_token"]


async def call(url: str, token: str) -> str:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                result = await session.call_tool("whoami", {})
                return result.content[0].text


def status_with(url: str, token: str) -> int:
    r = httpx.post(url, headers={
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
    }, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "probe", "version": "0"}}})
    return r.status_code


def main() -> int:
    issuer, url, agent = sys.argv[1:4]
    token = grant(issuer, agent, url)
    whoami = asyncio.run(call(url, token))
    fresh = status_with(url, token)
    other = status_with(url, grant(issuer, agent, url + "/other"))
    r = httpx.post(f"{issuer}/revoke", data={
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion(issuer, agent),
        "token": token,
    })
    r.raise_for_status()
    revoked = status_with(url, token)
    print(json.dumps({
        "whoami": whoami, "fresh": fresh, "other_resource": other, "revoked": revoked,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
