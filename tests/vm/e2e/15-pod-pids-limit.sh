#!/bin/bash
# kubelet's podPidsLimit: with `podPidsLimit: 20` in the config, a pod's cgroup (its slice,
# with the systemd driver: TasksMax, cgroup v2's pids.max) holds at most 20 tasks, the
# sandbox's pause process included. The pod's container starts a shell that forks
# `sleep` 40 times: the fork that would make the 21st task fails ("can't fork"), the
# sleeps started before it keep running, and the kernel counts the refusal in the
# container's pids.events. Without the setting (-1, kubelet's default) the pod slice has
# no limit (pids.max "max"). The agent is restarted with the setting and again without it.
set -u
# shellcheck source=../guest/lib.sh
. "${E2E_LIB:-/opt/rkubelet-e2e/lib.sh}"

require_agent pod-pids-max

LIMIT=20
POD=e2e-pids
restart_agent() { systemctl restart rkubelet && wait_until 60 healthz; }
set_limit() { # LIMIT or "" to drop the line
  sed -i '/^podPidsLimit:/d' "$RKUBELET_CONFIG"
  [ -z "$1" ] || echo "podPidsLimit: $1" >>"$RKUBELET_CONFIG"
}
finish() {
  remove_manifest $POD
  wait_until 60 pod_absent $POD || true
  set_limit ""
  restart_agent || note "rkubelet not back after dropping podPidsLimit: $(rkubelet_last_error)"
}

set_limit $LIMIT
if ! restart_agent; then
  not_ok pod-pids-max "rkubelet not serving after podPidsLimit: $LIMIT: $(rkubelet_last_error)"
  finish
  exit 0
fi
# The inner shell stops at its first failed fork; the outer one (the container's main
# process) reports how many sleeps were started and stays.
put_manifest $POD <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $POD
  namespace: default
spec:
  terminationGracePeriodSeconds: 2
  restartPolicy: Never
  containers:
  - name: forker
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", 'sh -c ''i=0; while [ \$i -lt 40 ]; do sleep 600 & i=\$((i+1)); echo \$i >/tmp/n; done''; read n </tmp/n; echo "started \$n sleeps"; trap "exit 0" TERM; while :; do sleep 1; done']
YAML

t0=$(now_ms)
if ! wait_until 120 pod_running $POD; then
  not_ok pod-pids-max "$POD not Running after 120 s: $(pod $POD | jq -c .status 2>/dev/null | head -c 400)"
  finish
  exit 0
fi
uid=$(pod_field $POD .metadata.uid)
slice=$(pod_slice "$uid" BestEffort)
cid=$(container_id $POD forker)
scope=$slice/cri-containerd-$cid.scope
log=$(ls /var/log/pods/default_${POD}-*_"$uid"/forker/0.log 2>/dev/null | head -n1)
started() { grep -q 'started [0-9]* sleeps' "$log" 2>/dev/null; }
wait_until 30 started || true

max=$(cat "$CG/$slice/pids.max" 2>&1)
if [ "$max" = $LIMIT ]; then
  ok pod-pids-max
  note "$slice: pids.max $max, TasksMax $(systemctl show -p TasksMax --value "$(basename "$slice")")"
else
  not_ok pod-pids-max "$slice pids.max is $max, want $LIMIT"
fi

current=$(cat "$CG/$slice/pids.current" 2>&1)
n=$(sed -n 's/.*started \([0-9]*\) sleeps.*/\1/p' "$log" 2>/dev/null | tail -n1)
refused=$(awk '$1 == "max" { print $2 }' "$CG/$scope/pids.events" 2>/dev/null)
if [ -n "$n" ] && [ "$n" -lt 40 ] && [ "$n" -ge 10 ] && [ "$current" -le $LIMIT ] && [ "${refused:-0}" -ge 1 ] &&
  grep -q "can't fork" "$log"; then
  ok pod-fork-limited
  note "the container started $n of 40 sleeps; pod slice pids.current $current; container pids.events max $refused; log: $(grep "can't fork" "$log" | head -n1 | cut -c1-160) ($(secs_since "$t0") s)"
else
  not_ok pod-fork-limited "started ${n:-?} sleeps (want fewer than 40), pids.current ${current:-?} (limit $LIMIT), pids.events max ${refused:-?}; log: $(tail -n 3 "$log" 2>/dev/null | tr '\n' ' ' | cut -c1-300)"
fi

# kubelet's default -1: a new pod slice without a limit.
remove_manifest $POD
wait_until 60 pod_absent $POD || true
set_limit ""
if restart_agent; then
  manifest_idle() {
    cat <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $POD
  namespace: default
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: idle
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1; done']
YAML
  }
  manifest_idle | put_manifest $POD
  if wait_until 120 pod_running $POD; then
    slice=$(pod_slice "$(pod_field $POD .metadata.uid)" BestEffort)
    max=$(cat "$CG/$slice/pids.max" 2>&1)
    if [ "$max" = max ]; then ok pod-pids-unlimited-by-default; else not_ok pod-pids-unlimited-by-default "$slice pids.max is $max without podPidsLimit, want max"; fi
  else
    not_ok pod-pids-unlimited-by-default "$POD not Running after 120 s"
  fi
else
  not_ok pod-pids-unlimited-by-default "rkubelet not serving after podPidsLimit was removed: $(rkubelet_last_error)"
fi
remove_manifest $POD
wait_until 60 pod_absent $POD || note "$POD still listed 60 s after its manifest was removed"
