"""Offered-load generator of the end-to-end benchmark: simulated patients over MQTT at a fixed rate.

Each of up to :data:`MAX_PROCESSES` processes owns a slice of the patients and its own paho MQTT v5
client (QoS 1), and publishes readings messages (schema v1, :func:`rpm_core.wire.encode_readings`'s
format, encoded with orjson) on a fixed schedule, paced in :attr:`LoadSpec.slice_s` time slices:
every slice it publishes the messages that fell due since the previous one.

The workload (per patient, like ``rpm simulate``): heart rate at 1 Hz and an RR interval per beat
(~1.2/s) from a strap, sent as messages of :attr:`LoadSpec.samples_per_message` samples (4 or 5
heart rates, the rest RR intervals), and a CGM glucose every 5 minutes (one-sample messages of
the ``cgm-…`` device). The number of patients follows from the offered rate (≈ 2.2 readings/s
each) unless given. Device timestamps are the wall clock: the samples of a message are spread
evenly over the time since the patient's previous message, and its last heart-rate sample is
stamped with the publish time, so ``alert arrival − device time`` measures the pipeline, not the
edge batching.

One patient in :attr:`LoadSpec.probe_every` is a latency probe: the last heart rate of every other
message of theirs is 170 bpm (above the ``bench_latency_probe`` rule of ``benchmarks/e2e_rules.yaml``)
and the next message brings it back to ~80 bpm, so each crossing raises one alert.

PUBACKs are tracked by message id in ``on_publish`` (the pattern of ``simulators.runner``). A
PUBACK with reason code 16 ("no matching subscribers") means Mosquitto dropped the message: it is
counted as *rejected* and published again later. Publishing stops being on schedule when more
than :attr:`LoadSpec.max_backlog` messages wait for their PUBACK (backpressure): the generator
then reports that it could not offer the load, and by how much.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing as mp
import os
import queue
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import orjson
import paho.mqtt.client as mqtt

from rpm_core.mqtt_client import mqtt_client
from rpm_core.settings import MqttSettings
from rpm_core.wire import readings_topic

HR_PER_S: Final = 1.0
BEATS_PER_S: Final = 1.2  # 72 bpm: one RR interval per beat
CGM_INTERVAL_S: Final = 300.0
READINGS_PER_PATIENT_S: Final = HR_PER_S + BEATS_PER_S + 1.0 / CGM_INTERVAL_S
READINGS_PER_PROCESS: Final = 15_000  # offered readings/s one generator process is given
MAX_PROCESSES: Final = 2
PROBE_HR: Final = 170.0
RC_NO_MATCHING_SUBSCRIBERS: Final = 16
ACK_TIMEOUT_S: Final = 180.0
METRICS: Final = ("heart_rate", "rr_interval", "glucose")


@dataclass(frozen=True)
class LoadSpec:
    """What to offer."""

    mqtt_url: str
    rate: float  # readings/s over all processes
    duration_s: float
    prefix: str = "e"  # patient ids are f"{prefix}{index:05d}"; one prefix per run keeps runs apart
    patients: int = 0  # 0: rate / READINGS_PER_PATIENT_S
    probe_every: int = 50  # 1 in N patients is a latency probe; 0: none
    samples_per_message: int = 10
    processes: int = 0  # 0: one per READINGS_PER_PROCESS, at most MAX_PROCESSES
    max_backlog: int = 20_000  # messages awaiting PUBACK before the generator holds back
    slice_s: float = 0.01
    inflight: int = 1000
    seed: int = 0

    def patient_count(self) -> int:
        """How many patients the load needs (or was given)."""
        return self.patients or max(1, round(self.rate / READINGS_PER_PATIENT_S))

    def process_count(self) -> int:
        """How many generator processes."""
        if self.processes:
            return self.processes
        return max(1, min(MAX_PROCESSES, math.ceil(self.rate / READINGS_PER_PROCESS), self.patient_count()))


@dataclass
class ProcessResult:
    """What one generator process did."""

    index: int
    patients: int
    offered: int = 0  # readings due by the schedule
    published: int = 0  # readings handed to paho (first attempts)
    acked: Counter[str] = field(default_factory=Counter)  # readings PUBACKed with success, by metric
    messages: int = 0
    rejected_messages: int = 0  # PUBACK 16: dropped by Mosquitto (no subscriber), re-published
    failed_messages: int = 0  # PUBACK >= 0x80 (not authorised, quota, …): lost, not retried
    republished_messages: int = 0
    crossings: int = 0  # probe crossings published
    max_backlog: int = 0  # most messages awaiting PUBACK at once
    max_lag_s: float = 0.0  # furthest behind the schedule the generator fell
    held_slices: int = 0  # slices in which the backlog cap held publishing back
    first_publish: float = 0.0
    last_publish: float = 0.0
    last_ack: float = 0.0
    error: str | None = None


@dataclass
class LoadResult:
    """The whole load, all processes summed."""

    spec: dict[str, Any]
    patients: int
    processes: int
    offered: int
    published: int
    acked: dict[str, int]
    acked_total: int
    messages: int
    rejected_messages: int
    failed_messages: int
    republished_messages: int
    crossings: int
    max_backlog: int
    max_lag_s: float
    held_slices: int
    first_publish: float
    last_publish: float
    last_ack: float
    publish_rate: float  # achieved: readings published / publishing time
    kept_up: bool  # whether the generator offered the load on schedule
    errors: list[str]

    def summary(self) -> str:
        """One line for the console."""
        note = "" if self.kept_up else f" (BEHIND: achieved {self.publish_rate:,.0f}/s, max lag {self.max_lag_s:.1f} s)"
        return (f"offered {self.offered:,} published {self.published:,} acked {self.acked_total:,} "
                f"rejected(16) {self.rejected_messages} failed {self.failed_messages} "
                f"max backlog {self.max_backlog} msgs{note}")


class _Generator:
    """One process's patients, message schedule and PUBACK bookkeeping."""

    def __init__(self, spec: LoadSpec, index: int, lo: int, hi: int, rate: float) -> None:
        self.spec = spec
        self.ids = [f"{spec.prefix}{i:05d}" for i in range(lo, hi)]
        self.topics = [readings_topic(p) for p in self.ids]
        self.hr_device = [f"hrs-{p}" for p in self.ids]
        self.cgm_device = [f"cgm-{p}" for p in self.ids]
        self.probe = [spec.probe_every > 0 and i % spec.probe_every == 0 for i in range(lo, hi)]
        rng = random.Random(spec.seed * 7919 + lo)
        self.rng = rng
        self.base_hr = [rng.uniform(62.0, 88.0) for _ in self.ids]
        self.glucose = [rng.uniform(95.0, 150.0) for _ in self.ids]
        n = len(self.ids)
        self.cgm_rate = n / CGM_INTERVAL_S
        self.msg_rate = max(rate - self.cgm_rate, 0.0) / spec.samples_per_message
        self.last_ms = [0] * n
        self.start_ms = int(time.time() * 1000)
        self.count = [0] * n
        self.result = ProcessResult(index=index, patients=n)
        self.pending: dict[int, tuple[str, bytes, Counter[str], int]] = {}
        self._early: dict[int, int] = {}
        self.retry: deque[tuple[str, bytes, Counter[str], int]] = deque()
        self._lock = threading.Lock()

    # -- PUBACKs ---------------------------------------------------------------------------------

    def on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        code = int(getattr(rc, "value", rc))
        with self._lock:
            entry = self.pending.pop(mid, None)
            if entry is None:
                self._early[mid] = code  # acknowledged before publish() returned
                return
            self._settle(entry, code)

    def _settle(self, entry: tuple[str, bytes, Counter[str], int], code: int) -> None:
        r = self.result
        if code == RC_NO_MATCHING_SUBSCRIBERS:
            r.rejected_messages += 1
            self.retry.append(entry)
        elif code >= 0x80:
            r.failed_messages += 1
        else:
            r.acked.update(entry[2])
            r.last_ack = time.time()

    def _send(self, client: mqtt.Client, entry: tuple[str, bytes, Counter[str], int]) -> None:
        # Not under self._lock: paho calls on_publish holding its own lock (lock-order deadlock).
        info = client.publish(entry[0], entry[1], qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise ConnectionError(f"publish refused: {mqtt.error_string(info.rc)}")
        with self._lock:
            code = self._early.pop(info.mid, None)
            if code is None:
                self.pending[info.mid] = entry
            else:
                self._settle(entry, code)
            backlog = len(self.pending)
        if backlog > self.result.max_backlog:
            self.result.max_backlog = backlog

    def backlog(self) -> int:
        with self._lock:
            return len(self.pending) + len(self.retry)

    # -- messages --------------------------------------------------------------------------------

    def hr_message(self, k: int, now: float) -> tuple[str, bytes, Counter[str], int]:
        spm = self.spec.samples_per_message
        t_ms = int(now * 1000)
        # A patient's first message covers the time since the run started: every sample of a run is
        # newer than its start, which keeps runs apart in InfluxDB.
        last = self.last_ms[k] or self.start_ms
        if t_ms - last < spm:
            t_ms = last + spm  # keep every (patient, metric, time) unique: one point each
        self.last_ms[k] = t_ms
        n = self.count[k]
        self.count[k] = n + 1
        n_hr = min(spm, 5 if n % 2 == 0 else 4)
        n_rr = spm - n_hr
        span = t_ms - last
        rnd = self.rng.random
        base = self.base_hr[k]
        samples: list[list[Any]] = []
        for j in range(n_rr):
            hr = base + 4.0 * rnd() - 2.0
            samples.append(["rr_interval", (last + (j + 1) * span // n_rr) / 1000,
                            round(60.0 / hr * (0.99 + 0.02 * rnd()), 3)])
        hr_values = [round(base + 4.0 * rnd() - 2.0, 1) for _ in range(n_hr)]
        crossing = 0
        if self.probe[k] and n % 2 == 1:
            hr_values[-1] = PROBE_HR
            crossing = 1
        samples += [["heart_rate", (last + (j + 1) * span // n_hr) / 1000, v] for j, v in enumerate(hr_values)]
        payload = orjson.dumps({"v": 1, "patient": self.ids[k], "device": self.hr_device[k], "source": "sim",
                                "samples": samples})
        return self.topics[k], payload, Counter({"heart_rate": n_hr, "rr_interval": n_rr}), crossing

    def cgm_message(self, k: int, now: float) -> tuple[str, bytes, Counter[str], int]:
        self.glucose[k] = min(170.0, max(90.0, self.glucose[k] + self.rng.uniform(-3.0, 3.0)))
        payload = orjson.dumps({"v": 1, "patient": self.ids[k], "device": self.cgm_device[k], "source": "sim",
                                "samples": [["glucose", int(now * 1000) / 1000, round(self.glucose[k], 1)]]})
        return self.topics[k], payload, Counter({"glucose": 1}), 0

    # -- the schedule ----------------------------------------------------------------------------

    def run(self, client: mqtt.Client, progress: Callable[[], None]) -> None:
        spec, r = self.spec, self.result
        n = len(self.ids)
        # CGM readings are due spread over their 5-minute period: start at a random phase.
        cgm_order = list(range(n))
        self.rng.shuffle(cgm_order)
        hr_rr, cgm_rr = itertools.cycle(range(n)), itertools.cycle(cgm_order)
        cgm_phase = self.rng.random()
        sent_hr = sent_cgm = 0
        start = time.time()
        self.start_ms = int(start * 1000)
        end = start + spec.duration_s
        next_progress = start + 1.0
        r.first_publish = start
        while True:
            now = time.time()
            if now >= end:
                break
            elapsed = now - start
            due_hr = int(elapsed * self.msg_rate) - sent_hr
            due_cgm = int(elapsed * self.cgm_rate + cgm_phase) - sent_cgm
            lag_msgs = due_hr + due_cgm
            if lag_msgs > 0 and self.msg_rate > 0:
                r.max_lag_s = max(r.max_lag_s, lag_msgs / (self.msg_rate + self.cgm_rate))
            while self.retry:
                with self._lock:
                    entry = self.retry.popleft() if self.retry else None
                if entry is not None:
                    r.republished_messages += 1
                    self._send(client, entry)
            if len(self.pending) >= spec.max_backlog:
                r.held_slices += 1
            else:
                room = spec.max_backlog - len(self.pending)
                for _ in range(min(due_cgm, room)):
                    self._offer(client, self.cgm_message(next(cgm_rr), now))
                    sent_cgm += 1
                for _ in range(min(due_hr, room)):
                    self._offer(client, self.hr_message(next(hr_rr), now))
                    sent_hr += 1
            if now >= next_progress:
                progress()
                next_progress += 1.0
            pause = spec.slice_s - (time.time() - now)
            if pause > 0:
                time.sleep(pause)
        # What the schedule called for over the whole window (held-back messages never offered count too).
        r.offered = (int(spec.duration_s * self.msg_rate) * spec.samples_per_message
                     + int(spec.duration_s * self.cgm_rate + cgm_phase))
        r.last_publish = time.time()

    def _offer(self, client: mqtt.Client, entry: tuple[str, bytes, Counter[str], int]) -> None:
        r = self.result
        r.published += sum(entry[2].values())
        r.messages += 1
        r.crossings += entry[3]
        self._send(client, entry)

    def drain(self, client: mqtt.Client, timeout: float, progress: Callable[[], None]) -> None:
        """Wait for every PUBACK, re-publishing what Mosquitto rejected."""
        deadline = time.monotonic() + timeout
        next_progress = time.monotonic() + 1.0
        while True:
            with self._lock:
                retry = list(self.retry)
                self.retry.clear()
                waiting = len(self.pending)
            for entry in retry:
                self.result.republished_messages += 1
                self._send(client, entry)
            if not retry and not waiting:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{waiting} messages not acknowledged within {timeout:.0f} s")
            if time.monotonic() >= next_progress:
                progress()
                next_progress += 1.0
            time.sleep(0.2 if retry else 0.02)


def connect(mqtt_url: str, client_id: str, *, inflight: int = 1000) -> mqtt.Client:
    """A connected paho MQTT v5 client with its network loop running."""
    settings = MqttSettings.from_url(mqtt_url, ca_file=os.environ.get("RPM_MQTT_CA"))
    client = mqtt_client(settings, client_id, reconnect=False, max_inflight=inflight)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
    client.connect(settings.host, settings.port, keepalive=60)
    client.loop_start()
    if not connected.wait(30):
        client.loop_stop()
        raise ConnectionError(f"could not connect to MQTT at {settings.url()}")
    return client


def _process_main(spec: LoadSpec, index: int, lo: int, hi: int, rate: float, out: Any, go: Any) -> None:
    gen = _Generator(spec, index, lo, hi, rate)
    client: mqtt.Client | None = None
    try:
        client = connect(spec.mqtt_url, f"rpm-loadgen-{os.getpid()}-{index}", inflight=spec.inflight)
        client.on_publish = gen.on_publish
        out.put(("ready", index, None))
        go.wait()

        def progress() -> None:
            r = gen.result
            out.put(("progress", index, (time.time(), r.published, sum(r.acked.values()), gen.backlog())))

        gen.run(client, progress)
        gen.drain(client, ACK_TIMEOUT_S, progress)
    except Exception as exc:  # reported to the parent
        gen.result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
                client.loop_stop()
    res = asdict(gen.result)
    res["acked"] = dict(gen.result.acked)
    out.put(("done", index, res))


Progress = Callable[[float, int, int, int], None]  # (time, published, acked, backlog) summed over processes


def run_load(spec: LoadSpec, *, on_progress: Progress | None = None, on_start: Callable[[float], None] | None = None
             ) -> LoadResult:
    """Offer ``spec``'s load, wait for every PUBACK, and return what happened (blocking)."""
    n = spec.patient_count()
    nproc = spec.process_count()
    edges = [round(n * k / nproc) for k in range(nproc + 1)]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    go = ctx.Event()
    procs = [ctx.Process(target=_process_main, name=f"rpm-loadgen-{k}",
                         args=(spec, k, lo, hi, spec.rate * (hi - lo) / n, out, go))
             for k, (lo, hi) in enumerate(itertools.pairwise(edges)) if hi > lo]
    for p in procs:
        p.start()
    results: dict[int, dict[str, Any]] = {}
    latest: dict[int, tuple[float, int, int, int]] = {}
    ready = 0
    try:
        while ready < len(procs):
            kind, index, value = out.get(timeout=60)
            if kind == "ready":
                ready += 1
            elif kind == "done":  # failed before it was ready
                results[index] = value
                ready += 1
        go.set()
        if on_start is not None:
            on_start(time.time())
        deadline = time.monotonic() + spec.duration_s + ACK_TIMEOUT_S + 60
        while len(results) < len(procs):
            try:
                kind, index, value = out.get(timeout=max(1.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError("load generator processes did not finish") from None
            if kind == "progress":
                latest[index] = value
                if on_progress is not None:
                    on_progress(max(v[0] for v in latest.values()), *(sum(v[i] for v in latest.values())
                                                                      for i in (1, 2, 3)))
            elif kind == "done":
                results[index] = value
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return _combine(spec, n, [results[k] for k in sorted(results)])


def _combine(spec: LoadSpec, patients: int, parts: list[dict[str, Any]]) -> LoadResult:
    acked: Counter[str] = Counter()
    for p in parts:
        acked.update(p["acked"])
    first = min((p["first_publish"] for p in parts if p["first_publish"]), default=0.0)
    last = max((p["last_publish"] for p in parts), default=0.0)
    published = sum(p["published"] for p in parts)
    offered = sum(p["offered"] for p in parts)
    rate = published / (last - first) if last > first else 0.0
    max_lag = max((p["max_lag_s"] for p in parts), default=0.0)
    held = sum(p["held_slices"] for p in parts)
    return LoadResult(
        spec=asdict(spec) | {"mqtt_url": "(redacted)"}, patients=patients, processes=len(parts),
        offered=offered, published=published, acked={m: int(acked.get(m, 0)) for m in METRICS},
        acked_total=int(sum(acked.values())), messages=sum(p["messages"] for p in parts),
        rejected_messages=sum(p["rejected_messages"] for p in parts),
        failed_messages=sum(p["failed_messages"] for p in parts),
        republished_messages=sum(p["republished_messages"] for p in parts),
        crossings=sum(p["crossings"] for p in parts), max_backlog=max((p["max_backlog"] for p in parts), default=0),
        max_lag_s=max_lag, held_slices=held, first_publish=first, last_publish=last,
        last_ack=max((p["last_ack"] for p in parts), default=0.0), publish_rate=rate,
        kept_up=published >= 0.98 * offered and max_lag < 1.0 and held == 0,
        errors=[p["error"] for p in parts if p.get("error")],
    )


def wait_for_subscriber(mqtt_url: str, *, patient: str = "e2e-ready", timeout: float = 60.0) -> None:
    """Return once Mosquitto has a subscriber for readings (a PUBACK without reason code 16).

    The check message carries one heart rate from two minutes ago, older than any run's window.
    """
    client = connect(mqtt_url, f"rpm-loadgen-ready-{os.getpid()}")
    codes: queue.Queue[int] = queue.Queue()
    client.on_publish = lambda c, u, mid, rc, p: codes.put(int(getattr(rc, "value", rc)))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            payload = orjson.dumps({"v": 1, "patient": patient, "device": "hrs-ready", "source": "sim",
                                    "samples": [["heart_rate", int(time.time() - 120), 70.0]]})
            client.publish(readings_topic(patient), payload, qos=1)
            with contextlib.suppress(queue.Empty):
                if codes.get(timeout=5) != RC_NO_MATCHING_SUBSCRIBERS:
                    return
            time.sleep(0.2)
        raise TimeoutError("no subscriber for the readings topics")
    finally:
        client.disconnect()
        client.loop_stop()


def main() -> None:
    """``python -m benchmarks.loadgen MQTT_URL RATE DURATION``: offer a load against a running stack."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mqtt_url")
    parser.add_argument("rate", type=float)
    parser.add_argument("duration", type=float)
    parser.add_argument("--prefix", default="lg")
    parser.add_argument("--processes", type=int, default=0)
    args = parser.parse_args()
    spec = LoadSpec(mqtt_url=args.mqtt_url, rate=args.rate, duration_s=args.duration, prefix=args.prefix,
                    processes=args.processes)
    res = run_load(spec, on_progress=lambda t, pub, ack, b: print(f"  published {pub:,} acked {ack:,} backlog {b}"))
    print(res.summary())


if __name__ == "__main__":
    main()
