"""Multi-level threshold detector with hysteresis, minimum durations, gap handling and cooldown.

Per sample and level, vectorized over all patients of a batch (issue 4):

1. a *break* where the previous usable sample of the patient is more than ``max_gap_s`` older (or
   there is none): runs cannot continue across it;
2. per level, ``met = value beyond threshold``; the start of the current unbroken run of ``met``;
   ``due`` once ``t - run_start >= for_s``. The most severe due level is the sample's ``due``;
3. the same for the clearing condition (``value`` on the normal side of ``clear_threshold`` for
   ``clear_for_s``), giving ``clear_due``;
4. :class:`~detectors.episodes.EpisodeTable` turns ``due``/``clear_due`` into raise/upgrade/clear.

``below`` rules are computed as ``above`` rules on negated values and thresholds (exact in floats).
A level a patient's rule does not have has a NaN threshold, which no comparison meets.

Most patients are in range most of the time: steps 1-4 run only for the patients that have a
sample beyond a threshold or an open alert in the batch; for the others the result is known (no
run open at the end, no transition) and only their last-sample time moves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.batch import BoolArray, FloatArray, IntArray, MetricView
from detectors.columns import grown, opt, opt_float
from detectors.const import CLEARED, ESCALATED, METRIC_CODES, METRIC_LABELS, N_LEVELS, SEVERITY_NAMES
from detectors.episodes import EpisodeTable, Transitions
from detectors.errors import StateError
from detectors.events import format_duration, format_value
from detectors.rules import Direction, Severity, ThresholdRule
from detectors.runs import run_starts


class ThresholdDetector:
    """One :class:`~detectors.rules.ThresholdRule`, applied to every patient (with overrides)."""

    def __init__(self, rule: ThresholdRule) -> None:
        self.rule = rule
        self.name = rule.name
        self.metric = rule.metric
        self.metric_code = METRIC_CODES[rule.metric]
        self.sign = rule.direction.sign
        self.episodes = EpisodeTable()
        self._overrides: dict[int, ThresholdRule] = {}
        # Parameters per patient (signed: see module docstring).
        self.threshold: FloatArray = np.zeros((N_LEVELS, 0))
        self.for_s: FloatArray = np.zeros((N_LEVELS, 0))
        self.clear_threshold: FloatArray = np.zeros(0)
        self.clear_for_s: FloatArray = np.zeros(0)
        self.max_gap_s: FloatArray = np.zeros(0)
        self.enabled: BoolArray = np.zeros(0, np.bool_)
        # State per patient: run starts at the last usable sample, and that sample's time.
        self.run_start: FloatArray = np.zeros((N_LEVELS, 0))
        self.clear_start: FloatArray = np.zeros(0)
        self.last_t: FloatArray = np.zeros(0)

    # -- configuration ---------------------------------------------------------------------------

    def resize(self, n: int) -> None:
        """Make room for ``n`` patients; new ones follow the default rule."""
        old = len(self.enabled)
        if n <= old:
            return
        thr, for_s, esc = _level_columns(self.rule, self.sign)
        self.threshold = np.concatenate((self.threshold, np.repeat(thr[:, None], n - old, axis=1)), axis=1)
        self.for_s = np.concatenate((self.for_s, np.repeat(for_s[:, None], n - old, axis=1)), axis=1)
        self.clear_threshold = grown(self.clear_threshold, n, self.sign * self.rule.clear_threshold)
        self.clear_for_s = grown(self.clear_for_s, n, self.rule.clear_for_s)
        self.max_gap_s = grown(self.max_gap_s, n, self.rule.max_gap_s)
        self.enabled = grown(self.enabled, n, self.rule.enabled)
        self.run_start = grown(self.run_start, n, np.nan)
        self.clear_start = grown(self.clear_start, n, np.nan)
        self.last_t = grown(self.last_t, n, np.nan)
        self.episodes.resize(n, cooldown_s=self.rule.cooldown_s, escalate_after_s=esc)

    def configure(self, patient: int, rule: ThresholdRule) -> None:
        """Apply a per-patient override (same name, metric and direction as the default)."""
        if (rule.name, rule.metric, rule.direction) != (self.name, self.metric, self.rule.direction):
            raise ValueError(f"an override of {self.name!r} must keep its name, metric and direction")
        self._overrides[patient] = rule
        thr, for_s, esc = _level_columns(rule, self.sign)
        self.threshold[:, patient] = thr
        self.for_s[:, patient] = for_s
        self.clear_threshold[patient] = self.sign * rule.clear_threshold
        self.clear_for_s[patient] = rule.clear_for_s
        self.max_gap_s[patient] = rule.max_gap_s
        self.enabled[patient] = rule.enabled
        self.episodes.configure(patient, cooldown_s=rule.cooldown_s, escalate_after_s=esc)

    def rule_for(self, patient: int) -> ThresholdRule:
        """The rule as it applies to ``patient``."""
        return self._overrides.get(patient, self.rule)

    # -- detection -------------------------------------------------------------------------------

    def process(self, view: MetricView) -> Transitions:
        """Run the rule over the usable samples of its metric; return alert transitions."""
        if not self._overrides and not self.rule.enabled:
            return Transitions.empty()
        if self._overrides and len(view) and not self.enabled[view.group_patient].all():
            keep = self.enabled[view.patient]
            view = MetricView.from_sorted(view.patient[keep], view.t[keep], view.value[keep])
        if len(view) == 0:
            return Transitions.empty()
        x = self.sign * view.value
        met = self._met(view, x)
        view, x, met = self._hot(view, x, met)
        if len(view) == 0:
            return Transitions.empty()
        restart, may_continue = self._breaks(view)
        due, onset = self._due(view, met, restart, may_continue)
        gp, last = view.group_patient, view.ends - 1
        if self.episodes.level[gp].any() or due.any():
            clear_due = self._clear_due(view, x, restart, may_continue)
        else:
            # A clearing run only matters inside an episode, and one opens on a sample that is not
            # on the normal side, so a run carried from before it can never count.
            clear_due = np.zeros(len(view), np.bool_)
            self.clear_start[gp] = np.nan
        self.last_t[gp] = view.t[last]
        return self.episodes.advance(view, due, clear_due, onset)

    def _met(self, view: MetricView, x: FloatArray) -> dict[int, BoolArray]:
        """Per used level slot: which samples are beyond its threshold."""
        return {
            slot: x > self._gather(self.threshold[slot], view.patient)
            for slot in range(N_LEVELS)  # a loop over levels, not samples
            if self._slot_used(slot)
        }

    def _hot(
        self, view: MetricView, x: FloatArray, met: dict[int, BoolArray]
    ) -> tuple[MetricView, FloatArray, dict[int, BoolArray]]:
        """Only the patients with a sample beyond a threshold or an open alert need the full work.

        For the others (most patients, most of the time) the outcome is known: no run is open at
        the end of the batch and no transition happens; only the gap clock moves.
        """
        gp = view.group_patient
        beyond = np.zeros(len(view), np.bool_)
        for met_slot in met.values():
            beyond |= met_slot
        hot = np.logical_or.reduceat(beyond, view.starts) | (self.episodes.level[gp] > 0)
        if hot.all():
            return view, x, met
        cold = ~hot
        cold_patients = gp[cold]
        self.run_start[:, cold_patients] = np.nan
        self.clear_start[cold_patients] = np.nan
        self.last_t[cold_patients] = view.t[view.ends[cold] - 1]
        view, mask = view.select_groups(hot)
        return view, x[mask], {slot: met_slot[mask] for slot, met_slot in met.items()}

    def _due(
        self, view: MetricView, met: dict[int, BoolArray], restart: BoolArray, may_continue: BoolArray
    ) -> tuple[npt.NDArray[np.int8], FloatArray]:
        """Per sample: the most severe level due (0: none) and when its run began."""
        p, t, gp, last = view.patient, view.t, view.group_patient, view.ends - 1
        due = np.zeros(len(t), np.int8)
        onset = np.full(len(t), np.nan)
        for slot in range(N_LEVELS):  # ascending slots: the most severe due level wins
            met_slot = met.get(slot)
            if met_slot is None or not met_slot.any():
                self.run_start[slot, gp] = np.nan  # never met in the batch: no run open at its end
                continue
            carried = np.where(may_continue, self.run_start[slot, p], np.nan)
            start = run_starts(met_slot, t, restart, carried)
            now_due = met_slot & (t - start >= self._gather(self.for_s[slot], p))
            due[now_due] = slot + 1
            onset[now_due] = start[now_due]
            self.run_start[slot, gp] = start[last]
        return due, onset

    def _clear_due(self, view: MetricView, x: FloatArray, restart: BoolArray, may_continue: BoolArray) -> BoolArray:
        """Per sample: whether the value has been on the normal side long enough to clear."""
        p, t, gp, last = view.patient, view.t, view.group_patient, view.ends - 1
        normal = x <= self._gather(self.clear_threshold, p)
        carried = np.where(may_continue, self.clear_start[p], np.nan)
        start = run_starts(normal, t, restart, carried)
        self.clear_start[gp] = start[last]
        return normal & (t - start >= self._gather(self.clear_for_s, p))

    def _breaks(self, view: MetricView) -> tuple[BoolArray, BoolArray]:
        """Where runs must restart (gap or no history), and where a carried-in run may continue."""
        t, p = view.t, view.patient
        previous = np.empty_like(t)
        previous[1:] = t[:-1]
        previous[view.starts] = self.last_t[view.group_patient]
        # NaN (no earlier sample) compares false, so it counts as a break too.
        gap = ~(t - previous <= self._gather(self.max_gap_s, p))
        first = view.first_mask()
        return first | gap, first & ~gap

    def _gather(self, column: FloatArray, p: IntArray) -> FloatArray | float:
        """Per-sample values of a per-patient parameter; one scalar while no patient has an override.

        Most deployments override few or no patients: a scalar saves a gather per sample and level.
        """
        return column[p] if self._overrides else float(column[0])

    def _slot_used(self, slot: int) -> bool:
        """Whether any patient's rule has the level in ``slot`` (an unused level is skipped)."""
        if not self._overrides:
            return self.rule.level(Severity(slot + 1)) is not None
        return not bool(np.isnan(self.threshold[slot]).all())

    def tick(self, now: float) -> Transitions:
        """Time-driven transitions: none for thresholds (they change only with samples)."""
        return Transitions.empty()

    # -- messages --------------------------------------------------------------------------------

    def message(self, patient: int, state: str, level: int, value: float) -> str:
        """What a nurse reads, e.g. "Heart rate above 120 bpm for 10 min (now 134 bpm)"."""
        return threshold_message(self.rule_for(patient), state, level, value)

    # -- per-patient records ---------------------------------------------------------------------

    def export_patient(self, patient: int) -> dict[str, Any]:
        """The patient's state for this rule as a JSON-able dict."""
        runs = {
            SEVERITY_NAMES[slot]: opt(self.run_start[slot, patient])
            for slot in range(N_LEVELS)
            if not np.isnan(self.run_start[slot, patient])
        }
        return {
            "last_t": opt(self.last_t[patient]),
            "runs": runs,
            "clear_run": opt(self.clear_start[patient]),
            "alert": self.episodes.export_patient(patient),
        }

    def import_patient(self, patient: int, record: Mapping[str, Any]) -> None:
        """Restore what :meth:`export_patient` produced."""
        runs = record.get("runs", {})
        if not isinstance(runs, Mapping) or set(runs) - set(SEVERITY_NAMES):
            raise StateError(f"rule {self.name}: runs must map severities to times")
        alert = record.get("alert", {})
        if not isinstance(alert, Mapping):
            raise StateError(f"rule {self.name}: alert must be a mapping")
        for slot, severity in enumerate(SEVERITY_NAMES):
            self.run_start[slot, patient] = opt_float(runs, severity)
        self.clear_start[patient] = opt_float(record, "clear_run")
        self.last_t[patient] = opt_float(record, "last_t")
        self.episodes.import_patient(patient, alert)

    def reset_patient(self, patient: int) -> None:
        """Forget the patient's state for this rule."""
        self.import_patient(patient, {})


def _level_columns(rule: ThresholdRule, sign: float) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Signed thresholds, durations and escalation limits per severity slot (NaN: no such level)."""
    thr = np.full(N_LEVELS, np.nan)
    for_s = np.zeros(N_LEVELS)
    esc = np.full(N_LEVELS, np.nan)
    for lv in rule.levels:
        slot = int(lv.severity) - 1
        thr[slot] = sign * lv.threshold
        for_s[slot] = lv.for_s
        esc[slot] = np.nan if lv.escalate_after_s is None else lv.escalate_after_s
    return thr, for_s, esc


def threshold_message(rule: ThresholdRule, state: str, level: int, value: float) -> str:
    """The text of an event of ``rule`` at severity code ``level`` caused by ``value`` (NaN: none)."""
    lv = rule.level(Severity(level))
    label = METRIC_LABELS[rule.metric]
    if state == CLEARED:
        side = "at or below" if rule.direction is Direction.ABOVE else "at or above"
        held = f" for {format_duration(rule.clear_for_s)}" if rule.clear_for_s else ""
        text = f"{label} back {side} {format_value(rule.metric, rule.clear_threshold)}{held}"
        return f"{text} (now {format_value(rule.metric, value)})"
    condition = f"{label} {rule.direction.value} " + (
        format_value(rule.metric, lv.threshold) if lv is not None else "threshold"
    )
    if lv is not None and lv.for_s:
        condition += f" for {format_duration(lv.for_s)}"
    if state == ESCALATED:
        waited = lv.escalate_after_s if lv is not None and lv.escalate_after_s else 0.0
        return f"{condition}: {SEVERITY_NAMES[level - 1]} alert unacknowledged for {format_duration(waited)}"
    if math.isnan(value):
        return condition
    return f"{condition} (now {format_value(rule.metric, value)})"
