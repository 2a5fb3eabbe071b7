"""The audit: every attempt, delivery, failure, skip and acknowledgement, in InfluxDB.

Measurement ``notifications`` (one point per attempt or decision)::

    tags   patient, channel (<receiver>.<channel>, or where an ack came from), outcome
           (delivered | failed | skipped | deferred | acknowledged | resolved), rule, severity
    fields alert_id (the lead alert of the message), alert_ids (all of them, comma-separated),
           step (int), attempt (int), detail, recipient, kind (step | update | repeat | digest |
           caregiver | escalation), route, group, run (chain start, epoch s), fired_at (epoch s)

and each escalation step (step ≥ 1) as a point of the ``alerts`` measurement with state
``escalated`` and the fields ``step`` and ``channel``, beside the worker's own points.

Points are keyed by their tags and their millisecond time; when two different points of one
series would share a millisecond (two alerts of the same rule in one message), the later one moves
on by a millisecond instead of overwriting the first. Writing the same point again (a replay)
overwrites itself. The writer is a bounded queue drained by one task through the stream's retrying
:class:`~rpm_core.sink.InfluxSink`, so a slow or absent InfluxDB never blocks a notification.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from typing import Any, Final

from notify.channels.base import Attempt
from notify.const import AUDIT_QUEUE_MAX_LINES
from notify.router import Escalated, Notification, Record, SentRecord
from rpm_core.lineprotocol import escape_string_field
from rpm_core.sink import InfluxSink

_LOGGER = logging.getLogger(__name__)

MEASUREMENT: Final = "notifications"
_RECENT_KEYS: Final = 50_000
_BATCH_LINES: Final = 5_000


def _tag(value: str) -> str:
    """A tag value escaped for line protocol (commas, spaces and equals signs)."""
    return (value or "-").replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ").replace("=", "\\=")


def _str(value: str) -> str:
    return f'"{escape_string_field(value)}"'


def _line(measurement: str, tags: dict[str, str], fields: dict[str, str], at: float) -> str:
    tag_text = ",".join(f"{k}={_tag(v)}" for k, v in sorted(tags.items()))
    field_text = ",".join(f"{k}={v}" for k, v in sorted(fields.items()))
    return f"{measurement},{tag_text} {field_text} {round(at * 1000)}"


def attempt_line(a: Attempt) -> str:
    """The ``notifications`` point of one delivery attempt."""
    note = a.note
    lead = note.lead
    tags = {"patient": note.patient, "channel": a.channel.tag, "outcome": a.outcome,
            "rule": lead.rule if lead else "-", "severity": lead.severity if lead else "-"}
    fields = _note_fields(note) | {"attempt": f"{a.attempt}i", "detail": _str(a.detail),
                                   "recipient": _str(a.recipient)}
    return _line(MEASUREMENT, tags, fields, a.at)


def _note_fields(note: Notification) -> dict[str, str]:
    lead = note.lead
    return {
        "alert_id": _str(lead.alert_id if lead else ""),
        "alert_ids": _str(",".join(x.alert_id for x in note.alerts)),
        "step": f"{note.step}i", "kind": _str(note.kind), "route": _str(note.route), "group": _str(note.group),
        "run": repr(float(note.run)), "fired_at": repr(float(note.at)),
    }


def record_line(r: Record) -> str:
    """The ``notifications`` point of a decision (acknowledged, resolved, skipped, deferred)."""
    tags = {"patient": r.patient, "channel": r.channel, "outcome": r.outcome, "rule": r.rule, "severity": r.severity}
    fields = {
        "alert_id": _str(r.alert_id), "alert_ids": _str(r.alert_id), "step": f"{r.step}i", "attempt": "0i",
        "detail": _str(r.detail), "recipient": _str(r.recipient), "kind": _str(r.kind), "route": _str(r.route),
        "group": _str(r.group), "run": repr(float(r.run)), "fired_at": repr(float(r.at)),
    }
    return _line(MEASUREMENT, tags, fields, r.at)


def escalated_line(e: Escalated) -> str:
    """The ``alerts`` point of one escalation step of one alert (state ``escalated``)."""
    a = e.alert
    tags = {"metric": a.metric, "patient": a.patient, "rule": a.rule, "severity": a.severity}
    fields = {"alert_id": _str(a.alert_id), "message": _str(a.message), "state": _str("escalated"),
              "step": f"{e.step}i", "channel": _str(e.channel)}
    return _line("alerts", tags, fields, e.at)


def sent_records(rows: Iterable[dict[str, Any]]) -> list[SentRecord]:
    """What the audit says was dispatched (rows of :data:`RESTORE_QUERY`), for ``Router.restore``."""
    out = []
    for row in rows:
        if row.get("outcome") in ("acknowledged", "resolved", "deferred") or not row.get("kind"):
            continue
        try:
            out.append(SentRecord(
                group=str(row["group"]), run=float(row["run"]), step=int(row["step"]), kind=str(row["kind"]),
                fired_at=float(row["fired_at"]), outcome=str(row["outcome"]),
                alert_ids=tuple(x for x in str(row.get("alert_ids") or "").split(",") if x),
            ))
        except (KeyError, TypeError, ValueError):
            continue  # a point written by something else: not ours to restore
    return out


def restore_query(window_s: float) -> str:
    """The InfluxQL that reads back what was dispatched in the last ``window_s`` seconds."""
    return (f'SELECT "group", "run", "step", "kind", "fired_at", "alert_ids", "outcome" FROM "{MEASUREMENT}" '  # noqa: S608 (constants and an int)
            f"WHERE time > now() - {int(window_s)}s")


class AuditWriter:
    """A bounded queue of audit lines, drained into InfluxDB by :meth:`run`."""

    def __init__(self, sink: InfluxSink, *, max_lines: int = AUDIT_QUEUE_MAX_LINES) -> None:
        self._sink = sink
        self._queue: deque[str] = deque()
        self._max = max_lines
        self._recent: OrderedDict[str, str] = OrderedDict()  # "<series> <ms>" -> line
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.written = 0
        self.dropped = 0

    def add(self, lines: Sequence[str]) -> None:
        """Queue lines (never blocks); the oldest are dropped, loudly, beyond the bound."""
        for line in lines:
            self._queue.append(self._unique(line))
        overflow = len(self._queue) - self._max
        if overflow > 0:
            for _ in range(overflow):
                self._queue.popleft()
            self.dropped += overflow
            _LOGGER.error("audit queue full (InfluxDB unavailable?): dropped %d oldest audit points", overflow)
        if self._queue:
            self._idle.clear()
            self._wake.set()

    def _unique(self, line: str) -> str:
        series, _, rest = line.partition(" ")
        fields, _, ms_text = rest.rpartition(" ")
        ms = int(ms_text)
        while (previous := self._recent.get(f"{series} {ms}")) is not None and previous != line:
            ms += 1
            line = f"{series} {fields} {ms}"
        self._recent[f"{series} {ms}"] = line
        while len(self._recent) > _RECENT_KEYS:
            self._recent.popitem(last=False)
        return line

    async def run(self) -> None:
        """Write queued lines until cancelled (InfluxDB down: the sink retries, the queue waits)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(_BATCH_LINES, len(self._queue)))]
                for _, reason in await self._sink.write(batch):
                    _LOGGER.error("InfluxDB rejected an audit point: %s", reason)
                self.written += len(batch)
            self._idle.set()

    async def flush(self) -> None:
        """Wait until everything queued so far was written."""
        await self._idle.wait()
