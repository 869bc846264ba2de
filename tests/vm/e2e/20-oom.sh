#!/bin/bash
# A container that allocates past its memory limit (32Mi) is OOM-killed by the kernel in
# its own cgroup, reported with kubelet's reason `OOMKilled` (exit code 137) in
# lastState.terminated, and restarted per restartPolicy Always (restartCount grows, new
# container ID); a sibling container in the same pod keeps running; the pod slice
# counts the kill in memory.events. Container cgroups have memory.oom.group 1: kubelet
# (1.28+) on cgroup v2 asks for it through LinuxContainerResources.unified unless
# singleProcessOOMKill is set, so an OOM kill ends the whole container, not one process.
set -u
# shellcheck source=../guest/lib.sh
. "${E2E_LIB:-/opt/rkubelet-e2e/lib.sh}"

require_agent oom-killed-reported

POD=e2e-oom
put_manifest $POD <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $POD
  namespace: default
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: sibling
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1; done']
    resources:
      requests: {memory: 16Mi}
      limits: {memory: 16Mi}
  - name: hog
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    # tail keeps the last 10 lines in memory: /dev/zero has no newline, so all of it. It is
    # the container's main process, so the kill ends the container either way.
    command: ["sh", "-c", 'echo allocating; exec tail /dev/zero']
    resources:
      requests: {memory: 32Mi}
      limits: {memory: 32Mi}
YAML

hog() { pod "$POD" | jq -c '.status.containerStatuses[]? | select(.name == "hog")'; }
oom_reported() {
  local h
  h=$(hog)
  [ -n "$h" ] && jq -e '.restartCount >= 1 and .lastState.terminated.reason == "OOMKilled"' <<<"$h" >/dev/null 2>&1
}
t0=$(now_ms)
if wait_until 240 oom_reported; then
  h=$(hog)
  note "hog: restartCount $(jq -r .restartCount <<<"$h"), lastState $(jq -c .lastState.terminated <<<"$h" | cut -c1-300), state $(jq -c '.state | keys' <<<"$h") after $(secs_since "$t0") s"
  code=$(jq -r .lastState.terminated.exitCode <<<"$h")
  if [ "$code" = 137 ]; then
    ok oom-killed-reported
  else
    not_ok oom-killed-reported "lastState.terminated.reason OOMKilled but exitCode $code, want 137"
  fi
  last_id=$(jq -r '.lastState.terminated.containerID // ""' <<<"$h" | sed 's|^[a-z]*://||')
  first_restarts=$(jq -r .restartCount <<<"$h")
  # Restarted: the container that replaced the first victim is OOM-killed in turn and reported
  # as such in lastState, and the count keeps growing. containerd may publish a container's exit
  # before its OOM event, so the reason can read "Error" for a moment after a kill: wait for the
  # runtime's final word rather than reading the status at the instant the count grows.
  grown() {
    local h
    h=$(hog)
    [ -n "$h" ] && jq -e --argjson n "$first_restarts" --arg old "$last_id" \
      '.restartCount > $n and .lastState.terminated.reason == "OOMKilled"
       and (.lastState.terminated.containerID | sub("^[a-z]*://"; "")) != $old' <<<"$h" >/dev/null 2>&1
  }
  if wait_until 120 grown; then
    h=$(hog)
    new_id=$(jq -r '.lastState.terminated.containerID // ""' <<<"$h" | sed 's|^[a-z]*://||')
    if [ -n "$new_id" ] && [ "$new_id" != "$last_id" ]; then
      ok oom-restarted
      note "restartCount $first_restarts -> $(jq -r .restartCount <<<"$h"), container ${last_id:0:12} -> ${new_id:0:12}"
    else
      not_ok oom-restarted "after the next restart: containerID ${new_id:-none} (previous ${last_id:-none}), lastState $(jq -c .lastState <<<"$h" | cut -c1-300)"
    fi
  else
    not_ok oom-restarted "no further OOMKilled restart after restartCount $first_restarts within 120 s: $(hog | cut -c1-400)"
  fi
else
  not_ok oom-killed-reported "no OOMKilled restart within 240 s: $(hog | cut -c1-600)"
  skip oom-restarted "no OOM kill reported"
fi

uid=$(pod_field $POD .metadata.uid)
slice=$(pod_slice "$uid" Burstable)
kills=$(awk '$1 == "oom_kill" { print $2 }' "$CG/$slice/memory.events" 2>/dev/null)
sib=$(container_id $POD sibling)
if [ "$(pod_field $POD '.status.containerStatuses[] | select(.name == "sibling") | .restartCount')" = 0 ] &&
  [ -n "$(task_pid "$sib")" ] && [ "${kills:-0}" -ge 1 ]; then
  ok oom-contained
  note "pod slice $slice: memory.max $(cat "$CG/$slice/memory.max") ($((16 + 32)) MiB), memory.events oom_kill $kills; sibling running, never restarted"
else
  not_ok oom-contained "sibling restartCount $(pod_field $POD '.status.containerStatuses[] | select(.name == "sibling") | .restartCount'), task ${sib:0:12} pid $(task_pid "$sib"); $slice memory.events oom_kill ${kills:-?}"
fi

# memory.oom.group on the container scopes (the sibling's: it is not being restarted).
scope=$slice/cri-containerd-$sib.scope
group=$(cat "$CG/$scope/memory.oom.group" 2>&1)
if [ "$group" = 1 ]; then
  ok container-oom-group
else
  not_ok container-oom-group "$scope memory.oom.group is $group, want 1 (kubelet sets unified memory.oom.group=1 on cgroup v2 unless singleProcessOOMKill: a child process that runs out of memory must take its whole container down)"
fi

remove_manifest $POD
gone() { pod_absent $POD && [ ! -d "$CG/$slice" ]; }
if wait_until 90 gone; then
  ok oom-pod-removed
else
  not_ok oom-pod-removed "pod or $slice still there 90 s after its manifest was removed"
fi
