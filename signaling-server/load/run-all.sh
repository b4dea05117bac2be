#!/usr/bin/env bash
# Runs every signaling/TURN load figure quoted in docs/BENCHMARKS-signaling.md, N times each,
# on loopback only, and writes one JSON object per run to $OUT/<name>.jsonl.
#   signaling-server/load/run-all.sh [OUT_DIR] [RUNS]
# The 10,000-connection run needs `ulimit -n` >= 10,200 (the server and the load generator each
# hold 10,000 sockets); the script raises the soft limit to the hard limit.
# The coturn runs (the reference relay, same load, same machine) need `turnserver`; the script
# installs Debian's coturn package when it is missing (as root; nothing else is configured).
# The PeerJS runs (the reference signaling server) need `peerjs`; the script installs the npm
# package `peer` globally when it is missing (needs Node.js and npm).
set -euo pipefail
OUT=${1:-target/signaling-load}
RUNS=${2:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/aparte/target}
cargo build --release -p aparte-signaling-server --bins
LOAD="$CARGO_TARGET_DIR/release/aparte-signaling-load"
if ! command -v turnserver >/dev/null; then
  echo "==> installing coturn (reference TURN relay for the comparison runs)" >&2
  apt-get install -y --no-install-recommends coturn >/dev/null ||
    { apt-get update -q >/dev/null && apt-get install -y --no-install-recommends coturn >/dev/null; }
fi
if ! command -v peerjs >/dev/null; then
  echo "==> installing PeerJS server (npm package peer, reference for the relay runs)" >&2
  npm install -g --no-audit --no-fund peer@1.0.2 >/dev/null
fi
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
run() {
  local name=$1; shift
  for _ in $(seq "$RUNS"); do
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    timeout 600 "$LOAD" --json "$@" | tee -a "$OUT/$name.jsonl"
  done
}
run idle-10000 idle --connections 10000 --hold 10
run relay-500x2000 relay --pairs 500 --rate 2000 --size 300 --duration 20
run peerjs-500x2000 relay --pairs 500 --rate 2000 --size 300 --duration 20 --signaling-server peerjs
run turn-100 turn --allocations 100 --pps 50 --size 100 --duration 20
run turn-500 turn --allocations 500 --pps 50 --size 100 --duration 20
run coturn-100 turn --allocations 100 --pps 50 --size 100 --duration 20 --relay-server coturn
run coturn-500 turn --allocations 500 --pps 50 --size 100 --duration 20 --relay-server coturn
for t in tcp tls; do
  for k in 100 500; do
    run turn-$t-$k turn --allocations $k --pps 50 --size 100 --duration 20 --transport $t
    run coturn-$t-$k turn --allocations $k --pps 50 --size 100 --duration 20 --transport $t --relay-server coturn
  done
done
run turn-100-direct turn --allocations 100 --pps 50 --size 100 --duration 20 --direct
run turn-500-direct turn --allocations 500 --pps 50 --size 100 --duration 20 --direct
