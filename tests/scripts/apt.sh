# Package installs that fit what the machine already has. Sourced by
# tests/scripts/install-deps.sh and tests/vm/common.sh; defines apt_ensure.
#
#   apt_ensure PKG...   installs whichever of PKG is missing (one dpkg-query when all are
#                       present), without starting the services they ship.
#
# Two packages are chosen by version rather than taken as apt's candidate:
#   * qemu-system-x86 must match the QEMU already installed (e.g. `qemu-utils` from
#     <codename>-backports: the release's own qemu-system-x86 then breaks against
#     qemu-system-common). When the installed QEMU is newer than the release's
#     candidate, the backports suite is added for this install only (same URI and keyring
#     as the machine's main Debian source), the matching version is installed from it,
#     and the source file is removed again.
#   * mmdebstrap comes from the release itself (<codename>'s 1.3.5 on bookworm:
#     backports' 1.5 fails there with "/bin/sh: Bad fd number"); a newer one already
#     installed is replaced by it.
# shellcheck shell=bash

APT_CODENAME=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
APT_BACKPORTS_FILE=/etc/apt/sources.list.d/rkubelet-tests-backports.sources
APT_UPDATED=0
APT_BACKPORTS_ADDED=0

apt_log() { printf 'apt: %s\n' "$*" >&2; }

apt_get() {
  DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=600 -o APT::Get::List-Cleanup=0 "$@"
}

apt_update() {
  [ "$APT_UPDATED" = 1 ] && return 0
  apt_get update -qq >/dev/null
  APT_UPDATED=1
}

# installed_version PKG: the version dpkg has installed, empty if none.
installed_version() {
  local s
  s=$(dpkg-query -W -f='${db:Status-Status} ${Version}' "$1" 2>/dev/null || true)
  [ "${s%% *}" = installed ] && echo "${s#* }"
  return 0
}

# release_version PKG SUITE: the version SUITE offers (highest), empty if none.
release_version() {
  apt-cache madison "$1" 2>/dev/null |
    awk -F'|' -v s=" $2/" '{ gsub(/ /, "", $2) } index($3, s) { print $2 }' |
    sort -V | tail -n1 | tr -d ' '
}

# A package script must not start a service while we install (Debian's containerd,
# docker-registry or etcd would hold the sockets and ports the tests use): a policy-rc.d
# answering 101 for the duration of the install. One that already forbids is kept.
APT_POLICY=/usr/sbin/policy-rc.d
APT_POLICY_BACKUP=""
APT_POLICY_CREATED=0
apt_forbid_service_starts() {
  if [ -x "$APT_POLICY" ]; then
    local rc=0
    "$APT_POLICY" containerd start >/dev/null 2>&1 || rc=$?
    [ "$rc" = 101 ] && return 0
  fi
  if [ -e "$APT_POLICY" ]; then
    APT_POLICY_BACKUP="$APT_POLICY.rkubelet-backup"
    mv -f "$APT_POLICY" "$APT_POLICY_BACKUP"
  fi
  APT_POLICY_CREATED=1
  printf '#!/bin/sh\n# temporary, from rkubelet tests/scripts/apt.sh\nexit 101\n' >"$APT_POLICY"
  chmod 755 "$APT_POLICY"
}
apt_restore() {
  if [ -n "$APT_POLICY_BACKUP" ]; then
    mv -f "$APT_POLICY_BACKUP" "$APT_POLICY"
  elif [ "$APT_POLICY_CREATED" = 1 ]; then
    rm -f "$APT_POLICY"
  fi
  APT_POLICY_BACKUP=""
  APT_POLICY_CREATED=0
  if [ "$APT_BACKPORTS_ADDED" = 1 ]; then
    rm -f "$APT_BACKPORTS_FILE"
    APT_BACKPORTS_ADDED=0
  fi
}

# The machine's main Debian source (deb822 or one-line): "URI KEYRING".
debian_source() {
  local uri="" key="" f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # First stanza whose Suites carry the bare codename.
    read -r uri key < <(awk -v c="$APT_CODENAME" '
      BEGIN { RS = ""; FS = "\n" }
      {
        u = ""; k = ""; hit = 0
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { u = $i; sub(/^URIs:[ \t]*/, "", u); sub(/[ \t].*/, "", u) }
          if ($i ~ /^Signed-By:/) { k = $i; sub(/^Signed-By:[ \t]*/, "", k) }
          if ($i ~ /^Suites:/) { n = split(substr($i, 8), s, /[ \t]+/); for (j = 1; j <= n; j++) if (s[j] == c) hit = 1 }
        }
        if (hit && u != "") { print u, k; exit }
      }' "$f") || true
    [ -n "$uri" ] && break
  done
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk -v c="$APT_CODENAME" '$1 == "deb" && $3 == c { print $2; exit }' /etc/apt/sources.list)
  fi
  echo "${uri:-http://deb.debian.org/debian} ${key:-/usr/share/keyrings/debian-archive-keyring.gpg}"
}

backports_configured() {
  apt-cache policy 2>/dev/null | grep -q " $APT_CODENAME-backports/"
}

# Adds <codename>-backports for this install (removed again by apt_restore).
add_backports() {
  backports_configured && return 0
  local uri key
  read -r uri key < <(debian_source)
  apt_log "adding $APT_CODENAME-backports ($uri) for this install"
  APT_BACKPORTS_ADDED=1
  cat >"$APT_BACKPORTS_FILE" <<EOF
# temporary, from rkubelet tests/scripts/apt.sh (removed after the install)
Types: deb
URIs: $uri
Suites: $APT_CODENAME-backports
Components: main
Signed-By: $key
EOF
  APT_UPDATED=0
  apt_update
}

# The QEMU already installed (any of its binary packages from the qemu source).
installed_qemu_version() {
  local p v
  for p in qemu-utils qemu-system-common qemu-system-data qemu-block-extra; do
    v=$(installed_version "$p")
    [ -n "$v" ] && { echo "$v"; return 0; }
  done
  return 0
}

install_qemu_system() {
  local have cand want
  have=$(installed_qemu_version)
  cand=$(release_version qemu-system-x86 "$APT_CODENAME")
  if [ -z "$have" ] || { [ -n "$cand" ] && dpkg --compare-versions "$have" le "$cand"; }; then
    apt_get install -qq --no-install-recommends qemu-system-x86 >/dev/null
    return
  fi
  apt_log "installed QEMU is $have, newer than $APT_CODENAME's qemu-system-x86 ${cand:-(none)}: taking it from $APT_CODENAME-backports"
  add_backports
  want=$have
  if [ "$(apt-cache madison qemu-system-x86 | awk -F'|' -v v="$have" '{ gsub(/ /, "", $2) } $2 == v' | wc -l)" = 0 ]; then
    want=$(release_version qemu-system-x86 "$APT_CODENAME-backports")
    [ -n "$want" ] || { apt_log "no qemu-system-x86 in $APT_CODENAME-backports"; return 1; }
    apt_log "qemu-system-x86 $have is no longer published; installing $want"
  fi
  apt_get install -qq --no-install-recommends -t "$APT_CODENAME-backports" "qemu-system-x86=$want" >/dev/null
}

install_mmdebstrap() {
  local have rel
  have=$(installed_version mmdebstrap)
  rel=$(release_version mmdebstrap "$APT_CODENAME")
  [ -n "$rel" ] || { apt_get install -qq --no-install-recommends mmdebstrap >/dev/null; return; }
  if [ -n "$have" ]; then
    dpkg --compare-versions "$have" gt "$rel" || return 0
    apt_log "mmdebstrap $have is newer than $APT_CODENAME's $rel: replacing it (newer ones fail here with \"Bad fd number\")"
  fi
  apt_get install -qq --no-install-recommends --allow-downgrades "mmdebstrap=$rel" >/dev/null
}

apt_missing() {
  local status p
  status=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null || true)
  for p in "$@"; do
    grep -qx "$p installed" <<<"$status" || printf '%s\n' "$p"
  done
  # A newer mmdebstrap than the release's counts as missing (see above).
  if printf '%s\n' "$@" | grep -qx mmdebstrap && grep -qx 'mmdebstrap installed' <<<"$status"; then
    local have rel
    have=$(installed_version mmdebstrap)
    rel=$(release_version mmdebstrap "$APT_CODENAME")
    if [ -n "$rel" ] && dpkg --compare-versions "$have" gt "$rel"; then echo mmdebstrap; fi
  fi
  return 0
}

# apt_ensure PKG...: see the header. Returns non-zero (after cleaning up) on failure.
apt_ensure() {
  local missing
  missing=$(apt_missing "$@")
  [ -n "$missing" ] || return 0
  if [ "$(id -u)" != 0 ]; then
    apt_log "missing packages (run as root to install): $(echo "$missing" | tr '\n' ' ')"
    return 1
  fi
  local -a plain=()
  local p qemu=0 mmdeb=0 rc=0 t0
  for p in $missing; do
    case "$p" in
    qemu-system-x86) qemu=1 ;;
    mmdebstrap) mmdeb=1 ;;
    *) plain+=("$p") ;;
    esac
  done
  t0=$(date +%s)
  apt_log "installing: $(echo "$missing" | tr '\n' ' ')"
  apt_forbid_service_starts
  {
    apt_update &&
      { [ ${#plain[@]} = 0 ] || apt_get install -qq --no-install-recommends "${plain[@]}" >/dev/null; } &&
      { [ "$mmdeb" = 0 ] || install_mmdebstrap; } &&
      { [ "$qemu" = 0 ] || install_qemu_system; }
  } || rc=$?
  apt_restore
  if [ "$rc" != 0 ]; then
    apt_log "installing $(echo "$missing" | tr '\n' ' ')failed (exit $rc)"
    return "$rc"
  fi
  apt_log "installed in $(($(date +%s) - t0)) s:$(for p in $missing; do printf ' %s=%s' "$p" "$(installed_version "$p")"; done)"
}
