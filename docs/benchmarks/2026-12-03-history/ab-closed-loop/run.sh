#!/usr/bin/env bash
# Scenario 13's closed loop (1 topic, 1 simple-mode publisher keeping 32 messages in
# flight, mux subscribers, 64 B; server on core 0, generator on core 1), history off and
# on alternating, ROUNDS rounds each, one fresh server per run: the closed-loop figure
# swings by up to 30 % between rounds on this shared machine, so its ratio needs many.
# With RATE=N (publishes/s) the publisher sends at that fixed rate instead (the figure to
# read is then the server's CPU per delivery).
# Usage: [RATE=N] run.sh BIN LOADTEST OUT_DIR SUBSCRIBERS [ROUNDS]
set -euo pipefail
BIN=$1 LT=$2 OUT=$3 SUBS=$4 ROUNDS=${5:-6}
mkdir -p "$OUT"
load=(--in-flight 32); tag=closed
if [ -n "${RATE:-}" ]; then load=(--rate "$RATE"); tag=rate$RATE; fi
for r in $(seq "$ROUNDS"); do
    for h in off on; do
        extra=(); [ $h = on ] && extra=(--history-size 100 --history-ttl 5m)
        port=$((21000 + RANDOM % 5000))
        taskset -c 0 "$BIN" --listen "127.0.0.1:$port" --shards 1 --io uring --max-connections 60000 "${extra[@]}" >"$OUT/srv.out" 2>/dev/null &
        pid=$!
        for _ in $(seq 100); do grep -q listening "$OUT/srv.out" && break; sleep 0.1; done
        timeout 60 taskset -c 1 "$LT" run --sub-url "ws://127.0.0.1:$port/ws?subscribe={topic}" --topics 1 --subscribers "$SUBS" \
            --pub-url "ws://127.0.0.1:$port/ws/{topic}" --publishers 1 "${load[@]}" --size 64 --duration 5s --warmup 1s --threads 1 \
            --server-pid $pid --json "$OUT/$SUBS-$tag-$h-$r.json" --quiet >/dev/null 2>&1 || true
        kill $pid; wait $pid 2>/dev/null || true
        python3 -c "import json,sys; d=json.load(open(sys.argv[1])); c=d['cpu']; print(sys.argv[2], sys.argv[3], round(d['delivered_per_s']), 'server_ns_per_delivery', round(c['server_pct']*1e7/d['delivered_per_s']), 'generator', round(c['generator_pct']), 'offsets', d['offsets_checked'], 'gaps', d['offset_gaps'], 'dups', d['offset_dups'])" "$OUT/$SUBS-$tag-$h-$r.json" "$SUBS" "$h"
    done
done | tee "$OUT/runs-$SUBS-$tag.txt"
python3 - "$OUT/runs-$SUBS-$tag.txt" <<'PY'
import sys, statistics as st
v = {"off": [], "on": []}
ns = {"off": [], "on": []}
for line in open(sys.argv[1]):
    f = line.split()
    v[f[1]].append(int(f[2]))
    ns[f[1]].append(int(f[4]))
for k in v: print(k, "delivered/s median", st.median(v[k]), "best", max(v[k]), "server ns/delivery median", st.median(ns[k]), "runs", v[k], ns[k])
print("on/off delivered median", round(st.median(v["on"]) / st.median(v["off"]), 3), "server ns/delivery median", round(st.median(ns["on"]) / st.median(ns["off"]), 3))
PY
