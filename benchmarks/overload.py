"""One worker under overload, second by second: a backlog of readings in Kafka drained by a real worker.

    nice -n 10 .venv/bin/python -m benchmarks.overload --patients 30000 --messages 300000 --interval 10 \\
        --trees main=../wt-base,branch=. [--reps 1] [--out FILE]

A worker that drains a backlog is overloaded by definition (every batch it takes is full), and a
backlog spread over many patients who all start together is the overload of the e2e harness's
2x run in small: every patient's state becomes dirty in the first seconds, falls due one
checkpoint interval later, and the group commit (:class:`stream.protocol.Committer`) must write
them through Faust's table (the changelog producer) while the readings keep coming. What this
measures, per 0.25-s sample of the worker's ``/metrics``: the readings it finished (written to
InfluxDB: what "landed" means here), the states it checkpointed and its ticks (the 1-s timer: a gap
between two ticks longer than a second is the timer running late). Per run: the drain time, the
processed rate per second (median, minimum after the first seconds), the longest gap between
ticks, the most states checkpointed within one second, the worker's CPU µs per reading, and how
often Faust logged "producer buffer full" (its changelog producer's buffer above 100 records).

``--interval`` shortens ``RPM_CHECKPOINT_INTERVAL_S`` so a short run covers several intervals:
the checkpoints per second a worker must write are (patients whose state changed) / interval, so
30,000 patients at 10 s ask as much of the changelog as 90,000 at the default 30 s (the e2e
overload's 92,587 patients).

Each ``--trees name=path`` runs the worker of that source tree (``PYTHONPATH``) on a fresh stack
(Tansu, InfluxDB, Mosquitto) with the same backlog (the same seed); with ``--reps`` the trees
alternate (ABAB). The backlog is written straight to ``rpm.readings`` in the bridge's record
format (:class:`benchmarks.worker_cost.Feed`: 200 messages per bridge batch, one record per
partition), its reading times spread over the seconds before the worker starts at ``--rate``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from benchmarks.e2e import machine_info
from benchmarks.worker_cost import PARTITIONS, Feed
from rpm_app.services import start_stack
from rpm_core import topics
from rpm_core.host import free_port
from rpm_core.settings import Settings, kafka_bootstrap

MESSAGES_PER_BATCH = 200
SAMPLE_S = 0.25
METRICS = ("rpm_worker_readings_total", "rpm_worker_state_checkpoints_total", "rpm_worker_ticks_total",
           "rpm_worker_batches_total")


async def _prefill(bootstrap: str, patients: int, messages: int, rate: float, seed: int) -> int:
    """The backlog: ``messages`` messages as the bridge writes them; returns the readings in it."""
    from aiokafka import AIOKafkaProducer

    await topics.ensure_topics(bootstrap, partitions=PARTITIONS)
    feed = Feed(patients, rate, seed=seed)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=-1, linger_ms=20,
                                max_batch_size=1024 * 1024, max_request_size=2 * 1024 * 1024)
    await producer.start()
    readings = 0
    try:
        span = messages * 10 / rate
        t = time.time() - span - 5.0
        dt = MESSAGES_PER_BATCH * 10 / rate
        sent = 0
        pending = []
        while sent < messages:
            n = min(MESSAGES_PER_BATCH, messages - sent)
            records, r = feed.batch(n, t)
            readings += r
            for value in records:
                pending.append(await producer.send(topics.READINGS, value=value, partition=_partition_of(value)))
            sent += n
            t += dt
            if len(pending) > 2000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return readings


def _partition_of(value: bytes) -> int:
    import orjson

    return topics.partition_for(orjson.loads(value)["groups"][0]["patient"], PARTITIONS)


def _metrics(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - loopback
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        for name in METRICS:
            if line.startswith(name + " ") or line.startswith(name + "{"):
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def _per_second(rows: list[dict[str, float]], key: str, t0: float) -> list[float]:
    """``key``'s increase in each whole second from ``t0`` on."""
    last: dict[int, float] = {}
    for r in rows:
        if key in r:
            last[int((r["t"] - t0) // 1.0)] = r[key]
    if not last:
        return []
    out, prev = [], None
    for s in range(0, max(last) + 1):
        v = last.get(s, prev)
        out.append((v - prev) if (v is not None and prev is not None) else 0.0)
        prev = v if v is not None else prev
    return out[1:]


def run_one(name: str, tree: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    stack = start_stack(Settings.from_env({}), workdir)
    worker: subprocess.Popen[bytes] | None = None
    try:
        s = stack.settings
        assert s.kafka_url
        assert s.influx_url
        bootstrap = kafka_bootstrap(s.kafka_url)
        t = time.time()
        readings = asyncio.run(_prefill(bootstrap, args.patients, args.messages, args.rate, args.seed))
        prefill_s = time.time() - t
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
        env.update({"RPM_KAFKA_URL": s.kafka_url, "RPM_INFLUX_URL": s.influx_url, "RPM_INFLUX_DB": s.influx_db,
                    "RPM_SIGNING_KEYS_FILE": s.signing_keys_file or "", "RPM_RULES": s.rules_path,
                    "RPM_CHECKPOINT_INTERVAL_S": str(args.interval), "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": str(tree.resolve())})
        log = workdir / "worker.log"
        argv = [sys.executable, "-m", "rpm_app.cli", "worker", "--data-dir", str(workdir / "worker"),
                "--web-port", str(port)]
        worker = subprocess.Popen(argv, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                  cwd=str(tree.resolve()))
        proc = psutil.Process(worker.pid)
        spy = None
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            exe = str(Path(sys.executable).parent / "py-spy")
            spy = subprocess.Popen([exe, "record", "--pid", str(worker.pid), "--rate", "50", "--nonblocking",
                                    "--format", "raw", "-o", str(args.profile / f"{name}-{args.tag}.txt")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/metrics"
        rows: list[dict[str, float]] = []
        deadline = time.monotonic() + args.timeout
        first = None
        while time.monotonic() < deadline and worker.poll() is None:
            m = _metrics(url)
            if m:
                cpu = proc.cpu_times()
                m["t"] = time.time()
                m["cpu"] = cpu.user + cpu.system
                rows.append(m)
                done = m.get("rpm_worker_readings_total", 0.0)
                if first is None and done > 0:
                    first = rows[-1]
                if done >= readings:
                    break
            time.sleep(SAMPLE_S)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        end = rows[-1] if rows else {}
        if first is None:
            raise RuntimeError(f"{name}: the worker processed nothing (see {log})")
        t0 = first["t"]
        rate = _per_second(rows, "rpm_worker_readings_total", t0)
        ckpt = _per_second(rows, "rpm_worker_state_checkpoints_total", t0)
        tick_times = [r["t"] for a, r in itertools.pairwise(rows)
                      if r.get("rpm_worker_ticks_total", 0) > a.get("rpm_worker_ticks_total", 0)]
        gaps = [b - a for a, b in itertools.pairwise(tick_times)]
        text = log.read_text(errors="replace")
        body = rate[3:-1] if len(rate) > 5 else rate
        done_n = end.get("rpm_worker_readings_total", 0.0) - first.get("rpm_worker_readings_total", 0.0)
        result = {
            "tree": name, "readings": readings, "processed": end.get("rpm_worker_readings_total"),
            "zero_seconds": sum(1 for v in rate if v == 0),
            "complete": end.get("rpm_worker_readings_total", 0.0) >= readings, "prefill_s": round(prefill_s, 1),
            "drain_s": round(end["t"] - t0, 1),
            "rate_mean": round(done_n / (end["t"] - t0)) if end["t"] > t0 else None,
            "rate_median": round(statistics.median(body)) if body else None,
            "rate_min": round(min(body)) if body else None,
            "rate_per_s": [round(v) for v in rate],
            "checkpoints": end.get("rpm_worker_state_checkpoints_total"),
            "checkpoints_per_s": [round(v) for v in ckpt],
            "max_checkpoints_in_1s": max(ckpt) if ckpt else None,
            "tick_gap_max_s": round(max(gaps), 2) if gaps else None,
            "tick_gaps_over_2s": sum(1 for g in gaps if g > 2.0),
            "cpu_us_per_reading": round(1e6 * (end["cpu"] - first["cpu"]) / done_n, 2) if done_n else None,
            "producer_buffer_full_logs": len(re.findall(r"producer buffer full", text)),
        }
        print(f"  {name}: drain {result['drain_s']} s, {result['rate_mean']:,}/s mean, median "
              f"{result['rate_median']}, min {result['rate_min']}/s, tick gap max {result['tick_gap_max_s']} s, "
              f"max ckpt/s {result['max_checkpoints_in_1s']}, buffer-full logs "
              f"{result['producer_buffer_full_logs']}, {result['cpu_us_per_reading']} µs/reading", flush=True)
        return result
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=30_000)
    ap.add_argument("--messages", type=int, default=300_000)
    ap.add_argument("--rate", type=float, default=200_000.0, help="readings/s the backlog's times are spread at")
    ap.add_argument("--interval", type=float, default=10.0, help="RPM_CHECKPOINT_INTERVAL_S of the worker")
    ap.add_argument("--trees", default="current=.", help="name=path,... (source trees to run, alternated)")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--profile", type=Path, default=None, help="py-spy raw stacks of each worker into this directory")
    args = ap.parse_args(argv)
    trees = [(n, Path(p)) for n, p in (item.split("=", 1) for item in args.trees.split(","))]
    revs = {name: subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, check=False).stdout.strip() for name, tree in trees}
    report: dict[str, Any] = {"command": "python -m benchmarks.overload " + " ".join(
                                  f"{a}" for a in (argv if argv is not None else sys.argv[1:])),
                              "trees": revs, "machine": machine_info(), "patients": args.patients,
                              "messages": args.messages, "interval_s": args.interval, "runs": []}
    for rep in range(args.reps):
        order = trees if rep % 2 == 0 else list(reversed(trees))
        for name, tree in order:
            with tempfile.TemporaryDirectory(prefix="rpm-overload-") as tmp:
                load = os.getloadavg()[0]
                args.tag = f"rep{rep}"
                result = run_one(name, tree, args, Path(tmp))
                result["rep"] = rep
                result["load_average_at_start"] = round(load, 2)
                report["runs"].append(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
