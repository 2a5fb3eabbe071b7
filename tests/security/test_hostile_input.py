"""Sustained hostile input against the running pipeline.

Real Mosquitto → ``rpm bridge`` → Tansu → ``rpm worker`` → InfluxDB. 10,000 malformed MQTT
messages of 31 kinds (``tests/security/hostile.py``) are interleaved with 1,000 good messages
(10,000 readings); hostile records are also written straight into the worker's Kafka inputs,
and 20 more good messages follow all of it. Then:

- 0 crashes: the bridge and the worker are alive at the end and logged no traceback;
- 0 stalls: every good reading, the last ones included, is in InfluxDB: exactly 10,200 points;
- every malformed MQTT message is in ``rpm.deadletter`` exactly once, matched by the SHA-256 of its
  payload, with the reason its kind calls for (exactly 10,000 bridge records), and every hostile
  Kafka record too (stage ``worker``).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from rpm_app.services import Stack, http_ok
from rpm_core import topics
from rpm_core.wire import encode_readings, readings_topic
from tests.security.driving import bridge_health, publish_all, until
from tests.security.hostile import Hostile, malformed
from tests.support.influx import series
from tests.support.kafka import produce, read_all
from tests.support.procs import rpm_env, running, spawn, spawn_bridge

pytestmark = [pytest.mark.services, pytest.mark.slow]

MALFORMED = 10_000
GOOD_EVERY = 10  # one good message after every 10 malformed ones
SAMPLES_PER_GOOD = 10
PATIENTS = 20
DEVICE = "hostile-test-hr"
HOSTILE_RECORDS = 100  # straight into rpm.readings
HOSTILE_ACKS = 50  # straight into rpm.alert-acks
TOMBSTONES = 3  # key, no value: into rpm.readings too
TAIL_MESSAGES = 20  # good messages published after all the hostile input


def good_message(n: int, t0: float) -> tuple[str, bytes]:
    """The ``n``-th good message: 10 heart-rate samples of one patient, times unique per patient."""
    patient = f"p{n % PATIENTS:04d}"
    k0 = (n // PATIENTS) * SAMPLES_PER_GOOD
    samples = [["heart_rate", t0 + (k0 + k) * 0.5, 60 + (k0 + k) % 40] for k in range(SAMPLES_PER_GOOD)]
    return readings_topic(patient), encode_readings(patient=patient, device=DEVICE, source="sim", samples=samples)


def traffic(now: float, t0: float) -> tuple[list[tuple[str, bytes]], list[Hostile]]:
    """Malformed and good messages, interleaved; the malformed ones on their own."""
    out: list[tuple[str, bytes]] = []
    bad: list[Hostile] = []
    for i in range(MALFORMED):
        h = malformed(i, now)
        bad.append(h)
        out.append((h.topic, h.payload))
        if i % GOOD_EVERY == GOOD_EVERY - 1:
            out.append(good_message(i // GOOD_EVERY, t0))
    return out, bad


def hostile_records() -> list[tuple[bytes | None, bytes | None]]:
    """Records no bridge would write, produced straight into rpm.readings."""
    docs: list[bytes] = [
        b"\x00\xff junk", b"{", b"[]", b'{"v": 2, "patient": "p1", "groups": []}',
        orjson.dumps({"v": 1, "patient": "p1", "groups": [{"device": "d", "source": "sim", "metric": ["heart_rate"],
                                                           "t": [1.7e9], "value": [1e9], "flags": [0]}]}),
        b'{"v": 1, "patient": "p1", "groups": [{"device": "d", "source": "sim", "metric": ["heart_rate"], '
        b'"t": [NaN], "value": [70], "flags": [0]}]}',
        orjson.dumps({"v": 1, "patient": "bad id", "groups": [{}]}),
    ]
    tombstones: list[tuple[bytes | None, bytes | None]] = [(b"p0000", None)] * TOMBSTONES
    return [*tombstones, *((b"p0000", docs[i % len(docs)] + b" " * (i // len(docs))) for i in range(HOSTILE_RECORDS))]


def hostile_acks() -> list[tuple[bytes | None, bytes | None]]:
    """Acknowledgements no nurse station would send, produced straight into rpm.alert-acks."""
    docs = [b"junk", b"{}", b'{"v": 1, "alert_id": "a", "patient": "p0000", "by": "", "at": 1.7e9, "station": "s"}',
            b'{"v": 1, "alert_id": "a", "patient": "p0000", "by": "N", "at": 1e999, "station": "s"}', b"[" * 3000]
    # No tombstones here: see test_fuzz_boundaries.test_an_ack_tombstone_is_a_decode_error (a known poison pill).
    return [(b"p0000", docs[i % len(docs)] + b" " * (i // len(docs))) for i in range(HOSTILE_ACKS)]


def vitals_count(url: str, db: str) -> int:
    s = series(url, db, f"SELECT count(value) FROM vitals WHERE device = '{DEVICE}'")
    return int(s[0]["values"][0][1]) if s else 0


async def test_ten_thousand_malformed_messages_interleaved_with_good_traffic(stack: Stack, tmp_path: Path) -> None:
    url, db = stack.settings.influx_url, stack.settings.influx_db
    assert url
    bootstrap = stack.settings.kafka_bootstrap()
    worker = spawn("worker", ["worker", "--data-dir", str(tmp_path / "worker")], rpm_env(stack), tmp_path)
    with running(worker):
        bridge = await asyncio.to_thread(spawn_bridge, stack, tmp_path)
        watch = (bridge, worker)
        with running(bridge):
            now = time.time()
            messages, bad = traffic(now, t0=now - 3600)
            await asyncio.to_thread(publish_all, stack, messages)
            await produce(bootstrap, topics.READINGS, hostile_records())  # type: ignore[arg-type]  # tombstones
            # hostile content from a producer holding the key (a buggy station): each kind's own reason
            await produce(bootstrap, topics.ALERT_ACKS, hostile_acks(), keys=stack.settings.key_ring())  # type: ignore[arg-type]
            # ...and good traffic after all of it: still flowing
            tail = [good_message(MALFORMED // GOOD_EVERY + n, now - 3600) for n in range(TAIL_MESSAGES)]
            await asyncio.to_thread(publish_all, stack, tail)
            messages += tail
            good = (MALFORMED // GOOD_EVERY + TAIL_MESSAGES) * SAMPLES_PER_GOOD
            await until(lambda: vitals_count(url, db), lambda n: n >= good, deadline_s=120,
                        what=f"{good} good readings in InfluxDB", watch=watch)
            health = await until(lambda: bridge_health(bridge.port), lambda h: h["messages_in"] >= len(messages),
                                 deadline_s=30, what="the bridge to count every message", watch=watch)
            assert all(p.alive() for p in watch)
            assert http_ok(f"http://127.0.0.1:{bridge.port}/healthz")
        records = [orjson.loads(v) for v in await read_all(bootstrap, topics.DEADLETTER, idle_ms=2000, deadline_s=90)]
        assert worker.alive()
    assert vitals_count(url, db) == good, "exactly the good readings, none lost, none doubled"
    assert (health["messages_in"], health["deadlettered"]) == (len(messages), MALFORMED)
    check_deadletters(records, bad)
    for p in watch:
        assert "Traceback" not in p.log_path.read_text(errors="replace"), p.log_tail(60)


def check_deadletters(records: list[dict[str, Any]], bad: list[Hostile]) -> None:
    by_stage = Counter(r["stage"] for r in records)
    assert by_stage == {"bridge": MALFORMED, "worker": TOMBSTONES + HOSTILE_RECORDS + HOSTILE_ACKS}, by_stage
    expected = {hashlib.sha256(h.payload).hexdigest(): h for h in bad}
    got = Counter(r["sha256"] for r in records if r["stage"] == "bridge")
    assert got == Counter(hashlib.sha256(h.payload).hexdigest() for h in bad), "each malformed message once"
    wrong = [(expected[r["sha256"]].kind, r["reason"]) for r in records
             if r["stage"] == "bridge" and not re.search(expected[r["sha256"]].reason, r["reason"])]
    assert not wrong, wrong[:10]
    kinds = Counter(expected[r["sha256"]].kind for r in records if r["stage"] == "bridge")
    assert len(kinds) == 31 and min(kinds.values()) >= 20, kinds
    worker = [r for r in records if r["stage"] == "worker"]
    assert Counter(r["source"] for r in worker) == {topics.READINGS: TOMBSTONES + HOSTILE_RECORDS,
                                                    topics.ALERT_ACKS: HOSTILE_ACKS}
    assert all(r["reason"] for r in records)
