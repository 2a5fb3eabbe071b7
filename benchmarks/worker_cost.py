"""In-process CPU cost of the worker's per-batch path, per reading, against the number of patients (issue 20).

    nice -n 10 .venv/bin/python -m benchmarks.worker_cost --patients 10000,100000 --rate 40000 \\
        [--baseline main] [--rounds 4] [--profile DIR] [--out FILE]

What runs is the worker's own protocol, :class:`stream.protocol.WorkerMachine` over a
:class:`stream.pipeline.Pipeline` with the default rules (``alert_rules.yaml``), the way
:mod:`stream.agents` drives it: per micro-batch ``machine.readings`` (decode the ``rpm.readings``
records, load state, vitals lines, detectors, alert lines, the InfluxDB write, alert events, the
group commit: pending states that fell due are exported as packed records and stored, batches
acknowledged) and ``machine.tick`` once per simulated second. What is not here: Faust and aiokafka
(fetching records, the table write's changelog record, producing alerts, committing offsets) and
the HTTP request to InfluxDB: the store is a :class:`~stream.pipeline.DictStore`, the sink an
:class:`~rpm_core.sink.InfluxSink` whose writer keeps the request bodies, alerts and dead letters
are collected.

The input is what the bridge writes (:func:`stream.bridge._readings_records`' format: one record
per partition of 8 per bridge batch, a group per message with its patient): messages of 10
readings (4-5 heart rates and 5-6 RR intervals, as :mod:`benchmarks.loadgen` sends) round robin
over the patients at ``--rate`` readings/s, plus one 1-reading CGM message per 66. Time is
simulated: the pipeline's clock advances by each batch's share of the rate, so the group commit
writes a changed state once it is ``RPM_CHECKPOINT_INTERVAL_S`` (30 s) old as in a live worker,
and a patient sends every ``patients × 10 / rate`` s. Per patient count: a prime (every patient
one message, not measured), a warm-up of ``--warm-s`` simulated seconds (the checkpoints of the
prime and of the first messages reach their steady state), then ``--rounds`` measured windows of
``--window-s`` simulated seconds each. CPU time of this process (``time.process_time``) spent
inside the machine's calls only (input generation and output hashing are outside), per reading.

``--baseline REV``: the ``detectors``, ``stream`` and ``rpm_core`` packages of git revision REV are
loaded beside the current ones (each version's modules swapped into ``sys.modules`` while it runs),
both get the same input and the same simulated clock, and their windows alternate (ABAB…), so
the ratio does not depend on what else the machine was doing. Both versions' outputs (every
InfluxDB body, alert event, dead letter, and the final state table) are hashed and compared.

``--profile DIR``: a cProfile of one extra window of the current code per patient count.

``--store table``: the state store is the worker's own, :class:`stream.agents.TableStore` on a Faust
table of an app built by :func:`stream.app.create_app` (as ``stream.agents.register_agents`` builds
it in each version), producing its changelog records to a Tansu started here; once per simulated
second (with the ticks) ``app.producer.flush()``, what Faust's offset commit does before it commits,
is timed with the machine. So the changelog records and their produce requests are counted (each
version has an app, a producer and a changelog topic of its own); fetching, the consumer and the
offset commits are still left out. Default ``dict``: a :class:`~stream.pipeline.DictStore`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import hashlib
import importlib
import inspect
import io
import json
import os
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

from benchmarks.e2e import machine_info

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("detectors", "stream", "rpm_core")
PARTITIONS = 8
SAMPLES_PER_MESSAGE = 10
CGM_EVERY = 66
CGM_SHARE = 5  # one patient in five wears a CGM
T0 = 1_780_000_000.0


# -- versions of the code, side by side --------------------------------------------------------


def _ours(name: str) -> bool:
    return name.split(".", 1)[0] in PACKAGES


def load_version(tree: Path) -> dict[str, ModuleType]:
    """The modules of our packages imported from ``tree`` (then removed from ``sys.modules``)."""
    for name in [n for n in sys.modules if _ours(n)]:
        del sys.modules[name]
    sys.path.insert(0, str(tree))
    try:
        for name in ("stream.protocol", "stream.pipeline", "stream.records", "detectors.engine", "rpm_core.rules",
                     "rpm_core.sink", "rpm_core.lineprotocol", "rpm_core.alarm_policy", "rpm_core.acks",
                     "stream.agents", "stream.app", "stream.faust_adapter"):
            importlib.import_module(name)
        mods = {n: m for n, m in sys.modules.items() if _ours(n)}
    finally:
        sys.path.remove(str(tree))
    for name in mods:
        del sys.modules[name]
    origin = Path(mods["stream.pipeline"].__file__ or "").resolve()
    assert origin.is_relative_to(tree.resolve()), f"{origin} is not in {tree}"
    return mods


def activate(mods: dict[str, ModuleType]) -> None:
    """Make ``mods`` the modules that lazy imports find."""
    for name in [n for n in sys.modules if _ours(n)]:
        del sys.modules[name]
    sys.modules.update(mods)


def export_revision(rev: str, dest: Path) -> Path:
    """The tree of git revision ``rev`` under ``dest``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, *PACKAGES, "alert_rules.yaml"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


# -- input ---------------------------------------------------------------------------------------


class Feed:
    """Readings records as the bridge writes them, round robin over ``patients``."""

    def __init__(self, patients: int, rate: float, seed: int = 7) -> None:
        self.ids = [f"lg{i:06d}" for i in range(patients)]
        self.hr_device = [f"hrs-{p}" for p in self.ids]
        self.cgm_device = [f"cgm-{p}" for p in self.ids]
        from rpm_core.topics import partition_for

        self.partition = [partition_for(p, PARTITIONS) for p in self.ids]
        rng = random.Random(seed)
        self.rng = rng
        self.base_hr = [rng.uniform(62.0, 88.0) for _ in self.ids]
        self.glucose = [rng.uniform(95.0, 150.0) for _ in self.ids]
        self.last_ms = [0] * patients
        self.count = [0] * patients
        self.rate = rate
        self.next = 0
        self.next_cgm = 0
        self.primed = 0
        self.messages = 0

    def _hr(self, k: int, t_ms: int) -> dict[str, Any]:
        last = self.last_ms[k] or t_ms - 5000
        if t_ms - last < SAMPLES_PER_MESSAGE:
            t_ms = last + SAMPLES_PER_MESSAGE
        self.last_ms[k] = t_ms
        n = self.count[k]
        self.count[k] = n + 1
        n_hr = 5 if n % 2 == 0 else 4
        n_rr = SAMPLES_PER_MESSAGE - n_hr
        span = t_ms - last
        rnd = self.rng.random
        base = self.base_hr[k]
        metric, t, value = [], [], []
        for j in range(n_rr):
            hr = base + 4.0 * rnd() - 2.0
            metric.append("rr_interval")
            t.append((last + (j + 1) * span // n_rr) / 1000)
            value.append(round(60.0 / hr * (0.99 + 0.02 * rnd()), 3))
        for j in range(n_hr):
            metric.append("heart_rate")
            t.append((last + (j + 1) * span // n_hr) / 1000)
            value.append(round(base + 4.0 * rnd() - 2.0, 1))
        return {"device": self.hr_device[k], "source": "sim", "metric": metric, "t": t, "value": value,
                "flags": [0] * SAMPLES_PER_MESSAGE, "patient": self.ids[k]}

    def _cgm(self, k: int, t_ms: int) -> dict[str, Any]:
        self.glucose[k] = min(170.0, max(90.0, self.glucose[k] + self.rng.uniform(-3.0, 3.0)))
        return {"device": self.cgm_device[k], "source": "sim", "metric": ["glucose"], "t": [t_ms / 1000],
                "value": [round(self.glucose[k], 1)], "flags": [0], "patient": self.ids[k]}

    def batch(self, messages: int, now: float) -> tuple[list[bytes], int]:
        """The records of ``messages`` messages sent by ``now`` (one record per partition), and their readings."""
        by_part: dict[int, list[dict[str, Any]]] = {}
        readings = 0
        t_ms = int(now * 1000)
        for _ in range(messages):
            self.messages += 1
            if self.messages % CGM_EVERY == 0:  # CGM patients (one in CGM_SHARE) in turn
                k = self.next_cgm
                self.next_cgm = k + CGM_SHARE if k + CGM_SHARE < len(self.ids) else 0
                group = self._cgm(k, t_ms)
            else:
                k = self.next
                group = self._hr(k, t_ms)
                self.next = (k + 1) % len(self.ids)
            readings += len(group["t"])
            by_part.setdefault(self.partition[k], []).append(group)
        return [orjson.dumps({"v": 1, "groups": g}) for g in by_part.values()], readings

    def prime(self, messages: int, now: float) -> tuple[list[bytes], int]:
        """The prime: every patient one heart-rate message and every CGM patient one CGM message, in
        batches of ``messages`` (call until it returns no records)."""
        by_part: dict[int, list[dict[str, Any]]] = {}
        readings = 0
        t_ms = int(now * 1000)
        n = len(self.ids)
        while self.primed < n and messages > 0:
            k = self.primed
            self.primed += 1
            for group in (self._hr(k, t_ms), *((self._cgm(k, t_ms),) if k % CGM_SHARE == 0 else ())):
                readings += len(group["t"])
                by_part.setdefault(self.partition[k], []).append(group)
                messages -= 1
        return [orjson.dumps({"v": 1, "groups": g}) for g in by_part.values()], readings


# -- one version of the worker -----------------------------------------------------------------


@dataclass
class _Event:
    value: bytes
    key: bytes | None = None
    headers: Any = None


class _Stream:
    async def ack(self, event: Any) -> None:
        pass


class _Writer:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def write(self, body: bytes) -> None:
        self.bodies.append(body)

    async def close(self) -> None:
        pass


@dataclass
class Subject:
    """One version of the worker's code, its machine and its outputs' digest."""

    name: str
    mods: dict[str, ModuleType]
    clock: list[float] = field(default_factory=lambda: [T0])
    digest: Any = field(default_factory=hashlib.blake2b)
    alerts: int = 0
    tick_cpu: float = 0.0
    commit_cpu: float = 0.0
    outputs: list[bytes] = field(default_factory=list)
    app: Any = None

    def __post_init__(self) -> None:
        activate(self.mods)
        m = self.mods
        ruleset = m["rpm_core.rules"].load_rules(REPO / "alert_rules.yaml")
        policy = m["rpm_core.alarm_policy"]
        realarm = policy.realarm_table(policy.load_alarm_policy(REPO / "alert_rules.yaml"),
                                       [r.name for r in ruleset.rules])
        self.writer = _Writer()
        sink = m["rpm_core.sink"].InfluxSink(writer=self.writer)
        engine_cls = m["detectors.engine"].Engine
        self.pipeline = m["stream.pipeline"].Pipeline(
            engine_factory=lambda: engine_cls(ruleset, realarm_after=realarm), sink=sink,
            clock=lambda: self.clock[0])

        async def send(key: bytes | None, value: bytes) -> None:
            self.outputs.append((key or b"") + b"\0" + value)

        self.pipeline.bind(send_alert=send, send_deadletter=send)
        proto = m["stream.protocol"]
        status = proto.WorkerStatus(configured_partitions=PARTITIONS)
        self.machine = proto.WorkerMachine(self.pipeline, status, checkpoint_interval_s=proto.CHECKPOINT_INTERVAL_S)
        self.machine.recovered(frozenset(range(PARTITIONS)), PARTITIONS)
        self.stream = _Stream()
        self.next_tick = T0 + 1.0

    async def use_table(self, bootstrap: str, datadir: Path) -> None:
        """The worker's state store: a Faust table with its changelog on ``bootstrap`` (``--store table``)."""
        activate(self.mods)
        from rpm_core.host import free_port

        app = self.mods["stream.app"].create_app(broker=f"kafka://{bootstrap}", partitions=PARTITIONS,
                                                 datadir=str(datadir), web_port=free_port(),
                                                 app_id=f"worker-cost-{uuid.uuid4().hex[:8]}")
        table = app.Table(self.mods["stream.protocol"].STATE_TABLE, partitions=PARTITIONS, key_type=bytes,
                          value_type=bytes, use_partitioner=True)
        app.finalize()
        await app.producer.start()
        await table.changelog_topic.maybe_declare()
        store_cls = self.mods["stream.agents"].TableStore
        kw = {}
        if "producer" in inspect.signature(store_cls).parameters:  # as register_agents builds it
            kw["producer"] = functools.partial(self.mods["stream.faust_adapter"].kafka_producer, app)
        self.pipeline.use_store(store_cls(table, **kw))
        self.app = app

    async def close(self) -> None:
        if self.app is not None:
            await self.app.producer.stop()
            self.app.consumer._thread.thread_loop.close()

    def _drain_outputs(self) -> None:
        for body in self.writer.bodies:
            self.digest.update(body)
        for out in self.outputs:
            self.digest.update(out)
        self.writer.bodies.clear()
        self.outputs.clear()

    async def step(self, records: list[bytes], dt: float) -> float:
        """One batch at the current clock, then the clock advances by ``dt`` (ticks as they fall due);
        the CPU seconds spent in the machine."""
        activate(self.mods)
        events = [_Event(v) for v in records]
        c0 = time.process_time()
        await self.machine.readings(self.stream, events)
        cpu = time.process_time() - c0
        self.clock[0] += dt
        while self.next_tick <= self.clock[0]:
            c0 = time.process_time()
            await self.machine.tick()
            tick = time.process_time() - c0
            cpu += tick
            self.tick_cpu += tick
            self.next_tick += 1.0
            if self.app is not None:  # Faust's offset commit (once a second) flushes the producer first
                c0 = time.process_time()
                await self.app.producer.flush()
                commit = time.process_time() - c0
                cpu += commit
                self.commit_cpu += commit
        self._drain_outputs()
        return cpu

    def final_digest(self) -> str:
        self._drain_outputs()
        store = self.pipeline.store
        data = store.data if hasattr(store, "data") else {
            bytes(k).decode(): bytes(v) for k, v in store._table.data.items()}
        for key in sorted(data):
            self.digest.update(key.encode() + b"\0" + data[key])
        return str(self.digest.hexdigest())[:16]


# -- the run -----------------------------------------------------------------------------------


async def run_count(patients: int, subjects: list[Subject], args: argparse.Namespace) -> dict[str, Any]:
    feed = Feed(patients, args.rate)
    msgs_per_batch = args.batch_messages
    batch_s = msgs_per_batch * SAMPLES_PER_MESSAGE / args.rate  # simulated seconds per batch (about)

    async def advance(seconds: float, timed: Subject | None, prime: bool = False) -> dict[str, tuple[float, int]]:
        """Feed ``seconds`` of load (or the prime) to every subject; CPU and readings of each
        (only the subject ``timed`` when given; the others are fed the same and not counted)."""
        out = {s.name: (0.0, 0) for s in subjects}
        now = subjects[0].clock[0]
        end = now + seconds
        while True:
            if prime:
                records, readings = feed.prime(args.prime_batch, now)
                if not records:
                    break
                dt = 0.0
            elif now < end:
                records, readings = feed.batch(msgs_per_batch, now)
                dt = readings / args.rate
            else:
                break
            for s in subjects:
                cpu = await s.step(records, dt)
                if timed is None or s is timed:
                    c, r = out[s.name]
                    out[s.name] = (c + cpu, r + readings)
            now = subjects[0].clock[0]
        return out

    started = time.time()
    if args.store == "table":
        for s in subjects:
            await s.use_table(args.bootstrap, Path(tempfile.mkdtemp(prefix="rpm-worker-cost-faust-")))
    prime = await advance(0.0, None, prime=True)
    for s in subjects:  # the prime came in at one instant: let time pass as the load starts
        s.clock[0] += 1.0
    warm = await advance(args.warm_s, None)
    res: dict[str, Any] = {"patients": patients, "rate": args.rate, "batch_messages": msgs_per_batch,
                           "batch_s": batch_s, "setup_wall_s": round(time.time() - started, 1),
                           "prime_us_per_reading": {k: c / r * 1e6 for k, (c, r) in prime.items() if r},
                           "warm_us_per_reading": {k: c / r * 1e6 for k, (c, r) in warm.items() if r}}
    per: dict[str, list[float]] = {s.name: [] for s in subjects}
    ckpt0 = {s.name: s.pipeline.stats.checkpoints for s in subjects}
    read0 = {s.name: s.pipeline.stats.samples for s in subjects}
    tick0 = {s.name: s.tick_cpu for s in subjects}
    commit0 = {s.name: s.commit_cpu for s in subjects}
    for _round in range(args.rounds):
        # every subject is fed every window (same input, same clock); each window is timed as a whole
        # and the subjects take turns in the order in which they are fed
        order = subjects if _round % 2 == 0 else list(reversed(subjects))
        totals = {s.name: [0.0, 0] for s in subjects}
        now = subjects[0].clock[0]
        end = now + args.window_s
        while now < end:
            records, readings = feed.batch(msgs_per_batch, now)
            for s in order:
                cpu = await s.step(records, readings / args.rate)
                totals[s.name][0] += cpu
                totals[s.name][1] += readings
            now = subjects[0].clock[0]
        for name, (c, r) in totals.items():
            per[name].append(c / r * 1e6)
    res["us_per_reading"] = per
    res["median_us_per_reading"] = {k: statistics.median(v) for k, v in per.items()}
    res["checkpoints_per_reading"] = {s.name: (s.pipeline.stats.checkpoints - ckpt0[s.name])
                                      / max(1, s.pipeline.stats.samples - read0[s.name]) for s in subjects}
    res["tick_us_per_reading"] = {s.name: (s.tick_cpu - tick0[s.name]) * 1e6
                                  / max(1, s.pipeline.stats.samples - read0[s.name]) for s in subjects}
    res["commit_flush_us_per_reading"] = {s.name: (s.commit_cpu - commit0[s.name]) * 1e6
                                          / max(1, s.pipeline.stats.samples - read0[s.name]) for s in subjects}
    res["total_us_per_reading"] = {k: sum(v) / len(v) for k, v in per.items()}
    res["alerts"] = {s.name: s.pipeline.stats.alerts for s in subjects}
    res["deadlettered"] = {s.name: s.pipeline.stats.deadlettered for s in subjects}
    res["pending"] = {s.name: s.pipeline.pending for s in subjects}
    if len(subjects) == 2:
        a, b = subjects
        res["ratio_current_over_base"] = statistics.median(
            x / y for x, y in zip(per[b.name], per[a.name], strict=True))
        res["ratios"] = [x / y for x, y in zip(per[b.name], per[a.name], strict=True)]
    if args.profile is not None:
        cur = subjects[-1]
        prof = cProfile.Profile()
        now = cur.clock[0]
        end = now + args.window_s
        n = 0
        while now < end:
            records, readings = feed.batch(msgs_per_batch, now)
            prof.enable()
            await cur.step(records, readings / args.rate)
            prof.disable()
            n += readings
            now = cur.clock[0]
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(35)
        args.profile.mkdir(parents=True, exist_ok=True)
        path = args.profile / f"worker-cost-{patients}.prof.txt"
        path.write_text(f"readings profiled: {n}\n" + buf.getvalue())
        res["profile"] = str(path)
    else:
        res["digests"] = {s.name: s.final_digest() for s in subjects}
        res["outputs_identical"] = len(set(res["digests"].values())) == 1
    for s in subjects:
        await s.close()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", default="10000,100000")
    ap.add_argument("--rate", type=float, default=40_000.0, help="offered readings/s (simulated time)")
    ap.add_argument("--batch-messages", type=int, default=200,
                    help="messages per worker batch (200: what 50 ms of 40k readings/s bring)")
    ap.add_argument("--prime-batch", type=int, default=2_000)
    ap.add_argument("--warm-s", type=float, default=40.0)
    ap.add_argument("--window-s", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--baseline", help="git revision to compare with, in the same process")
    ap.add_argument("--profile", type=Path, help="write a cProfile of one window per patient count here")
    ap.add_argument("--store", choices=("dict", "table"), default="dict",
                    help="table: the worker's Faust table and its changelog on a Tansu started here")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    results: dict[str, Any] = {
        "command": "python -m benchmarks.worker_cost " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(),  # before any version is loaded: it imports our packages
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="rpm-worker-cost-") as tmp:
        versions: list[tuple[str, dict[str, ModuleType]]] = []
        if args.baseline:
            versions.append((f"base {args.baseline}", load_version(export_revision(args.baseline, Path(tmp)))))
        versions.append(("current", load_version(REPO)))
        tansu = None
        if args.store == "table":
            from rpm_app.services import start_tansu

            tansu = start_tansu(Path(tmp) / "tansu")
            args.bootstrap = f"127.0.0.1:{tansu.port}"
        try:
            for count in (int(x) for x in args.patients.split(",")):
                subjects = [Subject(name, mods) for name, mods in versions]
                res = asyncio.run(run_count(count, subjects, args))
                res["loadavg_end"] = os.getloadavg()
                results["runs"].append(res)
                print(json.dumps(res), flush=True)
                del subjects
        finally:
            if tansu is not None:
                tansu.stop()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
