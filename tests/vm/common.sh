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

# shellcheck source=../scripts/apt.sh
. "$REPO/tests/scripts/apt.sh"

# ensure_packages PKG... : apt-get installs whichever of them is not installed (one
# dpkg-query when all are present), picking versions that fit what is installed
# (qemu-system-x86 next to a backports QEMU, the release's mmdebstrap; see apt.sh).
# Services the packages ship are not started.
ensure_packages() {
  apt_ensure "$@" || die "apt-get install $* failed"
}
