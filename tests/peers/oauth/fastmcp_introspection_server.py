"""A FastMCP server whose IntrospectionTokenVerifier checks each bearer token at the broker's
introspection endpoint (RFC 7662), authenticating with a client id and secret
(client_secret_basic, FastMCP's default) as an [[oauth.introspection_client]].

argv: issuer, port, client id, secret file. Audience = this server's URL, required scope
`read`, no cache (a closed task's token is refused at once). Tool `whoami` returns the
verified client id (the token's subject).
"""

import sys

import httpx
from fastmcp import FastMCP
from fastmcp.server.auth.providers.introspection import IntrospectionTokenVerifier
from fastmcp.server.dependencies import get_access_token


def main() -> None:
    issuer, port, client_id, secret_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    meta = httpx.get(f"{issuer}/.well-known/oauth-authorization-server").json()
    assert "client_secret_basic" in meta["introspection_endpoint_auth_methods_supported"], meta
    with open(secret_file) as f:
        secret = f.read().strip()
    resource = f"http://127.0.0.1:{port}/mcp"
    verifier = IntrospectionTokenVerifier(
        introspection_url=meta["introspection_endpoint"],
        client_id=client_id,
        client_secret=secret,
        audience=resource,
        required_scopes=["read"],
    )
    mcp = FastMCP("fastmcp introspecting at svid-broker", auth=verifier)

    @mcp.tool
    def whoami() -> str:
        return get_access_token().client_id

    mcp.run(transport="http", host="127.0.0.1", port=port, path="/mcp")


if __name__ == "__main__":
    main()
