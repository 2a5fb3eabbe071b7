"""The nurse station's audit trail in InfluxDB: measurement ``station_audit``.

One point per thing a station did or saw happen to an alert: ``ack`` (a nurse acknowledged),
``silence`` / ``unsilence`` / ``silence_ended``, ``realarm`` (an acknowledged alert still open
after its interval alarmed again), ``kiosk_issued`` / ``kiosk_revoked``. The worker itself
records raised / escalated / acknowledged / cleared in ``alerts``.

Schema::

    station_audit,action=ack,kind=clinical,patient=p0001,station=north-desk,ward=north
        alert_id="3f2a…",rule="glucose_low",severity="critical",by="Ana Lima",note="15 g carbohydrate given",
        minutes=0 <time ms>

Tags are validated ids (``patient`` and ``station`` are left out when there is none); ``by`` and
``note`` are string fields; ``user`` (a tag) is the nurse's badge number when the roster lists
nurses who sign in with a PIN. Writes are queued and sent by one task, so a slow or absent InfluxDB
never delays a nurse; a write that fails is logged as an error and counted (``/healthz``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Final

from rpm_core.audit import LOST_HOLD_S
from rpm_core.lineprotocol import FieldValue, point_line
from rpm_core.settings import InfluxAuth, influx_endpoint
from rpm_core.sink import InfluxSink, make_sink
from rpm_core.wire import is_valid_id

_LOGGER = logging.getLogger(__name__)

MEASUREMENT: Final = "station_audit"
QUEUE_MAX: Final = 10_000


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited action."""

    action: str
    ward: str
    alert_id: str = ""
    patient: str | None = None
    station: str | None = None
    kind: str = "clinical"
    rule: str = ""
    severity: str = ""
    by: str = ""
    note: str = ""
    minutes: float = 0.0
    at: float = 0.0
    user: str | None = None

    def line(self) -> str:
        """The InfluxDB line protocol of this entry (tags sorted, string fields escaped)."""
        tags = {"action": self.action, "kind": self.kind, "ward": self.ward}
        if self.patient and is_valid_id(self.patient):
            tags["patient"] = self.patient
        if self.station and is_valid_id(self.station):
            tags["station"] = self.station
        if self.user and is_valid_id(self.user):
            tags["user"] = self.user
        fields: dict[str, FieldValue] = {"alert_id": self.alert_id, "rule": self.rule, "severity": self.severity,
                                         "by": self.by, "note": self.note, "minutes": float(self.minutes)}
        return point_line(MEASUREMENT, tags, fields, int((self.at or time.time()) * 1000))


class AuditLog:
    """Queues :class:`AuditEntry` points and writes them to InfluxDB (``/write``, ms precision)."""

    def __init__(self, *, url: str | None, db: str, auth: InfluxAuth | None = None) -> None:
        self.url, self._auth = influx_endpoint(url, auth)
        self.db = db
        self.failed = 0
        self.written = 0
        self._queue: asyncio.Queue[AuditEntry] = asyncio.Queue(maxsize=QUEUE_MAX)
        self._sink: InfluxSink | None = None
        self._lost_at: float | None = None  # time.monotonic() of the last entry not recorded

    @property
    def problem(self) -> str | None:
        """Why entries are waiting (InfluxDB refusing the credentials, unreachable), or were lately
        not recorded at all (queue full, refused), for ``/healthz`` and the station's heartbeat."""
        lost = (f"{self.failed} station_audit entries were not recorded"
                if self._lost_at is not None and time.monotonic() - self._lost_at <= LOST_HOLD_S else None)
        waiting = None
        if self._sink is not None:
            stats = self._sink.stats
            waiting = stats.problem or ("InfluxDB writes failing; station_audit entries are queued"
                                        if stats.failing_since is not None else None)
        return "; ".join(p for p in (waiting, lost) if p) or None

    def record(self, entry: AuditEntry) -> None:
        """Queue ``entry`` (never blocks); a full queue is an error in the log, not a stall."""
        if self.url is None:
            return
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:
            self.failed += 1
            self._lost_at = time.monotonic()
            _LOGGER.error("station audit queue full: %s of alert %s not recorded", entry.action, entry.alert_id)

    async def run(self) -> None:
        """Write queued entries until cancelled (batches of what is waiting), through the one
        InfluxDB writer (:mod:`rpm_core.sink`): an outage is waited out while the queue holds."""
        if self.url is None:
            return
        sink = self._sink = make_sink(url=self.url, db=self.db, auth=self._auth)
        try:
            while True:
                batch = [await self._queue.get()]
                while not self._queue.empty() and len(batch) < 500:
                    batch.append(self._queue.get_nowait())
                await self._write(sink, batch)
        finally:
            await sink.close()

    async def _write(self, sink: InfluxSink, batch: list[AuditEntry]) -> None:
        rejected = await sink.write([e.line() for e in batch])
        self.written += len(batch) - len(rejected)
        if rejected:
            self.failed += len(rejected)
            self._lost_at = time.monotonic()
            _LOGGER.error("station audit: InfluxDB refused %d entries: %s", len(rejected), rejected[0][1][:200])

    async def drain(self, within_s: float = 5.0) -> None:
        """Give queued entries up to ``within_s`` to be written (at shutdown)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                while not self._queue.empty():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
