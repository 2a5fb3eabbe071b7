"""The broker's CPU per reading for the bridge's produce traffic and the worker's fetches (issue 20, goal 4).

    .venv/bin/python -m benchmarks.tansu_cost [--rate 30000] [--seconds 15] [--rounds 3]
        [--variant NAME:key=value,...]... [--out FILE]

A real Tansu, started as the tests start it (:func:`rpm_app.services.start_tansu`, in-memory
storage), fresh for every variant and round. Into it, at ``--rate`` readings/s, the bridge's own
producer path: :mod:`benchmarks.loadgen`'s messages (as in :mod:`benchmarks.bridge_cost`) taken in
the bridge's way (every forward takes what arrived while the previous one was in flight, at most
``MAX_BATCH_MESSAGES``), built into records by :meth:`stream.bridge.Bridge._build` and sent by
:meth:`stream.bridge.Bridge._send` with the producer settings the variant gives; out of it, a
consumer with the worker's fetch settings (``stream.faust_adapter``) in a consumer group that
commits every second as Faust does. The broker's CPU (``utime + stime`` from ``/proc``) over the
measured window, divided by the readings consumed in it, is the figure; with it the forwards
(produce requests) per second, readings per record and the p99 of send -> consumed.

Tansu's in-memory storage costs more per request the more batches it holds, so its CPU per
reading grows with the run's length at a steady rate (``TC_SLICES=N`` prints N windows of
``--seconds`` each); compare variants over windows of the same length.

Variants are ``name:key=value,...`` with keys ``linger_ms``, ``max_batch`` (messages per forward),
``fetch_wait_ms``, ``fetch_min_bytes``, ``compression``; rounds interleave the variants, so the
ratios do not depend on what else the machine was doing at one moment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.bridge_cost import PARTITIONS, payloads
from stream.bridge import LINGER_MS, MAX_BATCH_MESSAGES
from stream.faust_adapter import FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES

_HZ = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _HZ


@dataclass(frozen=True)
class Variant:
    """Producer and consumer settings under measurement (defaults: the pipeline's as of this commit)."""

    name: str = "current"
    linger_ms: int = LINGER_MS
    max_batch: int = MAX_BATCH_MESSAGES
    fetch_wait_ms: int = FETCH_MAX_WAIT_MS
    fetch_min_bytes: int = FETCH_MIN_BYTES
    compression: str | None = None

    @classmethod
    def parse(cls, spec: str, base: Variant) -> Variant:
        name, _, rest = spec.partition(":")
        kwargs: dict[str, Any] = {"name": name}
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            if key == "compression":
                kwargs[key] = None if value in ("", "none") else value
            elif key in ("linger_ms", "max_batch", "fetch_wait_ms", "fetch_min_bytes"):
                kwargs[key] = int(value)
            else:
                raise SystemExit(f"unknown variant key {key!r} in {spec!r}")
        return replace(base, **kwargs)


@dataclass
class Result:
    variant: str
    readings: int = 0
    seconds: float = 0.0
    tansu_cpu_s: float = 0.0
    forwards: int = 0
    records: int = 0
    record_bytes: int = 0
    fetches_with_data: int = 0
    latencies_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_s)
        p99 = lat[int(len(lat) * 0.99)] if lat else float("nan")
        return {
            "variant": self.variant,
            "readings_per_s": round(self.readings / self.seconds),
            "tansu_us_per_reading": round(self.tansu_cpu_s / self.readings * 1e6, 2),
            "tansu_cores": round(self.tansu_cpu_s / self.seconds, 3),
            "forwards_per_s": round(self.forwards / self.seconds, 1),
            "readings_per_record": round(self.readings / max(self.records, 1), 1),
            "bytes_per_reading": round(self.record_bytes / max(self.readings, 1), 1),
            "fetches_with_data_per_s": round(self.fetches_with_data / self.seconds, 1),
            "p99_send_to_consumed_ms": round(p99 * 1000, 1),
        }


async def _measure(variant: Variant, *, rate: float, seconds: float, warmup_s: float,
                   messages: list[tuple[str, bytes]], readings_per_message: float, now: float) -> Result:
    import orjson
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from rpm_app.services import start_tansu
    from rpm_core import topics
    from rpm_core.settings import MqttSettings
    from stream.bridge import Bridge, Inbound

    svc = start_tansu(Path(tempfile.mkdtemp(prefix="rpm-tansu-cost-")))
    bootstrap = f"127.0.0.1:{svc.port}"
    result = Result(variant.name)
    try:
        await topics.ensure_topics(bootstrap, partitions=PARTITIONS)
        bridge = Bridge(mqtt_settings=MqttSettings(host="localhost", port=1883), bootstrap=bootstrap,
                        client_id="bench", clock=lambda: now)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=variant.linger_ms,
                                    max_batch_size=1024 * 1024, max_request_size=2 * 1024 * 1024,
                                    enable_idempotence=False, compression_type=variant.compression)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id="rpm-tansu-cost",
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    fetch_max_wait_ms=variant.fetch_wait_ms, fetch_min_bytes=variant.fetch_min_bytes)
        await producer.start()
        await consumer.start()
        consumer.subscribe([topics.READINGS])
        sent_at: dict[tuple[int, int], float] = {}  # (partition, offset) -> when its forward began
        measuring = asyncio.Event()
        done = asyncio.Event()
        items = [Inbound(i % 65535 + 1, 1, t, p, now) for i, (t, p) in enumerate(messages)]
        msg_rate = rate / readings_per_message

        async def produce() -> None:
            start = time.monotonic()
            taken = 0
            while not done.is_set():
                due = int((time.monotonic() - start) * msg_rate) - taken
                if due <= 0:
                    await asyncio.sleep(0.001)
                    continue
                n = min(due, variant.max_batch)
                batch = [items[(taken + k) % len(items)] for k in range(n)]
                taken += n
                began = time.monotonic()
                records = bridge._build(batch, PARTITIONS).records
                futures = [await producer.send(r.topic, value=r.value, partition=r.partition) for r in records]
                metas = await asyncio.gather(*futures)
                for meta in metas:
                    sent_at[(meta.partition, meta.offset)] = began
                if measuring.is_set():
                    result.forwards += 1
                    result.records += len(records)
                    result.record_bytes += sum(len(r.value) for r in records)

        async def consume() -> None:
            last_commit = time.monotonic()
            while not done.is_set():
                got = await consumer.getmany(timeout_ms=1000)
                t = time.monotonic()
                if got and measuring.is_set():
                    result.fetches_with_data += 1
                for tp, recs in got.items():
                    for rec in recs:
                        began = sent_at.pop((tp.partition, rec.offset), None)
                        if measuring.is_set():
                            assert rec.value is not None
                            result.readings += sum(len(g["t"]) for g in orjson.loads(rec.value)["groups"])
                            if began is not None:
                                result.latencies_s.append(t - began)
                if t - last_commit >= 1.0:
                    await consumer.commit()
                    last_commit = t

        while not consumer.assignment():  # joined the group: nothing produced waits for a join
            await consumer.getmany(timeout_ms=200)
        tasks = [asyncio.ensure_future(produce()), asyncio.ensure_future(consume())]
        await asyncio.sleep(warmup_s)
        cpu0, t0 = process_cpu_s(svc.proc.pid), time.monotonic()
        measuring.set()
        for _ in range(int(os.environ.get("TC_SLICES", "1"))):
            c, r0 = process_cpu_s(svc.proc.pid), result.readings
            await asyncio.sleep(seconds)
            if os.environ.get("TC_SLICES"):
                print(f"    slice: tansu {(process_cpu_s(svc.proc.pid) - c) / seconds:.3f} cores, "
                      f"{(result.readings - r0) / seconds:,.0f} readings/s", flush=True)
        measuring.clear()
        result.tansu_cpu_s = process_cpu_s(svc.proc.pid) - cpu0
        result.seconds = time.monotonic() - t0
        done.set()
        await asyncio.gather(*tasks)
        await producer.stop()
        await consumer.stop()
    finally:
        svc.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=30_000, help="readings/s offered (default 30000)")
    ap.add_argument("--seconds", type=float, default=15.0, help="measured seconds per run (default 15)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (default 3)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variant", action="append", default=[], help="name:key=value,... (repeatable)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    base = Variant()
    variants = [Variant.parse(s, base) for s in a.variant] or [base]
    messages, readings, now = payloads(20_000)
    per_message = readings / len(messages)
    print(f"tansu_cost: {a.rate:,.0f} readings/s ({per_message:.2f} per message), {a.seconds:.0f} s x "
          f"{a.rounds} rounds; load average {os.getloadavg()}", flush=True)
    results: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    for r in range(a.rounds):
        for v in variants:
            res = asyncio.run(_measure(v, rate=a.rate, seconds=a.seconds, warmup_s=a.warmup, messages=messages,
                                       readings_per_message=per_message, now=now))
            s = res.summary()
            results[v.name].append(s)
            print(f"  round {r + 1} {v.name:>14}: " + ", ".join(f"{k} {val}" for k, val in s.items() if k != "variant"),
                  flush=True)
    print("medians:")
    report: dict[str, Any] = {"command": " ".join(["python -m benchmarks.tansu_cost", *(argv or sys.argv[1:])]),
                              "variants": {v.name: asdict(v) for v in variants}, "rounds": results,
                              "load_average_at_end": os.getloadavg(), "medians": {}}
    for v in variants:
        med = {k: statistics.median(x[k] for x in results[v.name]) for k in results[v.name][0] if k != "variant"}
        report["medians"][v.name] = med
        print(f"  {v.name:>14}: " + ", ".join(f"{k} {val}" for k, val in med.items()), flush=True)
    if a.out:
        a.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
