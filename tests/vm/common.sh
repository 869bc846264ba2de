# Shared by tests/vm/build-image.sh and tests/vm/run.sh (sourced, not run).
# shellcheck shell=bash

VM_SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$VM_SCRIPT_DIR/../.." && pwd)
STATE=${RKUBELET_TEST_STATE:-/var/lib/rkubelet-test}
VMDIR=$STATE/vm

now_ms() { date +%s%3N; }
secs_since() { # start_ms -> "12.3"
  local d=$(($(now_ms) - $1))
  printf '%d.%d' $((d / 1000)) $((d % 1000 / 100))
}

# ensure_packages PKG... : apt-get installs whichever of them is not installed (one
# dpkg-query when all are present). Services the packages ship are not started.
ensure_packages() {
  local status p missing=()
  status=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null || true)
  for p in "$@"; do
    grep -qx "$p installed" <<<"$status" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing packages (run as root to install): ${missing[*]}"
  log "installing ${missing[*]}"
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created=1
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  } || rc=$?
  [ "$created" = 0 ] || rm -f "$policy"
  [ "$rc" = 0 ] || die "apt-get install ${missing[*]} failed"
}
