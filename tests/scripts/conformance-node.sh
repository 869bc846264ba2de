#!/usr/bin/env bash
# Runs the kit's upstream e2e [NodeConformance] specs against rkubelet: a private control plane from the kit (its
# own K8S_HOME and ports, so a shared kit is not disturbed), a private containerd on our CNI plugins, rkubelet as
# the one node (--node-ip: the API server refuses loopback node addresses), then conformance.sh, then everything it
# started is stopped and the runtime emptied (pods killed, sandboxes removed through CRI by a standalone rkubelet).
#   conformance-node.sh [conformance.sh args...]        e.g. --focus='Pods should'
#   conformance-node.sh --slice cncf [conformance.sh args...]
#     the wider suite's slice instead (bin/e2e-cncf.test): the [sig-node], [sig-apps], [sig-storage] and [sig-cli]
#     [Conformance] specs outside [NodeConformance], [Serial] and [Disruptive] (94 specs; the Go kubelet passes 88),
#     16 processes and a 20 min timeout unless set; a --focus or --skip of yours replaces the slice's.
# env: RKUBELET_BIN (default target/debug/rkubelet), RKUBELET_CNI_BIN_DIR (default target/debug),
#      RKUBELET_K8S_KIT (default ../shared/k8s), RKUBELET_NODE_IP (default: the first global IPv4 address),
#      K8S_E2E_PROCS (default 40: the waiting specs cost little CPU; 16 for the slice),
#      RKUBELET_CONFORMANCE_RUNS (default 1): runs of the specs against the same agent process, each followed by the
#      agent's RSS (whether memory is given back from run to run).
#      RKUBELET_DHAT_FILE: with an agent built with --features dhat-heap, its heap profile after the last run.
# Results: the kit's folder under $K8S_HOME/e2e/<timestamp>/ (results.txt), its last line printed last.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
KIT=${RKUBELET_K8S_KIT:-$REPO/../shared/k8s}
BIN=${RKUBELET_BIN:-$REPO/target/debug/rkubelet}
CNI=${RKUBELET_CNI_BIN_DIR:-$REPO/target/debug}
NODE=rkubelet-conformance
export K8S_HOME=${K8S_HOME:-/var/lib/rkubelet-test/conformance-kit}
export K8S_APISERVER_PORT=${K8S_APISERVER_PORT:-46443} K8S_ETCD_PORT=${K8S_ETCD_PORT:-42379}
export K8S_KCM_PORT=${K8S_KCM_PORT:-41257} K8S_SCHED_PORT=${K8S_SCHED_PORT:-41259}
SLICE_ARGS=()
if [ "${1:-}" = --slice ]; then
  [ "${2:-}" = cncf ] || { printf 'conformance-node: unknown slice "%s" (known: cncf)\n' "${2:-}" >&2; exit 2; }
  export K8S_E2E_BINARY=${K8S_E2E_BINARY:-$K8S_HOME/bin/e2e-cncf.test}
  export K8S_E2E_PROCS=${K8S_E2E_PROCS:-16} K8S_E2E_TIMEOUT=${K8S_E2E_TIMEOUT:-20m}
  focus='--focus=\[sig-(node|apps|storage|cli)\].*\[Conformance\]'
  skip='--skip=\[NodeConformance\]|\[Serial\]|\[Disruptive\]'
  shift 2
  # ginkgo ORs repeated --focus (and --skip) flags: the caller's replace the slice's rather than widen it.
  for a in "$@"; do
    if [[ $a =~ ^--?focus(=|$) ]]; then focus=""; fi
    if [[ $a =~ ^--?skip(=|$) ]]; then skip=""; fi
  done
  if [ -n "$focus" ]; then SLICE_ARGS+=("$focus"); fi
  if [ -n "$skip" ]; then SLICE_ARGS+=("$skip"); fi
fi
export K8S_E2E_PROCS=${K8S_E2E_PROCS:-40}
NODE_IP=${RKUBELET_NODE_IP:-$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1)}
log() { printf 'conformance-node: %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root"; exit 2; }
[ -x "$KIT/up.sh" ] || [ -f "$KIT/up.sh" ] || { log "no kit at $KIT"; exit 2; }
[ -n "$NODE_IP" ] || { log "no global IPv4 address for --node-ip"; exit 2; }

STATE=$(mktemp -d /var/lib/rkubelet-test/conformance-node.XXXXXX)
SOCK_DIR=/run/rkt-conformance-containerd
SOCK=$SOCK_DIR/containerd.sock
CTRD_PID="" AGENT_PID=""
cleanup() {
  set +e
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  if [ -n "$CTRD_PID" ]; then
    # Kill what still runs (specs with long grace periods), then let a standalone agent with no pods remove every
    # sandbox and container through CRI, which also tears down their network namespaces.
    for id in $(ctr --address "$SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$SOCK" -n k8s.io tasks kill -s KILL "$id" >/dev/null 2>&1
    done
    mkdir -p "$STATE/empty"
    printf 'apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncontainerRuntimeEndpoint: unix://%s\ncgroupsPerQOS: false\nreadOnlyPort: 0\nenableServer: false\nhealthzPort: 0\npodLogsDir: %s/logs\nstaticPodPath: %s/empty\ncniConfDir: %s/cni\ncniBridgeName: rktconf0\n' \
      "$SOCK" "$STATE" "$STATE" "$STATE" >"$STATE/cleanup.yaml"
    "$BIN" --config "$STATE/cleanup.yaml" --root-dir "$STATE/root" --hostname-override "$NODE" >"$STATE/cleanup.log" 2>&1 &
    local cleaner=$!
    for _ in $(seq 120); do
      [ -z "$(ctr --address "$SOCK" -n k8s.io containers ls -q 2>/dev/null)" ] && break
      sleep 1
    done
    kill "$cleaner" 2>/dev/null; wait "$cleaner" 2>/dev/null
    kill "$CTRD_PID" 2>/dev/null && wait "$CTRD_PID" 2>/dev/null
    grep ' /run/rkt-conformance\| '"$STATE" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l
  fi
  ip link del rktconf0 2>/dev/null
  bash "$KIT/down.sh" >/dev/null 2>&1
  rm -rf "$STATE" "$SOCK_DIR"
}
trap cleanup EXIT

kc=$(bash "$KIT/up.sh" --wipe | tail -1)
nkc=$(bash "$KIT/node-kubeconfig.sh" "$NODE" | tail -1)
mkdir -p "$STATE/cni" "$STATE/logs" "$SOCK_DIR"
cat >"$STATE/containerd.toml" <<T
version = 2
root = "$STATE/containerd-root"
state = "$SOCK_DIR/state"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "127.0.0.1:${K8S_REGISTRY_PORT:-5050}/pause:3.9"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI"
    conf_dir = "$STATE/cni"
T
containerd --config "$STATE/containerd.toml" >"$STATE/containerd.log" 2>&1 &
CTRD_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
# The kubelet server as kubeadm and the kit's kubelet.sh set it up: the API server's client certificate checked
# against the cluster CA, tokens through TokenReview, every request through SubjectAccessReview.
cat >"$STATE/config.yaml" <<T
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: $K8S_HOME/pki/ca.crt}}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$SOCK
cgroupsPerQOS: false
port: ${K8S_KUBELET_PORT:-10250}
readOnlyPort: 0
healthzPort: 0
podLogsDir: $STATE/logs
cniConfDir: $STATE/cni
cniBridgeName: rktconf0
T
"$BIN" --config "$STATE/config.yaml" --kubeconfig "$nkc" --hostname-override "$NODE" --node-ip "$NODE_IP" \
  --root-dir "$STATE/root" >"$STATE/rkubelet.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 120); do
  [ "$("$K8S_HOME/bin/kubectl" --kubeconfig "$kc" get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] && break
  kill -0 "$AGENT_PID" 2>/dev/null || { tail -n 30 "$STATE/rkubelet.log" >&2; exit 1; }
  sleep 0.5
done
log "node $NODE Ready ($NODE_IP); running the specs with $K8S_E2E_PROCS processes"
rss() { awk '/^VmRSS:/ {printf "%.1f MB", $2 / 1024}' "/proc/$AGENT_PID/status"; }
log "agent RSS before the specs: $(rss)"
rc=0
for run in $(seq "${RKUBELET_CONFORMANCE_RUNS:-1}"); do
  K8S_E2E_CONTAINERD=unix://$SOCK bash "$KIT/conformance.sh" "$NODE" "${SLICE_ARGS[@]}" "$@" || rc=$?
  cp "$STATE/rkubelet.log" "$(ls -d "$K8S_HOME"/e2e/2*/ | tail -1)/rkubelet.log" 2>/dev/null || true
  # What the agent keeps after the specs' pods are gone; the same process runs the next round.
  sleep 20
  log "agent RSS after run $run: $(rss)"
done
# An agent built with --features dhat-heap writes its heap profile on SIGUSR2: what is live once the specs' pods are
# gone (read it with tests/scripts/dhat-top.py).
if [ -n "${RKUBELET_DHAT_FILE:-}" ]; then
  kill -USR2 "$AGENT_PID"
  for _ in $(seq 120); do [ -s "$RKUBELET_DHAT_FILE" ] && break; sleep 0.5; done
  sleep 2
  log "heap profile: $RKUBELET_DHAT_FILE ($(du -h "$RKUBELET_DHAT_FILE" 2>/dev/null | cut -f1))"
fi
exit "$rc"
