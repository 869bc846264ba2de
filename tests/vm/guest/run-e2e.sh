#!/bin/bash
# The VM e2e runner. Installed by provision.sh as /opt/rkubelet-e2e/run.sh (with lib.sh and
# e2e/*.sh next to it) and run by rkubelet-e2e.service in the test VM; on any provisioned
# node (the Vagrant box) run it by hand: `sudo /opt/rkubelet-e2e/run.sh [CHECK...]`, e.g.
# `... run.sh 10-pod-cgroups`. From a checkout it finds ../e2e and lib.sh itself.
# Runs the checks in order, each under a timeout, and writes every line to stdout and,
# when E2E_OUT is set (the unit sets /dev/ttyS1, QEMU's second serial port, a file on
# the host), there too:
#   ok <name> | not ok <name> - <reason>   counted
#   # ...                                 comments (timings, diagnostics)
#   vm-e2e: N passed, M failed            last line
# On any failure it appends diagnostics (units, journals, pods, containers) as comments.
# Exit status: 0 when all passed.
set -u
DIR=$(cd "$(dirname "$0")" && pwd)
CHECKS=$DIR/e2e
[ -d "$CHECKS" ] || CHECKS=$DIR/../e2e
export E2E_LIB=$DIR/lib.sh
OUT=${E2E_OUT:-}
CHECK_TIMEOUT=${E2E_CHECK_TIMEOUT:-600}
if [ -n "$OUT" ]; then
  [ -c "$OUT" ] && [ -w "$OUT" ] || OUT=/dev/console
  stty -F "$OUT" raw -echo 2>/dev/null || true
fi

emit() {
  [ -z "$OUT" ] || printf '%s\n' "$1" >>"$OUT"
  printf '%s\n' "$1"
}
comment_lines() { while IFS= read -r l; do emit "# $l"; done; }
now_ms() { date +%s%3N; }

emit "# vm-e2e: start at guest uptime $(cut -d' ' -f1 /proc/uptime) s, kernel $(uname -r), $(nproc) cpu(s), systemd $(systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p')"
emit "# $(tr '\n' ' ' </etc/rkubelet/provisioned 2>/dev/null)"
# Boot timeline in seconds since the kernel started (monotonic clock).
at() { # unit property -> seconds, "-" when unset
  local us
  us=$(systemctl show -p "$2" --value ${1:+"$1"} 2>/dev/null)
  if [ -n "$us" ] && [ "$us" != 0 ]; then awk -v u="$us" 'BEGIN { printf "%.1f", u / 1e6 }'; else echo -; fi
}
emit "# boot timeline (s): systemd $(at '' UserspaceTimestampMonotonic), containerd $(at containerd.service InactiveExitTimestampMonotonic)-$(at containerd.service ActiveEnterTimestampMonotonic), images imported $(at rkubelet-images.service ActiveEnterTimestampMonotonic), rkubelet ready $(at rkubelet.service ActiveEnterTimestampMonotonic), suite $(cut -d' ' -f1 /proc/uptime)"
pass=0
fail=0
for t in "$CHECKS"/*.sh; do
  [ -f "$t" ] || continue
  name=$(basename "$t" .sh)
  if [ $# -gt 0 ]; then
    want=0
    for a in "$@"; do [ "$a" = "$name" ] && want=1; done
    [ "$want" = 1 ] || continue
  fi
  start=$(now_ms)
  results=0
  failed_here=0
  rc=0
  emit "# --- $name"
  while IFS= read -r line; do
    case "$line" in
    "__rc "*) rc=${line#__rc } ;;
    "ok "*) pass=$((pass + 1)); results=$((results + 1)); emit "$line" ;;
    "not ok "*) fail=$((fail + 1)); results=$((results + 1)); failed_here=1; emit "$line" ;;
    "#"*) emit "$line" ;;
    *) emit "# $line" ;;
    esac
  done < <(cd /tmp && timeout -k 10 "$CHECK_TIMEOUT" bash "$t" 2>&1 </dev/null; echo "__rc $?")
  if [ "$rc" != 0 ] && [ "$failed_here" = 0 ]; then
    fail=$((fail + 1))
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      emit "not ok $name - timed out after ${CHECK_TIMEOUT} s"
    else
      emit "not ok $name - exited with status $rc"
    fi
  elif [ "$results" = 0 ]; then
    fail=$((fail + 1))
    emit "not ok $name - printed no results"
  fi
  d=$(($(now_ms) - start))
  emit "# $name took $((d / 1000)).$((d % 1000 / 100)) s (exit $rc)"
done

if [ "$fail" -gt 0 ] || [ "$pass" = 0 ]; then
  emit "# === diagnostics"
  {
    systemctl --no-pager --failed 2>&1
    systemctl --no-pager --lines=0 status containerd rkubelet-images rkubelet 2>&1
    echo "--- journal: rkubelet"
    journalctl -b --no-pager -o short-monotonic -u rkubelet -n 150 2>&1 | sed 's/\x1b\[[0-9;]*m//g'
    echo "--- journal: rkubelet-images"
    journalctl -b --no-pager -o short-monotonic -u rkubelet-images -n 30 2>&1
    echo "--- journal: containerd (warnings and errors)"
    journalctl -b --no-pager -o short-monotonic -u containerd -p warning -n 60 2>&1
    echo "--- containerd: images, containers, tasks"
    ctr -n k8s.io images ls -q 2>&1
    ctr -n k8s.io containers ls 2>&1
    ctr -n k8s.io tasks ls 2>&1
    echo "--- /pods"
    # shellcheck source=lib.sh
    . "$E2E_LIB"
    pods_json | jq -c '.items[]? | {name: .metadata.name, status: .status}' 2>&1 | cut -c1-600
  } | comment_lines
else
  # Even when all passed: the agent's warnings and errors, for the record.
  journalctl -b --no-pager -o cat -u rkubelet 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | grep -E ' (WARN|ERROR) ' |
    tail -n 30 | sed 's/^/rkubelet: /' | comment_lines
fi
emit "# vm-e2e: done at guest uptime $(cut -d' ' -f1 /proc/uptime) s"
emit "vm-e2e: $pass passed, $fail failed"
sync
[ "$fail" = 0 ] && [ "$pass" -gt 0 ]
