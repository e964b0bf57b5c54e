#!/usr/bin/env bash
# Rewrites link/svid-broker.order, the order in which the release daemon's functions are laid
# out (build.rs passes it to lld): what start-up and an idle daemon run first, then what serving
# runs. Rerun it after a dependency upgrade or a large change, then rebuild and compare the
# bench's idle RSS:
#
#   bash scripts/text-order.sh
#   bash scripts/text-order.sh --check   fails when start-up runs functions the order lacks
#                                        (the test command runs this)
#
# Needs valgrind (Debian: valgrind). The bench starts the daemon under callgrind, which records
# every function entered, twice: once through start-up, the readiness checks and the idle wait
# (the no-op row only), once through every row at one client (but the full-table one).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=write
if [[ "${1:-}" == "--check" ]]; then
  mode=check
fi

command -v valgrind >/dev/null || { echo "valgrind not found: apt-get install valgrind" >&2; exit 1; }
command -v nm >/dev/null || { echo "nm not found: apt-get install binutils" >&2; exit 1; }

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -p svid-broker -p svid-broker-bench
fi
bin=$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The bench runs its --daemon with the daemon's arguments; this wrapper runs it under callgrind.
cat >"$work/under-callgrind.sh" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --demangle=no --dump-instr=no \
  --callgrind-out-file="\$CALLGRIND_OUT" "$bin/svid-broker" "\$@"
EOF
chmod +x "$work/under-callgrind.sh"

run() { # name, then bench arguments
  local name=$1
  shift
  CALLGRIND_OUT="$work/$name.callgrind" "$bin/svid-broker-bench" --daemon "$work/under-callgrind.sh" \
    --clients 1 --duration 1 --rounds 1 --no-streams --no-spire --out "$work/bench-$name" "$@" \
    >"$work/$name.log" 2>&1 || { cat "$work/$name.log" >&2; exit 1; }
}
# --only matches names by substring: "no-op (health" is the gRPC health row alone, not also the
# OAuth listener's no-op row, whose serving code is not start-up.
run startup --only "no-op (health"
if [[ $mode == check ]]; then
  python3 scripts/text-order.py --check "$bin/svid-broker" link/svid-broker.order \
    "$work/startup.callgrind"
  exit 0
fi
# The full-table row first opens 100,000 tasks: hours under callgrind, and no code the other
# rows do not run.
run serving --no-full-table

python3 scripts/text-order.py "$bin/svid-broker" link/svid-broker.order \
  "$work/startup.callgrind" "$work/serving.callgrind"
