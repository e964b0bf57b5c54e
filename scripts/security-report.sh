#!/usr/bin/env bash
# Rebuilds the attack table and the chaos summary in docs/security.md from what the hostile
# tests recorded in their last run (target/tmp/security-report/: one JSON row per attack, and
# chaos.md). Run the tests first:
#
#   cargo test --test front_door --test accept_backoff --test chaos && scripts/security-report.sh
#
# With --check, exits non-zero when the tests recorded no rows (nothing to report).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${CARGO_TARGET_DIR:-$repo/target}/tmp/security-report
doc=$repo/docs/security.md
[[ -s $dir/rows.jsonl ]] || { echo "security-report: no rows in $dir; run the hostile tests first" >&2; exit 1; }
[[ "${1:-}" == "--check" ]] && exit 0
python3 - "$dir" "$doc" <<'PY'
import json, pathlib, sys
d, doc = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
rows = {}
for line in (d / "rows.jsonl").read_text().splitlines():
    r = json.loads(line)
    rows[r["attack"]] = r  # the last run of each attack wins
esc = lambda s: s.replace("|", "\\|").replace("\n", " ")
table = ["| attack | expected | observed (last run) |", "|---|---|---|"]
table += [f"| {esc(r['attack'])} | {esc(r['expected'])} | {esc(r['observed'])} |" for r in rows.values()]
chaos = (d / "chaos.md").read_text().strip() if (d / "chaos.md").exists() else "(chaos test not run)"
chaos = "| figure | value |\n|---|---|\n" + chaos
text = doc.read_text()
def put(text, name, body):
    b, e = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    head, rest = text.split(b, 1)
    _, tail = rest.split(e, 1)
    return f"{head}{b}\n{body}\n{e}{tail}"
text = put(text, "attacks", "\n".join(table))
text = put(text, "chaos", chaos)
doc.write_text(text)
print(f"security-report: {len(rows)} attacks written to {doc}")
PY
