#!/usr/bin/env bash
# Validates the deploy manifests offline:
#   1. deploy/k8s/*.yaml against the Kubernetes OpenAPI schemas, strictly (unknown fields are
#      errors), with kubernetes-validate from PyPI, which ships the schemas;
#   2. the invariants the deployment relies on (hostPID, the shared socket path, the RBAC rule,
#      the ConfigMap's config.toml parsing as TOML);
#   3. deploy/systemd/svid-broker.service with systemd-analyze, where systemd is installed.
#
# kubernetes-validate is installed into the virtualenv ${SVID_BROKER_VENV:-.venv} (relative to
# the repository root) when missing. Exits non-zero on any failure, including a failed install.
set -euo pipefail

KUBERNETES_VALIDATE_VERSION="1.37.0"
# Oldest and newest Kubernetes the manifests are checked against.
K8S_VERSIONS="${SVID_BROKER_K8S_VERSIONS:-1.30.0 1.37.0}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${SVID_BROKER_VENV:-.venv}"

fail() {
  echo "validate-manifests: error: $*" >&2
  exit 1
}

if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
  echo "validate-manifests: installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION into $venv"
  if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv" || fail "cannot create the virtualenv $venv (python3 -m venv)"
  fi
  "$venv/bin/python" -m pip install --quiet "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" ||
    fail "cannot install kubernetes-validate into $venv; the manifests were NOT validated"
fi
[[ -x "$venv/bin/kubernetes-validate" ]] || fail "kubernetes-validate missing from $venv/bin"

shopt -s nullglob
manifests=(deploy/k8s/*.yaml)
((${#manifests[@]} > 0)) || fail "no manifests in deploy/k8s/"

# 1. Schemas.
for version in $K8S_VERSIONS; do
  echo "validate-manifests: Kubernetes $version schemas (strict)"
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}" ||
    fail "deploy/k8s/ does not validate against Kubernetes $version"
done

# 2. Invariants.
echo "validate-manifests: deployment invariants"
"$venv/bin/python" - "${manifests[@]}" <<'PY' || fail "deployment invariants do not hold"
import sys, tomllib, yaml

docs = [d for path in sys.argv[1:] for d in yaml.safe_load_all(open(path)) if d]
def one(kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]

errors = []
def check(ok, what):
    if not ok:
        errors.append(what)

ds = one("DaemonSet", "svid-broker")
pod = ds["spec"]["template"]["spec"]
check(pod.get("hostPID") is True, "DaemonSet must set hostPID: true")
check(not pod.get("hostNetwork"), "DaemonSet should not need hostNetwork")
volumes = {v["name"]: v for v in pod["volumes"]}
broker = pod["containers"][0]
mounts = {m["mountPath"]: m for m in broker["volumeMounts"]}
sock = mounts.get("/run/svid-broker")
check(sock is not None, "broker must mount the socket directory at /run/svid-broker")
if sock:
    check(volumes[sock["name"]].get("hostPath", {}).get("path") == "/run/svid-broker",
          "the socket directory must be the hostPath /run/svid-broker")
env = {e["name"]: e for e in broker.get("env", [])}
check(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
      "NODE_NAME must come from spec.nodeName")
caps = broker["securityContext"]["capabilities"]
check(caps.get("drop") == ["ALL"] and caps.get("add") == ["SYS_PTRACE"],
      "broker keeps only CAP_SYS_PTRACE")

cm = one("ConfigMap", "svid-broker")
config = tomllib.loads(cm["data"]["config.toml"])
check(config["socket_path"] == "/run/svid-broker/api.sock", "socket_path must be in the shared dir")
check(not str(config.get("admin_socket_path", "")).startswith("/run/svid-broker/"),
      "the admin socket must not be on the directory shared with workloads")
k8s = config["attestor"]["k8s"]
check("{node_name}" in k8s["kubelet_url"] and k8s.get("node_name_env") == "NODE_NAME",
      "kubelet_url must use {node_name} from NODE_NAME")
policy_file = config["policy"]["file"]
check(policy_file.startswith("/etc/svid-broker/") and policy_file.rsplit("/", 1)[1] in cm["data"],
      "the policy file must come from the ConfigMap")
check(config.get("entry"), "config needs at least one [[entry]]")

role = one("ClusterRole", "svid-broker-kubelet-reader")
rules = [(r, res, v) for rule in role["rules"] for r in rule["resources"] for res in [rule] for v in rule["verbs"]]
check(any(r == "nodes/proxy" and v == "get" for r, _, v in rules), "RBAC must grant get nodes/proxy")
binding = one("ClusterRoleBinding", "svid-broker-kubelet-reader")
check(binding["subjects"][0]["name"] == pod["serviceAccountName"], "binding must name the DaemonSet's ServiceAccount")

agent = one("Deployment", "research-agent")["spec"]["template"]["spec"]
container = agent["containers"][0]
aenv = {e["name"]: e.get("value") for e in container.get("env", [])}
check(aenv.get("SPIFFE_ENDPOINT_SOCKET") == "unix://" + config["socket_path"],
      "agent SPIFFE_ENDPOINT_SOCKET must point at the broker's socket_path")
avol = {v["name"]: v for v in agent["volumes"]}
amount = [m for m in container["volumeMounts"] if m["mountPath"] == "/run/svid-broker"]
check(len(amount) == 1 and amount[0].get("readOnly") is True, "agent mounts the socket dir read-only")
if amount:
    check(avol[amount[0]["name"]].get("hostPath", {}).get("path") == "/run/svid-broker",
          "agent's socket volume must be the hostPath /run/svid-broker")

for e in errors:
    print("  -", e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY

# 3. systemd unit.
unit="deploy/systemd/svid-broker.service"
[[ -f "$unit" ]] || fail "$unit is missing"
if command -v systemd-analyze >/dev/null 2>&1; then
  echo "validate-manifests: systemd-analyze verify $unit"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  # verify insists that ExecStart's binary exists; check the unit with a stand-in.
  sed "s|/usr/local/bin/svid-broker|$(command -v true)|" "$unit" >"$tmp/svid-broker.service"
  out="$(systemd-analyze verify "$tmp/svid-broker.service" 2>&1)" || fail "systemd-analyze verify failed: $out"
  # It reports unknown keys and bad values as warnings with exit status 0: treat them as errors.
  [[ -z "$out" ]] || fail "systemd-analyze verify complained about $unit:"$'\n'"$out"
  for key in NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes \
    RuntimeDirectory=svid-broker CapabilityBoundingSet=CAP_SYS_PTRACE; do
    grep -qx "$key" "$unit" || fail "$unit lacks $key"
  done
else
  echo "validate-manifests: systemd-analyze not installed; $unit checked for its hardening keys only"
  for key in NoNewPrivileges=yes ProtectSystem=strict RuntimeDirectory=svid-broker; do
    grep -qx "$key" "$unit" || fail "$unit lacks $key"
  done
fi

echo "validate-manifests: ok (${#manifests[@]} manifest files, Kubernetes $K8S_VERSIONS, $unit)"
