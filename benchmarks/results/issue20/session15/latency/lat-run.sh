#!/bin/bash
# A = baseline worktree (9b6f495), B = <checkout> working tree (alerts before the write)
cd <results dir>
for label in A1 B1 B2 A2; do
  case $label in A*) tree=<worktree at 9b6f495>;; B*) tree=<checkout>;; esac
  echo "$label start $(date -u +%T) $(uptime)" >> times.txt
  (cd $tree && PYTHONPATH=$tree <checkout>/.venv/bin/python -m benchmarks.e2e --loads 40000,56000 --duration 20 --peers none --sweep-patients none --limit-points 100000 --workdir <dir>$label --out lat-$label.json > lat-$label.log 2>&1)
  echo "$label end $(date -u +%T) $(uptime)" >> times.txt
done
