"""Throwaway: poll the e2e's InfluxDB /debug/vars every second (write requests, their duration, points, Go GC)."""
import glob
import json
import os
import re
import sys
import time
import urllib.request

workdir, out, done_marker = sys.argv[1], sys.argv[2], sys.argv[3]
rows = []
url = None
while not os.path.exists(done_marker):
    if url is None:
        for conf in glob.glob(f"{workdir}/**/influxdb.conf", recursive=True):
            m = re.search(r'\[http\]\s*\n\s*bind-address = "([^"]+)"', open(conf).read())
            if m:
                url = f"http://{m.group(1)}/debug/vars"
        time.sleep(0.2)
        continue
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 (the e2e's loopback InfluxDB)
            v = json.load(r)
    except (OSError, ValueError):  # InfluxDB gone (the e2e's next stack) or not answering JSON: find it again
        url = None
        time.sleep(0.2)
        continue
    h = next((x["values"] for k, x in v.items() if k.startswith("httpd")), {})
    ms = v.get("memstats", {})
    keys = ("writeReq", "writeReqDurationNs", "pointsWrittenOK", "writeReqActive", "writeReqBytes")
    rows.append({"t": time.time(), "url": url, **{k: h.get(k) for k in keys},
                 "gc_pause_ns": ms.get("PauseTotalNs"), "num_gc": ms.get("NumGC")})
    time.sleep(1.0)
json.dump(rows, open(out, "w"))
print("rows", len(rows))
