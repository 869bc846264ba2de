#!/usr/bin/env bash
# Runs rkubelet standalone on this machine (Debian, as root): installs containerd and the tools it needs if missing,
# builds the test images into a local registry on 127.0.0.1:5000 (no public registry is needed), builds rkubelet and
# its CNI plugins (installing Rust with rustup when cargo is missing), installs the containerd config and rkubelet's
# standalone config (systemd/standalone.yaml) and example manifests from systemd/, starts
# everything (as systemd services where systemd runs, as background processes otherwise) and shows the pods.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

log() { printf 'standalone: %s\n' "$*"; }
[ "$(id -u)" = 0 ] || { echo "standalone.sh: run as root" >&2; exit 1; }

bash tests/scripts/install-deps.sh
bash tests/scripts/build-images.sh

export PATH=$HOME/.cargo/bin:$PATH
if ! command -v cargo >/dev/null 2>&1; then
  # Debian's rustc is older than the workspace's rust-version; rustup's stable toolchain is what the build needs.
  log "cargo is missing: installing Rust's stable toolchain with rustup into $HOME/.cargo (https://rustup.rs)"
  log "  (to do it yourself: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- --profile minimal)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y -q --profile minimal --default-toolchain stable ||
    { echo "standalone.sh: installing Rust failed; install it from https://rustup.rs and run this again" >&2; exit 1; }
fi
log "building rkubelet and its CNI plugins (release)"
cargo build --release -p rkubelet -p cni-plugins
install -m 0755 target/release/rkubelet /usr/local/bin/rkubelet
install -d /opt/cni/bin
install -m 0755 target/release/{bridge,host-local,loopback,portmap} /opt/cni/bin/

log "installing configuration"
install -d /etc/rkubelet /etc/rkubelet/manifests /etc/containerd /etc/containerd/certs.d/127.0.0.1:5000
if [ -f /etc/containerd/config.toml ] && ! cmp -s /etc/containerd/config.toml systemd/containerd-config.toml \
   && [ ! -f /etc/containerd/config.toml.before-rkubelet ]; then
  cp /etc/containerd/config.toml /etc/containerd/config.toml.before-rkubelet
fi
install -m 0644 systemd/containerd-config.toml /etc/containerd/config.toml
cat > /etc/containerd/certs.d/127.0.0.1:5000/hosts.toml <<'TOML'
server = "http://127.0.0.1:5000"
[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]
TOML
# A config from elsewhere (the package's node config, a joined node's) is kept aside, not run standalone.
if [ -f /etc/rkubelet/config.yaml ] && ! head -n1 /etc/rkubelet/config.yaml | grep -q 'rkubelet standalone configuration'; then
  log "keeping the existing /etc/rkubelet/config.yaml as /etc/rkubelet/config.yaml.before-standalone"
  mv /etc/rkubelet/config.yaml /etc/rkubelet/config.yaml.before-standalone
fi
if [ ! -f /etc/rkubelet/config.yaml ]; then
  install -m 0644 systemd/standalone.yaml /etc/rkubelet/config.yaml
  # Without systemd as init, both rkubelet and runc manage cgroups directly (cgroupfs driver).
  if [ ! -d /run/systemd/system ]; then
    sed -i 's/^cgroupDriver: systemd/cgroupDriver: cgroupfs/' /etc/rkubelet/config.yaml
  fi
  # Pod-level enforcement needs cgroup v2 with the cpu and memory controllers; say so and run without it otherwise.
  if ! grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null || ! grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then
    log "no cgroup v2 cpu/memory controllers on this host: running with cgroupsPerQOS: false (limits per container only)"
    sed -i 's/^cgroupsPerQOS: true/cgroupsPerQOS: false/' /etc/rkubelet/config.yaml
  fi
fi
if grep -q '^cgroupDriver: cgroupfs' /etc/rkubelet/config.yaml; then
  sed -i 's/SystemdCgroup = true/SystemdCgroup = false/' /etc/containerd/config.toml
fi
install -m 0644 systemd/manifests/*.yaml /etc/rkubelet/manifests/
[ -f /etc/default/rkubelet ] || install -m 0644 systemd/rkubelet.default /etc/default/rkubelet

if [ -d /run/systemd/system ]; then
  log "starting containerd and rkubelet as systemd services"
  install -m 0644 systemd/rkubelet.service /etc/systemd/system/rkubelet.service
  systemctl daemon-reload
  systemctl enable containerd rkubelet >/dev/null 2>&1 || true
  systemctl restart containerd
  systemctl restart rkubelet
else
  log "no systemd here: starting containerd and rkubelet in the background (logs in /var/log/rkubelet*.log)"
  if ! ctr --address /run/containerd/containerd.sock version >/dev/null 2>&1; then
    setsid nohup containerd --config /etc/containerd/config.toml >/var/log/rkubelet-containerd.log 2>&1 </dev/null &
    for _ in $(seq 100); do ctr --address /run/containerd/containerd.sock version >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  pkill -TERM -x rkubelet 2>/dev/null && sleep 1 || true
  setsid nohup /usr/local/bin/rkubelet --config=/etc/rkubelet/config.yaml >/var/log/rkubelet.log 2>&1 </dev/null &
fi

port=$(sed -n 's/^readOnlyPort: *//p' /etc/rkubelet/config.yaml)
port=${port:-10255}
log "waiting for the example pods to run (read-only API on 127.0.0.1:$port)"
want=$(ls /etc/rkubelet/manifests/*.y*ml | wc -l)
for _ in $(seq 120); do
  running=$(curl -sf "127.0.0.1:$port/pods" | jq '[.items[] | select(.status.phase == "Running")] | length' 2>/dev/null || echo 0)
  [ "$running" -ge "$want" ] && break
  sleep 1
done
curl -sf "127.0.0.1:$port/pods" | jq -r '
  ["POD", "PHASE", "POD IP", "RESTARTS", "CONTAINERS"],
  (.items[] | [.metadata.namespace + "/" + .metadata.name, .status.phase, (.status.podIP // "-"),
     ([.status.containerStatuses[]?.restartCount] | add // 0 | tostring),
     ([.status.containerStatuses[]? | .name + "=" + (.state | keys[0])] | join(","))])
  | @tsv' | column -t -s $'\t'
web_ip=$(curl -sf "127.0.0.1:$port/pods" | jq -r '.items[] | select(.metadata.name | startswith("hello-web")) | .status.podIP // empty')
if [ -n "$web_ip" ]; then
  log "hello-web answers on $web_ip:8080: $(curl -sf --max-time 5 "http://$web_ip:8080/" || echo '(no answer)')"
fi
log "status: curl -s 127.0.0.1:$port/pods | jq; manifests: /etc/rkubelet/manifests; logs: /var/log/pods"
[ "$running" -ge "$want" ] || { log "not all pods are running"; exit 1; }
