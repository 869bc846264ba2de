# Helpers for the VM e2e checks (sourced; installed as /opt/rkubelet-e2e/lib.sh).
# A check prints `ok <name>` or `not ok <name> - <reason>` per item; other lines are
# shown prefixed with "# " and not counted.
# shellcheck shell=bash

PROVISIONED=/etc/rkubelet/provisioned
RKUBELET_CONFIG=$(sed -n 's/^config_path=//p' "$PROVISIONED" 2>/dev/null)
RKUBELET_CONFIG=${RKUBELET_CONFIG:-/etc/rkubelet/config.yaml}
CG=/sys/fs/cgroup
# shellcheck disable=SC2034 # for the checks that source this
IMAGE=127.0.0.1:5000/busybox:1.36

ok() { echo "ok $1"; }
not_ok() { echo "not ok $1 - $2"; }
skip() { echo "# skip $1: $2"; }
note() { echo "# $*"; }
now_ms() { date +%s%3N; }
secs_since() { local d=$(($(now_ms) - $1)); printf '%d.%d' $((d / 1000)) $((d % 1000 / 100)); }

# cfg KEY DEFAULT: a top-level scalar of the rkubelet config file.
cfg() {
  local v
  v=$(sed -n "s/^$1:[[:space:]]*//p" "$RKUBELET_CONFIG" 2>/dev/null | head -n1 |
    sed 's/[[:space:]]*#.*$//; s/^"\(.*\)"$/\1/; s/^'"'"'\(.*\)'"'"'$/\1/')
  echo "${v:-$2}"
}

# cfg_map KEY SUBKEY DEFAULT: a value of a top-level map of the config, in block style
# (`KEY:` then indented `SUBKEY: value` lines) or flow style (`KEY: {SUBKEY: value}`).
cfg_map() {
  local v
  v=$(awk -v k="$1" -v s="$2" '
    function clean(x) { gsub(/[ \t"'"'"']/, "", x); return x }
    function pair(p,   i, kk) {
      i = index(p, ":"); if (i == 0) return
      kk = clean(substr(p, 1, i - 1))
      if (kk == s) { print clean(substr(p, i + 1)); found = 1 }
    }
    found { exit }
    index($0, k ":") == 1 {
      rest = substr($0, length(k) + 2); sub(/#.*/, "", rest)
      if (rest ~ /\{/) { gsub(/[{}]/, "", rest); n = split(rest, a, ","); for (j = 1; j <= n && !found; j++) pair(a[j]); exit }
      inmap = 1; next
    }
    inmap && /^[^ \t#]/ { exit }
    inmap { line = $0; sub(/#.*/, "", line); pair(line) }
  ' "$RKUBELET_CONFIG" 2>/dev/null)
  echo "${v:-$3}"
}

# q_bytes QUANTITY: a memory quantity (64Mi, 1Gi, 100M, 1.5Gi, 123) in bytes; empty if unparsable.
q_bytes() {
  awk -v q="$1" 'BEGIN {
    if (!match(q, /^[0-9]+(\.[0-9]+)?/)) exit
    n = substr(q, 1, RLENGTH); u = substr(q, RLENGTH + 1)
    m["Ki"] = 1024; m["Mi"] = 1024^2; m["Gi"] = 1024^3; m["Ti"] = 1024^4
    m["k"] = 1e3; m["M"] = 1e6; m["G"] = 1e9; m["T"] = 1e12; m[""] = 1
    if (!(u in m)) exit
    printf "%.0f\n", n * m[u]
  }'
}
# q_milli QUANTITY: a cpu quantity (100m, 1, 0.5) in millicores; empty if unparsable.
q_milli() {
  awk -v q="$1" 'BEGIN {
    if (q ~ /^[0-9]+m$/) { print substr(q, 1, length(q) - 1) + 0; exit }
    if (q ~ /^[0-9]+(\.[0-9]+)?$/) printf "%.0f\n", q * 1000
  }'
}

# kubelet's conversions (pkg/kubelet/cm/helpers_linux.go; runc/kubelet's shares->weight), in plain
# shell arithmetic so they are checked independently of the agent's code.
shares_of() { # millicpu -> cpu.shares
  local s=$(($1 * 1024 / 1000))
  [ "$s" -ge 2 ] || s=2
  [ "$s" -le 262144 ] || s=262144
  echo "$s"
}
weight_of_shares() { echo $((1 + (($1 - 2) * 9999) / 262142)); }
weight_of() { weight_of_shares "$(shares_of "$1")"; }
quota_of() { # millicpu -> cpu.max value with kubelet's 100 ms period
  local q=$(($1 * 100000 / 1000))
  [ "$q" -ge 1000 ] || q=1000
  echo "$q 100000"
}
mem_capacity() { awk '$1 == "MemTotal:" { print $2 * 1024 }' /proc/meminfo; }

RO_PORT=$(cfg readOnlyPort 10255)
RO_ADDR=$(cfg address 127.0.0.1)
case "$RO_ADDR" in 0.0.0.0 | "::" | "") RO_ADDR=127.0.0.1 ;; esac
case "$RO_ADDR" in *:*) RO_ADDR="[$RO_ADDR]" ;; esac
RO=http://$RO_ADDR:$RO_PORT
STATIC_POD_PATH=$(cfg staticPodPath /etc/kubernetes/manifests)
NODE_NAME=$(hostname | tr '[:upper:]' '[:lower:]')

# wait_until SECONDS CMD...: polls CMD every 0.5 s; 0 as soon as it succeeds.
wait_until() {
  local deadline=$(($(date +%s) + $1))
  shift
  while :; do
    "$@" && return 0
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}

healthz() { [ "$(curl -s -m 5 "$RO/healthz")" = ok ]; }
pods_json() { curl -sf -m 5 "$RO/pods"; }
# pod NAME: the pod's JSON from /pods (static pods are named NAME-<node>), empty if absent.
pod() { pods_json | jq -c --arg n "$1" --arg m "$1-$NODE_NAME" '.items[]? | select(.metadata.name == $n or .metadata.name == $m)' | head -n1; }
# pod_field NAME JQ: a jq expression over the pod's JSON (raw output).
pod_field() { pod "$1" | jq -r "$2" 2>/dev/null; }
# pod_running NAME: phase Running and every container running.
# (jq -e succeeds on empty input: every test of a pod's JSON checks that there is one.)
pod_running() {
  local j
  j=$(pod "$1")
  [ -n "$j" ] && jq -e '.status.phase == "Running" and ((.status.containerStatuses // []) | length > 0)
    and all(.status.containerStatuses[]; .state.running != null)' <<<"$j" >/dev/null 2>&1
}
pod_absent() { pods_json >/dev/null && [ -z "$(pod "$1")" ]; }
# container_id POD [CONTAINER]: the bare CRI id (no containerd:// prefix).
container_id() {
  pod "$1" | jq -r --arg c "${2:-}" '.status.containerStatuses[]? | select($c == "" or .name == $c) | .containerID // empty' |
    head -n1 | sed 's|^[a-z]*://||'
}
# task_pid ID: pid of the container's task in containerd (k8s.io namespace), empty if none.
task_pid() { [ -n "$1" ] && ctr -n k8s.io tasks ls 2>/dev/null | awk -v id="$1" '$1 == id && $3 == "RUNNING" { print $2 }'; }

# pod_slice UID QOS: the pod's cgroup with the systemd driver, as kubelet names it
# (relative to /sys/fs/cgroup): Guaranteed pods directly in kubepods.slice, the others in
# their QoS slice; `-` in the UID becomes `_`.
pod_slice() {
  local u=${1//-/_}
  case "$2" in
  Guaranteed) echo "kubepods.slice/kubepods-pod$u.slice" ;;
  Burstable) echo "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod$u.slice" ;;
  BestEffort) echo "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod$u.slice" ;;
  esac
}
# cg_values DIR: "cpu.weight=W cpu.max=Q P memory.max=M" of a cgroup dir (relative to /sys/fs/cgroup).
cg_values() {
  printf 'cpu.weight=%s cpu.max=%s memory.max=%s' "$(cat "$CG/$1/cpu.weight" 2>&1)" "$(cat "$CG/$1/cpu.max" 2>&1)" \
    "$(cat "$CG/$1/memory.max" 2>&1)"
}
# cg_is DIR WEIGHT CPUMAX MEMMAX: the cgroup holds exactly these values.
cg_is() { [ "$(cg_values "$1")" = "cpu.weight=$2 cpu.max=$3 memory.max=$4" ]; }

# put_manifest NAME: writes the pod manifest on stdin into the static pod folder, atomically.
put_manifest() {
  mkdir -p "$STATIC_POD_PATH"
  cat >"$STATIC_POD_PATH/.$1.yaml.tmp"
  mv "$STATIC_POD_PATH/.$1.yaml.tmp" "$STATIC_POD_PATH/$1.yaml"
}
remove_manifest() { rm -f "$STATIC_POD_PATH/$1.yaml"; }

# rkubelet_last_error: the agent's last journal line that is not INFO/DEBUG (its fatal
# errors go to stderr without a level).
rkubelet_last_error() {
  journalctl -b --no-pager -o cat -u rkubelet -n 200 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | grep -v -E ' (INFO|DEBUG|TRACE) ' |
    grep -v -E '^(Started|Starting|Stopped|Stopping|Failed|Scheduled|rkubelet.service:)' | tail -n1 | cut -c1-300
}
rkubelet_active() { [ "$(systemctl is-active rkubelet)" = active ]; }

# require_agent CHECK: what follows needs a serving agent. When it is down (say, it did
# not come back after a restart) report that as CHECK and end the check file, instead of
# letting every wait below run into its timeout.
require_agent() {
  wait_until 30 healthz && return 0
  not_ok "$1" "rkubelet is not serving $RO (systemd: $(systemctl show -p ActiveState,SubState,NRestarts rkubelet | paste -sd' ')): $(rkubelet_last_error)"
  exit 0
}
