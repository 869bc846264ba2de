#!/usr/bin/env bash
# Builds the Debian package of rkubelet and its CNI plugins with dpkg-deb (no other tool needed):
#   /usr/bin/rkubelet, /opt/cni/bin/{bridge,host-local,loopback,portmap} (where kubelet's CNI plugins live),
#   /lib/systemd/system/rkubelet.service, /etc/default/rkubelet and /etc/rkubelet/config.yaml (conffiles: the
#   node configuration, as kubeadm writes the kubelet's), /etc/kubernetes/manifests, docs in /usr/share/doc/rkubelet.
# The service is enabled on install and started once a configuration can start it (the cluster CA present, or a
# config edited for standalone); it is stopped on removal, and purge removes its conffiles and enablement.
#
#   systemd/build-deb.sh [--bin-dir DIR] [--out FILE]
# DIR holds the release binaries (default target/release: `cargo build --release -p rkubelet -p cni-plugins`);
# FILE defaults to target/rkubelet_<version>_<arch>.deb. Prints the package path last.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
bin_dir=$repo/target/release
out=
while [ $# -gt 0 ]; do
  case "$1" in
  --bin-dir) bin_dir=$2; shift 2 ;;
  --out) out=$2; shift 2 ;;
  *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v dpkg-deb >/dev/null || { echo "build-deb.sh: dpkg-deb missing (apt-get install dpkg)" >&2; exit 1; }
plugins=(bridge host-local loopback portmap)
for b in rkubelet "${plugins[@]}"; do
  [ -x "$bin_dir/$b" ] || { echo "build-deb.sh: no $bin_dir/$b (cargo build --release -p rkubelet -p cni-plugins)" >&2; exit 1; }
done
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
out=${out:-$repo/target/rkubelet_${version}_${arch}.deb}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
p=$stage/pkg
install -d -m 755 "$p/DEBIAN" "$p/usr/bin" "$p/opt/cni/bin" "$p/lib/systemd/system" "$p/etc/default" \
  "$p/etc/rkubelet" "$p/etc/kubernetes/manifests" "$p/usr/share/doc/rkubelet"
install -m 755 "$bin_dir/rkubelet" "$p/usr/bin/rkubelet"
for b in "${plugins[@]}"; do install -m 755 "$bin_dir/$b" "$p/opt/cni/bin/$b"; done
# Debug sections are a third of the binary; strip them when binutils is there.
if command -v strip >/dev/null; then strip --strip-unneeded "$p/usr/bin/rkubelet" "${plugins[@]/#/$p/opt/cni/bin/}"; fi
sed 's|/usr/local/bin/rkubelet|/usr/bin/rkubelet|' systemd/rkubelet.service >"$p/lib/systemd/system/rkubelet.service"
chmod 644 "$p/lib/systemd/system/rkubelet.service"
install -m 644 systemd/rkubelet.default "$p/etc/default/rkubelet"
install -m 644 systemd/config.yaml "$p/etc/rkubelet/config.yaml"
install -m 644 README.md docs/joining-a-cluster.md "$p/usr/share/doc/rkubelet/"
cat >"$p/usr/share/doc/rkubelet/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: rkubelet

Files: *
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in /usr/share/common-licenses/Apache-2.0.
COPYRIGHT

installed_size=$(du -sk --exclude=DEBIAN "$p" | cut -f1)
cat >"$p/DEBIAN/control" <<CONTROL
Package: rkubelet
Version: $version
Architecture: $arch
Maintainer: rkubelet maintainers <root@localhost>
Installed-Size: $installed_size
Depends: containerd (>= 1.6), runc, iptables, init-system-helpers
Recommends: conntrack
Section: admin
Priority: optional
Homepage: file:///usr/share/doc/rkubelet/README.md
Description: kubelet-compatible node agent
 A Kubernetes node agent that runs pods on containerd through CRI, with the
 kubelet's flags, KubeletConfiguration fields, status and events. It joins a
 cluster with kubeadm join or rkubelet join, or runs static pods standalone.
 Ships its bridge, host-local, loopback and portmap CNI plugins.
CONTROL
printf '%s\n' /etc/default/rkubelet /etc/rkubelet/config.yaml >"$p/DEBIAN/conffiles"

# Maintainer scripts as dh_installsystemd writes them for an enabled, started service.
cat >"$p/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ] || [ "$1" = abort-upgrade ]; then
  deb-systemd-helper unmask rkubelet.service >/dev/null || true
  if deb-systemd-helper --quiet was-enabled rkubelet.service; then
    deb-systemd-helper enable rkubelet.service >/dev/null || true
  else
    deb-systemd-helper update-state rkubelet.service >/dev/null || true
    deb-systemd-helper enable rkubelet.service >/dev/null || true
  fi
  if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
    # As kubelet's package: the node starts once it has what its configuration names (kubeadm join or rkubelet
    # join writes it, then restarts the service); until then it is enabled but not running.
    ca=$(sed -n 's/^ *clientCAFile: *//p' /etc/rkubelet/config.yaml | head -n1)
    if [ -z "$ca" ] || [ -f "$ca" ]; then
      deb-systemd-invoke restart rkubelet.service >/dev/null || true
    fi
  fi
fi
POSTINST
cat >"$p/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  deb-systemd-invoke stop rkubelet.service >/dev/null || true
fi
PRERM
cat >"$p/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = remove ] && [ -x /usr/bin/deb-systemd-helper ]; then
  deb-systemd-helper mask rkubelet.service >/dev/null || true
fi
if [ "$1" = purge ] && [ -x /usr/bin/deb-systemd-helper ]; then
  deb-systemd-helper purge rkubelet.service >/dev/null || true
  deb-systemd-helper unmask rkubelet.service >/dev/null || true
fi
POSTRM
chmod 755 "$p/DEBIAN/postinst" "$p/DEBIAN/prerm" "$p/DEBIAN/postrm"

mkdir -p "$(dirname "$out")"
dpkg-deb --root-owner-group -Zxz --build "$p" "$out" >/dev/null
echo "$out"
