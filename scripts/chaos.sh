#!/usr/bin/env bash
# Every front-door attack at once against the real daemon, with a legitimate caller (uid nobody)
# fetching JWT-SVIDs throughout; bounded in time, Unix sockets only. Prints the summary (daemon
# peak RSS, legitimate p50/p99 and failures, audit chain verified) and puts it in
# docs/security.md. Needs root (the legitimate caller runs as another uid).
#
#   scripts/chaos.sh [SECONDS]      default 60, at most 3600
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export SVID_BROKER_CHAOS_SECONDS=${1:-60}
cargo test --test chaos -- --nocapture
bash scripts/security-report.sh
