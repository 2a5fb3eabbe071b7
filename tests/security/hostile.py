"""Malformed MQTT readings messages of many kinds, each with the reason the bridge must give.

``malformed(i, now)`` is deterministic in ``i``: the same index always makes the same message, and
different indexes make different payloads (every message carries its index), so a dead-letter
record can be matched to the message that caused it by the payload's SHA-256.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rpm_core.wire import MAX_MESSAGE_BYTES, MAX_SAMPLES_PER_MESSAGE, readings_topic


@dataclass(frozen=True)
class Hostile:
    """One malformed message and the reason it must be dead-lettered with (a regex)."""

    kind: str
    topic: str
    payload: bytes
    reason: str


def _doc(i: int, now: float, patient: str = "p0000", **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"v": 1, "patient": patient, "device": f"hostile-{i}", "source": "sim",
                           "samples": [["heart_rate", now - 60 - i * 0.001, 72, 0]]}
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not _DROP}


_DROP = object()


def _sample(i: int, now: float, *, metric: Any = "heart_rate", t: Any = None, value: Any = 72, flags: Any = 0
            ) -> list[Any]:
    return [metric, now - 60 - i * 0.001 if t is None else t, value, flags]


def _dumps(doc: Any) -> bytes:
    # stdlib json: writes NaN/Infinity literals and integers of any size, as a hostile sender could
    return json.dumps(doc).encode()


Maker = Callable[[int, float], tuple[str, bytes]]


def _json(make: Callable[[int, float], Any], patient: str = "p0000") -> Maker:
    return lambda i, now: (readings_topic(patient), _dumps(make(i, now)))


def _truncated(i: int, now: float) -> tuple[str, bytes]:
    whole = _dumps(_doc(i, now))
    return readings_topic("p0000"), whole[: 1 + i % (len(whole) - 2)]


def _binary(i: int, now: float) -> tuple[str, bytes]:
    rng = random.Random(i)
    return readings_topic("p0000"), b"\xff" + rng.randbytes(rng.randint(1, 400)) + i.to_bytes(4, "big")


def _deep(i: int, now: float) -> tuple[str, bytes]:
    depth = 1100 + i % 500  # past orjson's depth limit (1024)
    return readings_topic("p0000"), b"[" * depth + str(i).encode() + b"]" * depth


def _deep_valid(i: int, now: float) -> tuple[str, bytes]:
    depth = 200 + i % 300
    return readings_topic("p0000"), b'{"a":' * depth + str(i).encode() + b"}" * depth


def _oversize(i: int, now: float) -> tuple[str, bytes]:
    filler = "x" * (MAX_MESSAGE_BYTES + 1000 + i % 1000)
    return readings_topic("p0000"), _dumps(_doc(i, now, filler=filler))


def _too_many(i: int, now: float) -> tuple[str, bytes]:
    samples = [_sample(i, now, t=now - 3600 + k) for k in range(MAX_SAMPLES_PER_MESSAGE + 1 + i % 10)]
    return readings_topic("p0000"), _dumps(_doc(i, now, samples=samples))


def _bad_topic(i: int, now: float) -> tuple[str, bytes]:
    bad = [f"bad patient {i}", "x" * (65 + i % 30), f"é{i}", f"p{i}!"][i % 4]
    return readings_topic(bad), _dumps(_doc(i, now, patient=bad))


def _field(**changes: Callable[[int, float], Any]) -> Maker:
    """A message whose top-level fields are ``changes`` (each computed from the index and now)."""
    return _json(lambda i, now: _doc(i, now, **{k: f(i, now) for k, f in changes.items()}))


def _in_sample(**changes: Callable[[int, float], Any]) -> Maker:
    """A message whose one sample has ``changes`` (metric, t, value, flags)."""
    return _json(lambda i, now: _doc(i, now, samples=[_sample(i, now, **{k: f(i, now) for k, f in changes.items()})]))


def _raw(make: Callable[[int, float], bytes]) -> Maker:
    return lambda i, now: (readings_topic("p0000"), make(i, now))


_S0 = r"^samples\[0\]: "
KINDS: list[tuple[str, Maker, str]] = [
    ("truncated JSON", _truncated, r"^not JSON"),
    ("binary junk", _binary, r"^not JSON"),
    ("empty payload", _raw(lambda i, now: b""), r"^not JSON"),
    ("NaN literal", _in_sample(value=lambda i, now: float("nan")), r"^not JSON"),
    ("infinite value", _raw(lambda i, now: _dumps(_doc(i, now)).replace(b", 72, 0]", b", 1e999, 0]")), r"^not JSON"),
    ("deeply nested JSON", _deep, r"^not JSON: depth limit"),
    ("deeply nested object", _deep_valid, r"^unsupported schema version"),
    ("not an object", _json(lambda i, now: [i, "readings"]), r"^message must be a JSON object"),
    ("wrong schema version", _field(v=lambda i, now: [2, 0, "1", True, None, 1.5][i % 6]),
     r"^unsupported schema version"),
    ("missing version", _field(v=lambda i, now: _DROP), r"^unsupported schema version None"),
    ("unknown field", _json(lambda i, now: {**_doc(i, now), f"extra{i % 7}": i}), r"^unknown fields: extra"),
    ("patient mismatch", _field(patient=lambda i, now: "p0001"), r"^patient in payload does not match the topic$"),
    ("unknown patient id", _bad_topic, r"^topic patient id is not a valid identifier$"),
    ("patient of wrong type", _field(patient=lambda i, now: [i]), r"^patient must be an identifier"),
    ("bad device id", _field(device=lambda i, now: f"dev {i}"), r"^device must be an identifier"),
    ("bad source", _field(source=lambda i, now: f"src{i}"), r"^source must be one of"),
    ("bad message id", _field(id=lambda i, now: f"id {i}"), r"^id must be an identifier"),
    ("samples not a list", _field(samples=lambda i, now: {"heart_rate": i}), r"^samples must be a non-empty list$"),
    ("no samples", _field(samples=lambda i, now: [], id=lambda i, now: f"n{i}"), r"^samples must be a non-empty list$"),
    ("sample of wrong shape", _field(samples=lambda i, now: [["heart_rate", now][: 1 + i % 2]]),
     _S0 + r"expected \[metric"),
    ("unknown metric", _in_sample(metric=lambda i, now: f"spo2_{i % 5}"), _S0 + "unknown metric"),
    ("value as string", _in_sample(value=lambda i, now: str(i)), _S0 + "value must be a finite number$"),
    ("huge value", _in_sample(value=lambda i, now: [1e300, 10**30, -1e308, 351][i % 4]),
     _S0 + "heart_rate value outside plausible range"),
    ("glucose out of range", _in_sample(metric=lambda i, now: "glucose", value=lambda i, now: 5000 + i),
     _S0 + "glucose value outside"),
    ("time as string", _in_sample(t=lambda i, now: f"{now}"), _S0 + "time must be a finite number"),
    ("future clock", _in_sample(t=lambda i, now: now + 3600 + i), _S0 + r"time is \d+ s in the future"),
    ("ancient clock", _in_sample(t=lambda i, now: i % 946_684_800), _S0 + "time .* is before 2000-01-01$"),
    ("bad flags", _in_sample(flags=lambda i, now: [-1, 1.5, 64, "1"][i % 4]), _S0 + "flags must be an integer mask"),
    ("bool as value", _in_sample(value=lambda i, now: True), _S0 + "value must be a finite number$"),
]
# Big kinds are made rarely (every RARE_EVERY-th message, in turn), the others round-robin.
RARE: list[tuple[str, Maker, str]] = [
    ("oversize payload", _oversize, r"^message is \d+ bytes; the limit is"),
    ("too many samples", _too_many, r"^\d+ samples; the limit is"),
]
RARE_EVERY = 250


def malformed(i: int, now: float) -> Hostile:
    """The ``i``-th malformed message."""
    if i % RARE_EVERY == RARE_EVERY - 1:
        kind, make, reason = RARE[(i // RARE_EVERY) % len(RARE)]
    else:
        kind, make, reason = KINDS[i % len(KINDS)]
    topic, payload = make(i, now)
    return Hostile(kind, topic, payload, reason)
