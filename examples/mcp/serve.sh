#!/usr/bin/env bash
# Command 1 of 2: the broker with an [oauth] listener, and an MCP tool server that trusts it.
# Leaves both running in the foreground; Ctrl-C stops them. Then run ./agent.sh in another shell.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
run=${MCP_DEMO_DIR:-/tmp/svid-broker-mcp-demo}
venv=${SVID_BROKER_OAUTH_VENV:-$repo/target/peers/oauth-venv}
broker_port=${MCP_DEMO_BROKER_PORT:-8800}
tool_port=${MCP_DEMO_TOOL_PORT:-8801}
export MCP_DEMO_BROKER_PORT=$broker_port MCP_DEMO_TOOL_PORT=$tool_port

bash "$repo/scripts/install-oauth-peers.sh"
broker_bin=${SVID_BROKER_BIN:-$repo/target/debug/svid-broker}
[[ -n "${SVID_BROKER_BIN:-}" ]] || (cd "$repo" && cargo build --quiet --bin svid-broker)
python=$(readlink -f "$venv/bin/python")
rm -rf "$run" && mkdir -p "$run" && chmod 700 "$run"

cat >"$run/policy.cedar" <<CEDAR
// The agent may get tokens for the demo tool, read scope only.
@id("demo-agent-reads-the-tool")
permit (
  principal == SvidBroker::Workload::"spiffe://example.org/demo/agent",
  action in [SvidBroker::Action::"OpenTask", SvidBroker::Action::"MintTaskToken"],
  resource == SvidBroker::Audience::"http://127.0.0.1:$tool_port/mcp"
)
when { ["read"].containsAll(context.scopes) };
CEDAR
cat >"$run/broker.toml" <<TOML
trust_domain = "example.org"
socket_path = "$run/api.sock"
data_dir = "$run/data"

# Both demo programs run on the venv's interpreter; each asks for its own identity by name.
[[entry]]
spiffe_id = "spiffe://example.org/demo/agent"
selectors = ["unix:path:$python"]

[[entry]]
spiffe_id = "spiffe://example.org/demo/tool"
selectors = ["unix:path:$python"]

[policy]
file = "$run/policy.cedar"

[audit]
path = "$run/audit.log"

[broker]
introspectors = ["spiffe://example.org/demo/tool"]

[oauth]
listen = "127.0.0.1:$broker_port"
issuer = "http://127.0.0.1:$broker_port"
TOML

"$broker_bin" run --config "$run/broker.toml" 2>"$run/broker.log" &
broker=$!
trap 'kill $broker ${tool:-} 2>/dev/null; wait' EXIT INT TERM
for _ in $(seq 100); do [[ -S "$run/api.sock" ]] && break; sleep 0.1; done
if [[ ! -S "$run/api.sock" ]]; then
  echo "the broker did not start; its log ($run/broker.log):" >&2
  cat "$run/broker.log" >&2
  exit 1
fi
echo "broker: issuer http://127.0.0.1:$broker_port, log $run/broker.log, audit $run/audit.log"
SPIFFE_ENDPOINT_SOCKET="unix://$run/api.sock" "$venv/bin/python" "$here/tool_server.py" &
tool=$!
echo "tool:   http://127.0.0.1:$tool_port/mcp  (now run examples/mcp/agent.sh)"
wait $tool
