"""Memory per patient held by a worker, in process and deterministic (bytes, not time).

    nice -n 10 .venv/bin/python -m benchmarks.patient_memory --patients 10000,100000 \\
        --out benchmarks/results/issue20/patient-memory.json

Per patient count, a fresh process (so that one count's garbage does not blur the next) builds an
engine with the default rules (``alert_rules.yaml``) holding that many patients in the worker-like
mix of :func:`benchmarks.checkpoint_cost.populated` (every patient a minute of heart rate with RR
intervals from a named device, one in five also a CGM, one in fifty an open tachycardia alert), then
the worker's own per-patient structures around it, as :class:`stream.pipeline.Pipeline` keeps them:
``last_seen`` (patient → when a reading last arrived), ``_loaded`` (patients whose stored state was
read) and the state table (the in-memory Faust table is a dict of bytes keys and packed records;
a :class:`~stream.pipeline.DictStore` with the same keys and values stands in for it here).

Reported, per patient:

- every per-patient numpy array of every detector, by detector and array (``nbytes`` per slot:
  arrays grow geometrically, so a slot is what a patient costs; arrays that do not grow with the
  patients, e.g. parameter tables, count as fixed bytes), labelled ``state`` (in the packed
  checkpoint), ``param`` (rule parameters) or ``cache`` (``lazy``: a column held as a broadcast view
  until it is needed, no memory, not counted);
- the engine's own arrays (watermarks, dirty and touched flags) and registries (tracemalloc);
- tracemalloc's and RSS's growth from an empty engine to the populated one, and then to the worker's
  structures, divided by the patients.

Only the RSS figures depend on the allocator; the rest is exact and repeatable.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.checkpoint_cost import REPO, populated
from detectors import Engine
from rpm_core.rules import load_rules
from stream.pipeline import DictStore


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _arrays(obj: Any, prefix: str, seen: set[int]) -> list[tuple[str, np.ndarray]]:
    """Every numpy array reachable from ``obj``'s attributes (one level of helper objects and dicts)."""
    out: list[tuple[str, np.ndarray]] = []
    items = obj.items() if isinstance(obj, dict) else vars(obj).items() if hasattr(obj, "__dict__") else []
    for name, value in items:
        key = f"{prefix}{name}"
        if isinstance(value, np.ndarray):
            if id(value) not in seen:
                seen.add(id(value))
                out.append((key, value))
        elif isinstance(value, dict) or type(value).__module__.startswith("detectors."):
            if name in {"rule", "rules", "_overrides"} or isinstance(value, str | int | float):
                continue
            out.extend(_arrays(value, f"{key}.", seen))
    return out


CACHES = ("cache_", "loose_threshold")


def detector_arrays(engine: Engine) -> list[dict[str, Any]]:
    """Per detector and array: bytes per patient slot (or fixed bytes), and its kind."""
    capacity = len(engine._dirty)
    rows = []
    for det in engine._detectors:
        state = {id(col) for col, _ in det.state_columns()}
        for name, array in _arrays(det, "", set()):
            per_slot = capacity in array.shape
            kind = "state" if id(array) in state else "cache" if name.startswith(CACHES) else "param"
            if 0 in array.strides and array.size > 1:  # a broadcast view (a lazily held column): no memory
                kind = "lazy"
            rows.append(
                {
                    "detector": det.name,
                    "array": name,
                    "kind": kind,
                    "dtype": str(array.dtype),
                    "shape": list(array.shape),
                    "bytes_per_patient": array.nbytes / capacity if per_slot else 0.0,
                    "fixed_bytes": 0 if per_slot else array.nbytes,
                }
            )
    return rows


def traced(build: Any) -> tuple[Any, int]:
    """``build()`` and the bytes tracemalloc sees it keep."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    value = build()
    gc.collect()
    return value, tracemalloc.get_traced_memory()[0] - before


def measure(n: int, seed: int) -> dict[str, Any]:
    """All figures for ``n`` patients (run in a fresh process)."""
    tracemalloc.start()
    Engine(load_rules(REPO / "alert_rules.yaml"))  # warm: imports, zone caches, first allocations
    gc.collect()
    rss0 = rss_bytes()
    engine, engine_bytes = traced(lambda: populated(n, seed))
    rss1 = rss_bytes()
    ids = engine.registry.ids()
    # The worker's structures; they share the registry's id strings (all come from the batch that
    # first brought the patient), and the table's keys are bytes (stream.agents.TableStore).
    last_seen, last_seen_bytes = traced(lambda: dict.fromkeys(ids, 1.7e9))
    loaded, loaded_bytes = traced(lambda: set(ids))
    store, store_bytes = traced(lambda: _store(engine, ids))
    records = list(store.data.values())
    rss2 = rss_bytes()
    arrays = detector_arrays(engine)
    registry, registry_bytes = traced(lambda: _copy_registry(engine))
    del registry, last_seen, loaded
    capacity = len(engine._dirty)
    engine_arrays = {
        "watermarks (_seen_key, _seen_t)": (engine._seen_key.nbytes + engine._seen_t.nbytes) / n,
        "dirty + touched flags": (engine._dirty.nbytes + engine._touched.nbytes) / capacity,
    }
    tracemalloc.stop()
    by_detector: dict[str, dict[str, float]] = {}
    for row in arrays:
        d = by_detector.setdefault(row["detector"], {"state": 0.0, "param": 0.0, "cache": 0.0, "fixed": 0.0})
        if row["kind"] != "lazy":
            d[row["kind"]] += row["bytes_per_patient"]
        d["fixed"] += row["fixed_bytes"]
    return {
        "patients": n,
        "capacity": capacity,
        "devices": len(engine.devices),
        "arrays": arrays,
        "by_detector": by_detector,
        "detector_arrays_per_patient": sum(r["bytes_per_patient"] for r in arrays if r["kind"] != "lazy"),
        "detector_arrays_fixed": sum(r["fixed_bytes"] for r in arrays),
        "engine_arrays_per_patient": engine_arrays,
        "registries_per_patient": registry_bytes / n,
        "traced_engine_per_patient": engine_bytes / n,
        "traced_last_seen_per_patient": last_seen_bytes / n,
        "traced_loaded_per_patient": loaded_bytes / n,
        "traced_store_per_patient": store_bytes / n,
        "packed_record_bytes_mean": sum(map(len, records)) / n,
        "rss_engine_per_patient": (rss1 - rss0) / n,
        "rss_worker_structures_per_patient": (rss2 - rss1) / n,
        "rss_total_per_patient": (rss2 - rss0) / n,
    }


def _store(engine: Engine, ids: list[str]) -> DictStore:
    """Every patient's packed record in a dict keyed by bytes, written 200 at a time as a worker's flushes."""
    store = DictStore()
    records = [raw for at in range(0, len(ids), 200) for raw in engine.export_packed(ids[at : at + 200])]
    for pid, raw in zip(ids, records, strict=True):
        store.data[pid.encode()] = raw  # type: ignore[index]  # Faust's table: bytes keys to record bytes
    return store


def _copy_registry(engine: Engine) -> tuple[dict[str, int], list[str], dict[str, int], list[str]]:
    """A copy of the engine's patient and device registries (what they hold: a dict and a list of ids)."""
    patients = [p.encode().decode() for p in engine.registry.ids()]
    devices = [d.encode().decode() for d in engine.devices.ids()]
    return {p: i for i, p in enumerate(patients)}, patients, {d: i for i, d in enumerate(devices)}, devices


def report(points: list[dict[str, Any]]) -> str:
    """A Markdown summary."""
    lines = [
        "| patients | detector arrays B/patient | engine arrays | registries | last_seen | _loaded | "
        "state table | traced engine | traced total | RSS engine | RSS total |",
        "|" + "---|" * 11,
    ]
    for p in points:
        eng = sum(p["engine_arrays_per_patient"].values())
        traced_total = (
            p["traced_engine_per_patient"]
            + p["traced_last_seen_per_patient"]
            + p["traced_loaded_per_patient"]
            + p["traced_store_per_patient"]
        )
        lines.append(
            f"| {p['patients']:,} | {p['detector_arrays_per_patient']:.0f} | {eng:.0f} | "
            f"{p['registries_per_patient']:.0f} | {p['traced_last_seen_per_patient']:.0f} | "
            f"{p['traced_loaded_per_patient']:.0f} | {p['traced_store_per_patient']:.0f} | "
            f"{p['traced_engine_per_patient']:.0f} | {traced_total:.0f} | {p['rss_engine_per_patient']:.0f} | "
            f"{p['rss_total_per_patient']:.0f} |"
        )
    last = points[-1]
    lines += [
        "",
        f"By detector ({last['patients']:,} patients), bytes per patient:",
        "",
        "| detector | state | param | cache | fixed (not per patient) |",
        "|---|---|---|---|---|",
    ]
    for name, d in last["by_detector"].items():
        lines.append(f"| {name} | {d['state']:.0f} | {d['param']:.0f} | {d['cache']:.0f} | {d['fixed']:.0f} |")
    kinds = {k: sum(d[k] for d in last["by_detector"].values()) for k in ("state", "param", "cache")}
    lines.append(f"| **all** | **{kinds['state']:.0f}** | **{kinds['param']:.0f}** | **{kinds['cache']:.0f}** | |")
    return "\n".join(lines)


def main() -> None:
    """Run each patient count in its own process; print Markdown, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", default="10000,100000")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one count, print JSON
    args = parser.parse_args()
    if args.one is not None:
        sys.stdout.write(json.dumps(measure(args.one, args.seed)))
        return
    points = []
    for n in (int(x) for x in args.patients.split(",")):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.patient_memory", "--one", str(n), "--seed", str(args.seed)],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        )
        points.append(json.loads(out.stdout))
    result = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, check=False
        ).stdout.strip(),
        "load": os.getloadavg(),
        "points": points,
    }
    if args.out:
        args.out.write_text(json.dumps(result, separators=(",", ":")) + "\n")
    sys.stdout.write(report(points) + "\n")


if __name__ == "__main__":
    main()
