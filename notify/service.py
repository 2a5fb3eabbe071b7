"""``rpm notifier``: consumes ``rpm.alerts``, runs the router, dispatches to channels, audits everything.

::

    rpm.alerts ─────┐ (consumer group rpm-notifier,     ┌─▶ channels (webhook, email, edge agent,
    rpm.alert-acks ─┴─ replayed from the start) ─▶ Router ┤    nurse station receipt) ─▶ receipts
                                     ▲ clock (timer task)  └─▶ AuditWriter ─▶ InfluxDB notifications,
    rpm/v1/p/+/ack (MQTT) ─▶ encode_ack ─▶ rpm.alert-acks                      alerts (escalated)

**Restarts.** Pending chains are rebuilt from the log, not from a private store: on every partition
assignment the notifier seeks ``rpm.alerts`` and ``rpm.alert-acks`` (co-partitioned by patient; the
range assignor gives both topics' partition *n* to the same notifier) to the beginning and replays
the last ``replay_window`` into a fresh router, without advancing its clock. Routing uses the Kafka
record times, so the replay rebuilds exactly the groups, chain starts and deadlines of before.
Then it reads back from InfluxDB which steps the audit says were already dispatched in those
chains (:meth:`~notify.router.Router.restore`) and only then goes live: due steps that were not
sent go out at once, those that were are not repeated, and later ones keep their times. Why
the log and not InfluxDB alone: ``rpm.alerts`` is the contract the router consumes (the same code
path live and on replay, acknowledgements included), while the audit is the notifier's own
journal of what it did; neither alone knows both. If InfluxDB cannot be read within
``RESTORE_TIMEOUT_S`` the notifier goes live anyway: a step may then be sent twice, never missed.

The consumer group exists for partition assignment (several notifiers share the patients); it
commits no offsets, since every start replays anyway.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from aiokafka import ConsumerRebalanceListener

from notify.audit import AuditWriter, attempt_line, escalated_line, record_line, restore_query, sent_records
from notify.channels import ChannelContext, build_channels
from notify.channels.base import Attempt, Channel, Receipt, deliver
from notify.const import (
    CONSUMER_GROUP,
    DEFAULT_REPLAY_WINDOW_S,
    MAX_CONCURRENT_DELIVERIES,
    MAX_TIMER_SLEEP_S,
    NOT_LIVE_AFTER_S,
    PATIENT_ACK_BY,
    PATIENT_ACK_STATION,
    UNDELIVERED_HOLD_S,
)
from notify.errors import TransientDeliveryError
from notify.model import Routes
from notify.mqtt import Inbound, NotifierMqtt
from notify.router import Action, AlertUpdate, Dispatch, Escalated, Record, Router
from rpm_core import topics
from rpm_core.acks import AckDecodeError, decode_ack, encode_ack
from rpm_core.backoff import backoff_s
from rpm_core.commands import CommandDecodeError, PatientAck, patient_from_ack_topic
from rpm_core.deadletter import deadletter_record
from rpm_core.errors import ConfigError
from rpm_core.influx import query_async, result_series, series_rows
from rpm_core.kafka_security import kafka_client_kwargs
from rpm_core.settings import Secret, Settings
from rpm_core.signing import SignatureError
from rpm_core.sink import make_sink
from rpm_core.technical import Heartbeat, HeartbeatSender
from rpm_core.wire import loads_unique

_LOGGER = logging.getLogger(__name__)

RESTORE_TIMEOUT_S: Final = 30.0
# A URL's path in a delivery failure told to every ward may hold a token (a chat webhook's): cut.
_URL_PATH_RE: Final = re.compile(r"([a-z][a-z0-9+.-]*://[^/\s]+)/\S*", re.IGNORECASE)
_HTTP_TIMEOUT_S: Final = 30.0


@dataclass
class NotifierStats:
    """Counters for logs and tests."""

    alerts_in: int = 0
    acks_in: int = 0
    rejected: int = 0
    dispatched: int = 0
    delivered: int = 0
    failed: int = 0
    patient_acks: int = 0
    replays: int = 0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """On every assignment: back to the start of the assigned partitions, and a fresh router."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self._notifier.live.clear()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._notifier.begin_replay(list(assigned))


class Notifier:
    """The service; :meth:`run` until ``stop`` is set."""

    def __init__(self, *, routes: Routes, settings: Settings, secrets: Mapping[str, Secret],
                 ward_of: Callable[[str], str | None], client_id: str = "rpm-notifier",
                 replay_window_s: float = DEFAULT_REPLAY_WINDOW_S, clock: Callable[[], float] = time.time) -> None:
        self.routes = routes
        self.settings = settings
        self._secrets = secrets
        self._ward_of = ward_of
        self._client_id = client_id
        self._replay_window_s = replay_window_s
        self._clock = clock
        self.router = Router(routes, ward_of=ward_of)
        self.live = asyncio.Event()
        self.stats = NotifierStats()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_DELIVERIES)
        self._replay_end: dict[Any, int] = {}
        self._consumer: Any = None
        self._producer: Any = None
        self._mqtt: NotifierMqtt | None = None
        self._http: aiohttp.ClientSession | None = None
        self._channels: dict[str, Channel] = {}
        self._audit: AuditWriter | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._reasons: set[str] = set()
        self._inflight: set[asyncio.Task[None]] = set()
        self._assigned = False
        self._last_live = clock()  # when a heartbeat last found it routing (its start counts)
        self._undelivered: collections.deque[tuple[float, str]] = collections.deque()  # (time, what failed)
        self._keys = settings.key_ring()
        self._beats = self._heartbeat_sender()
        if self._keys is None:
            _LOGGER.warning("RPM_SIGNING_KEYS_FILE is not set: alerts and acknowledgements are not checked; a forged "
                            "alert would be routed (docs/security.md)")

    # -- life cycle -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume, route, dispatch and audit until ``stop`` is set."""
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.coordinator.assignors.range import RangePartitionAssignor

        bootstrap = self.settings.kafka_bootstrap()
        await topics.ensure_topics(bootstrap)
        sink = make_sink(url=self.settings.require_influx(), db=self.settings.influx_db,
                         org=self.settings.influx_org, auth=self.settings.influx_auth())
        self._audit = AuditWriter(sink)
        self._mqtt = self._make_mqtt()
        self._channels = build_channels(self.routes, ChannelContext(
            secrets=self._secrets, http=self._http_session, publish=self._publish_mqtt))
        self._consumer = AIOKafkaConsumer(
            **kafka_client_kwargs(bootstrap), group_id=CONSUMER_GROUP, client_id=self._client_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
        )
        self._producer = AIOKafkaProducer(**kafka_client_kwargs(bootstrap), acks="all", enable_idempotence=False)
        try:
            await self._run(stop)
        finally:
            await self._close(sink)

    async def _run(self, stop: asyncio.Event) -> None:
        await self._producer.start()
        self._consumer.subscribe([topics.ALERTS, topics.ALERT_ACKS], listener=_Rebalance(self))
        await self._consumer.start()
        if self._mqtt is not None:
            await self._mqtt.start()
        assert self._audit is not None
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tasks = {tg.create_task(self._consume(), name="consume"),
                     tg.create_task(self._timers(), name="timers"),
                     tg.create_task(self._audit.run(), name="audit"),
                     tg.create_task(self._beats.forever(self.heartbeat), name="heartbeats")}
            if self._mqtt is not None:
                tasks.add(tg.create_task(self._patient_acks(self._mqtt), name="patient-acks"))
            _LOGGER.info("notifier %s running: %d receivers, %d channels", self._client_id,
                         len(self.routes.receivers), len(self._channels))
            await stop.wait()
            _LOGGER.info("notifier stopping: %s", self.stats)
            self._tg = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self._audit.flush()
            for task in tasks | self._inflight:
                task.cancel()  # a cancelled child is no error for the TaskGroup
        await self._beats.last(self.heartbeat("stopping"))

    async def _close(self, sink: Any) -> None:
        for closer in (self._consumer.stop, self._producer.stop, self._mqtt.stop if self._mqtt else None,
                       self._http.close if self._http else None, sink.close):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()

    def _make_mqtt(self) -> NotifierMqtt | None:
        uses_agent = any(c.type == "edge_agent" for r in self.routes.receivers.values() for c in r.channels)
        if not self.settings.mqtt_url:
            if uses_agent:
                raise ConfigError("routes.yaml has edge_agent channels but RPM_MQTT_URL is not set "
                                  "(the notifier's user is rpm-notifier)")
            return None
        return NotifierMqtt(mqtt=self.settings.mqtt(), client_id=self._client_id)

    def _http_session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_HTTP_TIMEOUT_S))
        return self._http

    async def _publish_mqtt(self, topic: str, payload: bytes) -> None:
        if self._mqtt is None:
            raise TransientDeliveryError("MQTT is not configured")
        await self._mqtt.publish(topic, payload)

    # -- heartbeats (rpm watchdog) -----------------------------------------------------------------

    def heartbeat(self, state: str = "running") -> Heartbeat:
        """What ``rpm watchdog`` is told every ``HEARTBEAT_INTERVAL_S``: unhealthy when it has not been
        routing alerts for ``NOT_LIVE_AFTER_S`` (nobody is paged); a warning (``problem`` while healthy)
        while notifications of the last ``UNDELIVERED_HOLD_S`` reached none of their channels."""
        now = self._clock()
        if self.live.is_set():
            self._last_live = now
        while self._undelivered and self._undelivered[0][0] < now - UNDELIVERED_HOLD_S:
            self._undelivered.popleft()
        problems = []
        stuck = now - self._last_live >= NOT_LIVE_AFTER_S
        if stuck:
            why = "replaying rpm.alerts" if self._assigned else "no partition of rpm.alerts assigned to it"
            problems.append(f"it has routed no alert for {now - self._last_live:.0f} s ({why}), so nobody is paged")
        if self._undelivered:
            problems.append(f"{len(self._undelivered)} notification(s) in the last {UNDELIVERED_HOLD_S / 60:.0f} min "
                            f"reached none of their channels (the last: {self._undelivered[-1][1]})")
        return Heartbeat(component="notifier", instance=self._client_id, time=now, state=state,  # type: ignore[arg-type]
                         healthy=not stuck, problem="; ".join(problems) or None,
                         messages=self.stats.alerts_in + self.stats.acks_in)

    def _heartbeat_sender(self) -> HeartbeatSender:
        async def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
            await self._producer.send_and_wait(topics.HEARTBEATS, value, key=key, headers=headers)

        return HeartbeatSender(send, keys=self._keys, what="this notifier", logger=_LOGGER)

    # -- replay and restore -----------------------------------------------------------------------

    async def begin_replay(self, assigned: list[Any]) -> None:
        """Start over from the beginning of ``assigned`` with a fresh router (see the module docstring)."""
        self.live.clear()
        self.router = Router(self.routes, ward_of=self._ward_of)
        self.stats.replays += 1
        self._assigned = True
        if not assigned:
            self._replay_end = {}
            return
        self._replay_end = dict(await self._consumer.end_offsets(assigned))
        await self._consumer.seek_to_beginning(*assigned)
        _LOGGER.info("replaying %d partition(s) of rpm.alerts/rpm.alert-acks to rebuild pending chains",
                     len(assigned))

    async def _caught_up(self) -> bool:
        if not self._assigned:
            return False
        for tp, end in self._replay_end.items():
            if await self._consumer.position(tp) < end:
                return False
        return True

    async def _go_live(self) -> None:
        rows = await self._read_audit()
        self.router.restore(sent_records(rows))
        self.live.set()
        self._wake.set()
        _LOGGER.info("notifier live: %d open alert(s) after replay, %d audit record(s) restored",
                     len(self.router.open_alerts()), len(rows))

    async def _read_audit(self) -> list[dict[str, Any]]:
        deadline = self._clock() + RESTORE_TIMEOUT_S
        attempt = 0
        while True:
            try:
                return await self._query(restore_query(self._replay_window_s))
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                attempt += 1
                if self._clock() > deadline:
                    _LOGGER.error("cannot read the audit from InfluxDB (%s): going live without it; steps "
                                  "already sent before the restart may be sent again", type(exc).__name__)
                    return []
                await asyncio.sleep(backoff_s(attempt))

    async def _query(self, q: str) -> list[dict[str, Any]]:
        s = self.settings
        doc = await query_async(self._http_session(), s.require_influx(), q, db=s.influx_db, auth=s.influx_auth(),
                                epoch="ms")
        return influx_rows(doc)

    # -- consuming --------------------------------------------------------------------------------

    async def _consume(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    self._apply(tp.topic, record)
            if not self.live.is_set() and await self._caught_up():
                await self._go_live()
            if batch:
                self._wake.set()

    def _apply(self, topic: str, record: Any) -> None:
        now = self._clock()
        at = record.timestamp / 1000.0 if record.timestamp and record.timestamp > 0 else now
        if at < now - self._replay_window_s:
            return
        if self._keys is not None:
            try:
                self._keys.verify(topic, record.key, record.value, record.headers)
            except SignatureError as exc:
                self._refuse_forged(topic, record, exc)
                return
        try:
            actions = self._apply_alert(record.value, at) if topic == topics.ALERTS else \
                self._apply_ack(record.value, record.key, at)
        except ValueError as exc:
            self.stats.rejected += 1
            reason = f"{topic}: {exc}"
            if reason not in self._reasons:  # once per reason: bad input never floods the log
                self._reasons.add(reason)
                _LOGGER.warning("ignored a record of %s", reason)
            return
        self._act(actions)

    def _refuse_forged(self, topic: str, record: Any, exc: SignatureError) -> None:
        """Never route it; dead-letter a forged alert (a forged ack is the worker's to dead-letter)."""
        self.stats.rejected += 1
        reason = f"{topic}: {exc}"
        if reason not in self._reasons:
            self._reasons.add(reason)
            _LOGGER.error("refused a record of %s", reason)
        if topic != topics.ALERTS or self._producer is None:
            return
        dead = deadletter_record(stage="notifier", reason=f"alert refused: {exc}", source=topic,
                                 payload=record.value, received_at=self._clock())
        task = asyncio.ensure_future(self._producer.send_and_wait(topics.DEADLETTER, dead))
        self._inflight.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._inflight.discard)  # type: ignore[arg-type]

    def _apply_alert(self, value: bytes, at: float) -> list[Action]:
        try:
            doc = loads_unique(value)
        except ValueError as exc:  # not JSON, or a key named twice
            raise ValueError(f"not JSON: {exc}") from exc
        self.stats.alerts_in += 1
        return self.router.observe(AlertUpdate.from_doc(doc), at)

    def _apply_ack(self, value: bytes, key: bytes | None, at: float) -> list[Action]:
        ack = decode_ack(value, key=key)
        self.stats.acks_in += 1
        return self.router.acknowledge(ack.alert_id, by=ack.by, at=at, source=ack.station, ack_time=ack.at,
                                       patient=ack.patient)

    # -- time and actions -------------------------------------------------------------------------

    async def _timers(self) -> None:
        while True:
            await self.live.wait()
            self._wake.clear()  # before advancing: an event that arrives meanwhile wakes the next round
            self._act(self.router.advance(self._clock()))
            deadline = self.router.next_deadline()
            delay = MAX_TIMER_SLEEP_S if deadline is None else min(MAX_TIMER_SLEEP_S, deadline - self._clock())
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()

    def _act(self, actions: list[Action]) -> None:
        assert self._audit is not None
        lines = []
        for action in actions:
            if isinstance(action, Record):
                lines.append(record_line(action))
            elif isinstance(action, Escalated):
                lines.append(escalated_line(action))
            elif isinstance(action, Dispatch) and self._tg is not None:
                self.stats.dispatched += 1
                task = self._tg.create_task(self._dispatch(action), name=f"notify {action.notification.id}")
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
        if lines:
            self._audit.add(lines)

    async def _dispatch(self, d: Dispatch) -> None:
        note = d.notification
        try:
            async with self._slots:
                receipts = await asyncio.gather(*(
                    deliver(self._channels[c.tag], note, policy=self.routes.delivery, on_attempt=self._on_attempt)
                    for c in d.channels
                ))
        except Exception:  # a bug in one adapter must not stop the paging of everyone else
            _LOGGER.exception("notification %s failed unexpectedly", note.id)
            receipts = []
        delivered = any(r.delivered for r in receipts)
        self._note_unpaged(d, receipts)
        self._log_receipts(note.id, note.kind, note.step, note.patient, receipts)
        self._act(self.router.delivery_result(note.id, delivered=delivered, at=self._clock()))
        self._wake.set()

    def _note_unpaged(self, d: Dispatch, receipts: list[Receipt]) -> None:
        """Remember a notification that paged no one: every channel that reaches a person (all but the
        nurse station's receipt, whose failure rpm watchdog tells as tech.patient_unassigned) failed.
        No patient is named: the heartbeat's text reaches every ward's technical list."""
        pages = [r for r, c in zip(receipts, d.channels, strict=False) if c.type != "nurse_station"]
        if receipts and (not pages or any(r.delivered for r in pages)):
            return
        failed = "; ".join(f"{r.channel}: {_cut_paths(r.detail)[:160]}" for r in pages) or "no receipt (see its log)"
        note = d.notification
        what = f"step {note.step}" if note.kind == "step" else f"{note.kind} (step {note.step})"
        self._undelivered.append((self._clock(), f"{what}, {failed}"))

    def _on_attempt(self, attempt: Attempt) -> None:
        assert self._audit is not None
        if attempt.outcome == "delivered":
            self.stats.delivered += 1
        elif attempt.outcome == "failed":
            self.stats.failed += 1
        self._audit.add([attempt_line(attempt)])

    @staticmethod
    def _log_receipts(nid: str, kind: str, step: int, patient: str, receipts: list[Receipt]) -> None:
        for r in receipts:
            level = logging.INFO if r.outcome != "failed" else logging.WARNING
            _LOGGER.log(level, "notification %s (%s, step %d, patient %s) on %s: %s after %d attempt(s): %s",
                        nid, kind, step, patient, r.channel, r.outcome, r.attempts, r.detail)

    # -- the patients' own acknowledgements -------------------------------------------------------

    async def _patient_acks(self, mqtt: NotifierMqtt) -> None:
        while True:
            item = await mqtt.inbound.get()
            for record in self._ack_records(item):
                await self._produce_ack(*record)
            mqtt.ack(item)  # only now: Kafka has the acknowledgement

    def _ack_records(self, item: Inbound) -> list[tuple[bytes, bytes]]:
        try:
            patient = patient_from_ack_topic(item.topic)
            ack = PatientAck.from_bytes(item.payload)
            at = min(ack.at, self._clock())  # a patient's clock ahead of ours must not look like the future
            values = [encode_ack(alert_id=a, patient=patient, by=PATIENT_ACK_BY, at=at, station=PATIENT_ACK_STATION)
                      for a in ack.alert_ids]
        except (CommandDecodeError, AckDecodeError) as exc:
            _LOGGER.warning("ignored a patient acknowledgement: %s", exc)
            return []
        self.stats.patient_acks += 1
        _LOGGER.info("patient %s acknowledged %d alert(s) on the edge agent", patient, len(values))
        return [(patient.encode(), v) for v in values]

    async def _produce_ack(self, key: bytes, value: bytes) -> None:
        from aiokafka.errors import KafkaError

        attempt = 0
        while True:
            try:
                headers = self._keys.sign(topics.ALERT_ACKS, key, value) if self._keys is not None else None
                await self._producer.send_and_wait(topics.ALERT_ACKS, key=key, value=value, headers=headers)
                return
            except KafkaError as exc:
                attempt += 1
                _LOGGER.warning("cannot produce a patient acknowledgement (%s); retrying", type(exc).__name__)
                await asyncio.sleep(backoff_s(attempt))


def _cut_paths(text: str) -> str:
    """``https://host:port/a/b`` → ``https://host:port/…`` (a path may hold a token)."""
    return _URL_PATH_RE.sub(r"\1/…", text)


def influx_rows(doc: Any) -> list[dict[str, Any]]:
    """The rows of an InfluxDB ``/query`` answer (one statement) as dicts; ``ValueError`` for an error
    (other than a database that does not exist yet) or an answer without that shape."""
    return series_rows(result_series(doc, missing_ok=True))


async def run_notifier(notifier: Notifier, stop: asyncio.Event) -> None:
    """Run ``notifier`` until ``stop`` is set."""
    await notifier.run(stop)
