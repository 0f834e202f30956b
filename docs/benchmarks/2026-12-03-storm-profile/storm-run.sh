#!/usr/bin/env bash
# usage: [PERF=out.data] storm-run.sh SERVER N REPS
# Starts SERVER pinned to core 0, runs REPS storms of N connections from core 1 (the suite's
# scenario 6 generator command), one line per rep. With PERF: perf record -a -g (CLOCK_MONOTONIC)
# over all reps, and the open phase of each rep appended to $PERF.ranges (perf --time format).
# NICE=-19 runs server and generator at that nice level (other work on the machine then gets
# little of cores 0 and 1). CAP=15 caps the server at 15% of a core (CFS quota, cgroup v1
# cpu controller, /sys/fs/cgroup/cpu/storm-bench): the server becomes the bottleneck.
set -euo pipefail
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)}
RC=${RC_BIN:-$ROOT/target/release/ringcast}
LT=${LT_BIN:-$ROOT/target/release/ringcast-loadtest}
server=$1 n=$2 reps=$3
port=$((11000 + RANDOM % 5000))
ulimit -n 20000 || true
case $server in
  ringcast-uring) cmd=("$RC" --listen 127.0.0.1:$port --shards 1 --io uring --max-connections 60000); path=/ws/storm ;;
  ringcast-epoll) cmd=("$RC" --listen 127.0.0.1:$port --shards 1 --io epoll --max-connections 60000); path=/ws/storm ;;
  tungstenite) cmd=(env PORT=$port $ROOT/loadtest/peers/target/release/peer-tungstenite); path=/storm ;;
  fastwebsockets) cmd=(env PORT=$port $ROOT/loadtest/peers/target/release/peer-fastwebsockets); path=/storm ;;
esac
nice -n "${NICE:-0}" taskset -c 0 "${cmd[@]}" >/tmp/storm-server-$server.log 2>&1 &
pid=$!
if [[ -n ${CAP:-} ]]; then
  # The server capped at CAP% of a core (CFS quota, 10 ms period): the server becomes the
  # bottleneck, so handshakes/s measures the server and not the generator.
  cg=/sys/fs/cgroup/cpu/storm-bench
  mkdir -p $cg; echo 10000 > $cg/cpu.cfs_period_us; echo $((CAP * 100)) > $cg/cpu.cfs_quota_us
  echo $pid > $cg/cgroup.procs
fi
for i in $(seq 100); do ss -Hltn "sport = :$port" | grep -q . && break; sleep 0.1; done
echo "$pid" > /tmp/storm-server.pid
if [[ -n ${PERF:-} ]]; then
  : > "$PERF.ranges"
  perf record -g -a -k CLOCK_MONOTONIC -o "$PERF" 2>/tmp/perf-rec.err & perfpid=$!
  sleep 1
fi
for r in $(seq "$reps"); do
  out=/tmp/storm-$server-$r.json
  t0=$(python3 -c 'import time;print("%.6f"%time.monotonic())')
  timeout 120 nice -n "${NICE:-0}" taskset -c 1 "$LT" storm --url "ws://127.0.0.1:$port$path" --connections "$n" \
     --sources=127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 --concurrency 256 --connect-rate 0 \
     --server-pid $pid --json "$out" >/dev/null 2>&1 || echo "rep $r failed rc=$?"
  python3 - "$out" "${LABEL:-$server}" "$r" "$t0" "${PERF:-}" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); server, r, t0, perf = sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
cpu = d['server_cpu_pct'] or 0
print('%-22s rep%s n=%d ok=%d hs/s=%6.0f server-cpu=%5.1f%% hs-per-server-core-s=%6.0f dur=%.2fs p50=%.1fms p99=%.1fms'
      % (server, r, d['connections'], d['connect']['ok'], d['handshakes_per_s'], cpu,
         d['handshakes_per_s'] / max(cpu, 0.1) * 100, d['duration_s'], d['connect']['p50_us'] / 1e3, d['connect']['p99_us'] / 1e3))
if perf:
    # the open phase: from just before the generator starts to the end of its connect loop
    open(perf + '.ranges', 'a').write('%.6f,%.6f\n' % (t0, t0 + 0.05 + d['duration_s']))
PY
  sleep 1
done
if [[ -n ${PERF:-} ]]; then kill -INT $perfpid; wait $perfpid || true; fi
kill -TERM $pid; wait $pid 2>/dev/null || true
