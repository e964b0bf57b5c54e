#!/usr/bin/env bash
# Command 2 of 2: the agent. Gets a task token from the broker through the MCP SDK, calls the
# tool, closes its task, and shows the tool refusing the token afterwards.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
run=${MCP_DEMO_DIR:-/tmp/svid-broker-mcp-demo}
venv=${SVID_BROKER_OAUTH_VENV:-$repo/target/peers/oauth-venv}
SPIFFE_ENDPOINT_SOCKET="unix://$run/api.sock" exec "$venv/bin/python" "$here/agent.py"
