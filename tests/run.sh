#!/usr/bin/env bash
# The whole test suite, every tier this machine can run:
#   1. unit tests (no root, no services),
#   2. host integration tests against a private containerd, the local registry and CNI (root),
#   3. the VM end-to-end tier (cgroup v2, systemd) when tests/vm/run.sh is present.
# It installs what it needs from Debian first. `.ci/run` calls this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
  bash tests/scripts/install-deps.sh
  bash tests/scripts/build-images.sh
else
  echo "run.sh: not root: the host and VM tiers will report SKIPPED"
fi

cargo build --workspace --all-targets
export RKUBELET_BIN="$PWD/target/debug/rkubelet"
# The host tier runs pods on our CNI plugins, as built above.
export RKUBELET_CNI_BIN_DIR="$PWD/target/debug"

export RKUBELET_SKIP_LOG="$PWD/target/skipped-tests.txt"
rm -f "$RKUBELET_SKIP_LOG"

status=0
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast || status=$?
else
  cargo test --workspace --no-fail-fast || status=$?
fi

if [ -s "$RKUBELET_SKIP_LOG" ]; then
  echo "== tests that skipped checks (counted as passed above), and why:"
  sort -u "$RKUBELET_SKIP_LOG"
fi

if [ -x tests/vm/run.sh ] && [ "$(id -u)" = 0 ] && [ "${RKUBELET_SKIP_VM:-0}" != 1 ]; then
  bash tests/vm/run.sh || status=$?
fi
exit "$status"
