"""The sink's own limit: how fast InfluxDB ingests the benchmark's vitals points from one client.

The same points the end-to-end load produces (measurement ``vitals``, tags ``device``, ``metric``,
``patient``, ``source`` in sorted order, field ``value``, millisecond times: the format of
``rpm_core.lineprotocol.vitals_lines``; per patient, messages of 4-5 heart rates and 5-6 RR
intervals, and a CGM glucose every 5 minutes), built by hand into line protocol *before* the
clock starts, then posted by one client over one keep-alive connection in
:data:`BATCH_LINES`-line batches to ``/write?db=…&precision=ms``, one request at a time. The
database is a separate one, created fresh. The pipeline's score is its throughput as a fraction
of this rate, measured in the same run on the same server.

Standalone: ``python -m benchmarks.influx_limit --influx-url http://127.0.0.1:8086 --points 1000000``.
"""

from __future__ import annotations

import argparse
import http.client
import random
import time
import urllib.parse
from dataclasses import asdict, dataclass
from typing import Final

from rpm_app.services import influx_query

BATCH_LINES: Final = 5_000
CGM_INTERVAL_MS: Final = 300_000


@dataclass
class LimitResult:
    """What the direct ingest achieved."""

    database: str
    points: int
    batches: int
    batch_lines: int
    patients: int
    seconds: float
    points_per_s: float
    points_per_s_after_first_10pct: float  # series already exist: the steady rate
    build_s: float  # building the line protocol (not timed in points_per_s)
    counted: int  # count(value) in the database afterwards (must equal points)
    body_bytes: int

    def to_dict(self) -> dict[str, object]:
        """JSON-able."""
        return asdict(self)


def build_batches(points: int, patients: int, *, prefix: str = "e", batch_lines: int = BATCH_LINES,
                  seed: int = 0, end_ms: int | None = None) -> list[bytes]:
    """Request bodies holding ``points`` vitals lines of ``patients`` patients, in arrival-like order.

    Patients take turns (round robin) sending a 10-sample heart-rate message, as in the live load;
    a patient's CGM glucose comes every 5 simulated minutes. Times end at ``end_ms`` (default: now)
    and are unique per series.
    """
    rng = random.Random(seed)
    ids = [f"{prefix}{i:05d}" for i in range(patients)]
    hr_prefix = [f"vitals,device=hrs-{p},metric=heart_rate,patient={p},source=sim value=" for p in ids]
    rr_prefix = [f"vitals,device=hrs-{p},metric=rr_interval,patient={p},source=sim value=" for p in ids]
    gl_prefix = [f"vitals,device=cgm-{p},metric=glucose,patient={p},source=sim value=" for p in ids]
    base = [rng.uniform(62.0, 88.0) for _ in ids]
    rounds = points // (10 * patients) + 2
    span_ms = 4545  # one 10-sample message per patient every ~4.5 s (1 Hz HR + ~1.2 beats/s)
    end = end_ms if end_ms is not None else int(time.time() * 1000)
    start = end - rounds * span_ms
    next_cgm = [start + rng.randrange(CGM_INTERVAL_MS) for _ in ids]
    lines: list[str] = []
    rnd = rng.random
    for r in range(rounds):
        for k in range(patients):
            last = start + r * span_ms + (k * span_ms) // patients
            t = last + span_ms
            n_hr = 5 if r % 2 == 0 else 4
            n_rr = 10 - n_hr
            b = base[k]
            lines += [f"{rr_prefix[k]}{round(60.0 / (b + 4.0 * rnd() - 2.0), 3)!r} {last + (j + 1) * span_ms // n_rr}"
                      for j in range(n_rr)]
            lines += [f"{hr_prefix[k]}{round(b + 4.0 * rnd() - 2.0, 1)!r} {last + (j + 1) * span_ms // n_hr}"
                      for j in range(n_hr)]
            if next_cgm[k] <= t:
                lines.append(f"{gl_prefix[k]}{round(rng.uniform(95.0, 150.0), 1)!r} {t}")
                next_cgm[k] += CGM_INTERVAL_MS
            if len(lines) >= points:
                break
        if len(lines) >= points:
            break
    del lines[points:]
    return ["\n".join(lines[i:i + batch_lines]).encode() for i in range(0, len(lines), batch_lines)]


def measure(influx_url: str, *, database: str = "rpm_limit", points: int = 1_000_000, patients: int = 20_000,
            batch_lines: int = BATCH_LINES) -> LimitResult:
    """Write ``points`` lines into a fresh ``database`` from one client; return the rate."""
    influx_query(influx_url, f'DROP DATABASE "{database}"')
    influx_query(influx_url, f'CREATE DATABASE "{database}"')
    t0 = time.perf_counter()
    bodies = build_batches(points, patients, batch_lines=batch_lines)
    build_s = time.perf_counter() - t0
    url = urllib.parse.urlsplit(influx_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 8086, timeout=120)
    path = f"/write?db={urllib.parse.quote(database)}&precision=ms"
    headers = {"Content-Type": "text/plain; charset=utf-8", "Connection": "keep-alive"}
    tenth = max(1, len(bodies) // 10)
    t_tenth = 0.0
    start = time.perf_counter()
    try:
        for i, body in enumerate(bodies):
            if i == tenth:
                t_tenth = time.perf_counter()
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            detail = resp.read()
            if resp.status != 204:
                raise RuntimeError(f"InfluxDB refused batch {i}: {resp.status} {detail[:300]!r}")
        end = time.perf_counter()
    finally:
        conn.close()
    seconds = end - start
    after = sum(b.count(b"\n") + 1 for b in bodies[tenth:])
    counted = _count(influx_url, database)
    return LimitResult(
        database=database, points=points, batches=len(bodies), batch_lines=batch_lines, patients=patients,
        seconds=seconds, points_per_s=points / seconds,
        points_per_s_after_first_10pct=after / (end - t_tenth) if t_tenth else points / seconds,
        build_s=build_s, counted=counted, body_bytes=sum(len(b) for b in bodies),
    )


def _count(influx_url: str, database: str) -> int:
    doc = influx_query(influx_url, "SELECT count(value) FROM vitals", db=database)
    total = 0
    for result in doc.get("results", []):  # type: ignore[union-attr]
        for series in result.get("series", []):
            total += int(series["values"][0][1])
    return total


def main() -> None:
    """Measure against a running InfluxDB."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--influx-url", required=True)
    parser.add_argument("--database", default="rpm_limit")
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--patients", type=int, default=20_000)
    parser.add_argument("--batch-lines", type=int, default=BATCH_LINES)
    args = parser.parse_args()
    res = measure(args.influx_url, database=args.database, points=args.points, patients=args.patients,
                  batch_lines=args.batch_lines)
    print(f"{res.points:,} points in {res.seconds:.2f} s: {res.points_per_s:,.0f} points/s "
          f"({res.points_per_s_after_first_10pct:,.0f}/s after the first 10 %); counted {res.counted:,}")


if __name__ == "__main__":
    main()
