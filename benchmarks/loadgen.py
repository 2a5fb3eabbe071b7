"""Offered-load generator of the end-to-end benchmark: simulated patients over MQTT at a fixed rate.

Each of up to :data:`MAX_PROCESSES` processes owns a slice of the patients and its own MQTT v5
connection (QoS 1, as the simulator user; :class:`Publisher`, see there why not paho), and publishes
readings messages (schema v1, :func:`rpm_core.wire.encode_readings`'s format, encoded with orjson)
on a fixed schedule, paced in :attr:`LoadSpec.slice_s` time slices: every slice it publishes the
messages that fell due since the previous one, in one write, then reads PUBACKs until the slice ends.

The workload (per patient, like ``rpm simulate``): heart rate at 1 Hz and an RR interval per beat
(~1.2/s) from a strap, sent as messages of :attr:`LoadSpec.samples_per_message` samples (4 or 5
heart rates, the rest RR intervals), and a CGM glucose every 5 minutes (one-sample messages of
the ``cgm-…`` device). The number of patients follows from the offered rate (≈ 2.2 readings/s
each) unless given. Device timestamps are the wall clock: the samples of a message are spread
evenly over the time since the patient's previous message, and its last heart-rate sample is
stamped with the publish time, so ``alert arrival − device time`` measures the pipeline, not the
edge batching.

One patient in :attr:`LoadSpec.probe_every` (at most :attr:`LoadSpec.max_probes`) is a latency probe:
the last heart rate of every other message of theirs is 170 bpm (above the ``bench_latency_probe``
rule of ``benchmarks/e2e_rules.yaml``) and the next message brings it back to ~80 bpm, so each
crossing raises one alert. Probes send at least as often as a real patient does (a message every
``samples_per_message / 2.2`` s), however many patients share the offered rate: when a fixed rate
is spread over many patients (a patient-count sweep), the others send less often, and the probes
still measure the latency.

PUBACKs are tracked by message id; at most :attr:`LoadSpec.inflight` messages (or the broker's
Receive Maximum, if lower) are unacknowledged on the wire, the rest wait in the publisher's queue,
as paho does with ``max_inflight_messages``. A PUBACK with reason code 16 ("no matching
subscribers") means Mosquitto dropped the message: it is counted as *rejected* and published again
later. Publishing stops being on schedule when more than :attr:`LoadSpec.max_backlog` messages
wait for their PUBACK (backpressure): the generator then reports that it could not offer the
load, and by how much.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing as mp
import os
import queue
import random
import select
import socket
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Generic, TypeVar

import orjson
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from benchmarks import mqtt_packets
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
READ_BYTES: Final = 1 << 18

T = TypeVar("T")
Entry = tuple[str, bytes, Counter[str], int]  # topic, payload, readings by metric, probe crossings


class Publisher(Generic[T]):
    """An MQTT v5 QoS 1 publisher on one non-blocking socket, driven by its caller's loop: no thread.

    Why not paho (``rpm_core.mqtt_client``, which every component of ours uses): profiled at 25k
    readings/s against Mosquitto (RESULTS.md, "Load generator cost"), paho's publish path cost the
    generator ~7 system calls and several lock and thread hand-offs per message (a write to wake
    its network thread, that thread's select, read and one write per PUBLISH, three reads per
    PUBACK), most of its CPU: about as much as the pipeline it measured. Here a time slice's
    messages go out in one write and its PUBACKs come in with a read or two. What is offered is
    unchanged: the same CONNECT (MQTT v5, clean start, the user's name and password, the client id
    bound to the user, TLS when the URL asks for it), the same PUBLISH packets (QoS 1, no
    properties), at most ``inflight`` (or the broker's Receive Maximum) unacknowledged, the rest
    queued in order; every PUBACK's reason code goes back to the caller with its ``entry``.
    """

    def __init__(self, settings: MqttSettings, client_id: str, *, inflight: int, keepalive: int = 60) -> None:
        self.settings = settings
        self.client_id = client_id
        self.window = inflight
        self.keepalive = keepalive
        self.inflight: dict[int, T] = {}  # mid → entry: sent, awaiting its PUBACK
        self.queued: deque[tuple[str, bytes, T]] = deque()  # waiting for room in the window
        self._sock: socket.socket | None = None
        self._tls = False
        self._buf = bytearray()
        self._chunk = memoryview(bytearray(READ_BYTES))  # recv_into it: no 256 KiB bytes object (mmap) per read
        self._mid = 0
        self._last_send = 0.0

    def connect(self, timeout: float = 30.0) -> None:
        """Connect and log in (blocking); raise ConnectionError if the broker refuses."""
        s = self.settings
        sock = socket.create_connection((s.host, s.port), timeout=timeout)
        try:
            context = s.ssl_context()
            if context is not None:
                sock = context.wrap_socket(sock, server_hostname=s.host)
            self.window = min(self.window, self._login(sock))
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._last_send = time.monotonic()

    def _login(self, sock: socket.socket) -> int:
        """CONNECT, then CONNACK's verdict; the broker's Receive Maximum (65535 if it names none)."""
        s = self.settings
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        password = s.password.get() if s.username else None
        sock.sendall(mqtt_packets.connect(s.client_id(self.client_id), username=s.username or None,
                                          password=password or None, keepalive=self.keepalive))
        buf = bytearray()
        while True:
            data = sock.recv(4096)
            if not data:
                raise ConnectionError(f"MQTT broker at {s.url()} closed the connection before CONNACK")
            buf += data
            packets, _end = mqtt_packets.split(buf)
            if packets:
                break
        kind, body = packets[0]
        if kind != mqtt_packets.CONNACK or len(body) < 2:
            raise ConnectionError(f"MQTT broker at {s.url()}: expected CONNACK, got packet type {kind >> 4}")
        if body[1] >= 0x80:
            raise ConnectionError(f"MQTT broker at {s.url()} refused the connection: reason code {body[1]:#x}")
        props, _n = Properties(PacketTypes.CONNACK).unpack(body[2:])  # type: ignore[no-untyped-call]
        return int(getattr(props, "ReceiveMaximum", 65535))

    def publish(self, topic: str, payload: bytes, entry: T) -> None:
        """Queue a QoS 1 PUBLISH; :meth:`flush` sends it."""
        self.queued.append((topic, payload, entry))

    def backlog(self) -> int:
        """Messages not acknowledged yet: in flight and queued."""
        return len(self.inflight) + len(self.queued)

    def flush(self) -> None:
        """Send what is queued, as far as the window allows, in one write."""
        if not self.queued or len(self.inflight) >= self.window:
            return
        out = []
        inflight, queued, encode = self.inflight, self.queued, mqtt_packets.publish
        mid = self._mid
        while queued and len(inflight) < self.window:
            topic, payload, entry = queued.popleft()
            mid = mid % 65535 + 1
            while mid in inflight:
                mid = mid % 65535 + 1
            inflight[mid] = entry
            out.append(encode(topic.encode(), payload, qos=1, mid=mid))
        self._mid = mid
        self._send(b"".join(out))

    def poll(self, timeout: float) -> list[tuple[T, int]]:
        """Wait up to ``timeout`` s for PUBACKs; the acknowledged entries with their reason codes
        (0 success, 16 no matching subscribers, >= 0x80 refused). Sends what the window frees."""
        sock = self._require()
        pending = self._tls and sock.pending() > 0  # type: ignore[attr-defined]
        if not pending and not select.select([sock], [], [], max(timeout, 0.0))[0]:
            self._keepalive()
            return []
        self._read(sock)
        packets, end = mqtt_packets.split(self._buf)
        del self._buf[:end]
        done: list[tuple[T, int]] = []
        inflight = self.inflight
        for kind, body in packets:
            if kind == mqtt_packets.PUBACK:
                mid = body[0] << 8 | body[1]
                if mid in inflight:  # else not ours: ignored, as paho does
                    done.append((inflight.pop(mid), body[2] if len(body) > 2 else 0))
            elif kind == mqtt_packets.SERVER_DISCONNECT:
                raise ConnectionError(f"the broker disconnected: reason code {body[0] if body else 0:#x}")
            elif kind != mqtt_packets.PINGRESP:
                raise ConnectionError(f"unexpected MQTT packet type {kind >> 4} from the broker")
        self.flush()
        self._keepalive()
        return done

    def close(self) -> None:
        """DISCONNECT (normal) and close the socket."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._send(mqtt_packets.DISCONNECT)
            self._sock.close()
            self._sock = None

    def _require(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionError("not connected")
        return self._sock

    def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                n = sock.recv_into(self._chunk)
            except (BlockingIOError, ssl.SSLWantReadError):
                return
            if not n:
                raise ConnectionError("the broker closed the connection")
            self._buf += self._chunk[:n]
            if n < READ_BYTES and not (self._tls and sock.pending()):  # type: ignore[attr-defined]
                return

    def _send(self, data: bytes) -> None:
        sock = self._require()
        view = memoryview(data)
        while view:
            try:
                view = view[sock.send(view):]
            except (BlockingIOError, ssl.SSLWantWriteError):
                select.select([], [sock], [], 1.0)
            except ssl.SSLWantReadError:
                select.select([sock], [], [], 1.0)
        self._last_send = time.monotonic()

    def _keepalive(self) -> None:
        if time.monotonic() - self._last_send > self.keepalive / 2:
            self._send(mqtt_packets.PINGREQ)


@dataclass(frozen=True)
class LoadSpec:
    """What to offer."""

    mqtt_url: str
    rate: float  # readings/s over all processes
    duration_s: float
    prefix: str = "e"  # patient ids are f"{prefix}{index:05d}"; one prefix per run keeps runs apart
    patients: int = 0  # 0: rate / READINGS_PER_PATIENT_S
    probe_every: int = 50  # 1 in N patients is a latency probe; 0: none
    max_probes: int = 1000  # at most this many probes (the first ones)
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
        self.probe = [spec.probe_every > 0 and i % spec.probe_every == 0 and i // spec.probe_every < spec.max_probes
                      for i in range(lo, hi)]
        rng = random.Random(spec.seed * 7919 + lo)
        self.rng = rng
        self.base_hr = [rng.uniform(62.0, 88.0) for _ in self.ids]
        self.glucose = [rng.uniform(95.0, 150.0) for _ in self.ids]
        n = len(self.ids)
        self.cgm_rate = n / CGM_INTERVAL_S
        self.msg_rate = max(rate - self.cgm_rate, 0.0) / spec.samples_per_message
        # Probes send their share of the messages, or as often as a real patient if that is more.
        probes = sum(self.probe)
        natural = probes * (HR_PER_S + BEATS_PER_S) / spec.samples_per_message
        fair = self.msg_rate * probes / n if n else 0.0
        self.probe_rate = self.msg_rate if probes == n else min(self.msg_rate, max(fair, natural))
        self.other_rate = self.msg_rate - self.probe_rate
        self.last_ms = [0] * n
        self.start_ms = int(time.time() * 1000)
        self.count = [0] * n
        self.result = ProcessResult(index=index, patients=n)
        self.retry: deque[Entry] = deque()

    # -- PUBACKs ---------------------------------------------------------------------------------

    def _settle(self, done: list[tuple[Entry, int]]) -> None:
        r = self.result
        for entry, code in done:
            if code == RC_NO_MATCHING_SUBSCRIBERS:
                r.rejected_messages += 1
                self.retry.append(entry)
            elif code >= 0x80:
                r.failed_messages += 1
            else:
                r.acked.update(entry[2])
                r.last_ack = time.time()

    def _wait(self, pub: Publisher[Entry], until: float) -> None:
        """Settle PUBACKs as they come until ``until`` (``time.time()``), at least once."""
        while True:
            self._settle(pub.poll(until - time.time()))
            if time.time() >= until:
                return

    def backlog(self, pub: Publisher[Entry]) -> int:
        return pub.backlog() + len(self.retry)

    # -- messages --------------------------------------------------------------------------------

    def hr_message(self, k: int, now: float) -> Entry:
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
        n_hr = min(spm - (spm > 1), 5 if n % 2 == 0 else 4)  # at least one RR interval when there is room
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

    def cgm_message(self, k: int, now: float) -> Entry:
        self.glucose[k] = min(170.0, max(90.0, self.glucose[k] + self.rng.uniform(-3.0, 3.0)))
        payload = orjson.dumps({"v": 1, "patient": self.ids[k], "device": self.cgm_device[k], "source": "sim",
                                "samples": [["glucose", int(now * 1000) / 1000, round(self.glucose[k], 1)]]})
        return self.topics[k], payload, Counter({"glucose": 1}), 0

    # -- the schedule ----------------------------------------------------------------------------

    def run(self, pub: Publisher[Entry], progress: Callable[[], None]) -> None:
        spec, r = self.spec, self.result
        n = len(self.ids)
        # CGM readings are due spread over their 5-minute period: start at a random phase.
        cgm_order = list(range(n))
        self.rng.shuffle(cgm_order)
        probes = [k for k in range(n) if self.probe[k]]
        others = [k for k in range(n) if not self.probe[k]]
        probe_rr = itertools.cycle(probes or [0])
        hr_rr, cgm_rr = itertools.cycle(others or [0]), itertools.cycle(cgm_order)
        cgm_phase = self.rng.random()
        sent_hr = sent_probe = sent_cgm = 0
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
            due_hr = int(elapsed * self.other_rate) - sent_hr
            due_probe = int(elapsed * self.probe_rate) - sent_probe
            due_cgm = int(elapsed * self.cgm_rate + cgm_phase) - sent_cgm
            lag_msgs = due_hr + due_probe + due_cgm
            if lag_msgs > 0 and self.msg_rate > 0:
                r.max_lag_s = max(r.max_lag_s, lag_msgs / (self.msg_rate + self.cgm_rate))
            while self.retry:
                entry = self.retry.popleft()
                r.republished_messages += 1
                pub.publish(entry[0], entry[1], entry)
            if pub.backlog() >= spec.max_backlog:
                r.held_slices += 1
            else:
                room = spec.max_backlog - pub.backlog()
                for _ in range(min(due_cgm, room)):
                    self._offer(pub, self.cgm_message(next(cgm_rr), now))
                    sent_cgm += 1
                for _ in range(min(due_probe, room)):
                    self._offer(pub, self.hr_message(next(probe_rr), now))
                    sent_probe += 1
                for _ in range(min(due_hr, room)):
                    self._offer(pub, self.hr_message(next(hr_rr), now))
                    sent_hr += 1
            pub.flush()
            r.max_backlog = max(r.max_backlog, pub.backlog())
            if now >= next_progress:
                progress()
                next_progress += 1.0
            self._wait(pub, now + spec.slice_s)  # PUBACKs until the slice ends
        # What the schedule called for over the whole window (held-back messages never offered count too).
        r.offered = ((int(spec.duration_s * self.other_rate) + int(spec.duration_s * self.probe_rate))
                     * spec.samples_per_message
                     + int(spec.duration_s * self.cgm_rate + cgm_phase))
        r.last_publish = time.time()

    def _offer(self, pub: Publisher[Entry], entry: Entry) -> None:
        r = self.result
        r.published += sum(entry[2].values())
        r.messages += 1
        r.crossings += entry[3]
        pub.publish(entry[0], entry[1], entry)

    def drain(self, pub: Publisher[Entry], timeout: float, progress: Callable[[], None]) -> None:
        """Wait for every PUBACK, re-publishing what Mosquitto rejected."""
        deadline = time.monotonic() + timeout
        next_progress = time.monotonic() + 1.0
        while True:
            retry = list(self.retry)
            self.retry.clear()
            for entry in retry:
                self.result.republished_messages += 1
                pub.publish(entry[0], entry[1], entry)
            pub.flush()
            waiting = pub.backlog()
            if not retry and not waiting:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{waiting} messages not acknowledged within {timeout:.0f} s")
            if time.monotonic() >= next_progress:
                progress()
                next_progress += 1.0
            self._wait(pub, time.time() + (0.2 if retry else 0.02))


def connect(mqtt_url: str, client_id: str, *, inflight: int = 1000) -> Publisher[Any]:
    """A connected :class:`Publisher` for ``mqtt_url``'s user (``RPM_MQTT_CA``: the CA of a TLS broker)."""
    settings = MqttSettings.from_url(mqtt_url, ca_file=os.environ.get("RPM_MQTT_CA"))
    pub: Publisher[Any] = Publisher(settings, client_id, inflight=inflight)
    try:
        pub.connect()
    except OSError as exc:
        raise ConnectionError(f"could not connect to MQTT at {settings.url()}: {exc}") from exc
    return pub


def _process_main(spec: LoadSpec, index: int, lo: int, hi: int, rate: float, out: Any, go: Any) -> None:
    gen = _Generator(spec, index, lo, hi, rate)
    pub: Publisher[Entry] | None = None
    try:
        pub = connect(spec.mqtt_url, f"rpm-loadgen-{os.getpid()}-{index}", inflight=spec.inflight)
        out.put(("ready", index, None))
        go.wait()
        publisher = pub

        def progress() -> None:
            r = gen.result
            out.put(("progress", index, (time.time(), r.published, sum(r.acked.values()), gen.backlog(publisher))))

        gen.run(pub, progress)
        gen.drain(pub, ACK_TIMEOUT_S, progress)
    except Exception as exc:  # reported to the parent
        gen.result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if pub is not None:
            pub.close()
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
    pub: Publisher[None] = connect(mqtt_url, f"rpm-loadgen-ready-{os.getpid()}")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            payload = orjson.dumps({"v": 1, "patient": patient, "device": "hrs-ready", "source": "sim",
                                    "samples": [["heart_rate", int(time.time() - 120), 70.0]]})
            pub.publish(readings_topic(patient), payload, None)
            pub.flush()
            answer = time.monotonic() + 5
            codes: list[int] = []
            while not codes and time.monotonic() < answer:
                codes = [code for _entry, code in pub.poll(answer - time.monotonic())]
            if codes and codes[0] != RC_NO_MATCHING_SUBSCRIBERS:
                return
            time.sleep(0.2)
        raise TimeoutError("no subscriber for the readings topics")
    finally:
        pub.close()


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
