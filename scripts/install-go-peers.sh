#!/usr/bin/env bash
# Build the Go-side test peers from the Go module proxy, at the versions pinned in
# tests/peers/go/*/go.mod and go.sum:
#
#   spire-server, spire-agent   SPIRE (tests/peers/go/spire, a tools module)
#   delegatedclient             our Delegated Identity API client, built against the spire-api-sdk
#                               that SPIRE pins (tests/peers/go/spire/delegatedclient)
#   spiffeclient                our go-spiffe v2 Workload API client (tests/peers/go/spiffeclient)
#
# into ${SVID_BROKER_PEERS_DIR:-<repo>/target/peers}/bin. Idempotent: when the binaries are there
# and a stamp of the pins (go.mod, go.sum, client source, Go version) is unchanged, it does nothing.
#
#   scripts/install-go-peers.sh           build if needed
#   scripts/install-go-peers.sh --force   rebuild regardless of the stamp
#   SVID_BROKER_SKIP_GO=1 scripts/install-go-peers.sh
#                                         build nothing; the SPIRE/go-spiffe tests skip themselves
#
# Environment: GO (the go command, default: go on PATH, else /usr/local/go/bin/go),
# SVID_BROKER_PEERS_DIR, SVID_BROKER_SKIP_GO. A cold build of SPIRE takes several minutes and
# about 4 GB of memory; later builds reuse Go's build cache.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
peers_dir=${SVID_BROKER_PEERS_DIR:-$repo/target/peers}
bin_dir=$peers_dir/bin
stamp=$peers_dir/go-peers.stamp
modules=$repo/tests/peers/go
binaries=(spire-server spire-agent delegatedclient spiffeclient)

say() { printf 'install-go-peers: %s\n' "$*" >&2; }

force=0
case "${1:-}" in
  "") ;;
  --force) force=1 ;;
  -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) say "unknown argument: $1 (use --force or --help)"; exit 2 ;;
esac

if [[ "${SVID_BROKER_SKIP_GO:-}" == 1 ]]; then
  say "SVID_BROKER_SKIP_GO=1: not building SPIRE or spiffeclient; tests that need them will skip"
  exit 0
fi

go=${GO:-}
if [[ -z "$go" ]]; then
  if command -v go >/dev/null 2>&1; then
    go=$(command -v go)
  elif [[ -x /usr/local/go/bin/go ]]; then
    go=/usr/local/go/bin/go
  fi
fi
if [[ -z "$go" ]] || ! "$go" version >/dev/null 2>&1; then
  cat >&2 <<'EOF'
install-go-peers: Go not found ($GO unset or not working, no `go` on PATH, no /usr/local/go/bin/go).
The SPIRE and go-spiffe integration tests need it. Install Go 1.25 or newer:
    https://go.dev/doc/install
    e.g.  curl -fsSLO https://go.dev/dl/go1.25.5.linux-amd64.tar.gz
          sudo tar -C /usr/local -xzf go1.25.5.linux-amd64.tar.gz
          export PATH=$PATH:/usr/local/go/bin
then run scripts/install-go-peers.sh again. Or set GO=/path/to/go.
To run the test suite without those tests, set SVID_BROKER_SKIP_GO=1 (they skip, saying so).
EOF
  exit 1
fi

go_version=$("$go" env GOVERSION)
# Everything that decides what gets built: the pins, our client's source, the toolchain, this script.
pins=$(cd "$modules" && cat spire/go.mod spire/go.sum spiffeclient/go.mod spiffeclient/go.sum \
  spiffeclient/*.go spire/delegatedclient/*.go "$repo/scripts/install-go-peers.sh" | sha256sum | cut -d' ' -f1)
want="$pins $go_version"

all_present=1
for b in "${binaries[@]}"; do
  [[ -x "$bin_dir/$b" ]] || all_present=0
done
if [[ $force == 0 && $all_present == 1 && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  say "up to date in $bin_dir (stamp $stamp)"
  exit 0
fi

say "building with $go ($go_version) into $bin_dir"
mkdir -p "$bin_dir"
rm -f "$stamp"
staging=$(mktemp -d "$peers_dir/.build.XXXXXX")
trap 'rm -rf "$staging"' EXIT

# -mod=readonly: use exactly the pinned go.mod/go.sum, never rewrite them.
# -trimpath and -s -w: reproducible paths, smaller binaries (spire-server is ~230 MB unstripped).
export GOFLAGS="-mod=readonly ${GOFLAGS:-}"
build_flags=(-trimpath -ldflags=-s\ -w)

start=$SECONDS
say "spiffeclient (go-spiffe $(cd "$modules/spiffeclient" && "$go" list -m -f '{{.Version}}' github.com/spiffe/go-spiffe/v2))"
(cd "$modules/spiffeclient" && "$go" build "${build_flags[@]}" -o "$staging/spiffeclient" .)
say "spiffeclient built in $((SECONDS - start)) s"

start=$SECONDS
spire_version=$(cd "$modules/spire" && "$go" list -m -f '{{.Version}}' github.com/spiffe/spire)
say "spire-server, spire-agent, delegatedclient (SPIRE $spire_version; a cold build takes several minutes)"
# Stamp the release version in, as SPIRE's own release build does (else it reports 1.13.3-dev-unk).
(cd "$modules/spire" && "$go" build -trimpath \
  "-ldflags=-s -w -X github.com/spiffe/spire/pkg/common/version.gittag=${spire_version#v}" -o "$staging/" \
  github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent ./delegatedclient)
say "SPIRE built in $((SECONDS - start)) s"

for b in "${binaries[@]}"; do
  mv -f "$staging/$b" "$bin_dir/$b"
done
printf '%s\n' "$want" >"$stamp"
"$bin_dir/spire-server" --version 2>&1 | sed 's/^/install-go-peers: spire-server version /' >&2 || true
say "done: ${binaries[*]} in $bin_dir"
