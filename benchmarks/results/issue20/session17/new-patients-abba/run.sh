#!/bin/bash
out=$(realpath -m "${1:-new-patients-abba}"); mkdir -p "$out"; cd "$(git rev-parse --show-toplevel)"
for run in A1 B1 B2 A2; do
  extra=""; [[ $run == B* ]] && extra="--patients 63540"
  PYTHONPATH=$PWD .venv/bin/python -m benchmarks.e2e --loads 140000,280000 --duration 20 --peers none \
     --sweep-patients none --limit-points 100000 $extra --workdir "${TMPDIR:-/tmp}/e2e-pat-$run" --out $out/$run.json > $out/$run.log 2>&1
  echo "$run rc=$? $(date +%T) $extra" >> $out/times.txt
  rm -rf "${TMPDIR:-/tmp}/e2e-pat-$run"
done
