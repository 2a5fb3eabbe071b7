"""The shared machinery of signal rules: levels, hysteresis, durations, gaps, schedules, flapping.

A signal detector turns each usable sample into a *signal* value (the reading itself for
``threshold``; its rate of change, a forecast, a robust z-score or an irregularity indicator for
the other types, see :meth:`SignalDetector.signal`) and then, per sample and level, vectorized over
all patients of a batch:

1. a *break* where the previous usable sample of the patient is more than ``max_gap_s`` older (or
   there is none): runs cannot continue across it;
2. per level, ``met = signal beyond threshold``; the start of the current unbroken run of ``met``;
   ``due`` once ``t - run_start >= for_s``. The most severe due level is the sample's ``due``;
3. the same for the clearing condition (signal on the normal side of ``clear_threshold`` for
   ``clear_for_s``), giving ``clear_due`` (and ``clear_long`` for episodes held by flapping
   suppression: the same condition for ``max(clear_for_s, hold)``);
4. :class:`~detectors.episodes.EpisodeTable` turns them into raise/upgrade/clear.

``below`` rules are computed as ``above`` rules on negated signals and thresholds (exact in floats).
A level a patient's rule does not have has a NaN threshold, which no comparison meets; so does a
NaN signal (unknown: e.g. no rate across a gap), which is neither abnormal nor normal.

Day/night schedules make every parameter depend on the sample's period: parameters are stored
with a leading period axis (0 = outside every period) and gathered per sample. They are stored once
per parameter set (row 0 the rule's default, one row per distinct per-patient override), and each
patient holds only its row (:class:`~detectors.columns.ParamRows`).

Most patients are in range most of the time: steps 1-4 run only for the patients that have a
sample beyond a threshold or an open alert in the batch; for the others the result is known (no
run open at the end, no transition) and only their last-sample time moves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors import packed
from detectors.batch import BoolArray, FloatArray, IntArray, MetricView
from detectors.columns import ParamRows, StateColumn, appended, finite_or_nan, grown, opt, opt_float
from detectors.const import METRIC_CODES, N_LEVELS, SEVERITY_NAMES
from detectors.episodes import EpisodeTable, Transitions
from detectors.errors import StateError
from detectors.rules import Period, Severity, ThresholdLevel, ThresholdRule
from detectors.runs import run_starts, tolerant_runs
from detectors.schedule import period_index

# A flapping-free patient's "hold" never shortens the clearing duration.
_NO_HOLD = 0.0


class SignalDetector:
    """One signal rule (a :class:`~detectors.rules.ThresholdRule` or subclass) over every patient."""

    # A rate, forecast, baseline or rhythm cannot be computed from a value known only to lie
    # beyond the device's range: such samples are left out (threshold rules take them).
    beyond_range = False

    def __init__(self, rule: ThresholdRule) -> None:
        self.rule = rule
        self.name = rule.name
        self.metric = rule.metric
        self.metric_code = METRIC_CODES[rule.metric]
        self.device_prefix = rule.device_prefix
        self.exclude_device_prefix = rule.exclude_device_prefix
        self.sign = rule.direction.sign
        self.rows = ParamRows()  # each patient's parameter set (row 0: the rule)
        self._memo: tuple[IntArray | None, npt.NDArray[np.int32]] = (None, np.zeros(0, np.int32))
        self.episodes = EpisodeTable(self.rows)
        self._zones: list[str] = []
        periods = len(rule.schedule)
        # Parameters per (period, [level,] row of self.rows), signed (see module docstring).
        self.threshold: FloatArray = np.zeros((periods + 1, N_LEVELS, 0))
        self.loose_threshold: FloatArray = np.zeros((1, N_LEVELS, 0))
        self.for_s: FloatArray = np.zeros((periods + 1, N_LEVELS, 0))
        self.clear_threshold: FloatArray = np.zeros((periods + 1, 0))
        self.clear_for_s: FloatArray = np.zeros((periods + 1, 0))
        self.period_start: FloatArray = np.zeros((periods, 0))
        self.period_end: FloatArray = np.zeros((periods, 0))
        self.period_tz: IntArray = np.zeros((periods, 0), np.int64)
        self.max_gap_s: FloatArray = np.zeros(0)
        self.hold_s: FloatArray = np.zeros(0)
        self.tolerate_s: FloatArray = np.zeros(0)
        self._tolerant = rule.tolerate_s > 0  # whether any patient's rule tolerates excursions
        self.enabled: BoolArray = np.zeros(0, np.bool_)
        # State per patient: run starts at the last usable sample, and that sample's time.
        self.run_start: FloatArray = np.zeros((N_LEVELS, 0))
        self.clear_start: FloatArray = np.zeros(0)
        self.last_t: FloatArray = np.zeros(0)
        # Per level: when the excursion back across the threshold that the open run is in began
        # (NaN: none). Held only once a row of the rule tolerates excursions or a record brings
        # one (:meth:`materialize`); until then a read-only all-NaN view of no memory (issue 20).
        self.away: FloatArray = _no_away(0)

    # -- hooks for rule types ----------------------------------------------------------------------

    def signal(self, view: MetricView) -> FloatArray:
        """The signal of each sample (NaN: unknown); updates the type's own state. Default: the value."""
        return view.value

    def resize_state(self, n: int) -> None:
        """Make room for ``n`` patients in the type's own state."""

    def add_row_extra(self, rule: ThresholdRule) -> None:
        """Append the type's own parameters of ``rule`` as a new row (see :meth:`_row_of`)."""

    def export_extra(self, patient: int) -> dict[str, Any]:
        """The type's own state of ``patient``, JSON-able."""
        return {}

    def import_extra(self, patient: int, record: Mapping[str, Any]) -> None:
        """Restore :meth:`export_extra`'s output (an empty record means: fresh)."""

    def extra_columns(self) -> list[StateColumn]:
        """The type's own per-patient state arrays, the ones :meth:`export_extra` reads."""
        return []

    def settle_extra(self, blocks: list[FloatArray]) -> BoolArray:
        """Which rows of :meth:`extra_columns` entries an export and import would leave as they are;
        may also rewrite rows in place to what that round trip would make of them. Only called for
        a type with own state."""
        return np.ones(len(blocks[0]), np.bool_)

    def describe(self, rule: ThresholdRule, period: Period | None, state: str, level: int, value: float) -> str:
        """Human text of an event of ``rule`` (as it applies to the patient) during ``period``."""
        raise NotImplementedError

    # -- configuration ---------------------------------------------------------------------------

    def resize(self, n: int) -> None:
        """Make room for ``n`` patients; new ones follow the default rule."""
        old = len(self.last_t)
        if n <= old:
            return
        if not len(self.rows):
            self._row_of(self.rule)  # row 0
        self.rows.grow(n)
        self.run_start = grown(self.run_start, n, np.nan)
        self.clear_start = grown(self.clear_start, n, np.nan)
        self.last_t = grown(self.last_t, n, np.nan)
        self.away = grown(self.away, n, np.nan) if self.away.flags.writeable else _no_away(n)
        self.episodes.resize(n)
        self.resize_state(n)

    def configure(self, patient: int, rule: ThresholdRule) -> None:
        """Apply a per-patient override (same name, type, metric, direction and periods as the default)."""
        if (rule.name, rule.type, rule.metric, rule.direction) != (
            self.name,
            self.rule.type,
            self.metric,
            self.rule.direction,
        ):
            raise ValueError(f"an override of {self.name!r} must keep its name, type, metric and direction")
        if [p.name for p in rule.schedule] != [p.name for p in self.rule.schedule]:
            raise ValueError(f"an override of {self.name!r} must keep the rule's schedule periods")
        self.rows.assign(patient, self._row_of(rule))
        self._memo = (None, self._memo[1])

    def _row_of(self, rule: ThresholdRule) -> int:
        """The parameter row of ``rule``: an existing one for an equal rule, else a new one."""
        row = self.rows.find(rule)
        if row is not None:
            return row
        row = self.rows.add(rule)
        cols = self._columns(rule)
        self.threshold = appended(self.threshold, cols["threshold"])
        self.loose_threshold = appended(self.loose_threshold, np.fmin.reduce(cols["threshold"], axis=0))
        self.for_s = appended(self.for_s, cols["for_s"])
        self.clear_threshold = appended(self.clear_threshold, cols["clear_threshold"])
        self.clear_for_s = appended(self.clear_for_s, cols["clear_for_s"])
        self.period_start = appended(self.period_start, cols["period_start"])
        self.period_end = appended(self.period_end, cols["period_end"])
        self.period_tz = appended(self.period_tz, cols["period_tz"])
        self.max_gap_s = appended(self.max_gap_s, rule.max_gap_s)
        self.hold_s = appended(self.hold_s, _hold(rule))
        self.tolerate_s = appended(self.tolerate_s, rule.tolerate_s)
        self._tolerant = self._tolerant or rule.tolerate_s > 0
        if self._tolerant:
            self.materialize(self.away)
        self.enabled = appended(self.enabled, rule.enabled)
        self.episodes.add_row(cooldown_s=rule.cooldown_s, escalate_after_s=cols["escalate"], flapping=rule.flapping)
        self.add_row_extra(rule)
        return row

    def rule_for(self, patient: int) -> ThresholdRule:
        """The rule as it applies to ``patient``."""
        rule: ThresholdRule = self.rows.keys[self.rows.row[patient]]
        return rule

    def _columns(self, rule: ThresholdRule) -> dict[str, npt.NDArray[Any]]:
        """Every per-patient parameter of ``rule``, one column each (leading axis: period)."""
        periods: list[Period | None] = [None, *rule.schedule]
        levels = [_level_columns(rule.period_levels(p), self.sign) for p in periods]
        clears = [rule.period_clear(p) for p in periods]
        return {
            "threshold": np.stack([thr for thr, _, _ in levels]),
            "for_s": np.stack([for_s for _, for_s, _ in levels]),
            "clear_threshold": np.array([self.sign * c for c, _ in clears]),
            "clear_for_s": np.array([f for _, f in clears]),
            "period_start": np.array([p.start_min for p in rule.schedule], dtype=np.float64),
            "period_end": np.array([p.end_min for p in rule.schedule], dtype=np.float64),
            "period_tz": np.array([self._zone_code(p.tz) for p in rule.schedule], dtype=np.int64),
            "escalate": _escalation(levels),
        }

    def _zone_code(self, tz: str) -> int:
        if tz not in self._zones:
            self._zones.append(tz)
        return self._zones.index(tz)

    # -- detection -------------------------------------------------------------------------------

    def process(self, view: MetricView, now: float | None = None) -> Transitions:
        """Run the rule over the usable samples of its metric; return alert transitions."""
        if not self.enabled[self.rows.used()].any():
            return Transitions.empty()
        view = self._in_order(self._enabled_only(view))
        if len(view) == 0:
            return Transitions.empty()
        raw = self.signal(view)
        x = raw if self.sign > 0 else -raw
        # Which patients need the full work is decided with each level's loosest threshold over
        # the periods, so the schedule (a time-zone lookup per sample) is computed for those only.
        loose = self._met(view, x, None, self.loose_threshold)
        view, x, loose = self._hot(view, x, loose)
        if len(view) == 0:
            return Transitions.empty()
        k = self._periods(view)
        met = loose if k is None else self._met(view, x, k, self.threshold)
        restart, may_continue = self._breaks(view)
        due, onset = self._due(view, met, k, restart, may_continue)
        gp, last = view.group_patient, view.ends - 1
        clear_long = None
        if self.episodes.level[gp].any() or due.any():
            clear_due, clear_long = self._clear_due(view, x, k, restart, may_continue)
        else:
            # A clearing run only matters inside an episode, and one opens on a sample that is not
            # on the normal side, so a run carried from before it can never count.
            clear_due = np.zeros(len(view), np.bool_)
            self.clear_start[gp] = np.nan
        self.last_t[gp] = view.t[last]
        return self.episodes.advance(view, due, clear_due, onset, clear_long=clear_long, now=now)

    def _enabled_only(self, view: MetricView) -> MetricView:
        if not self.rows.uniform and len(view) and not self.enabled[self.rows.of(view.group_patient)].all():
            return view.where(self.enabled[self.rows.of(view.patient)])
        return view

    def _in_order(self, view: MetricView) -> MetricView:
        """Only samples after the rule's last processed one per patient (late data of a second device).

        Each patient's samples are sorted, so checking its first sample suffices in the usual case.
        """
        if len(view) == 0:
            return view
        late = view.t[view.starts] <= self.last_t[view.group_patient]
        if not late.any():
            return view
        return view.where(~(view.t <= self.last_t[view.patient]))

    def _periods(self, view: MetricView) -> IntArray | None:
        """Per sample: the schedule period in force (0: none), or ``None`` when the rule has no schedule."""
        if not self.rule.schedule:
            return None
        rows = self._rows_of(view.patient)
        return period_index(view.t, rows, self.period_start, self.period_end, self.period_tz, self._zones)

    def _met(self, view: MetricView, x: FloatArray, k: IntArray | None, threshold: FloatArray) -> dict[int, BoolArray]:
        """Per used level slot: which samples are beyond its threshold."""
        return {
            slot: x > self._gather(threshold[:, slot], k, view.patient)
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
        if self._tolerant:  # an open run may outlive a batch with no sample beyond
            hot |= ~np.isnan(self.run_start[:, gp]).all(axis=0)
        if hot.all():
            return view, x, met
        cold = ~hot
        cold_patients = gp[cold]
        self.run_start[:, cold_patients] = np.nan
        if self._tolerant:
            self.away[:, cold_patients] = np.nan
        self.clear_start[cold_patients] = np.nan
        self.last_t[cold_patients] = view.t[view.ends[cold] - 1]
        view, mask = view.select_groups(hot)
        return view, x[mask], {slot: met_slot[mask] for slot, met_slot in met.items()}

    def _due(
        self,
        view: MetricView,
        met: dict[int, BoolArray],
        k: IntArray | None,
        restart: BoolArray,
        may_continue: BoolArray,
    ) -> tuple[npt.NDArray[np.int8], FloatArray]:
        """Per sample: the most severe level due (0: none) and when its run began."""
        p, t, gp, last = view.patient, view.t, view.group_patient, view.ends - 1
        due = np.zeros(len(t), np.int8)
        onset = np.full(len(t), np.nan)
        for slot in range(N_LEVELS):  # ascending slots: the most severe due level wins
            met_slot = met.get(slot)
            if met_slot is None or not (met_slot.any() or self._tolerant):
                self.run_start[slot, gp] = np.nan  # never met in the batch: no run open at its end
                if self._tolerant:
                    self.away[slot, gp] = np.nan
                continue
            carried = np.where(may_continue, self.run_start[slot, p], np.nan)
            if self._tolerant:
                tolerate = float(self.tolerate_s[0]) if self.rows.uniform else self.tolerate_s[self._rows_of(p)]
                carried_away = np.where(may_continue, self.away[slot, p], np.nan)
                start, away = tolerant_runs(met_slot, t, restart, may_continue, carried, carried_away, tolerate)
                self.away[slot, gp] = away[last]
            else:
                start = run_starts(met_slot, t, restart, carried)
            now_due = met_slot & (t - start >= self._gather(self.for_s[:, slot], k, p))
            due[now_due] = slot + 1
            onset[now_due] = start[now_due]
            self.run_start[slot, gp] = start[last]
        return due, onset

    def _clear_due(
        self, view: MetricView, x: FloatArray, k: IntArray | None, restart: BoolArray, may_continue: BoolArray
    ) -> tuple[BoolArray, BoolArray | None]:
        """Per sample: whether the signal has been on the normal side long enough to clear (and to
        clear an episode held by flapping suppression)."""
        p, t, gp, last = view.patient, view.t, view.group_patient, view.ends - 1
        normal = x <= self._gather(self.clear_threshold, k, p)
        carried = np.where(may_continue, self.clear_start[p], np.nan)
        start = run_starts(normal, t, restart, carried)
        self.clear_start[gp] = start[last]
        need = self._gather(self.clear_for_s, k, p)
        clear_due = normal & (t - start >= need)
        if not self.episodes.flapping_used:
            return clear_due, None
        hold = float(self.hold_s[0]) if self.rows.uniform else self.hold_s[self._rows_of(p)]
        return clear_due, normal & (t - start >= np.maximum(need, hold))

    def _breaks(self, view: MetricView) -> tuple[BoolArray, BoolArray]:
        """Where runs must restart (gap or no history), and where a carried-in run may continue."""
        t, p = view.t, view.patient
        previous = np.empty_like(t)
        previous[1:] = t[:-1]
        previous[view.starts] = self.last_t[view.group_patient]
        max_gap = float(self.max_gap_s[0]) if self.rows.uniform else self.max_gap_s[self._rows_of(p)]
        # NaN (no earlier sample) compares false, so it counts as a break too.
        gap = ~(t - previous <= max_gap)
        first = view.first_mask()
        return first | gap, first & ~gap

    def _gather(self, column: FloatArray, k: IntArray | None, p: IntArray) -> FloatArray | float:
        """Per-sample values of a ``(period, row)`` parameter; a scalar while nothing varies.

        Most deployments override few or no patients and have no schedule: a scalar saves a
        gather per sample and level.
        """
        if self.rows.uniform:
            return float(column[0, 0]) if k is None else column[k, 0]
        rows = self._rows_of(p)
        values: FloatArray = column[0, rows] if k is None else column[k, rows]
        return values

    def _rows_of(self, p: IntArray) -> npt.NDArray[np.int32]:
        """The parameter row of each sample's patient; the same patient array again (every parameter
        and level of a batch) costs no second gather."""
        if p is not self._memo[0]:
            self._memo = (p, self.rows.of(p))
        return self._memo[1]

    def _slot_used(self, slot: int) -> bool:
        """Whether any patient's rule has the level in ``slot`` in any period (an unused level is skipped)."""
        if self.rows.uniform and not self.rule.schedule:
            return self.rule.level(Severity(slot + 1)) is not None
        return not bool(np.isnan(self.threshold[:, slot, self.rows.used()]).all())

    def tick(self, now: float) -> Transitions:
        """Time-driven transitions: none for signal rules (they change only with samples)."""
        return Transitions.empty()

    # -- messages --------------------------------------------------------------------------------

    def message(self, patient: int, state: str, level: int, value: float, time: float) -> str:
        """What a nurse reads about an event of this rule for ``patient`` at ``time``."""
        rule = self.rule_for(patient)
        period = None
        if rule.schedule:
            k = self._periods(MetricView.from_sorted(np.array([patient]), np.array([time]), np.array([value])))
            period = rule.schedule[int(k[0]) - 1] if k is not None and k[0] > 0 else None
        return self.describe(rule, period, state, level, value)

    # -- per-patient records ---------------------------------------------------------------------

    def export_patient(self, patient: int) -> dict[str, Any]:
        """The patient's state for this rule as a JSON-able dict."""
        # Empty parts are left out (import reads an absent part as empty): most patients have no run,
        # no clear run and no alert, and a checkpoint is written per patient.
        record: dict[str, Any] = {"last_t": opt(self.last_t[patient])}
        starts = self.run_start[:, patient].tolist()
        runs = {SEVERITY_NAMES[slot]: t for slot, t in enumerate(starts) if t == t}  # t == t: not NaN
        if runs:
            record["runs"] = runs
        aways = self.away[:, patient].tolist()
        away = {SEVERITY_NAMES[slot]: t for slot, t in enumerate(aways) if t == t}
        if away:
            record["away"] = away
        clear_run = opt(self.clear_start[patient])
        if clear_run is not None:
            record["clear_run"] = clear_run
        alert = self.episodes.export_patient(patient)
        if alert:
            record["alert"] = alert
        record.update(self.export_extra(patient))
        return record

    def import_patient(self, patient: int, record: Mapping[str, Any]) -> None:
        """Restore what :meth:`export_patient` produced."""
        runs = record.get("runs", {})
        if not isinstance(runs, Mapping) or set(runs) - set(SEVERITY_NAMES):
            raise StateError(f"rule {self.name}: runs must map severities to times")
        away = record.get("away", {})
        if not isinstance(away, Mapping) or set(away) - set(SEVERITY_NAMES):
            raise StateError(f"rule {self.name}: away must map severities to times")
        alert = record.get("alert", {})
        if not isinstance(alert, Mapping):
            raise StateError(f"rule {self.name}: alert must be a mapping")
        aways = [opt_float(away, severity) for severity in SEVERITY_NAMES]
        if not np.isnan(aways).all():
            self.materialize(self.away)
        for slot, severity in enumerate(SEVERITY_NAMES):
            self.run_start[slot, patient] = opt_float(runs, severity)
            if self.away.flags.writeable:  # else all NaN already, as written
                self.away[slot, patient] = aways[slot]
        self.clear_start[patient] = opt_float(record, "clear_run")
        self.last_t[patient] = opt_float(record, "last_t")
        self.episodes.import_patient(patient, alert)
        self.import_extra(patient, record)

    def materialize(self, column: FloatArray) -> None:
        """Hold ``column``, one of :meth:`state_columns` held lazily (a read-only all-NaN view), as a
        real array from now on (values are about to be written into it)."""
        if column is self.away and not self.away.flags.writeable:
            self.away = np.full(self.away.shape, np.nan)
        elif column is self.episodes.recent:
            self.episodes.materialize()

    def state_columns(self) -> list[StateColumn]:
        """Every per-patient state array (see :class:`~detectors.columns.StateColumn`). ``away`` came
        last, after packed records of version 2 existed: see :attr:`added_entries`."""
        return [(self.last_t, 0), (self.run_start, 1), (self.clear_start, 0),
                *self.episodes.state_columns(), *self.extra_columns(), (self.away, 1)]

    # Entries at the end of :meth:`state_columns` that earlier workers' packed records lack (``away``):
    # such a record's row is read with them fresh (NaN: no excursion).
    added_entries = N_LEVELS

    def settle(self, rows: FloatArray) -> BoolArray:
        """Which rows of packed entries (patients × entries of :meth:`state_columns`) an export and
        import would leave as they are, without error (see :mod:`detectors.columns`)."""
        blocks = packed.split(self.state_columns(), rows)
        ok = finite_or_nan(rows[:, : 2 + N_LEVELS]) & self.episodes.settle(blocks[3:13]) & finite_or_nan(blocks[-1])
        extra = blocks[13:-1]
        return ok & self.settle_extra(extra) if extra else ok

    def reset_patient(self, patient: int) -> None:
        """Forget the patient's state for this rule."""
        self.import_patient(patient, {})


def _level_columns(levels: tuple[ThresholdLevel, ...], sign: float) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Signed thresholds, durations and escalation limits per severity slot (NaN: no such level)."""
    thr = np.full(N_LEVELS, np.nan)
    for_s = np.zeros(N_LEVELS)
    esc = np.full(N_LEVELS, np.nan)
    for lv in levels:
        slot = int(lv.severity) - 1
        thr[slot] = sign * lv.threshold
        for_s[slot] = lv.for_s
        esc[slot] = np.nan if lv.escalate_after_s is None else lv.escalate_after_s
    return thr, for_s, esc


def _escalation(levels: list[tuple[FloatArray, FloatArray, FloatArray]]) -> FloatArray:
    """Escalation limit per severity: the rule's own level's, else the first period's that has it."""
    esc = levels[0][2].copy()
    for thr, _, period_esc in levels[1:]:
        missing = np.isnan(levels[0][0]) & ~np.isnan(thr) & np.isnan(esc)
        esc[missing] = period_esc[missing]
    return esc


def _hold(rule: ThresholdRule) -> float:
    return rule.flapping.hold_s if rule.flapping is not None else _NO_HOLD


def _no_away(n: int) -> FloatArray:
    """A read-only all-NaN ``away`` for ``n`` patients that takes no memory."""
    away: FloatArray = np.broadcast_to(np.float64(np.nan), (N_LEVELS, n))
    return away
