"""The alert lifecycle shared by every rule: episodes, cooldown, acknowledgement and escalation.

A detector reduces its samples to two per-sample signals: ``due`` (the most severe level whose
condition has held long enough, 0 for none) and ``clear_due`` (the normal condition has held long
enough). :meth:`EpisodeTable.advance` turns them into alert transitions with the semantics of a
set/reset latch per patient:

- no open episode: the first sample with ``due > 0`` at or after ``cooldown_until`` raises at ``due``;
- open episode: the first sample with ``clear_due`` clears it (and starts the cooldown); before that,
  any sample whose ``due`` exceeds the episode's running maximum re-raises it at the higher level.

Vectorization: the next raise/clear candidate of every sample is precomputed with one reverse
``minimum.accumulate`` each; the latch then advances all patients together, each round finding
every patient's next clear and next raise by index lookups (plus a vectorized binary search for
cooldowns), so the number of rounds is the largest number of episodes any one patient has in the
batch (usually 0 or 1), never the number of samples. Upgrades inside episodes are a segmented
running maximum (one ``maximum.accumulate``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.batch import BoolArray, FloatArray, IntArray, MetricView
from detectors.columns import grown, opt, opt_float
from detectors.const import N_LEVELS, SEVERITY_NAMES
from detectors.errors import StateError
from detectors.runs import lower_bound, next_true

Int8Array = npt.NDArray[np.int8]

RAISE = 1
CLEAR = 2


@dataclass(frozen=True, slots=True)
class Transitions:
    """Alert transitions of one rule, in sample order per patient (parallel arrays).

    ``kind`` is :data:`RAISE` or :data:`CLEAR`; ``level`` the alert's severity code after a raise and
    before a clear; ``upgrade`` marks a raise of an already open episode to a higher level; ``since``
    the episode start; ``time``/``value`` the sample that caused it.
    """

    patient: IntArray
    kind: Int8Array
    level: Int8Array
    upgrade: BoolArray
    since: FloatArray
    time: FloatArray
    value: FloatArray

    def __len__(self) -> int:
        return len(self.patient)

    @classmethod
    def empty(cls) -> Transitions:
        """No transitions."""
        none_i = np.zeros(0, dtype=np.int64)
        none_b = np.zeros(0, dtype=np.int8)
        return cls(none_i, none_b, none_b, np.zeros(0, np.bool_), np.zeros(0), np.zeros(0), np.zeros(0))


class EpisodeTable:
    """Per-patient alert state of one rule, as arrays indexed by patient.

    ``level`` (0 = no open alert, else severity code), ``since`` (episode start), ``raised_at``
    (latest raise or upgrade: the escalation clock), ``acked``, ``escalated``, ``cooldown_until``
    (no new episode before it; NaN = none). Parameters: ``cooldown_s`` and ``escalate_after_s``
    (shape ``(3, n)``: per severity; NaN = never).
    """

    def __init__(self) -> None:
        self.level: Int8Array = np.zeros(0, dtype=np.int8)
        self.since: FloatArray = np.zeros(0)
        self.raised_at: FloatArray = np.zeros(0)
        self.acked: BoolArray = np.zeros(0, dtype=np.bool_)
        self.escalated: BoolArray = np.zeros(0, dtype=np.bool_)
        self.cooldown_until: FloatArray = np.zeros(0)
        self.cooldown_s: FloatArray = np.zeros(0)
        self.escalate_after_s: FloatArray = np.zeros((N_LEVELS, 0))

    def __len__(self) -> int:
        return len(self.level)

    def resize(self, n: int, *, cooldown_s: float, escalate_after_s: FloatArray) -> None:
        """Make room for ``n`` patients; new ones get no open alert and the given parameters."""
        self.level = grown(self.level, n, 0)
        self.since = grown(self.since, n, np.nan)
        self.raised_at = grown(self.raised_at, n, np.nan)
        self.acked = grown(self.acked, n, False)
        self.escalated = grown(self.escalated, n, False)
        self.cooldown_until = grown(self.cooldown_until, n, np.nan)
        self.cooldown_s = grown(self.cooldown_s, n, cooldown_s)
        old = self.escalate_after_s.shape[1]
        if n > old:
            extra = np.repeat(escalate_after_s.reshape(N_LEVELS, 1), n - old, axis=1)
            self.escalate_after_s = np.concatenate((self.escalate_after_s, extra), axis=1)

    def configure(self, patient: int, *, cooldown_s: float, escalate_after_s: FloatArray) -> None:
        """Set one patient's parameters (a per-patient override)."""
        self.cooldown_s[patient] = cooldown_s
        self.escalate_after_s[:, patient] = escalate_after_s

    # -- the latch ------------------------------------------------------------------------------

    def advance(self, view: MetricView, due: Int8Array, clear_due: BoolArray, onset: FloatArray) -> Transitions:
        """Apply one batch of per-sample signals; return the transitions and update the state.

        ``view`` holds the rule's usable samples; ``due``/``clear_due`` are never both set on one
        sample; ``onset[i]`` is when the run that made level ``due[i]`` due began (the episode start
        if sample ``i`` raises).
        """
        if len(view) == 0:
            return Transitions.empty()
        gp = view.group_patient
        level0 = self.level[gp]
        if not level0.any() and not due.any():
            return Transitions.empty()  # the usual case: nobody open, nobody due, nothing changes
        next_clear = next_true(clear_due)
        latch = self._latch(view, due, next_clear, level0)
        upgrades, end_level = _upgrades(view, due, next_clear, latch.raises, level0)
        transitions = self._assemble(view, due, onset, latch, upgrades)
        # State after the batch; level is read above (carried-in values) before being overwritten.
        self.level[gp] = np.where(latch.open_at_end, end_level, 0).astype(np.int8)
        self.cooldown_until[gp[latch.cleared]] = latch.cooldown_until[latch.cleared]
        self._record(transitions)
        return transitions

    def _latch(self, view: MetricView, due: Int8Array, next_clear: IntArray, level0: Int8Array) -> _Latch:
        """Advance every patient's set/reset latch through the batch, one transition per round."""
        t, ends, gp = view.t, view.ends, view.group_patient
        next_set = next_true(due > 0)
        pos = view.starts.copy()
        active = level0 > 0
        until = self.cooldown_until[gp]
        until = np.where(np.isnan(until), -np.inf, until)
        cooldown_s = self.cooldown_s[gp]
        cleared = np.zeros(len(pos), np.bool_)
        raises: list[IntArray] = []
        clears: list[IntArray] = []
        todo = np.arange(len(pos))
        while todo.size:
            # Open episodes end at their first clear_due sample; that starts the cooldown.
            a = todo[active[todo]]
            c = next_clear[pos[a]]
            hit = c < ends[a]
            a, c = a[hit], c[hit]
            clears.append(c)
            pos[a] = c + 1
            active[a] = False
            cleared[a] = True
            until[a] = t[c] + cooldown_s[a]
            # Closed ones (including those just cleared) raise at their next due sample after cooldown.
            b = todo[~active[todo] & (pos[todo] < ends[todo])]
            r = _next_raise(t, pos[b], ends[b], until[b], next_set)
            hit = r < ends[b]
            b, r = b[hit], r[hit]
            raises.append(r)
            pos[b] = r + 1
            active[b] = True
            todo = b[pos[b] < ends[b]]
        return _Latch(
            raises=np.sort(_cat(raises)),
            clears=np.sort(_cat(clears)),
            open_at_end=active,
            cleared=cleared,
            cooldown_until=until,
        )

    def _assemble(
        self,
        view: MetricView,
        due: Int8Array,
        onset: FloatArray,
        latch: _Latch,
        upgrades: tuple[IntArray, Int8Array],
    ) -> Transitions:
        """Transitions in sample order, with each one's episode start and severity filled in."""
        up_idx, up_level = upgrades
        raises, clears = latch.raises, latch.clears
        index = np.concatenate((raises, up_idx, clears))
        n_raise = len(raises) + len(up_idx)
        kind = np.concatenate((np.full(n_raise, RAISE, np.int8), np.full(len(clears), CLEAR, np.int8)))
        level = np.concatenate((due[raises], up_level, np.zeros(len(clears), np.int8)))
        is_new = np.zeros(len(index), np.bool_)
        is_new[: len(raises)] = True
        since = np.concatenate((onset[raises], np.full(len(up_idx) + len(clears), np.nan)))
        order = np.argsort(index, kind="stable")
        index, kind, level, is_new, since = index[order], kind[order], level[order], is_new[order], since[order]
        patient = view.patient[index]
        # Upgrades and clears belong to the latest new raise of the same patient in this batch, or
        # else to the episode carried in from earlier batches: forward-fill since and level.
        since = _ffill_by_patient(patient, is_new, since, self.since[patient])
        carried_level = _ffill_by_patient(patient, kind == RAISE, level.astype(np.float64), self.level[patient])
        level = np.where(kind == CLEAR, carried_level, level).astype(np.int8)
        return Transitions(
            patient=patient,
            kind=kind,
            level=level,
            upgrade=(kind == RAISE) & ~is_new,
            since=since,
            time=view.t[index],
            value=view.value[index],
        )

    def _record(self, tr: Transitions) -> None:
        """Lifecycle fields after a batch: each patient's state is set by its last transition."""
        if len(tr) == 0:
            return
        last = np.ones(len(tr), np.bool_)
        last[:-1] = tr.patient[1:] != tr.patient[:-1]
        p = tr.patient[last]
        raised = tr.kind[last] == RAISE
        self.since[p] = np.where(raised, tr.since[last], np.nan)
        self.raised_at[p] = np.where(raised, tr.time[last], np.nan)
        # A raise or an upgrade needs a nurse's attention again; a clear closes the alert.
        self.acked[p] = False
        self.escalated[p] = False

    # -- acknowledgement and escalation ----------------------------------------------------------

    def acknowledge(self, patient: int) -> bool:
        """Mark the patient's open alert acknowledged; ``False`` if there is none or it already was."""
        if self.level[patient] == 0 or self.acked[patient]:
            return False
        self.acked[patient] = True
        return True

    def escalate(self, now: float) -> IntArray:
        """Patients whose open alert has gone unacknowledged past its severity's limit; marks them.

        The clock runs from the latest raise or upgrade, in event time (``now`` is compared with
        sample times), so a backtest escalates exactly as the live stream does.
        """
        n = len(self.level)
        if n == 0:
            return np.zeros(0, np.int64)
        slot = np.maximum(self.level, 1).astype(np.int64) - 1
        limit = self.escalate_after_s[slot, np.arange(n)]
        due = (self.level > 0) & ~self.acked & ~self.escalated & (now >= self.raised_at + limit)
        patients = np.flatnonzero(due)
        self.escalated[patients] = True
        return patients

    # -- per-patient records ---------------------------------------------------------------------

    def export_patient(self, patient: int) -> dict[str, Any]:
        """The patient's alert state as a JSON-able dict."""
        level = int(self.level[patient])
        return {
            "level": SEVERITY_NAMES[level - 1] if level else None,
            "since": opt(self.since[patient]),
            "raised_at": opt(self.raised_at[patient]),
            "acked": bool(self.acked[patient]),
            "escalated": bool(self.escalated[patient]),
            "cooldown_until": opt(self.cooldown_until[patient]),
        }

    def import_patient(self, patient: int, record: Mapping[str, Any]) -> None:
        """Restore what :meth:`export_patient` produced."""
        level = record.get("level")
        if level is not None and level not in SEVERITY_NAMES:
            raise StateError(f"unknown alert level {level!r}")
        code = SEVERITY_NAMES.index(level) + 1 if level is not None else 0
        since, raised_at = opt_float(record, "since"), opt_float(record, "raised_at")
        if code and (math.isnan(since) or math.isnan(raised_at)):
            raise StateError("an open alert needs since and raised_at")
        self.level[patient] = code
        self.since[patient] = since if code else np.nan
        self.raised_at[patient] = raised_at if code else np.nan
        self.acked[patient] = bool(record.get("acked", False)) and code > 0
        self.escalated[patient] = bool(record.get("escalated", False)) and code > 0
        self.cooldown_until[patient] = opt_float(record, "cooldown_until")

    def reset_patient(self, patient: int) -> None:
        """Forget the patient's alert state (parameters stay)."""
        self.import_patient(patient, {})


@dataclass(frozen=True, slots=True)
class _Latch:
    raises: IntArray  # sample indices that raise a new episode, ascending
    clears: IntArray  # sample indices that clear an episode, ascending
    open_at_end: BoolArray  # per group: an episode is open after the batch
    cleared: BoolArray  # per group: some episode cleared in the batch
    cooldown_until: FloatArray  # per group: cooldown end after the batch's last clear


def _next_raise(t: FloatArray, pos: IntArray, ends: IntArray, until: FloatArray, next_set: IntArray) -> IntArray:
    """Per group: first index >= pos, < end, with t >= until and a due level (``len(t)`` if none)."""
    if pos.size == 0:
        return pos
    start = pos.copy()
    waiting = t[pos] < until
    if waiting.any():
        start[waiting] = lower_bound(t, pos[waiting], ends[waiting], until[waiting])
    inside = start < ends
    return np.where(inside, next_set[np.minimum(start, len(t) - 1)], len(t))


def _upgrades(
    view: MetricView, due: Int8Array, next_clear: IntArray, raises: IntArray, level0: Int8Array
) -> tuple[tuple[IntArray, Int8Array], Int8Array]:
    """Samples where an open episode's severity rises (and to what), and each group's final level.

    Each episode spans from its raise (or the batch start, when carried in) to its clearing sample;
    inside it the severity is the running maximum of ``due``, computed for all episodes at once by
    offsetting each episode's values by ``4 * episode number`` before one ``maximum.accumulate``.
    """
    n = len(view)
    carried = np.flatnonzero(level0 > 0)
    carried_start = view.starts[carried]
    start = np.concatenate((raises, carried_start))
    if start.size == 0:
        return (np.zeros(0, np.int64), np.zeros(0, np.int8)), np.zeros(len(view.starts), np.int8)
    start_level = np.concatenate((due[raises], level0[carried]))
    group_end = view.per_sample(view.ends)[start]
    end = np.minimum(next_clear[start], group_end)
    depth = np.zeros(n + 1, np.int64)
    np.add.at(depth, start, 1)
    np.add.at(depth, end, -1)
    inside = np.cumsum(depth[:n]) > 0
    is_start = np.zeros(n, np.bool_)
    is_start[start] = True
    offset = np.cumsum(is_start) * (N_LEVELS + 1)
    score = np.where(inside, offset + due, -1)
    score[start] = offset[start] + np.maximum(start_level, due[start])
    running = np.maximum.accumulate(score) - offset
    previous = np.concatenate(([-1], running[:-1]))
    up = inside & ~is_start & (running > previous)
    # A carried-in episode upgrades on its first sample if that is already beyond its level.
    up[carried_start] = inside[carried_start] & (due[carried_start] > level0[carried])
    up_idx = np.flatnonzero(up)
    last = view.ends - 1
    end_level = np.where(inside[last], running[last], 0).astype(np.int8)
    return (up_idx, running[up_idx].astype(np.int8)), end_level


def _ffill_by_patient(
    patient: IntArray, source: BoolArray, values: FloatArray, carried: npt.NDArray[Any]
) -> FloatArray:
    """Per entry: ``values`` at the latest ``source`` entry of the same patient at or before it, else ``carried``."""
    k = np.arange(len(patient))
    latest = np.maximum.accumulate(np.where(source, k, -1))
    valid = latest >= 0
    same = np.zeros(len(patient), np.bool_)
    same[valid] = patient[latest[valid]] == patient[valid]
    return np.where(same, values[np.maximum(latest, 0)], carried).astype(np.float64)


def _cat(parts: list[IntArray]) -> IntArray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
