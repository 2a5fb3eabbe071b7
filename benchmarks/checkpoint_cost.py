"""Cost of a detector-state checkpoint per patient, JSON records (v1) against packed records (v2), in one run.

    nice -n 10 .venv/bin/python -m benchmarks.checkpoint_cost --patients 10000,100000 --chunks 1,5,20,50,200 \\
        --out benchmarks/results/issue20/checkpoint-cost.json

Per patient count, one engine with the default rules (``alert_rules.yaml``) holds that many patients
in a worker-like mix: every patient sent a minute of heart rate with RR intervals from a named
device, one in five also glucose from a CGM, one in fifty a heart rate high enough to hold a
tachycardia alert open. Then rounds alternate the two ways of writing a checkpoint, each on the
same random chunk of patients, for each chunk size of ``--chunks`` (a worker's flush writes the
states that fell due since the last batch, oldest first: from a few to hundreds at a time):

- ``json``: ``orjson.dumps(engine.export_state(p))`` per patient (the worker before packed records);
- ``packed``: ``engine.export_packed(chunk)`` (one call for the chunk);

each followed by ``store.put`` into a :class:`~stream.pipeline.DictStore` (the Faust table write and
its changelog record are the same for both and not included here: the e2e sweep has them). CPU time
of this process (``time.process_time``), median over the rounds, as µs per patient, and the ratio;
also the record sizes and the reload cost per patient (a fresh engine importing 2,000 records, one
by one). Then, per patient count, a whole reload (:func:`reload_cost`: JSON, packed one by one, packed
all at once as ``stream.pipeline`` reloads now); ``--reload-only`` measures just that.
The machine is shared: compare the ratios within a run, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from detectors import Engine
from rpm_core.rules import load_rules
from stream.pipeline import DictStore

T0 = 1_780_000_000.0
REPO = Path(__file__).resolve().parent.parent


def populated(n: int, seed: int) -> Engine:
    """An engine holding ``n`` patients' state (see the module docstring)."""
    engine = Engine(load_rules(REPO / "alert_rules.yaml"))
    rng = np.random.default_rng(seed)
    ids = np.array([f"patient-{i:06d}" for i in range(n)], dtype=object)
    hr_dev = np.array([f"hr-{i:06d}" for i in range(n)], dtype=object)
    cgm = np.arange(n) % 5 == 0
    high = np.arange(n) % 50 == 7
    for step in range(13):  # a minute: a reading every 5 s
        t = T0 + 5.0 * step
        hr = np.where(high, 160.0, rng.normal(75, 8, n))
        rr = 60.0 / hr * rng.normal(1.0, 0.03, n)
        patients = np.concatenate((ids, ids))
        metrics = np.repeat(np.array(["heart_rate", "rr_interval"]), n)
        values = np.concatenate((hr, rr))
        devices = np.concatenate((hr_dev, hr_dev))
        if step % 3 == 0:
            patients = np.concatenate((patients, ids[cgm]))
            metrics = np.concatenate((metrics, np.repeat("glucose", int(cgm.sum()))))
            values = np.concatenate((values, rng.normal(110, 25, int(cgm.sum()))))
            devices = np.concatenate((devices, np.array([f"cgm-{p}" for p in ids[cgm]], dtype=object)))
        times = np.full(len(patients), t)
        engine.process(engine.batch(patients, metrics, times, values, devices=devices), now=t)
    engine.tick(T0 + 300.0)
    return engine


def cost(engine: Engine, *, rounds: int, chunk: int, seed: int, reload: bool = True) -> dict[str, Any]:
    """Alternating rounds of both ways of checkpointing a random chunk; µs per patient (CPU)."""
    rng = random.Random(seed)
    ids = engine.registry.ids()
    per: dict[str, list[float]] = {"json": [], "packed": []}
    store = DictStore()

    def json_way(patients: list[str]) -> None:
        for p in patients:
            store.put(p, orjson.dumps(engine.export_state(p)))

    def packed_way(patients: list[str]) -> None:
        for p, record in zip(patients, engine.export_packed(patients), strict=True):
            store.put(p, record)

    ways = [("json", json_way), ("packed", packed_way)]
    for r in range(rounds):
        patients = rng.sample(ids, chunk)
        for name, way in ways if r % 2 else ways[::-1]:
            start = time.process_time()
            way(patients)
            per[name].append((time.process_time() - start) / chunk * 1e6)
    sample = rng.sample(ids, min(2000, len(ids)))
    json_records = [orjson.dumps(engine.export_state(p)) for p in sample]
    packed_records = engine.export_packed(sample)
    reloaded: dict[str, float] = {}
    for name in ("json", "packed") if reload else ():
        fresh = Engine(engine.rules)
        start = time.process_time()
        if name == "json":
            for p, raw in zip(sample, json_records, strict=True):
                fresh.import_state(p, orjson.loads(raw))
        else:
            for p, raw in zip(sample, packed_records, strict=True):
                fresh.import_packed(p, raw)
        reloaded[name] = (time.process_time() - start) / len(sample) * 1e6
    json_us, packed_us = statistics.median(per["json"]), statistics.median(per["packed"])
    return {
        "patients": len(ids),
        "json_us_per_patient": round(json_us, 2),
        "packed_us_per_patient": round(packed_us, 2),
        "json_over_packed": round(json_us / packed_us, 2),
        "json_record_bytes": round(statistics.mean(map(len, json_records))),
        "packed_record_bytes": round(statistics.mean(map(len, packed_records))),
        "reload_json_us_per_patient": round(reloaded["json"], 1) if reload else None,
        "reload_packed_us_per_patient": round(reloaded["packed"], 1) if reload else None,
        "rounds": rounds,
        "chunk": chunk,
    }


def reload_cost(engine: Engine) -> dict[str, Any]:
    """A whole reload after a rebalance: a fresh engine importing every patient's record (as
    ``stream.pipeline`` does), CPU seconds: JSON one by one (``orjson.loads`` + ``import_state``),
    packed one by one (``import_packed``, the previous reload) and packed all at once
    (``import_packed_many``, the reload now)."""
    ids = engine.registry.ids()
    json_records = [orjson.dumps(engine.export_state(p)) for p in ids]
    packed_records = engine.export_packed(ids)
    out: dict[str, Any] = {"patients": len(ids)}
    for name in ("json", "packed_one_by_one", "packed_many"):
        fresh = Engine(engine.rules)
        start = time.process_time()
        if name == "json":
            for p, raw in zip(ids, json_records, strict=True):
                fresh.import_state(p, orjson.loads(raw))
        elif name == "packed_one_by_one":
            for p, raw in zip(ids, packed_records, strict=True):
                fresh.import_packed(p, raw)
        else:
            errors = fresh.import_packed_many(list(zip(ids, packed_records, strict=True)))
            assert not errors
        seconds = time.process_time() - start
        out[f"reload_{name}_s"] = round(seconds, 2)
        out[f"reload_{name}_us_per_patient"] = round(seconds / len(ids) * 1e6, 1)
        del fresh
    return out


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and how loaded it was."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=False).stdout.strip()
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "commit": commit,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}


def report(points: list[dict[str, Any]], before: dict[str, Any], after: dict[str, Any]) -> str:
    """The Markdown table of a run."""
    lines = [f"checkpoint cost, commit {before['commit']}, {before['cores']} cores, {before['utc']} UTC, "
             f"load average {before['loadavg']} before, {after['loadavg']} after", "",
             "| patients | chunk | json µs/patient | packed µs/patient | json/packed | bytes json / packed "
             "| reload µs/patient json / packed |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {p['patients']:,} | {p['chunk']} | {p['json_us_per_patient']} | {p['packed_us_per_patient']} | "
              f"{p['json_over_packed']} | {p['json_record_bytes']} / {p['packed_record_bytes']} | "
              f"{p['reload_json_us_per_patient'] or '-'} / {p['reload_packed_us_per_patient'] or '-'} |"
              for p in points]
    counts = sorted({p["patients"] for p in points})
    lines.append("")
    for chunk in sorted({p["chunk"] for p in points}):
        first, last = (next(p for p in points if p["patients"] == n and p["chunk"] == chunk)
                       for n in (counts[0], counts[-1]))
        if first is not last:
            lines += [f"- chunk {chunk}, {counts[0]:,} → {counts[-1]:,} patients: json "
                      f"{last['json_us_per_patient'] / first['json_us_per_patient']:.2f}×, packed "
                      f"{last['packed_us_per_patient'] / first['packed_us_per_patient']:.2f}×"]
    return "\n".join(lines) + "\n"


def reload_report(reloads: list[dict[str, Any]], before: dict[str, Any], after: dict[str, Any]) -> str:
    """The Markdown table of the whole-reload measurement."""
    lines = ["", f"whole reload (fresh engine, every patient), commit {before['commit']}, load average "
             f"{before['loadavg']} before, {after['loadavg']} after", "",
             "| patients | json s (µs/patient) | packed one by one s (µs/patient) "
             "| packed all at once s (µs/patient) |",
             "|---|---|---|---|"]
    ways = ("json", "packed_one_by_one", "packed_many")
    lines += [f"| {r['patients']:,} | " + " | ".join(
        f"{r[f'reload_{k}_s']} ({r[f'reload_{k}_us_per_patient']})" for k in ways) + " |" for r in reloads]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the comparison and write the JSON report (and its Markdown table beside it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", default="10000,100000", help="patient counts, comma-separated")
    parser.add_argument("--chunks", default="1,5,20,50,200", help="patients per checkpoint call, comma-separated")
    parser.add_argument("--rounds", type=int, default=40, help="alternating rounds per patient count")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--reload-only", action="store_true", help="only the whole-reload measurement")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (and .md beside it)")
    args = parser.parse_args()
    before = machine()
    points, reloads = [], []
    for n in (int(x) for x in args.patients.split(",")):
        engine = populated(n, args.seed)
        reloads.append(reload_cost(engine))
        for i, chunk in enumerate(int(x) for x in args.chunks.split(",")):
            if not args.reload_only:
                points.append(cost(engine, rounds=args.rounds, chunk=chunk, seed=args.seed, reload=i == 0))
        del engine
    after = machine()
    text = report(points, before, after) if points else ""
    text += reload_report(reloads, before, after)
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(orjson.dumps({"machine": before, "machine_after": after, "points": points,
                                          "reloads": reloads},
                                         option=orjson.OPT_INDENT_2).decode())
        args.out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
