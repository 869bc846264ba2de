#!/bin/bash
# Pressure stall information on cgroup v2: /stats/summary carries kubelet 1.33's `psi`
# (`full` and `some`, each with total, avg10, avg60, avg300) on the node's, a pod's and
# a container's cpu, memory and io; a container that keeps reclaiming its own page cache
# under a small memory limit stalls on memory (some.total grows, in its cgroup and its
# pod's); /metrics/resource exports the same totals as cadvisor's
# container_pressure_*_seconds_total counters.
# The kubelet server needs credentials: for this check the agent runs with anonymous
# AlwaysAllow on loopback, and its configuration is put back afterwards.
set -u
# shellcheck source=../guest/lib.sh
. "${E2E_LIB:-/opt/rkubelet-e2e/lib.sh}"

require_agent psi-node

PORT=$(cfg port 10250)
SRV=https://127.0.0.1:$PORT
POD=e2e-psi
BACKUP=$(mktemp)
cp -p "$RKUBELET_CONFIG" "$BACKUP"
restore() {
  remove_manifest $POD
  wait_until 60 pod_absent $POD || true
  cp -p "$BACKUP" "$RKUBELET_CONFIG"
  rm -f "$BACKUP"
  systemctl restart rkubelet || true
  wait_until 30 healthz || true
}
trap restore EXIT

printf '%s\n' 'authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}' \
  'authorization: {mode: AlwaysAllow}' >>"$RKUBELET_CONFIG"
systemctl restart rkubelet
require_agent psi-node

summary() { curl -sfk -m 10 "$SRV/stats/summary"; }
# psi_shape JQ-PATH: the object at the path is {full, some} with the four numbers each.
psi_shape='def psi_ok: type == "object" and ((keys) == ["full", "some"])
  and all(.full, .some; (keys) == ["avg10", "avg300", "avg60", "total"] and (.total | type == "number")
  and (.avg10 | type == "number") and (.avg60 | type == "number") and (.avg300 | type == "number"));'

if ! [ -f "$CG/cgroup.controllers" ] || ! [ -f /proc/pressure/memory ]; then
  skip psi-node "no cgroup v2 or no PSI in this kernel"
  exit 0
fi

s=$(summary)
if [ -n "$s" ] && jq -e "$psi_shape"' .node | (.cpu.psi | psi_ok) and (.memory.psi | psi_ok) and (.io.psi | psi_ok) and (.io.time | type == "string")' <<<"$s" >/dev/null 2>&1; then
  ok psi-node
  note "node memory psi $(jq -c .node.memory.psi <<<"$s")"
else
  not_ok psi-node "node cpu/memory/io psi missing or malformed: $(jq -c '.node | {cpu, memory, io}' <<<"$s" 2>/dev/null | cut -c1-400)"
fi

# The hog rewrites and rereads a file twice its memory limit: its page cache is reclaimed
# over and over inside its own cgroup, which the kernel counts as memory stall.
put_manifest $POD <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $POD
  namespace: default
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: hog
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", 'trap "exit 0" TERM; while :; do dd if=/dev/zero of=/big bs=1048576 count=64 2>/dev/null; cat /big /big >/dev/null; done']
    resources:
      requests: {memory: 32Mi, cpu: 100m}
      limits: {memory: 32Mi, cpu: 500m}
YAML

pod_psi() { summary | jq -c --arg n "$POD-$NODE_NAME" '.pods[]? | select(.podRef.name == $n)'; }
stalled() {
  local p
  p=$(pod_psi)
  [ -n "$p" ] && jq -e '(.memory.psi.some.total // 0) > 0 and ((.containers[]? | select(.name == "hog") | .memory.psi.some.total) // 0) > 0' <<<"$p" >/dev/null 2>&1
}
t0=$(now_ms)
if wait_until 180 stalled; then
  p=$(pod_psi)
  if jq -e "$psi_shape"' (.cpu.psi | psi_ok) and (.memory.psi | psi_ok) and (.io.psi | psi_ok)
      and (.containers[] | select(.name == "hog") | (.cpu.psi | psi_ok) and (.memory.psi | psi_ok) and (.io.psi | psi_ok))' <<<"$p" >/dev/null 2>&1; then
    ok psi-pod-and-container
  else
    not_ok psi-pod-and-container "pod or container psi malformed: $(cut -c1-600 <<<"$p")"
  fi
  ok psi-memory-stall
  note "after $(secs_since "$t0") s: pod memory psi $(jq -c .memory.psi <<<"$p"), hog $(jq -c '.containers[] | select(.name == "hog") | .memory.psi' <<<"$p")"
  m=$(curl -sfk -m 10 "$SRV/metrics/resource")
  line=$(grep -E "^container_pressure_memory_waiting_seconds_total\{container=\"hog\",namespace=\"default\",pod=\"$POD-$NODE_NAME\"\} [0-9.e+-]+$" <<<"$m")
  if [ -n "$line" ] && grep -q '^# TYPE container_pressure_cpu_stalled_seconds_total counter$' <<<"$m" &&
    grep -qE '^container_pressure_io_waiting_seconds_total [0-9.e+-]+$' <<<"$m"; then
    ok psi-metrics
    note "$line"
  else
    not_ok psi-metrics "no PSI counters for the hog or the node: $(grep pressure <<<"$m" | head -n 8 | tr '\n' ' ' | cut -c1-600)"
  fi
else
  not_ok psi-memory-stall "no memory some.total > 0 for the pod and its hog within 180 s: $(pod_psi | cut -c1-600)"
  skip psi-pod-and-container "no stall seen"
  skip psi-metrics "no stall seen"
fi
