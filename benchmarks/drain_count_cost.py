"""What the e2e drain's count of a run's readings costs InfluxDB (issue 20; RESULTS, session 16).

    .venv/bin/python -m benchmarks.drain_count_cost [--patients 30000,130000] [--points-per-patient 20]

An InfluxDB started as rpm starts it (tsi1), the sink's vitals points of ``--patients`` patients
written (``benchmarks.influx_limit.build_batches``), then :func:`benchmarks.e2e.count_written` (the
drain's query: ``SELECT count(value) FROM vitals WHERE time > … GROUP BY metric``) asked three times:
its wall time and InfluxDB's CPU (``/proc``) each time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks import influx_series_cost
from benchmarks.e2e import count_written
from benchmarks.influx_limit import build_batches
from benchmarks.tansu_cost import process_cpu_s


def main(argv: list[str] | None = None) -> int:
    from rpm_app import services

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", default="30000,130000", help="comma-separated, written one after another")
    ap.add_argument("--points-per-patient", type=int, default=20)
    a = ap.parse_args(argv)
    os.environ["RPM_INFLUX_INDEX"] = "tsi1"
    svc = services.start_influxdb(Path(tempfile.mkdtemp(prefix="rpm-influx-count-")), auth=False)
    try:
        url = f"http://127.0.0.1:{svc.port}"
        services.influx_query(url, 'CREATE DATABASE "series"')
        for patients in (int(p) for p in a.patients.split(",")):
            influx_series_cost._post(url, "series", build_batches(patients * a.points_per_patient, patients))
            for _ in range(3):
                cpu, t = process_cpu_s(svc.proc.pid), time.perf_counter()
                counted = sum(count_written(url, "series", 0).values())
                print(f"{patients:,} patients, {counted:,} points in the database: count query "
                      f"{time.perf_counter() - t:.2f} s wall, InfluxDB CPU {process_cpu_s(svc.proc.pid) - cpu:.2f} s",
                      flush=True)
    finally:
        svc.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
