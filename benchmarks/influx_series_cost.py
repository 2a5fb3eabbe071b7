"""InfluxDB's CPU per point while it creates the series of new patients, and once they exist, per index.

    .venv/bin/python -m benchmarks.influx_series_cost [--patients 100000] [--rounds 2] [--out FILE]

For each index (``inmem``, InfluxDB 1.x's default, and ``tsi1``) a fresh InfluxDB is started as
``rpm_app.services`` starts it (:func:`rpm_app.services.influx_config`, ``index``), and
:mod:`benchmarks.influx_limit`'s vitals points (the sink's line shape: tags ``device``, ``metric``,
``patient``, ``source``, field ``value``, ms precision) are written from one client in its
5,000-line batches, in two phases:

- ``new``: one 10-reading message per patient, ``--patients`` patients none of which exists yet
  (every patient brings two new series and a new ``device`` and ``patient`` tag value);
- ``existing``: the same number of points again, for the same patients (series exist).

The figure is InfluxDB's CPU (``utime + stime``, ``/proc``) per point in each phase, counting
``--settle`` seconds after its last write (background compactions), and its
resident memory after both. Rounds alternate the indexes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from benchmarks.influx_limit import build_batches
from benchmarks.tansu_cost import process_cpu_s


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _post(url: str, database: str, bodies: list[bytes]) -> None:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 8086, timeout=300)
    try:
        for body in bodies:
            conn.request("POST", f"/write?db={database}&precision=ms", body=body,
                         headers={"Content-Type": "text/plain; charset=utf-8"})
            resp = conn.getresponse()
            detail = resp.read()
            if resp.status != 204:
                raise RuntimeError(f"InfluxDB refused a batch: {resp.status} {detail[:300]!r}")
    finally:
        conn.close()


def measure(index: str, patients: int, settle_s: float) -> dict[str, Any]:
    """CPU µs per point creating ``patients`` patients' series, then writing to them; RSS after."""
    from rpm_app import services

    points = patients * 10
    # two rounds of one message per patient: the first creates the series, the second finds them
    bodies = build_batches(2 * points, patients)
    split = points // 5000
    os.environ["RPM_INFLUX_INDEX"] = index
    svc = services.start_influxdb(Path(tempfile.mkdtemp(prefix=f"rpm-influx-{index}-")), auth=False)
    try:
        url = f"http://127.0.0.1:{svc.port}"
        services.influx_query(url, 'CREATE DATABASE "series"')
        out: dict[str, Any] = {"index": index, "patients": patients}
        for phase, part in (("new", bodies[:split]), ("existing", bodies[split:])):
            c0, t0 = process_cpu_s(svc.proc.pid), time.perf_counter()
            _post(url, "series", part)
            time.sleep(settle_s)  # what the write leaves to do in the background (compactions) counts too
            n = sum(b.count(b"\n") + 1 for b in part)
            out[f"{phase}_us_per_point"] = round((process_cpu_s(svc.proc.pid) - c0) / n * 1e6, 2)
            out[f"{phase}_points_per_s"] = round(n / (time.perf_counter() - t0 - settle_s))
        out["rss_mb"] = round(_rss_mb(svc.proc.pid), 1)
        return out
    finally:
        svc.stop()
        os.environ.pop("RPM_INFLUX_INDEX", None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--settle", type=float, default=10.0, help="seconds after each phase counted in it (default 10)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    print(f"influx_series_cost: {a.patients:,} patients x 10 points per phase, {a.rounds} rounds; "
          f"load average {os.getloadavg()}", flush=True)
    runs: list[dict[str, Any]] = []
    for r in range(a.rounds):
        for index in ("inmem", "tsi1"):
            res = measure(index, a.patients, a.settle)
            runs.append(res)
            print(f"  round {r + 1}: " + ", ".join(f"{k} {v}" for k, v in res.items()), flush=True)
    medians = {ix: {k: statistics.median(x[k] for x in runs if x["index"] == ix)
                    for k in runs[0] if k not in ("index", "patients")} for ix in ("inmem", "tsi1")}
    for ix, m in medians.items():
        print(f"  median {ix}: " + ", ".join(f"{k} {v}" for k, v in m.items()), flush=True)
    if a.out:
        a.out.write_text(json.dumps({"command": " ".join(["python -m benchmarks.influx_series_cost",
                                                          *(argv or sys.argv[1:])]),
                                     "runs": runs, "medians": medians,
                                     "load_average_at_end": os.getloadavg()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
