#!/usr/bin/env bash
# The test command: installs the test peers, runs the whole Rust test suite of the workspace (the
# daemon's library, binaries and integration tests with the real daemon and independent clients,
# the benchmark crate and its smoke test, the test launchers), fuzzes briefly, checks that the
# release daemon's link order still covers its start-up, then validates the deploy manifests.
# Exits non-zero on any failure.
#
#   scripts/test.sh                      everything
#   scripts/test.sh -- FILTER            extra arguments go to `cargo test` (e.g. a test name)
#
# Environment:
#   SVID_BROKER_VENV      the Python venv for the peers (default <repo>/.venv); exported for tests
#   SVID_BROKER_SKIP_GO=1 do not build SPIRE and go-spiffe; their tests say they skipped
#   SVID_BROKER_SKIP_FUZZ=1 skip the short AFL++ pass (scripts/fuzz.sh)
#   SVID_BROKER_SKIP_ORDER_CHECK=1 skip the release build and its link-order check
#   CARGO_TARGET_DIR      reuse a build directory (cargo's own variable)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export SVID_BROKER_VENV=${SVID_BROKER_VENV:-$repo/.venv}

cargo_args=()
if [[ "${1:-}" == "--" ]]; then
  shift
  cargo_args=("$@")
fi

step() { printf '\n==> %s\n' "$*" >&2; }
started=$SECONDS
timings=()
timed() {
  local name=$1
  shift
  local t=$SECONDS
  "$@"
  timings+=("$name: $((SECONDS - t)) s")
}

step "installing test peers (scripts/install-peers.sh)"
timed "install peers" bash scripts/install-peers.sh
timed "install oauth peers" bash scripts/install-oauth-peers.sh

step "module layers: no import cycle (scripts/check-layers.py)"
timed "layers" python3 scripts/check-layers.py

step "building (cargo test --workspace --all-targets --no-run)"
timed "build" cargo test --workspace --all-targets --no-run

step "cargo test --workspace --all-targets --no-fail-fast ${cargo_args[*]}"
timed "cargo test" cargo test --workspace --all-targets --no-fail-fast "${cargo_args[@]}"

step "security report rows recorded by the hostile tests (scripts/security-report.sh --check)"
timed "security report" bash scripts/security-report.sh --check

if [[ "${SVID_BROKER_SKIP_FUZZ:-}" == 1 ]]; then
  step "fuzzing skipped (SVID_BROKER_SKIP_FUZZ=1)"
else
  step "fuzzing every parser briefly (scripts/fuzz.sh)"
  timed "fuzz" bash scripts/fuzz.sh
fi

if [[ "${SVID_BROKER_SKIP_ORDER_CHECK:-}" == 1 ]]; then
  step "link-order check skipped (SVID_BROKER_SKIP_ORDER_CHECK=1)"
else
  # Idle RSS depends on start-up code sitting together (link/svid-broker.order); symbol names
  # move with the code and the linker skips names it cannot find, so a stale order is silent.
  step "release build: does link/svid-broker.order still cover start-up? (scripts/text-order.sh --check)"
  timed "link order" bash scripts/text-order.sh --check
fi

step "validating deploy manifests (scripts/validate-manifests.sh)"
timed "manifests" bash scripts/validate-manifests.sh

step "all passed in $((SECONDS - started)) s"
printf '  %s\n' "${timings[@]}" >&2
