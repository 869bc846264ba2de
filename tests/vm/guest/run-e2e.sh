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
# Checks named NN-name.reboot.sh span a reboot: after the other checks each runs with
# `before`, the counts so far go to $E2E_STATE/reboot, the guest powers off through logind
# (`systemctl poweroff`, so delay inhibitors hold it), and on the next boot (the VM runner
# boots the same disk again) the runner finds that file, runs each with `after` and ends the
# run. They run only under rkubelet-e2e.service or when named.
# Exit status: 0 when all passed.
set -u
DIR=$(cd "$(dirname "$0")" && pwd)
CHECKS=$DIR/e2e
[ -d "$CHECKS" ] || CHECKS=$DIR/../e2e
export E2E_LIB=$DIR/lib.sh
OUT=${E2E_OUT:-}
CHECK_TIMEOUT=${E2E_CHECK_TIMEOUT:-600}
E2E_STATE=/var/lib/rkubelet-e2e
REBOOT_FILE=$E2E_STATE/reboot
UNIT=rkubelet-e2e.service
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
# run_check FILE [PHASE]: runs one check file (with PHASE as its argument), counting its lines.
run_check() {
  local t=$1 name
  name=$(basename "$t" .sh)
  start=$(now_ms)
  results=0
  failed_here=0
  rc=0
  emit "# --- $name${2:+ ($2)}"
  while IFS= read -r line; do
    case "$line" in
    "__rc "*) rc=${line#__rc } ;;
    "ok "*) pass=$((pass + 1)); results=$((results + 1)); emit "$line" ;;
    "not ok "*) fail=$((fail + 1)); results=$((results + 1)); failed_here=1; emit "$line" ;;
    "#"*) emit "$line" ;;
    *) emit "# $line" ;;
    esac
  done < <(cd /tmp && timeout -k 10 "$CHECK_TIMEOUT" bash "$t" ${2:+"$2"} 2>&1 </dev/null; echo "__rc $?")
  if [ "$rc" != 0 ] && [ "$failed_here" = 0 ]; then
    fail=$((fail + 1))
    failed_here=1
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      emit "not ok $name - timed out after ${CHECK_TIMEOUT} s"
    else
      emit "not ok $name - exited with status $rc"
    fi
  elif [ "$results" = 0 ]; then
    fail=$((fail + 1))
    failed_here=1
    emit "not ok $name - printed no results"
  fi
  d=$(($(now_ms) - start))
  emit "# $name${2:+ ($2)} took $((d / 1000)).$((d % 1000 / 100)) s (exit $rc)"
}
wanted() { # NAME: no names given, or NAME among them
  [ "$NAMES" = 0 ] && return 0
  local a
  for a in "${ARGS[@]}"; do [ "$a" = "$1" ] && return 0; done
  return 1
}
ARGS=("$@")
NAMES=$#
under_unit() { [ "$(systemctl show -p MainPID --value "$UNIT" 2>/dev/null)" = "$$" ]; }

if [ -f "$REBOOT_FILE" ]; then
  # The second boot of a run: the counts so far and the checks to finish.
  read -r pass fail pending <"$REBOOT_FILE"
  rm -f "$REBOOT_FILE"
  sync
  emit "# vm-e2e: second boot; so far $pass passed, $fail failed; finishing: $pending"
  for name in $pending; do
    run_check "$CHECKS/$name.sh" after
  done
else
  reboot_checks=()
  for t in "$CHECKS"/*.sh; do
    [ -f "$t" ] || continue
    name=$(basename "$t" .sh)
    wanted "$name" || continue
    case "$name" in
    *.reboot)
      if [ "$NAMES" -gt 0 ] || under_unit; then
        reboot_checks+=("$t")
      else
        emit "# skip $name: it powers the node off; run it by name"
      fi
      continue
      ;;
    esac
    run_check "$t"
  done
  pending=""
  for t in "${reboot_checks[@]}"; do
    run_check "$t" before
    [ "$failed_here" = 1 ] || pending+=" $(basename "$t" .sh)"
  done
  if [ -n "$pending" ]; then
    mkdir -p "$E2E_STATE"
    echo "$pass $fail$pending" >"$REBOOT_FILE"
    # Under the unit, its SuccessAction would power off at once, without waiting for inhibitors.
    if under_unit; then
      mkdir -p "/run/systemd/system/$UNIT.d"
      printf '[Unit]\nSuccessAction=none\nFailureAction=none\n' >"/run/systemd/system/$UNIT.d/50-reboot.conf"
      systemctl daemon-reload
    fi
    sync
    emit "# vm-e2e: powering off through logind (systemctl poweroff) at guest uptime $(cut -d' ' -f1 /proc/uptime) s; the run goes on at the next boot with:$pending"
    systemctl poweroff
    exit 0
  fi
fi

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
