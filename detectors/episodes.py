"""The alert lifecycle shared by every rule: episodes, cooldown, acknowledgement and escalation.

A detector reduces its samples to two per-sample signals: ``due`` (the most severe level whose
condition has held long enough, 0 for none) and ``clear_due`` (the normal condition has held long
enough). :meth:`EpisodeTable.advance` turns them into alert transitions with the semantics of a
set/reset latch per patient:

- no open episode: the first sample with ``due > 0`` at or after ``cooldown_until`` raises at ``due``;
- open episode: the first sample with ``clear_due`` clears it (and starts the cooldown); before that,
  any sample whose ``due`` exceeds the episode's running maximum re-raises it at the higher level;
- flapping suppression: an episode that is the K-th raise within a window (``Flapping``) is *held*:
  it clears only at a ``clear_long`` sample (the clearing condition held for the longer hold time).

Escalation runs from ``escalate_from``: the raise's event time, or, when the caller passes the
processing time ``now`` (the live stream), the later of the two, so that alerts raised from a
backlog upload do not escalate the instant they appear (issue 4, milestone-1 decision).

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
from detectors.columns import ParamRows, StateColumn, appended, finite_or_nan, grown, nan_first, opt, opt_float
from detectors.const import ACK_CLOCK_SLACK_S, FLAP_SLOTS, N_LEVELS, SEVERITY_NAMES
from detectors.errors import StateError
from detectors.rules import Flapping
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
    (no new episode before it; NaN = none), ``escalate_from`` (the escalation clock's start),
    ``held`` (the open episode is held open by flapping suppression) and ``recent`` (the latest raise
    times, newest last, shape ``(FLAP_SLOTS, n)``). Parameters, per row of the owner's
    :class:`~detectors.columns.ParamRows` (``rows``: shared with the detector, which adds the rows
    and grows them with the patients): ``cooldown_s``, ``escalate_after_s`` (shape ``(3, rows)``:
    per severity; NaN = never) and the flapping limits (``flap_raises`` 0 = off).
    """

    def __init__(self, rows: ParamRows | None = None) -> None:
        self.rows = rows if rows is not None else ParamRows()
        self.level: Int8Array = np.zeros(0, dtype=np.int8)
        self.since: FloatArray = np.zeros(0)
        self.raised_at: FloatArray = np.zeros(0)
        self.acked: BoolArray = np.zeros(0, dtype=np.bool_)
        self.acked_at: FloatArray = np.zeros(0)  # when the open alert was acknowledged (NaN: it was not)
        self.escalated: BoolArray = np.zeros(0, dtype=np.bool_)
        self.cooldown_until: FloatArray = np.zeros(0)
        self.cooldown_s: FloatArray = np.zeros(0)
        self.escalate_after_s: FloatArray = np.zeros((N_LEVELS, 0))
        self.escalate_from: FloatArray = np.zeros(0)
        self.held: BoolArray = np.zeros(0, dtype=np.bool_)
        # Held only once a rule of the table has flapping suppression or a record brings raise
        # times (:meth:`materialize`); until then a read-only all-NaN view of no memory: the ring is
        # 64 bytes per patient and rule, and most rules have no flapping (issue 20).
        self.recent: FloatArray = _no_ring(0)
        self.flap_raises: IntArray = np.zeros(0, dtype=np.int64)
        self.flap_within_s: FloatArray = np.zeros(0)
        self.flap_hold_s: FloatArray = np.zeros(0)

    def __len__(self) -> int:
        return len(self.level)

    def resize(self, n: int) -> None:
        """Make room for ``n`` patients; new ones get no open alert (their parameter row: the owner's)."""
        self.level = grown(self.level, n, 0)
        self.since = grown(self.since, n, np.nan)
        self.raised_at = grown(self.raised_at, n, np.nan)
        self.acked = grown(self.acked, n, False)
        self.acked_at = grown(self.acked_at, n, np.nan)
        self.escalated = grown(self.escalated, n, False)
        self.cooldown_until = grown(self.cooldown_until, n, np.nan)
        self.escalate_from = grown(self.escalate_from, n, np.nan)
        self.held = grown(self.held, n, False)
        self.recent = grown(self.recent, n, np.nan) if self.recent.flags.writeable else _no_ring(n)

    def add_row(self, *, cooldown_s: float, escalate_after_s: FloatArray, flapping: Flapping | None = None) -> None:
        """Append the parameters of the owner's newest row (:meth:`ParamRows.add`)."""
        self.cooldown_s = appended(self.cooldown_s, cooldown_s)
        self.escalate_after_s = appended(self.escalate_after_s, escalate_after_s)
        raises, within, hold = _flap_params(flapping)
        if flapping is not None:
            self.materialize()
        self.flap_raises = appended(self.flap_raises, raises)
        self.flap_within_s = appended(self.flap_within_s, within)
        self.flap_hold_s = appended(self.flap_hold_s, hold)

    @property
    def flapping_used(self) -> bool:
        """Whether any patient has flapping suppression (else its bookkeeping is skipped)."""
        return bool((self.flap_raises[self.rows.used()] > 0).any())

    # -- the latch ------------------------------------------------------------------------------

    def advance(
        self,
        view: MetricView,
        due: Int8Array,
        clear_due: BoolArray,
        onset: FloatArray,
        *,
        clear_long: BoolArray | None = None,
        now: float | None = None,
    ) -> Transitions:
        """Apply one batch of per-sample signals; return the transitions and update the state.

        ``view`` holds the rule's usable samples; ``due``/``clear_due`` are never both set on one
        sample; ``onset[i]`` is when the run that made level ``due[i]`` due began (the episode start
        if sample ``i`` raises). ``clear_long`` (a subset of ``clear_due``) clears held episodes;
        ``now`` is the processing time (escalation clock), ``None`` in backtests.
        """
        if len(view) == 0:
            return Transitions.empty()
        gp = view.group_patient
        level0 = self.level[gp]
        if not level0.any() and not due.any():
            return Transitions.empty()  # the usual case: nobody open, nobody due, nothing changes
        next_clear = next_true(clear_due)
        next_long = next_clear if clear_long is None else next_true(clear_long)
        latch = self._latch(view, due, (next_clear, next_long), level0)
        held0 = self.held[gp]
        upgrades, end_level = _upgrades(view, due, (next_clear, next_long), latch, level0, held0)
        transitions = self._assemble(view, due, onset, latch, upgrades)
        # State after the batch; level is read above (carried-in values) before being overwritten.
        self.level[gp] = np.where(latch.open_at_end, end_level, 0).astype(np.int8)
        self.cooldown_until[gp[latch.cleared]] = latch.cooldown_until[latch.cleared]
        self.held[gp] = latch.held & latch.open_at_end
        if latch.recent is not None:
            self.recent[:, gp] = latch.recent
        self._record(transitions, now)
        return transitions

    def _latch(
        self, view: MetricView, due: Int8Array, next_clears: tuple[IntArray, IntArray], level0: Int8Array
    ) -> _Latch:
        """Advance every patient's set/reset latch through the batch, one transition per round."""
        t, ends, gp = view.t, view.ends, view.group_patient
        next_clear, next_long = next_clears
        next_set = next_true(due > 0)
        pos = view.starts.copy()
        active = level0 > 0
        until = self.cooldown_until[gp]
        until = np.where(np.isnan(until), -np.inf, until)
        cooldown_s = self.cooldown_s[self.rows.of(gp)]
        cleared = np.zeros(len(pos), np.bool_)
        held = self.held[gp].copy()
        flap = _FlapRound(self, gp) if self.flapping_used else None
        raises: list[IntArray] = []
        raise_held: list[BoolArray] = []
        clears: list[IntArray] = []
        todo = np.arange(len(pos))
        while todo.size:
            # Open episodes end at their first clear_due sample (clear_long if held); that starts the cooldown.
            a = todo[active[todo]]
            c = np.where(held[a], next_long[pos[a]], next_clear[pos[a]])
            hit = c < ends[a]
            a, c = a[hit], c[hit]
            clears.append(c)
            pos[a] = c + 1
            active[a] = False
            held[a] = False
            cleared[a] = True
            until[a] = t[c] + cooldown_s[a]
            # Closed ones (including those just cleared) raise at their next due sample after cooldown.
            b = todo[~active[todo] & (pos[todo] < ends[todo])]
            r = _next_raise(t, pos[b], ends[b], until[b], next_set)
            hit = r < ends[b]
            b, r = b[hit], r[hit]
            if flap is not None:
                held[b] = flap.raised(b, t[r])
            raises.append(r)
            raise_held.append(held[b])
            pos[b] = r + 1
            active[b] = True
            todo = b[pos[b] < ends[b]]
        raise_index = _cat(raises)
        order = np.argsort(raise_index, kind="stable")
        held_of_raise = np.concatenate(raise_held)[order] if raise_held else np.zeros(0, np.bool_)
        return _Latch(
            raises=raise_index[order],
            raise_held=held_of_raise.astype(np.bool_),
            clears=np.sort(_cat(clears)),
            open_at_end=active,
            cleared=cleared,
            cooldown_until=until,
            held=held,
            recent=None if flap is None else flap.recent,
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

    def _record(self, tr: Transitions, now: float | None) -> None:
        """Lifecycle fields after a batch: each patient's state is set by its last transition."""
        if len(tr) == 0:
            return
        last = np.ones(len(tr), np.bool_)
        last[:-1] = tr.patient[1:] != tr.patient[:-1]
        p = tr.patient[last]
        raised = tr.kind[last] == RAISE
        self.since[p] = np.where(raised, tr.since[last], np.nan)
        self.raised_at[p] = np.where(raised, tr.time[last], np.nan)
        clock = tr.time[last] if now is None else np.maximum(tr.time[last], now)
        self.escalate_from[p] = np.where(raised, clock, np.nan)
        # A raise or an upgrade needs a nurse's attention again; a clear closes the alert.
        self.acked[p] = False
        self.acked_at[p] = np.nan
        self.escalated[p] = False

    def raise_at(self, patient: IntArray, level: Int8Array, time: float, since: FloatArray) -> Transitions:
        """Raise (or upgrade, if open at a lower level) alerts at ``time`` without a sample: staleness.

        ``patient`` must be ascending and unique; new episodes honour the cooldown and start at ``since``.
        ``time`` is also the processing time (``tick``'s ``now``).
        """
        current = self.level[patient]
        waiting = (current == 0) & (time < self.cooldown_until[patient])
        go = (level > current) & ~waiting
        patient, level, since, current = patient[go], level[go], since[go], current[go]
        upgrade = current > 0
        tr = Transitions(
            patient=patient,
            kind=np.full(len(patient), RAISE, np.int8),
            level=level.astype(np.int8),
            upgrade=upgrade,
            since=np.where(upgrade, self.since[patient], since),
            time=np.full(len(patient), time),
            value=np.full(len(patient), np.nan),
        )
        self.level[patient] = level
        self._record(tr, time)
        return tr

    # -- acknowledgement and escalation ----------------------------------------------------------

    def acknowledge(self, patient: int, at: float = math.nan) -> bool:
        """Mark the patient's open alert acknowledged (at ``at``); ``False`` if there is none, it already
        was, or ``at`` is from before the alert's escalation clock started (minus ``ACK_CLOCK_SLACK_S``):
        such an ack answers the alert before it worsened or alarmed again (a warning acknowledged while,
        unknown to the nurse, it became critical), and stopped the escalation of what nobody had seen."""
        if self.level[patient] == 0 or self.acked[patient]:
            return False
        if at < self.escalate_from[patient] - ACK_CLOCK_SLACK_S:  # NaN (no time given): accepted
            return False
        self.acked[patient] = True
        self.acked_at[patient] = at
        return True

    def realarm(self, now: float, after_s: FloatArray) -> IntArray:
        """Patients whose acknowledged alert is still open ``after_s`` (per severity, shape ``(3,)``;
        inf = never) after the acknowledgement: acknowledged is not resolved. They need a nurse's
        attention again: no longer acknowledged, the escalation clock restarts at ``now``."""
        # Only open alerts can be due: one pass over every patient to find them (a tick runs every
        # second over every rule, so its cost per patient is what grows with the patient count),
        # then the test on those alone.
        open_ = np.flatnonzero(self.level > 0)
        if len(open_) == 0:
            return np.zeros(0, np.int64)
        limit = after_s[self.level[open_].astype(np.int64) - 1]
        patients = open_[self.acked[open_] & (now >= self.acked_at[open_] + limit)]
        self.acked[patients] = False
        self.acked_at[patients] = np.nan
        self.escalated[patients] = False
        self.escalate_from[patients] = now
        return patients

    def escalate(self, now: float) -> IntArray:
        """Patients whose open alert has gone unacknowledged past its severity's limit; marks them.

        The clock runs from the latest raise or upgrade: its event time, or the processing time
        when that was later (``Engine.process(now=...)``), so a backlog does not escalate at once.
        """
        open_ = np.flatnonzero(self.level > 0)  # only open alerts can escalate (see realarm)
        if len(open_) == 0:
            return np.zeros(0, np.int64)
        limit = self.escalate_after_s[self.level[open_].astype(np.int64) - 1, self.rows.row[open_]]
        due = ~self.acked[open_] & ~self.escalated[open_] & (now >= self.escalate_from[open_] + limit)
        patients = open_[due]
        self.escalated[patients] = True
        return patients

    # -- per-patient records ---------------------------------------------------------------------

    def export_patient(self, patient: int) -> dict[str, Any]:
        """The patient's alert state as a JSON-able dict; ``{}`` when there is none (no alert open, no
        cooldown, no recent raise), which :meth:`import_patient` reads back as exactly that: state
        is checkpointed per patient, and most patients have no alert."""
        level = int(self.level[patient])
        if not level and math.isnan(self.cooldown_until[patient]) \
                and all(x != x for x in self.recent[:, patient].tolist()):  # x != x: NaN
            return {}
        return {
            "level": SEVERITY_NAMES[level - 1] if level else None,
            "since": opt(self.since[patient]),
            "raised_at": opt(self.raised_at[patient]),
            "acked": bool(self.acked[patient]),
            "acked_at": opt(self.acked_at[patient]),
            "escalated": bool(self.escalated[patient]),
            "cooldown_until": opt(self.cooldown_until[patient]),
            "escalate_from": opt(self.escalate_from[patient]),
            "held": bool(self.held[patient]),
            "recent": [x for x in self.recent[:, patient].tolist() if x == x],  # x == x: not NaN
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
        self.acked_at[patient] = opt_float(record, "acked_at") if self.acked[patient] else np.nan
        self.escalated[patient] = bool(record.get("escalated", False)) and code > 0
        self.cooldown_until[patient] = opt_float(record, "cooldown_until")
        escalate_from = opt_float(record, "escalate_from")
        self.escalate_from[patient] = (raised_at if math.isnan(escalate_from) else escalate_from) if code else np.nan
        self.held[patient] = bool(record.get("held", False)) and code > 0
        recent = _recent(record.get("recent", []))
        if not np.isnan(recent).all():
            self.materialize()
        if self.recent.flags.writeable:  # else all NaN already, as written
            self.recent[:, patient] = recent

    def materialize(self) -> None:
        """Hold the raise-time ring (all NaN so far) as a real array from now on."""
        if not self.recent.flags.writeable:
            self.recent = np.full(self.recent.shape, np.nan)

    def state_columns(self) -> list[StateColumn]:
        """The per-patient alert state arrays (see :class:`~detectors.columns.StateColumn`)."""
        return [
            (self.level, 0), (self.since, 0), (self.raised_at, 0), (self.acked, 0), (self.acked_at, 0),
            (self.escalated, 0), (self.cooldown_until, 0), (self.escalate_from, 0), (self.held, 0),
            (self.recent, 1),
        ]

    def settle(self, blocks: list[FloatArray]) -> BoolArray:
        """Which rows of packed entries (blocks of :meth:`state_columns`) an export and import would
        leave as they are, without error (see :mod:`detectors.columns`): every float finite or NaN,
        a known level; an open alert has since, raised_at and escalate_from; no alert has none of
        them, nor an acknowledgement, escalation or hold; acked_at only when acknowledged; raise
        times newest last, padding in front."""
        level, since, raised_at, acked, acked_at, escalated, _, escalate_from, held, recent = blocks
        code = level[:, 0]
        is_open = code > 0
        times = np.concatenate((since, raised_at, acked_at, escalate_from), axis=1)
        nan = np.isnan(times)
        floats = np.concatenate((times, blocks[6], recent), axis=1)
        ok: BoolArray = (
            (code <= len(SEVERITY_NAMES))
            & finite_or_nan(floats)
            & np.where(is_open, ~nan[:, 0] & ~nan[:, 1] & ~nan[:, 3], nan[:, 0] & nan[:, 1] & nan[:, 3])
            & (is_open | ((acked[:, 0] == 0) & (escalated[:, 0] == 0) & (held[:, 0] == 0)))
            & ((acked[:, 0] == 1) | nan[:, 2])
            & nan_first(recent)
        )
        return ok

    def reset_patient(self, patient: int) -> None:
        """Forget the patient's alert state (parameters stay)."""
        self.import_patient(patient, {})


@dataclass(frozen=True, slots=True)
class _Latch:
    raises: IntArray  # sample indices that raise a new episode, ascending
    raise_held: BoolArray  # per raise: the new episode is held open (flapping)
    clears: IntArray  # sample indices that clear an episode, ascending
    open_at_end: BoolArray  # per group: an episode is open after the batch
    cleared: BoolArray  # per group: some episode cleared in the batch
    cooldown_until: FloatArray  # per group: cooldown end after the batch's last clear
    held: BoolArray  # per group: the episode open at the end is held
    recent: FloatArray | None  # per group: latest raise times (None: no flapping rule)


class _FlapRound:
    """Raise-time rings of the groups of one batch, advanced by the latch as episodes raise."""

    def __init__(self, table: EpisodeTable, gp: IntArray) -> None:
        self.recent = table.recent[:, gp].copy()
        rows = table.rows.of(gp)
        self.raises = table.flap_raises[rows]
        self.within = table.flap_within_s[rows]

    def raised(self, groups: IntArray, t: FloatArray) -> BoolArray:
        """Record raises of ``groups`` at ``t``; whether each new episode is held (K-th raise in the window)."""
        earlier = (self.recent[:, groups] > t - self.within[groups]).sum(axis=0)
        held = (self.raises[groups] > 0) & (earlier + 1 >= self.raises[groups])
        self.recent[:-1, groups] = self.recent[1:, groups]
        self.recent[-1, groups] = t
        return np.asarray(held, dtype=np.bool_)


def _no_ring(n: int) -> FloatArray:
    """A read-only all-NaN raise-time ring for ``n`` patients that takes no memory."""
    ring: FloatArray = np.broadcast_to(np.float64(np.nan), (FLAP_SLOTS, n))
    return ring


def _flap_params(flapping: Flapping | None) -> tuple[int, float, float]:
    if flapping is None:
        return 0, np.nan, np.nan
    return flapping.raises, flapping.within_s, flapping.hold_s


def _recent(values: Any) -> FloatArray:
    """A stored raise-time ring as a ``FLAP_SLOTS`` column, newest last, NaN padding in front."""
    if not isinstance(values, list) or len(values) > FLAP_SLOTS:
        raise StateError(f"recent must be a list of at most {FLAP_SLOTS} times")
    if any(isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) for x in values):
        raise StateError("recent must hold finite times")
    column = np.full(FLAP_SLOTS, np.nan)
    if values:
        column[FLAP_SLOTS - len(values) :] = values
    return column


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
    view: MetricView,
    due: Int8Array,
    next_clears: tuple[IntArray, IntArray],
    latch: _Latch,
    level0: Int8Array,
    held0: BoolArray,
) -> tuple[tuple[IntArray, Int8Array], Int8Array]:
    """Samples where an open episode's severity rises (and to what), and each group's final level.

    Each episode spans from its raise (or the batch start, when carried in) to its clearing sample;
    inside it the severity is the running maximum of ``due``, computed for all episodes at once by
    offsetting each episode's values by ``4 * episode number`` before one ``maximum.accumulate``.
    """
    n = len(view)
    next_clear, next_long = next_clears
    raises = latch.raises
    carried = np.flatnonzero(level0 > 0)
    carried_start = view.starts[carried]
    start = np.concatenate((raises, carried_start))
    start_held = np.concatenate((latch.raise_held, held0[carried]))
    if start.size == 0:
        return (np.zeros(0, np.int64), np.zeros(0, np.int8)), np.zeros(len(view.starts), np.int8)
    start_level = np.concatenate((due[raises], level0[carried]))
    group_end = view.per_sample(view.ends)[start]
    end = np.minimum(np.where(start_held, next_long[start], next_clear[start]), group_end)
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
