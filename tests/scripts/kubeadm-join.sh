#!/usr/bin/env bash
# `kubeadm join` with rkubelet as the kubelet, as a new user would do it on a kubeadm-made cluster: the kit's control
# plane made joinable (`kubeadm-join-command.sh`), the kit's real `kubeadm` v1.28.7 with `kubelet` on the PATH being
# rkubelet, and rkubelet started the way kubeadm's systemd drop-in starts the kubelet:
#   kubelet --bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf \
#           --config=/var/lib/kubelet/config.yaml $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
# Everything kubeadm writes (/etc/kubernetes, /var/lib/kubelet) and the node's files (/var/log/pods, /etc/cni/net.d)
# live in a private mount namespace over temporary folders; containerd is private too (its own socket and state).
# Checks: kubeadm's preflight reads `kubelet --version`, the join finishes, the node is Ready, a pod runs on it, and
# `kubectl logs` and `kubectl exec` work through :10250 with the client CA kubeadm distributes; then kube-proxy runs
# on the node as kubeadm deploys it (a DaemonSet, hostNetwork and privileged, the kit's kube-proxy as the image) and a
# ClusterIP Service answers from another pod and from the host. kube-proxy's chains and sysctls are undone after.
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
  # For a look at the failed state by hand: the run waits while this file exists.
  while [ -n "${RKUBELET_JOIN_HOLD:-}" ] && [ -e "$RKUBELET_JOIN_HOLD" ]; do sleep 1; done
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
  # kubeadm wants ip_forward on before the join; the bridge plugin turns it on with the first gateway it sets up, as
  # the reference plugin does. Left off on a fresh host rather than set here: a test must not change the host.
  ignored=Swap,FileExisting-crictl,SystemVerification
  [ "$(cat /proc/sys/net/ipv4/ip_forward)" = 1 ] || ignored=$ignored,FileContent--proc-sys-net-ipv4-ip_forward
  # shellcheck disable=SC2086 # the join command is words
  $JOIN --cri-socket "unix://$SOCK" --node-name "$NODE" --ignore-preflight-errors=$ignored \
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
  # As an operator adds flags in /etc/default/kubelet. The test disk is shared and may be over 85 % full: kubeadm's
  # KubeletConfiguration keeps kubelet's relative thresholds (imagefs.available<15%), under which the node reports
  # DiskPressure and refuses every pod, and image GC would remove the images the test pods run.
  KUBELET_EXTRA_ARGS="--node-ip=$NODE_IP --port=$PORT --root-dir=$STATE/root \
--eviction-hard=memory.available<100Mi,nodefs.available<100Mi,nodefs.inodesFree<1%,imagefs.available<100Mi \
--image-gc-high-threshold=100 --image-gc-low-threshold=99"
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
# What kube-proxy changes on the host besides its chains (conntrack limits and timeouts, route_localnet): put back.
PROXY_SYSCTLS="/proc/sys/net/ipv4/conf/all/route_localnet /proc/sys/net/netfilter/nf_conntrack_max
  /sys/module/nf_conntrack/parameters/hashsize /proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established
  /proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait"
# The KUBE- chains ("family table chain"): those that appear while kube-proxy runs are its doing (it adds a
# KUBE-FIREWALL of its own where none was).
kube_chains() {
  local f t
  for f in iptables ip6tables; do
    for t in filter nat mangle raw; do
      "$f-save" -t "$t" 2>/dev/null | sed -n "s/^:\(KUBE-[^ ]*\) .*/$f $t \1/p"
    done
  done | sort
}
# kube-proxy --cleanup leaves some of its chains (KUBE-MARK-MASQ, KUBE-PROXY-CANARY, KUBE-PROXY-FIREWALL, ...): the
# ones that were not there before it ran are unlinked, flushed and deleted.
remove_kube_proxy_leftovers() {
  [ -s "$STATE/chains.before" ] || [ -e "$STATE/sysctls.before" ] || return 0
  "$K8S_HOME/bin/kube-proxy" --cleanup >"$STATE/kube-proxy-cleanup.log" 2>&1
  local new f t c
  new=$(comm -13 "$STATE/chains.before" <(kube_chains))
  while read -r f t c; do
    [ -n "$c" ] || continue
    "$f" -w -t "$t" -S | grep -E -- "-j $c( |\$)" | sed 's/^-A /-D /' |
      while read -r rule; do eval "$f -w -t $t $rule"; done
  done <<<"$new"
  while read -r f t c; do [ -n "$c" ] && "$f" -w -t "$t" -F "$c"; done <<<"$new"
  while read -r f t c; do [ -n "$c" ] && "$f" -w -t "$t" -X "$c"; done <<<"$new"
  while read -r f v; do echo "$v" >"$f"; done <"$STATE/sysctls.before"
  [ -e "$STATE/no-xtables-lock" ] && rm -f /run/xtables.lock
}
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
  remove_kube_proxy_leftovers
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
kubectl wait --for=condition=Ready pod/joined --timeout=90s >&2 || {
  kubectl get pod joined -o jsonpath='{.status}' >&2 || true
  kubectl get node "$NODE" -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}' >&2 || true
  tail -n 40 "$STATE/rkubelet.log" >&2
  fail "pod not Ready"
}
logs=$(kubectl logs joined)
[ "$logs" = "hello from the joined node" ] || fail "kubectl logs: $logs"
log "kubectl logs: $logs"
out=$(kubectl exec joined -- sh -c 'echo exec $((6*7))')
[ "$out" = "exec 42" ] || fail "kubectl exec: $out"
log "kubectl exec: $out"
kubectl delete pod joined --grace-period=1 >&2

# kube-proxy, deployed as `kubeadm init` deploys it (its addon phase: ServiceAccount, RBAC, ConfigMap, DaemonSet) with
# the kit's kube-proxy as the image, then a ClusterIP Service in front of a pod on the node.
image=$(bash "$REPO/tests/scripts/build-kube-proxy-image.sh" "$K8S_HOME/bin/kube-proxy" | tail -1)
log "kube-proxy image: $image"
kube_chains >"$STATE/chains.before"
for f in $PROXY_SYSCTLS; do
  if [ -e "$f" ]; then echo "$f $(cat "$f")"; fi
done >"$STATE/sysctls.before"
[ -e /run/xtables.lock ] || touch "$STATE/no-xtables-lock"
cat >"$STATE/kubeadm-cluster.yaml" <<Y
apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
kubernetesVersion: ${image##*:}
clusterName: kit
controlPlaneEndpoint: 127.0.0.1:$K8S_APISERVER_PORT
imageRepository: ${image%/kube-proxy:*}
networking: {podSubnet: 10.244.0.0/16, serviceSubnet: 10.96.0.0/12, dnsDomain: cluster.local}
Y
"$K8S_HOME/bin/kubeadm" init phase addon kube-proxy --config "$STATE/kubeadm-cluster.yaml" --kubeconfig "$kc" >&2 ||
  fail "kubeadm init phase addon kube-proxy"
proxy_pod=""
for _ in $(seq 180); do
  proxy_pod=$(kubectl -n kube-system get pods -l k8s-app=kube-proxy --field-selector "spec.nodeName=$NODE" \
    -o jsonpath='{.items[?(@.status.phase=="Running")].metadata.name}' 2>/dev/null)
  [ -n "$proxy_pod" ] && break
  sleep 0.5
done
kubectl -n kube-system get ds,pods -o wide >&2
[ -n "$proxy_pod" ] || { tail -n 40 "$STATE/rkubelet.log" >&2; fail "no kube-proxy pod running on $NODE"; }
log "kube-proxy DaemonSet pod $proxy_pod running on $NODE"
kubectl apply -f - >&2 <<Y
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  nodeName: $NODE
  containers:
  - name: web
    image: 127.0.0.1:5000/busybox:1.36
    command: [sh, -c, 'mkdir /www && echo hello through the service >/www/index.html && exec httpd -f -p 8080 -h /www']
    ports: [{containerPort: 8080}]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default}
spec:
  nodeName: $NODE
  containers:
  - name: client
    image: 127.0.0.1:5000/busybox:1.36
    command: [sleep, '3600']
Y
kubectl wait --for=condition=Ready pod/web pod/client --timeout=90s >&2 || fail "web and client pods not Ready"
cluster_ip=$(kubectl get service web -o jsonpath='{.spec.clusterIP}')
log "Service web: ClusterIP $cluster_ip:80 -> pod web :8080"
# `timeout` rather than wget's own -T: Debian's busybox 1.35 wget dies with SIGSEGV when given -T.
from_pod="" from_host=""
for _ in $(seq 60); do
  [ -z "$from_pod" ] && from_pod=$(kubectl exec client -- timeout 5 wget -q -O- "http://$cluster_ip/" 2>/dev/null || true)
  [ -z "$from_host" ] && from_host=$(curl -s -m 2 "http://$cluster_ip/" || true)
  [ -n "$from_pod" ] && [ -n "$from_host" ] && break
  sleep 1
done
service_diagnostics() {
  kubectl -n kube-system logs "$proxy_pod" 2>&1 | tail -n 20 >&2
  kubectl get endpointslices -l kubernetes.io/service-name=web -o wide >&2
  iptables-save -t nat | grep -E 'default/web|KUBE-SERVICES|KUBE-POSTROUTING|KUBE-MARK' >&2
  kubectl exec client -- ip route >&2
}
[ "$from_pod" = "hello through the service" ] ||
  { service_diagnostics; fail "from pod client, http://$cluster_ip/: '$from_pod'"; }
log "from pod client, http://$cluster_ip/: $from_pod"
[ "$from_host" = "hello through the service" ] ||
  { service_diagnostics; fail "from the host, http://$cluster_ip/: '$from_host'"; }
log "from the host, http://$cluster_ip/: $from_host"
kubectl delete pod web client --grace-period=1 >&2
echo "kubeadm-join: ok"
