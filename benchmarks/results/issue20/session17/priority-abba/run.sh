#!/bin/bash
# $1 label, $2 nice for influxd and the worker (0: none); $3 out dir
out=$3; mkdir -p $out
cd "$(git rev-parse --show-toplevel)"
if [ "$2" != "0" ]; then
  ( for i in $(seq 1 1500); do
      for p in $(pgrep -f "influxd -config") $(pgrep -f "worker --partitions"); do
        for t in $(ls /proc/$p/task 2>/dev/null); do renice -n $2 -p $t >/dev/null 2>&1; done
      done
      [ -f $out/$1.json ] && break
      sleep 0.5
    done ) &
fi
PYTHONPATH=$PWD timeout 1200 .venv/bin/python -m benchmarks.e2e --loads 140000,280000 --duration 20 --peers none --sweep-patients none --limit-points 100000 --workdir "${TMPDIR:-/tmp}/e2e-nice-$1" --out $out/$1.json > $out/$1.log 2>&1
echo "$1 done $(date +%T) load $(cat /proc/loadavg)" >> $out/times.txt
rm -rf "${TMPDIR:-/tmp}/e2e-nice-$1"
wait
