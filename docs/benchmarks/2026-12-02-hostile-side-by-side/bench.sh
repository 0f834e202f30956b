#!/usr/bin/env bash
# Side by side: base (7759245) vs this tree, io_uring, one shard on core 0, generator on core 1.
set -u
NEW=/work/main/target/release/ringcast
OLD=/work/wt-base/target/release/ringcast
LT=/work/main/target/release/ringcast-loadtest
OUT=$1
mkdir -p "$OUT"
port=9300
for round in 1 2; do
  for which in old new; do
    bin=$OLD; [ $which = new ] && bin=$NEW
    for mode in closed rate; do
      port=$((port+1))
      taskset -c 0 $bin --listen 127.0.0.1:$port --shards 1 --io uring --max-connections 60000 >/dev/null 2>"$OUT/server-$which-$mode-$round.log" &
      pid=$!; sleep 0.5
      if [ $mode = closed ]; then extra=(--in-flight 32); else extra=(--rate 1000); fi
      echo "== round $round $which $mode: taskset -c 1 $LT run --sub-url ws://127.0.0.1:$port/ws/{topic} --subscribers 1000 --pub-url ws://127.0.0.1:$port/ws/{topic} --publishers 1 --size 64 ${extra[*]} --duration 8s --warmup 2s --server-pid $pid" 
      taskset -c 1 $LT run --sub-url "ws://127.0.0.1:$port/ws/{topic}" --subscribers 1000 --pub-url "ws://127.0.0.1:$port/ws/{topic}" --publishers 1 --size 64 "${extra[@]}" --duration 8s --warmup 2s --server-pid $pid 2>&1 | grep -E "delivered|totals|latency|cpu"
      kill $pid; wait $pid 2>/dev/null
    done
  done
done
