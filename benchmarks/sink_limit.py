"""What an InfluxDB limit refusal costs the sink: requests and time per batch, this tree against a baseline.

An InfluxDB 1.6 started for the run with ``max-values-per-tag`` = ``--known`` (standing for one left at
its default of 100,000): each trial makes a fresh database, writes one point of each of ``--known``
devices (the tag is then full), and hands a sink a batch of ``--lines`` lines (5,000: the sink's
request size) in which ``--refused`` lines belong to devices InfluxDB has not seen, spread over
``--new-devices`` devices, the others to the known devices. Then a second batch of the same shape
(later times, same devices): the steady state of a worker whose refused devices keep sending.

Measured per batch: write requests the sink sent (counted on its writer) and wall time of
``InfluxSink.write``; checked: the refused lines, and nothing else, come back. The baseline's
``rpm_core/sink.py`` (``git show REV:rpm_core/sink.py``) is loaded beside this tree's, both use the
same server, and trials alternate ABBA, so the ratio does not depend on what else the machine did.

    python -m benchmarks.sink_limit --baseline main --rounds 4 [--out FILE.json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.e2e import machine_info
from rpm_app.services import INFLUX_ADMIN, influx_query, influx_users, start_influxdb

REPO = Path(__file__).resolve().parent.parent
T0_MS = 1_780_000_000_000


def load_sink(rev: str | None, tmp: Path) -> ModuleType:
    """``rpm_core.sink`` of this tree (``rev`` None) or of git revision ``rev``, as a module of its own."""
    if rev is None:
        import rpm_core.sink

        return rpm_core.sink
    path = tmp / f"sink_{rev.replace('/', '_')}.py"
    path.write_bytes(subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:rpm_core/sink.py"], check=True,
                                    capture_output=True).stdout)
    spec = importlib.util.spec_from_file_location(f"_sink_{rev}", path)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def batch(known: int, lines: int, refused: int, new_devices: int, t_ms: int) -> tuple[list[str], set[str]]:
    """``lines`` lines, ``refused`` of them of ``new_devices`` new devices spread evenly; and those."""
    out: list[str] = []
    bad: set[str] = set()
    every = lines // refused if refused else lines + 1
    for i in range(lines):
        if refused and i % every == 0 and len(bad) < refused:
            k = known + len(bad) % new_devices
            line = f"vitals,device=d{k},metric=heart_rate,patient=p{k},source=sim value=70.0 {t_ms + i}"
            bad.add(line)
        else:
            k = i % known
            line = f"vitals,device=d{k},metric=heart_rate,patient=p{k},source=sim value=70.0 {t_ms + i}"
        out.append(line)
    return out, bad


async def trial(sink_mod: ModuleType, url: str, args: argparse.Namespace, n: int) -> dict[str, Any]:
    """One fresh database, two batches; requests and seconds of each."""
    db = f"sl_{n}_{time.time_ns()}"
    influx_query(url, f'CREATE DATABASE "{db}"')
    sink = sink_mod.InfluxSink(writer=sink_mod.V1Writer(url=url, db=db))
    sent = [0]
    original = sink.writer.write

    async def counted(body: bytes) -> None:
        sent[0] += 1
        await original(body)

    sink.writer.write = counted
    out: dict[str, Any] = {}
    try:
        known = [f"vitals,device=d{k},metric=heart_rate,patient=p{k},source=sim value=1.0 {T0_MS - 1}"
                 for k in range(args.known)]
        assert await sink.write(known) == []
        for name, t_ms in (("first", T0_MS), ("again", T0_MS + 10_000_000)):
            lines, bad = batch(args.known, args.lines, args.refused, args.new_devices, t_ms)
            sent[0] = 0
            start = time.perf_counter()
            rejected = await sink.write(lines)
            seconds = time.perf_counter() - start
            assert {line for line, _ in rejected} == bad, "the refused lines, and no other"
            assert len(rejected) == len(bad), "each once"
            out[name] = {"requests": sent[0], "seconds": seconds}
    finally:
        await sink.close()
        influx_query(url, f'DROP DATABASE "{db}"')
    return out


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    svc = start_influxdb(workdir / "influx", max_values_per_tag=args.known)
    try:
        url = influx_users(svc).url(INFLUX_ADMIN, f"http://{svc.host}:{svc.port}")
        versions = {"this tree": load_sink(None, workdir), f"base {args.baseline}": load_sink(args.baseline, workdir)}
        names = list(versions)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        n = 0
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:  # ABBA
                results[name].append(await trial(versions[name], url, args, n))
                n += 1
    finally:
        svc.stop()
    summary: dict[str, Any] = {}
    for name, trials in results.items():
        summary[name] = {
            phase: {"requests": statistics.median(t[phase]["requests"] for t in trials),
                    "seconds_median": statistics.median(t[phase]["seconds"] for t in trials),
                    "seconds_all": [round(t[phase]["seconds"], 4) for t in trials]}
            for phase in ("first", "again")}
    return {"params": {k: v for k, v in vars(args).items() if k != "out"}, "summary": summary}


def main() -> None:
    """Run and print a table (and write JSON with ``--out``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default="main", help="git revision whose rpm_core/sink.py to compare with")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--known", type=int, default=1_000, help="devices InfluxDB knows (= max-values-per-tag)")
    ap.add_argument("--lines", type=int, default=5_000)
    ap.add_argument("--refused", type=int, default=100)
    ap.add_argument("--new-devices", type=int, default=100)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        doc = asyncio.run(run(args, Path(tmp)))
    doc["machine"] = machine_info()
    print(f"{args.lines} lines, {args.refused} refused ({args.new_devices} new devices), "
          f"max-values-per-tag {args.known}, {args.rounds} trials each (ABBA)")
    print("| sink | batch | requests | requests per refused line | seconds (median) |")
    print("|---|---|---|---|---|")
    for name, phases in doc["summary"].items():
        for phase, s in phases.items():
            print(f"| {name} | {phase} | {s['requests']:g} | {s['requests'] / args.refused:.2f} | "
                  f"{s['seconds_median']:.3f} |")
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
