"""In-process CPU cost of the bridge's per-message path, without a network (issue 20, goal 4).

    .venv/bin/python -m benchmarks.bridge_cost [--messages 60000] [--rounds 5] [--baseline REV]
                                               [--profile FILE] [--out FILE]

The payloads are :mod:`benchmarks.loadgen`'s (its generator's heart-rate/RR and CGM messages, 10
readings and 1 reading, for 2,000 patients). Two stages, each through the bridge's own code:

- ``receive``: the messages as MQTT v5 QoS 1 PUBLISH packets, read by the bridge's paho client
  (:class:`stream.bridge._BridgeClient`, buffered socket, ``loop_read``) from an in-memory socket
  into :meth:`stream.bridge.Bridge._on_message` (paho's packet parsing, as in the live bridge);
- ``build``: :meth:`stream.bridge.Bridge._build` on batches of ``MAX_BATCH_MESSAGES``: validate
  every message, group by partition, encode one ``rpm.readings`` record per partition.

CPU time (``time.process_time``) per reading, the minimum over ``--rounds`` rounds. With
``--baseline REV`` the bridge and wire modules of git revision ``REV`` are loaded beside the
current ones and both are measured in the same process, rounds interleaved, so the ratio does not
depend on what else the machine was doing. ``--profile FILE`` writes a cProfile summary of one
round of the current code.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.loadgen import LoadSpec, _Generator
from benchmarks.mqtt_packets import publish

PATIENTS = 2_000
PARTITIONS = 8
CGM_EVERY = 66  # a CGM message per 66 strap messages: loadgen's 1/300 s against 2.2 readings/s per patient


def payloads(n: int, patients: int = PATIENTS) -> tuple[list[tuple[str, bytes]], int, float]:
    """``n`` (topic, payload) as the load generator publishes them, their readings, and "now"."""
    gen = _Generator(LoadSpec(mqtt_url="mqtt://unused", rate=patients * 2.2, duration_s=1.0, patients=patients),
                     0, 0, patients, patients * 2.2)
    now = time.time()
    out: list[tuple[str, bytes]] = []
    readings = 0
    for i in range(n):
        k = i % patients
        if i % CGM_EVERY == CGM_EVERY - 1:
            topic, payload, counts, _c = gen.cgm_message(k, now)
        else:
            topic, payload, counts, _c = gen.hr_message(k, now + i * 0.0005)
        out.append((topic, payload))
        readings += sum(counts.values())
    return out, readings, now + n * 0.0005 + 1.0


def publish_packets(messages: list[tuple[str, bytes]]) -> bytes:
    """The MQTT v5 PUBLISH packets (QoS 1, no properties) Mosquitto sends a subscriber."""
    return b"".join(publish(topic.encode(), payload, mid=i % 65535 + 1) for i, (topic, payload) in enumerate(messages))


class _MemorySocket:
    """A non-blocking socket with ``data`` to read, in chunks of at most 64 KiB."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def recv(self, bufsize: int) -> bytes:
        if self._pos >= len(self._data):
            raise BlockingIOError
        chunk = bytes(self._data[self._pos : self._pos + min(bufsize, 65536)])
        self._pos += len(chunk)
        return chunk

    def pending(self) -> int:
        return 0


def load_revision(rev: str, tmp: Path) -> tuple[ModuleType, ModuleType]:
    """``rpm_core.wire`` and ``stream.bridge`` as of git revision ``rev``, loaded beside the current
    ones (the old bridge bound to the old wire)."""
    mods: list[ModuleType] = []
    current_wire = sys.modules.get("rpm_core.wire")
    try:
        for name, path in (("rpm_core.wire", "rpm_core/wire.py"), ("stream.bridge", "stream/bridge.py")):
            src = subprocess.run(["git", "show", f"{rev}:{path}"], check=True, capture_output=True).stdout
            file = tmp / f"{rev}-{path.replace('/', '-')}"
            file.write_bytes(src)
            spec = importlib.util.spec_from_file_location(f"_baseline_{name.replace('.', '_')}", file)
            assert spec is not None
            assert spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod  # dataclasses look their module up
            if name == "stream.bridge":
                sys.modules["rpm_core.wire"] = mods[0]  # the old bridge imports the old wire
            spec.loader.exec_module(mod)
            mods.append(mod)
    finally:
        if current_wire is not None:
            sys.modules["rpm_core.wire"] = current_wire
    return mods[0], mods[1]


class Subject:
    """One version of the bridge code under measurement."""

    def __init__(self, name: str, bridge_mod: ModuleType, messages: list[tuple[str, bytes]], now: float) -> None:
        from rpm_core.settings import MqttSettings

        self.name = name
        self.mod = bridge_mod
        self.bridge = bridge_mod.Bridge(mqtt_settings=MqttSettings(host="localhost", port=1883), bootstrap="unused",
                                        client_id="bench", clock=lambda: now)
        self.items = [bridge_mod.Inbound(i % 65535 + 1, 1, topic, payload, now)
                      for i, (topic, payload) in enumerate(messages)]
        self.stream = publish_packets(messages)

    def receive(self) -> float:
        """CPU seconds for paho to read every packet into ``Bridge._on_message``."""
        client = self.bridge._make_client()  # the bridge's client and callbacks, as in the live bridge
        bursts: list[Any] = []

        def burst_end() -> None:
            if self.bridge._burst:
                bursts.append(self.bridge._burst)
                self.bridge._burst = []

        client.on_burst_end = burst_end
        client._sock = self.mod._BufferedSocket(_MemorySocket(self.stream))
        received = 0
        start = time.process_time()
        while received < len(self.items):
            client.loop_read()
            received = sum(map(len, bursts))
        spent = time.process_time() - start
        client._sock = None
        got = [(m.mid, m.qos, m.topic, m.payload) for burst in bursts for m in burst]
        assert got == [(m.mid, m.qos, m.topic, m.payload) for m in self.items], "received other messages"
        return spent

    def build(self) -> tuple[float, int, int]:
        """CPU seconds for ``Bridge._build`` over every batch; (seconds, readings out, records)."""
        limit = self.mod.MAX_BATCH_MESSAGES
        readings = records = 0
        start = time.process_time()
        for i in range(0, len(self.items), limit):
            batch = self.bridge._build(self.items[i : i + limit], PARTITIONS)
            for out in batch.records:
                readings += out.readings
                records += 1
        spent = time.process_time() - start
        assert not self.bridge.stats.deadlettered
        assert all(r.topic == "rpm.readings" for r in batch.records)
        return spent, readings, records

    def outputs(self) -> list[tuple[int | None, bytes]]:
        """Every record ``_build`` makes (partition, value), for comparing versions."""
        limit = self.mod.MAX_BATCH_MESSAGES
        return [(r.partition, r.value) for i in range(0, len(self.items), limit)
                for r in self.bridge._build(self.items[i : i + limit], PARTITIONS).records]


def profile_text(subject: Subject, what: str, top: int = 25) -> str:
    prof = cProfile.Profile()
    prof.enable()
    if what == "build":
        subject.build()
    else:
        subject.receive()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=60_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", help="git revision to measure against, in the same process")
    ap.add_argument("--profile", type=Path, help="write cProfile summaries (tottime) of each version here")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)

    import stream.bridge as current

    messages, readings, now = payloads(args.messages)
    subjects = [Subject("current", current, messages, now)]
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:
            _wire, old = load_revision(args.baseline, Path(tmp))
            subjects.insert(0, Subject(f"baseline {args.baseline}", old, messages, now))
        if len(subjects) == 2:
            same = subjects[0].outputs() == subjects[1].outputs()
            print(f"records identical between versions: {same}")
        best: dict[str, dict[str, float]] = {s.name: {"receive": float("inf"), "build": float("inf")}
                                             for s in subjects}
        for _ in range(args.rounds):
            for s in subjects:
                best[s.name]["receive"] = min(best[s.name]["receive"], s.receive())
                spent, out, records = s.build()
                assert out == readings, (out, readings)
                best[s.name]["build"] = min(best[s.name]["build"], spent)
        if args.profile:
            args.profile.write_text("".join(f"=== {s.name}: {what} ===\n{profile_text(s, what)}\n"
                                            for s in subjects for what in ("build", "receive")))
    res: dict[str, Any] = {"messages": len(messages), "readings": readings, "patients": PATIENTS,
                           "partitions": PARTITIONS, "rounds": args.rounds,
                           "records_per_round": records, "load_average": os.getloadavg(),
                           "command": "python -m benchmarks.bridge_cost " + " ".join(
                               argv if argv is not None else sys.argv[1:]),
                           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "versions": {}}
    for s in subjects:
        b = best[s.name]
        row = {stage: b[stage] / readings * 1e6 for stage in ("receive", "build")}
        row["total"] = row["receive"] + row["build"]
        res["versions"][s.name] = row
        print(f"{s.name:>20}: receive {row['receive']:.3f}  build {row['build']:.3f}  "
              f"total {row['total']:.3f} CPU µs/reading")
    if len(subjects) == 2:
        old_row, new_row = (res["versions"][s.name] for s in subjects)
        res["ratio_new_over_old"] = {k: new_row[k] / old_row[k] for k in new_row}
        print("new / old: " + "  ".join(f"{k} {v:.2f}" for k, v in res["ratio_new_over_old"].items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
