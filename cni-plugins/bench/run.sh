#!/bin/sh
# Benchmark our bridge/host-local against the reference plugins (Debian's
# containernetworking-plugins in /usr/lib/cni). Needs root. Everything happens in a throw-away
# "host" network namespace; nothing touches the real host's interfaces or iptables.
#
#   bench/run.sh [pods] [--no-masq]
set -eu
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
REF="${CNI_REFERENCE_DIR:-/usr/lib/cni}"
cargo build --release -p cni-plugins --bins --example cni-bench
HOST="cntb-host-$$"
ip netns add "$HOST"
trap 'ip netns del "$HOST"' EXIT
ip netns exec "$HOST" "$CARGO_TARGET_DIR/release/examples/cni-bench" "$CARGO_TARGET_DIR/release" "$REF" "$@"
