#!/bin/bash
out=${1:-tmpfs-abba}; out=$(realpath -m "$out"); mkdir -p "$out"; cd "$(git rev-parse --show-toplevel)"
for run in A1 B1 B2 A2; do
  base=/tmp; [[ $run == B* ]] && base=/dev/shm
  PYTHONPATH=$PWD .venv/bin/python -m benchmarks.e2e --loads 140000,280000 --duration 20 --peers none \
     --sweep-patients none --limit-points 100000 --workdir $base/e2e-shm-$run --out $out/$run.json > $out/$run.log 2>&1
  echo "$run rc=$? $(date +%T) workdir $base" >> $out/times.txt
  rm -rf $base/e2e-shm-$run
done
