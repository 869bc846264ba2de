#!/bin/bash
# Memory pressure on cgroup v2, as kubelet's eviction manager sees it. `evictionHard:
# memory.available` is set 256 MiB below what the node has available now (capacity minus
# the root cgroup's working set: MemTotal - MemFree - inactive_file of the root
# memory.stat, runc's and cadvisor's reading of the v2 root), with a 10 s transition
# period; a static pod then fills a memory-backed emptyDir with 512 MiB. The agent reports
# MemoryPressure within seconds (its one-second memory watch, not the 10 s round), ranks
# the pods and passes over the static one (kubelet: static pods are critical, never
# evicted), and once the pod is gone the condition clears after the transition period.
# The agent's configuration is restored at the end. (Evicting API pods, with their
# statuses and events, is shown on the host tier: this guest has no API server.)
set -u
# shellcheck source=../guest/lib.sh
. "${E2E_LIB:-/opt/rkubelet-e2e/lib.sh}"

require_agent memory-pressure-observed

POD=e2e-memory-hog
FILL_MIB=512
MARGIN_MIB=256
BACKUP=$(mktemp)
cp "$RKUBELET_CONFIG" "$BACKUP"
restore() {
  remove_manifest "$POD"
  cp "$BACKUP" "$RKUBELET_CONFIG" && rm -f "$BACKUP"
  systemctl restart rkubelet
}
trap restore EXIT

# kubelet's memory.available now, in MiB.
available_mib() {
  awk 'FILENAME == "/proc/meminfo" && $1 == "MemTotal:" { total = $2 * 1024 }
       FILENAME == "/proc/meminfo" && $1 == "MemFree:" { free = $2 * 1024 }
       FILENAME != "/proc/meminfo" && $1 == "inactive_file" { inactive = $2 }
       END { ws = total - free - inactive; if (ws < 0) ws = 0; printf "%d\n", (total - ws) / 1048576 }' \
    /proc/meminfo "$CG/memory.stat"
}
avail=$(available_mib)
threshold=$((avail - MARGIN_MIB))
note "memory.available now ${avail}Mi; evictionHard memory.available ${threshold}Mi, then $FILL_MIB MiB in a memory-backed emptyDir"

# The config without its eviction settings, then ours (flow style, one line each).
awk '
  /^evictionHard:/ || /^evictionPressureTransitionPeriod:/ { skip = ($0 !~ /\{/ && $0 ~ /:[[:space:]]*$/); next }
  skip && /^[[:space:]]/ { next }
  { skip = 0; print }
' "$BACKUP" >"$RKUBELET_CONFIG"
printf '%s\n' "evictionHard: {memory.available: ${threshold}Mi, nodefs.available: 1%, imagefs.available: 1%}" \
  "evictionPressureTransitionPeriod: 10s" >>"$RKUBELET_CONFIG"
since=$(date '+%Y-%m-%d %H:%M:%S')
systemctl restart rkubelet
require_agent memory-pressure-observed
journal() { journalctl -b --no-pager -o cat -u rkubelet --since "$since" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' 2>/dev/null; }

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
    command: ["sh", "-c", 'i=0; while [ \$i -lt $FILL_MIB ]; do dd if=/dev/zero of=/mem/f\$i bs=1M count=8 2>/dev/null; i=\$((i + 8)); done; echo filled; exec sleep 3600']
    volumeMounts:
    - {name: mem, mountPath: /mem}
  volumes:
  - name: mem
    emptyDir: {medium: Memory}
YAML

pressure_on() { journal | grep -q 'node conditions changed conditions=\[MemoryPressure\]'; }
t0=$(now_ms)
if wait_until 120 pressure_on; then
  ok memory-pressure-observed
  note "MemoryPressure $(secs_since "$t0") s after the pod was written; memory.available now $(available_mib)Mi"
else
  not_ok memory-pressure-observed "no MemoryPressure within 120 s (memory.available $(available_mib)Mi, threshold ${threshold}Mi): $(journal | grep -i evict | tail -n3 | cut -c1-300)"
  exit 0
fi
if journal | grep -q 'memory threshold crossed, synchronizing at once'; then
  ok memory-threshold-crossing-acted-on-at-once
else
  not_ok memory-threshold-crossing-acted-on-at-once "no round started by the memory watch: $(journal | grep -i 'eviction manager' | tail -n3 | cut -c1-300)"
fi

critical() { journal | grep -q 'eviction manager: cannot evict a critical pod'; }
if wait_until 30 critical && pod_running "$POD"; then
  ok static-pod-not-evicted
  note "$(journal | grep -m1 'must evict pod(s) to reclaim' | cut -c1-200)"
else
  not_ok static-pod-not-evicted "running: $(pod_field "$POD" .status.phase); $(journal | grep -i 'evict' | tail -n3 | cut -c1-300)"
fi

remove_manifest "$POD"
wait_until 60 pod_absent "$POD" || note "$POD still present after 60 s"
t1=$(now_ms)
pressure_off() { journal | grep -q 'node conditions changed conditions=\[\]'; }
if wait_until 60 pressure_off; then
  took=$(secs_since "$t1")
  ok memory-pressure-cleared-after-transition-period
  note "MemoryPressure cleared $took s after the pod was gone (transition period 10 s, rounds every 10 s)"
else
  not_ok memory-pressure-cleared-after-transition-period "still under pressure 60 s after the pod was gone: memory.available $(available_mib)Mi"
fi
