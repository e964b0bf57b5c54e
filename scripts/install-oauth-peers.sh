#!/usr/bin/env bash
# Installs the OAuth and MCP peers that tests/oauth.rs runs against the daemon's [oauth]
# listener: the official MCP Python SDK (mcp), FastMCP, Authlib, PyJWT[crypto], httpx and
# py-spiffe, pinned in tests/peers/oauth/requirements.txt, into their own venv
# ${SVID_BROKER_OAUTH_VENV:-<repo>/target/peers/oauth-venv} (kept apart from .venv: the MCP
# SDK brings its own web stack).
#
# Idempotent: a venv whose pins match the requirements file is left as it is.
# Exits non-zero, naming what failed, when anything cannot be installed.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SVID_BROKER_OAUTH_VENV:-$repo/target/peers/oauth-venv}
requirements=$repo/tests/peers/oauth/requirements.txt
python=${PYTHON:-python3}
imports='import mcp, fastmcp, authlib, jwt, httpx, spiffe'

say() { printf 'install-oauth-peers: %s\n' "$*" >&2; }
fail() {
  say "error: $*"
  exit 1
}

[[ -f "$requirements" ]] || fail "$requirements is missing"
command -v "$python" >/dev/null 2>&1 || fail "$python not found; the MCP SDK needs Python 3.10+"
stamp=$venv/.svid-broker-oauth-peers.stamp
want=$(sha256sum <"$requirements" | cut -d' ' -f1)
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] &&
  "$venv/bin/python" -c "$imports" 2>/dev/null; then
  say "up to date in $venv"
  exit 0
fi
if [[ ! -x "$venv/bin/python" ]]; then
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv" || fail "cannot create a venv at $venv ($python -m venv)"
fi
say "pip install -r $requirements into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" ||
  fail "pip install -r $requirements failed; the OAuth peers are NOT installed"
"$venv/bin/python" -c "$imports" || fail "the venv $venv cannot import the OAuth peers"
printf '%s\n' "$want" >"$stamp"
say "$("$venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null |
  grep -iE '^(mcp|fastmcp|authlib|pyjwt|httpx|spiffe) ' | awk '{printf "%s==%s ", $1, $2}')"
