"""Receipts and dead letters of the HL7 output.

Receipts: one point per attempt in the notifier's ``notifications`` measurement (see
:mod:`notify.audit`), ``channel`` ``hl7``, ``outcome`` delivered | failed | deadlettered, and the
fields ``detail`` (the ACK code and the receiver's text, or the error), ``attempt``, ``recipient``
(the endpoint), ``alert_id``, ``kind`` (``hl7-vitals`` | ``hl7-alert``) and ``message_id`` (MSH-10).

Dead letters: a record of :func:`rpm_core.deadletter.deadletter_record` on ``rpm.deadletter``, stage
``hl7``, source the endpoint, the reason, and the ER7 message as payload (``rpm deadletter list
--stage hl7`` shows them).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any, Final

from hl7out.sender import AttemptRecord, Outgoing
from rpm_core.errors import ServiceError
from rpm_core.kafka_security import kafka_client_kwargs
from rpm_core.settings import Settings

MEASUREMENT: Final = "notifications"
STAGE: Final = "hl7"
WRITE_TIMEOUT_S: Final = 30.0


def _tag(value: str) -> str:
    # a line break in a tag ends the point (what follows became another point): a rule name from
    # rpm.alerts could write any receipt it liked
    one_line = (value or "-").replace("\n", " ").replace("\r", " ")
    return one_line.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ").replace("=", "\\=")


def _str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def attempt_line(a: AttemptRecord, *, recipient: str) -> str:
    """The ``notifications`` point of one attempt."""
    m = a.message
    tags = {"patient": m.patient, "channel": "hl7", "outcome": a.outcome, "rule": m.rule, "severity": m.severity}
    fields = {"detail": _str(a.detail), "attempt": f"{a.attempt}i", "recipient": _str(recipient),
              "alert_id": _str(m.alert_id), "kind": _str(f"hl7-{m.kind}"), "message_id": _str(m.control_id)}
    tag_text = ",".join(f"{k}={_tag(v)}" for k, v in sorted(tags.items()))
    field_text = ",".join(f"{k}={v}" for k, v in sorted(fields.items()))
    return f"{MEASUREMENT},{tag_text} {field_text} {round(a.at * 1000)}"


def write_receipts(settings: Settings, lines: Sequence[str]) -> None:
    """Write the points to InfluxDB (``/write``, ms precision); :class:`ServiceError` if it refuses."""
    if not lines:
        return
    url = settings.require_influx().rstrip("/")
    query = urllib.parse.urlencode({"db": settings.influx_db, "precision": "ms"})
    req = urllib.request.Request(f"{url}/write?{query}", data="\n".join(lines).encode(), method="POST")  # noqa: S310
    for name, value in settings.influx_auth().headers().items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=WRITE_TIMEOUT_S) as resp:  # noqa: S310 (http(s) only)
            if resp.status != 204:
                raise ServiceError(f"InfluxDB answered {resp.status} to the HL7 receipts")
    except (urllib.error.URLError, OSError) as exc:
        raise ServiceError(f"could not write the HL7 receipts to {url}: {exc}") from exc


class KafkaDeadLetters:
    """Dead letters to ``rpm.deadletter`` (one producer for the run)."""

    def __init__(self, bootstrap: str, *, source: str) -> None:
        self._bootstrap = bootstrap
        self._source = source
        self._producer: Any = None
        self.count = 0

    async def __call__(self, message: Outgoing, reason: str) -> None:
        """Produce the dead-letter record of ``message`` and wait until Kafka has it."""
        from aiokafka import AIOKafkaProducer

        from rpm_core import topics
        from rpm_core.deadletter import deadletter_record

        if self._producer is None:
            producer = AIOKafkaProducer(**kafka_client_kwargs(self._bootstrap))
            await producer.start()
            self._producer = producer
        record = deadletter_record(stage=STAGE, reason=reason, source=self._source, payload=message.text.encode(),
                                   received_at=time.time())
        await self._producer.send_and_wait(topics.DEADLETTER, value=record, key=message.patient.encode())
        self.count += 1

    async def close(self) -> None:
        """Stop the producer."""
        if self._producer is not None:
            await self._producer.stop()
