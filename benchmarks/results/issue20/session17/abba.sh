#!/bin/bash
# usage: abba.sh OUTDIR A_TREE B_TREE [loads]
out=$1; A=$2; B=$3; loads=${4:-140000,280000}
mkdir -p $out
for run in A1 B1 B2 A2; do
  t=$A; [[ $run == B* ]] && t=$B
  (cd $t && PYTHONPATH=$t $t/.venv/bin/python -m benchmarks.e2e --loads $loads --duration 20 --peers none \
     --sweep-patients none --limit-points 100000 --workdir "${TMPDIR:-/tmp}/e2e-$run" --out $out/$run.json > $out/$run.log 2>&1)
  echo "$run rc=$? $(date +%T)" >> $out/progress
  rm -rf "${TMPDIR:-/tmp}/e2e-$run"
done
