#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of untrusted bytes, with AFL++ through cargo-afl on
# stable Rust. The targets are `svid_broker::fuzzing::*`; their seeds are fuzz/corpus/<target>/.
#
#   scripts/fuzz.sh                         every target for FUZZ_SECONDS each (CI)
#   scripts/fuzz.sh TARGET...               only these targets
#   scripts/fuzz.sh --hours 4 [TARGET...]   a long run: each target for 4 hours, one after
#                                           another; a second long run resumes the first
#
# Each target first replays its seeds (a seed that crashes or hangs fails at once), then AFL
# runs for the time given. Exits non-zero if any crash or hang was found, printing the path of
# every such input (under fuzz/out/<target>/default/{crashes,hangs}/). Reproduce one with
#   fuzz/target/release/<target> < INPUT
#
# Environment:
#   FUZZ_SECONDS     seconds per target in the default mode (default 20)
#   FUZZ_TIMEOUT_MS  one input running longer than this is a hang (default 1000)
#
# Installs cargo-afl (which builds AFL++ from its bundled source) when it is missing; needs a C
# toolchain and make.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

# Keep in step with `afl` in fuzz/Cargo.toml.
CARGO_AFL_VERSION=0.18.2
TARGETS=(authority_rewriter jwt x509 cgroup kubelet_pods config grpc_request)

seconds=${FUZZ_SECONDS:-20}
timeout_ms=${FUZZ_TIMEOUT_MS:-1000}
long=0
if [[ "${1:-}" == "--hours" ]]; then
  [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "usage: $0 --hours N [TARGET...]" >&2; exit 2; }
  seconds=$((${2} * 3600))
  long=1
  shift 2
fi
targets=("$@")
((${#targets[@]} > 0)) || targets=("${TARGETS[@]}")
for t in "${targets[@]}"; do
  [[ " ${TARGETS[*]} " == *" $t "* ]] || { echo "unknown target $t (${TARGETS[*]})" >&2; exit 2; }
done

step() { printf '\n==> %s\n' "$*" >&2; }
timings=()

t=$SECONDS
if [[ "$(cargo afl --version 2>/dev/null)" != *"$CARGO_AFL_VERSION"* ]]; then
  step "installing cargo-afl $CARGO_AFL_VERSION (builds AFL++)"
  cargo install cargo-afl --version "$CARGO_AFL_VERSION" --locked
fi
# AFL++ is built per Rust toolchain: build it again after a toolchain update.
if ! out=$(cargo afl config --build 2>&1) && [[ "$out" != *"already built"* ]]; then
  echo "$out" >&2
  exit 1
fi
timings+=("cargo-afl and AFL++: $((SECONDS - t)) s")

step "building the fuzz targets (instrumented)"
t=$SECONDS
(cd fuzz && cargo afl build --release --locked --bins)
timings+=("instrumented build: $((SECONDS - t)) s")

export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
# Other jobs share the cores: do not insist on a free one.
export AFL_NO_AFFINITY=1 AFL_FAST_CAL=1
found=()
for target in "${targets[@]}"; do
  bin=fuzz/target/release/$target
  out=fuzz/out/$target
  t=$SECONDS

  step "$target: replaying the seeds"
  bad=0
  for seed in fuzz/corpus/"$target"/*; do
    rc=0
    timeout 10 "$bin" <"$seed" >/dev/null 2>&1 || rc=$?
    case $rc in
      0) ;;
      124) found+=("$target: hang: $seed"); bad=1 ;;
      *) found+=("$target: crash (exit $rc): $seed"); bad=1 ;;
    esac
  done
  if ((bad)); then
    echo "$target: a seed fails; not fuzzing it (see the summary)" >&2
    timings+=("$target: seeds failed, $((SECONDS - t)) s")
    continue
  fi

  step "$target: fuzzing for ${seconds} s"
  if ((long)); then
    export AFL_AUTORESUME=1
  else
    rm -rf "$out"
  fi
  mkdir -p "$out"
  cargo afl fuzz -i "fuzz/corpus/$target" -o "$out" -V "$seconds" -t "$timeout_ms" \
    -- "$bin" >"$out/afl.log" 2>&1 || {
    tail -n 30 "$out/afl.log" >&2
    found+=("$target: afl-fuzz failed: $out/afl.log")
  }
  grep -E '^(execs_done|execs_per_sec|corpus_count|saved_crashes|saved_hangs)' \
    "$out/default/fuzzer_stats" 2>/dev/null | tr -s ' ' | paste -sd' ' >&2 || true
  for f in "$out"/default/crashes/id:* "$out"/default/hangs/id:*; do
    [[ -e "$f" ]] || continue
    kind=crash
    [[ "$f" == */hangs/* ]] && kind=hang
    found+=("$target: $kind: $f")
  done
  timings+=("$target: $((SECONDS - t)) s")
done

step "fuzzing done"
printf '  %s\n' "${timings[@]}" >&2
if ((${#found[@]} > 0)); then
  echo "FOUND ${#found[@]} failing input(s):" >&2
  printf '  %s\n' "${found[@]}" >&2
  exit 1
fi
echo "no crash, no hang" >&2
