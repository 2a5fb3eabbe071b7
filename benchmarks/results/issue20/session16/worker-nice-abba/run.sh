#!/bin/bash
# $1 label, $2 worker nice (0 none)
cd <repo>
if [ "$2" != "0" ]; then
  ( for i in $(seq 1 900); do p=$(pgrep -f "worker --partitions" | head -1); if [ -n "$p" ]; then renice -n $2 -p $p >/dev/null; for t in $(ls /proc/$p/task); do renice -n $2 -p $t >/dev/null 2>&1; done; echo "reniced $p $(ps -o cmd= -p $p | cut -c1-80)"; break; fi; sleep 0.2; done ) &
fi
PYTHONPATH=$PWD timeout 1200 .venv/bin/python -m benchmarks.e2e --loads 140000,280000 --duration 20 --peers none --sweep-patients none --limit-points 100000 --workdir <workdir>-$1 --out <out>$1.json > <out>$1.log 2>&1
echo "$1 done $(date +%T) load $(cat /proc/loadavg)" >> <out>
