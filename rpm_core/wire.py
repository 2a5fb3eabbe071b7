"""Versioned wire formats shared by the edge agent, simulators, bridge and workers.

MQTT readings (topic ``rpm/v1/p/{patient}/readings``), schema version 1::

    {"v": 1, "patient": "p0001", "device": "hr-C0:FF:EE:00:00:01", "source": "ble",
     "samples": [[metric, t, value, flags], ...]}

- ``metric``: ``heart_rate`` (bpm) | ``rr_interval`` (seconds) | ``glucose`` (mg/dL);
- ``t``: when the device measured it, UTC epoch seconds (int or float);
- ``value``: a finite number in the metric's plausible physiological range;
- ``flags`` (optional, default 0): a :class:`SampleFlag` bit mask of signal-quality problems, and of
  a result beyond what the device can measure (``ABOVE_RANGE`` / ``BELOW_RANGE``: a meter's "HI" /
  "LO"; ``value`` is then the device's measuring limit, the true value lies beyond it). Messages
  of earlier agents (bits 0-2 only) stay valid;
- ``id`` (optional, top level): the sender's message id (e.g. the edge agent's outbox row), so a
  message redelivered after a crash can be recognised as the same message.

One message carries several samples of one device. The bridge validates every message with
:func:`parse_readings_message` and forwards the normalised form to Kafka ``rpm.readings``
as *records* that coalesce many messages; their groups are columnar, so a worker turns them into
numpy arrays without touching each sample. The bridge writes one record per partition per batch,
each group naming its patient (the partition is Kafka's default partitioner applied to the
patient id, so a patient's readings stay on one partition, in order)::

    {"v": 1, "groups": [{"patient": "p0001", "device": ..., "source": ..., "metric": [...],
                         "t": [...], "value": [...], "flags": [...]}, ...]}

A record of a single patient may name it once, at the top (``{"v": 1, "patient": "p0001",
"groups": [...]}`` with groups without ``patient``); workers read both shapes.

Identifiers are restricted to ``[A-Za-z0-9_.:-]``, so they are safe as InfluxDB tags and MQTT
topic levels without escaping.
"""

from __future__ import annotations

import enum
import json
import math
import operator
import re
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

import orjson

SCHEMA_VERSION: Final = 1
TOPIC_ROOT: Final = "rpm/v1"
READINGS_TOPIC_FILTER: Final = "rpm/v1/p/+/readings"
ALERTS_TOPIC_ROOT: Final = "rpm/v1/alerts"

# Big enough for ~1,000 samples; anything larger is a bug or an attack, not a device. Our publishers
# split below it (edge agent, simulators); the bridge dead-letters a larger message with a reason.
MAX_MESSAGE_BYTES: Final = 256 * 1024
# Mosquitto's ``message_size_limit`` in the configurations we write: a message above it never reaches
# the bridge (Debian's Mosquitto 2.0.11 drops it and closes the sender's connection). Above
# MAX_MESSAGE_BYTES, so every message the wire could refuse reaches the bridge and is dead-lettered
# with its reason.
MQTT_MESSAGE_SIZE_LIMIT_BYTES: Final = 1024 * 1024
MAX_SAMPLES_PER_MESSAGE: Final = 2_000
# A device clock may run a little fast; further ahead than this is a broken clock.
MAX_FUTURE_SKEW_S: Final = 300.0
# Nothing we could have measured predates this (2000-01-01T00:00:00Z).
MIN_SAMPLE_EPOCH_S: Final = 946_684_800.0
# 2100-01-01: no clock reads beyond it. Below 2**53, so every accepted integer is exactly a float and
# a message reads back as it was sent (2**53 + 1 came back as 2**53 from a command's 'at').
MAX_EPOCH_S: Final = 4_102_444_800.0

_ID: Final = r"[A-Za-z0-9_.:-]{1,64}"
_ID_RE: Final = re.compile(_ID)
# Identifiers joined by newlines (not an identifier character): many checked in one match.
_IDS_RE: Final = re.compile(rf"{_ID}(?:\n{_ID})*")

METRICS: Final = ("heart_rate", "rr_interval", "glucose")
# Plausible physiological ranges (inclusive). Outside them a value is an artefact, not a patient.
METRIC_RANGES: Final[dict[str, tuple[float, float]]] = {
    "heart_rate": (15.0, 350.0),  # bpm; HRS can encode up to 65535
    "rr_interval": (0.15, 4.0),  # s; 15-400 bpm
    "glucose": (10.0, 1000.0),  # mg/dL; meters report 10-600, lab up to ~1000
}
SOURCES: Final = frozenset({"ble", "sim", "manual", "import"})


class SampleFlag(enum.IntFlag):
    """Bits attached to a sample.

    Signal-quality problems (``QUALITY_FLAGS``): detectors do not alert on such samples. Range bits
    (``RANGE_FLAGS``, issue 14): the device could not measure the value because it lies beyond
    its measuring range ("HI" / "LO" on a meter); the sample's value is the device's limit, and
    rules comparing values treat the sample as beyond any threshold on its side.
    """

    NONE = 0
    CONTACT_LOST = 1  # HRS: contact supported and not detected
    DEVICE_WARNING = 2  # GLS/CGM status annunciation set
    LOW_QUALITY = 4  # CGM quality below threshold
    ABOVE_RANGE = 8  # "HI": higher than the device can measure; value = its upper limit
    BELOW_RANGE = 16  # "LO": lower than the device can measure; value = its lower limit


QUALITY_FLAGS: Final = int(SampleFlag.CONTACT_LOST | SampleFlag.DEVICE_WARNING | SampleFlag.LOW_QUALITY)
RANGE_FLAGS: Final = int(SampleFlag.ABOVE_RANGE | SampleFlag.BELOW_RANGE)
ALL_FLAGS: Final = QUALITY_FLAGS | RANGE_FLAGS


# A top-level key of a readings message; identifiers, metric names and sources cannot hold a quote,
# so in a valid message this only ever matches keys.
# Every key a readings message may carry; the regex finds them at the top level to spot a key named twice.
_MESSAGE_KEYS: Final = frozenset({"v", "patient", "device", "source", "samples", "id"})
_TOP_KEY_RE: Final = re.compile(rb'"(v|patient|device|source|samples|id)"\s*:')


class DuplicateKeyError(ValueError):
    """JSON that names a key twice in one object (parsers disagree on which one wins)."""


class NestingError(ValueError):
    """JSON nested deeper than the standard library's parser reads (orjson reads 1,024 levels; ``json``
    raises ``RecursionError`` before that, at a depth that depends on the caller's stack)."""


def _pairs_unique(data: bytes | str) -> None:
    """Parse ``data`` (already read by orjson) with every object's keys checked; :class:`DuplicateKeyError`
    or :class:`NestingError`. A ``RecursionError`` is no ``ValueError``: it escaped every decoder's
    ``except ValueError`` (an ack, a patient's ack or status message, a heartbeat), and in a readings
    message it passed for "no key named twice"."""
    try:
        json.loads(data, object_pairs_hook=_no_duplicates)
    except RecursionError as exc:
        raise NestingError("nested too deeply") from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _v in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise DuplicateKeyError(f"duplicate key {dup[:40]!r}")
    return doc


def loads_unique(data: bytes | str) -> Any:
    """``orjson.loads`` that refuses duplicate keys in any object (``{"patient": "pB", "patient": "pA"}``
    reads as ``pA`` in one parser and ``pB`` in another: an impersonation). Raises
    ``orjson.JSONDecodeError`` or :class:`DuplicateKeyError` (both ``ValueError``). For the small
    documents of alerts, acknowledgements, commands and status; readings use a cheaper check."""
    doc = orjson.loads(data)
    if isinstance(doc, dict | list):  # scalars have no keys
        _pairs_unique(data)
    return doc


def brief(value: object) -> str:
    """A short description of a decoded JSON value for a reason: a string's or a number's first
    characters, a container's kind. Never ``repr`` of a container: JSON a thousand levels deep (which
    orjson reads) made it raise ``RecursionError``, out of every decoder (a worker stalled on one
    record), and a 250 kB string became a 250 kB reason."""
    if isinstance(value, str):
        return repr(value[:40]) + ("..." if len(value) > 40 else "")
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return repr(value)[:40]


def check_envelope(doc: object, *, what: str, version: int, error: Callable[[str], Exception],
                   keys: frozenset[str], required: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``doc`` if it is the JSON object of a versioned message: its ``"v"`` is ``version`` (an int,
    not ``true``), it names no key outside ``keys`` (``"v"`` included) and every key of ``required``.
    Otherwise ``error(reason)``. The one envelope check of every cross-process message (readings,
    readings records, acknowledgements, patient commands, heartbeats); the key sets are the
    callers' constants, so the check costs two set differences on the bridge's hot path."""
    if not isinstance(doc, dict):
        raise error(f"{what} must be a JSON object")
    v = doc.get("v")
    if v != version or isinstance(v, bool):
        raise error(f"unsupported schema version {brief(v)}; expected v{version}")
    unknown = doc.keys() - keys
    if unknown:
        raise error(f"unknown fields: {', '.join(sorted(map(str, unknown)))}")
    missing = required - doc.keys()
    if missing:
        raise error(f"missing fields: {', '.join(sorted(missing))}")
    return doc


def load_envelope(raw: bytes | None, *, what: str, version: int, error: Callable[[str], Exception],
                  max_bytes: int, keys: frozenset[str], required: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Decode a small versioned message (size, JSON, no key named twice) and check its envelope
    (:func:`check_envelope`); ``error(reason)`` on anything wrong, never another exception."""
    if not isinstance(raw, bytes | bytearray):
        raise error(f"{what} has no value (a tombstone) or is not bytes")
    if len(raw) > max_bytes:
        raise error(f"{what} larger than {max_bytes} bytes")
    try:
        doc = loads_unique(raw)
    except ValueError as exc:  # not JSON, or a key named twice
        raise error(f"not JSON: {exc}") from exc
    return check_envelope(doc, what=what, version=version, error=error, keys=keys, required=required)


class WireError(ValueError):
    """A message that does not follow the wire schema; ``reason`` says why, for the dead-letter topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Sample = tuple[str, float, float, int]


class ReadingsMessage(NamedTuple):
    """One validated MQTT readings message: samples of one device of one patient, held as columns
    (the shape of a group in a Kafka readings record, so the bridge never builds a tuple per sample).
    A named tuple: the bridge builds one per message, at a third of a frozen dataclass's cost."""

    patient: str
    device: str
    source: str
    metric: tuple[str, ...]
    t: tuple[float, ...]
    value: tuple[float, ...]
    flags: tuple[int, ...]

    @property
    def samples(self) -> tuple[Sample, ...]:
        """The samples one by one: ``(metric, t, value, flags)``."""
        return tuple(zip(self.metric, self.t, self.value, self.flags, strict=True))

    def to_group(self) -> dict[str, Any]:
        """The message as a (columnar) group inside a Kafka readings record."""
        return {"device": self.device, "source": self.source, "metric": self.metric, "t": self.t,
                "value": self.value, "flags": self.flags}


def readings_topic(patient: str) -> str:
    """MQTT topic on which the edge agent of ``patient`` publishes readings."""
    return f"{TOPIC_ROOT}/p/{patient}/readings"


def status_topic(patient: str) -> str:
    """MQTT topic for device and agent status of ``patient`` (retained, last will)."""
    return f"{TOPIC_ROOT}/p/{patient}/status"


def command_topic(patient: str) -> str:
    """MQTT topic on which the agent of ``patient`` receives commands and messages."""
    return f"{TOPIC_ROOT}/p/{patient}/cmd"


def patient_from_topic(topic: str) -> str:
    """The patient id in a readings topic, or :class:`WireError`."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "rpm" or parts[1] != "v1" or parts[2] != "p" or parts[4] != "readings":
        raise WireError(f"topic {brief(topic)} is not rpm/v1/p/<patient>/readings")
    if not _ID_RE.fullmatch(parts[3]):
        raise WireError("topic patient id is not a valid identifier")
    return parts[3]


def is_valid_id(value: object) -> bool:
    """Whether ``value`` is an identifier safe for tags and topics."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def all_valid_ids(values: Sequence[object]) -> bool:
    """Whether every one of ``values`` (at least one) is a valid identifier (:func:`is_valid_id`): one
    join and one match for all of them (the worker checks the ids of a whole batch at once)."""
    try:
        joined = "\n".join(values)  # type: ignore[arg-type]  # TypeError: some value is not a str
    except TypeError:
        return False
    # As many newlines as separators: no value holds one of its own (it would pass as two ids).
    return joined.count("\n") == len(values) - 1 and _IDS_RE.fullmatch(joined) is not None


def encode_readings(
    *, patient: str, device: str, source: str, samples: list[Sample] | list[list[Any]], msg_id: str | None = None
) -> bytes:
    """Encode a readings message (the inverse of :func:`parse_readings_message`)."""
    doc: dict[str, Any] = {"v": SCHEMA_VERSION, "patient": patient, "device": device, "source": source,
                           "samples": samples}
    if msg_id is not None:
        doc["id"] = msg_id
    return orjson.dumps(doc)


# What our publishers put in one message: well below both wire limits whatever the numbers look like
# (a sample encodes to at most ~80 bytes: 500 of them are ~40 kB of the 256 kB allowed).
PUBLISH_MAX_SAMPLES: Final = 500


def encode_readings_messages(*, patient: str, device: str, source: str, samples: list[list[Any]],
                             max_samples: int = PUBLISH_MAX_SAMPLES) -> list[tuple[bytes, int]]:
    """``samples`` as readings messages ``(payload, samples in it)`` of at most ``max_samples`` samples
    and ``MAX_MESSAGE_BYTES`` each (halved until they fit), in order: a publisher never sends what the
    bridge or Mosquitto would refuse."""
    out: list[tuple[bytes, int]] = []
    for start in range(0, len(samples), max_samples):
        chunk = samples[start : start + max_samples]
        payload = encode_readings(patient=patient, device=device, source=source, samples=chunk)
        if len(payload) > MAX_MESSAGE_BYTES and len(chunk) > 1:
            out += encode_readings_messages(patient=patient, device=device, source=source, samples=chunk,
                                            max_samples=max(1, len(chunk) // 2))
        else:
            out.append((payload, len(chunk)))
    return out


def _check_sample(raw: object, index: int, now: float) -> Sample:
    where = f"samples[{index}]"
    if not isinstance(raw, list) or len(raw) not in (3, 4):
        raise WireError(f"{where}: expected [metric, t, value] or [metric, t, value, flags]")
    metric, t, value = raw[0], raw[1], raw[2]
    flags = raw[3] if len(raw) == 4 else 0
    if not isinstance(metric, str) or metric not in METRIC_RANGES:
        raise WireError(f"{where}: unknown metric {brief(metric)}; expected one of {', '.join(METRICS)}")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise WireError(f"{where}: time must be a finite number of epoch seconds")
    if t < MIN_SAMPLE_EPOCH_S:
        raise WireError(f"{where}: time {t!r} is before 2000-01-01")
    if t > now + MAX_FUTURE_SKEW_S:
        raise WireError(f"{where}: time is {t - now:.0f} s in the future (device clock wrong?)")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise WireError(f"{where}: value must be a finite number")
    lo, hi = METRIC_RANGES[metric]
    if not lo <= value <= hi:
        raise WireError(f"{where}: {metric} value outside plausible range [{lo:g}, {hi:g}]")
    if isinstance(flags, bool) or not isinstance(flags, int) or flags & ~ALL_FLAGS or flags < 0:
        raise WireError(f"{where}: flags must be an integer mask of {ALL_FLAGS:#x}")
    if flags & RANGE_FLAGS == RANGE_FLAGS:
        raise WireError(f"{where}: a value cannot be both above and below the measuring range")
    return (metric, float(t), float(value), flags)


# What the column-wise check (_columns) accepts; anything else goes through _check_sample for its reason.
_METRIC_NAMES: Final = frozenset(METRIC_RANGES)
_METRIC_LO: Final = {m: lo for m, (lo, _hi) in METRIC_RANGES.items()}
_METRIC_HI: Final = {m: hi for m, (_lo, hi) in METRIC_RANGES.items()}
_NUMBER_TYPES: Final = frozenset({int, float})
_VALID_FLAGS: Final = frozenset(f for f in range(ALL_FLAGS + 1) if f & RANGE_FLAGS != RANGE_FLAGS)
Columns = tuple[tuple[str, ...], tuple[float, ...], tuple[float, ...], tuple[int, ...]]


def _columns(samples: list[Any], now: float) -> Columns | None:
    """The samples as columns if every one of them is valid, checked a column at a time (loops in C,
    no object per sample); None if any check fails, and then :func:`_check_sample` finds the first
    bad sample and says why. Accepts only what ``_check_sample`` accepts (and exact ``int``/``float``
    types, as JSON gives), and returns what it returns, column by column."""
    try:
        # A sample that is not a list and still unpacks (a string, an object's keys) gives strings
        # where the times must be numbers; samples of other lengths than 3 or 4 give other columns.
        columns = tuple(zip(*samples, strict=True))
    except (TypeError, ValueError):  # not iterable, or of unequal lengths
        return None
    flags: tuple[Any, ...]
    if len(columns) == 3:
        metric, t, value = columns
        flags = (0,) * len(samples)
    elif len(columns) == 4:
        metric, t, value, flags = columns
        if set(map(type, flags)) != {int} or not _VALID_FLAGS.issuperset(flags):  # bool, 1.0 are not int
            return None
    else:
        return None
    try:
        if not _METRIC_NAMES.issuperset(metric):
            return None
    except TypeError:  # an unhashable metric (a list): _check_sample's reason
        return None
    t_types = set(map(type, t))
    v_types = set(map(type, value))
    if not (t_types <= _NUMBER_TYPES and v_types <= _NUMBER_TYPES):  # bool is neither
        return None
    # min and max pass over a NaN, a sum does not (it is NaN); no ±inf passes the bounds
    if min(t) < MIN_SAMPLE_EPOCH_S or max(t) > now + MAX_FUTURE_SKEW_S or not math.isfinite(sum(t)):
        return None
    # a NaN compares false: refused here too
    if not (all(map(operator.le, map(_METRIC_LO.__getitem__, metric), value))
            and all(map(operator.ge, map(_METRIC_HI.__getitem__, metric), value))):
        return None
    if int in t_types:
        t = tuple(map(float, t))
    if int in v_types:
        value = tuple(map(float, value))
    return metric, t, value, flags


def _unique_top_keys(payload: bytes, doc: dict[str, Any]) -> bool:
    """Whether no top-level key of the readings message ``payload`` (parsed: ``doc``) appears twice.

    Cheap and exact for the messages our publishers send: with no backslash in the payload (so no
    escaped characters), every ``:`` byte is a key's separator or a character of a string. If the
    colons are exactly ``doc``'s keys plus those inside the identifiers' values, each key appears once,
    at the top level, and no other string holds a colon. Otherwise (colons elsewhere, escapes) the
    regular expression over the payload decides, as it always did; and with escapes, a JSON parser
    that sees every key: ``"pati\\u0065nt"`` is ``"patient"`` to any parser, not to the regex."""
    escaped = b"\\" in payload
    if not escaped:
        expected = len(doc)
        for key in ("patient", "device", "id"):
            value = doc.get(key)
            if isinstance(value, str):
                expected += value.count(":")
        if payload.count(b":") == expected:
            return True
    keys = _TOP_KEY_RE.findall(payload)
    if len(keys) != len(set(keys)):
        return False
    if escaped:
        try:
            _pairs_unique(payload)
        except NestingError as exc:  # a key named twice could hide behind it: a readings message has 3 levels
            raise WireError("nested too deeply for a readings message") from exc
        except DuplicateKeyError:
            return False
        except ValueError:  # orjson read it; the checks that follow judge it
            pass
    return True


# Readings topics already found valid, and their patient (a dict lookup instead of a split and a
# regular expression per message); cleared when it grows past this many topics.
_TOPIC_CACHE_MAX: Final = 1 << 17
_topic_patients: dict[str, str] = {}


def _topic_patient(topic: str) -> str:
    patient = _topic_patients.get(topic)
    if patient is None:
        patient = patient_from_topic(topic)  # WireError if the topic is not a readings topic
        if len(_topic_patients) >= _TOPIC_CACHE_MAX:
            _topic_patients.clear()
        _topic_patients[topic] = patient
    return patient


def parse_readings_message(payload: bytes, *, topic: str, now: float) -> ReadingsMessage:
    """Validate one MQTT readings message; raise :class:`WireError` with a reason if it is bad.

    ``now`` is the receiver's clock (epoch seconds), used to reject samples from the future.
    """
    if len(payload) > MAX_MESSAGE_BYTES:
        raise WireError(f"message is {len(payload)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    topic_patient = _topic_patient(topic)
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"not JSON: {exc}") from exc
    doc = check_envelope(doc, what="message", version=SCHEMA_VERSION, error=WireError, keys=_MESSAGE_KEYS)
    if not _unique_top_keys(payload, doc):
        raise WireError("duplicate keys: a key may appear only once")
    patient, device, source = doc.get("patient"), doc.get("device"), doc.get("source")
    if patient != topic_patient:  # the topic's patient is a valid identifier: an equal one is too
        if not is_valid_id(patient):
            raise WireError("patient must be an identifier of [A-Za-z0-9_.:-]{1,64}")
        raise WireError("patient in payload does not match the topic")
    if not is_valid_id(device):
        raise WireError("device must be an identifier of [A-Za-z0-9_.:-]{1,64}")
    if not isinstance(source, str) or source not in SOURCES:
        raise WireError(f"source must be one of {', '.join(sorted(SOURCES))}")
    if "id" in doc and not is_valid_id(doc["id"]):
        raise WireError("id must be an identifier of [A-Za-z0-9_.:-]{1,64}")
    samples = doc.get("samples")
    if not isinstance(samples, list) or not samples:
        raise WireError("samples must be a non-empty list")
    if len(samples) > MAX_SAMPLES_PER_MESSAGE:
        raise WireError(f"{len(samples)} samples; the limit is {MAX_SAMPLES_PER_MESSAGE} per message")
    columns = _columns(samples, now)
    if columns is None:  # some sample is bad (this raises, saying which and why), or merely unusual
        columns = tuple(zip(*(_check_sample(s, i, now) for i, s in enumerate(samples)), strict=True))  # type: ignore[assignment]
        assert columns is not None
    assert isinstance(patient, str)
    assert isinstance(device, str)
    return ReadingsMessage(patient, device, source, *columns)


def encode_readings_record(patient: str | None, groups: list[dict[str, Any]]) -> bytes:
    """Encode a Kafka ``rpm.readings`` record: of one ``patient``, or (``None``) of the patients
    each group names in its own ``"patient"`` key."""
    if patient is None:
        return orjson.dumps({"v": SCHEMA_VERSION, "groups": groups})
    return orjson.dumps({"v": SCHEMA_VERSION, "patient": patient, "groups": groups})
