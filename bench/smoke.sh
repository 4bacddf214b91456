#!/usr/bin/env bash
# Every herald-bench scenario, small and short, against herald and the floor
# target (and the cluster and TLS targets for some), with
# --check (exit non-zero on any gap, duplicate, loss or stream that never
# connected). CI runs it so the harness never rots; the full runs are in
# README's "Performance" section.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -p herald -p herald-bench
bench=target/debug/herald-bench
out=target/bench-smoke
# Server and harness on CPUs of their own where there are two.
client_cpu=$(( $(nproc) > 1 ? 1 : 0 ))
common=(--runs 1 --targets herald,floor --streams 120 --per-worker 50 --herald-bin target/debug/herald
    --server-cpus 0 --client-cpus "$client_cpu" --out "$out" --check)

"$bench" idle "${common[@]}" --hold-secs 2 --burst 5
"$bench" fanout "${common[@]}" --rates 1,20 --step-secs 1
"$bench" unicast "${common[@]}" --rates 50,200 --step-secs 1
"$bench" storm "${common[@]}" --history 5 --rate 5 --before-secs 1 --after-secs 2
"$bench" slow "${common[@]}" --rate 20 --secs 3 --payload-bytes 16384
# Two nodes on one Redis (.ci/install-redis installs redis-server).
cluster=(--runs 1 --targets herald-cluster --streams 120 --per-worker 50
    --herald-bin target/debug/herald --server-cpus 0 --client-cpus "$client_cpu"
    --out "$out/cluster" --check)
"$bench" fanout "${cluster[@]}" --rates 1,20 --step-secs 1
"$bench" unicast "${cluster[@]}" --rates 50,200 --step-secs 1
"$bench" storm "${cluster[@]}" --spread --history 5 --rate 5 --before-secs 1 --after-secs 2
# Over TLS: HTTP/1.1, and HTTP/2 with streams sharing connections.
tls=(--runs 1 --targets herald-tls,herald-h2 --streams 120 --per-worker 50
    --herald-bin target/debug/herald --server-cpus 0 --client-cpus "$client_cpu"
    --out "$out/tls" --check)
"$bench" idle "${tls[@]}" --hold-secs 2 --burst 5
"$bench" storm "${tls[@]}" --history 5 --rate 5 --before-secs 1 --after-secs 2
for scenario in idle fanout unicast storm slow; do
    test -s "$out/$scenario.json" && test -s "$out/$scenario.md"
done
test -s "$out/fanout.png" && test -s "$out/unicast.png"
test -s "$out/cluster/unicast.md" && test -s "$out/cluster/storm.md"
test -s "$out/tls/idle.md" && test -s "$out/tls/storm.md"
echo "bench smoke: every scenario ran clean"
