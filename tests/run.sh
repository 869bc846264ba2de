#!/usr/bin/env bash
# The whole test suite, every tier this machine can run:
#   1. unit tests (no root, no services),
#   2. host integration tests against a private containerd, the local registry and CNI (root),
#   3. the API tier against a real kube-apiserver v1.28.7 when the control-plane kit
#      ../shared/k8s (beside the checkout) is present, else against the in-repo API-server
#      double (the output says which),
#   4. the VM end-to-end tier (cgroup v2, systemd) when tests/vm/run.sh is present.
# It installs what it needs from Debian first. `.ci/run` calls this same script.
#
# The host is left as it was found: what this script starts (the local registry, the
# kit's control plane) it stops again, on failure too, and a last check compares mounts,
# network links, iptables chains and processes with a snapshot taken at the start; a
# leftover fails the run (and is then removed).
#
# Usage: run.sh [NEXTEST-ARGS...]   (e.g. -E 'test(node_registers)' to run one test)
# Environment: RKUBELET_SKIP_VM=1 skips the VM tier; RKUBELET_USE_KIT=0 ignores the kit;
#   RKUBELET_TEST_K8S_HOME (default $RKUBELET_TEST_STATE/k8s-kit) is the kit's K8S_HOME here,
#   never the shared default /var/lib/k8s-kit.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
STATE=${RKUBELET_TEST_STATE:-/var/lib/rkubelet-test}
T_START=$(date +%s)
IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1

say() { printf 'run.sh: %s\n' "$*"; }
since() { echo "$(($(date +%s) - $1)) s"; }
TIMINGS=()
timed() { # timed LABEL CMD...: runs CMD, records its duration
  local label=$1 t rc=0
  shift
  t=$(date +%s)
  "$@" || rc=$?
  TIMINGS+=("$label $(since "$t")")
  return "$rc"
}
# logged LOG CMD...: runs CMD with its output into LOG, shown as it comes. A file and not
# a pipe: a process the command leaves behind cannot hold the output open and hang us.
logged() {
  local log=$1 pid rc=0 tpid
  shift
  : >"$log"
  "$@" >"$log" 2>&1 &
  pid=$!
  tail -n +1 -f --pid="$pid" "$log" &
  tpid=$!
  wait "$pid" || rc=$?
  wait "$tpid" 2>/dev/null || true
  return "$rc"
}

# Every process this run starts carries this in its environment: at the end, anything
# still running with it was left behind by the suite.
RKUBELET_TEST_RUN_ID=$(tr -d '-' </proc/sys/kernel/random/uuid)
export RKUBELET_TEST_RUN_ID

# --- host snapshot ----------------------------------------------------------------------------
SNAP=$(mktemp -d /tmp/rkubelet-run.XXXXXX)
mount_points() { awk '{ print $5 }' /proc/self/mountinfo | sort -u; }
# name kind master, one line per link of the host's network namespace
net_links() {
  ip -o -d link show 2>/dev/null | awk -F': ' '{
    name = $2; sub(/@.*/, "", name)
    kind = "-"; if (match($0, / (bridge|veth|vxlan|dummy|macvlan|ipvlan) /)) kind = substr($0, RSTART + 1, RLENGTH - 2)
    master = "-"; if (match($0, / master [^ ]+/)) master = substr($0, RSTART + 8, RLENGTH - 8)
    print name, kind, master
  }' | sort -u
}
iptables_chains() {
  { iptables-save 2>/dev/null || true; ip6tables-save 2>/dev/null || true; } |
    awk '/^\*/ { t = $1 } /^:/ { print t, $1 }' | sort -u
}
snapshot() { # DIR
  mkdir -p "$1"
  mount_points >"$1/mounts"
  net_links >"$1/links"
  if [ "$IS_ROOT" = 1 ]; then iptables_chains >"$1/chains"; else : >"$1/chains"; fi
  pgrep -a 'containerd|registry|etcd|kube|rkubelet|qemu-system' 2>/dev/null | sort -n >"$1/procs" || true
}
snapshot "$SNAP/before"

# Processes (other than this script and what it runs right now) with our run id.
our_leftovers() {
  local self=$$ p pid ppid
  # Our own ancestry chain is excluded: this shell and the subshells doing the scan.
  declare -A mine=([$self]=1)
  while read -r pid ppid; do
    [ -n "${mine[$ppid]:-}" ] && mine[$pid]=1
  done < <(ps -e -o pid=,ppid= --sort=start_time)
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ -n "${mine[$pid]:-}" ] && continue
    if grep -qsxz "RKUBELET_TEST_RUN_ID=$RKUBELET_TEST_RUN_ID" "$p/environ" 2>/dev/null; then
      echo "$pid $(tr '\0' ' ' 2>/dev/null <"$p/cmdline" | cut -c1-160)"
    fi
  done
  return 0
}

# Network namespaces mounted under /run/netns since the start that no process is in.
unused_netns() {
  local f ino used
  used=$(for p in /proc/[0-9]*; do readlink "$p/ns/net" 2>/dev/null; done | sort -u)
  comm -13 "$SNAP/before/mounts" "$SNAP/after/mounts" | grep '^/run/netns/' | while read -r f; do
    ino=$(stat -L -c %i "$f" 2>/dev/null) || continue
    grep -qx "net:\[$ino\]" <<<"$used" || echo "$f"
  done
  return 0
}

# Whether a live test holds LOCK (the harness's name and subnet locks under
# /run/rkubelet-test): what it guards is then in use, by this run or by someone else's.
lock_held() {
  [ -e "$1" ] || return 1
  local rc=0
  flock -n -E 75 "$1" true 2>/dev/null || rc=$?
  [ "$rc" = 75 ]
}
# live_owner LEFTOVER-LINE: true when a test that is still running owns it (the machine
# may be shared: another user's test is not a leftover of this run).
live_owner() {
  local line=$1 x name pid n chain table net
  case "$line" in
  "mount /run/rkt-"*)
    name=${line#mount /run/rkt-}
    lock_held "/run/rkubelet-test/names/${name%%/*}.lock"
    ;;
  "mount $STATE/instances/"*)
    x=${line#"mount $STATE/instances/"}
    x=${x%%/*}
    pid=${x%-*}
    pid=${pid##*-}
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
    ;;
  "link "*)
    x=$(grep -o 'rkt[0-9a-f][0-9a-f]' <<<"$line" | head -n1)
    [ -n "$x" ] || return 1
    n=$((16#${x:3:2}))
    lock_held "/run/rkubelet-test/subnets/$n.lock"
    ;;
  "iptables "*)
    chain=${line##*:}
    table=${line#iptables \*}
    table=${table%% *}
    net=$({ iptables-save -t "$table" 2>/dev/null || true; } | grep -F -- "$chain" | grep -o 'rkt-[A-Za-z0-9_.-]*-[0-9][0-9]*' | head -n1)
    [ -n "$net" ] || return 1
    name=${net#rkt-}
    lock_held "/run/rkubelet-test/names/${name%-*}.lock"
    ;;
  *) return 1 ;;
  esac
}

# --- cleanup (also on failure) ------------------------------------------------------------------
REGISTRY_PID=""
KIT_STARTED=0
KIT_DIR=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_started
  rm -rf "$SNAP"
  exit "$rc"
}
stop_started() {
  if [ -n "$REGISTRY_PID" ]; then
    if kill -0 "$REGISTRY_PID" 2>/dev/null && grep -q docker-registry "/proc/$REGISTRY_PID/cmdline" 2>/dev/null; then
      kill "$REGISTRY_PID" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$REGISTRY_PID" 2>/dev/null || break; sleep 0.1; done
      say "stopped the local registry this run started (pid $REGISTRY_PID)"
    fi
    rm -f "$STATE/registry/registry.pid"
    REGISTRY_PID=""
  fi
  if [ "$KIT_STARTED" = 1 ]; then
    K8S_HOME=$K8S_HOME "$KIT_DIR/down.sh" >/dev/null 2>&1 || say "warning: $KIT_DIR/down.sh failed (K8S_HOME=$K8S_HOME)"
    rm -rf "${K8S_HOME:?}/etcd-data"
    say "stopped the control plane this run started (K8S_HOME=$K8S_HOME)"
    KIT_STARTED=0
  fi
}
trap cleanup EXIT
trap 'say interrupted; exit 130' INT TERM

# --- packages, images, registry ---------------------------------------------------------------
registry_answers() { curl -sf -m 2 -o /dev/null http://127.0.0.1:5000/v2/ 2>/dev/null; }
if [ "$IS_ROOT" = 1 ]; then
  timed "packages" bash tests/scripts/install-deps.sh
  REGISTRY_BEFORE=0
  registry_answers && REGISTRY_BEFORE=1
  timed "test images" bash tests/scripts/build-images.sh
  if [ "$REGISTRY_BEFORE" = 0 ] && [ -f "$STATE/registry/registry.pid" ]; then
    REGISTRY_PID=$(cat "$STATE/registry/registry.pid")
  elif [ "$REGISTRY_BEFORE" = 1 ]; then
    say "local registry on 127.0.0.1:5000 was already running: left alone"
  fi
else
  say "not root: the host and VM tiers will report SKIPPED"
fi

# --- the API tier: the real control plane from the kit, when present --------------------------
port_busy() { [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]; }
ports_free() { local p; for p in "$@"; do port_busy "$p" && return 1; done; return 0; }
KIT_FAILED=0
API_TIER=""
KIT_DIR=$(cd "$REPO/.." && pwd)/shared/k8s
start_kit() {
  if [ "${RKUBELET_USE_KIT:-1}" = 0 ]; then
    API_TIER="API tier: RKUBELET_USE_KIT=0; API tests run against the in-repo API-server double"
    return
  fi
  if [ ! -x "$KIT_DIR/up.sh" ]; then
    API_TIER="API tier: ../shared/k8s absent; API tests run against the in-repo API-server double"
    return
  fi
  if [ "$IS_ROOT" = 0 ]; then
    API_TIER="API tier: ../shared/k8s present but not root; API tests run against the in-repo API-server double"
    return
  fi
  # Our own K8S_HOME and ports: a kit already running here (the shared one at
  # /var/lib/k8s-kit, someone's test) is neither reused nor disturbed.
  export K8S_HOME=${RKUBELET_TEST_K8S_HOME:-$STATE/k8s-kit}
  mkdir -p "$K8S_HOME"
  exec 7>"$K8S_HOME.lock"
  if ! flock -n 7; then
    exec 7>&-
    API_TIER="API tier: another test run uses $K8S_HOME; API tests run against the in-repo API-server double"
    return
  fi
  local set ports=""
  # (Not the +10000 set: other private kits on a shared machine tend to take it, and a
  # kit stopped for a moment by an outage test would find its ports taken.)
  for set in "6443 2379 10257 10259" "26443 22379 30257 30259" "36443 32379 40257 40259"; do
    # shellcheck disable=SC2086 # the set is four words; etcd's peer port is its client port + 1
    set -- $set
    if ports_free "$1" "$2" "$(($2 + 1))" "$3" "$4"; then
      ports=$set
      break
    fi
  done
  if [ -z "$ports" ]; then
    API_TIER="API tier: no free ports for a private control plane (apiserver 6443, 26443, 36443 and their sets busy); API tests run against the in-repo API-server double"
    return
  fi
  # shellcheck disable=SC2086
  set -- $ports
  export K8S_APISERVER_PORT=$1 K8S_ETCD_PORT=$2 K8S_KCM_PORT=$3 K8S_SCHED_PORT=$4
  local log=$K8S_HOME/up.log kc bkc t
  t=$(date +%s)
  say "starting the control plane from $KIT_DIR (K8S_HOME=$K8S_HOME, apiserver port $1, etcd $2)"
  # --wipe: this K8S_HOME is ours alone (the lock), so a leftover of an interrupted run
  # is stopped and every run starts from an empty etcd.
  KIT_STARTED=1
  if ! kc=$("$KIT_DIR/up.sh" --wipe 7>&- 2>>"$log" | tee -a "$log" | tail -n1) || [ ! -s "$kc" ]; then
    tail -n 20 "$log" | sed 's/^/  up.sh: /'
    API_TIER="API tier: ../shared/k8s present but up.sh failed (log $log); API tests run against the in-repo API-server double"
    KIT_FAILED=1
    stop_started
    return
  fi
  if ! bkc=$("$KIT_DIR/bootstrap-kubeconfig.sh" 7>&- 2>>"$log" | tail -n1) || [ ! -s "$bkc" ]; then
    tail -n 20 "$log" | sed 's/^/  bootstrap-kubeconfig.sh: /'
    API_TIER="API tier: ../shared/k8s present but bootstrap-kubeconfig.sh failed (log $log); API tests run against the in-repo API-server double"
    KIT_FAILED=1
    stop_started
    return
  fi
  export RKUBELET_E2E_KUBECONFIG=$kc RKUBELET_E2E_BOOTSTRAP_KUBECONFIG=$bkc RKUBELET_K8S_KIT=$KIT_DIR
  TIMINGS+=("control plane up $(since "$t")")
  local version
  version=$("$K8S_HOME/bin/kubectl" --kubeconfig "$kc" version -o json 2>/dev/null | jq -r '.serverVersion.gitVersion // empty' || true)
  API_TIER="API tier: real kube-apiserver ${version:-v1.28.7} from ../shared/k8s"
}
start_kit
say "$API_TIER"

# --- build and test ------------------------------------------------------------------------------
timed "cargo build" cargo build --workspace --all-targets
export RKUBELET_BIN="$PWD/target/debug/rkubelet"
# The host tier runs pods on our CNI plugins, as built above.
export RKUBELET_CNI_BIN_DIR="$PWD/target/debug"

export RKUBELET_SKIP_LOG="$PWD/target/skipped-tests.txt"
rm -f "$RKUBELET_SKIP_LOG"

status=0
TEST_LOG=$SNAP/tests.log
rc=0
if cargo nextest --version >/dev/null 2>&1; then
  timed "cargo nextest" logged "$TEST_LOG" cargo nextest run --workspace --no-fail-fast "$@" || rc=$?
  SUMMARY=$(sed 's/\x1b\[[0-9;]*m//g' "$TEST_LOG" | grep -E '^ *Summary \[' | tail -n1 | sed 's/^ *//' || true)
else
  timed "cargo test" logged "$TEST_LOG" cargo test --workspace --no-fail-fast || rc=$?
  SUMMARY="cargo test: $(grep -cE '^test result: ok' "$TEST_LOG" || true) suites ok, $(grep -cE '^test result: FAILED' "$TEST_LOG" || true) failed"
fi
[ "$rc" = 0 ] || status=$rc
[ -n "$SUMMARY" ] || SUMMARY="tests: no summary line (exit $rc)"

# Tests this machine or run cannot run (no root, no cgroup v2, no kit, a real API server instead of the double) are
# #[ignore]d by tests/build.rs's cfgs and counted as skipped above; libtest prints each one's reason when asked for
# it by name.
if command -v jq >/dev/null 2>&1 && cargo nextest --version >/dev/null 2>&1; then
  IGNORED=$(cargo nextest list --workspace --run-ignored only --message-format json "$@" 2>/dev/null |
    jq -r '."rust-suites"[] | [."binary-path", (.testcases | to_entries[] | select(.value."filter-match".status == "matches") | .key)] | select(length > 1) | @tsv' || true)
  if [ -n "$IGNORED" ]; then
    echo "== tests not run here (counted as skipped above), and why:"
    while IFS=$'\t' read -r bin names; do
      # shellcheck disable=SC2086 # the names are words
      "$bin" --exact $names 2>/dev/null | sed -n "s|^test \(.*\) \.\.\. ignored, |  $(basename "${bin%-*}")::\1: |p"
    done <<<"$IGNORED"
  fi
fi
if [ -s "$RKUBELET_SKIP_LOG" ]; then
  echo "== checks skipped inside tests that ran (the tests count as passed above), and why:"
  sort -u "$RKUBELET_SKIP_LOG"
fi

# The control plane is not needed by the VM tier (its guest runs the double).
stop_started

VM_SUMMARY="vm-e2e: not run"
if [ -x tests/vm/run.sh ] && [ "$IS_ROOT" = 1 ] && [ "${RKUBELET_SKIP_VM:-0}" != 1 ]; then
  VM_LOG=$SNAP/vm.log
  rc=0
  timed "VM tier" logged "$VM_LOG" bash tests/vm/run.sh || rc=$?
  [ "$rc" = 0 ] || status=$rc
  VM_SUMMARY=$(grep -E '^vm-e2e: [0-9]+ passed, [0-9]+ failed$' "$VM_LOG" | tail -n1 || true)
  [ -n "$VM_SUMMARY" ] || VM_SUMMARY="vm-e2e: no summary line (exit $rc)"
elif [ "${RKUBELET_SKIP_VM:-0}" = 1 ]; then
  VM_SUMMARY="vm-e2e: skipped (RKUBELET_SKIP_VM=1)"
fi

# --- host left as found ------------------------------------------------------------------------
# Compares with the snapshot from the start. Only what is attributable to this run counts
# (other users of the machine may start and stop things meanwhile): processes carrying
# our run id, /run/netns turned into a mount point, network namespaces nobody is in, the
# harness's bridges (rkt*) and their veths, iptables chains of the tests' CNI networks,
# mounts under the suite's own folders; not those whose harness lock a live test holds.
# A leftover must still be there after a few seconds.
leftovers() {
  snapshot "$SNAP/after"
  {
    comm -13 "$SNAP/before/mounts" "$SNAP/after/mounts" |
      grep -E "^/run/netns\$|^/run/rkt-|^/run/rkubelet-test|^$STATE/|^$REPO/" | sed 's/^/mount /' || true
    unused_netns | sed 's/^/netns /'
    comm -13 "$SNAP/before/links" "$SNAP/after/links" |
      awk '$1 ~ /^(rkt|cnt)/ || $3 ~ /^(rkt|cnt)/ { print "link " $1 " (" $2 ", master " $3 ")" }'
    comm -13 "$SNAP/before/chains" "$SNAP/after/chains" | grep -iE 'CNI|rkt' | sed 's/^/iptables /' || true
    our_leftovers | sed 's/^/process /'
  } | sort -u | while read -r line; do
    live_owner "$line" || echo "$line"
  done
  return 0
}
# portmap's shared chains (CNI-HOSTPORT-DNAT, -MASQ, -SETMARK) outlive its last pod, as the reference plugin leaves
# them on every node; when this run made them and no pod's rule is left in them, they go with their jumps.
remove_portmap_base_chains() {
  grep -q ':CNI-HOSTPORT-DNAT$' "$SNAP/before/chains" && return 0
  iptables -w -t nat -S CNI-HOSTPORT-DNAT >/dev/null 2>&1 || return 0
  iptables -w -t nat -S CNI-HOSTPORT-DNAT | grep -q '^-A' && return 0
  iptables -w -t nat -S | grep -E '^-A (PREROUTING|OUTPUT|POSTROUTING) .*-j CNI-HOSTPORT-(DNAT|MASQ)$' |
    sed 's/^-A /-D /' | while read -r rule; do eval "iptables -w -t nat $rule" || true; done
  local c
  for c in CNI-HOSTPORT-DNAT CNI-HOSTPORT-MASQ CNI-HOSTPORT-SETMARK; do
    iptables -w -t nat -F "$c" 2>/dev/null || true
    iptables -w -t nat -X "$c" 2>/dev/null || true
  done
  say "removed portmap's shared chains this run made (no pod's rule left in them)"
}
HOST_CHECK="host left as found: skipped (not root)"
if [ "$IS_ROOT" = 1 ]; then
  remove_portmap_base_chains
  left=$(leftovers || true)
  for _ in 1 2 3; do
    [ -n "$left" ] || break
    sleep 3
    left=$(comm -12 <(echo "$left") <(leftovers) || true)
  done
  echo "== host left as found? (mounts, network namespaces, links, iptables chains, processes)"
  echo "   mounts $(wc -l <"$SNAP/before/mounts") -> $(wc -l <"$SNAP/after/mounts"), links $(wc -l <"$SNAP/before/links") -> $(wc -l <"$SNAP/after/links"), iptables chains $(wc -l <"$SNAP/before/chains") -> $(wc -l <"$SNAP/after/chains"), /run/netns a mount point: $(grep -qx /run/netns "$SNAP/after/mounts" && echo yes || echo no)"
  if ! diff -q "$SNAP/before/procs" "$SNAP/after/procs" >/dev/null; then
    echo "   service processes changed meanwhile (not ours unless listed below):"
    { diff "$SNAP/before/procs" "$SNAP/after/procs" || true; } | grep '^[<>]' | cut -c1-160 | sed 's/^/     /' || true
  fi
  if [ -z "$left" ]; then
    HOST_CHECK="host left as found: yes"
  else
    echo "$left" | sed 's/^/   LEFT BEHIND: /'
    HOST_CHECK="host left as found: NO ($(echo "$left" | wc -l) leftover(s), listed above; removing them)"
    status=1
    # Our processes (they carry this run's id) are stopped, so they do not hold ports and
    # files the next run needs; the rest is only reported: it cannot be attributed to this
    # run with certainty on a machine others use too.
    echo "$left" | awk '$1 == "process" { print $2 }' | xargs -r kill 2>/dev/null || true
  fi
fi

[ "$KIT_FAILED" = 0 ] || status=1
echo "== summary"
echo "$API_TIER"
echo "$SUMMARY"
echo "$VM_SUMMARY"
echo "$HOST_CHECK"
echo "timings: $(printf '%s; ' "${TIMINGS[@]}")total $(since "$T_START")"
exit "$status"
