#!/usr/bin/env bash
# What one broadcast costs in Redis on the redis backend: starts a
# redis-server and one herald node, makes SESSIONS sessions (one publish per
# 1,000 devices), then broadcasts BROADCASTS events of ~70 bytes and reads
# Redis's own counters: commands run (INFO commandstats, the scripts' inner
# calls included), the time Redis spent in the broadcast scripts, and the
# memory the broadcasts added (INFO memory used_memory), per broadcast and
# per device.
#
#   bench/redis-broadcast.sh [SESSIONS] [BROADCASTS]   # defaults 10000 10
#
# Uses target/release/herald and Debian's redis-server (.ci/install-redis).
set -euo pipefail
cd "$(dirname "$0")/.."
sessions=${1:-10000}
broadcasts=${2:-10}
herald=target/release/herald
token=redis-bench-admin-token
scratch=$(mktemp -d "${TMPDIR:-/tmp}/herald-redis.XXXXXX")
trap 'kill -9 $(jobs -p) 2>/dev/null || true; rm -rf "$scratch"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$scratch" >/dev/null &
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
cli() { redis-cli -p "$port" "$@"; }

HERALD_STORAGE__BACKEND=redis HERALD_STORAGE__REDIS__URL="redis://127.0.0.1:$port/0" \
    HERALD_ADMIN__TOKENS=$token HERALD_SESSION__MAX_SESSIONS=$sessions RUST_LOG=warn,herald::cli=info \
    "$herald" --bind 127.0.0.1:0 2>"$scratch/herald.log" &
until grep -q server.started "$scratch/herald.log"; do sleep 0.05; done
hport=$(grep -o 'port=[0-9]*' "$scratch/herald.log" | head -1 | cut -d= -f2)
post() { curl -sf -o /dev/null -H "Authorization: Bearer $token" -H 'content-type: application/json' \
    --data-binary @- "http://127.0.0.1:$hport$1"; }
payload='"{\"setting\":\"a value of about sixty-four bytes, like a config push\"}"'
for ((first = 0; first < sessions; first += 1000)); do
    seq -f "dev-%07g" $first $((first + 999 < sessions - 1 ? first + 999 : sessions - 1)) |
        jq -Rn --argjson data "$payload" '{devices: [inputs], event: "config", data: $data}' |
        post /v1/publish
done

# What the keys of 200 of the devices take (MEMORY USAGE, exact), scaled:
# used_memory moves with Redis's own buffers by more than a broadcast adds.
sample=200
memory() {
    for ((n = 0; n < sample; n++)); do
        device=$(printf "dev-%07d" $((n * sessions / sample)))
        echo "MEMORY USAGE herald:{$device}:s SAMPLES 0"
        echo "MEMORY USAGE herald:{$device}:b SAMPLES 0"
    done | cli | awk -v n="$sessions" -v k="$sample" '{s += $1} END {printf "%d", s * n / k}'
}
before=$(memory)
cli config resetstat >/dev/null
began=$(date +%s%N)
for ((n = 0; n < broadcasts; n++)); do
    echo "{\"event\":\"config\",\"data\":$payload}" | post /v1/broadcast
done
wall_ms=$(( ($(date +%s%N) - began) / 1000000 / broadcasts ))
after=$(memory)
stats=$(cli info commandstats | tr -d '\r')
calls() { echo "$stats" | awk -F'[:=,]' -v c="cmdstat_$1" '$1 == c {print $3}'; }
usec() { echo "$stats" | awk -F'[:=,]' -v c="cmdstat_$1" '$1 == c {print $5}'; }
# Every command Redis ran, the sweeps' and the liveness refreshes' among
# them (a handful); the broadcasts' own are per device.
total=$(echo "$stats" | awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_evalsha" {s += $3} END {print s}')
per_device() { awk -v t="$1" -v n="$((sessions * broadcasts))" 'BEGIN {printf "%.2f", t / n}'; }
echo "redis broadcast: $sessions sessions x $broadcasts broadcasts; ${wall_ms} ms wall per broadcast request"
echo "redis broadcast: script calls $(calls evalsha), $(( $(usec evalsha) / broadcasts )) us of Redis time per broadcast, $(per_device "$(usec evalsha)") us per device"
echo "redis broadcast: commands inside the scripts $total, $(per_device "$total") per device: $(echo "$stats" | awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_evalsha" {printf "%s=%s ", substr($1, 9), $3}')"
echo "redis broadcast: memory added $(( after - before )) bytes, $(per_device $(( after - before ))) bytes per device per broadcast"
