"""What the engine needs from a detector, so new rule types plug in without changing the engine.

A detector owns one rule (with per-patient overrides), parameter tables with a row per parameter
set (:class:`~detectors.columns.ParamRows`) and per-patient state arrays,
and an :class:`~detectors.episodes.EpisodeTable` for the shared alert lifecycle. It turns the
usable samples of its metric into alert transitions (``process``) and may also change state with
time alone (``tick``, e.g. staleness).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from detectors.batch import BoolArray, FloatArray, MetricView
from detectors.columns import StateColumn
from detectors.episodes import EpisodeTable, Transitions


class Detector(Protocol):
    """A vectorized detector for one rule over all patients."""

    name: str
    metric: str
    metric_code: int
    device_prefix: str | None
    exclude_device_prefix: str | None
    episodes: EpisodeTable
    # Whether samples beyond the device's measuring range ("HI"/"LO") reach the detector, as
    # +inf / -inf: True for rules that compare values, False for rules that compute from them.
    beyond_range: bool
    # How many entries at the end of :meth:`state_columns` packed records of earlier workers lack
    # (state added since): such a row is read with those entries fresh, so an upgrade keeps the state.
    added_entries: int

    def resize(self, n: int) -> None:
        """Make room for ``n`` patients; new ones follow the default rule."""

    def configure(self, patient: int, rule: Any) -> None:
        """Apply a per-patient override of the rule."""

    def process(self, view: MetricView, now: float | None = None) -> Transitions:
        """Consume the usable, new samples of the metric (sorted by patient, time); ``now``: processing time."""
        ...

    def tick(self, now: float) -> Transitions:
        """Transitions due to the passage of time alone."""
        ...

    def message(self, patient: int, state: str, level: int, value: float, time: float) -> str:
        """Human text of an event of this rule for this patient at ``time``."""
        ...

    def export_patient(self, patient: int) -> dict[str, Any]:
        """The patient's state for this rule, JSON-able."""
        ...

    def import_patient(self, patient: int, record: Mapping[str, Any]) -> None:
        """Restore :meth:`export_patient`'s output."""

    def reset_patient(self, patient: int) -> None:
        """Forget the patient's state for this rule."""

    def state_columns(self) -> list[StateColumn]:
        """Every per-patient state array (not parameters, not caches), for packed checkpoints:
        :meth:`export_patient` must read nothing else of the patient's."""
        ...

    def materialize(self, column: FloatArray) -> None:
        """Hold ``column``, one of :meth:`state_columns` held lazily as a read-only all-NaN view, as a
        real array from now on (a packed import is about to write values into it)."""

    def settle(self, rows: FloatArray) -> BoolArray:
        """Which rows of packed entries (patients × entries of :meth:`state_columns`, as float64) an
        :meth:`export_patient` and :meth:`import_patient` round trip would leave exactly as they are,
        without error; it may rewrite a row in place to what that round trip makes of it (and then
        vouch for the result). Rows it does not vouch for take the round trip (packed checkpoints)."""
        ...
