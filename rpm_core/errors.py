"""Errors of the shared core (configuration, rules, services).

::

    RpmError
    ├── ConfigError (ValueError)      bad environment / flags; names the variable
    ├── RulesError (ValueError)       bad alert_rules.yaml; names file, line and field
    ├── ServiceError (RuntimeError)   a local service would not start or answer
    ├── NoDataError (LookupError)     unknown patient, or nothing in the period asked for
    └── SinkError                     InfluxDB could not take a write
        ├── SinkUnavailableError      connection refused / 5xx: retried with backoff
        │   └── SinkConfigError       missing database/bucket, rejected credentials: waited out, and said
        └── SinkRejectedError         4xx: the points themselves are bad; isolated and dead-lettered
            └── SinkLimitError        a limit of InfluxDB 1.x refused new series (max-values-per-tag,
                                      max-series-per-database): those lines dead-lettered, the rest written
"""

from __future__ import annotations


class RpmError(Exception):
    """Root of the errors raised by ``rpm_core``."""


class ConfigError(RpmError, ValueError):
    """Configuration that cannot work; the message names the setting and the fix."""


class RulesError(RpmError, ValueError):
    """An invalid rules file; the message names the file, the line and the field, and the fix.

    The parts are also attributes, for tools: ``file``, ``line`` (1-based; ``None`` when the whole
    file is at fault, e.g. unreadable), ``field`` (dotted path such as
    ``rules.tachycardia.levels.warning.threshold``), ``problem`` and ``hint``.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = file or "<rules>"
        if line is not None:
            where += f":{line}"
        text = f"{where}: {'field ' + field + ': ' if field else ''}{problem}"
        if hint:
            text += f". Fix: {hint}"
        super().__init__(text)
        self.file = file
        self.line = line
        self.field = field
        self.problem = problem
        self.hint = hint


class ServiceError(RpmError, RuntimeError):
    """A service (Mosquitto, Tansu, InfluxDB) did not start or did not become healthy."""


class NoDataError(RpmError, LookupError):
    """A report or export was asked for a patient or a period that holds no data; the message says which."""


class SinkError(RpmError):
    """InfluxDB could not take a write."""


class SinkUnavailableError(SinkError):
    """InfluxDB is down or overloaded (connection error, 5xx); the write can be retried."""


class SinkConfigError(SinkUnavailableError):
    """InfluxDB cannot take any write until someone fixes its configuration (no such database or
    bucket, credentials refused): not the points' fault, so nothing is dead-lettered; ``fix`` says
    what to do, for the log, ``/healthz`` and the technical alert."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem = problem
        self.fix = fix


class SinkRejectedError(SinkError):
    """InfluxDB refused the points (4xx); retrying the same lines cannot succeed."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"InfluxDB rejected the write ({status}): {body[:300]}")
        self.status = status
        self.body = body

    @property
    def partial(self) -> bool:
        """InfluxDB 1.x's "partial write": the points it did not name or count as dropped WERE written."""
        return "partial write" in self.body


class SinkLimitError(SinkRejectedError):
    """A partial write refused by a limit of InfluxDB 1.x: points that would create a new series
    beyond ``max-values-per-tag`` (``measurement``/``tag``/``value`` name the first refused one) or
    ``max-series-per-database`` (names none) were dropped, every other point was written. ``dropped``:
    how many InfluxDB dropped (None if it did not say). The points are not bad; ``fix`` says what to set."""

    def __init__(self, status: int, body: str, *, limit: str, dropped: int | None = None,
                 measurement: str | None = None, tag: str | None = None, value: str | None = None) -> None:
        super().__init__(status, body)
        self.limit = limit
        self.dropped = dropped
        self.measurement = measurement
        self.tag = tag
        self.value = value
        self.fix = limit_fix(limit)

    def reason(self) -> str:
        """For the dead-letter record and the worker's warning: which limit, and the fix."""
        return limit_reason(self.limit, self.measurement, self.tag, self.value)


def limit_fix(limit: str) -> str:
    """What to do about InfluxDB's ``limit`` (``max-values-per-tag`` or ``max-series-per-database``)."""
    return (f"set {limit} = 0 in the [data] section of influxdb.conf (or raise it) and restart InfluxDB; the "
            "refused points are on rpm.deadletter (stage sink, each payload its line-protocol line) to be written "
            "again")


def limit_reason(limit: str, measurement: str | None = None, tag: str | None = None, value: str | None = None) -> str:
    """Why a point was dead-lettered for InfluxDB's ``limit`` (naming the refused tag value, if known)."""
    what = (f"{tag}={value!r} of {measurement!r} would be a value beyond the limit" if tag is not None
            else "its series would be one more than the database may hold")
    return f"InfluxDB's {limit} limit refused the point ({what}); {limit_fix(limit)}"
