"""Throwaway: InfluxDB CPU per point under the sink's 20k-line writes, per [data] config variant, alternated."""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())  # run from the repository, PYTHONPATH=$PWD
from benchmarks.influx_limit import build_batches
from benchmarks.influx_series_cost import _post, _rss_mb
from benchmarks.tansu_cost import process_cpu_s
from rpm_app import services

VARIANTS = {
    "default": "",
    "snap256": 'cache-snapshot-memory-size = "256m"\n',
    "compact1": "max-concurrent-compactions = 1\n",
    "snap64": 'cache-snapshot-memory-size = "64m"\n',
    "snap128": 'cache-snapshot-memory-size = "128m"\n',
    "snap256+compact1": 'cache-snapshot-memory-size = "256m"\nmax-concurrent-compactions = 1\n',
}
orig = services.influx_config
def patched(extra):
    def cfg(**kw):
        added = "".join("  " + line + "\n" for line in extra.splitlines())
        return orig(**kw).replace("  query-log-enabled = false\n", "  query-log-enabled = false\n" + added)
    return cfg

patients, points, settle = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
names = sys.argv[4].split(",")
rounds = int(sys.argv[5])
bodies = build_batches(points * 2, patients, batch_lines=20000)
half = len(bodies) // 2
res = []
for r in range(rounds):
    order = names if r % 2 == 0 else names[::-1]
    for name in order:
        services.influx_config = patched(VARIANTS[name])
        svc = services.start_influxdb(Path(tempfile.mkdtemp(prefix="rpm-icfg-")), auth=False)
        try:
            url = f"http://127.0.0.1:{svc.port}"
            services.influx_query(url, 'CREATE DATABASE "series"')
            _post(url, "series", bodies[:half])  # create the series
            time.sleep(settle)
            c0, t0 = process_cpu_s(svc.proc.pid), time.perf_counter()
            _post(url, "series", bodies[half:])
            wall = time.perf_counter() - t0
            time.sleep(settle)
            n = sum(b.count(b"\n") + 1 for b in bodies[half:])
            row = {"round": r, "variant": name, "us_per_point": round((process_cpu_s(svc.proc.pid) - c0) / n * 1e6, 3),
                   "points_per_s": round(n / wall), "rss_mb": round(_rss_mb(svc.proc.pid))}
            print(json.dumps(row), flush=True)
            res.append(row)
        finally:
            svc.stop()
