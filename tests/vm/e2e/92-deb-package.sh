#!/bin/bash
# The Debian package (systemd/build-deb.sh, built from this run's binaries by provision.sh) on a systemd node: with
# the provisioned agent stopped and its unit and config set aside, `dpkg -i` installs the binary, the CNI plugins,
# the unit, /etc/default/rkubelet and the node configuration (kubeadm's kubelet config) as conffiles, and enables the
# service without starting it while the cluster CA it names is absent (as kubelet's package leaves kubelet until
# kubeadm join). Started with standalone flags in /etc/default/rkubelet's RKUBELET_EXTRA_ARGS, the packaged unit runs
# /usr/bin/rkubelet with them and serves, and a running static pod survives it all. `dpkg --purge` stops and
# disables the service and leaves none of its files; then the provisioned agent is put back for the checks after.
set -u
# shellcheck source=../guest/lib.sh
. "${E2E_LIB:-/opt/rkubelet-e2e/lib.sh}"

DEB=/opt/rkubelet-e2e/rkubelet.deb
BACKUP=/var/lib/rkubelet-e2e/deb-backup
PLUGINS=(bridge host-local loopback portmap)
if [ ! -f "$DEB" ]; then
  not_ok deb-installs "no $DEB (provision.sh builds it with systemd/build-deb.sh)"
  exit 0
fi
require_agent deb-installs

# A static pod that must keep running through the package's install, run and purge.
put_manifest deb-keeper <<EOF2
apiVersion: v1
kind: Pod
metadata: {name: deb-keeper}
spec:
  containers:
  - {name: app, image: $IMAGE, command: [sleep, "3600"]}
EOF2
wait_until 60 pod_running deb-keeper || not_ok deb-keeper-runs "deb-keeper not running: $(pod_field deb-keeper .status.phase)"
keeper_id=$(container_id deb-keeper app)

# --- set the provisioned agent aside ---------------------------------------------------------------
rm -rf "$BACKUP" && install -d "$BACKUP/cni"
systemctl stop rkubelet
cp -a /etc/systemd/system/rkubelet.service /usr/local/bin/rkubelet "$BACKUP/"
mv "$RKUBELET_CONFIG" "$BACKUP/config.yaml"
for p in "${PLUGINS[@]}"; do [ -e "/opt/cni/bin/$p" ] && mv "/opt/cni/bin/$p" "$BACKUP/cni/"; done
rm -f /etc/systemd/system/rkubelet.service /etc/systemd/system/multi-user.target.wants/rkubelet.service
systemctl daemon-reload

restore() {
  systemctl stop rkubelet 2>/dev/null
  install -m 644 "$BACKUP/rkubelet.service" /etc/systemd/system/rkubelet.service
  install -m 755 "$BACKUP/rkubelet" /usr/local/bin/rkubelet
  install -D -m 644 "$BACKUP/config.yaml" "$RKUBELET_CONFIG"
  # The purge took /opt/cni/bin with the package's plugins when nothing else was left in it.
  install -d /opt/cni/bin
  for p in "${PLUGINS[@]}"; do [ -e "$BACKUP/cni/$p" ] && install -m 755 "$BACKUP/cni/$p" "/opt/cni/bin/$p"; done
  systemctl daemon-reload
  systemctl unmask rkubelet >/dev/null 2>&1
  systemctl enable rkubelet >/dev/null 2>&1
  systemctl start rkubelet
}

# --- install -------------------------------------------------------------------------------------------
out=$(DEBIAN_FRONTEND=noninteractive dpkg -i "$DEB" 2>&1)
rc=$?
files_ok=1
for f in /usr/bin/rkubelet /lib/systemd/system/rkubelet.service /etc/default/rkubelet /etc/rkubelet/config.yaml \
  /etc/kubernetes/manifests "${PLUGINS[@]/#//opt/cni/bin/}"; do
  [ -e "$f" ] || { files_ok=0; note "missing after install: $f"; }
done
conffiles=$(dpkg-query -W -f='${Conffiles}' rkubelet 2>/dev/null | awk '{print $1}' | sort | tr '\n' ' ')
if [ $rc = 0 ] && [ $files_ok = 1 ] && [ "$conffiles" = "/etc/default/rkubelet /etc/rkubelet/config.yaml " ] &&
  [ "$(dpkg-query -W -f='${Status}' rkubelet)" = "install ok installed" ]; then
  ok deb-installs
  note "$(dpkg-query -W -f='${Package} ${Version} ${Architecture}, ${Installed-Size} KiB' rkubelet); $(/usr/bin/rkubelet --version)"
else
  not_ok deb-installs "dpkg -i rc $rc, files ok $files_ok, conffiles '$conffiles': $(echo "$out" | tail -n3 | tr '\n' ' ')"
fi
enabled=$(systemctl is-enabled rkubelet 2>&1)
active=$(systemctl is-active rkubelet 2>&1)
if [ "$enabled" = enabled ] && [ "$active" = inactive ] &&
  grep -q '^address: 0.0.0.0' /etc/rkubelet/config.yaml && grep -q 'clientCAFile: /etc/kubernetes/pki/ca.crt' /etc/rkubelet/config.yaml; then
  ok deb-enabled-not-started-without-cluster-ca
else
  not_ok deb-enabled-not-started-without-cluster-ca "is-enabled $enabled, is-active $active"
fi

# --- run the packaged unit with standalone flags from /etc/default/rkubelet ----------------------------------
ca=/var/lib/rkubelet/pki/kubelet.crt
[ -f "$ca" ] || ca=$(find /var/lib/rkubelet/pki -name '*.crt' | head -n1)
sed -i "s|^RKUBELET_EXTRA_ARGS=.*|RKUBELET_EXTRA_ARGS=\"--pod-manifest-path=$STATIC_POD_PATH --address=127.0.0.1 --read-only-port=$RO_PORT --authorization-mode=AlwaysAllow --authentication-token-webhook=false --client-ca-file=$ca --cgroup-driver=$(cfg cgroupDriver systemd)\"|" /etc/default/rkubelet
systemctl start rkubelet
pid=$(systemctl show -p MainPID --value rkubelet)
if wait_until 60 healthz && [ "$(readlink "/proc/$pid/exe")" = /usr/bin/rkubelet ] &&
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--read-only-port=$RO_PORT"; then
  ok deb-unit-runs-with-default-args
  note "packaged unit: $(tr '\0' ' ' <"/proc/$pid/cmdline" | cut -c1-300)"
else
  not_ok deb-unit-runs-with-default-args "active $(systemctl is-active rkubelet), exe $(readlink "/proc/$pid/exe" 2>/dev/null): $(rkubelet_last_error)"
fi
if wait_until 30 pod_running deb-keeper && [ "$(container_id deb-keeper app)" = "$keeper_id" ]; then
  ok deb-agent-keeps-the-running-pod
else
  not_ok deb-agent-keeps-the-running-pod "deb-keeper $(pod_field deb-keeper .status.phase), container $(container_id deb-keeper app) (was $keeper_id)"
fi

# --- purge ---------------------------------------------------------------------------------------------
out=$(DEBIAN_FRONTEND=noninteractive dpkg --purge rkubelet 2>&1)
rc=$?
left=""
for f in /usr/bin/rkubelet /lib/systemd/system/rkubelet.service /etc/default/rkubelet /etc/rkubelet/config.yaml \
  /etc/systemd/system/multi-user.target.wants/rkubelet.service "${PLUGINS[@]/#//opt/cni/bin/}"; do
  [ -e "$f" ] && left+=" $f"
done
if [ $rc = 0 ] && [ -z "$left" ] && [ "$(systemctl is-active rkubelet 2>&1)" != active ] &&
  ! dpkg-query -W -f='${Status}' rkubelet 2>/dev/null | grep -q installed && [ -n "$(task_pid "$keeper_id")" ]; then
  ok deb-purges-cleanly
else
  not_ok deb-purges-cleanly "dpkg --purge rc $rc, left:${left:- nothing}, rkubelet $(systemctl is-active rkubelet 2>&1), keeper task '$(task_pid "$keeper_id")': $(echo "$out" | tail -n2 | tr '\n' ' ')"
fi

# --- put the provisioned agent back --------------------------------------------------------------------
restore
if wait_until 60 healthz && wait_until 30 pod_running deb-keeper && [ "$(container_id deb-keeper app)" = "$keeper_id" ] &&
  [ "$(systemctl is-enabled rkubelet)" = enabled ] && [ -x /opt/cni/bin/bridge ] && [ -x /opt/cni/bin/host-local ]; then
  ok deb-provisioned-agent-restored
else
  not_ok deb-provisioned-agent-restored "rkubelet $(systemctl is-active rkubelet) $(systemctl is-enabled rkubelet 2>&1), plugins: $(ls /opt/cni/bin 2>&1 | tr '\n' ' '): $(rkubelet_last_error)"
fi
remove_manifest deb-keeper
wait_until 60 pod_absent deb-keeper || not_ok deb-keeper-removed "deb-keeper still present: $(pod_field deb-keeper .status.phase)"
rm -rf "$BACKUP"
