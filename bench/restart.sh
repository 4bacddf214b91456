#!/usr/bin/env bash
# Restart time and memory with many stored events: fills a herald with
# SESSIONS sessions of EVENTS events each (one publish per 1,000 devices
# creates the sessions, then EVENTS-1 broadcasts), reads its memory, then
# restarts it on the same data after SIGTERM and after SIGKILL and times each
# start (spawn to `server.started`). The memory backend is filled the same
# way for its memory figure (it keeps nothing across a restart).
#
#   bench/restart.sh [SESSIONS] [EVENTS]      # defaults: 100000 100
#
# Uses target/release/herald; prints one line per figure.
set -euo pipefail
cd "$(dirname "$0")/.."
sessions=${1:-100000}
events=${2:-100}
herald=target/release/herald
token=restart-bench-admin-token
scratch=$(mktemp -d "${TMPDIR:-/tmp}/herald-restart.XXXXXX")
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$scratch"' EXIT

export HERALD_ADMIN__TOKENS=$token HERALD_STORAGE__PATH=$scratch/data \
    HERALD_SESSION__MAX_SESSIONS=$sessions HERALD_SESSION__MAX_TOTAL_BYTES=$((8 << 30)) \
    HERALD_SESSION__BUFFER_EVENTS=$events HERALD_SESSION__TTL=1h \
    HERALD_SERVER__MAX_BODY_BYTES=$((1 << 20)) RUST_LOG=warn,herald::startup=info,herald::cli=info

start() { # backend log -> sets pid, port and started_ms (spawn to server.started)
    local began=$(date +%s%N)
    HERALD_STORAGE__BACKEND=$1 "$herald" --bind 127.0.0.1:0 2>"$2" &
    pid=$!
    until grep -q server.started "$2"; do
        kill -0 $pid 2>/dev/null || { cat "$2"; exit 1; }
        sleep 0.01
    done
    port=$(grep -o 'port=[0-9]*' "$2" | head -1 | cut -d= -f2)
    started_ms=$(( ($(date +%s%N) - began) / 1000000 ))
}
pss_mib() { awk '/^Pss:/ {printf "%.0f", $2 / 1024}' /proc/$pid/smaps_rollup; }
post() { curl -sf -o /dev/null -H "Authorization: Bearer $token" -H 'content-type: application/json' \
    --data-binary @- "http://127.0.0.1:$port$1"; }
payload='"{\"setting\":\"a value of about sixty-four bytes, like a config push\"}"'
fill() {
    for ((first = 0; first < sessions; first += 1000)); do
        seq -f "dev-%07g" $first $((first + 999 < sessions - 1 ? first + 999 : sessions - 1)) |
            jq -Rn --argjson data "$payload" '{devices: [inputs], event: "config", data: $data}' |
            post /v1/publish
    done
    for ((n = 1; n < events; n++)); do
        echo "{\"event\":\"config\",\"data\":$payload}" | post /v1/broadcast
    done
}

for backend in memory embedded; do
    start $backend "$scratch/$backend.log"
    began=$(date +%s)
    fill
    echo "$backend: filled $sessions sessions x $events events in $(( $(date +%s) - began )) s; server PSS $(pss_mib) MiB"
    if [ $backend = embedded ]; then
        echo "embedded: data file $(du -m "$scratch/data/herald.redb" | cut -f1) MiB"
        kill -TERM $pid; wait $pid || true
        start embedded "$scratch/sigterm.log"
        echo "embedded: start after SIGTERM $started_ms ms ($(grep -o 'storage.opened.*' "$scratch/sigterm.log")); server PSS $(pss_mib) MiB"
        kill -KILL $pid; wait $pid || true
        start embedded "$scratch/sigkill.log"
        echo "embedded: start after SIGKILL $started_ms ms ($(grep -o 'storage.opened.*' "$scratch/sigkill.log")); server PSS $(pss_mib) MiB"
    fi
    kill -TERM $pid; wait $pid || true
done
