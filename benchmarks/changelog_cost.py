"""Cost of writing detector states into the worker's Faust state table and its changelog, per state, in one run.

    nice -n 10 .venv/bin/python -m benchmarks.changelog_cost --chunks 1,20,200,2000 --rounds 10 \\
        --out benchmarks/results/issue20/changelog-cost.json

What a checkpoint costs beyond building its records (``benchmarks/checkpoint_cost.py`` measures
that part): the write of each state into the table and its changelog record, up to the moment
Faust's offset commit has flushed the producer (the changelog records acknowledged by the broker).
A Tansu is started here (in-memory storage, as the e2e harness runs it), and a Faust app built by
:func:`stream.app.create_app` (the worker's settings: 1 MiB producer batches, 20 ms linger, acks
from every replica) with the worker's table (``rpm-detector-state``, 8 partitions,
``use_partitioner``). The records are real packed states (:func:`benchmarks.checkpoint_cost.populated`,
2,000 patients; ~470 bytes). Rounds alternate the two ways on the same chunk of patients:

- ``table``: ``stream.agents.TableStore`` without a producer, i.e. ``table[key] = value`` per state
  (Faust's ``on_key_set``: a changelog record through Faust's producer buffer per state; the worker
  before this change);
- ``bulk``: ``TableStore`` with the worker's producer (the worker now): the states into the
  table's storage, then :meth:`~stream.agents.TableStore.flush` hands them to aiokafka in one go, a
  record batch per partition (``send_batch``) where nothing of the store's is undelivered there,
  record by record (``send``) where something is (``send_batch`` would wait for it to leave);
- ``batches``: always one ``send_batch`` per changelog partition (the first version of this
  change, which waits until the partition's previous batch left: one produce request in flight
  per broker), for comparison;

a round is ``--states`` states in flushes of a chunk, ``--gap-ms`` apart (the worker flushes after
every micro-batch, ~50 ms apart at most), then ``await app.producer.flush()`` (what Faust's commit,
once a second, does before committing offsets). Per way and chunk size: CPU time of this process
and of Tansu (``psutil``) per state, median over the rounds, the ratio, and aiokafka's requests to
the broker per flush (produce and metadata).
The machine is shared: compare the ratios within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

from benchmarks.checkpoint_cost import populated
from benchmarks.e2e import machine_info
from rpm_app.services import free_port, start_tansu
from stream.agents import TableStore
from stream.app import create_app
from stream.faust_adapter import kafka_producer
from stream.protocol import STATE_TABLE, partition_for

PARTITIONS = 8


class BatchStore(TableStore):
    """``TableStore`` handing the producer one record batch per partition (``send_batch``)."""

    def __init__(self, table: Any, producer: Any) -> None:
        super().__init__(table, producer=lambda: producer)
        self._kafka = producer

    async def flush(self) -> None:
        if not self._outbox:
            return
        producer, topic = self._kafka, self._table.changelog_topic.get_topic_name()
        partitions = len(await producer.partitions_for(topic))
        outbox, self._outbox = self._outbox, {}
        by_partition: dict[int, Any] = {}
        for patient, state in outbox.items():
            part = partition_for(patient, partitions)
            batch = by_partition.get(part)
            if batch is None:
                batch = by_partition[part] = producer.create_batch()
            if batch.append(key=patient.encode(), value=state, timestamp=None) is None:
                raise ValueError("more than a batch per partition: use smaller chunks")
        await asyncio.gather(*(producer.send_batch(b, topic, partition=p) for p, b in by_partition.items()))


async def measure(bootstrap: str, tansu: psutil.Process, args: argparse.Namespace) -> list[dict[str, Any]]:
    engine = populated(args.patients, args.seed)
    ids = engine.registry.ids()
    records = list(zip(ids, engine.export_packed(ids), strict=True))
    del engine
    with tempfile.TemporaryDirectory(prefix="rpm-changelog-cost-") as tmp:
        app = create_app(broker=f"kafka://{bootstrap}", partitions=PARTITIONS, datadir=tmp, web_port=free_port())
        table = app.Table(STATE_TABLE, partitions=PARTITIONS, key_type=bytes, value_type=bytes, use_partitioner=True)
        app.finalize()
        await app.producer.start()
        await table.changelog_topic.maybe_declare()
        producer = kafka_producer(app)
        sends = [0]
        original_send = producer.client.send

        async def counted(*a: Any, **kw: Any) -> Any:
            sends[0] += 1
            return await original_send(*a, **kw)

        producer.client.send = counted
        ways: dict[str, TableStore] = {"table": TableStore(table), "bulk": TableStore(table, producer=lambda: producer),
                                       "batches": BatchStore(table, producer)}
        out = []
        try:
            for chunk in (int(x) for x in args.chunks.split(",")):
                per: dict[str, dict[str, list[float]]] = {w: {"cpu": [], "tansu": [], "requests": []} for w in ways}
                for r in range(args.rounds):
                    start = (r * chunk) % len(records)
                    part = (records * 2)[start:start + chunk]
                    order = list(ways.items())
                    order = order[r % len(order):] + order[:r % len(order)]  # each way first in turn
                    for name, store in order:
                        n = max(1, args.states // chunk)  # about --states states per round, in flushes of chunk
                        t0, c0, s0 = tansu.cpu_times(), time.process_time(), sends[0]
                        for _ in range(n):
                            store.put_many(part)
                            await store.flush()
                            await asyncio.sleep(args.gap_ms / 1000)
                        await app.producer.flush()  # Faust's commit, before it commits offsets
                        c1, t1 = time.process_time(), tansu.cpu_times()
                        states = n * chunk
                        per[name]["cpu"].append((c1 - c0) / states * 1e6)
                        per[name]["tansu"].append(((t1.user + t1.system) - (t0.user + t0.system)) / states * 1e6)
                        per[name]["requests"].append((sends[0] - s0) / n)
                point: dict[str, Any] = {"chunk": chunk, "rounds": args.rounds}
                for name, v in per.items():
                    point[f"{name}_worker_us_per_state"] = round(statistics.median(v["cpu"]), 2)
                    point[f"{name}_tansu_us_per_state"] = round(statistics.median(v["tansu"]), 2)
                    point[f"{name}_requests_per_flush"] = round(statistics.median(v["requests"]), 1)
                point["worker_table_over_bulk"] = round(point["table_worker_us_per_state"]
                                                        / point["bulk_worker_us_per_state"], 1)
                point["tansu_table_over_bulk"] = round(point["table_tansu_us_per_state"]
                                                       / max(point["bulk_tansu_us_per_state"], 1e-9), 1)
                print(orjson.dumps(point).decode(), flush=True)
                out.append(point)
        finally:
            await app.producer.stop()
    return out


def report(points: list[dict[str, Any]], info: dict[str, Any], after: list[float], size: float) -> str:
    load = info.get("load_average_at_start")
    lines = [f"changelog cost per state, {info.get('cpu')}, {info.get('cores')} cores, commit {info.get('commit')}, "
             f"load average {load} before, {after} after; records {size:.0f} bytes mean", "",
             "| states per flush | worker µs/state: table / bulk / batches | worker table/bulk "
             "| Tansu µs/state: table / bulk / batches | requests per flush: table / bulk / batches |",
             "|---|---|---|---|---|"]
    lines += [f"| {p['chunk']:,} | {p['table_worker_us_per_state']} / {p['bulk_worker_us_per_state']} / "
              f"{p['batches_worker_us_per_state']} | {p['worker_table_over_bulk']} | {p['table_tansu_us_per_state']} / "
              f"{p['bulk_tansu_us_per_state']} / {p['batches_tansu_us_per_state']} | {p['table_requests_per_flush']} / "
              f"{p['bulk_requests_per_flush']} / {p['batches_requests_per_flush']} |" for p in points]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", default="1,20,200,2000", help="states per flush, comma-separated")
    ap.add_argument("--states", type=int, default=2000, help="states per round (in flushes of a chunk)")
    ap.add_argument("--gap-ms", type=float, default=20.0, help="wall time between flushes")
    ap.add_argument("--rounds", type=int, default=10, help="alternating rounds per chunk size")
    ap.add_argument("--patients", type=int, default=2000, help="patients whose packed states are written")
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="rpm-changelog-tansu-") as tmp:
        svc = start_tansu(Path(tmp))
        try:
            points = asyncio.run(measure(f"127.0.0.1:{svc.port}", psutil.Process(svc.pid), args))
        finally:
            svc.stop()
    engine = populated(200, args.seed)
    size = statistics.mean(map(len, engine.export_packed(engine.registry.ids())))
    after = [round(x, 2) for x in os.getloadavg()]
    text = report(points, info, after, size)
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(orjson.dumps({"command": "python -m benchmarks.changelog_cost " + " ".join(
            argv if argv is not None else sys.argv[1:]), "machine": info, "loadavg_after": after,
            "record_bytes_mean": size, "points": points}, option=orjson.OPT_INDENT_2).decode())
        args.out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
