"""``rpm simulate``: virtual patients publishing over MQTT (QoS 1) in real time, from several processes.

Simulated time runs ``speed`` times faster than the wall clock and, with ``history_s``, starts
that far in the past (the backlog a device uploads after being offline). It is arranged to end at
"now", so no sample is ever from the future. Every MQTT message carries several samples of one
device; a process waits for every PUBACK before it reports, so the summary counts readings the
broker accepted.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import multiprocessing as mp
import os
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import paho.mqtt.client as mqtt

from rpm_core.errors import ServiceError
from rpm_core.mqtt_client import mqtt_client
from rpm_core.settings import MqttSettings
from rpm_core.wire import encode_readings_messages, readings_topic
from simulators.patients import CGM_INTERVAL_S, HR_INTERVAL_S, Population, patient_id

_LOGGER = logging.getLogger(__name__)

PUBACK_TIMEOUT_S = 120.0
PATIENTS_PER_PROCESS = 2_000
# PUBACK reason code 0x10: accepted but no subscription matched, so the broker dropped the message.
NO_MATCHING_SUBSCRIBERS = 0x10
UNROUTED_RETRY_S = 1.0
COLLECT_POLL_S = 0.2  # how often the parent looks for a stop request or a process that died
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class _Message:
    topic: str
    payload: bytes
    counts: Counter[str]


@dataclass(frozen=True)
class SimConfig:
    """What to simulate."""

    patients: int
    duration_s: float
    mqtt_url: str
    speed: float = 1.0
    history_s: float = 0.0
    flush_s: float = 1.0
    processes: int = 0
    seed: int = 0
    prefix: str = "p"
    first_index: int = 0


def _connect(mqtt_url: str, client_id: str) -> tuple[mqtt.Client, threading.Event]:
    settings = MqttSettings.from_url(mqtt_url, ca_file=os.environ.get("RPM_MQTT_CA"))
    client = mqtt_client(settings, client_id, reconnect=False, max_inflight=1000)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None
    client.connect(settings.host, settings.port, keepalive=30)
    client.loop_start()
    if not connected.wait(30):
        client.loop_stop()
        raise ConnectionError(f"could not connect to MQTT at {settings.url()}")
    return client, connected


class Outlet(Protocol):
    """Where a simulator process's messages go (MQTT here; a recorder in tests)."""

    def publish(self, patient: str, device: str, samples: list[list[Any]]) -> None: ...

    def retry_due(self) -> None: ...

    def wait_all(self, timeout: float) -> Counter[str]: ...


class _Publisher:
    """Publishes one process's messages and counts what the broker acknowledged.

    PUBACKs are tracked by message id through ``on_publish`` rather than ``wait_for_publish``:
    a QoS 1 message published while the broker is away (a restart) is queued by paho and sent
    after the reconnect under the same id, but its ``wait_for_publish`` raises "not connected".

    A PUBACK with reason code 0x10 ("No matching subscribers") is not a delivery: Mosquitto had
    no bridge subscribed (before the first bridge starts, or after a broker restart, which does not
    restore shared subscriptions) and dropped the message. It is published again
    :data:`UNROUTED_RETRY_S` later, like the edge agent does, and counted only once acknowledged.
    """

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.pending: dict[int, _Message] = {}
        self.acked: Counter[str] = Counter()
        self.unrouted = 0
        self._early: dict[int, int] = {}  # mid -> reason code, acknowledged before publish() returned
        self._retry: list[tuple[float, _Message]] = []  # (not before, message), oldest first
        self._refused: list[str] = []
        self._cond = threading.Condition()
        client.on_publish = self._on_publish

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        code = int(getattr(rc, "value", 0))
        with self._cond:
            message = self.pending.pop(mid, None)
            if message is None:
                self._early[mid] = code
            else:
                self._settle(message, code)
            self._cond.notify_all()

    def _settle(self, message: _Message, code: int) -> None:
        """Under ``self._cond``: book one PUBACK."""
        if code == NO_MATCHING_SUBSCRIBERS:
            if not self.unrouted:
                _LOGGER.warning("no subscriber for readings on the broker yet (is a bridge running?); "
                                "publishing them again every %.1f s", UNROUTED_RETRY_S)
            self.unrouted += 1
            self._retry.append((time.monotonic() + UNROUTED_RETRY_S, message))
        elif code >= 0x80:
            self._refused.append(f"{message.topic}: reason code 0x{code:02x}")
        else:
            self.acked.update(message.counts)

    def publish(self, patient: str, device: str, samples: list[list[Any]]) -> None:
        payloads = encode_readings_messages(patient=patient, device=device, source="sim", samples=samples)
        start = 0
        for payload, n in payloads:  # split below the wire's limits; counts follow each message's samples
            self._send(_Message(readings_topic(patient), payload, Counter(s[0] for s in samples[start : start + n])))
            start += n

    def _send(self, message: _Message) -> None:
        # Not under self._cond: paho calls on_publish holding its own lock (lock-order deadlock).
        info = self.client.publish(message.topic, message.payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise ConnectionError(f"publish refused: {mqtt.error_string(info.rc)}")
        with self._cond:
            code = self._early.pop(info.mid, None)
            if code is None:
                self.pending[info.mid] = message
            else:
                self._settle(message, code)
            self._raise_if_refused()

    def _raise_if_refused(self) -> None:
        if self._refused:
            raise ConnectionError("the broker refused messages (check the ACL): " + "; ".join(self._refused[:3]))

    def retry_due(self) -> None:
        """Publish again the unrouted messages whose wait is over."""
        now = time.monotonic()
        with self._cond:
            due = [m for at, m in self._retry if at <= now]
            self._retry = [(at, m) for at, m in self._retry if at > now]
        for message in due:
            self._send(message)

    def wait_all(self, timeout: float) -> Counter[str]:
        deadline = time.monotonic() + timeout
        while True:
            self.retry_due()
            with self._cond:
                self._raise_if_refused()
                if not self.pending and not self._retry:
                    return self.acked
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the broker did not acknowledge {len(self.pending) + len(self._retry)} "
                                       "messages in time (is a bridge subscribed?)")
                self._cond.wait(min(left, 0.2))


def _emit_tick(pop: Population, pub: Outlet, ids: list[str], last_t: float, t: float) -> None:
    """Publish everything measured in (last_t, t]: one HR message and at most one CGM message per patient."""
    hr = pop.heart_rate(t)
    pos, beat_t, rr = pop.beats_until(t, hr)
    # Bucket the beats per patient with one stable argsort.
    order = np.argsort(pos, kind="stable")
    bounds = np.searchsorted(pos[order], np.arange(len(ids) + 1)).tolist()
    beat_list, rr_list = beat_t[order].tolist(), rr[order].tolist()
    hr_times, hr_list = _ticks(last_t, t, HR_INTERVAL_S, pop.start_s), hr.tolist()
    cgm = [(tc, pop.glucose(tc).tolist()) for tc in _ticks(last_t, t, CGM_INTERVAL_S, pop.start_s)]
    for k, pid in enumerate(ids):
        samples: list[list[Any]] = [["heart_rate", ts, hr_list[k]] for ts in hr_times]
        samples += [["rr_interval", round(beat_list[j], 3), rr_list[j]] for j in range(bounds[k], bounds[k + 1])]
        if samples:
            pub.publish(pid, f"hrs-{pid}", samples)
        if cgm:
            pub.publish(pid, f"cgm-{pid}", [["glucose", tc, values[k]] for tc, values in cgm])


def _ticks(last_t: float, t: float, every_s: float, origin: float) -> list[float]:
    """The times origin + k·every_s that fall in (last_t, t]."""
    first = math.floor((last_t - origin) / every_s) + 1
    last = math.floor((t - origin) / every_s)
    return [origin + k * every_s for k in range(max(first, 0), last + 1)]


def _run_process(cfg: SimConfig, lo: int, hi: int, out: Any) -> None:
    """One simulator process: patients ``lo`` … ``hi - 1``; reports ``(lo, status, value)`` on ``out``."""
    try:
        out.put((lo, "ok", dict(_simulate_range(cfg, lo, hi))))
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the terminal's group
        out.put((lo, "error", "interrupted"))
    except Exception as exc:  # reported to the parent, which exits non-zero
        out.put((lo, "error", f"{type(exc).__name__}: {exc}"))


def _simulate_range(cfg: SimConfig, lo: int, hi: int) -> Counter[str]:
    client, _ = _connect(cfg.mqtt_url, f"rpm-sim-{os.getpid()}-{lo}")
    try:
        return _simulate_with(cfg, lo, hi, _Publisher(client))
    finally:
        client.disconnect()
        client.loop_stop()


def _simulate_with(cfg: SimConfig, lo: int, hi: int, pub: Outlet) -> Counter[str]:
    wall0 = time.time()
    # The simulated timeline starts early enough that, running `speed` times faster than the wall
    # clock after the backlog, it ends exactly at the wall clock's end: no sample from the future.
    ahead = cfg.duration_s * (cfg.speed - 1.0) if cfg.speed != 1.0 else 0.0
    sim0 = float(math.floor(wall0 - cfg.history_s - ahead))
    end = sim0 + cfg.history_s + cfg.duration_s * cfg.speed
    pop = Population(np.arange(lo, hi, dtype=np.int64), start_s=sim0, seed=cfg.seed)
    ids = [patient_id(i, cfg.prefix) for i in range(lo, hi)]
    last_t = sim0 - 0.5  # so that the first heart-rate and CGM samples fall at sim0
    while last_t < end:
        # Catch up on the backlog in flush-sized steps, then follow the (scaled) wall clock.
        live_t = sim0 + cfg.history_s + (time.time() - wall0) * cfg.speed
        step = cfg.flush_s * cfg.speed
        t = min(end, last_t + step, live_t)
        if t < end and t - last_t < step:
            time.sleep(0.02)
            continue
        _emit_tick(pop, pub, ids, last_t, t)
        pub.retry_due()
        last_t = t
    return pub.wait_all(PUBACK_TIMEOUT_S)


def simulate(cfg: SimConfig, *, stop: threading.Event | None = None) -> dict[str, Any]:
    """Run the simulation to its end and return the summary (``readings_sent``, ``by_metric``).

    Setting ``stop`` (from another thread) ends it early: the simulator processes are terminated
    and the summary says ``"stopped": True`` and counts only what finished processes reported.
    However it ends, no simulator process outlives this call.
    """
    if math.isinf(cfg.duration_s) and cfg.speed != 1.0:
        raise ValueError("an endless simulation must run at speed 1")
    nproc = cfg.processes or max(1, min(os.cpu_count() or 1, math.ceil(cfg.patients / PATIENTS_PER_PROCESS)))
    edges = np.linspace(cfg.first_index, cfg.first_index + cfg.patients, nproc + 1).round().astype(int)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = {
        int(lo): ctx.Process(target=_run_process, args=(cfg, int(lo), int(hi), out), name=f"rpm-sim-{k}")
        for k, (lo, hi) in enumerate(itertools.pairwise(edges)) if hi > lo
    }
    finished = False
    try:
        for p in procs.values():
            p.start()
        totals, errors, stopped = _collect(procs, out, stop)
        finished = not stopped
    finally:  # also on Ctrl-C in this process, which leaves the processes to us
        _end_processes(list(procs.values()), grace_s=STOP_TIMEOUT_S if finished else 0.0)
    if errors and not stopped:
        raise ServiceError("simulator failed: " + "; ".join(sorted(set(errors))))
    by_metric = {m: int(totals.get(m, 0)) for m in ("heart_rate", "rr_interval", "glucose")}
    summary = {"readings_sent": sum(by_metric.values()), "by_metric": by_metric, "patients": cfg.patients}
    return summary | ({"stopped": True} if stopped else {})


def _collect(
    procs: dict[int, Any], out: Any, stop: threading.Event | None
) -> tuple[Counter[str], list[str], bool]:
    """Every process's report (counts, errors), until all reported, died or ``stop`` was set."""
    totals: Counter[str] = Counter()
    errors: list[str] = []
    waiting = set(procs)
    while waiting:
        if stop is not None and stop.is_set():
            return totals, errors, True
        # Looked at before reading: a process that exited has flushed its report into the queue.
        exited = {lo for lo in waiting if procs[lo].exitcode is not None}
        for lo, status, value in _reports(out, wait_s=0.0 if exited else COLLECT_POLL_S):
            waiting.discard(lo)
            if status == "ok":
                totals.update(value)
            else:
                errors.append(value)
        for lo in exited & waiting:  # killed, or interrupted before it could report
            errors.append(f"simulator process {procs[lo].name} exited with code {procs[lo].exitcode}")
            waiting.discard(lo)
    return totals, errors, False


def _reports(out: Any, *, wait_s: float) -> list[tuple[int, str, Any]]:
    """The reports waiting in ``out`` (waiting up to ``wait_s`` for the first)."""
    found = []
    with contextlib.suppress(queue.Empty):
        found.append(out.get(timeout=wait_s))
        while True:
            found.append(out.get_nowait())
    return found


def _end_processes(procs: list[Any], *, grace_s: float) -> None:
    """Join the simulator processes, terminating (then killing) those still running after ``grace_s``."""
    for p in procs:
        if p.pid is not None:
            p.join(timeout=grace_s)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        if p.pid is None:  # never started
            continue
        p.join(timeout=STOP_TIMEOUT_S)
        if p.is_alive():
            _LOGGER.warning("simulator process %s (pid %d) ignored SIGTERM; killing it", p.name, p.pid)
            p.kill()
            p.join(timeout=STOP_TIMEOUT_S)
