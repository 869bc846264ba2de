#!/usr/bin/env bash
# Builds the integration tests' OCI images and serves them from a local registry.
#
#   busybox  static busybox (Debian busybox-static), applet symlinks in /bin, /tmp
#            1777, /etc/passwd and /etc/group with root and nobody, Cmd ["sh"],
#            Env PATH=/bin:/usr/bin:/sbin:/usr/sbin
#   pause    only /pause, our static tests/images/pause/pause.c, as the entrypoint
#
# Outputs, in the cache dir (default ${RKUBELET_TEST_STATE:-/var/lib/rkubelet-test}/images,
# override with RKUBELET_TEST_IMAGE_DIR):
#   oci/busybox (tags 1.36, latest), oci/pause (tag 3.9)    OCI layouts
#   busybox.tar, pause.tar                                  docker-archive tars for
#                                                           `ctr image import`, named
#                                                           127.0.0.1:5000/...
#   key                                                     hash of the inputs
# The build is skipped when the key (this script, pause.c, busybox-static version)
# is unchanged.
#
# Registry: makes sure one answers on http://127.0.0.1:5000 (reuses any that does;
# otherwise starts `docker-registry serve` detached, config/storage/log/pidfile
# under $STATE/registry) and pushes 127.0.0.1:5000/busybox:1.36, busybox:latest and
# pause:3.9 unless the registry already holds exactly those manifests.
#
# Usage: build-images.sh [--force] [--stop-registry]
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
PAUSE_SRC="$SCRIPT_DIR/../images/pause/pause.c"
STATE=${RKUBELET_TEST_STATE:-/var/lib/rkubelet-test}
CACHE=${RKUBELET_TEST_IMAGE_DIR:-$STATE/images}
REGDIR="$STATE/registry"
REGISTRY=127.0.0.1:5000
REGURL="http://$REGISTRY"

BUSYBOX_TAGS=(1.36 latest)
PAUSE_TAG=3.9

log() { printf 'build-images: %s\n' "$*"; }
die() {
  printf 'build-images: error: %s\n' "$*" >&2
  exit 1
}
now_ms() { date +%s%3N; }
START_MS=$(now_ms)

FORCE=0
for arg in "$@"; do
  case "$arg" in
  --force) FORCE=1 ;;
  --stop-registry)
    if [ -f "$REGDIR/registry.pid" ]; then
      pid=$(cat "$REGDIR/registry.pid")
      if kill -0 "$pid" 2>/dev/null && grep -q docker-registry "/proc/$pid/cmdline" 2>/dev/null; then
        kill "$pid"
        log "stopped registry (pid $pid)"
      fi
      rm -f "$REGDIR/registry.pid"
    else
      log "no registry pidfile in $REGDIR"
    fi
    exit 0
    ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$SCRIPT" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown argument: $arg" ;;
  esac
done

# --- tools ---------------------------------------------------------------------------
need=(umoci skopeo docker-registry gcc curl jq flock setsid sha256sum)
for t in "${need[@]}"; do
  if ! command -v "$t" >/dev/null 2>&1; then
    log "$t missing, running install-deps.sh"
    "$SCRIPT_DIR/install-deps.sh"
    break
  fi
done
[ -x /bin/busybox ] || "$SCRIPT_DIR/install-deps.sh"
[ -f "$PAUSE_SRC" ] || die "missing $PAUSE_SRC"

mkdir -p "$CACHE" "$REGDIR"
# Serialise concurrent runs (parallel test processes). The fd is closed for the
# registry daemon below so it does not keep the lock.
exec 9>"$STATE/build-images.lock"
flock 9

# --- build -------------------------------------------------------------------------
busybox_version() {
  dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || /bin/busybox 2>&1 | head -n1
}
KEY=$(
  {
    sha256sum "$SCRIPT" "$PAUSE_SRC" | cut -d' ' -f1
    busybox_version
    echo
  } | sha256sum | cut -d' ' -f1
)

cache_complete() {
  [ -f "$CACHE/key" ] && [ "$(cat "$CACHE/key")" = "$KEY" ] &&
    [ -f "$CACHE/oci/busybox/index.json" ] && [ -f "$CACHE/oci/pause/index.json" ] &&
    [ -f "$CACHE/busybox.tar" ] && [ -f "$CACHE/pause.tar" ]
}

umoci_flags=()
[ "$(id -u)" = 0 ] || umoci_flags=(--rootless)

build() {
  local work
  work=$(mktemp -d "$CACHE/.build.XXXXXX")
  # shellcheck disable=SC2064 # expand now: $work is local
  trap "rm -rf '$work'" EXIT

  # pause binary
  gcc -Os -static -s -Wall -Werror -o "$work/pause" "$PAUSE_SRC"
  "$work/pause" -v >/dev/null

  # busybox image
  local L="$work/oci/busybox" B="$work/bundle-busybox" R
  umoci init --layout "$L"
  umoci new --image "$L:${BUSYBOX_TAGS[0]}"
  umoci unpack "${umoci_flags[@]}" --image "$L:${BUSYBOX_TAGS[0]}" "$B"
  R="$B/rootfs"
  mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,root,home,var,dev,proc,sys,run}
  install -d -m 1777 "$R/tmp"
  install -m 755 /bin/busybox "$R/bin/busybox"
  local a
  for a in $("$R/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"
  done
  ln -sf ../../bin/busybox "$R/usr/bin/env"
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' \
    'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' >"$R/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' >"$R/etc/group"
  chmod 644 "$R/etc/passwd" "$R/etc/group"
  umoci repack --image "$L:${BUSYBOX_TAGS[0]}" "$B"
  umoci config --image "$L:${BUSYBOX_TAGS[0]}" --author rkubelet-tests \
    --config.cmd sh --config.env PATH=/bin:/usr/bin:/sbin:/usr/sbin
  local t
  for t in "${BUSYBOX_TAGS[@]:1}"; do
    umoci tag --image "$L:${BUSYBOX_TAGS[0]}" "$t"
  done
  umoci gc --layout "$L"

  # pause image
  local P="$work/oci/pause" PB="$work/bundle-pause"
  umoci init --layout "$P"
  umoci new --image "$P:$PAUSE_TAG"
  umoci unpack "${umoci_flags[@]}" --image "$P:$PAUSE_TAG" "$PB"
  install -m 755 "$work/pause" "$PB/rootfs/pause"
  umoci repack --image "$P:$PAUSE_TAG" "$PB"
  umoci config --image "$P:$PAUSE_TAG" --author rkubelet-tests --config.entrypoint /pause
  umoci gc --layout "$P"

  # docker-archive tars, named as in the registry
  skopeo copy -q "oci:$L:${BUSYBOX_TAGS[0]}" \
    "docker-archive:$work/busybox.tar:$REGISTRY/busybox:${BUSYBOX_TAGS[0]}" \
    --additional-tag "$REGISTRY/busybox:latest"
  skopeo copy -q "oci:$P:$PAUSE_TAG" "docker-archive:$work/pause.tar:$REGISTRY/pause:$PAUSE_TAG"

  # Swap into place (under the lock).
  rm -rf "$CACHE/oci" "$CACHE/busybox.tar" "$CACHE/pause.tar" "$CACHE/pause" "$CACHE/pushed"
  mv "$work/oci" "$CACHE/oci"
  mv "$work/busybox.tar" "$work/pause.tar" "$work/pause" "$CACHE/"
  echo "$KEY" >"$CACHE/key"
  rm -rf "$work"
  trap - EXIT
}

if [ "$FORCE" = 1 ] || ! cache_complete; then
  b0=$(now_ms)
  log "building images into $CACHE (key ${KEY:0:12})"
  build
  log "built busybox and pause images in $(($(now_ms) - b0)) ms"
else
  log "images up to date in $CACHE (key ${KEY:0:12})"
fi

# --- registry --------------------------------------------------------------------------
http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true; }
registry_up() { curl -sf -m 2 -o /dev/null "$REGURL/v2/"; }

start_registry() {
  local code
  code=$(http_code "$REGURL/v2/")
  if [ -n "$code" ] && [ "$code" != 000 ]; then
    die "port 5000 answers GET /v2/ with HTTP $code: not an anonymous registry (Debian's docker-registry.service with auth? run tests/scripts/install-deps.sh as root, or stop it)"
  fi
  mkdir -p "$REGDIR/data"
  cat >"$REGDIR/config.yml" <<EOF
# written by tests/scripts/build-images.sh
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $REGDIR/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
EOF
  # Detached: own session, cwd /, stdio to the log, every other inherited fd closed
  # (the lock fd 9, and pipes of whoever runs us: a CI log pipe held open by the
  # daemon would never see EOF). It outlives this script. The subshell is not a
  # process-group leader, so setsid does not fork and $! is the registry's pid.
  (
    cd /
    for fd in /proc/"$BASHPID"/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
    done
    exec setsid nohup docker-registry serve "$REGDIR/config.yml"
  ) </dev/null >>"$REGDIR/registry.log" 2>&1 &
  echo $! >"$REGDIR/registry.pid"
  for _ in $(seq 1 100); do
    registry_up && return 0
    if ! kill -0 "$(cat "$REGDIR/registry.pid")" 2>/dev/null; then
      tail -n 20 "$REGDIR/registry.log" >&2 || true
      die "docker-registry exited during startup (log: $REGDIR/registry.log)"
    fi
    sleep 0.1
  done
  tail -n 20 "$REGDIR/registry.log" >&2 || true
  die "docker-registry did not answer on $REGURL/v2/ within 10 s (log: $REGDIR/registry.log)"
}

if registry_up; then
  log "registry: reusing the one answering on $REGURL"
else
  start_registry
  log "registry: started docker-registry (pid $(cat "$REGDIR/registry.pid"), log $REGDIR/registry.log, storage $REGDIR/data)"
fi

# --- push ------------------------------------------------------------------------------
registry_digest() { # repo tag
  curl -sfI -m 5 \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "$REGURL/v2/$1/manifests/$2" 2>/dev/null |
    tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" { print $2 }'
}

push() { # layout-dir src-tag repo dst-tag
  local src="oci:$CACHE/oci/$1:$2" dst="$REGISTRY/$3:$4"
  local rec="$CACHE/pushed/$3_$4"
  local have
  have=$(registry_digest "$3" "$4" || true)
  if [ -n "$have" ] && [ -f "$rec" ] && [ "$(cat "$rec")" = "$have" ]; then
    log "push: $dst up to date ($have)"
    return 0
  fi
  mkdir -p "$CACHE/pushed"
  skopeo copy -q --dest-tls-verify=false --digestfile "$rec.tmp" "$src" "docker://$dst"
  mv "$rec.tmp" "$rec"
  log "push: $dst -> $(cat "$rec")"
}

for t in "${BUSYBOX_TAGS[@]}"; do
  push busybox "$t" busybox "$t"
done
push pause "$PAUSE_TAG" pause "$PAUSE_TAG"

log "done in $(($(now_ms) - START_MS)) ms: $REGISTRY/busybox:${BUSYBOX_TAGS[0]} (+latest) $REGISTRY/pause:$PAUSE_TAG; archives $CACHE/busybox.tar $CACHE/pause.tar"
