#!/usr/bin/env bash
# One command: build release binaries, then run a scenario against ptth,
# nginx and HAProxy in the same invocation. Results go to bench/results/.
#   bench/run.sh                 # h1-wrk with defaults (64 connections, 3 rounds of 10 s)
#   bench/run.sh h1-wrk --rounds 5 --duration 15
#   BASELINE=HEAD~3 bench/run.sh h1-wrk   # also that commit's binaries, same rounds
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in wrk nginx haproxy; do
  command -v "$tool" >/dev/null || { echo "bench/run.sh: $tool missing: apt-get install wrk nginx-light haproxy" >&2; exit 2; }
done
cargo build --release -p ptth-lb -p ptth-workerd -p ptth-bench
scenario="${1:-h1-wrk}"; shift || true
extra=()
if [ -n "${BASELINE:-}" ]; then
  rev="$(git rev-parse --short "$BASELINE")"
  tree="target/baseline-src-$rev"
  [ -d "$tree" ] || git worktree add --detach "$tree" "$rev" >/dev/null
  (cd "$tree" && CARGO_TARGET_DIR="$PWD/../baseline-$rev" cargo build --release -p ptth-lb -p ptth-workerd)
  extra=(--baseline "target/baseline-$rev/release" --baseline-label "$rev")
fi
exec target/release/ptth-bench "$scenario" "$@" "${extra[@]}"
