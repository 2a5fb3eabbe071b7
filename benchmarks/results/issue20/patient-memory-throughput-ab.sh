#!/bin/bash
# Base = an export of main (git archive cf04dd5 | tar -x -C /tmp/mem-base), branch = git archive 4dfbb07 into /tmp/mem-new.
# A/B of benchmarks/detectors.py: base (main's detectors, /tmp/mem-base) vs this branch (/tmp/mem-new), ABBA.
PY="${PY:-$(git -C "$(dirname "$0")" rev-parse --show-toplevel)/.venv/bin/python}"
for round in 1 2 3 4 5 6; do
  if [ $((round % 2)) -eq 1 ]; then order="/tmp/mem-base /tmp/mem-new"; else order="/tmp/mem-new /tmp/mem-base"; fi
  for share in 0 0.1; do
    for tree in $order; do
      echo "== round $round share $share tree $tree load $(cut -d' ' -f1 /proc/loadavg)"
      nice -n 10 $PY $tree/benchmarks/detectors.py --patients 10000 --seconds 60 --reference-patients 2 --override-share $share --clock cpu | grep '^| [tf]'
    done
  done
done
