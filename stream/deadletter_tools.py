"""Reading ``rpm.deadletter`` and putting its records back where they came from (``rpm deadletter``).

Every record is parsed on its own (:func:`read_entry`): a record this module cannot read becomes an
:class:`Unreadable` entry with the problem, never an exception that stops the command. A selection
(:class:`Selection`: stage, reason, time, offsets) picks the entries to show or replay.

Replay (:func:`replay_record`) rebuilds the ``rpm.readings`` record an entry stands for, or says
why it cannot (:class:`NotReplayable`):

- stage ``worker``, source ``rpm.readings``: the payload is a readings record; it must decode as the
  worker decodes it (:func:`stream.records.decode_record`) and all its groups must belong to one
  partition (:func:`rpm_core.topics.partition_for`); it is produced again unchanged, to that partition.
- stage ``bridge``: the payload is an MQTT readings message and the source its topic; it is
  validated again exactly as the bridge does (:func:`rpm_core.wire.parse_readings_message`, with
  ``now`` = when the bridge received it) and becomes the record the bridge would have built
  (:func:`bridge_record`). A message that is still invalid is reported, not dead-lettered again.
- truncated payloads, and payloads that no longer match their recorded size and SHA-256, cannot be
  replayed.

Reading the topic (:class:`DeadLetterReader`) uses a consumer without a group (assign, seek to the
beginning) and reads until it is past the end offsets it saw at the start *and* the topic has been
idle for :data:`READ_IDLE_S`: Tansu's end offsets can stay behind the real end after batched
writes (303 records produced in batches: ``ListOffsets`` answered 261; 500: 445, and stayed there),
so stopping at the end offsets would miss the newest records. The price: records written while the
command runs may be included.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import datetime as dt
import hashlib
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

import orjson

from rpm_core import topics
from rpm_core.deadletter import redact_reason
from rpm_core.kafka_security import kafka_client_kwargs
from rpm_core.wire import ReadingsMessage, WireError, encode_readings_record, parse_readings_message
from stream.errors import StreamError
from stream.records import RecordError, decode_record

# deadletter_record never writes more than 1,000,000 bytes (rpm_core.deadletter.MAX_RECORD_BYTES);
# records of earlier versions kept up to 768 KiB escaped (~4.6 MB). Anything larger was not
# written by us: refuse to parse it rather than hold it.
MAX_RECORD_BYTES: Final = 8 * 1024 * 1024
# The newest epoch second datetime can show (9999-12-31T23:59:59Z).
MAX_EPOCH_S: Final = 253_402_300_799.0
# Read until past the start's end offsets and idle this long (see the module docstring).
READ_IDLE_S: Final = 1.0
# Behind the end offsets and nothing arrives for this long: the broker is not delivering.
READ_STALL_S: Final = 30.0
FETCH_WAIT_MS: Final = 200
# Reasons and sources are the sender's to shape: bounded and escaped on a terminal.
MAX_SHOWN_CHARS: Final = 300
MAX_SHOWN_SOURCE_CHARS: Final = 60

_NUMBER: Final = re.compile(r"\d+(?:\.\d+)?")
_OFFSETS: Final = re.compile(r"(\d+)(?:(-)(\d*))?")


class DeadLetterToolError(StreamError):
    """``rpm deadletter`` cannot do its job at all (Kafka unreachable, a topic missing)."""


class DeadLetterFormatError(StreamError, ValueError):
    """A dead-letter record that does not have the shape of :func:`rpm_core.deadletter.deadletter_record`.

    ``stage`` and ``reason`` are what could still be read of it (``None``: nothing usable).
    """

    def __init__(self, problem: str, *, stage: str | None = None, reason: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.stage = stage
        self.reason = reason


# --- entries --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-letter record, parsed; ``payload`` is the kept payload as bytes (text or base64)."""

    partition: int
    offset: int
    stage: str
    reason: str
    source: str
    received_at: float
    size: int
    sha256: str
    payload: bytes
    payload_is_text: bool
    truncated: bool

    @property
    def intact(self) -> bool:
        """Whether the kept payload is the whole input: not truncated, its size and hash as recorded."""
        return (not self.truncated and len(self.payload) == self.size
                and hashlib.sha256(self.payload).hexdigest() == self.sha256)

    def to_json(self, *, payload: bool = False) -> dict[str, Any]:
        """The entry for ``--json`` (the payload only when asked for: it is health data)."""
        doc: dict[str, Any] = {
            "partition": self.partition, "offset": self.offset, "stage": self.stage, "reason": self.reason,
            "source": self.source, "received_at": self.received_at, "received_at_utc": utc_iso(self.received_at),
            "size": self.size, "sha256": self.sha256, "truncated": self.truncated,
        }
        if payload:
            doc["payload"] = self.payload.decode() if self.payload_is_text else None
            doc["payload_b64"] = None if self.payload_is_text else base64.b64encode(self.payload).decode()
        return doc


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A record of ``rpm.deadletter`` that could not be parsed; ``stage``/``reason`` if they could be read."""

    partition: int
    offset: int
    problem: str
    stage: str | None = None
    reason: str | None = None

    def to_json(self, *, payload: bool = False) -> dict[str, Any]:
        """The entry for ``--json`` (an unreadable record has no payload to show)."""
        return {"partition": self.partition, "offset": self.offset, "stage": self.stage, "reason": self.reason,
                "error": self.problem}


Entry = DeadLetter | Unreadable


def read_entry(value: bytes | None, *, partition: int, offset: int) -> Entry:
    """The entry of one Kafka record of ``rpm.deadletter``; never raises."""
    try:
        return parse_deadletter(value, partition=partition, offset=offset)
    except DeadLetterFormatError as exc:
        return Unreadable(partition, offset, exc.problem, exc.stage, exc.reason)


def parse_deadletter(value: bytes | None, *, partition: int, offset: int) -> DeadLetter:
    """Parse one dead-letter record; :class:`DeadLetterFormatError` names what is wrong with it."""
    if value is None:
        raise DeadLetterFormatError("empty record (no value)")
    if len(value) > MAX_RECORD_BYTES:
        raise DeadLetterFormatError(f"record is {len(value)} bytes, more than a dead-letter record can be")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DeadLetterFormatError(f"not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise DeadLetterFormatError("not a JSON object")
    stage, reason = doc.get("stage"), doc.get("reason")
    known = {"stage": stage if isinstance(stage, str) else None, "reason": reason if isinstance(reason, str) else None}
    try:
        return _parse_fields(doc, partition=partition, offset=offset)
    except DeadLetterFormatError as exc:
        raise DeadLetterFormatError(exc.problem, **known) from None


def _parse_fields(doc: dict[str, Any], *, partition: int, offset: int) -> DeadLetter:
    stage, reason, source = (_text(doc, k) for k in ("stage", "reason", "source"))
    received_at = _finite(doc.get("received_at"))
    if received_at is None or not 0 <= received_at <= MAX_EPOCH_S:
        raise DeadLetterFormatError("received_at must be epoch seconds (a finite number, 0 to year 9999)")
    size = doc.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise DeadLetterFormatError("size must be a non-negative integer")
    truncated = doc.get("truncated")
    if not isinstance(truncated, bool):
        raise DeadLetterFormatError("truncated must be true or false")
    payload, is_text = _payload(doc)
    return DeadLetter(partition=partition, offset=offset, stage=stage, reason=reason, source=source,
                      received_at=received_at, size=size, sha256=_text(doc, "sha256"), payload=payload,
                      payload_is_text=is_text, truncated=truncated)


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise DeadLetterFormatError(f"{key} must be a string")
    return value


def _finite(value: object) -> float | None:
    """``value`` as a float if it is a finite JSON number (not a boolean), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _payload(doc: dict[str, Any]) -> tuple[bytes, bool]:
    """The kept payload, and whether it was kept as text."""
    text, b64 = doc.get("payload"), doc.get("payload_b64")
    if isinstance(text, str) and b64 is None:
        try:
            return text.encode("utf-8"), True
        except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
            raise DeadLetterFormatError("payload is not valid Unicode text") from None
    if isinstance(b64, str) and text is None:
        try:
            return base64.b64decode(b64, validate=True), False
        except binascii.Error:
            raise DeadLetterFormatError("payload_b64 is not valid base64") from None
    raise DeadLetterFormatError("exactly one of payload (text) and payload_b64 (base64) must be a string")


# --- selection ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    """Which entries a command works on; every criterion that is set must match.

    ``reason`` is a case-insensitive substring; ``since`` epoch seconds (``received_at`` at or
    after it); ``offsets`` an inclusive range (``None`` as its end: no end). An unreadable entry
    matches a criterion only if the field it needs could be read.
    """

    stage: str | None = None
    reason: str | None = None
    since: float | None = None
    offsets: tuple[int, int | None] | None = None

    def matches(self, entry: Entry) -> bool:
        """Whether ``entry`` is selected."""
        if self.offsets is not None:
            first, last = self.offsets
            if entry.offset < first or (last is not None and entry.offset > last):
                return False
        if self.stage is not None and entry.stage != self.stage:
            return False
        if self.reason is not None and (entry.reason is None or self.reason.casefold() not in entry.reason.casefold()):
            return False
        return self.since is None or (isinstance(entry, DeadLetter) and entry.received_at >= self.since)


def parse_offsets(text: str) -> tuple[int, int | None]:
    """``A-B`` (inclusive), ``A-`` (from A on) or ``A`` (just A); :class:`ValueError` otherwise."""
    match = _OFFSETS.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"offsets must look like A-B, A- or A (non-negative integers), got {text!r}")
    first = int(match[1])
    last = None if match[2] and not match[3] else int(match[3] or match[1])
    if last is not None and last < first:
        raise ValueError(f"offsets {text!r}: the end comes before the start")
    return first, last


def parse_since(text: str) -> float:
    """ISO 8601 date or time (UTC unless it names its offset) → epoch seconds; :class:`ValueError` if not one."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not an ISO 8601 date or time: {text!r} (e.g. 2025-11-25T08:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def utc_iso(epoch_s: float) -> str:
    """``2025-11-25T20:13:20.123Z``."""
    return dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def reason_kind(reason: str) -> str:
    """A reason without what the input put into it, numbers as ``N``: entries of one kind count together."""
    return _NUMBER.sub("N", redact_reason(reason))


def escaped(text: str) -> str:
    """``text`` with every character a terminal could act on (controls, escapes) as a backslash escape."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def shown(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """``text`` fit for a terminal: escaped (:func:`escaped`), at most ``limit`` characters."""
    out = escaped(text)
    return out if len(out) <= limit else out[: limit - 1] + "…"


# --- replay ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    """The ``rpm.readings`` record an entry stands for, and its partition."""

    partition: int
    value: bytes
    readings: int


@dataclass(frozen=True, slots=True)
class NotReplayable:
    """Why an entry cannot be replayed (a sentence for the operator)."""

    why: str


Outcome = ReplayRecord | NotReplayable


def bridge_record(msg: ReadingsMessage) -> bytes:
    """The ``rpm.readings`` record the bridge builds for one message alone (``Bridge._build``'s lines)."""
    group = msg.to_group()
    group["patient"] = msg.patient
    return encode_readings_record(None, [group])


def replay_record(entry: Entry, *, partitions: int) -> ReplayRecord | NotReplayable:
    """What replaying ``entry`` produces, given the partition count of ``rpm.readings``."""
    if isinstance(entry, Unreadable):
        return NotReplayable(f"unreadable dead-letter record: {entry.problem}")
    if entry.truncated:
        return NotReplayable(f"payload truncated ({entry.size} bytes, only the head kept)")
    if not entry.intact:
        return NotReplayable("payload does not match its recorded size and sha256")
    if entry.stage == "worker":
        return _worker_replay(entry, partitions)
    if entry.stage == "bridge":
        return _bridge_replay(entry, partitions)
    return NotReplayable(f"stage {shown(entry.stage, 40)!r} cannot be replayed (only worker and bridge)")


def _worker_replay(entry: DeadLetter, partitions: int) -> ReplayRecord | NotReplayable:
    if entry.source != topics.READINGS:
        return NotReplayable(f"worker record from {shown(entry.source, 60)!r}: only {topics.READINGS} records "
                             f"can be replayed")
    try:
        groups = decode_record(entry.payload)
    except RecordError as exc:
        return NotReplayable(f"still rejected by the worker's decoder: {exc}")
    owners = {topics.partition_for(g.patient, partitions) for g in groups}
    if len(owners) != 1:
        return NotReplayable(f"its patients belong to {len(owners)} partitions of {topics.READINGS} "
                             f"({partitions} partitions now): a record must stay on one")
    return ReplayRecord(owners.pop(), entry.payload, sum(len(g.t) for g in groups))


def _bridge_replay(entry: DeadLetter, partitions: int) -> ReplayRecord | NotReplayable:
    try:
        msg = parse_readings_message(entry.payload, topic=entry.source, now=entry.received_at)
    except WireError as exc:
        return NotReplayable(f"still rejected by the bridge: {exc.reason}")
    except TypeError as exc:  # e.g. "source": [] (unhashable): a defect of the validation, not a verdict
        return NotReplayable(f"the bridge's validation fails on it ({type(exc).__name__}): a defect to fix first")
    return ReplayRecord(topics.partition_for(msg.patient, partitions), bridge_record(msg), len(msg.samples))


# --- reports --------------------------------------------------------------------------------------


@dataclass
class ListReport:
    """What ``rpm deadletter list`` read: counts of the selected entries by (stage, kind of reason)."""

    read: int = 0
    selected: int = 0
    kinds: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)

    def add(self, entry: Entry) -> None:
        """Count one selected entry."""
        self.selected += 1
        if isinstance(entry, Unreadable):
            self.kinds[(entry.stage or "?", "unreadable dead-letter record: " + reason_kind(entry.problem))] += 1
        else:
            self.kinds[(entry.stage, reason_kind(entry.reason))] += 1

    def lines(self) -> list[str]:
        """The summary, most frequent kinds first."""
        out = [f"{self.selected} of {self.read} dead-letter records selected; by stage and reason:"]
        out += [f"{n:>8}  {shown(stage, 12):<8} {shown(kind)}" for (stage, kind), n in self.kinds.most_common()]
        return out


@dataclass
class ReplayReport:
    """What ``rpm deadletter replay`` did: counts, readings, and why the others could not be replayed."""

    dry_run: bool = False
    selected: int = 0
    replayed: int = 0
    readings: int = 0
    not_replayable: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def failed(self) -> int:
        """How many selected entries could not be replayed."""
        return sum(self.not_replayable.values())

    @property
    def exit_status(self) -> int:
        """0 if every selected entry was replayed (would be, dry run), else 1."""
        return 0 if self.failed == 0 else 1

    def lines(self) -> list[str]:
        """The summary, most frequent reasons first."""
        verb = "would replay" if self.dry_run else "replayed"
        out = [f"selected {self.selected}, {verb} {self.replayed} ({readings(self.readings)}), "
               f"not replayable {self.failed}"]
        out += [f"{n:>8}  {shown(kind)}" for kind, n in self.not_replayable.most_common()]
        return out


def readings(n: int) -> str:
    """``1 reading``, ``5 readings``."""
    return f"{n} reading" if n == 1 else f"{n} readings"


def entry_line(entry: Entry) -> str:
    """One line per entry: offset, received_at (UTC), stage, source, size, reason; never the payload."""
    offset = f"{entry.partition}:{entry.offset}" if entry.partition else str(entry.offset)
    if isinstance(entry, Unreadable):
        return (f"{offset:>8}  {'?':<24}  {shown(entry.stage or '?', 12):<8} {'?':<30} {'?':>8}  "
                f"unreadable dead-letter record: {shown(entry.problem)}")
    source = shown(entry.source, MAX_SHOWN_SOURCE_CHARS)
    return (f"{offset:>8}  {utc_iso(entry.received_at):<24}  {shown(entry.stage, 12):<8} {source:<30} "
            f"{entry.size:>8}  {shown(entry.reason)}")


HEADER: Final = f"{'offset':>8}  {'received_at (UTC)':<24}  {'stage':<8} {'source':<30} {'size':>8}  reason"


def payload_line(entry: DeadLetter) -> str:
    """The payload, for ``--payload``: text escaped for a terminal, binary as base64."""
    if entry.payload_is_text:
        return "          payload: " + escaped(entry.payload.decode())
    return "          payload_b64: " + base64.b64encode(entry.payload).decode()


# --- Kafka ----------------------------------------------------------------------------------------


class DeadLetterReader:
    """``async with DeadLetterReader(bootstrap) as reader:`` — the records of ``rpm.deadletter`` from the
    beginning (:meth:`entries`), and the partition count of ``rpm.readings`` (:attr:`readings_partitions`).
    """

    def __init__(self, bootstrap: str, *, idle_s: float = READ_IDLE_S, stall_s: float = READ_STALL_S) -> None:
        self._bootstrap = bootstrap
        self._idle_s = idle_s
        self._stall_s = stall_s
        self._consumer: Any = None
        self._parts: list[Any] = []
        self.readings_partitions: int | None = None
        self.deadletter_exists = False

    async def __aenter__(self) -> DeadLetterReader:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError
        from aiokafka.structs import TopicPartition

        consumer = AIOKafkaConsumer(**kafka_client_kwargs(self._bootstrap), group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=FETCH_WAIT_MS)
        self._consumer = consumer
        try:
            await consumer.start()
            await consumer.topics()  # refreshes the metadata of every topic
        except KafkaError as exc:
            await self._stop()
            raise DeadLetterToolError(f"cannot reach Kafka at {self._bootstrap}: {exc}") from exc
        parts = consumer.partitions_for_topic(topics.DEADLETTER)
        readings = consumer.partitions_for_topic(topics.READINGS)
        self.deadletter_exists = bool(parts)
        self._parts = [TopicPartition(topics.DEADLETTER, p) for p in sorted(parts or ())]
        self.readings_partitions = len(readings) if readings else None
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stop()

    async def _stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def entries(self) -> AsyncIterator[Entry]:
        """Every record from the beginning, parsed, until past the start's end offsets and idle."""
        from aiokafka.errors import KafkaError

        consumer = self._consumer
        if consumer is None or not self._parts:
            return
        try:
            consumer.assign(self._parts)
            end = await consumer.end_offsets(self._parts)
            await consumer.seek_to_beginning(*self._parts)
            last = time.monotonic()
            while True:
                batches = await consumer.getmany(timeout_ms=FETCH_WAIT_MS, max_records=500)
                if batches:
                    last = time.monotonic()
                    for tp in sorted(batches, key=lambda tp: tp.partition):
                        for record in batches[tp]:
                            yield read_entry(record.value, partition=tp.partition, offset=record.offset)
                    continue
                if await self._done(end, time.monotonic() - last):
                    return
        except KafkaError as exc:
            raise DeadLetterToolError(f"reading {topics.DEADLETTER} failed: {exc}") from exc

    async def _done(self, end: dict[Any, int], idle_s: float) -> bool:
        behind = [(tp.partition, pos, end[tp]) for tp in self._parts
                  if (pos := await self._consumer.position(tp)) < end[tp]]
        if not behind:
            return idle_s >= self._idle_s
        if idle_s >= self._stall_s:
            part, pos, stop = behind[0]
            raise DeadLetterToolError(f"{topics.DEADLETTER} partition {part} stopped delivering at offset {pos} "
                                      f"of {stop} ({idle_s:.0f} s without a record)")
        return False


async def produce_readings(bootstrap: str, records: Sequence[ReplayRecord]) -> list[str | None]:
    """Produce ``records`` to ``rpm.readings`` (each to its partition) and wait for Kafka's
    acknowledgements; per record, ``None`` or the reason Kafka did not take it."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    producer = AIOKafkaProducer(**kafka_client_kwargs(bootstrap), acks="all", enable_idempotence=False,
                                max_request_size=2 * 1024 * 1024)  # Tansu rejects idempotent producers
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        raise DeadLetterToolError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        futures: list[asyncio.Future[Any] | BaseException] = []
        for record in records:
            try:
                futures.append(await producer.send(topics.READINGS, value=record.value, partition=record.partition))
            except KafkaError as exc:
                futures.append(exc)
        outcomes = await asyncio.gather(*(_outcome(f) for f in futures))
    finally:
        await producer.stop()
    return list(outcomes)


async def _outcome(future: asyncio.Future[Any] | BaseException) -> str | None:
    from aiokafka.errors import KafkaError

    if isinstance(future, BaseException):
        return f"Kafka did not take it: {type(future).__name__}"
    try:
        await future
    except KafkaError as exc:
        return f"Kafka did not take it: {type(exc).__name__}"
    return None


# --- the commands' work ---------------------------------------------------------------------------


async def selected_entries(reader: DeadLetterReader, selection: Selection,
                           report: ListReport | None = None) -> AsyncIterator[Entry]:
    """The entries ``selection`` picks, in offset order; ``report`` counts what was read."""
    async for entry in reader.entries():
        if report is not None:
            report.read += 1
        if selection.matches(entry):
            yield entry


async def replay(bootstrap: str, selection: Selection, *, dry_run: bool = False,
                 on_entry: Callable[[Entry, Outcome], None] | None = None) -> ReplayReport:
    """Replay the selected entries (see the module docstring); ``on_entry(entry, outcome)`` is told
    about each, ``outcome`` a :class:`ReplayRecord` or :class:`NotReplayable`."""
    report = ReplayReport(dry_run=dry_run)
    async with DeadLetterReader(bootstrap) as reader:
        partitions = reader.readings_partitions
        if partitions is None:
            raise DeadLetterToolError(f"{topics.READINGS} does not exist on {bootstrap}: nothing to replay into "
                                      f"(a worker creates the topics; in production create them first)")
        planned: list[tuple[Entry, ReplayRecord | NotReplayable]] = [
            (entry, replay_record(entry, partitions=partitions))
            async for entry in selected_entries(reader, selection)
        ]
    wanted = [(entry, outcome) for entry, outcome in planned if isinstance(outcome, ReplayRecord)]
    errors: Iterable[str | None] = ([None] * len(wanted) if dry_run or not wanted
                                    else await produce_readings(bootstrap, [o for _e, o in wanted]))
    failed = {id(entry): why for (entry, _o), why in zip(wanted, errors, strict=True) if why is not None}
    for entry, outcome in planned:
        report.selected += 1
        if isinstance(outcome, ReplayRecord) and id(entry) in failed:
            outcome = NotReplayable(failed[id(entry)])
        if isinstance(outcome, ReplayRecord):
            report.replayed += 1
            report.readings += outcome.readings
        else:
            report.not_replayable[reason_kind(outcome.why)] += 1
        if on_entry is not None:
            on_entry(entry, outcome)
    return report
