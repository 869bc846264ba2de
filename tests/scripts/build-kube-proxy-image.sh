#!/usr/bin/env bash
# Builds kube-proxy's image the way the test images are built (umoci + skopeo, no container engine) and pushes it to
# the local registry as 127.0.0.1:5000/kube-proxy:<its version>, the name a kubeadm cluster with
# `imageRepository: 127.0.0.1:5000` gives its kube-proxy DaemonSet.
#
#   /usr/local/bin/kube-proxy   the kit's kube-proxy (static), as in the upstream image
#   /usr/sbin/iptables{,-save,-restore}, ip6tables{,-save,-restore}
#                               Debian's iptables in the host's mode: upstream's image picks nft or legacy to match
#                               the rules already on the host (iptables-wrapper); this one is built for this host, so
#                               it takes the mode the host's `iptables` alternative names
#   /usr/sbin/conntrack         Debian's conntrack (kube-proxy clears stale UDP entries with it)
#   with their shared libraries and the xtables extension modules iptables loads at run time.
#
# The layout is cached under $RKUBELET_TEST_STATE/images/kube-proxy, keyed by this script and the binaries' hashes.
# usage: build-kube-proxy-image.sh KUBE_PROXY_BINARY   (prints the image reference last)
set -euo pipefail
SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
KP=$(readlink -f "${1:?usage: build-kube-proxy-image.sh KUBE_PROXY_BINARY}")
STATE=${RKUBELET_TEST_STATE:-/var/lib/rkubelet-test}
CACHE=$STATE/images/kube-proxy
REGISTRY=127.0.0.1:5000
log() { printf 'build-kube-proxy-image: %s\n' "$*" >&2; }

VERSION=$("$KP" --version | awk '{print $2}')
[[ $VERSION == v* ]] || { log "cannot read the version of $KP"; exit 1; }
IPT=$(readlink -f "$(command -v iptables)")
CONNTRACK=$(command -v conntrack || true)
[ -n "$CONNTRACK" ] || { log "conntrack is missing (apt-get install conntrack)"; exit 1; }
case "$(basename "$IPT")" in
  xtables-nft-multi | xtables-legacy-multi) ;;
  *) log "iptables is $IPT, neither xtables-nft-multi nor xtables-legacy-multi"; exit 1 ;;
esac
# Physical folders: Debian's /lib and /lib64 are links into /usr, and iptables looks for its extensions under the
# /usr path it was built with.
XT_DIR=$(cd "$(dirname "$(ldd "$IPT" | awk '/libxtables/ {print $3}')")" && pwd -P)/xtables
KEY=$(cat "$SCRIPT" "$KP" "$IPT" "$CONNTRACK" | sha256sum | cut -c1-16)
REF=$REGISTRY/kube-proxy:$VERSION

mkdir -p "$CACHE"
exec 9>"$CACHE.lock"
flock 9
if [ "$(cat "$CACHE/key" 2>/dev/null)" != "$KEY" ]; then
  work=$(mktemp -d "$STATE/images/.kube-proxy.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  L=$work/oci R=$work/bundle/rootfs
  umoci init --layout "$L"
  umoci new --image "$L:$VERSION"
  umoci unpack --image "$L:$VERSION" "$work/bundle"
  mkdir -p "$R"/{usr/local/bin,usr/sbin,usr/lib/modules,usr/lib64,etc,run,var/lib/kube-proxy}
  ln -s usr/lib "$R/lib"
  ln -s usr/lib64 "$R/lib64"
  install -d -m 1777 "$R/tmp"
  install -m 755 "$KP" "$R/usr/local/bin/kube-proxy"
  install -m 755 "$IPT" "$R/usr/sbin/$(basename "$IPT")"
  install -m 755 "$CONNTRACK" "$R/usr/sbin/conntrack"
  for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -s "$(basename "$IPT")" "$R/usr/sbin/$t"
  done
  mkdir -p "$R$XT_DIR"
  cp -a "$XT_DIR"/. "$R$XT_DIR/"
  # Every shared library the programs and the extension modules need, with the loader.
  for f in "$IPT" "$CONNTRACK" "$XT_DIR"/*.so; do
    ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
  done | sort -u | while read -r lib; do
    dir=$(cd "$(dirname "$lib")" && pwd -P)
    mkdir -p "$R$dir"
    cp -L "$lib" "$R$dir/$(basename "$lib")"
  done
  printf 'root:x:0:0:root:/root:/bin/false\n' >"$R/etc/passwd"
  printf 'root:x:0:\n' >"$R/etc/group"
  "$R/usr/local/bin/kube-proxy" --version >/dev/null
  # Reading the host's rules needs every extension module they use: a missing one fails here, not in kube-proxy
  # ("No iptables support for family").
  local_check() { chroot "$R" "/usr/sbin/$1" -w -t "$2" -S >/dev/null || { log "$1 -t $2 fails in the image"; exit 1; }; }
  for t in filter nat mangle; do local_check iptables "$t" && local_check ip6tables "$t"; done
  chroot "$R" /usr/sbin/conntrack --version >&2
  umoci repack --image "$L:$VERSION" "$work/bundle"
  umoci config --image "$L:$VERSION" --author rkubelet-tests --config.entrypoint /usr/local/bin/kube-proxy \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  umoci gc --layout "$L"
  rm -rf "$CACHE/oci"
  mv "$L" "$CACHE/oci"
  echo "$KEY" >"$CACHE/key"
  log "built $REF ($(du -sh "$CACHE/oci" | cut -f1))"
fi
skopeo copy -q --dest-tls-verify=false "oci:$CACHE/oci:$VERSION" "docker://$REF"
log "pushed $REF"
echo "$REF"
