#!/usr/bin/env bash
# User-space instructions per request of ptth-lb (or ptth-workerd) under
# callgrind: the count after N requests minus the count after M, over N - M,
# so start-up cancels out. Deterministic where wall-clock figures on a shared
# host are not; see bench/results/*-instructions-per-request.md.
#
#   bench/instructions.sh [--bin DIR] [--who lb|workerd] [--client h1|h2c] [--tunnel h1|h2]
#                         [--origin URL]
#
# --who workerd measures the sidecar and needs an HTTP/1.1 origin (--origin);
# --who lb uses the worker's built-in responder unless --origin is given.
set -euo pipefail
bin=target/release who=lb client=h1 tunnel=h1 origin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --who) who=$2; shift 2 ;;
    --client) client=$2; shift 2 ;;
    --tunnel) tunnel=$2; shift 2 ;;
    --origin) origin=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 2; }
command -v h2load >/dev/null || { echo "h2load is needed (apt-get install nghttp2-client)" >&2; exit 2; }
[ "$who" = workerd ] && [ -z "$origin" ] && { echo "--who workerd needs --origin URL" >&2; exit 2; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

count() { # N -> Ir of the measured process after N requests
  local n=$1 cport tport
  cport=$(port); tport=$(port)
  local lb=("$bin/ptth-lb" --quiet --admin-listen off --listen "127.0.0.1:$cport" --tunnel-listen "127.0.0.1:$tport" --cores 1)
  local w=("$bin/ptth-workerd" --lb "127.0.0.1:$tport" --tunnels-per-core 16 --threads 1 --inner "$tunnel" --quiet)
  if [ -n "$origin" ]; then w+=(--origin "$origin"); else w+=(--respond hello); fi
  local vg=(valgrind --tool=callgrind --callgrind-out-file="$work/cg" --log-file="$work/vg.log")
  if [ "$who" = lb ]; then "${vg[@]}" "${lb[@]}" & m=$!; sleep 3; "${w[@]}" & o=$!
  else "${lb[@]}" & o=$!; sleep 0.5; "${vg[@]}" "${w[@]}" & m=$!; fi
  for _ in $(seq 150); do curl -sf -o /dev/null -m 1 "http://127.0.0.1:$cport/" && break; sleep 0.2; done
  if [ "$client" = h1 ]; then h2load --h1 -n "$n" -c 8 "http://127.0.0.1:$cport/" >/dev/null
  else h2load -n "$n" -c 4 -m 4 "http://127.0.0.1:$cport/" >/dev/null; fi
  kill -TERM "$m" "$o"; wait "$m" "$o" 2>/dev/null || true
  awk '/I *refs/ {gsub(",","",$NF); print $NF}' "$work/vg.log"
}
a=$(count 5000); b=$(count 25000)
echo "$who, $client client -> $tunnel tunnel: $(( (b - a) / 20000 )) instructions per request ($bin)"
