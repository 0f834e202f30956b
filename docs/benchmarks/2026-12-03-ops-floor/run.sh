#!/usr/bin/env bash
# Two binaries side by side at a fixed rate (one topic, one simple-mode publisher, 1,000 mux
# subscribers, 64 B; server on core 0, one shard; generator on core 1), alternating, one
# fresh server per run: the server's CPU per delivery. EXTRA is passed to both servers.
# Usage: [EXTRA="--history-size 100"] run.sh NEW_BIN BASE_BIN LOADTEST OUT_DIR RATE [ROUNDS]
set -euo pipefail
NEW=$1 BASE=$2 LT=$3 OUT=$4 RATE=$5 ROUNDS=${6:-4}
mkdir -p "$OUT"
read -r -a extra <<<"${EXTRA:-}"
tag=$(echo "${EXTRA:-plain}" | tr -c 'a-z0-9' '-' | sed 's/-*$//')
for r in $(seq "$ROUNDS"); do
    for who in new base; do
        bin=$NEW; [ $who = base ] && bin=$BASE
        port=$((23000 + RANDOM % 5000))
        taskset -c 0 "$bin" --listen "127.0.0.1:$port" --shards 1 --io uring --max-connections 60000 "${extra[@]}" >"$OUT/srv.out" 2>/dev/null &
        pid=$!
        for _ in $(seq 100); do grep -q listening "$OUT/srv.out" && break; sleep 0.1; done
        timeout 60 taskset -c 1 "$LT" run --sub-url "ws://127.0.0.1:$port/ws?subscribe={topic}" --topics 1 --subscribers 1000 \
            --pub-url "ws://127.0.0.1:$port/ws/{topic}" --publishers 1 --rate "$RATE" --size 64 --duration 5s --warmup 1s --threads 1 \
            --server-pid $pid --json "$OUT/$tag-$who-$r.json" --quiet >/dev/null 2>&1 || true
        kill $pid; wait $pid 2>/dev/null || true
        python3 -c "import json,sys; d=json.load(open(sys.argv[1])); c=d['cpu']; print(sys.argv[2], sys.argv[3], round(d['delivered_per_s']), 'lost', d['lost'], 'server_ns_per_delivery', round(c['server_pct']*1e7/d['delivered_per_s']), 'generator', round(c['generator_pct']))" "$OUT/$tag-$who-$r.json" "$tag" "$who"
    done
done
rm -f "$OUT/srv.out"
