"""Errors of the shared core (configuration, rules, services).

::

    RpmError
    ├── ConfigError (ValueError)      bad environment / flags; names the variable
    ├── RulesError (ValueError)       bad alert_rules.yaml; names file, line and field
    ├── ServiceError (RuntimeError)   a local service would not start or answer
    └── NoDataError (LookupError)     unknown patient, or nothing in the period asked for
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
