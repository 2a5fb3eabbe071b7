"""The audit trail: who did what, append-only, tamper-evident, on the Kafka topic ``rpm.audit``.

What is recorded (HIPAA §164.312(b) "audit controls", IEC 62443-3-3 SR 2.8 "auditable events"):
logins at the nurse station (success and failure), nurse sign-ins, acknowledgements, silences,
kiosk tokens issued and revoked, MQTT credentials added, rotated and revoked, the rules and routes
files the worker and notifier loaded (with their SHA-256, and whether it changed since the last
one recorded), and exports of patient data (report, FHIR, HL7). See docs/security.md.

**One entry** is canonical JSON (keys sorted, no spaces; :func:`canonical`), the record's value::

    {"v": 1, "chain": "nurse-station.3f2a…", "seq": 7, "prev": "<sha256 hex of seq 6's value>",
     "anchor": null, "at_ms": 1764100000123, "host": "ward3", "via": "nurse-station",
     "actor": "4711", "action": "ack", "outcome": "success", "target": "<alert id>",
     "patient": "p0001", "detail": {"station": "north-desk", "by": "Ana Lima"}}

**Chains.** Every writer (a nurse-station process, one ``rpm mqtt-auth`` run, a worker start) keeps
its own chain: ``seq`` counts from 0 without gaps and ``prev`` is the SHA-256 of the previous
entry's exact bytes (64 zeros for seq 0). Writers of one deployment run on many hosts at once, so
one global chain would need a global lock; per-writer chains need none and still show any entry
altered, removed or moved within its chain. A chain's first entry carries ``anchor``: the hash of
the newest entry on the topic when the writer started, so chains are linked to what came before
(removing an anchored entry is detected too).

**Signatures.** With the deployment's keys (``RPM_SIGNING_KEYS_FILE``, :mod:`rpm_core.signing`)
every record carries the same ``rpm-sig`` header as signed alerts, an HMAC over the topic name
``rpm.audit`` (always that name, so a copy of the log verifies), the chain id (the record key) and
the value: someone who can rewrite the topic but does not hold the key cannot recompute a chain
after altering an entry. Without keys the hashes still detect accidents, not a rewriter.

**What verify cannot see from the log alone:** the newest entries of a chain removed, or a whole
chain nobody anchored to. ``rpm audit verify --heads FILE`` closes that: it keeps every chain's
head in FILE and fails when a head recorded there is gone.

The writer is :class:`AuditTrail` (async services) or :func:`record_now` (short CLI runs); the
reader :func:`read_log`; the judge :func:`verify_log` (pure).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from rpm_core.errors import RpmError
from rpm_core.kafka_security import kafka_client_kwargs
from rpm_core.signing import SIGNATURE_HEADER, KeyRing, SignatureError

_LOGGER = logging.getLogger(__name__)

TOPIC: Final = "rpm.audit"
ENTRY_VERSION: Final = 1
GENESIS: Final = "0" * 64
QUEUE_MAX: Final = 10_000
# A Kafka write that fails is retried with the same entry (same seq): the chain never has a gap.
RETRY_MAX_S: Final = 10.0
# How long a writer's :attr:`AuditTrail.problem` still tells of entries it lost (queue full): the
# loss is for good, so it is told long enough for a person to see it, not only while it happens.
LOST_HOLD_S: Final = 900.0
# An entry not stored this long after its first attempt (Kafka refusing, or not answering) is a problem.
STUCK_AFTER_S: Final = 15.0
# A CLI that changed something waits this long for Kafka to take its audit entry, then says it failed.
CLI_TIMEOUT_S: Final = 30.0
_KEYS: Final = frozenset({"v", "chain", "seq", "prev", "anchor", "at_ms", "host", "via", "actor", "action",
                          "outcome", "target", "patient", "detail"})
_CHAIN_RE: Final = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
_HASH_RE: Final = re.compile(r"[0-9a-f]{64}")
_TEXT_MAX: Final = 256
OUTCOMES: Final = ("success", "failure")

DetailValue = str | int | bool


class AuditError(RpmError):
    """The audit trail could not be written or read (Kafka unreachable, topic missing)."""


class AuditDecodeError(ValueError):
    """A stored value that is not an audit entry of ours; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def clean_text(value: object, limit: int = _TEXT_MAX) -> str:
    """``value`` as printable text of at most ``limit`` characters (a typed station name can be anything)."""
    text = str(value)
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in text[:limit])


def os_user() -> str:
    """Who runs this command: the OS login (``getpass.getuser``), ``?`` when it cannot be told."""
    try:
        return clean_text(getpass.getuser(), 64)
    except (KeyError, OSError):  # no passwd entry (a container's uid) and no LOGNAME
        return f"uid:{os.getuid()}"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened, by whom; the chain fields are added by :class:`Chain`."""

    action: str
    actor: str
    outcome: str = "success"
    target: str = ""
    patient: str = ""
    detail: Mapping[str, DetailValue] = field(default_factory=dict)
    at: float = 0.0

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")
        for k, v in self.detail.items():
            if not isinstance(k, str) or not isinstance(v, str | int | bool):
                raise ValueError("detail maps names to text, integers or booleans")


def canonical(body: Mapping[str, Any]) -> bytes:
    """The one byte form of an entry: JSON, keys sorted, no insignificant spaces."""
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def entry_hash(value: bytes) -> str:
    """SHA-256 (hex) of an entry's exact bytes: what the next entry's ``prev`` names."""
    return hashlib.sha256(value).hexdigest()


@dataclass(frozen=True, slots=True)
class Sealed:
    """An entry ready to store: its key (the chain), value, signature headers and hash."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    digest: str
    body: dict[str, Any]


class Chain:
    """One writer's chain (sans-I/O): :meth:`seal` numbers, links and signs events in order."""

    def __init__(self, *, via: str, keys: KeyRing | None, anchor: str | None = None, chain_id: str | None = None
                 ) -> None:
        self.via = clean_text(via, 64)
        self.id = chain_id or f"{re.sub(r'[^A-Za-z0-9_.-]', '-', self.via)[:48]}.{secrets.token_hex(8)}"
        if not _CHAIN_RE.fullmatch(self.id):
            raise ValueError(f"chain id {self.id!r} must be 1-128 of [A-Za-z0-9_.:@-]")
        self.keys = keys
        self.anchor = anchor
        self.seq = 0
        self.prev = GENESIS
        self.host = clean_text(socket.gethostname(), 64)

    def seal(self, event: AuditEvent) -> Sealed:
        """The next entry of this chain for ``event``."""
        body: dict[str, Any] = {
            "v": ENTRY_VERSION, "chain": self.id, "seq": self.seq, "prev": self.prev,
            "anchor": self.anchor if self.seq == 0 else None,
            "at_ms": int((event.at or time.time()) * 1000), "host": self.host, "via": self.via,
            "actor": clean_text(event.actor, 128), "action": clean_text(event.action, 64), "outcome": event.outcome,
            "target": clean_text(event.target), "patient": clean_text(event.patient, 64),
            "detail": {clean_text(k, 64): (clean_text(v) if isinstance(v, str) else v)
                       for k, v in event.detail.items()},
        }
        value = canonical(body)
        key = self.id.encode()
        headers = self.keys.sign(TOPIC, key, value) if self.keys is not None else []
        digest = entry_hash(value)
        self.seq += 1
        self.prev = digest
        return Sealed(key=key, value=value, headers=headers, digest=digest, body=body)


def decode_entry(value: bytes | None) -> dict[str, Any]:
    """Parse a stored value strictly; :class:`AuditDecodeError` names what is wrong."""
    if not isinstance(value, bytes | bytearray):
        raise AuditDecodeError("record without a value")
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise AuditDecodeError("not JSON") from None
    if not isinstance(body, dict) or set(body) != _KEYS:
        raise AuditDecodeError("not an audit entry (keys differ)")
    if body["v"] != ENTRY_VERSION:
        raise AuditDecodeError(f"unknown entry version {body['v']!r}")
    if canonical(body) != bytes(value):
        raise AuditDecodeError("not in canonical form (re-encoded by something else?)")
    ok = (isinstance(body["chain"], str) and _CHAIN_RE.fullmatch(body["chain"])
          and isinstance(body["seq"], int) and not isinstance(body["seq"], bool) and body["seq"] >= 0
          and isinstance(body["prev"], str) and _HASH_RE.fullmatch(body["prev"])
          and (body["anchor"] is None or (isinstance(body["anchor"], str) and _HASH_RE.fullmatch(body["anchor"])))
          and isinstance(body["at_ms"], int) and isinstance(body["detail"], dict)
          and body["outcome"] in OUTCOMES
          and all(isinstance(body[k], str) for k in ("host", "via", "actor", "action", "target", "patient")))
    if not ok:
        raise AuditDecodeError("a field has the wrong type or form")
    return body


# --- reading and judging -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """One record as stored: where (partition, offset), its key, value and signature header."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    sig: bytes | None

    @property
    def where(self) -> str:
        """``offset N`` (``P/N`` beyond partition 0)."""
        return f"offset {self.offset}" if self.partition == 0 else f"partition {self.partition} offset {self.offset}"


@dataclass
class Verdict:
    """What :func:`verify_log` found: ok, or the first bad entry and why."""

    entries: int = 0
    chains: int = 0
    duplicates: int = 0
    signed: bool = False
    bad: StoredRecord | None = None
    problem: str = ""
    heads: dict[str, tuple[int, str]] = field(default_factory=dict)  # chain -> (seq, hash) of its newest entry
    problems: list[tuple[StoredRecord | None, str]] = field(default_factory=list)  # all of them, with every=True

    @property
    def ok(self) -> bool:
        """Whether every entry verified."""
        return self.bad is None and not self.problem


def verify_log(records: Iterable[StoredRecord], keys: KeyRing | None,
               expected_heads: Mapping[str, tuple[int, str]] | None = None, *, every: bool = False) -> Verdict:
    """Check every record in stored order; stop at the first that does not verify (``every``: go on).

    Per chain: seq 0, 1, 2… in order, each ``prev`` the hash of the one before; a chain's first
    entry's ``anchor`` (when set) the hash of an entry stored before it; with ``keys``, every
    record signed by one of them. An exact repeat of a chain's newest entry (a write retried after
    a lost answer) is counted as a duplicate, not an error. With ``expected_heads`` (an earlier
    verdict's ``heads``), every head recorded there must still be in the log. With ``every``, all
    problems are listed (``problems``): a record that is not authentic is skipped, an authentic one
    out of line is reported and then taken as its chain's head, so one forged or removed entry
    cannot hide the next.
    """
    verdict = Verdict(signed=keys is not None)
    seen: set[str] = set()
    by_digest: dict[tuple[str, int], str] = {}
    for rec in records:
        found = _authentic(rec, keys)
        if isinstance(found, str):
            if _fail(verdict, rec, found, every):
                return verdict
            continue
        chain, seq, digest = found[0]["chain"], found[0]["seq"], found[1]
        problem = _out_of_line(found[0], digest, verdict, seen)
        if problem and _fail(verdict, rec, problem, every):
            return verdict
        if verdict.heads.get(chain) == (seq, digest) and not problem:
            verdict.duplicates += 1
            continue
        seen.add(digest)
        by_digest[(chain, seq)] = digest
        verdict.heads[chain] = (seq, digest)
        verdict.entries += 1
        verdict.chains = len(verdict.heads)
    for chain, (seq, digest) in (expected_heads or {}).items():
        if by_digest.get((chain, seq)) != digest and _fail(
                verdict, None, f"chain {chain}: entry seq {seq} recorded as a head earlier is gone or different "
                               "(entries removed from the end?)", every):
            return verdict
    return verdict


def _fail(verdict: Verdict, rec: StoredRecord | None, problem: str, every: bool) -> bool:
    """Note a problem (the first is ``bad``/``problem``); whether to stop."""
    if not verdict.problem:
        verdict.bad, verdict.problem = rec, problem
    verdict.problems.append((rec, problem))
    return not every


def _authentic(rec: StoredRecord, keys: KeyRing | None) -> tuple[dict[str, Any], str] | str:
    """(entry, hash) of a record that is an entry of ours, signed when there are keys; else why not."""
    try:
        body = decode_entry(rec.value)
    except AuditDecodeError as exc:
        return exc.reason
    assert rec.value is not None  # decode_entry refused None
    chain = body["chain"]
    if rec.key is not None and rec.key != chain.encode():
        return f"record key does not name its chain {chain}"
    if keys is not None:
        try:
            keys.verify(TOPIC, chain.encode(), rec.value, [(SIGNATURE_HEADER, rec.sig)] if rec.sig else [])
        except SignatureError as exc:
            return f"chain {chain} seq {body['seq']}: {exc}"
    return body, entry_hash(rec.value)


def _out_of_line(body: dict[str, Any], digest: str, verdict: Verdict, seen: set[str]) -> str:
    """Why an authentic entry does not follow its chain's head (or its anchor), or ""."""
    chain, seq = body["chain"], body["seq"]
    head = verdict.heads.get(chain)
    if head == (seq, digest):
        return ""  # a retried write
    expected_seq, expected_prev = (head[0] + 1, head[1]) if head else (0, GENESIS)
    if seq != expected_seq:
        what = "missing (removed?)" if seq > expected_seq else "already seen (reordered or replayed?)"
        return f"chain {chain}: seq {seq} where {expected_seq} was expected: entry {expected_seq} {what}"
    if body["prev"] != expected_prev:
        return f"chain {chain} seq {seq}: prev does not match the hash of seq {seq - 1} (that entry was altered)"
    if seq == 0 and body["anchor"] is not None and body["anchor"] not in seen:
        return f"chain {chain}: its anchor names an entry not stored before it (removed or moved?)"
    return ""


async def read_log(bootstrap: str, topic: str = TOPIC, *, timeout_s: float = 60.0) -> list[StoredRecord]:
    """Every record of ``topic`` up to its current end, in stored order (partition, offset)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    consumer = AIOKafkaConsumer(**kafka_client_kwargs(bootstrap), enable_auto_commit=False, group_id=None)
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise AuditError(f"cannot reach Kafka at {bootstrap}: {type(exc).__name__}") from exc
    try:
        async with asyncio.timeout(timeout_s):
            parts = await _partitions(consumer, topic)
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            out: list[StoredRecord] = []
            while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                batch = await consumer.getmany(*tps, timeout_ms=500)
                for tp, recs in batch.items():
                    out += [StoredRecord(tp.partition, r.offset, r.key, r.value, _sig(r.headers))
                            for r in recs if r.offset < end[tp]]
    except TimeoutError as exc:
        raise AuditError(f"reading {topic} did not finish within {timeout_s:g} s") from exc
    finally:
        await consumer.stop()
    out.sort(key=lambda r: (r.partition, r.offset))
    return out


async def _partitions(consumer: Any, topic: str) -> set[int]:
    for _ in range(5):  # a topic just created may take a moment to show in the metadata
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        await consumer._client.force_metadata_update()  # aiokafka has no public refresh
        await asyncio.sleep(0.1)
    raise AuditError(f"topic {topic} does not exist (nothing was audited yet?)")


def _sig(headers: Sequence[tuple[str, bytes]] | None) -> bytes | None:
    found = [v for k, v in (headers or ()) if k == SIGNATURE_HEADER]
    return found[0] if len(found) == 1 else None


async def _newest_hash(bootstrap: str, topic: str) -> str | None:
    """Hash of the newest entry of ``topic`` (partition 0), None when empty or missing."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**kafka_client_kwargs(bootstrap), enable_auto_commit=False, group_id=None)
    try:
        await consumer.start()
        if not consumer.partitions_for_topic(topic):
            await consumer._client.force_metadata_update()
        if not consumer.partitions_for_topic(topic):
            return None
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        if end == 0:
            return None
        consumer.seek(tp, end - 1)
        async with asyncio.timeout(10):
            while True:
                batch = await consumer.getmany(tp, timeout_ms=500)
                recs = [r for r in batch.get(tp, []) if r.offset == end - 1]
                if recs:
                    return entry_hash(recs[0].value) if recs[0].value is not None else None
    finally:
        await consumer.stop()


async def ensure_topic(bootstrap: str, topic: str = TOPIC) -> None:
    """Create the audit topic (one partition: one total order) if it does not exist."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**kafka_client_kwargs(bootstrap))
    try:
        await admin.start()
        if topic not in set(await admin.list_topics()):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()


# --- configuration loads ----------------------------------------------------------------------------


def config_event(kind: str, path: str, digest: str, previous: str | None, actor: str) -> AuditEvent:
    """``<kind>.loaded`` (first time, or the same content as last recorded) or ``<kind>.changed``."""
    changed = previous is not None and previous != digest
    return AuditEvent(action=f"{kind}.{'changed' if changed else 'loaded'}", actor=actor, target=path,
                      detail={"sha256": digest, "previous_sha256": previous or ""})


def last_config_digest(records: Iterable[StoredRecord], kind: str, keys: KeyRing | None) -> str | None:
    """The SHA-256 of the ``kind`` file recorded last (only entries that verify, when there are keys)."""
    found = None
    for rec in records:
        try:
            body = decode_entry(rec.value)
            if keys is not None:
                keys.verify(TOPIC, body["chain"].encode(), rec.value, [(SIGNATURE_HEADER, rec.sig)] if rec.sig else [])
        except (AuditDecodeError, SignatureError):
            continue
        if body["action"] in (f"{kind}.loaded", f"{kind}.changed") and isinstance(body["detail"].get("sha256"), str):
            found = body["detail"]["sha256"]
    return found


async def config_load_event(bootstrap: str, keys: KeyRing | None, kind: str, target: str, content: bytes, *,
                            actor: str, topic: str = TOPIC, timeout_s: float = 15.0) -> AuditEvent:
    """The entry for loading ``content`` as the ``kind`` configuration: changed since the last one recorded?"""
    try:
        records = await read_log(bootstrap, topic, timeout_s=timeout_s)
    except AuditError:
        records = []  # nothing audited yet: the topic does not exist
    digest = hashlib.sha256(content).hexdigest()
    return config_event(kind, target, digest, last_config_digest(records, kind, keys), actor)


async def record_config_load(bootstrap: str, keys: KeyRing | None, via: str, kind: str, path: str, *,
                             actor: str, topic: str = TOPIC, timeout_s: float = 15.0) -> AuditEvent:
    """Record that ``via`` loaded the ``kind`` file at ``path`` (its SHA-256, and whether it changed)."""
    with open(path, "rb") as fh:  # noqa: ASYNC230 (a config file of a few kB, once at start)
        content = fh.read()
    event = await config_load_event(bootstrap, keys, kind, path, content, actor=actor, topic=topic,
                                    timeout_s=timeout_s)
    await record_async(bootstrap, keys, via, [event], topic=topic, timeout_s=timeout_s)
    return event


# --- writing -----------------------------------------------------------------------------------------


class AuditTrail:
    """A long-running writer: :meth:`record` never blocks; :meth:`run` stores entries in order.

    Entries are sealed (numbered, linked, signed) when recorded and stored one at a time in that
    order; a failed write is retried with the very same entry, so the chain has no gaps and a
    retried write that did land shows up as an exact duplicate (which verify accepts).
    """

    def __init__(self, *, bootstrap: str, keys: KeyRing | None, via: str, topic: str = TOPIC,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.chain = Chain(via=via, keys=keys)
        self._clock = clock
        self.written = 0
        self.failed = 0
        self.lost = 0
        self._queue: asyncio.Queue[Sealed] = asyncio.Queue(maxsize=QUEUE_MAX)
        self._producer: Any = None
        self._error: str | None = None  # why the entry at the head of the queue is not stored yet
        self._sending_since: float | None = None  # the clock at its first attempt
        self._lost_at: float | None = None  # the clock when an entry was last lost

    @property
    def problem(self) -> str | None:
        """Why people's actions are not (all) in the trail now, or were lost lately; None when all is stored."""
        parts = []
        now = self._clock()
        if self._sending_since is not None and now - self._sending_since >= STUCK_AFTER_S:
            parts.append(f"{self._queue.qsize() + 1} audit entries of people's actions wait to be stored in "
                         f"{self.topic} for {now - self._sending_since:.0f} s "
                         f"(Kafka: {self._error or 'no answer'})")
        if self._lost_at is not None and now - self._lost_at <= LOST_HOLD_S:
            parts.append(f"{self.lost} audit entries of people's actions were lost (queue full) and are not in "
                         f"{self.topic}")
        return "; ".join(parts) or None

    async def start(self) -> None:
        """Create the topic if missing, anchor the chain to the newest entry, start the producer."""
        from aiokafka import AIOKafkaProducer

        await ensure_topic(self.bootstrap, self.topic)
        self.chain.anchor = await _newest_hash(self.bootstrap, self.topic)
        self._producer = AIOKafkaProducer(**kafka_client_kwargs(self.bootstrap), enable_idempotence=False, acks="all")
        await self._producer.start()

    def record(self, event: AuditEvent) -> None:
        """Seal ``event`` and queue it; a full queue loses it, loudly (the chain stays whole)."""
        if self._queue.full():
            self.lost += 1
            self._lost_at = self._clock()
            _LOGGER.error("audit queue full (Kafka unavailable?): %s by %s not recorded", event.action,
                          clean_text(event.actor, 64))
            return
        self._queue.put_nowait(self.chain.seal(event))

    async def run(self) -> None:
        """Store queued entries in order until cancelled."""
        from aiokafka.errors import KafkaError

        while True:
            sealed = await self._queue.get()
            self._sending_since = self._clock()
            delay = 0.2
            while True:
                try:
                    await self._producer.send_and_wait(self.topic, value=sealed.value, key=sealed.key,
                                                       headers=sealed.headers, partition=0)
                    break
                except KafkaError as exc:
                    self.failed += 1
                    self._error = type(exc).__name__
                    _LOGGER.error("audit entry %s/%d not stored yet (%s); retrying", self.chain.id,
                                  sealed.body["seq"], type(exc).__name__)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
            self._error = self._sending_since = None
            self.written += 1
            self._queue.task_done()

    async def flush(self) -> None:
        """Wait until everything queued so far is stored."""
        await self._queue.join()

    async def drain(self, within_s: float = 5.0) -> bool:
        """Wait up to ``within_s`` for everything queued to be stored; whether it was."""
        try:
            async with asyncio.timeout(within_s):
                await self._queue.join()
        except TimeoutError:
            _LOGGER.error("%d audit entries not stored at shutdown", self._queue.qsize())
            return False
        return True

    async def stop(self) -> None:
        """Stop the producer (after :meth:`drain`)."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


async def record_async(bootstrap: str, keys: KeyRing | None, via: str, events: Sequence[AuditEvent], *,
                       topic: str = TOPIC, timeout_s: float = CLI_TIMEOUT_S) -> str:
    """Store ``events`` as one new chain and wait until Kafka has them; the chain id."""
    from aiokafka.errors import KafkaError

    trail = AuditTrail(bootstrap=bootstrap, keys=keys, via=via, topic=topic)
    try:
        async with asyncio.timeout(timeout_s):
            await trail.start()
            for event in events:
                trail.record(event)
            writer = asyncio.create_task(trail.run())
            try:
                await trail.flush()
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
    except (TimeoutError, KafkaError, OSError) as exc:
        raise AuditError(f"the audit entry could not be stored in {topic} at {bootstrap} "
                         f"({type(exc).__name__})") from exc
    finally:
        await trail.stop()
    return trail.chain.id


def record_now(bootstrap: str | None, keys: KeyRing | None, via: str, *events: AuditEvent,
               topic: str = TOPIC) -> str | None:
    """For a command's single run: store ``events`` (synchronously); None when there is no Kafka.

    Raises :class:`AuditError` when Kafka is configured but did not take them.
    """
    if not bootstrap:
        _LOGGER.warning("not audited (%s): RPM_KAFKA_URL is not set, so rpm.audit cannot be written", via)
        return None
    return asyncio.run(record_async(bootstrap, keys, via, list(events), topic=topic))
