"""Threshold-rule throughput of one tree (argv[1]), without and with 10 % overrides: CPU-time samples/s."""

import sys
import time

sys.path.insert(0, sys.argv[1])

import benchmarks.detectors as b
from detectors.rules import ThresholdRule
from rpm_core.rules import load_rules

b.clock = time.process_time
for share in (0.0, 0.1):
    full = b.with_overrides(load_rules(b.ROOT / "alert_rules.yaml"), 10000, share)
    thr = b._subset(full, lambda r: type(r) is ThresholdRule)
    rate, n = b.time_engine(thr, 10000, 300.0, 10.0, {b.HR, b.GLUCOSE})
    print(share, rate)
