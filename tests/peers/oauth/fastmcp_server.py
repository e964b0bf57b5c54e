"""A FastMCP server whose JWTVerifier checks the broker's task tokens with the jwks_uri alone.

argv: issuer, port. Audience = this server's URL, algorithm ES256, no issuer check (a task
token is a JWT-SVID and carries no `iss`). Tool `whoami` returns the verified subject.
"""

import sys

import httpx
from fastmcp import FastMCP
from fastmcp.server.auth.providers.jwt import JWTVerifier
from fastmcp.server.dependencies import get_access_token


def main() -> None:
    issuer, port = sys.argv[1], int(sys.argv[2])
    meta = httpx.get(f"{issuer}/.well-known/oauth-authorization-server").json()
    resource = f"http://127.0.0.1:{port}/mcp"
    verifier = JWTVerifier(jwks_uri=meta["jwks_uri"], audience=resource, algorithm="ES256")
    mcp = FastMCP("fastmcp behind svid-broker", auth=verifier)

    @mcp.tool
    def whoami() -> str:
        return get_access_token().client_id

    mcp.run(transport="http", host="127.0.0.1", port=port, path="/mcp")


if __name__ == "__main__":
    main()
