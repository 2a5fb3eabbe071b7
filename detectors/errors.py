"""Errors raised by the detectors.

Tree::

    DetectorError
     ├── RuleValidationError(DetectorError, ValueError)   a rule model that makes no sense
     └── StateError(DetectorError, ValueError)            a checkpointed state record we cannot import
"""

from __future__ import annotations


class DetectorError(Exception):
    """Root of every error raised by :mod:`detectors`."""


class RuleValidationError(DetectorError, ValueError):
    """A rule whose values are inconsistent (e.g. clearing level on the wrong side).

    ``field`` is the dotted path of the offending field relative to the rule (``levels.warning.threshold``)
    so that the YAML loader can point at the line it came from; ``hint`` says how to fix it.
    """

    def __init__(self, field: str, problem: str, hint: str) -> None:
        super().__init__(f"{field}: {problem}. {hint}")
        self.field = field
        self.problem = problem
        self.hint = hint


class StateError(DetectorError, ValueError):
    """A per-patient state record (``Engine.import_state``) that is malformed or of another version."""
