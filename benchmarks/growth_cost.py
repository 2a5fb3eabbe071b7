"""CPU cost of making room for new patients in the worker's detectors (issue 20, goal 1).

    nice -n 10 .venv/bin/python -m benchmarks.growth_cost --patients 120000 --rounds 5 \\
        [--baseline REV] [--out FILE]

When patients the worker has never seen arrive, :class:`detectors.engine.Engine` grows every
per-patient array of every rule (by half its size at least, so a few times while the count
doubles). Under the end-to-end benchmark's 2x overload (twice the patients of the maximum, all new)
py-spy found an eighth of the worker's samples in that growth (``grown``, ``History.resize``,
``RhythmDetector.resize_state``). This measures it alone: an engine of the default rules
(``alert_rules.yaml``) registers ``--patients`` new patients in steps of ``--step`` (as batches of new
patients would) and makes room for them each time (``Engine._sync``, the call ``Engine.process``
starts with); the CPU time of this process (``time.process_time``) of the whole arrival, per new
patient. No samples are processed: what is measured is the growth, not detection.

``--baseline REV``: the ``detectors``, ``stream`` and ``rpm_core`` packages of git revision REV are
loaded beside the current ones (:func:`benchmarks.worker_cost.load_version`), and the rounds
alternate (ABAB…), so the ratio does not depend on what else the machine was doing. Both versions'
arrays after the arrival are compared (shapes, values, C order).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from benchmarks.worker_cost import activate, export_revision, load_version

REPO = Path(__file__).resolve().parent.parent


def arrive(mods: dict[str, ModuleType], patients: int, step: int) -> tuple[float, Any]:
    """CPU seconds to register and make room for ``patients`` new patients, ``step`` at a time; the engine."""
    activate(mods)
    engine = mods["detectors.engine"].Engine(mods["rpm_core.rules"].load_rules(REPO / "alert_rules.yaml"))
    ids = [f"p{i:07d}" for i in range(patients)]
    gc.collect()
    start = time.process_time()
    for lo in range(0, patients, step):
        engine.registry.indices(ids[lo:lo + step])
        engine._sync()
    return time.process_time() - start, engine


def _arrays(engine: Any) -> list[np.ndarray[Any, Any]]:
    """Every per-patient numpy array the engine's detectors hold (for comparing versions)."""
    found: list[np.ndarray[Any, Any]] = []

    def visit(obj: Any, depth: int) -> None:
        if depth > 3:
            return
        for name in sorted(vars(obj)) if hasattr(obj, "__dict__") else []:
            value = getattr(obj, name)
            if isinstance(value, np.ndarray) and value.ndim >= 1:
                found.append(value)
            elif hasattr(value, "__dict__") and type(value).__module__.startswith("detectors."):
                visit(value, depth + 1)

    for det in engine._detectors:
        visit(det, 0)
    return found


def same(a: Any, b: Any) -> bool:
    """Whether two engines after the same arrival hold the same arrays (shape, values with NaN, C order)."""
    xs, ys = _arrays(a), _arrays(b)
    return len(xs) == len(ys) and all(
        x.shape == y.shape and x.dtype == y.dtype and x.flags.c_contiguous == y.flags.c_contiguous
        and np.array_equal(x, y, equal_nan=x.dtype.kind == "f") for x, y in zip(xs, ys, strict=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=120_000)
    ap.add_argument("--step", type=int, default=2_000, help="new patients per batch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", help="git revision to compare with, in the same process")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    versions = {"current": load_version(REPO)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:
            versions = {"baseline": load_version(export_revision(args.baseline, Path(tmp))), **versions}
        seconds: dict[str, list[float]] = {name: [] for name in versions}
        engines: dict[str, Any] = {}
        for _ in range(args.rounds):
            for name, mods in versions.items():
                s, engines[name] = arrive(mods, args.patients, args.step)
                seconds[name].append(s)
                print(f"  {name:<8} {s:7.3f} s CPU for {args.patients:,} new patients", flush=True)
        identical = same(engines["baseline"], engines["current"]) if args.baseline else None
    result: dict[str, Any] = {
        "command": "python -m benchmarks.growth_cost " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "numpy": np.__version__, "load_average_at_end": list(Path("/proc/loadavg").read_text().split()[:3])
                    if Path("/proc/loadavg").exists() else None},
        "patients": args.patients, "step": args.step,
        "seconds": seconds,
        "us_per_new_patient": {n: round(1e6 * min(v) / args.patients, 2) for n, v in seconds.items()},
    }
    if args.baseline:
        result["ratio_current_vs_baseline_min"] = round(min(seconds["current"]) / min(seconds["baseline"]), 3)
        result["ratio_current_vs_baseline_median"] = round(
            statistics.median(seconds["current"]) / statistics.median(seconds["baseline"]), 3)
        result["same_arrays"] = identical
    print(json.dumps({k: v for k, v in result.items() if k != "seconds"}, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
