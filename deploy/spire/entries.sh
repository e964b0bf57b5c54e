#!/bin/sh
# Registration entries for svid-broker under SPIRE (trust domain example.org, SPIRE 1.13.3).
#
#   SPIRE_SERVER_SOCKET=/run/spire/server/private/api.sock sh entries.sh
#
# Entries stay in SPIRE. svid-broker attests each caller itself and asks the SPIRE agent, over
# the Delegated Identity API, for the SVIDs of the entries whose selectors are all among the
# caller's selectors. So workload entries use the selector names svid-broker emits (unix:…, k8s:…,
# the same names as SPIRE's own attestors), and they must be parented to the node (alias) of the
# agent svid-broker talks to: an agent only holds, and only serves, entries of its own node.
set -eu

spire_server=${SPIRE_SERVER:-spire-server}
socket=${SPIRE_SERVER_SOCKET:-/run/spire/server/private/api.sock}
td=${TRUST_DOMAIN:-example.org}
cluster=${K8S_CLUSTER:-demo-cluster}

entry() { "$spire_server" entry create -socketPath "$socket" "$@"; }

# --- Nodes -----------------------------------------------------------------------------------
# Kubernetes: one alias for every agent of the cluster attested by k8s_psat.
k8s_node="spiffe://$td/k8s-node/$cluster"
entry -node -spiffeID "$k8s_node" -selector "k8s_psat:cluster:$cluster"

# Plain host: the join token names the alias; entries for that host use it as parent.
#   spire-server token generate -spiffeID spiffe://example.org/host/node-1
host_node="spiffe://$td/host/node-1"

# --- svid-broker itself ------------------------------------------------------------------------
# SPIRE's own attestors see svid-broker. This ID gives it its X.509-SVID (authority kind
# "spire") and, being listed in the agent's authorized_delegates, the Delegated Identity API.
entry -parentID "$k8s_node" -spiffeID "spiffe://$td/svid-broker" \
  -selector k8s:ns:svid-broker -selector k8s:sa:svid-broker
entry -parentID "$host_node" -spiffeID "spiffe://$td/svid-broker" \
  -selector unix:user:svid-broker -selector unix:path:/usr/local/bin/svid-broker

# --- A two-stage agent pipeline: planner -> executor -------------------------------------------
# The planner opens a task, mints a token whose audience is the executor's SPIFFE ID and hands
# it over; the executor opens its own task with that token as parent. Short JWT-SVID TTLs: the
# task tokens svid-broker mints in spire mode are JWT-SVIDs of these entries.
entry -parentID "$k8s_node" -spiffeID "spiffe://$td/agents/planner" \
  -selector k8s:ns:agents -selector k8s:sa:planner -selector k8s:pod-label:app:planner \
  -x509SVIDTTL 3600 -jwtSVIDTTL 300 -hint planner
entry -parentID "$k8s_node" -spiffeID "spiffe://$td/agents/executor" \
  -selector k8s:ns:agents -selector k8s:sa:executor -selector k8s:pod-label:app:executor \
  -x509SVIDTTL 3600 -jwtSVIDTTL 300 -hint executor

# The same pipeline on a plain host: one user per stage, the planner also pinned by binary.
entry -parentID "$host_node" -spiffeID "spiffe://$td/agents/planner" \
  -selector unix:user:planner -selector unix:path:/opt/agents/bin/planner \
  -x509SVIDTTL 3600 -jwtSVIDTTL 300 -hint planner
entry -parentID "$host_node" -spiffeID "spiffe://$td/agents/executor" \
  -selector unix:user:executor \
  -x509SVIDTTL 3600 -jwtSVIDTTL 300 -hint executor
