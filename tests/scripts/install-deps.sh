#!/usr/bin/env bash
# Installs the Debian packages the integration tests need (containerd, runc, the
# reference CNI plugins, a registry, image tools, a static busybox, a C compiler for
# the pause binary, ...). Idempotent: when everything is present it only checks and
# exits (well under a second) without touching apt.
#
# Services: the packages must not leave anything running that the tests trip over.
#   * containerd: Debian's unit serves /run/containerd/containerd.sock with root
#     /var/lib/containerd. The tests run private instances (own socket, root and
#     state), so a host containerd does not conflict: if it runs, it is left alone,
#     and if this script installs containerd it is NOT started (policy-rc.d, see apt.sh).
#   * docker-registry: Debian's default config listens on :5000 (all interfaces)
#     with htpasswd auth, so it answers 401 to anonymous pushes/pulls and holds the
#     port our own registry needs. When its config still has an `auth:` section it
#     is stopped and disabled; a registry reconfigured without auth is left alone
#     (build-images.sh reuses anything that answers GET /v2/ with 200 on 5000).
#
# Environment: RKUBELET_KEEP_DEBIAN_REGISTRY=1 leaves Debian's registry alone.
set -euo pipefail

PKGS=(
  containerd runc containernetworking-plugins docker-registry skopeo umoci
  busybox-static iptables iproute2 gcc libc6-dev curl jq util-linux
  # prometheus: the scrape test runs /usr/bin/prometheus as its own child (own port and storage); the package's
  # service is not started at install (policy-rc.d) and is disabled below.
  prometheus
)

log() { printf 'install-deps: %s\n' "$*"; }

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=apt.sh
. "$SCRIPT_DIR/apt.sh"

# The control-plane kit beside the checkout (tests/run.sh starts it) installs etcd-server
# itself, but without a policy-rc.d: on a machine without systemd Debian's etcd would
# then start on the kit's port 2379. Installed here, nothing starts.
KIT=$(cd "$SCRIPT_DIR/../.." && pwd)/../shared/k8s
if [ -x "$KIT/up.sh" ]; then
  # conntrack: kubeadm's join preflight requires it (kube-proxy's tool).
  PKGS+=(etcd-server zstd openssl conntrack)
fi

have_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

debian_registry_conflicts() {
  local cfg=/etc/docker/registry/config.yml
  [ "${RKUBELET_KEEP_DEBIAN_REGISTRY:-0}" = 1 ] && return 1
  [ -f "$cfg" ] && grep -q '^auth:' "$cfg"
}

disable_debian_registry() {
  debian_registry_conflicts || return 0
  if have_systemd; then
    if systemctl is-enabled --quiet docker-registry.service 2>/dev/null ||
      systemctl is-active --quiet docker-registry.service 2>/dev/null; then
      log "stopping and disabling Debian's docker-registry.service (it requires auth and holds port 5000)"
      systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
    fi
  else
    local pidfile=/var/run/docker-registry.pid
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      log "stopping Debian's docker-registry (it requires auth and holds port 5000)"
      /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
    fi
    if compgen -G '/etc/rc[2-5].d/S*docker-registry' >/dev/null && command -v update-rc.d >/dev/null; then
      log "disabling Debian's docker-registry init script"
      update-rc.d docker-registry disable >/dev/null 2>&1 || true
    fi
  fi
}

# Debian's prometheus.service would scrape :9100 and keep a TSDB under /var/lib: the test needs only the binary.
disable_debian_prometheus() {
  if have_systemd && systemctl is-enabled --quiet prometheus.service 2>/dev/null; then
    log "disabling Debian's prometheus.service (the scrape test runs its own prometheus)"
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  elif ! have_systemd && compgen -G '/etc/rc[2-5].d/S*prometheus' >/dev/null && command -v update-rc.d >/dev/null; then
    update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
}

main() {
  local missing
  missing=$(apt_missing "${PKGS[@]}")
  if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
      log "missing packages: $(echo "$missing" | tr '\n' ' ')" >&2
      log "run this script as root to install them" >&2
      exit 1
    fi
    # shellcheck disable=SC2086 # one package name per word
    apt_ensure $missing || exit 1
  fi
  if [ "$(id -u)" = 0 ]; then
    disable_debian_registry
    disable_debian_prometheus
  fi
  # The reference CNI plugins the tests' conflist uses.
  local p
  for p in bridge host-local portmap loopback; do
    if [ ! -x "/usr/lib/cni/$p" ]; then
      log "missing /usr/lib/cni/$p (containernetworking-plugins broken?)" >&2
      exit 1
    fi
  done
  if [ -z "$missing" ]; then
    log "all dependencies present"
  fi
}

main "$@"
