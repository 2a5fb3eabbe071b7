"""Staleness (deadman) detector: no usable data of a metric from a patient for too long.

Time-driven: :meth:`StalenessDetector.tick` raises (and upgrades) alerts when the silence since
the patient's last usable reading, or since enrolment for a patient who never sent anything,
exceeds a level's ``after``; the next usable reading clears the alert. Only patients who have
sent this metric or were enrolled (``Engine.enroll``) are watched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from detectors import packed
from detectors.batch import BoolArray, FloatArray, IntArray, MetricView
from detectors.columns import ParamRows, StateColumn, appended, finite_or_nan, grown, opt, opt_float
from detectors.const import CLEARED, ESCALATED, METRIC_CODES, METRIC_LABELS, N_LEVELS
from detectors.episodes import EpisodeTable, Transitions
from detectors.errors import StateError
from detectors.events import format_duration, format_value
from detectors.rules import Severity, StalenessRule, device_source


class StalenessDetector:
    """One :class:`~detectors.rules.StalenessRule` over every patient."""

    # A "HI"/"LO" reading is a reading: the patient is not silent.
    beyond_range = True
    added_entries = 0  # no state added since packed records of version 2

    def __init__(self, rule: StalenessRule) -> None:
        self.rule = rule
        self.name = rule.name
        self.metric = rule.metric
        self.metric_code = METRIC_CODES[rule.metric]
        self.device_prefix = rule.device_prefix
        self.exclude_device_prefix = rule.exclude_device_prefix
        self.rows = ParamRows()  # each patient's parameter set (row 0: the rule)
        self.episodes = EpisodeTable(self.rows)
        # Parameters per row of self.rows.
        self.after_s: FloatArray = np.zeros((N_LEVELS, 0))
        self.enabled: BoolArray = np.zeros(0, np.bool_)
        # State: the last usable reading, the enrolment clock, and who is watched.
        self.last_t: FloatArray = np.zeros(0)
        self.anchor: FloatArray = np.zeros(0)
        self.pending: BoolArray = np.zeros(0, np.bool_)
        self.watched: BoolArray = np.zeros(0, np.bool_)

    def resize(self, n: int) -> None:
        """Make room for ``n`` patients; new ones follow the default rule and are not watched yet."""
        old = len(self.last_t)
        if n <= old:
            return
        if not len(self.rows):
            self._row_of(self.rule)  # row 0
        self.rows.grow(n)
        self.last_t = grown(self.last_t, n, np.nan)
        self.anchor = grown(self.anchor, n, np.nan)
        self.pending = grown(self.pending, n, False)
        self.watched = grown(self.watched, n, False)
        self.episodes.resize(n)

    def configure(self, patient: int, rule: StalenessRule) -> None:
        """Apply a per-patient override."""
        if (rule.name, rule.metric) != (self.name, self.metric):
            raise ValueError(f"an override of {self.name!r} must keep its name and metric")
        self.rows.assign(patient, self._row_of(rule))

    def _row_of(self, rule: StalenessRule) -> int:
        """The parameter row of ``rule``: an existing one for an equal rule, else a new one."""
        row = self.rows.find(rule)
        if row is not None:
            return row
        row = self.rows.add(rule)
        after, esc = _columns(rule)
        self.after_s = appended(self.after_s, after)
        self.enabled = appended(self.enabled, rule.enabled)
        self.episodes.add_row(cooldown_s=rule.cooldown_s, escalate_after_s=esc)
        return row

    def rule_for(self, patient: int) -> StalenessRule:
        """The rule as it applies to ``patient``."""
        rule: StalenessRule = self.rows.keys[self.rows.row[patient]]
        return rule

    def enroll(self, patients: IntArray, at: float | None) -> None:
        """Watch ``patients`` even if they never send anything; their clock starts ``at`` (``None``: next tick)."""
        fresh = patients[np.isnan(self.last_t[patients]) & np.isnan(self.anchor[patients])]
        self.watched[patients] = True
        if at is None:
            self.pending[fresh] = True
        else:
            self.anchor[fresh] = at

    def process(self, view: MetricView, now: float | None = None) -> Transitions:
        """Usable readings: they restart the silence clock and clear open alerts."""
        if len(view) == 0:
            return Transitions.empty()
        late = view.t[view.starts] <= self.last_t[view.group_patient]
        if late.any():
            view = view.where(~(view.t <= self.last_t[view.patient]))
            if len(view) == 0:
                return Transitions.empty()
        gp = view.group_patient
        self.last_t[gp] = view.t[view.ends - 1]
        self.watched[gp] = True
        self.pending[gp] = False
        due = np.zeros(len(view), np.int8)
        clear = view.first_mask()
        return self.episodes.advance(view, due, clear, np.full(len(view), np.nan), now=now)

    def tick(self, now: float) -> Transitions:
        """Raise or upgrade alerts for every watched patient silent for longer than a level's ``after``."""
        start = np.flatnonzero(self.pending)
        self.anchor[start] = now
        self.pending[start] = False
        # Every patient is looked at once (silent for longer than the shortest limit of any row?);
        # the levels are worked out for those alone: most patients are not silent, and a tick runs
        # every second, so what it costs per patient is what grows with the patient count.
        limits = self.after_s[~np.isnan(self.after_s)]
        if limits.size == 0:
            return Transitions.empty()
        since_all = np.fmax(self.last_t, self.anchor)
        silent_some = np.flatnonzero(now - since_all > limits.min())
        if silent_some.size == 0:
            return Transitions.empty()
        since = since_all[silent_some]
        silent = now - since
        level = np.zeros(len(since), np.int8)
        rows = None if self.rows.uniform else self.rows.row[silent_some]  # per-patient rows only when they differ
        for slot in range(N_LEVELS):  # a loop over levels, not patients
            level[silent > (self.after_s[slot, 0] if rows is None else self.after_s[slot, rows])] = slot + 1
        enabled = self.enabled[0] if rows is None else self.enabled[rows]
        chosen = np.flatnonzero(self.watched[silent_some] & enabled & (level > self.episodes.level[silent_some]))
        if chosen.size == 0:
            return Transitions.empty()
        candidates = silent_some[chosen]
        return self.episodes.raise_at(candidates, level[chosen], now, since[chosen])

    def message(self, patient: int, state: str, level: int, value: float, time: float) -> str:
        """E.g. "No glucose data for 30 min" / "Glucose data back (now 104 mg/dL)"."""
        rule = self.rule_for(patient)
        return staleness_message(rule, state, level, value)

    def export_patient(self, patient: int) -> dict[str, Any]:
        """The patient's state for this rule as a JSON-able dict."""
        record: dict[str, Any] = {
            "last_t": opt(self.last_t[patient]),
            "anchor": opt(self.anchor[patient]),
            "pending": bool(self.pending[patient]),
            "watched": bool(self.watched[patient]),
        }
        alert = self.episodes.export_patient(patient)
        if alert:  # absent: no alert (see EpisodeTable.export_patient)
            record["alert"] = alert
        return record

    def import_patient(self, patient: int, record: Mapping[str, Any]) -> None:
        """Restore what :meth:`export_patient` produced."""
        alert = record.get("alert", {})
        if not isinstance(alert, Mapping):
            raise StateError(f"rule {self.name}: alert must be a mapping")
        self.last_t[patient] = opt_float(record, "last_t")
        self.anchor[patient] = opt_float(record, "anchor")
        self.pending[patient] = bool(record.get("pending", False))
        self.watched[patient] = bool(record.get("watched", False))
        self.episodes.import_patient(patient, alert)

    def materialize(self, column: FloatArray) -> None:
        """Hold a lazily held state column (the episode table's raise-time ring) as a real array."""
        if column is self.episodes.recent:
            self.episodes.materialize()

    def state_columns(self) -> list[StateColumn]:
        """Every per-patient state array (see :class:`~detectors.columns.StateColumn`)."""
        return [(self.last_t, 0), (self.anchor, 0), (self.pending, 0), (self.watched, 0),
                *self.episodes.state_columns()]

    def settle(self, rows: FloatArray) -> BoolArray:
        """Which rows of packed entries (patients × entries of :meth:`state_columns`) an export and
        import would leave as they are, without error (see :mod:`detectors.columns`)."""
        blocks = packed.split(self.state_columns(), rows)
        return finite_or_nan(rows[:, :2]) & self.episodes.settle(blocks[4:])

    def reset_patient(self, patient: int) -> None:
        """Forget the patient's state for this rule."""
        self.import_patient(patient, {})


def _columns(rule: StalenessRule) -> tuple[FloatArray, FloatArray]:
    after = np.full(N_LEVELS, np.inf)  # a missing level is never due
    esc = np.full(N_LEVELS, np.nan)
    for lv in rule.levels:
        slot = int(lv.severity) - 1
        after[slot] = lv.after_s
        esc[slot] = np.nan if lv.escalate_after_s is None else lv.escalate_after_s
    return after, esc


def staleness_message(rule: StalenessRule, state: str, level: int, value: float) -> str:
    """The text of an event of a staleness rule."""
    label = METRIC_LABELS[rule.metric]
    source = device_source(rule.device_prefix, rule.exclude_device_prefix)
    if state == CLEARED:
        now = "" if math.isnan(value) else f" (now {format_value(rule.metric, value)})"
        return f"{label} data back{source}{now}"
    lv = rule.level(Severity(level))
    waited = format_duration(lv.after_s) if lv is not None else "too long"
    text = f"No {label.lower()} data{source} for over {waited}"
    if state == ESCALATED:
        return f"{text}: alert unacknowledged"
    return text
