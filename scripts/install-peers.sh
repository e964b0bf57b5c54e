#!/usr/bin/env bash
# Installs the independently written clients the integration tests run against the daemon.
#
#   Python venv ${SVID_BROKER_VENV:-<repo>/.venv}, from tests/peers/python/requirements.txt (pinned):
#     spiffe (py-spiffe) 0.3.2, PyJWT[crypto], jwcrypto, cryptography, buf-bin (the `buf` CLI,
#     for `buf curl` over gRPC reflection), kubernetes-validate (scripts/validate-manifests.sh)
#   openssl, valgrind  from Debian's packages when missing (needs root); valgrind runs the
#                      link-order check (scripts/text-order.sh --check)
#   Go peers           SPIRE and a go-spiffe client, by scripts/install-go-peers.sh
#                      (SVID_BROKER_SKIP_GO=1 skips them; those tests then say they skipped)
#
# Idempotent: a venv whose installed pins match the requirements file is left as it is.
# Exits non-zero, naming what failed, when anything cannot be installed.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SVID_BROKER_VENV:-$repo/.venv}
requirements=$repo/tests/peers/python/requirements.txt
python=${PYTHON:-python3}

say() { printf 'install-peers: %s\n' "$*" >&2; }
fail() {
  say "error: $*"
  exit 1
}

# --- Python peers -------------------------------------------------------------------------
[[ -f "$requirements" ]] || fail "$requirements is missing"
command -v "$python" >/dev/null 2>&1 ||
  fail "$python not found; install Python 3.9+ (Debian: apt-get install python3 python3-venv)"

stamp=$venv/.svid-broker-peers.stamp
want=$(cat "$requirements" | sha256sum | cut -d' ' -f1)
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] &&
  "$venv/bin/python" -c 'import spiffe, jwt, jwcrypto, cryptography' 2>/dev/null &&
  [[ -x "$venv/bin/buf" && -x "$venv/bin/kubernetes-validate" ]]; then
  say "python peers up to date in $venv"
else
  if [[ ! -x "$venv/bin/python" ]]; then
    say "creating the venv $venv with $($python --version 2>&1)"
    "$python" -m venv "$venv" ||
      fail "cannot create a venv at $venv ($python -m venv; on Debian: apt-get install python3-venv)"
  fi
  say "pip install into $venv:"
  grep -v '^\s*#' "$requirements" | grep -v '^\s*$' | sed 's/^/install-peers:   /' >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" ||
    fail "pip install -r $requirements failed; the python peers are NOT installed"
  printf '%s\n' "$want" >"$stamp"
fi
"$venv/bin/python" -c 'import spiffe, jwt, jwcrypto, cryptography' ||
  fail "the venv $venv cannot import spiffe, jwt, jwcrypto and cryptography"
buf_version=$("$venv/bin/buf" --version 2>&1) || fail "$venv/bin/buf does not run: $buf_version"
say "python: $("$venv/bin/python" --version 2>&1) in $venv"
say "  $("$venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null |
  grep -iE '^(spiffe|pyjwt|jwcrypto|cryptography|buf-bin|kubernetes-validate|grpcio|protobuf) ' |
  awk '{printf "%s==%s ", $1, $2}')"
say "  buf $buf_version"

# --- Debian packages: openssl (certificates in tests), valgrind (the link-order check) -------
debian_tool() { # command, package
  command -v "$1" >/dev/null 2>&1 && return
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "$1 missing: apt-get install -y $2"
    apt-get update -qq || fail "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null ||
      fail "apt-get install $2 failed"
  else
    fail "$1 not found; install it (Debian: sudo apt-get install $2)"
  fi
}
debian_tool openssl openssl
say "openssl: $(openssl version)"
debian_tool valgrind valgrind
say "valgrind: $(valgrind --version)"

# --- Go peers -----------------------------------------------------------------------------
if [[ -f "$repo/scripts/install-go-peers.sh" ]]; then
  bash "$repo/scripts/install-go-peers.sh" || fail "scripts/install-go-peers.sh failed"
else
  say "scripts/install-go-peers.sh not present: no Go peers"
fi

say "done"
