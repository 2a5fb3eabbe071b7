"""Per-window cost: the logistic model (7d88d0a) against the network (HEAD), interleaved in one process.

Run from the repository root: ``taskset -c 0 .venv/bin/python benchmarks/results/issue17/round13/window_cost.py``
"""

import sys
import time
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from benchmarks.af_candidates import base_model
from benchmarks.rr_models import cohort
from detectors import af_model

old = base_model("7d88d0a")
recordings = [r for s in (0, 1) for r in cohort("D", 1, 40, (5, 15), 60000 + s)]
rows = np.ascontiguousarray(np.concatenate([sliding_window_view(r.rr, 64)[::16] for r in recordings])[:20000])
cols = af_model.features(rows, af_model.cleaned(rows))
cols = np.where(np.isfinite(cols).all(axis=1)[:, None], cols, 0.0)
print(len(rows), "windows")
res: dict[str, list[float]] = {"features": [], "logistic": [], "network": []}
for _ in range(7):
    t = time.process_time()
    af_model.features(rows, af_model.cleaned(rows))
    res["features"].append(time.process_time() - t)
    t = time.process_time()
    for _ in range(10):
        old.judge(cols)
    res["logistic"].append((time.process_time() - t) / 10)
    t = time.process_time()
    for _ in range(10):
        af_model.probability(cols)
    res["network"].append((time.process_time() - t) / 10)
for k, v in res.items():
    print(f"{k}: {min(v) / len(rows) * 1e6:.3f} us/window (min of 7), median {np.median(v) / len(rows) * 1e6:.3f}")
agree = np.mean((old.judge(cols) >= 0.5) == (af_model.probability(cols) >= 0.5))
print(f"verdicts equal on {agree:.3f} of these windows")
