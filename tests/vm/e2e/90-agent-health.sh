#!/bin/bash
# After the whole suite: systemd never had to restart rkubelet on its own (a crash, or
# the watchdog: WatchdogSec= in the unit, fed while the PLEG relists), and no pod
# slice is left behind.
set -u
# shellcheck source=../guest/lib.sh
. "${E2E_LIB:-/opt/rkubelet-e2e/lib.sh}"

restarts=$(systemctl show -p NRestarts --value rkubelet)
watchdog=$(journalctl -b --no-pager -o cat -u rkubelet 2>/dev/null | grep -c -i 'watchdog timeout')
if rkubelet_active && [ "$restarts" = 0 ] && [ "$watchdog" = 0 ]; then
  ok agent-never-restarted
  note "rkubelet active, NRestarts 0, WatchdogUSec $(systemctl show -p WatchdogUSec --value rkubelet), main pid $(systemctl show -p MainPID --value rkubelet) using $(($(systemctl show -p MemoryCurrent --value rkubelet 2>/dev/null || echo 0) / 1048576)) MiB"
else
  not_ok agent-never-restarted "rkubelet $(systemctl is-active rkubelet), NRestarts $restarts, $watchdog watchdog timeout(s): $(rkubelet_last_error)"
fi

left=$(find $CG/kubepods.slice -name 'kubepods*-pod*.slice' -type d 2>/dev/null)
if [ -z "$left" ]; then
  ok no-leftover-pod-slices
else
  not_ok no-leftover-pod-slices "$(echo "$left" | sed "s|^$CG/||" | tr '\n' ' ')"
fi
