#!/bin/bash
# Graceful node shutdown (kubelet's shutdownGracePeriod), across a real `systemctl poweroff`.
# A `.reboot.sh` check: the runner calls it with `before` after every other check, powers
# the guest off through logind, and calls it with `after` on the next boot.
#
# before: shutdownGracePeriod 30s, shutdownGracePeriodCriticalPods 10s in the config, agent
#   restarted; it raises logind's InhibitDelayMaxSec with kubelet's drop-in and holds a
#   delay inhibitor ("kubelet", "shutdown"). Three pods, which note what happens to them
#   (uptime, pod, event) in a hostPath file of this boot:
#     e2e-shutdown-app       ordinary; preStop notes and sleeps 1 s; SIGTERM ends it
#     e2e-shutdown-slow      ordinary; terminationGracePeriodSeconds 300, preStop hangs,
#                            SIGTERM ignored: its grace period is capped to its range's 20 s
#     e2e-shutdown-critical  priority 2000001000 (system-node-critical), host network;
#                            its preStop saves the agent's /pods as seen 2 s later
# after: from the last boot's journal and the pods' notes: the agent saw PrepareForShutdown,
#   both ordinary pods' preStop hooks ran right away, the critical pod's only once the
#   ordinary range was over (20 s: the slow pod holds it), the whole shutdown within the 30 s;
#   the grace periods asked for (20 s for the slow pod instead of its 300, 10 s for the
#   critical one); the app pod Failed/Terminated with kubelet's message and DisruptionTarget
#   in the agent's log and in /pods as the critical pod saw it while the node shut down, the
#   slow pod (its kill still under way then, as kubelet moves on after a range's period) with
#   DisruptionTarget; the state file with start and end; after the boot a new inhibitor and
#   logind's delay from kubelet's drop-in. The agent's shutdown lines are shown as comments.
set -u
# shellcheck source=../guest/lib.sh
. "${E2E_LIB:-/opt/rkubelet-e2e/lib.sh}"

PHASE=${1:-before}
STATE=/var/lib/rkubelet-e2e
EVIDENCE=$STATE/shutdown
PERIOD=30
CRITICAL=10
ORDINARY=$((PERIOD - CRITICAL))
PODS=(e2e-shutdown-app e2e-shutdown-slow e2e-shutdown-critical)
MESSAGE="Pod was terminated in response to imminent node shutdown."
ROOT_DIR=/var/lib/rkubelet

set_shutdown_config() { # on|off
  sed -i '/^shutdownGracePeriod/d' "$RKUBELET_CONFIG"
  [ "$1" = off ] || printf 'shutdownGracePeriod: %ss\nshutdownGracePeriodCriticalPods: %ss\n' $PERIOD $CRITICAL >>"$RKUBELET_CONFIG"
}
restart_agent() { systemctl restart rkubelet && wait_until 60 healthz; }
# kubelet's inhibitor, held by the agent's process.
inhibitor_line() {
  systemd-inhibit --list --no-pager --no-legend 2>/dev/null |
    awk -v pid="$(systemctl show -p MainPID --value rkubelet)" '$1 == "kubelet" && $4 == pid && /shutdown/ && / delay/'
}
has_inhibitor() { [ -n "$(inhibitor_line)" ]; }
inhibit_delay_usec() {
  busctl get-property org.freedesktop.login1 /org/freedesktop/login1 org.freedesktop.login1.Manager \
    InhibitDelayMaxUSec 2>/dev/null | awk '{ print $2 }'
}
# The agent's journal lines of a boot (0: this one, -1: the last one), without colours.
agent_journal() { journalctl -b "$1" --no-pager -o short-monotonic -u rkubelet 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g'; }
# mono LINE: the monotonic seconds of a short-monotonic journal line.
mono() { sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p' <<<"$1"; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a - b }'; }

before() {
  require_agent shutdown-inhibitor-taken
  # The evidence must outlive the boot: the journal on disk, the pods' notes in $EVIDENCE.
  mkdir -p /var/log/journal
  systemd-tmpfiles --create --prefix /var/log/journal >/dev/null 2>&1 || true
  journalctl --flush >/dev/null 2>&1 || true
  rm -rf "$EVIDENCE"
  mkdir -p "$EVIDENCE/bin"
  cat /proc/sys/kernel/random/boot_id >"$STATE/shutdown-boot-id"
  # mark POD EVENT: one line in the file of this boot.
  cat >"$EVIDENCE/bin/mark" <<'EOF'
echo "$(cut -d' ' -f1 /proc/uptime) $1 $2" >>"/evidence/events.$(cat /proc/sys/kernel/random/boot_id)"
EOF
  cat >"$EVIDENCE/bin/run" <<'EOF'
sh /evidence/bin/mark "$1" started
if [ "$2" = ignore-term ]; then trap '' TERM; else trap 'sh /evidence/bin/mark "$1" term; exit 0' TERM; fi
while :; do sleep 1 & wait $!; done
EOF
  cat >"$EVIDENCE/bin/prestop" <<'EOF'
sh /evidence/bin/mark "$1" prestop
case "$2" in
hang) sleep 300 ;;
fetch-pods)
  sleep 2
  wget -q -O "/evidence/pods-during-shutdown.json" http://127.0.0.1:10255/pods
  sh /evidence/bin/mark "$1" pods-fetched ;;
*) sleep 1 ;;
esac
EOF
  set_shutdown_config on
  if ! restart_agent; then
    not_ok shutdown-inhibitor-taken "rkubelet not serving with shutdownGracePeriod: $(rkubelet_last_error)"
    return
  fi
  if wait_until 15 has_inhibitor; then
    ok shutdown-inhibitor-taken
    note "$(inhibitor_line | tr -s ' ')"
  else
    not_ok shutdown-inhibitor-taken "no delay inhibitor of the agent: $(systemd-inhibit --list --no-pager 2>&1 | tr '\n' ';' | cut -c1-300); agent: $(agent_journal 0 | grep -i 'shutdown' | tail -n 2 | tr '\n' ' ' | cut -c1-300)"
  fi
  local want="# Kubelet logind override
[Login]
InhibitDelayMaxSec=$PERIOD"
  local delay
  delay=$(inhibit_delay_usec)
  if [ "$(cat /etc/systemd/logind.conf.d/99-kubelet.conf 2>/dev/null)" = "$want" ] && [ "${delay:-0}" -ge $((PERIOD * 1000000)) ]; then
    ok logind-inhibit-delay-raised
    note "logind InhibitDelayMaxUSec $delay after kubelet's drop-in /etc/systemd/logind.conf.d/99-kubelet.conf"
  else
    not_ok logind-inhibit-delay-raised "InhibitDelayMaxUSec ${delay:-?}, drop-in: $(tr '\n' ';' </etc/systemd/logind.conf.d/99-kubelet.conf 2>&1)"
  fi

  pod_yaml() { # name extra-spec run-arg prestop-arg
    cat <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: default
spec:
$2
  volumes:
  - name: evidence
    hostPath: {path: $EVIDENCE, type: Directory}
  containers:
  - name: main
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: ["sh", "/evidence/bin/run", "$1", "$3"]
    lifecycle:
      preStop:
        exec:
          command: ["sh", "/evidence/bin/prestop", "$1", "$4"]
    volumeMounts:
    - {name: evidence, mountPath: /evidence}
YAML
  }
  pod_yaml e2e-shutdown-app "  terminationGracePeriodSeconds: 60" "" "" | put_manifest e2e-shutdown-app
  pod_yaml e2e-shutdown-slow "  terminationGracePeriodSeconds: 300" ignore-term hang | put_manifest e2e-shutdown-slow
  pod_yaml e2e-shutdown-critical "  terminationGracePeriodSeconds: 60
  priorityClassName: system-node-critical
  priority: 2000001000
  hostNetwork: true" "" fetch-pods | put_manifest e2e-shutdown-critical
  all_running() {
    local p
    for p in "${PODS[@]}"; do pod_running "$p" || return 1; done
  }
  if wait_until 180 all_running; then
    ok shutdown-pods-running
  else
    not_ok shutdown-pods-running "not all Running after 180 s: $(for p in "${PODS[@]}"; do printf '%s=%s ' "$p" "$(pod_field "$p" .status.phase)"; done)"
  fi
  sync
}

after() {
  local boot1 events
  boot1=$(cat "$STATE/shutdown-boot-id" 2>/dev/null)
  events=$EVIDENCE/events.$boot1
  local journal t0 tend
  journal=$(agent_journal -1)
  t0=$(mono "$(grep -m1 'Shutdown manager detected new shutdown event' <<<"$journal")")
  tend=$(mono "$(grep -m1 'Shutdown manager completed processing shutdown event' <<<"$journal")")
  if [ -n "$t0" ] && grep -q 'Shutdown manager detected new shutdown event.*event="\?shutdown' <<<"$journal"; then
    ok shutdown-event-seen
    note "last boot: PrepareForShutdown(true) seen at ${t0} s of uptime; inhibitor released at ${tend:-?} s"
  else
    not_ok shutdown-event-seen "no 'Shutdown manager detected new shutdown event' in the last boot's journal ($(wc -l <<<"$journal") lines; journal boots: $(journalctl --list-boots --no-pager 2>&1 | wc -l)): $(grep -i shutdown <<<"$journal" | tail -n 3 | tr '\n' ' ' | cut -c1-300)"
    t0=0
  fi
  # at POD EVENT: the uptime the pod noted for the event in the last boot.
  at() { awk -v p="$1" -v e="$2" '$2 == p && $3 == e { print $1; exit }' "$events" 2>/dev/null; }
  local app slow crit crit_term app_term
  app=$(at e2e-shutdown-app prestop)
  app_term=$(at e2e-shutdown-app term)
  slow=$(at e2e-shutdown-slow prestop)
  crit=$(at e2e-shutdown-critical prestop)
  crit_term=$(at e2e-shutdown-critical term)
  note "pods' notes (uptime pod event): $(grep -v started "$events" 2>/dev/null | tr '\n' ';')"
  if [ -n "$app" ] && [ -n "$slow" ] && [ -n "$crit" ] && le "$t0" "$app" && le "$t0" "$slow" && le "$app" "$crit" && le "$slow" "$crit"; then
    ok ordinary-pods-stopped-first
    note "preStop after PrepareForShutdown: app +$(sub "$app" "$t0") s, slow +$(sub "$slow" "$t0") s, critical +$(sub "$crit" "$t0") s; app's SIGTERM +$(sub "${app_term:-0}" "$t0") s"
  else
    not_ok ordinary-pods-stopped-first "preStop times: app ${app:-none}, slow ${slow:-none}, critical ${crit:-none}; shutdown seen at $t0"
  fi
  # The slow pod holds the ordinary range for its whole 12 s; then the critical range starts.
  if [ -n "$crit" ] && le "$((ORDINARY - 1))" "$(sub "$crit" "$t0")" && le "$(sub "$crit" "$t0")" "$((ORDINARY + 5))"; then
    ok critical-pods-after-the-ordinary-period
  else
    not_ok critical-pods-after-the-ordinary-period "critical preStop at +$(sub "${crit:-0}" "$t0") s, want about ${ORDINARY} s (the ordinary range's period)"
  fi
  if [ -n "$tend" ] && [ -n "$crit_term" ] && le "$(sub "$tend" "$t0")" "$((PERIOD + 3))" && le "$crit_term" "$tend"; then
    ok shutdown-within-the-period
    note "inhibitor released +$(sub "$tend" "$t0") s after PrepareForShutdown (shutdownGracePeriod ${PERIOD}s); critical pod's SIGTERM at +$(sub "$crit_term" "$t0") s"
  else
    not_ok shutdown-within-the-period "released at +$(sub "${tend:-0}" "$t0") s (want <= $PERIOD s + 3), critical pod's SIGTERM ${crit_term:-never}"
  fi
  # The agent's own account: grace periods asked for, and the statuses the kills ended with.
  grep -E 'Shutdown manager|node shutdown manager|killing pod' <<<"$journal" | sed 's/^\[ *\([0-9.]*\)\] [^ ]* [^ ]* [^ ]* *[A-Z]* [^ ]* /\1 /' |
    cut -c1-260 | sed 's/^/agent: /'
  local bad="" p line
  for p in e2e-shutdown-slow:$ORDINARY e2e-shutdown-critical:$CRITICAL e2e-shutdown-app:$ORDINARY; do
    grep "Shutdown manager killing pod with gracePeriod" <<<"$journal" | grep "pod=default/${p%:*}-" |
      grep -q "grace_period=${p#*:}\b" || bad+=" ${p%:*} not killed with grace period ${p#*:};"
  done
  line=$(grep "Shutdown manager finished killing pod" <<<"$journal" | grep "pod=default/e2e-shutdown-app-" | tail -n1)
  grep -q 'phase="\?Failed' <<<"$line" && grep -q 'reason="\?Terminated' <<<"$line" && grep -qF "$MESSAGE" <<<"$line" ||
    bad+=" e2e-shutdown-app: ${line:-no 'finished killing pod' line};"
  local snap=$EVIDENCE/pods-during-shutdown.json
  local disrupted='any(.conditions[]?; .type == "DisruptionTarget" and .status == "True" and .reason == "TerminationByKubelet" and .message == $m)'
  jq -e --arg n "e2e-shutdown-app-$NODE_NAME" --arg m "$MESSAGE" ".items[] | select(.metadata.name == \$n) | .status
    | .phase == \"Failed\" and .reason == \"Terminated\" and .message == \$m and $disrupted" "$snap" >/dev/null 2>&1 ||
    bad+=" e2e-shutdown-app in /pods during the shutdown: $(jq -c --arg n "e2e-shutdown-app-$NODE_NAME" '.items[]? | select(.metadata.name == $n) | .status | {phase, reason, message}' "$snap" 2>&1 | cut -c1-200);"
  jq -e --arg n "e2e-shutdown-slow-$NODE_NAME" --arg m "$MESSAGE" ".items[] | select(.metadata.name == \$n) | .status | $disrupted" \
    "$snap" >/dev/null 2>&1 || bad+=" e2e-shutdown-slow without DisruptionTarget in /pods during the shutdown;"
  if [ -z "$bad" ]; then
    ok shutdown-statuses-terminated
    note "/pods during the shutdown: $(jq -c '[.items[] | {name: .metadata.name, phase: .status.phase, reason: .status.reason, disruption: ([.status.conditions[]? | select(.type == "DisruptionTarget") | .reason] | first)}]' "$snap" 2>&1 | cut -c1-500)"
  else
    not_ok shutdown-statuses-terminated "${bad% ;}"
  fi
  local st
  st=$(cat "$ROOT_DIR/graceful_node_shutdown_state" 2>/dev/null)
  if jq -e '(.startTime | startswith("0001") | not) and (.endTime | startswith("0001") | not)' <<<"$st" >/dev/null 2>&1; then
    ok shutdown-state-recorded
    note "$ROOT_DIR/graceful_node_shutdown_state: $st"
  else
    not_ok shutdown-state-recorded "state file: ${st:-missing}"
  fi
  # The node came back: the agent holds a new inhibitor, logind has kubelet's delay from the boot on.
  require_agent inhibitor-after-reboot
  local delay
  delay=$(inhibit_delay_usec)
  if wait_until 30 has_inhibitor && [ "${delay:-0}" -ge $((PERIOD * 1000000)) ]; then
    ok inhibitor-after-reboot
  else
    not_ok inhibitor-after-reboot "inhibitor: $(inhibitor_line) InhibitDelayMaxUSec ${delay:-?}"
  fi
  # Back to the suite's configuration.
  for p in "${PODS[@]}"; do remove_manifest "$p"; done
  gone() {
    local p
    for p in "${PODS[@]}"; do pod_absent "$p" || return 1; done
  }
  wait_until 60 gone || note "shutdown pods still listed 60 s after their manifests were removed"
  set_shutdown_config off
  restart_agent || note "rkubelet not back without shutdownGracePeriod: $(rkubelet_last_error)"
  rm -f /etc/systemd/logind.conf.d/99-kubelet.conf
}

case "$PHASE" in
before) before ;;
after) after ;;
*) not_ok node-shutdown "unknown phase $PHASE" ;;
esac
