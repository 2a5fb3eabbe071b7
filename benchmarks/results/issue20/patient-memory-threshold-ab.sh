#!/bin/bash
# Base = an export of main (git archive cf04dd5 | tar -x -C /tmp/mem-base), branch = git archive 4dfbb07 into /tmp/mem-new.
PY="${PY:-$(git -C "$(dirname "$0")" rev-parse --show-toplevel)/.venv/bin/python}"
for round in 1 2 3 4 5 6 7 8 9 10; do
  if [ $((round % 2)) -eq 1 ]; then order="/tmp/mem-base /tmp/mem-new"; else order="/tmp/mem-new /tmp/mem-base"; fi
  for tree in $order; do
    echo "== round $round tree $tree load $(cut -d' ' -f1 /proc/loadavg)"
    nice -n 10 $PY "$(dirname "$0")/patient-memory-threshold-ab.py" $tree
  done
done
