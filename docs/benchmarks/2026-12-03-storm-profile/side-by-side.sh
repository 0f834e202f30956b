#!/usr/bin/env bash
# usage: NEW_BIN=... BASE_BIN=... [CAP=15] [NICE=-19] side-by-side.sh ROUNDS REPS
# Interleaved storms of 10,000 connections: ringcast (both backends, this tree and main), the peers.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rounds=$1 reps=$2
for round in $(seq "$rounds"); do
  echo "# round $round $(date -u +%H:%M:%S) load: $(cut -d' ' -f1-3 /proc/loadavg); $("$HERE/cpu-busy.sh")"
  LABEL=ringcast-uring RC_BIN=${NEW_BIN:?path of the ringcast binary under test} "$HERE/storm-run.sh" ringcast-uring 10000 "$reps"
  LABEL=ringcast-epoll RC_BIN=${NEW_BIN:?path of the ringcast binary under test} "$HERE/storm-run.sh" ringcast-epoll 10000 "$reps"
  LABEL=ringcast-uring@main RC_BIN=${BASE_BIN:?path of the ringcast binary built from main} "$HERE/storm-run.sh" ringcast-uring 10000 "$reps"
  LABEL=ringcast-epoll@main RC_BIN=${BASE_BIN:?path of the ringcast binary built from main} "$HERE/storm-run.sh" ringcast-epoll 10000 "$reps"
  "$HERE/storm-run.sh" tungstenite 10000 "$reps"
  "$HERE/storm-run.sh" fastwebsockets 10000 "$reps"
done
