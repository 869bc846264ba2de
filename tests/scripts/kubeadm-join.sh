#!/usr/bin/env bash
# `kubeadm join` with rkubelet as the kubelet, as a new user would do it on a kubeadm-made cluster: the kit's control
# plane made joinable (`kubeadm-join-command.sh`), the kit's real `kubeadm` v1.28.7 with `kubelet` on the PATH being
# rkubelet, and rkubelet started the way kubeadm's systemd drop-in starts the kubelet:
#   kubelet --bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf \
#           --config=/var/lib/kubelet/config.yaml $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
# Everything kubeadm writes (/etc/kubernetes, /var/lib/kubelet) and the node's files (/var/log/pods, /etc/cni/net.d)
# live in a private mount namespace over temporary folders; containerd is private too (its own socket and state).
# Checks: kubeadm's preflight reads `kubelet --version`, the join finishes, the node is Ready, a pod runs on it, and
# `kubectl logs` and `kubectl exec` work through :10250 with the client CA kubeadm distributes.
# Prints `kubeadm-join: ok` last on success; every step's transcript goes to stderr.
# env: RKUBELET_BIN (default target/debug/rkubelet), RKUBELET_CNI_BIN_DIR (default target/debug),
#      RKUBELET_K8S_KIT (default ../shared/k8s), RKUBELET_NODE_IP (default: the first global IPv4 address),
#      RKUBELET_JOIN_PORT (the node's :10250, default 10250).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
KIT=${RKUBELET_K8S_KIT:-$REPO/../shared/k8s}
BIN=$(readlink -f "${RKUBELET_BIN:-$REPO/target/debug/rkubelet}")
CNI=$(readlink -f "${RKUBELET_CNI_BIN_DIR:-$REPO/target/debug}")
NODE=rkubelet-join
PORT=${RKUBELET_JOIN_PORT:-10250}
# A private control plane: its own home and ports whatever the caller's K8S_* say (the test runner exports the
# shared kit's, whose API server already holds 6443).
export K8S_HOME=${RKUBELET_JOIN_K8S_HOME:-/var/lib/rkubelet-test/join-kit}
export K8S_APISERVER_PORT=56443 K8S_ETCD_PORT=52379 K8S_KCM_PORT=51257 K8S_SCHED_PORT=51259
NODE_IP=${RKUBELET_NODE_IP:-$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1)}
log() { printf 'kubeadm-join: [%3ss] %s\n' "$SECONDS" "$*" >&2; }
fail() {
  log "FAILED: $*"
  exit 1
}

# The part inside the private mount namespace: the folders kubeadm writes, containerd, the join, the agent.
if [ "${1:-}" = --inside ]; then
  STATE=$2 SOCK=$3 JOIN=$4
  for d in /etc/kubernetes /var/lib/kubelet /var/log/pods /etc/cni/net.d; do
    mkdir -p "$STATE/fs$d"
    mount --bind "$STATE/fs$d" "$d"
  done
  cat >"$STATE/containerd.toml" <<T
version = 2
root = "$STATE/containerd-root"
state = "$(dirname "$SOCK")/state"
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "127.0.0.1:5000/pause:3.9"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI"
    conf_dir = "/etc/cni/net.d"
T
  containerd --config "$STATE/containerd.toml" >"$STATE/containerd.log" 2>&1 &
  echo $! >"$STATE/containerd.pid"
  for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
  mkdir -p "$STATE/path"
  ln -sf "$BIN" "$STATE/path/kubelet"
  export PATH=$STATE/path:$PATH
  log "kubelet --version: $(kubelet --version)"
  # kubeadm cannot restart a kubelet service here (no init system in this namespace): it writes the files and
  # waits for the node's TLS bootstrap, which the agent started below does, as the drop-in would.
  # shellcheck disable=SC2086 # the join command is words
  $JOIN --cri-socket "unix://$SOCK" --node-name "$NODE" --ignore-preflight-errors=Swap,FileExisting-crictl,SystemVerification \
    -v=1 >"$STATE/kubeadm.log" 2>&1 &
  join_pid=$!
  for _ in $(seq 600); do
    [ -s /var/lib/kubelet/kubeadm-flags.env ] && [ -s /var/lib/kubelet/config.yaml ] && break
    kill -0 "$join_pid" 2>/dev/null || break
    sleep 0.1
  done
  [ -s /var/lib/kubelet/kubeadm-flags.env ] || { cat "$STATE/kubeadm.log" >&2; fail "kubeadm wrote no kubeadm-flags.env"; }
  log "kubeadm-flags.env: $(cat /var/lib/kubelet/kubeadm-flags.env)"
  # shellcheck disable=SC1091
  . /var/lib/kubelet/kubeadm-flags.env
  KUBELET_EXTRA_ARGS="--node-ip=$NODE_IP --port=$PORT --root-dir=$STATE/root"
  # shellcheck disable=SC2086 # as the drop-in's ExecStart expands them
  kubelet --bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf \
    --config=/var/lib/kubelet/config.yaml $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS >"$STATE/rkubelet.log" 2>&1 &
  echo $! >"$STATE/rkubelet.pid"
  rc=0
  wait "$join_pid" || rc=$?
  cat "$STATE/kubeadm.log" >&2
  [ "$rc" = 0 ] || { tail -n 30 "$STATE/rkubelet.log" >&2; fail "kubeadm join exited $rc"; }
  log "kubeadm join finished"
  # Keep the namespace (and the agent in it) until the outer part is done checking.
  touch "$STATE/joined"
  while [ ! -e "$STATE/done" ]; do sleep 0.2; done
  exit 0
fi

[ "$(id -u)" = 0 ] || { log "run as root"; exit 2; }
[ -f "$KIT/up.sh" ] || { log "no kit at $KIT"; exit 2; }
[ -n "$NODE_IP" ] || { log "no global IPv4 address for --node-ip"; exit 2; }
mkdir -p "$(dirname "$K8S_HOME")"
exec 8>"$K8S_HOME.lock"
flock -n 8 || { log "another join test uses $K8S_HOME"; exit 2; }
STATE=$(mktemp -d /var/lib/rkubelet-test/kubeadm-join.XXXXXX)
SOCK=/run/rkt-join/containerd.sock
CREATED=()
for d in /etc/kubernetes /var/lib/kubelet /var/log/pods /etc/cni/net.d; do
  [ -d "$d" ] || { mkdir -p "$d"; CREATED+=("$d"); }
done
INNER_PID=""
cleanup() {
  set +e
  touch "$STATE/done"
  [ -s "$STATE/rkubelet.pid" ] && kill "$(cat "$STATE/rkubelet.pid")" 2>/dev/null
  sleep 0.5
  if [ -s "$STATE/containerd.pid" ]; then
    for id in $(ctr --address "$SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$SOCK" -n k8s.io tasks kill -s KILL "$id" >/dev/null 2>&1
    done
    # A standalone agent with no pods removes every sandbox and container through CRI (and their network namespaces).
    mkdir -p "$STATE/empty"
    printf 'apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncontainerRuntimeEndpoint: unix://%s\ncgroupsPerQOS: false\nreadOnlyPort: 0\nenableServer: false\nhealthzPort: 0\npodLogsDir: %s/logs\nstaticPodPath: %s/empty\ncniConfDir: %s/cni\n' \
      "$SOCK" "$STATE" "$STATE" "$STATE" >"$STATE/cleanup.yaml"
    "$BIN" --config "$STATE/cleanup.yaml" --root-dir "$STATE/cleanup-root" --hostname-override "$NODE" >"$STATE/cleanup.log" 2>&1 &
    cleaner=$!
    for _ in $(seq 60); do
      [ -z "$(ctr --address "$SOCK" -n k8s.io containers ls -q 2>/dev/null)" ] && break
      sleep 1
    done
    kill "$cleaner" 2>/dev/null; wait "$cleaner" 2>/dev/null
    kill "$(cat "$STATE/containerd.pid")" 2>/dev/null
  fi
  [ -n "$INNER_PID" ] && wait "$INNER_PID" 2>/dev/null
  grep -F " $STATE" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l
  grep ' /run/rkt-join' /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l
  ip link del cni0 2>/dev/null
  bash "$KIT/down.sh" >/dev/null 2>&1
  for d in "${CREATED[@]}"; do rmdir "$d" 2>/dev/null; done
  rm -rf "$STATE" /run/rkt-join
}
trap cleanup EXIT

kc=$(bash "$KIT/up.sh" --wipe | tail -1)
log "control plane up"
kubectl() { "$K8S_HOME/bin/kubectl" --kubeconfig "$kc" "$@"; }
cat >"$STATE/kubelet-config.yaml" <<T
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
$(grep -q cgroup2 <(stat -fc %T /sys/fs/cgroup) || echo 'cgroupsPerQOS: false')
T
# kubeadm's upload-config annotates the control-plane Node once its kubelet has labelled it, which the kit's control
# plane (no kubelet) never does: it would retry for two minutes before giving up harmlessly. A labelled,
# unschedulable stand-in lets it finish at once.
kubectl create -f - >/dev/null <<Y
apiVersion: v1
kind: Node
metadata: {name: kit-control-plane, labels: {kubernetes.io/hostname: kit-control-plane}}
spec: {unschedulable: true}
Y
join=$(bash "$KIT/kubeadm-join-command.sh" "$STATE/kubelet-config.yaml" | tail -1)
log "join command: $join"
mkdir -p /run/rkt-join
unshare -m --propagation private bash "$0" --inside "$STATE" "$SOCK" "$join" &
INNER_PID=$!
for _ in $(seq 600); do
  [ -e "$STATE/joined" ] && break
  kill -0 "$INNER_PID" 2>/dev/null || fail "the join did not finish (see above)"
  sleep 0.5
done
[ -e "$STATE/joined" ] || fail "the join did not finish in 5 min"
for _ in $(seq 120); do
  [ "$(kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] && break
  sleep 0.5
done
kubectl get node "$NODE" -o wide >&2
[ "$(kubectl get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ] ||
  { tail -n 40 "$STATE/rkubelet.log" >&2; fail "node $NODE not Ready"; }
log "node $NODE Ready"
kubectl apply -f - >&2 <<Y
apiVersion: v1
kind: Pod
metadata: {name: joined, namespace: default}
spec:
  nodeName: $NODE
  containers:
  - name: app
    image: 127.0.0.1:5000/busybox:1.36
    command: [sh, -c, 'echo hello from the joined node; sleep 3600']
Y
kubectl wait --for=condition=Ready pod/joined --timeout=90s >&2 || { tail -n 40 "$STATE/rkubelet.log" >&2; fail "pod not Ready"; }
logs=$(kubectl logs joined)
[ "$logs" = "hello from the joined node" ] || fail "kubectl logs: $logs"
log "kubectl logs: $logs"
out=$(kubectl exec joined -- sh -c 'echo exec $((6*7))')
[ "$out" = "exec 42" ] || fail "kubectl exec: $out"
log "kubectl exec: $out"
kubectl delete pod joined --grace-period=1 >&2
echo "kubeadm-join: ok"
