#!/usr/bin/env bash
# The home hand-off (scenario 14's set-up: 2 shards, 1,000 topics, 1,000 simple-mode
# publishers, 2,000 mux subscribers, 64 B) at stepped publish rates, this commit against
# the baseline, the two servers alternating at every step: the highest rate each sustains
# (>= 99.9 % delivered, p99 <= 100 ms). Scenario 14's closed loop is latency-bound (8 in
# flight per publisher); this is the throughput.
# Usage: run.sh NEW_BIN BASE_BIN LOADTEST OUT_DIR
set -euo pipefail
NEW=$1 BASE=$2 LT=$3 OUT=$4
mkdir -p "$OUT"
start() { # bin port
    taskset -c 0,1 "$1" --listen "127.0.0.1:$2" --shards 2 --io uring --max-connections 60000 >"$OUT/server-$2.out" 2>"$OUT/server-$2.err" &
    echo $!
    for _ in $(seq 100); do grep -q listening "$OUT/server-$2.out" && break; sleep 0.1; done
}
for rate in ${RATES:-25000 50000 75000 100000 125000 150000 200000}; do
    for who in new base; do
        bin=$NEW; [ $who = base ] && bin=$BASE
        port=$((20000 + RANDOM % 5000))
        pid=$(start "$bin" $port)
        timeout 60 taskset -c 0,1 "$LT" run --sub-url "ws://127.0.0.1:$port/ws?subscribe={topic}" --topics 1000 --subscribers 2000 \
            --pub-url "ws://127.0.0.1:$port/ws/{topic}" --publishers 1000 --rate $rate --size 64 --duration 5s --warmup 1s --threads 2 \
            --server-pid $pid --json "$OUT/$who-$rate.json" --quiet || true
        kill $pid; wait $pid 2>/dev/null || true
        python3 - "$OUT/$who-$rate.json" $who $rate <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
lat = d.get("latency_us", {})
p99 = lat.get("p99", 0) / 1000
ok = d["lost"] <= 0.001 * max(d["delivered"] + d["lost"], 1) and p99 <= 100
print(f"{sys.argv[2]:4} publish {int(sys.argv[3]):>7}/s delivered {d['delivered_per_s']/1e3:8.1f} k/s lost {d['lost']:>7} p99 {p99:7.1f} ms cpu {d['cpu']} {'sustained' if ok else 'fell behind'}")
PY
    done
done | tee "$OUT/summary.txt"
