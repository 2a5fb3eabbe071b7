"""The detector engine: micro-batches in, alert events out, per-patient state in and out.

One :class:`Engine` runs every rule of a :class:`~detectors.rules.RuleSet` over batches of many
patients. It is the single entry point shared by the Faust worker and ``rpm backtest``::

    engine = Engine(ruleset)
    events = engine.process(engine.batch(patients, metrics, t, value, flags))
    events += engine.tick(now)                       # escalations (and later: staleness)
    events += engine.acknowledge(alert_id, by="nurse-3", at=now)
    for patient in engine.dirty_patients():          # checkpoint what changed
        table[patient] = engine.export_state(patient)

The stream is at-least-once, so :meth:`Engine.process` drops duplicates and anything not newer
than the last sample it processed for that patient and metric: redelivered input changes nothing
and creates no alert. Alert ids are deterministic (:func:`~detectors.events.alert_id`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.base import Detector
from detectors.batch import BoolArray, FloatArray, MetricView, PatientRegistry, SampleBatch, metric_codes
from detectors.columns import opt, opt_float
from detectors.const import (
    ACKNOWLEDGED,
    CLEARED,
    ESCALATED,
    METRIC_NAMES,
    N_METRICS,
    RAISED,
    SEVERITY_NAMES,
    STATE_VERSION,
)
from detectors.episodes import RAISE, Transitions
from detectors.errors import StateError
from detectors.events import AlertEvent, AlertState, SeverityName, alert_id
from detectors.rules import Rule, RuleSet, ThresholdRule
from detectors.threshold import ThresholdDetector


def build_detector(rule: Rule) -> Detector:
    """The detector for ``rule``, by rule type (new types register here)."""
    if isinstance(rule, ThresholdRule):
        return ThresholdDetector(rule)
    raise TypeError(f"no detector for rule type {type(rule).__name__}")


class Engine:
    """All detectors of a rule set over all patients; see the module docstring for the life cycle."""

    def __init__(self, rules: RuleSet, *, registry: PatientRegistry | None = None) -> None:
        self._rules = rules
        self._registry = registry if registry is not None else PatientRegistry()
        self._detectors: list[Detector] = [build_detector(rule) for rule in rules.rules]
        self._by_name = {det.name: i for i, det in enumerate(self._detectors)}
        self._last_t: FloatArray = np.full((0, N_METRICS), np.nan)
        self._dirty: BoolArray = np.zeros(0, np.bool_)
        # Open alerts both ways, so acknowledgements find their patient and rule.
        self._open: dict[str, tuple[int, int]] = {}
        self._open_id: dict[tuple[int, int], str] = {}
        self._sync()

    @property
    def rules(self) -> RuleSet:
        """The rules this engine runs."""
        return self._rules

    @property
    def registry(self) -> PatientRegistry:
        """The patient id ↔ index map that :class:`SampleBatch` indices refer to."""
        return self._registry

    # -- input -----------------------------------------------------------------------------------

    def batch(
        self,
        patients: Sequence[str] | npt.NDArray[Any],
        metrics: Sequence[str] | npt.NDArray[Any],
        t: Sequence[float] | FloatArray,
        value: Sequence[float] | FloatArray,
        flags: Sequence[int] | npt.NDArray[Any] | None = None,
    ) -> SampleBatch:
        """A :class:`SampleBatch` from patient ids and metric names (or codes), registering new patients."""
        codes = np.asarray(metrics)
        if codes.dtype.kind not in "iu":
            codes = metric_codes(metrics)
        n = len(codes)
        return SampleBatch(
            patient=self._registry.indices(patients),
            metric=codes,
            t=np.asarray(t, dtype=np.float64),
            value=np.asarray(value, dtype=np.float64),
            flags=np.zeros(n, np.int16) if flags is None else np.asarray(flags, dtype=np.int16),
        )

    def process(self, batch: SampleBatch) -> list[AlertEvent]:
        """Run every rule over ``batch``; return the alert events it causes, in event-time order.

        Samples may be in any order and of any patients registered in :attr:`registry`. Dropped
        before detection: duplicates of (patient, metric, t) (the first wins), samples not newer
        than the last processed one of that patient and metric, and samples with a non-finite
        time or unknown metric. Samples with a quality flag or a non-finite value advance that
        watermark but are ignored by the detectors.
        """
        self._sync()
        fresh = self._fresh(batch)
        if len(fresh) == 0:
            return []
        self._dirty[fresh.patient] = True
        usable = (fresh.flags == 0) & np.isfinite(fresh.value)
        views: dict[int, MetricView] = {}
        out: list[tuple[tuple[float, str, int], AlertEvent]] = []
        for index, det in enumerate(self._detectors):
            view = views.get(det.metric_code)
            if view is None:
                take = usable & (fresh.metric == det.metric_code)
                view = MetricView.from_sorted(fresh.patient[take], fresh.t[take], fresh.value[take])
                views[det.metric_code] = view
            out.extend(self._transition_events(index, det.process(view)))
        return _in_order(out)

    def _fresh(self, batch: SampleBatch) -> SampleBatch:
        """``batch`` sorted by (patient, metric, t) without duplicates and already-processed samples."""
        n = len(self._registry)
        ok = (
            np.isfinite(batch.t)
            & (batch.metric >= 0)
            & (batch.metric < N_METRICS)
            & (batch.patient >= 0)
            & (batch.patient < n)
        )
        if not ok.all():
            batch = batch.take(ok)
        key = batch.patient * N_METRICS + batch.metric
        batch, key = _sorted(batch, key)
        p, m, t = batch.patient, batch.metric, batch.t
        same_key = np.zeros(len(t), np.bool_)
        same_key[1:] = key[1:] == key[:-1]
        duplicate = np.zeros(len(t), np.bool_)
        duplicate[1:] = same_key[1:] & (t[1:] == t[:-1])
        # NaN watermark (nothing processed yet) compares false: everything is new.
        old = t <= self._last_t[p, m]
        keep = ~duplicate & ~old
        if not keep.all():
            batch, key = batch.take(keep), key[keep]
            p, m, t = batch.patient, batch.metric, batch.t
        last = np.ones(len(t), np.bool_)
        last[:-1] = key[1:] != key[:-1]
        self._last_t[p[last], m[last]] = t[last]
        return batch

    # -- time and people -------------------------------------------------------------------------

    def tick(self, now: float) -> list[AlertEvent]:
        """Time-driven transitions at ``now`` (epoch s): escalation of unacknowledged alerts.

        Escalation deadlines are in event time (raise time + the level's ``escalate_after``), so
        call this with wall-clock time in the live stream and with the event time in backtests.
        """
        self._sync()
        out: list[tuple[tuple[float, str, int], AlertEvent]] = []
        for index, det in enumerate(self._detectors):
            out.extend(self._transition_events(index, det.tick(now)))
            for p in det.episodes.escalate(now).tolist():
                self._dirty[p] = True
                out.append(self._keyed(index, p, ESCALATED, now, np.nan))
        return _in_order(out)

    def acknowledge(self, alert_id: str, by: str, at: float) -> list[AlertEvent]:
        """A person acknowledged the alert: it will not escalate (until it worsens to a higher level).

        Returns the ``acknowledged`` event, or nothing if the alert is not open or already
        acknowledged (acknowledgements are redelivered too).
        """
        where = self._open.get(alert_id)
        if where is None:
            return []
        index, p = where
        if not self._detectors[index].episodes.acknowledge(p):
            return []
        self._dirty[p] = True
        return [self._keyed(index, p, ACKNOWLEDGED, at, np.nan, by=by)[1]]

    def open_alerts(self) -> list[AlertEvent]:
        """A snapshot of every open alert: state ``raised``, ``acknowledged`` or ``escalated``.

        ``time`` is when it was (last) raised; for a nurse station that (re)connects.
        """
        out = []
        for index, p in self._open.values():
            episodes = self._detectors[index].episodes
            state: AlertState = RAISED
            if episodes.acked[p]:
                state = ACKNOWLEDGED
            elif episodes.escalated[p]:
                state = ESCALATED
            out.append(self._keyed(index, p, state, float(episodes.raised_at[p]), np.nan))
        return _in_order(out)

    # -- state -----------------------------------------------------------------------------------

    def dirty_patients(self) -> list[str]:
        """Patients whose state changed since the last call (to checkpoint); resets the set."""
        changed = np.flatnonzero(self._dirty)
        self._dirty[changed] = False
        return [self._registry.id_of(int(p)) for p in changed]

    def export_state(self, patient_id: str) -> dict[str, Any]:
        """Everything the engine remembers about ``patient_id``, as a JSON-able dict.

        Shape: ``{"v": 1, "last_t": {metric: t}, "rules": {rule: {...}}}``; opaque to callers, to
        be stored (e.g. in a Faust table keyed by patient id) and given back to :meth:`import_state`.
        """
        p = self._registry.get(patient_id)
        if p is None:
            return {"v": STATE_VERSION, "last_t": {}, "rules": {}}
        last_t = {name: opt(self._last_t[p, code]) for code, name in enumerate(METRIC_NAMES)}
        return {
            "v": STATE_VERSION,
            "last_t": {name: t for name, t in last_t.items() if t is not None},
            "rules": {det.name: det.export_patient(p) for det in self._detectors},
        }

    def import_state(self, patient_id: str, state: Mapping[str, Any]) -> None:
        """Restore a patient's state from :meth:`export_state` (e.g. after a Kafka rebalance).

        Rules no longer in the rule set are ignored; rules missing from the record start fresh.
        Raises :class:`~detectors.errors.StateError` for a malformed record (and changes nothing).
        """
        rules, last_t = _checked_record(state)
        backup = self.export_state(patient_id) if patient_id in self._registry else None
        try:
            self._import(patient_id, rules, last_t)
        except StateError:
            if backup is not None:
                self._import(patient_id, backup["rules"], backup["last_t"])
            raise

    def _import(self, patient_id: str, rules: Mapping[str, Any], last_t: Mapping[str, Any]) -> None:
        p = self._registry.index_of(patient_id)
        self._sync()
        self._forget_open(p)
        for code, name in enumerate(METRIC_NAMES):
            self._last_t[p, code] = opt_float(last_t, name)
        for index, det in enumerate(self._detectors):
            record = rules.get(det.name)
            if isinstance(record, Mapping):
                det.import_patient(p, record)
            else:
                det.reset_patient(p)
            if det.episodes.level[p] > 0:
                self._remember_open(index, p)

    def reset_patient(self, patient_id: str) -> None:
        """Forget a patient's state (e.g. when its partition moved to another worker)."""
        p = self._registry.get(patient_id)
        if p is not None:
            self.import_state(patient_id, {"v": STATE_VERSION})

    def export_all(self) -> dict[str, dict[str, Any]]:
        """:meth:`export_state` of every registered patient, keyed by patient id."""
        return {pid: self.export_state(pid) for pid in self._registry.ids()}

    def import_all(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        """:meth:`import_state` for each patient in ``states``."""
        for pid, state in states.items():
            self.import_state(pid, state)

    # -- internals -------------------------------------------------------------------------------

    def _sync(self) -> None:
        """Grow every per-patient array to the registry's size and apply overrides to new patients."""
        n, old = len(self._registry), len(self._dirty)
        if n <= old:
            return
        self._last_t = np.concatenate((self._last_t, np.full((n - old, N_METRICS), np.nan)))
        self._dirty = np.concatenate((self._dirty, np.zeros(n - old, np.bool_)))
        for det in self._detectors:
            det.resize(n)
        # A loop over the (few) patients with overrides, not over samples.
        for pid, overrides in self._rules.patient_rules.items():
            p = self._registry.get(pid)
            if p is not None and p >= old:
                for name, rule in overrides.items():
                    self._detectors[self._by_name[name]].configure(p, rule)

    def _transition_events(self, index: int, tr: Transitions) -> list[tuple[tuple[float, str, int], AlertEvent]]:
        """Events of one detector's transitions (a loop over alert transitions, which are rare)."""
        out = []
        rows = zip(
            tr.patient.tolist(),
            tr.kind.tolist(),
            tr.level.tolist(),
            tr.since.tolist(),
            tr.time.tolist(),
            tr.value.tolist(),
            strict=True,
        )
        for p, kind, level, since, time, value in rows:
            state: AlertState = RAISED if kind == RAISE else CLEARED
            keyed = self._keyed(index, p, state, time, value, level=level, since=since)
            if state == RAISED:
                self._remember_open(index, p, keyed[1].alert_id)
            else:
                self._forget_open(p, index)
            out.append(keyed)
        return out

    def _keyed(
        self,
        index: int,
        p: int,
        state: AlertState,
        time: float,
        value: float,
        *,
        level: int | None = None,
        since: float | None = None,
        by: str | None = None,
    ) -> tuple[tuple[float, str, int], AlertEvent]:
        """An event with its sort key; level and since default to the open alert's."""
        det = self._detectors[index]
        level = int(det.episodes.level[p]) if level is None else level
        since = float(det.episodes.since[p]) if since is None else since
        pid = self._registry.id_of(p)
        severity: SeverityName = SEVERITY_NAMES[level - 1]  # type: ignore[assignment]
        message = det.message(p, state, level, value)
        if state == ACKNOWLEDGED:
            message = f"Acknowledged by {by}: {message}"
        event = AlertEvent(
            alert_id=alert_id(pid, det.name, since),
            patient=pid,
            rule=det.name,
            severity=severity,
            metric=det.metric,
            state=state,
            time=float(time),
            value=float(value),
            message=message,
            since=since,
            by=by,
        )
        return (float(time), pid, index), event

    def _remember_open(self, index: int, p: int, aid: str | None = None) -> None:
        if aid is None:
            det = self._detectors[index]
            aid = alert_id(self._registry.id_of(p), det.name, float(det.episodes.since[p]))
        self._open[aid] = (index, p)
        self._open_id[(index, p)] = aid

    def _forget_open(self, p: int, index: int | None = None) -> None:
        indices = range(len(self._detectors)) if index is None else (index,)
        for i in indices:
            aid = self._open_id.pop((i, p), None)
            if aid is not None:
                del self._open[aid]


def _sorted(batch: SampleBatch, key: npt.NDArray[np.int64]) -> tuple[SampleBatch, npt.NDArray[np.int64]]:
    """``batch`` and ``key`` (patient, metric) sorted by key then time, stably.

    Stability matters: among exact duplicates the first delivered one is kept. Batches that are
    already in order (a backtest CSV sorted by patient and time) skip the sort.
    """
    t = batch.t
    in_order = bool(np.all((key[1:] > key[:-1]) | ((key[1:] == key[:-1]) & (t[1:] >= t[:-1]))))
    if in_order:
        return batch, key
    order = np.lexsort((t, key))
    return batch.take(order), key[order]


def _in_order(keyed: list[tuple[tuple[float, str, int], AlertEvent]]) -> list[AlertEvent]:
    """Events by (time, patient id, rule order): deterministic whatever the batching or registry."""
    keyed.sort(key=lambda pair: pair[0])
    return [event for _, event in keyed]


def _checked_record(state: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """The ``rules`` and ``last_t`` parts of a state record, after checking its shape and version."""
    if not isinstance(state, Mapping) or state.get("v") != STATE_VERSION:
        version = state.get("v") if isinstance(state, Mapping) else None
        raise StateError(f"state record version {version!r} is not {STATE_VERSION}")
    rules = state.get("rules", {})
    last_t = state.get("last_t", {})
    if not isinstance(rules, Mapping) or not isinstance(last_t, Mapping):
        raise StateError("state record needs mappings 'rules' and 'last_t'")
    unknown = set(last_t) - set(METRIC_NAMES)
    if unknown:
        raise StateError(f"state record has unknown metrics {sorted(map(str, unknown))}")
    return rules, last_t
