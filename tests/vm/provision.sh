#!/usr/bin/env bash
# Turns a Debian (bookworm) root into an rkubelet node. The ONE provisioning script:
# tests/vm/build-image.sh runs it against the extracted guest rootfs (offline, paths
# prefixed with ROOT); on a live machine (a Vagrant box, ...) run it with ROOT=/ and
# --start.
#
# What it installs into ROOT:
#   /usr/local/bin/rkubelet            the agent (also at the ExecStart path of the unit, if
#                                      that is somewhere else)
#   /etc/systemd/system/rkubelet.service, /etc/rkubelet/config.yaml
#                                      from --systemd-dir (default <repo>/systemd) when it
#                                      holds them, else minimal defaults written here
#                                      (Type=notify, --config=/etc/rkubelet/config.yaml,
#                                      staticPodPath /etc/kubernetes/manifests,
#                                      readOnlyPort 10255)
#   /opt/cni/bin/*                     our CNI plugins (--cni-dir, default
#                                      <repo>/cni-plugins/target/release when it holds
#                                      `bridge`), else symlinks to Debian's /usr/lib/cni
#                                      (containernetworking-plugins)
#   /etc/cni/net.d/10-rkubelet.conflist  bridge rkb0 + host-local (--pod-cidr) + portmap
#   /etc/containerd/config.toml        CRI: sandbox_image = the pause image's name from
#                                      pause.tar, runc.v2 with SystemdCgroup = true, CNI
#                                      dirs above (the Debian original is kept as
#                                      config.toml.debian)
#   /var/lib/rkubelet-images/*.tar     the test images (docker-archive), imported at every
#                                      boot by rkubelet-images.service (oneshot, after
#                                      containerd, before rkubelet) with
#                                      `ctr -n k8s.io images import`: the node needs no
#                                      registry
#   /etc/modules-load.d, /etc/sysctl.d overlay, bridge, veth, br_netfilter; ip_forward
#   /opt/rkubelet-e2e/                 the VM tier's end-to-end suite (run.sh, lib.sh, e2e/*.sh
#                                      from tests/vm/guest and tests/vm/e2e): on any node so
#                                      provisioned, `sudo /opt/rkubelet-e2e/run.sh` runs it
#   /etc/rkubelet/provisioned          what was installed (sha256s, sources), for debugging
# and enables containerd, rkubelet-images and rkubelet.
#
# Test images come from --images-dir (default ${RKUBELET_TEST_STATE:-/var/lib/rkubelet-test}/images,
# built by tests/scripts/build-images.sh, which is run when busybox.tar/pause.tar are missing).
#
# Usage: provision.sh [--rkubelet FILE] [--cni-dir DIR] [--systemd-dir DIR]
#                     [--images-dir DIR] [--pod-cidr CIDR] [--build] [--start] [ROOT]
#   ROOT defaults to /. --start (ROOT=/ only): daemon-reload and (re)start the services.
#   --build (ROOT=/ only; what the Vagrantfile uses): install a C compiler and, when there
#   is no cargo, rustup's minimal stable toolchain, then `cargo build --release --locked
#   -p rkubelet -p cni-plugins` with the target dir $RKUBELET_BUILD_DIR
#   (default /var/lib/rkubelet-build), and provision those binaries.
# Environment: RKUBELET_BIN, RKUBELET_CNI_DIR, RKUBELET_SYSTEMD_DIR, RKUBELET_IMAGES_DIR
# give the same defaults as the options.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
STATE=${RKUBELET_TEST_STATE:-/var/lib/rkubelet-test}

log() { printf 'provision: %s\n' "$*" >&2; }
die() {
  printf 'provision: error: %s\n' "$*" >&2
  exit 1
}

RKUBELET_BIN=${RKUBELET_BIN:-$REPO/target/release/rkubelet}
CNI_DIR=${RKUBELET_CNI_DIR:-}
SYSTEMD_DIR=${RKUBELET_SYSTEMD_DIR:-$REPO/systemd}
IMAGES_DIR=${RKUBELET_IMAGES_DIR:-$STATE/images}
POD_CIDR=10.244.0.0/24
START=0
BUILD=0
ROOT=/

while [ $# -gt 0 ]; do
  case "$1" in
  --rkubelet) RKUBELET_BIN=$2; shift 2 ;;
  --cni-dir) CNI_DIR=$2; shift 2 ;;
  --systemd-dir) SYSTEMD_DIR=$2; shift 2 ;;
  --images-dir) IMAGES_DIR=$2; shift 2 ;;
  --pod-cidr) POD_CIDR=$2; shift 2 ;;
  --start) START=1; shift ;;
  --build) BUILD=1; shift ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  -*) die "unknown option: $1" ;;
  *) ROOT=$1; shift ;;
  esac
done

[ "$(id -u)" = 0 ] || die "run as root"
ROOT=$(cd "$ROOT" && pwd)
[ -f "$ROOT/etc/debian_version" ] || die "$ROOT is not a Debian root (no etc/debian_version)"
LIVE=0
[ "$ROOT" = / ] && LIVE=1
[ "$START" = 0 ] || [ "$LIVE" = 1 ] || die "--start needs ROOT=/"
[ "$BUILD" = 0 ] || [ "$LIVE" = 1 ] || die "--build needs ROOT=/"
R=${ROOT%/} # prefix for paths: "" for /

# --- packages in the target ------------------------------------------------------------
# The guest image gets these from mmdebstrap; a live machine may need them installed.
# (-L too: in a foreign root, absolute symlinks such as usr/sbin/modprobe -> /bin/kmod
# point into this machine's tree, which may lack them.)
has() { [ -e "$R$1" ] || [ -L "$R$1" ]; }
need_pkgs=()
has /usr/bin/containerd && has /usr/bin/ctr || need_pkgs+=(containerd)
has /usr/sbin/runc || has /usr/bin/runc || need_pkgs+=(runc)
has /usr/sbin/iptables || need_pkgs+=(iptables)
has /usr/sbin/modprobe || has /sbin/modprobe || need_pkgs+=(kmod)
# The e2e suite's tools.
has /usr/bin/curl || need_pkgs+=(curl)
has /usr/bin/jq || need_pkgs+=(jq)
if [ "$BUILD" = 1 ]; then
  has /usr/bin/gcc || need_pkgs+=(gcc libc6-dev)
  has /usr/bin/pkg-config || need_pkgs+=(pkg-config)
  has /etc/ssl/certs/ca-certificates.crt || need_pkgs+=(ca-certificates)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$LIVE" = 1 ]; then
    log "installing ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  else
    die "$ROOT lacks packages: ${need_pkgs[*]} (add them to the image)"
  fi
fi

# --- build (--build) -----------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
  export PATH=$HOME/.cargo/bin:$PATH
  if ! command -v cargo >/dev/null 2>&1; then
    log "no cargo: installing rustup's minimal stable toolchain (Debian's rustc is older than rust-version)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y -q --profile minimal --default-toolchain stable
  fi
  BUILD_DIR=${RKUBELET_BUILD_DIR:-/var/lib/rkubelet-build}
  log "cargo build --release -p rkubelet -p cni-plugins (target dir $BUILD_DIR)"
  (cd "$REPO" && CARGO_TARGET_DIR=$BUILD_DIR cargo build --release --locked -q -p rkubelet -p cni-plugins) ||
    die "cargo build failed"
  RKUBELET_BIN=$BUILD_DIR/release/rkubelet
  CNI_DIR=$BUILD_DIR/release
fi

# --- inputs ------------------------------------------------------------------------------
[ -x "$RKUBELET_BIN" ] || die "no rkubelet binary at $RKUBELET_BIN (cd $REPO && cargo build --release -p rkubelet)"

# Our CNI plugins: the workspace build (target/release), or the crate's own target dir.
CNI_PLUGINS=(bridge host-local loopback portmap)
if [ -z "$CNI_DIR" ]; then
  for d in "$REPO/target/release" "$REPO/cni-plugins/target/release"; do
    if [ -x "$d/bridge" ] && [ -x "$d/host-local" ]; then
      CNI_DIR=$d
      break
    fi
  done
fi
if [ -n "$CNI_DIR" ]; then
  for p in bridge host-local portmap; do
    [ -x "$CNI_DIR/$p" ] || die "CNI dir $CNI_DIR lacks $p"
  done
fi

if [ ! -f "$IMAGES_DIR/busybox.tar" ] || [ ! -f "$IMAGES_DIR/pause.tar" ]; then
  if [ -z "${RKUBELET_IMAGES_DIR:-}" ] && [ "$IMAGES_DIR" = "$STATE/images" ]; then
    log "test images missing in $IMAGES_DIR: running tests/scripts/build-images.sh"
    "$REPO/tests/scripts/build-images.sh" >&2
  fi
  [ -f "$IMAGES_DIR/pause.tar" ] || die "no pause.tar in $IMAGES_DIR"
fi
command -v jq >/dev/null || die "jq missing on this machine (apt-get install jq)"
# The sandbox image is whatever name pause.tar carries (127.0.0.1:5000/pause:3.9 today).
SANDBOX_IMAGE=$(tar -xOf "$IMAGES_DIR/pause.tar" manifest.json | jq -r '.[0].RepoTags[0] // empty')
[ -n "$SANDBOX_IMAGE" ] || die "pause.tar has no RepoTags in manifest.json"

# --- helpers -------------------------------------------------------------------------------
put() { # mode dest  (content on stdin)
  install -d "$(dirname "$R$2")"
  cat >"$R$2.tmp.$$"
  chmod "$1" "$R$2.tmp.$$"
  mv -f "$R$2.tmp.$$" "$R$2"
}
yaml_scalar() { # file key -> value of a top-level `key: value` (quotes and comments stripped)
  sed -n "s/^$2:[[:space:]]*//p" "$1" | head -n1 | sed 's/[[:space:]]*#.*$//; s/^"\(.*\)"$/\1/; s/^'"'"'\(.*\)'"'"'$/\1/'
}

# --- rkubelet: unit and config ---------------------------------------------------------------
UNIT_SRC=default
if [ -f "$SYSTEMD_DIR/rkubelet.service" ]; then
  UNIT_SRC=$SYSTEMD_DIR/rkubelet.service
  # Every unit the folder ships (rkubelet.service, maybe slices or drop-ins later).
  for u in "$SYSTEMD_DIR"/*.service "$SYSTEMD_DIR"/*.slice "$SYSTEMD_DIR"/*.socket "$SYSTEMD_DIR"/*.target; do
    [ -f "$u" ] || continue
    install -D -m 644 "$u" "$R/etc/systemd/system/$(basename "$u")"
  done
else
  put 644 /etc/systemd/system/rkubelet.service <<'EOF'
# Written by tests/vm/provision.sh (no systemd/rkubelet.service in the repo yet).
[Unit]
Description=rkubelet, a kubelet-compatible node agent
Documentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kubelet/
Wants=containerd.service
After=containerd.service network-online.target

[Service]
Type=notify
ExecStart=/usr/local/bin/rkubelet --config=/etc/rkubelet/config.yaml
Restart=always
RestartSec=5
# Pods keep running across agent restarts; only the agent process is stopped.
KillMode=process

[Install]
WantedBy=multi-user.target
EOF
fi

CONFIG_SRC=default
# The test node runs standalone: the standalone configuration (systemd/config.yaml is the joined node's).
if [ -f "$SYSTEMD_DIR/standalone.yaml" ]; then
  CONFIG_SRC=$SYSTEMD_DIR/standalone.yaml
  install -D -m 644 "$SYSTEMD_DIR/standalone.yaml" "$R/etc/rkubelet/config.yaml"
else
  put 644 /etc/rkubelet/config.yaml <<'EOF'
# Written by tests/vm/provision.sh (no systemd/standalone.yaml in the repo yet).
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
staticPodPath: /etc/kubernetes/manifests
address: 127.0.0.1
readOnlyPort: 10255
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
podLogsDir: /var/log/pods
cgroupDriver: systemd
EOF
fi

# The binary: at /usr/local/bin, and wherever the unit's ExecStart expects it.
install -D -m 755 "$RKUBELET_BIN" "$R/usr/local/bin/rkubelet"
exec_path=$(sed -n 's/^ExecStart=[-@:+!]*\([^[:space:]]*\).*/\1/p' "$R/etc/systemd/system/rkubelet.service" | head -n1)
if [ -n "$exec_path" ] && [ "$exec_path" != /usr/local/bin/rkubelet ]; then
  case "$exec_path" in
  /*) install -D -m 755 "$RKUBELET_BIN" "$R$exec_path" ;;
  *) log "warning: ExecStart of rkubelet.service is not an absolute path: $exec_path" ;;
  esac
fi
# The config path from ExecStart (--config=X or --config X), default /etc/rkubelet/config.yaml.
config_path=$(sed -n 's/^ExecStart=.*--config[= ]\([^[:space:]]*\).*/\1/p' "$R/etc/systemd/system/rkubelet.service" | head -n1)
config_path=${config_path:-/etc/rkubelet/config.yaml}
if [ "$config_path" != /etc/rkubelet/config.yaml ]; then
  install -D -m 644 "$R/etc/rkubelet/config.yaml" "$R$config_path"
fi
static_pod_path=$(yaml_scalar "$R$config_path" staticPodPath)
[ -z "$static_pod_path" ] || install -d -m 755 "$R$static_pod_path"
pod_logs_dir=$(yaml_scalar "$R$config_path" podLogsDir)
install -d -m 755 "$R${pod_logs_dir:-/var/log/pods}" "$R/var/lib/rkubelet"

# --- CNI -------------------------------------------------------------------------------------
install -d -m 755 "$R/opt/cni/bin" "$R/etc/cni/net.d"
if [ -n "$CNI_DIR" ]; then
  CNI_SRC=$CNI_DIR
  for p in "${CNI_PLUGINS[@]}"; do
    [ -x "$CNI_DIR/$p" ] || continue
    rm -f "$R/opt/cni/bin/$p"
    install -m 755 "$CNI_DIR/$p" "$R/opt/cni/bin/$p"
  done
else
  CNI_SRC=/usr/lib/cni
  [ -x "$R/usr/lib/cni/bridge" ] || {
    if [ "$LIVE" = 1 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends containernetworking-plugins >/dev/null
    else
      die "$ROOT has no /usr/lib/cni/bridge: add containernetworking-plugins to the image, or pass --cni-dir"
    fi
  }
  for f in "$R"/usr/lib/cni/*; do
    ln -sfn "/usr/lib/cni/$(basename "$f")" "$R/opt/cni/bin/$(basename "$f")"
  done
fi
# rkubelet writes the conflist itself (10-rkubelet.conflist in cniConfDir) when its
# config has a podCIDR; otherwise the node gets this one.
agent_pod_cidr=$(yaml_scalar "$R$config_path" podCIDR)
if [ -n "$agent_pod_cidr" ]; then
  CNI_CONF="written by rkubelet (podCIDR $agent_pod_cidr)"
  POD_CIDR=$agent_pod_cidr
else
  CNI_CONF=/etc/cni/net.d/10-rkubelet.conflist
  put 644 /etc/cni/net.d/10-rkubelet.conflist <<EOF
{
  "cniVersion": "1.0.0",
  "name": "rkubelet",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "rkb0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$POD_CIDR" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
fi

# --- containerd --------------------------------------------------------------------------------
# containerd's SystemdCgroup must match rkubelet's cgroupDriver (rkubelet's default,
# like kubelet's, is cgroupfs; our configs say systemd).
CGROUP_DRIVER=$(yaml_scalar "$R$config_path" cgroupDriver)
CGROUP_DRIVER=${CGROUP_DRIVER:-cgroupfs}
case "$CGROUP_DRIVER" in
systemd) SYSTEMD_CGROUP=true ;;
cgroupfs) SYSTEMD_CGROUP=false ;;
*) die "unknown cgroupDriver $CGROUP_DRIVER in $config_path" ;;
esac
if [ -f "$R/etc/containerd/config.toml" ] && [ ! -f "$R/etc/containerd/config.toml.debian" ] &&
  ! grep -q 'rkubelet' "$R/etc/containerd/config.toml"; then
  cp -p "$R/etc/containerd/config.toml" "$R/etc/containerd/config.toml.debian"
fi
if [ -f "$SYSTEMD_DIR/containerd-config.toml" ]; then
  # The project's config, with the sandbox image the node imports and the cgroup
  # driver of rkubelet's config.
  CONTAINERD_SRC=$SYSTEMD_DIR/containerd-config.toml
  sed -e "s|^\([[:space:]]*sandbox_image[[:space:]]*=[[:space:]]*\).*|\1\"$SANDBOX_IMAGE\"|" \
    -e "s|^\([[:space:]]*SystemdCgroup[[:space:]]*=[[:space:]]*\).*|\1$SYSTEMD_CGROUP|" \
    "$CONTAINERD_SRC" | put 644 /etc/containerd/config.toml
  grep -q "sandbox_image = \"$SANDBOX_IMAGE\"" "$R/etc/containerd/config.toml" ||
    die "$CONTAINERD_SRC sets no sandbox_image"
  if grep -q 'SystemdCgroup' "$R/etc/containerd/config.toml"; then
    grep -q 'runtime_type = "io.containerd.runc.v2"' "$R/etc/containerd/config.toml" ||
      die "$CONTAINERD_SRC sets runc options without runtime_type = \"io.containerd.runc.v2\" (every RunPodSandbox would fail)"
  elif [ "$SYSTEMD_CGROUP" = true ]; then
    die "$CONTAINERD_SRC does not set SystemdCgroup, but rkubelet's cgroupDriver is systemd"
  fi
else
  CONTAINERD_SRC=default
  put 644 /etc/containerd/config.toml <<EOF
# Written by rkubelet tests/vm/provision.sh.
version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    # Imported from a tar at boot (rkubelet-images.service): the node has no registry.
    sandbox_image = "$SANDBOX_IMAGE"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        # Required as soon as runc options are set (else "container.Runtime.Name must be set").
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          # Must match rkubelet's cgroupDriver ($CGROUP_DRIVER).
          SystemdCgroup = $SYSTEMD_CGROUP
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/opt/cni/bin"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
EOF
fi

# --- images ---------------------------------------------------------------------------------------
install -d -m 755 "$R/var/lib/rkubelet-images"
rm -f "$R"/var/lib/rkubelet-images/*.tar
images=()
for t in "$IMAGES_DIR"/*.tar; do
  [ -f "$t" ] || continue
  install -m 644 "$t" "$R/var/lib/rkubelet-images/"
  images+=("$(basename "$t")")
done
put 644 /var/lib/rkubelet-images/sandbox-image <<<"$SANDBOX_IMAGE"
put 755 /usr/local/libexec/rkubelet/import-images <<'EOF'
#!/bin/sh
# Imports /var/lib/rkubelet-images/*.tar into containerd's k8s.io namespace (CRI's) and
# pins the sandbox image. Written by rkubelet tests/vm/provision.sh.
set -eu
dir=/var/lib/rkubelet-images
i=0
until ctr version >/dev/null 2>&1; do
  i=$((i + 1))
  [ "$i" -lt 120 ] || { echo "containerd not answering after 60 s" >&2; exit 1; }
  sleep 0.5
done
for t in "$dir"/*.tar; do
  [ -f "$t" ] || continue
  ctr -n k8s.io images import "$t"
done
if [ -f "$dir/sandbox-image" ]; then
  ctr -n k8s.io images label "$(cat "$dir/sandbox-image")" io.cri-containerd.pinned=pinned >/dev/null
fi
ctr -n k8s.io images ls -q
EOF
put 644 /etc/systemd/system/rkubelet-images.service <<'EOF'
# Written by rkubelet tests/vm/provision.sh.
[Unit]
Description=Import rkubelet node images into containerd
Requires=containerd.service
After=containerd.service
Before=rkubelet.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/libexec/rkubelet/import-images
TimeoutStartSec=300

[Install]
WantedBy=multi-user.target rkubelet.service
EOF

# --- kernel prerequisites ---------------------------------------------------------------------------
put 644 /etc/modules-load.d/rkubelet.conf <<'EOF'
overlay
bridge
veth
br_netfilter
EOF
put 644 /etc/sysctl.d/90-rkubelet.conf <<'EOF'
net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
EOF

# --- the e2e suite ---------------------------------------------------------------------------------
E2E=/opt/rkubelet-e2e
rm -rf "$R$E2E"
install -d "$R$E2E/e2e"
install -m 755 "$SCRIPT_DIR/guest/run-e2e.sh" "$R$E2E/run.sh"
install -m 644 "$SCRIPT_DIR/guest/lib.sh" "$R$E2E/lib.sh"
for c in "$SCRIPT_DIR"/e2e/*.sh; do
  [ -f "$c" ] && install -m 755 "$c" "$R$E2E/e2e/"
done
# The Debian package of these same binaries, for the package check (install, run, purge, restore).
if [ -n "$CNI_DIR" ] && [ -x "$CNI_DIR/loopback" ] && command -v dpkg-deb >/dev/null; then
  deb_bins=$(mktemp -d)
  ln -s "$RKUBELET_BIN" "$deb_bins/rkubelet"
  for p in "${CNI_PLUGINS[@]}"; do ln -s "$CNI_DIR/$p" "$deb_bins/$p"; done
  "$REPO/systemd/build-deb.sh" --bin-dir "$deb_bins" --out "$R$E2E/rkubelet.deb" >/dev/null || die "systemd/build-deb.sh failed"
  rm -rf "$deb_bins"
fi

# --- enable -----------------------------------------------------------------------------------------
units=(containerd.service rkubelet-images.service rkubelet.service)
if command -v systemctl >/dev/null 2>&1 && [ "$LIVE" = 0 ]; then
  systemctl --root="$ROOT" --quiet enable "${units[@]}" 2>&1 | grep -v '^Created symlink' >&2 || true
elif [ "$LIVE" = 1 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl --quiet enable "${units[@]}"
else
  # No systemctl here: the symlinks `enable` would make, from [Install] WantedBy=.
  for u in "${units[@]}"; do
    f=$R/etc/systemd/system/$u
    [ -f "$f" ] || f=$R/usr/lib/systemd/system/$u
    [ -f "$f" ] || f=$R/lib/systemd/system/$u
    for w in $(sed -n 's/^WantedBy=//p' "$f"); do
      install -d "$R/etc/systemd/system/$w.wants"
      ln -sfn "${f#"$R"}" "$R/etc/systemd/system/$w.wants/$u"
    done
  done
fi
for u in "${units[@]}"; do
  compgen -G "$R/etc/systemd/system/*.wants/$u" >/dev/null || die "enabling $u failed"
done

# --- record -----------------------------------------------------------------------------------------
{
  echo "provisioned_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "provision_script_sha256=$(sha256sum "$SCRIPT_DIR/provision.sh" | cut -d' ' -f1)"
  echo "rkubelet_sha256=$(sha256sum "$RKUBELET_BIN" | cut -d' ' -f1)"
  echo "rkubelet_source=$RKUBELET_BIN"
  echo "unit_source=$UNIT_SRC"
  echo "config_source=$CONFIG_SRC"
  echo "config_path=$config_path"
  echo "cni_source=$CNI_SRC"
  echo "cni_config=$CNI_CONF"
  echo "pod_cidr=$POD_CIDR"
  echo "cgroup_driver=$CGROUP_DRIVER"
  echo "containerd_config_source=$CONTAINERD_SRC"
  echo "sandbox_image=$SANDBOX_IMAGE"
  echo "images=${images[*]}"
} | put 644 /etc/rkubelet/provisioned
log "node provisioned in $ROOT: unit=$UNIT_SRC config=$CONFIG_SRC containerd=$CONTAINERD_SRC cgroupDriver=$CGROUP_DRIVER cni=$CNI_SRC sandbox=$SANDBOX_IMAGE images=${images[*]}"

if [ "$START" = 1 ]; then
  systemctl restart containerd.service
  systemctl restart rkubelet-images.service
  systemctl restart rkubelet.service
  systemctl --no-pager --lines=0 status rkubelet.service >&2 || true
fi
