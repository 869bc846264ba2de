#!/usr/bin/env bash
# The VM test tier: cgroup v2 + systemd in a Debian bookworm QEMU guest.
#
#   1. installs what it needs (qemu-system-x86, mmdebstrap, e2fsprogs, ...; apt-get),
#   2. builds rkubelet and the CNI plugins (cargo build --release -p rkubelet -p cni-plugins),
#      unless RKUBELET_BIN=FILE names a binary (tests/run.sh passes its debug build; the
#      CNI plugins then come from RKUBELET_CNI_DIR, RKUBELET_CNI_BIN_DIR or the binary's
#      folder),
#   3. builds the guest image with tests/vm/build-image.sh (the Debian base is cached in
#      $STATE/vm/base; the per-run part takes seconds),
#   4. boots it: KVM when /dev/kvm really works (probed once per host boot, a few
#      seconds at most), else TCG (-accel tcg,thread=multi -cpu max), -m 2048 -smp 2,
#      no network; the guest runs tests/vm/e2e/*.sh (rkubelet-e2e.service) and powers off;
#      when it powered off for its `.reboot.sh` checks (it says so on the results port), the
#      same disk boots a second time and the guest finishes the run,
#   5. streams the results (QEMU's second serial port -> OUT/results.log, both boots),
#   6. meanwhile checks the root Vagrantfile on the host: it provisions with
#      tests/vm/provision.sh, the script this image was provisioned with, and
#      `vagrant validate --ignore-provider` accepts it (vagrant from Debian, installed when
#      missing unless RKUBELET_VM_VAGRANT=0; skipped with a message if not installable),
#   7. exits 0 only if the guest's last line is `vm-e2e: N passed, 0 failed` with N > 0
#      and the host checks passed; the last line is `vm-e2e: N passed, M failed` over both.
#      On failure or timeout it prints the tail of the guest console (OUT/console.log).
#
# Usage: run.sh [--no-build] [--accel kvm|tcg] [--timeout SECS] [--out DIR] [-- PROVISION-OPTIONS]
#   --no-build   boot the existing OUT/disk.img (no cargo, no image build)
#   --accel      force an accelerator (default: probe; env RKUBELET_VM_ACCEL)
#   --timeout    limit for packages + image + boot + suite, cargo not counted (default 900;
#                env RKUBELET_VM_TIMEOUT)
#   --out        run folder (default $STATE/vm/run): disk.img, console.log, results.log
# Environment: RKUBELET_TEST_STATE (default /var/lib/rkubelet-test), RKUBELET_BIN,
#   RKUBELET_CNI_DIR, RKUBELET_CNI_BIN_DIR, RKUBELET_VM_MEM (2048), RKUBELET_VM_CPUS (2),
#   RKUBELET_VM_VAGRANT (0: do not install vagrant).
set -euo pipefail

# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SCRIPT_DIR=$VM_SCRIPT_DIR

log() { printf 'vm: %s\n' "$*" >&2; }
die() {
  printf 'vm: error: %s\n' "$*" >&2
  exit 2
}

T_START=$(now_ms)
BUILD=1
ACCEL=${RKUBELET_VM_ACCEL:-auto}
TIMEOUT=${RKUBELET_VM_TIMEOUT:-900}
OUT=$VMDIR/run
PROVISION_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
  --no-build) BUILD=0; shift ;;
  --accel) ACCEL=$2; shift 2 ;;
  --timeout) TIMEOUT=$2; shift 2 ;;
  --out) OUT=$2; shift 2 ;;
  --) shift; PROVISION_ARGS=("$@"); break ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown argument: $1" ;;
  esac
done
[ "$(id -u)" = 0 ] || die "run as root"
# The limit covers packages, image, boot and suite; a cargo build (when there is one) is
# not the VM tier's time.
DEADLINE=$(($(date +%s) + TIMEOUT))

ensure_packages qemu-system-x86 mmdebstrap e2fsprogs coreutils util-linux jq binutils

# --- host checks: the Vagrantfile (in the background, while the image builds and boots) ----------
vagrant_checks() {
  local vf=$REPO/Vagrantfile
  if [ ! -f "$vf" ]; then
    echo "not ok vagrantfile-provisions-with-vm-script - no Vagrantfile at the repository root"
    return
  fi
  # The provisioner must run tests/vm/provision.sh (not a copy, not an inline script).
  if grep -v '^[[:space:]]*#' "$vf" | grep -q 'tests/vm/provision\.sh'; then
    echo "ok vagrantfile-provisions-with-vm-script"
  else
    echo "not ok vagrantfile-provisions-with-vm-script - $vf does not run tests/vm/provision.sh"
  fi
  if ! command -v vagrant >/dev/null 2>&1; then
    if [ "${RKUBELET_VM_VAGRANT:-1}" = 0 ]; then
      echo "# skip vagrantfile-validates: vagrant not installed (RKUBELET_VM_VAGRANT=0)"
      return
    fi
    local t
    t=$(now_ms)
    if ! (ensure_packages vagrant) >/dev/null 2>&1; then
      echo "# skip vagrantfile-validates: vagrant is not installable here (apt-get install vagrant failed)"
      return
    fi
    echo "# installed Debian's vagrant in $(secs_since "$t") s"
  fi
  # Its own home and dotfile folders: nothing lands in the checkout or in ~/.vagrant.d.
  local vh out rc=0
  vh=$(mktemp -d)
  out=$(cd "$REPO" && VAGRANT_HOME=$vh/home VAGRANT_DOTFILE_PATH=$vh/dot VAGRANT_CHECKPOINT_DISABLE=1 \
    timeout 120 vagrant validate --ignore-provider 2>&1) || rc=$?
  rm -rf "$vh"
  if [ "$rc" = 0 ]; then
    echo "ok vagrantfile-validates"
    echo "# $(vagrant --version 2>/dev/null): $(tail -n1 <<<"$out")"
  else
    echo "not ok vagrantfile-validates - vagrant validate exited $rc: $(tr '\n' ' ' <<<"$out" | cut -c1-400)"
  fi
}

# --- build ------------------------------------------------------------------------------------------
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# One run per folder at a time.
exec 9>"$OUT/.lock"
flock -n 9 || die "another run uses $OUT (set --out)"
HOST_RESULTS=$OUT/host-results.log
: >"$HOST_RESULTS"
vagrant_checks >"$HOST_RESULTS" 2>&1 9>&- &
VAGRANT_PID=$!
QPID=""
cleanup() {
  [ -z "$QPID" ] || kill "$QPID" 2>/dev/null || true
  kill "$VAGRANT_PID" 2>/dev/null || true
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM
if [ "$BUILD" = 1 ]; then
  if [ -z "${RKUBELET_BIN:-}" ]; then
    t=$(now_ms)
    pkgs=(-p rkubelet)
    if [ -z "${RKUBELET_CNI_DIR:-}" ]; then
      pkgs+=(-p cni-plugins)
      export RKUBELET_CNI_DIR=$REPO/target/release
    fi
    (cd "$REPO" && cargo build --release -q "${pkgs[@]}") || die "cargo build --release ${pkgs[*]} failed"
    export RKUBELET_BIN=$REPO/target/release/rkubelet
    log "built ${pkgs[*]//-p /} in $(secs_since "$t") s"
    DEADLINE=$((DEADLINE + ($(now_ms) - t) / 1000))
  fi
  # Our CNI plugins: as given, else tests/run.sh's build, else next to the binary.
  if [ -z "${RKUBELET_CNI_DIR:-}" ]; then
    for d in "${RKUBELET_CNI_BIN_DIR:-}" "$(dirname "$RKUBELET_BIN")"; do
      if [ -n "$d" ] && [ -x "$d/bridge" ] && [ -x "$d/host-local" ]; then
        export RKUBELET_CNI_DIR=$d
        break
      fi
    done
  fi
  log "rkubelet: $RKUBELET_BIN; CNI plugins: ${RKUBELET_CNI_DIR:-provision.sh default}"
  t=$(now_ms)
  "$SCRIPT_DIR/build-image.sh" --out "$OUT" -- "${PROVISION_ARGS[@]}" || die "image build failed"
  T_IMAGE=$(secs_since "$t")
else
  T_IMAGE=0
fi
[ -f "$OUT/image.env" ] || die "no image in $OUT (run without --no-build)"
# shellcheck disable=SC1091
. "$OUT/image.env"

# --- accelerator ---------------------------------------------------------------------------------------
# KVM only if a kernel actually boots under it: here /dev/kvm exists but QEMU aborts
# ("failed to set MSR 0x10a") or hangs. The probe boots the guest kernel without a root
# (it panics at once, -no-reboot exits) and is cached per host boot.
kvm_works() {
  [ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
  local cache
  cache=$VMDIR/kvm-probe.$(cat /proc/sys/kernel/random/boot_id)
  if [ ! -f "$cache" ]; then
    local out rc=0
    out=$(timeout -k 2 15 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nodefaults -no-user-config \
      -display none -no-reboot -serial stdio -kernel "$KERNEL" -append "console=ttyS0 panic=-1" 2>&1) || rc=$?
    rm -f "$VMDIR"/kvm-probe.*
    if grep -q 'Kernel panic' <<<"$out"; then
      echo yes >"$cache"
    else
      echo "no (exit $rc: $(tail -n 2 <<<"$out" | tr '\n' ' ' | cut -c1-200))" >"$cache"
    fi
  fi
  log "KVM probe: $(cat "$cache")"
  [ "$(cat "$cache")" = yes ]
}
case "$ACCEL" in
auto) if kvm_works; then ACCEL=kvm; else ACCEL=tcg; fi ;;
kvm | tcg) ;;
*) die "--accel must be kvm or tcg" ;;
esac
if [ "$ACCEL" = kvm ]; then
  accel_args=(-accel kvm -cpu host)
else
  accel_args=(-accel tcg,thread=multi -cpu max)
fi

# --- boot -------------------------------------------------------------------------------------------------
CONSOLE=$OUT/console.log
RESULTS=$OUT/results.log
rm -f "$CONSOLE" "$RESULTS"
: >"$CONSOLE"
: >"$RESULTS"
: >"$OUT/qemu.log"
remaining=$((DEADLINE - $(date +%s)))
[ "$remaining" -gt 30 ] || die "no time left to boot (timeout ${TIMEOUT} s)"
log "booting $(basename "$KERNEL_PACKAGE") guest with $ACCEL ($(du -h --apparent-size "$DISK" | cut -f1) disk), limit ${remaining} s"
T_BOOT=$(now_ms)
# Both serial ports append: a second boot adds to the first one's console and results.
boot_guest() {
  qemu-system-x86_64 -name rkubelet-e2e "${accel_args[@]}" \
    -m "${RKUBELET_VM_MEM:-2048}" -smp "${RKUBELET_VM_CPUS:-2}" \
    -nodefaults -no-user-config -display none -no-reboot -nic none \
    -kernel "$KERNEL" -initrd "$INITRD" \
    -drive "file=$DISK,format=raw,if=virtio,cache=unsafe" \
    -device virtio-rng-pci \
    -chardev "file,id=console,path=$CONSOLE,append=on" -serial chardev:console \
    -chardev "file,id=results,path=$RESULTS,append=on" -serial chardev:results \
    -append "console=ttyS0 root=/dev/vda rw net.ifnames=0 panic=-1 loglevel=4 systemd.show_status=auto" \
    </dev/null >>"$OUT/qemu.log" 2>&1 &
  QPID=$!
}
boot_guest
BOOTS=1

# Stream results while the guest runs; stop at the summary line, when QEMU exits (unless
# the guest powered off for its second boot), or at the deadline.
shown=0
summary=""
timed_out=0
while :; do
  total=$(wc -l <"$RESULTS")
  if [ "$total" -gt "$shown" ]; then
    tail -n "+$((shown + 1))" "$RESULTS" | head -n "$((total - shown))" | tr -d '\r' | sed 's/^/guest: /'
    shown=$total
    summary=$(tr -d '\r' <"$RESULTS" | grep -E '^vm-e2e: [0-9]+ passed, [0-9]+ failed$' | tail -n1 || true)
  fi
  [ -z "$summary" ] || break
  if ! kill -0 "$QPID" 2>/dev/null; then
    if [ "$BOOTS" = 1 ] && tr -d '\r' <"$RESULTS" | grep -q '^# vm-e2e: powering off through logind'; then
      wait "$QPID" 2>/dev/null || true
      log "guest powered off for its second boot after $(secs_since "$T_BOOT") s; booting the same disk again"
      echo "----- second boot -----" >>"$CONSOLE"
      boot_guest
      BOOTS=2
      continue
    fi
    break
  fi
  if [ "$(date +%s)" -ge "$DEADLINE" ]; then
    timed_out=1
    break
  fi
  sleep 0.5
done
T_RESULTS=$(secs_since "$T_BOOT")
# Let the guest power off by itself (a few seconds), then stop QEMU.
for _ in $(seq 1 40); do
  kill -0 "$QPID" 2>/dev/null || break
  sleep 0.5
done
if kill -0 "$QPID" 2>/dev/null; then
  [ -n "$summary" ] && log "guest did not power off within 20 s of its summary; stopping QEMU"
  kill "$QPID" 2>/dev/null || true
fi
qrc=0
wait "$QPID" 2>/dev/null || qrc=$?
QPID=""
# Anything written after the last poll.
total=$(wc -l <"$RESULTS")
[ "$total" -le "$shown" ] || tail -n "+$((shown + 1))" "$RESULTS" | tr -d '\r' | sed 's/^/guest: /'

# --- verdict ------------------------------------------------------------------------------------------------
if ! wait "$VAGRANT_PID"; then :; fi
# The Vagrantfile's script is the one this image was provisioned with.
if [ "$(realpath "$REPO/tests/vm/provision.sh")" = "$(realpath "$SCRIPT_DIR/provision.sh")" ] &&
  [ "${PROVISION_SHA256:-}" = "$(sha256sum "$REPO/tests/vm/provision.sh" | cut -d' ' -f1)" ]; then
  echo "ok vagrant-and-vm-share-provisioning" >>"$HOST_RESULTS"
else
  echo "not ok vagrant-and-vm-share-provisioning - the image was provisioned by a script with sha256 ${PROVISION_SHA256:-unknown}, not the current tests/vm/provision.sh" >>"$HOST_RESULTS"
fi
tr -d '\r' <"$HOST_RESULTS" | sed 's/^/host: /'
host_passed=$(grep -c '^ok ' "$HOST_RESULTS" || true)
host_failed=$(grep -c '^not ok ' "$HOST_RESULTS" || true)
passed=$(tr -d '\r' <"$RESULTS" | grep -c '^ok ' || true)
failed=$(tr -d '\r' <"$RESULTS" | grep -c '^not ok ' || true)
status=0
reason=""
if [ "$timed_out" = 1 ]; then
  status=1
  reason="timed out after ${TIMEOUT} s overall"
elif [ -z "$summary" ]; then
  status=1
  reason="the guest stopped without a summary line (QEMU exit $qrc)"
elif [ "$summary" != "vm-e2e: $passed passed, $failed failed" ]; then
  status=1
  reason="summary \"$summary\" does not match the results ($passed ok, $failed not ok)"
elif [ "$failed" -gt 0 ] || [ "$passed" = 0 ]; then
  status=1
fi
[ "$host_failed" = 0 ] || status=1
if [ "$status" != 0 ]; then
  echo "----- guest console (last lines of $CONSOLE) -----"
  # (without colours and systemd's "A start job is running" spinner lines)
  sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$CONSOLE" | tr -d '\r' | grep -av 'Job .* running (' | tail -n 80
  if [ -s "$OUT/qemu.log" ]; then
    echo "----- qemu ($OUT/qemu.log) -----"
    tail -n 20 "$OUT/qemu.log"
  fi
  echo "-----"
fi
log "timings: image ${T_IMAGE} s, boot to results ${T_RESULTS} s ($ACCEL, $BOOTS boot(s)), total $(secs_since "$T_START") s; logs in $OUT"
if [ -n "$reason" ]; then
  log "FAILED: $reason"
  failed=$((failed + 1))
fi
echo "vm-e2e: $((passed + host_passed)) passed, $((failed + host_failed)) failed"
exit "$status"
