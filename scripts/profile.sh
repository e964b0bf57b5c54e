#!/usr/bin/env bash
# Profiles the daemon while the bench drives one row, and renders a flamegraph.
#
#   bash scripts/profile.sh mint            # -> target/profile/mint.svg (+ .folded)
#   ROW=mint CLIENTS=64 SECONDS_=8 bash scripts/profile.sh
#
# Needs perf (Debian: linux-perf) and inferno (cargo install inferno). Builds the `profiling`
# profile: release code generation with line tables, so `perf --call-graph dwarf` can unwind
# through inlined frames.
set -euo pipefail
cd "$(dirname "$0")/.."

row=${1:-${ROW:-mint}}
clients=${CLIENTS:-64}
record_secs=${SECONDS_:-6}
out=${OUT:-target/profile}
mkdir -p "$out"

command -v perf >/dev/null || { echo "perf not found: apt-get install linux-perf" >&2; exit 1; }
command -v inferno-collapse-perf >/dev/null ||
  { echo "inferno not found: cargo install inferno --locked" >&2; exit 1; }

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --profile profiling -p svid-broker -p svid-broker-bench
fi
bin=target/profiling

# The bench starts the daemon; the row runs for long enough that perf sees only steady state.
"$bin/svid-broker-bench" --daemon "$bin/svid-broker" --only "no-op (health,$row" --rounds 1 --no-streams --no-spire \
  --clients "$clients" --duration $((record_secs + 4)) --out "$out/bench-$row" \
  >"$out/bench-$row.log" 2>&1 &
bench=$!

# The daemon is the bench's child; wait until the no-op row is over and the row has begun.
pid=""
for _ in $(seq 1 200); do
  pid=$(pgrep -P "$bench" -x svid-broker || true)
  [ -n "$pid" ] && break
  sleep 0.1
done
[ -n "$pid" ] || { echo "daemon did not start; see $out/bench-$row.log" >&2; exit 1; }
sleep $((record_secs + 6))

perf record -F 1999 --call-graph dwarf,16384 -p "$pid" -o "$out/$row.perf.data" \
  -- sleep "$record_secs" 2>"$out/perf-record.log"
wait "$bench"

perf script -i "$out/$row.perf.data" 2>/dev/null | inferno-collapse-perf >"$out/$row.folded"
inferno-flamegraph --minwidth 1.0 --title "svid-broker: $row, $clients clients" <"$out/$row.folded" >"$out/$row.svg"
echo "flamegraph: $out/$row.svg (folded stacks: $out/$row.folded)"
grep -A3 "^| Row" "$out/bench-$row/report.md" | head -20 || true
