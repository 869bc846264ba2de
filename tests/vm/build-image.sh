#!/usr/bin/env bash
# Builds the rkubelet VM test guest: a raw ext4 disk plus the kernel and initrd to boot
# it with QEMU's -kernel/-initrd.
#
# 1. Base (cached): `mmdebstrap --variant=minbase` Debian bookworm with systemd, the
#    kernel, containerd, runc, the reference CNI plugins, iptables, jq, curl, ... as a
#    tarball in $STATE/vm/base/<key>/ (STATE=${RKUBELET_TEST_STATE:-/var/lib/rkubelet-test}).
#    The key hashes the package list, the mirrors and the build_base function below, so
#    editing the per-run part of this script does not rebuild it. Modules of hardware a
#    QEMU guest does not have are pruned, and the initrd only carries virtio + ext4.
#    Cold: about 2 minutes here (mmdebstrap downloads ~200 MB).
# 2. Per run (seconds): stack an overlay on the extracted base, run tests/vm/provision.sh
#    against it with the current binaries (debug info stripped from big ones: a debug
#    rkubelet is ~300 MB), which also installs the e2e suite as /opt/rkubelet-e2e; give
#    rkubelet's config systemReserved/kubeReserved (so the kubepods limit differs from
#    the capacity) and add the oneshot rkubelet-e2e.service that runs the suite after
#    rkubelet is up, writes the results to /dev/ttyS1 and powers off; then
#    `mkfs.ext4 -d` the tree into OUT/disk.img.
#
# Binaries: RKUBELET_BIN (default <repo>/target/release/rkubelet), RKUBELET_CNI_DIR
# (default: provision.sh's choice); options after -- override them.
#
# Outputs in OUT (default $STATE/vm/run): disk.img, vmlinuz, initrd.img, image.env.
#
# Usage: build-image.sh [--out DIR] [--rebuild-base] [--base-only] [--keep-root]
#                       [-- PROVISION-OPTIONS...]
#   --rebuild-base  rebuild the cached base even if its key is unchanged
#   --base-only     only make sure the base exists
#   --keep-root     keep OUT/root (the extracted, provisioned tree) for inspection
#   Options after -- go to provision.sh (--rkubelet FILE, --cni-dir DIR, ...).
set -euo pipefail

# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SCRIPT_DIR=$VM_SCRIPT_DIR

log() { printf 'build-image: %s\n' "$*" >&2; }
die() {
  printf 'build-image: error: %s\n' "$*" >&2
  exit 1
}

OUT=$VMDIR/run
REBUILD=0
BASE_ONLY=0
KEEP_ROOT=0
PROVISION_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
  --out) OUT=$2; shift 2 ;;
  --rebuild-base) REBUILD=1; shift ;;
  --base-only) BASE_ONLY=1; shift ;;
  --keep-root) KEEP_ROOT=1; shift ;;
  --) shift; PROVISION_ARGS=("$@"); break ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown argument: $1" ;;
  esac
done
[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap, chroot, device nodes)"

# --- base --------------------------------------------------------------------------------------
SUITE=bookworm
MIRRORS=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)
BASE_PACKAGES=(
  systemd-sysv udev dbus linux-image-amd64 kmod
  containerd runc containernetworking-plugins iproute2 iptables
  busybox-static ca-certificates curl jq procps
)
# Kernel module folders (under /usr/lib/modules/*/kernel) of hardware and features a
# QEMU guest with virtio devices does not use: about 200 MB less to copy per run.
PRUNE_MODULES=(
  sound drivers/gpu drivers/media drivers/net/wireless drivers/net/ethernet drivers/net/usb
  drivers/net/can drivers/infiniband drivers/iio drivers/usb drivers/staging drivers/comedi
  drivers/bluetooth drivers/isdn drivers/mtd drivers/hwmon drivers/scsi drivers/ata
  drivers/target drivers/video drivers/hid drivers/platform drivers/thunderbolt
  net/bluetooth net/mac80211 net/wireless
  fs/ocfs2 fs/gfs2 fs/xfs fs/btrfs fs/f2fs fs/nfs fs/nfsd fs/ceph fs/smb
)

# build_base DIR: DIR/rootfs.tar, DIR/vmlinuz, DIR/initrd.img, DIR/packages.txt.
# Part of the cache key (declare -f): change it and the base is rebuilt.
build_base() {
  local dir=$1 include
  include=$(IFS=,; echo "${BASE_PACKAGES[*]}")
  local prune=""
  local m
  for m in "${PRUNE_MODULES[@]}"; do prune+=" \"\$1\"/usr/lib/modules/*/kernel/$m"; done
  mmdebstrap --variant=minbase --include="$include" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook="rm -rf $prune"' && for k in "$1"/usr/lib/modules/*; do chroot "$1" depmod -a "${k##*/}"; done' \
    --customize-hook='echo MODULES=list >"$1/etc/initramfs-tools/conf.d/rkubelet-vm.conf"' \
    --customize-hook='printf "%s\n" virtio_pci virtio_blk crc32c_generic ext4 >>"$1/etc/initramfs-tools/modules"' \
    --customize-hook='chroot "$1" update-initramfs -u -k all' \
    --customize-hook='chroot "$1" dpkg-query -W -f="\${Package} \${Version}\n" >"$1/.packages.txt"' \
    --customize-hook="copy-out /boot $dir" \
    --customize-hook="copy-out /.packages.txt $dir" \
    --customize-hook='rm -f "$1/.packages.txt"' \
    "$SUITE" "$dir/rootfs.tar" "${MIRRORS[@]}" || return 1
  # Called as a condition, so `set -e` does not apply in here: every step checks.
  mv "$dir"/boot/vmlinuz-* "$dir/vmlinuz" || return 1
  mv "$dir"/boot/initrd.img-* "$dir/initrd.img" || return 1
  mv "$dir/.packages.txt" "$dir/packages.txt" || return 1
  rm -rf "${dir:?}/boot"
}

# verify_base DIR [--quick]: kernel, initrd and package list are there, and (unless
# --quick) the tarball reads to its end and holds what the guest boots with. Only a base
# that passes is cached.
verify_base() {
  local dir=$1 list f
  for f in vmlinuz initrd.img packages.txt rootfs.tar; do
    [ -s "$dir/$f" ] || { log "base check: $f missing or empty"; return 1; }
  done
  grep -q '^linux-image-[0-9]' "$dir/packages.txt" || { log "base check: no kernel in packages.txt"; return 1; }
  [ "${2:-}" != --quick ] || return 0
  list=$(mktemp)
  if ! tar -tf "$dir/rootfs.tar" >"$list" 2>"$list.err"; then
    log "base check: rootfs.tar does not read as a tar archive: $(head -c 300 "$list.err")"
    rm -f "$list" "$list.err"
    return 1
  fi
  rm -f "$list.err"
  # (Paths as dpkg installs them; with merged /usr they are in the tar under usr/.)
  for f in etc/os-release usr/bin/containerd usr/sbin/runc lib/systemd/systemd sbin/iptables \
    bin/busybox usr/lib/cni/bridge; do
    grep -qxF -e "./$f" -e "./usr/${f#usr/}" "$list" || {
      log "base check: /$f not in rootfs.tar"
      rm -f "$list"
      return 1
    }
  done
  rm -f "$list"
}

BASE_KEY=$(
  {
    declare -f build_base
    printf '%s\n' "$SUITE" "${MIRRORS[@]}" "${BASE_PACKAGES[@]}" "${PRUNE_MODULES[@]}"
  } | sha256sum | cut -c1-16
)
BASE=$VMDIR/base/$BASE_KEY

ensure_packages mmdebstrap e2fsprogs tar
mkdir -p "$VMDIR/base"
exec 8>"$VMDIR/base.lock"
flock 8
if [ -f "$BASE/done" ] && [ "$REBUILD" = 0 ] && ! verify_base "$BASE" --quick; then
  log "cached base $BASE_KEY fails its check; rebuilding"
  rm -f "$BASE/done"
fi
if [ "$REBUILD" = 1 ] || [ ! -f "$BASE/done" ]; then
  t0=$(now_ms)
  log "building base $BASE_KEY (mmdebstrap $SUITE minbase, ${#BASE_PACKAGES[@]} packages)"
  rm -rf "$BASE" "$BASE.tmp"
  mkdir -p "$BASE.tmp"
  # Without the descriptors we inherit (our locks, a caller's): mmdebstrap hands apt a
  # pipe as `cat >&N`, and with N above 9 dash fails ("/bin/sh: Bad fd number").
  if ! (
    for fd in /proc/"$BASHPID"/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
    done
    build_base "$BASE.tmp"
  ) </dev/null >"$VMDIR/base/mmdebstrap.log" 2>&1; then
    tail -n 30 "$VMDIR/base/mmdebstrap.log" >&2
    rm -rf "$BASE.tmp"
    die "mmdebstrap failed (log: $VMDIR/base/mmdebstrap.log)"
  fi
  if ! verify_base "$BASE.tmp"; then
    tail -n 30 "$VMDIR/base/mmdebstrap.log" >&2
    rm -rf "$BASE.tmp"
    die "the base built by mmdebstrap is incomplete; not cached (log: $VMDIR/base/mmdebstrap.log)"
  fi
  mv "$VMDIR/base/mmdebstrap.log" "$BASE.tmp/"
  secs_since "$t0" >"$BASE.tmp/build-seconds"
  # The whole folder appears under its final name in one rename, and carries its
  # `done` marker only from then on: an interrupted or failed build is never taken
  # for a cached one.
  mv "$BASE.tmp" "$BASE"
  touch "$BASE/done"
  # Older bases are dead weight (~600 MB each).
  for old in "$VMDIR"/base/*/; do
    [ "${old%/}" = "$BASE" ] || rm -rf "${old%/}"
  done
  log "base $BASE_KEY built in $(cat "$BASE/build-seconds") s: $(du -sh "$BASE/rootfs.tar" | cut -f1) tar, kernel $(grep '^linux-image-[0-9]' "$BASE/packages.txt" | head -n1)"
else
  log "base $BASE_KEY cached ($BASE)"
fi
# The base tree, extracted once: each run stacks an overlayfs on it instead of extracting
# the tarball again.
if [ ! -f "$BASE/rootfs.done" ]; then
  rm -rf "$BASE/rootfs"
  mkdir -p "$BASE/rootfs"
  tar --numeric-owner --xattrs --xattrs-include='*' -xpf "$BASE/rootfs.tar" -C "$BASE/rootfs"
  touch "$BASE/rootfs.done"
fi
flock -u 8
[ "$BASE_ONLY" = 0 ] || exit 0

# --- per run ------------------------------------------------------------------------------------
t0=$(now_ms)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOT=$OUT/root
exec 7>"$OUT/.build.lock"
flock -n 7 || die "another build uses $OUT"
unmount_root() { ! mountpoint -q "$ROOT" || umount "$ROOT"; }
unmount_root
rm -rf "$ROOT" "$OUT/upper" "$OUT/work" "$OUT/disk.img" "$OUT/image.env"
mkdir -p "$ROOT" "$OUT/upper" "$OUT/work"
# Shared lock on the base while it is a lower layer, so a rebuild waits for us.
flock -s 8
if mount -t overlay overlay -o "lowerdir=$BASE/rootfs,upperdir=$OUT/upper,workdir=$OUT/work" "$ROOT" 2>/dev/null; then
  ROOT_MODE=overlay
  [ "$KEEP_ROOT" = 1 ] || trap unmount_root EXIT
else
  ROOT_MODE=extracted
  log "overlayfs mount failed; extracting the base instead"
  tar --numeric-owner --xattrs --xattrs-include='*' -xpf "$BASE/rootfs.tar" -C "$ROOT"
fi
t_extract=$(secs_since "$t0")

# Big binaries (debug builds) without their debug info: a smaller disk, less to copy.
stripped() { # FILE DEST-DIR -> path to use
  local f=$1 size
  size=$(stat -c %s "$f")
  if [ "$size" -gt $((48 * 1024 * 1024)) ] && command -v objcopy >/dev/null 2>&1; then
    mkdir -p "$2"
    objcopy --strip-debug "$f" "$2/$(basename "$f")" && { echo "$2/$(basename "$f")"; return; }
  fi
  echo "$f"
}
bin_args=()
BIN=${RKUBELET_BIN:-$REPO/target/release/rkubelet}
[ -x "$BIN" ] || die "no rkubelet binary at $BIN (cargo build --release -p rkubelet, or set RKUBELET_BIN)"
rm -rf "${OUT:?}/bin"
bin_args+=(--rkubelet "$(stripped "$BIN" "$OUT/bin")")
if [ -n "${RKUBELET_CNI_DIR:-}" ]; then
  cni=$RKUBELET_CNI_DIR
  for p in bridge host-local loopback portmap; do
    [ -x "$RKUBELET_CNI_DIR/$p" ] || continue
    s=$(stripped "$RKUBELET_CNI_DIR/$p" "$OUT/bin/cni")
    [ "$s" = "$RKUBELET_CNI_DIR/$p" ] || cni=$OUT/bin/cni
  done
  if [ "$cni" != "$RKUBELET_CNI_DIR" ]; then # mix of stripped and small ones: all in one folder
    for p in bridge host-local loopback portmap; do
      [ -e "$cni/$p" ] || [ ! -x "$RKUBELET_CNI_DIR/$p" ] || cp "$RKUBELET_CNI_DIR/$p" "$cni/"
    done
  fi
  bin_args+=(--cni-dir "$cni")
fi
"$SCRIPT_DIR/provision.sh" "${bin_args[@]}" "${PROVISION_ARGS[@]}" "$ROOT"
n_checks=$(find "$ROOT/opt/rkubelet-e2e/e2e" -name '*.sh' | wc -l)
[ "$n_checks" -gt 0 ] || die "provision.sh installed no checks in /opt/rkubelet-e2e/e2e"

# Reservations, so that the kubepods limit (capacity - systemReserved - kubeReserved) and
# allocatable (also - evictionHard) differ from the capacity; the suite reads them back
# from the config. Kept when the project's config already sets them.
config_path=$(sed -n 's/^config_path=//p' "$ROOT/etc/rkubelet/provisioned")
for r in "systemReserved: {cpu: 100m, memory: 96Mi}" "kubeReserved: {cpu: 150m, memory: 64Mi}"; do
  grep -q "^${r%%:*}:" "$ROOT$config_path" || printf '%s\n' "# added for the VM e2e tier (tests/vm/build-image.sh)" "$r" >>"$ROOT$config_path"
done

# The unit that runs the suite.
cat >"$ROOT/etc/systemd/system/rkubelet-e2e.service" <<'EOF'
# Written by rkubelet tests/vm/build-image.sh: runs the VM e2e suite once rkubelet is
# up (Type=notify: after READY=1, or after it failed), results on /dev/ttyS1, then
# powers the guest off whatever happened.
[Unit]
Description=rkubelet VM e2e suite
Wants=rkubelet.service containerd.service
After=rkubelet.service rkubelet-images.service containerd.service
SuccessAction=poweroff-immediate
FailureAction=poweroff-immediate

[Service]
Type=oneshot
Environment=E2E_OUT=/dev/ttyS1
ExecStart=/opt/rkubelet-e2e/run.sh
TimeoutStartSec=infinity
StandardOutput=journal

[Install]
WantedBy=multi-user.target
EOF
ln -sfn /etc/systemd/system/rkubelet-e2e.service "$ROOT/etc/systemd/system/multi-user.target.wants/rkubelet-e2e.service"

# Guest settings that are about the test VM, not about being a node.
echo rkubelet-vm >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\trkubelet-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
printf '/dev/vda\t/\text4\tdefaults,noatime\t0\t0\n' >"$ROOT/etc/fstab" # no fsck: a fresh mkfs
# A fixed machine-id: an empty one means "first boot" (presets applied, slower).
tr -d '-' </proc/sys/kernel/random/uuid >"$ROOT/etc/machine-id"
[ -s "$ROOT/etc/resolv.conf" ] || echo 'nameserver 127.0.0.1' >"$ROOT/etc/resolv.conf"
# Nothing the suite needs, and time under TCG: gettys (the one on ttyS0 clears the
# console log), periodic jobs.
for u in serial-getty@ttyS0.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer \
  dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer systemd-pstore.service; do
  rm -f "$ROOT"/etc/systemd/system/*.wants/"$u"
  ln -sfn /dev/null "$ROOT/etc/systemd/system/$u"
done

t_prov=$(secs_since "$t0")
# Room for containerd's content, snapshots and logs on top of the tree.
size_mb=$(($(du -sm "$ROOT" | cut -f1) + 1536))
mkfs.ext4 -q -F -L rkubelet-root -E root_owner=0:0 -d "$ROOT" "$OUT/disk.img" "${size_mb}M" >/dev/null
cp -f "$BASE/vmlinuz" "$OUT/vmlinuz"
cp -f "$BASE/initrd.img" "$OUT/initrd.img"
if [ "$KEEP_ROOT" = 0 ]; then
  unmount_root
  trap - EXIT
  rm -rf "$ROOT" "$OUT/upper" "$OUT/work"
fi
flock -u 8
cat >"$OUT/image.env" <<EOF
BASE_KEY=$BASE_KEY
DISK=$OUT/disk.img
KERNEL=$OUT/vmlinuz
INITRD=$OUT/initrd.img
KERNEL_PACKAGE=$(grep '^linux-image-[0-9]' "$BASE/packages.txt" | head -n1 | tr ' ' '=')
CHECKS=$n_checks
PROVISION_SHA256=$(sha256sum "$SCRIPT_DIR/provision.sh" | cut -d' ' -f1)
EOF
log "image ready in $(secs_since "$t0") s (root $ROOT_MODE at ${t_extract} s, provisioned at ${t_prov} s, then mkfs): $OUT/disk.img ${size_mb} MiB, $n_checks check file(s)"
