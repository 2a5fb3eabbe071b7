"""InfluxDB line protocol for the ``vitals`` and ``alerts`` measurements (schema in DESIGN.md).

Built by hand: influxdb-client's ``Point`` serializer manages ~110k points/s here, half of what
InfluxDB itself ingests. Tags are emitted in sorted key order (InfluxDB's fast path) and every tag
value is a validated identifier (``rpm_core.wire``), so tags need no escaping; string fields do.

Times are written in milliseconds: a vitals point is keyed by (patient, metric, device, source,
time), so a redelivered sample overwrites itself instead of adding a second point.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from rpm_core.wire import RANGE_FLAGS, SampleFlag

PRECISION: Final = "ms"


def escape_string_field(text: str) -> str:
    """Escape a string field value (backslash and double quote)."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_tag(value: str) -> str:
    """A tag value (or key) escaped for line protocol: backslashes, commas, spaces and equals signs;
    an empty value, which InfluxDB refuses, is ``-``. A line break, which no escape can carry in a tag
    (it ends the point: what follows is read as another point), becomes a space."""
    one_line = (value or "-").replace("\n", " ").replace("\r", " ")
    return one_line.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ").replace("=", "\\=")


FieldValue = str | int | float | bool


def _field(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    return f'"{escape_string_field(value)}"'


def point_line(measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue], at_ms: int) -> str:
    """One point: ``measurement,tag=v,… field=v,… at_ms`` with tags sorted and escaped, string fields
    quoted, integers ``i``-suffixed, floats exact (``repr``). The one builder of the records-of-events
    points (audits, notifications, escalations); readings and alerts have vectorized builders below."""
    tag_text = "".join(f",{k}={escape_tag(v)}" for k, v in sorted(tags.items()))
    field_text = ",".join(f"{k}={_field(v)}" for k, v in fields.items())
    return f"{measurement}{tag_text} {field_text} {int(at_ms)}"


def _format_value(v: float) -> str:
    # repr keeps full precision and never uses a locale; integers stay floats (field type stable).
    return repr(float(v))


def vitals_lines(
    *,
    patient: Sequence[str],
    device: Sequence[str],
    source: Sequence[str],
    size: npt.NDArray[np.int64],
    metric_code: npt.NDArray[np.integer[Any]],
    metric_names: Sequence[str],
    t_ms: npt.NDArray[np.int64],
    value: npt.NDArray[np.float64],
    flags: npt.NDArray[np.int16] | None = None,
) -> list[str]:
    """Lines for a whole micro-batch in columns: tags per group (``patient``, ``device``,
    ``source``; group ``g`` holds ``size[g]`` samples), metric code, time and value per sample.

    Each distinct (group, metric) prefix is formatted once; what is left per sample is one
    f-string, the least line protocol can cost in Python. A sample beyond its device's measuring
    range (``flags``: ``rpm_core.wire.SampleFlag.ABOVE_RANGE`` / ``BELOW_RANGE``, a meter's "HI" /
    "LO") gets a string field ``beyond="above"`` / ``"below"`` beside its value (the device's limit).
    """
    n_metrics = len(metric_names)
    key = (np.repeat(np.arange(len(size), dtype=np.int64) * n_metrics, size) + metric_code).tolist()
    prefix = {}
    for k in set(key):
        g, m = divmod(k, n_metrics)
        prefix[k] = f"vitals,device={device[g]},metric={metric_names[m]},patient={patient[g]},source={source[g]} value="
    lines = [f"{prefix[k]}{v!r} {t}" for k, v, t in zip(key, value.tolist(), t_ms.tolist(), strict=True)]
    if flags is not None:
        _mark_beyond_range(lines, flags)
    return lines


def _mark_beyond_range(lines: list[str], flags: npt.NDArray[np.int16]) -> None:
    """Add ``beyond="above"|"below"`` to the lines of range-flagged samples (rare: a loop over them only)."""
    for i in np.flatnonzero(flags & RANGE_FLAGS).tolist():
        side = flags[i] & RANGE_FLAGS
        if side == RANGE_FLAGS:
            continue  # contradictory: the wire refuses it; written as a plain value
        fields, _, t = lines[i].rpartition(" ")
        lines[i] = f'{fields},beyond="{"above" if side == SampleFlag.ABOVE_RANGE else "below"}" {t}'


@dataclass(frozen=True, slots=True)
class AlertPoint:
    """One state change of an alert, as written to the ``alerts`` measurement."""

    alert_id: str
    patient: str
    rule: str
    severity: str
    metric: str
    state: str
    time_s: float
    value: float
    message: str
    by: str | None = None


def alert_line(a: AlertPoint) -> str:
    """The line for one alert state change.

    The time of an ``acknowledged`` or ``escalated`` point is when that happened, so each state
    change of one alert is its own point and a redelivered change overwrites itself.
    """
    fields = [
        f'alert_id="{escape_string_field(a.alert_id)}"',
        f'message="{escape_string_field(a.message)}"',
        f'state="{a.state}"',
    ]
    if a.by:
        fields.append(f'by="{escape_string_field(a.by)}"')
    if math.isfinite(a.value):
        fields.append(f"value={_format_value(a.value)}")
    tags = f"alerts,metric={a.metric},patient={a.patient},rule={a.rule},severity={a.severity}"
    return f"{tags} {','.join(sorted(fields))} {round(a.time_s * 1000)}"


def join_lines(lines: Iterable[str]) -> bytes:
    """The request body for a batch of lines."""
    return "\n".join(lines).encode()
