#!/bin/bash
# Requests and limits through cgroup v2 with the systemd driver, for one pod of each QoS
# class plus a CPU-limited busy loop, all started together:
#   e2e-guaranteed  cpu 200m / memory 64Mi, requests = limits
#   e2e-burstable   requests cpu 100m / 32Mi, limits cpu 200m / 64Mi
#   e2e-besteffort  nothing
#   e2e-cpu-burner  cpu 100m / 32Mi (Guaranteed), `while :; do :; done`
# Checks: each pod's slice is where kubelet puts it (kubepods-pod<uid>.slice directly in
# kubepods.slice for Guaranteed, else in its QoS slice) with kubelet's cpu.weight (shares =
# milli*1024/1000, min 2; weight = 1 + (shares-2)*9999/262142), cpu.max (quota = milli*100,
# period 100000, "max" without a limit) and memory.max; the container scopes carry the
# container's own values and oom_score_adj; the burstable QoS slice's weight follows the
# summed Burstable requests; the busy loop is throttled (cpu.stat nr_throttled grows);
# `systemctl restart rkubelet` leaves every container running (same IDs, same tasks, same
# restart counts, same cgroup values); removing the manifests removes the pods and their
# slices.
set -u
# shellcheck source=../guest/lib.sh
. "${E2E_LIB:-/opt/rkubelet-e2e/lib.sh}"

require_agent pods-running

MIB=$((1024 * 1024))
PODS=(e2e-guaranteed e2e-burstable e2e-besteffort e2e-cpu-burner)
# Containers exit on SIGTERM (a shell as PID 1 ignores it otherwise).
IDLE='trap "exit 0" TERM; while :; do sleep 1; done'

manifest() { # name resources-yaml command
  cat <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: default
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", '$3']
$2
YAML
}
manifest e2e-guaranteed '    resources:
      requests: {cpu: 200m, memory: 64Mi}
      limits: {cpu: 200m, memory: 64Mi}' "$IDLE" | put_manifest e2e-guaranteed
manifest e2e-burstable '    resources:
      requests: {cpu: 100m, memory: 32Mi}
      limits: {cpu: 200m, memory: 64Mi}' "$IDLE" | put_manifest e2e-burstable
manifest e2e-besteffort '' "$IDLE" | put_manifest e2e-besteffort
manifest e2e-cpu-burner '    resources:
      requests: {cpu: 100m, memory: 32Mi}
      limits: {cpu: 100m, memory: 32Mi}' 'trap "exit 0" TERM; while :; do :; done' | put_manifest e2e-cpu-burner

cleanup() { for p in "${PODS[@]}"; do remove_manifest "$p"; done; }
all_running() {
  local p
  for p in "${PODS[@]}"; do pod_running "$p" || return 1; done
}
t0=$(now_ms)
if ! wait_until 240 all_running; then
  for p in "${PODS[@]}"; do
    pod_running "$p" || not_ok "pods-running" "$p not Running after 240 s: $(pod "$p" | jq -c '.status' 2>/dev/null | head -c 500)"
  done
  cleanup
  exit 0
fi
ok pods-running
note "4 pods Running $(secs_since "$t0") s after their manifests were written"

# --- pod slices ------------------------------------------------------------------------------
declare -A UID_OF QOS_OF SLICE CID PID
for p in "${PODS[@]}"; do
  UID_OF[$p]=$(pod_field "$p" .metadata.uid)
  QOS_OF[$p]=$(pod_field "$p" .status.qosClass)
  CID[$p]=$(container_id "$p" main)
  PID[$p]=$(task_pid "${CID[$p]}")
done
declare -A want_qos=([e2e-guaranteed]=Guaranteed [e2e-burstable]=Burstable [e2e-besteffort]=BestEffort [e2e-cpu-burner]=Guaranteed)
bad=""
for p in "${PODS[@]}"; do
  if [ "${QOS_OF[$p]}" != "${want_qos[$p]}" ]; then
    bad+=" $p has qosClass ${QOS_OF[$p]:-none}, want ${want_qos[$p]};"
  fi
  # The slice from kubelet's naming rules, not from anything the agent reports.
  SLICE[$p]=$(pod_slice "${UID_OF[$p]}" "${want_qos[$p]}")
  if [ ! -d "$CG/${SLICE[$p]}" ]; then
    bad+=" $p: no $CG/${SLICE[$p]};"
    continue
  fi
  cg=$(cut -d: -f3 "/proc/${PID[$p]:-0}/cgroup" 2>/dev/null)
  want=/${SLICE[$p]}/cri-containerd-${CID[$p]}.scope
  [ "$cg" = "$want" ] || bad+=" $p: container in ${cg:-?}, want $want;"
done
if [ -z "$bad" ]; then
  ok pod-slices-placed
  for p in "${PODS[@]}"; do note "$p (${QOS_OF[$p]}): ${SLICE[$p]}"; done
else
  not_ok pod-slices-placed "${bad% ;}"
fi

# pod_check NAME POD WEIGHT CPUMAX MEMMAX: pod-level values (kubelet's ResourceConfigForPod).
pod_check() {
  local name=$1 p=$2
  shift 2
  if wait_until 15 cg_is "${SLICE[$p]}" "$@"; then
    ok "$name"
    note "$p pod slice: $(cg_values "${SLICE[$p]}")"
  else
    not_ok "$name" "$p pod slice has $(cg_values "${SLICE[$p]}"); want cpu.weight=$1 cpu.max=$2 memory.max=$3"
  fi
}
# Hand-computed from kubelet's formulas; the helpers recompute them as a cross-check.
[ "$(weight_of 200)" = 8 ] && [ "$(weight_of 100)" = 4 ] && [ "$(weight_of 0)" = 1 ] &&
  [ "$(quota_of 200)" = "20000 100000" ] && [ "$(quota_of 100)" = "10000 100000" ] ||
  note "warning: lib.sh formulas disagree with the hand-computed values"
pod_check guaranteed-pod-cgroup e2e-guaranteed 8 "20000 100000" $((64 * MIB))
pod_check burstable-pod-cgroup e2e-burstable 4 "20000 100000" $((64 * MIB))
pod_check besteffort-pod-cgroup e2e-besteffort 1 "max 100000" max
pod_check cpu-limited-pod-cgroup e2e-cpu-burner 4 "10000 100000" $((32 * MIB))

# --- container scopes ----------------------------------------------------------------------------
# runc gets the container's LinuxContainerResources: shares -> weight, quota/period, memory limit.
cap_mem=$(mem_capacity)
burstable_adj=$((1000 - (1000 * 32 * MIB) / cap_mem))
[ "$burstable_adj" -ge 3 ] || burstable_adj=3
[ "$burstable_adj" -ne 1000 ] || burstable_adj=999
declare -A C_WANT ADJ_WANT
C_WANT[e2e-guaranteed]="8|20000 100000|$((64 * MIB))"
C_WANT[e2e-burstable]="4|20000 100000|$((64 * MIB))"
C_WANT[e2e-besteffort]="1|max 100000|max"
C_WANT[e2e-cpu-burner]="4|10000 100000|$((32 * MIB))"
ADJ_WANT=([e2e-guaranteed]=-997 [e2e-burstable]=$burstable_adj [e2e-besteffort]=1000 [e2e-cpu-burner]=-997)
bad=""
for p in "${PODS[@]}"; do
  scope=${SLICE[$p]}/cri-containerd-${CID[$p]}.scope
  IFS='|' read -r w m x <<<"${C_WANT[$p]}"
  wait_until 15 cg_is "$scope" "$w" "$m" "$x" || bad+=" $p container: $(cg_values "$scope"), want cpu.weight=$w cpu.max=$m memory.max=$x;"
done
if [ -z "$bad" ]; then ok container-cgroups; else not_ok container-cgroups "${bad% ;}"; fi
bad=""
for p in "${PODS[@]}"; do
  adj=$(cat "/proc/${PID[$p]:-0}/oom_score_adj" 2>&1)
  [ "$adj" = "${ADJ_WANT[$p]}" ] || bad+=" $p: oom_score_adj $adj, want ${ADJ_WANT[$p]};"
done
if [ -z "$bad" ]; then
  ok container-oom-score-adj
  note "oom_score_adj: Guaranteed -997, BestEffort 1000, Burstable $burstable_adj (1000 - 1000*32Mi/$cap_mem)"
else
  not_ok container-oom-score-adj "${bad% ;}"
fi

# --- burstable QoS slice ----------------------------------------------------------------------------
# Its shares are the summed cpu requests of the Burstable pods: 100m -> 102 shares -> weight 4.
qos_weight() { [ "$(cat $CG/kubepods.slice/kubepods-burstable.slice/cpu.weight)" = "$1" ]; }
if wait_until 15 qos_weight 4; then
  ok burstable-qos-weight
else
  not_ok burstable-qos-weight "kubepods-burstable.slice cpu.weight $(cat $CG/kubepods.slice/kubepods-burstable.slice/cpu.weight), want 4 (Burstable requests 100m)"
fi

# --- throttling ------------------------------------------------------------------------------------
stat_of() { awk -v k="$2" '$1 == k { print $2 }' "$CG/$1/cpu.stat" 2>/dev/null; }
burner=${SLICE[e2e-cpu-burner]}/cri-containerd-${CID[e2e-cpu-burner]}.scope
n1=$(stat_of "$burner" nr_throttled)
u1=$(stat_of "$burner" usage_usec)
sleep 5
n2=$(stat_of "$burner" nr_throttled)
u2=$(stat_of "$burner" usage_usec)
if [ -n "$n1" ] && [ -n "$n2" ] && [ "$n2" -gt "$n1" ]; then
  ok cpu-throttled
  note "busy loop under cpu.max $(cat "$CG/$burner/cpu.max"): nr_throttled $n1 -> $n2, usage $(((u2 - u1) / 1000)) ms of CPU in 5 s; pod slice nr_throttled $(stat_of "${SLICE[e2e-cpu-burner]}" nr_throttled)"
else
  not_ok cpu-throttled "nr_throttled ${n1:-?} -> ${n2:-?} in 5 s (cpu.max $(cat "$CG/$burner/cpu.max" 2>&1))"
fi

# --- agent restart keeps the containers ------------------------------------------------------------
snapshot() { # pod, container id, task pid, restart count, pod slice values
  local p
  for p in "${PODS[@]}"; do
    printf '%s %s %s %s %s\n' "$p" "$(container_id "$p" main)" "$(task_pid "$(container_id "$p" main)")" \
      "$(pod_field "$p" '.status.containerStatuses[0].restartCount')" "$(cg_values "${SLICE[$p]}" | tr ' ' ,)"
  done
}
before=$(snapshot)
t0=$(now_ms)
if ! systemctl restart rkubelet || ! wait_until 60 healthz; then
  not_ok restart-keeps-containers "rkubelet not back after restart: $(systemctl show -p ActiveState,SubState,NRestarts rkubelet | tr '\n' ' ') $(rkubelet_last_error)"
else
  # Give the restarted agent time to resync every pod (and to do anything wrong).
  sleep 15
  after=$(snapshot)
  if [ "$after" = "$before" ] && [ -n "$(task_pid "${CID[e2e-guaranteed]}")" ]; then
    ok restart-keeps-containers
    note "after systemctl restart rkubelet ($(secs_since "$t0") s ago): same containers, tasks, restart counts and pod cgroup values"
  else
    not_ok restart-keeps-containers "before: $(tr '\n' ';' <<<"$before") after: $(tr '\n' ';' <<<"$after")"
  fi
fi
rkubelet_active || note "rkubelet is $(systemctl is-active rkubelet): $(rkubelet_last_error)"

# --- removal ----------------------------------------------------------------------------------------------
cleanup
gone() {
  local p
  for p in "${PODS[@]}"; do
    pod_absent "$p" && [ ! -d "$CG/${SLICE[$p]}" ] || return 1
  done
}
t0=$(now_ms)
if wait_until 90 gone; then
  ok pod-cgroups-removed
  note "pods and their slices gone $(secs_since "$t0") s after the manifests were removed"
else
  left=""
  for p in "${PODS[@]}"; do
    pod_absent "$p" || left+=" pod $p still listed ($(pod_field "$p" .status.phase));"
    [ ! -d "$CG/${SLICE[$p]}" ] || left+=" ${SLICE[$p]} still exists ($(wc -l <"$CG/${SLICE[$p]}/cgroup.procs" 2>/dev/null) procs);"
  done
  not_ok pod-cgroups-removed "90 s after the manifests were removed:${left% ;}"
fi
if wait_until 15 qos_weight 1; then
  ok burstable-qos-weight-reset
else
  not_ok burstable-qos-weight-reset "kubepods-burstable.slice cpu.weight $(cat $CG/kubepods.slice/kubepods-burstable.slice/cpu.weight) with no Burstable pods, want 1"
fi
