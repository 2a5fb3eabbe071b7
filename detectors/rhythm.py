"""Rhythm detector: atrial-fibrillation screening from RR intervals over sliding beat windows.

Every ``every_beats`` beats of a patient, its last ``window_beats`` RR intervals are judged (all
windows of a batch at once, as rows of a matrix built with ``sliding_window_view``):

1. beat errors of wearables: an interval below 0.6 or above 1.6 times the window median is an extra
   (split) or missed beat, not rhythm, and is dropped (RR ~ 0.5x or 2x the median);
2. ectopy: of the remaining, the ``trim_beats`` largest and smallest are dropped, as Dash et al.
   drop the 8 largest and smallest of 128 (an ectopic beat makes a short-long pair);
3. irregularity (Dash S, Chon KH, Lu S, Raeder EA. Automatic real time detection of atrial
   fibrillation. Ann Biomed Eng 2009;37(9):1701-1709): normalized RMSSD of successive retained
   intervals > ``nrmssd_min``, turning-point ratio of retained triples within
   ``[tpr_low, tpr_high]`` (a random sequence has 2/3), and Shannon entropy of a 16-bin histogram
   of the retained intervals, normalized to [0, 1], >= ``entropy_min``.

That is ``method: dash``. With ``method: model`` (the default rule set's choice) steps 2-3 are
replaced by :mod:`detectors.af_model`: its own beat-error filter, thirteen RR features and a small
learned classifier (a one-hidden-layer network). A window with fewer than half its beats kept by that
filter is judged by the Dash criteria (trim scaled to the window), or regular when its intervals
repeat every 2-6 beats (an early-coupled geminy): AF of CV >= ~0.4 was otherwise left unknown.

Each judged window's verdict is 1 (irregular), 0 (regular) or NaN (the window spans a gap longer
than ``max_gap_s``, or under half its beats were kept by the filter that judged it). With 64 beats
the turning-point ratio of true AF falls outside Dash's bounds in ~5 % of windows, so the signal is
the share of irregular verdicts among the last ``votes`` judged windows (NaN ignored), carried to
the beats in between;
levels have threshold 0.5, so ``for`` means "a majority irregular for".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from detectors import af_model
from detectors.batch import BoolArray, FloatArray, IntArray, MetricView
from detectors.columns import StateColumn, appended, finite_or_nan, grown, grown_rows, opt, opt_float, whole
from detectors.const import CLEARED, ESCALATED, RHYTHM_MAX_VOTES
from detectors.errors import StateError
from detectors.events import format_duration
from detectors.history import History
from detectors.rules import Period, RhythmRule, ThresholdRule
from detectors.runs import run_starts
from detectors.signal import SignalDetector
from detectors.threshold import during, level_of

MISSED_BEAT_RATIO: Final = 1.6  # RR ~ 2x median: the wearable missed a beat
EXTRA_BEAT_RATIO: Final = 0.6  # RR ~ 0.5x median: a spurious extra beat split an interval
ENTROPY_BINS: Final = 16  # Dash et al. 2009
DASH_WINDOW: Final = 128  # Dash et al. 2009's window, which their trim of 8 beats is for
REPEAT_RATIO: Final = 0.5  # _repeats: a lag-k median difference under half the lag-1 one
FALLBACK_DASH = True  # the model's emptied windows judged by the Dash criteria (benchmarks switch it off for A/B)


class RhythmDetector(SignalDetector):
    """One :class:`~detectors.rules.RhythmRule` over every patient."""

    def __init__(self, rule: RhythmRule) -> None:
        super().__init__(rule)
        self.window = rule.window_beats
        # The last ``window`` beats of each patient as a ring (beat number b at slot (b - 1) % window):
        # appending a batch writes only its own beats, never shifts every patient's history.
        self.ring: FloatArray = np.zeros((0, self.window))
        self.total: FloatArray = np.zeros(0)  # beats written so far (the ring's write position)
        self.run: FloatArray = np.zeros(0)  # consecutive beats without a gap, capped at the window
        self.verdicts = History(RHYTHM_MAX_VOTES - 1)
        self.beats: FloatArray = np.zeros(0)
        self.carried: FloatArray = np.zeros(0)
        self.params: dict[str, FloatArray] = {}  # per parameter row (see SignalDetector.rows)

    def resize_state(self, n: int) -> None:
        """Room for ``n`` patients' beats and beat counters."""
        self.ring = grown_rows(self.ring, n, np.nan)
        self.total = grown(self.total, n, 0.0)
        self.run = grown(self.run, n, 0.0)
        self.verdicts.resize(n)
        self.beats = grown(self.beats, n, 0.0)
        self.carried = grown(self.carried, n, np.nan)

    def add_row_extra(self, rule: ThresholdRule) -> None:
        """The rhythm parameters of a new parameter row."""
        assert isinstance(rule, RhythmRule)
        for name, value in _params(rule).items():
            self.params[name] = appended(self.params.get(name, np.zeros(0)), value)

    def configure(self, patient: int, rule: ThresholdRule) -> None:
        """Apply a per-patient override (the window length is fixed per rule: it sizes the state)."""
        assert isinstance(rule, RhythmRule)
        if rule.window_beats != self.window:
            raise ValueError(f"an override of {self.name!r} must keep its window")
        super().configure(patient, rule)

    def signal(self, view: MetricView) -> FloatArray:
        """1 where the latest judged window is irregular, 0 where regular, NaN where unknown."""
        p = view.patient
        r = self.rows.of(p)  # parameter rows
        rank = np.arange(len(view)) - view.per_sample(view.starts)
        count = self.beats[p] + rank + 1
        judged = np.flatnonzero(np.mod(count, self.params["every"][r]) == 0)
        beat = view.per_sample(self.total[view.group_patient]) + rank + 1
        complete = self._run_length(view, beat) >= self.window
        rr = self._windows(view, beat, judged)
        params = {name: column[r[judged]] for name, column in self.params.items()}
        verdict = irregular(rr, complete[judged], params)
        self._append(view, beat, rank)
        share = self._vote(view, judged, verdict)
        out = _carry(view, judged, share, self.carried)
        gp, last = view.group_patient, view.ends - 1
        self.beats[gp] = np.mod(count[last], self.params["every"][self.rows.of(gp)])
        self.carried[gp] = out[last]
        return out

    def _run_length(self, view: MetricView, beat: FloatArray) -> FloatArray:
        """Per beat: how many consecutive beats (no gap over ``max_gap_s``) end with it; updates the state."""
        gp, t = view.group_patient, view.t
        previous = np.empty_like(t)
        previous[1:] = t[:-1]
        previous[view.starts] = self.last_t[gp]
        gap = ~(t - previous <= self.max_gap_s[self.rows.of(view.patient)])  # NaN (first beat ever) is a gap too
        first = view.first_mask()
        run0 = self.run[gp]
        carried = np.where(run0 > 0, self.total[gp] - run0 + 1, np.nan)  # the carried run's first beat
        carried_per_sample = np.full(len(t), np.nan)
        carried_per_sample[view.starts] = carried
        start = run_starts(np.ones(len(t), np.bool_), beat, first | gap, np.where(gap, np.nan, carried_per_sample))
        length = beat - start + 1
        self.run[gp] = np.minimum(length[view.ends - 1], self.window)
        return length

    def _windows(self, view: MetricView, beat: FloatArray, rows: IntArray) -> FloatArray:
        """The last ``window`` RR intervals up to each judged beat: from the batch, else from the ring."""
        w = self.window
        b = beat[rows][:, None] - w + 1 + np.arange(w)[None, :]
        p = view.patient[rows][:, None]
        before = self.total[view.patient[rows]][:, None]
        in_batch = b > before
        first = view.per_sample(view.starts)[rows][:, None]
        from_batch = view.value[np.clip(first + (b - before - 1).astype(np.int64), 0, max(len(view) - 1, 0))]
        from_ring = self.ring[p, np.mod(b - 1, w).astype(np.int64)]
        return np.where(in_batch, from_batch, from_ring)

    def _append(self, view: MetricView, beat: FloatArray, rank: IntArray) -> None:
        """Write each patient's last ``window`` beats of the batch into its ring."""
        length = view.per_sample(view.ends - view.starts)
        tail = rank >= length - self.window
        self.ring[view.patient[tail], np.mod(beat[tail] - 1, self.window).astype(np.int64)] = view.value[tail]
        self.total[view.group_patient] += view.ends - view.starts

    def _vote(self, view: MetricView, judged: IntArray, verdict: FloatArray) -> FloatArray:
        """Per judged window: the share of irregular verdicts among its patient's last ``votes``."""
        verdicts = MetricView.from_sorted(view.patient[judged], view.t[judged], verdict)
        _, last = self.verdicts.windows(verdicts, RHYTHM_MAX_VOTES)
        votes = self.params["votes"][self.rows.of(view.patient[judged])].astype(np.int64)
        recent = np.arange(RHYTHM_MAX_VOTES)[None, :] >= (RHYTHM_MAX_VOTES - votes)[:, None]
        counted = recent & ~np.isnan(last)
        irregular_votes = np.where(counted, last, 0.0).sum(axis=1)
        n = counted.sum(axis=1)
        return np.where(n > 0, irregular_votes / np.maximum(n, 1), np.nan)

    def export_extra(self, patient: int) -> dict[str, Any]:
        """Recent beats and verdicts, the beat counter and the latest vote."""
        kept = int(min(self.run[patient], self.window - 1, self.total[patient]))
        last = self.total[patient] - np.arange(kept, 0, -1)  # beat numbers - 1, oldest first
        rr = self.ring[patient, np.mod(last, self.window).astype(np.int64)]
        return {
            "rr": rr.tolist(),
            "run": int(self.run[patient]),
            "verdicts": self.verdicts.export_patient(patient),
            "beats": int(self.beats[patient]),
            "verdict": opt(self.carried[patient]),
        }

    def extra_columns(self) -> list[StateColumn]:
        """The beat ring, the counters, the verdict history and the latest verdict."""
        return [(self.ring, 0), (self.total, 0), (self.run, 0), *self.verdicts.state_columns(),
                (self.beats, 0), (self.carried, 0)]

    def settle_extra(self, blocks: list[FloatArray]) -> BoolArray:
        """Which rows of beat rings, counters and verdicts an export and import would leave as they are
        once their beats are renumbered from 1 as import does (done here, in place: the kept beats
        move to the front of the ring, the rest NaN, the beat counter their number): finite kept
        beats, whole counters (a run of at most the window), the verdict history's own conditions."""
        ring, total, run, verdict_t, verdict_v, beats, carried = blocks
        counters = np.concatenate((total, run, beats), axis=1)
        ok = whole(counters) & (total[:, 0] >= 0) & (total[:, 0] < 2.0**53) & (run[:, 0] >= 0) \
            & (run[:, 0] <= self.window)
        ok &= finite_or_nan(carried) & self.verdicts.settle([verdict_t, verdict_v])
        kept = np.where(ok, np.minimum(np.minimum(run[:, 0], self.window - 1), total[:, 0]), 0).astype(np.int64)
        first = np.where(ok, total[:, 0], 0).astype(np.int64) - kept  # the oldest kept beat's number - 1
        i = np.arange(self.window)[None, :]
        keep = i < kept[:, None]
        moved = np.where(keep, np.take_along_axis(ring, np.mod(first[:, None] + i, self.window), axis=1), np.nan)
        ok &= ~(keep & ~np.isfinite(moved)).any(axis=1)
        ring[ok] = moved[ok]
        total[ok, 0] = kept[ok]
        return ok

    def import_extra(self, patient: int, record: Mapping[str, Any]) -> None:
        """Restore the recent beats, the beat counter and the latest verdict."""
        rr = record.get("rr", [])
        if not isinstance(rr, list) or len(rr) >= self.window:
            raise StateError(f"rule {self.name}: rr must be a list of fewer than {self.window} intervals")
        values = {str(i): x for i, x in enumerate(rr)}
        intervals = [opt_float(values, str(i)) for i in range(len(rr))]
        if any(math.isnan(x) for x in intervals):
            raise StateError(f"rule {self.name}: rr must hold numbers")
        run = opt_float(record, "run")
        # Beats are renumbered from 1: only their order and the run length matter.
        self.ring[patient] = np.nan
        self.ring[patient, : len(intervals)] = intervals
        self.total[patient] = len(intervals)
        self.run[patient] = 0.0 if math.isnan(run) else min(max(run, 0.0), self.window)
        self.verdicts.import_patient(patient, record.get("verdicts"))
        beats = opt_float(record, "beats")
        self.beats[patient] = 0.0 if math.isnan(beats) else beats
        self.carried[patient] = opt_float(record, "verdict")

    def describe(self, rule: ThresholdRule, period: Period | None, state: str, level: int, value: float) -> str:
        """E.g. "Irregular rhythm suggestive of atrial fibrillation for 5 min (64-beat windows)"."""
        assert isinstance(rule, RhythmRule)
        if state == CLEARED:
            return f"Rhythm regular again{during(period)}"
        lv = level_of(rule, period, level)
        text = "Irregular rhythm suggestive of atrial fibrillation"
        if lv is not None and lv.for_s:
            text += f" for {format_duration(lv.for_s)}"
        text += f" ({rule.window_beats}-beat windows){during(period)}"
        if state == ESCALATED:
            return f"{text}: alert unacknowledged"
        return text


def _params(rule: RhythmRule) -> dict[str, float]:
    return {
        "every": float(rule.every_beats),
        "votes": float(rule.votes),
        "trim": float(rule.trim_beats),
        "nrmssd": rule.nrmssd_min,
        "tpr_low": rule.tpr_low,
        "tpr_high": rule.tpr_high,
        "entropy": rule.entropy_min,
        "model": float(rule.method == "model"),
    }


def irregular(rr: FloatArray, complete: BoolArray, params: Mapping[str, FloatArray]) -> FloatArray:
    """Per window row: 1.0 irregular, 0.0 regular, NaN unknown (``complete``: a gap-free window)."""
    if len(rr) == 0:
        return np.zeros(0)
    complete = complete & np.isfinite(rr).all(axis=1)
    rr = np.where(complete[:, None], rr, 1.0)  # placeholders keep the arithmetic quiet; rows stay NaN
    out = np.full(len(rr), np.nan)
    learned = params["model"] > 0
    # Only complete windows get a verdict (both methods give NaN for the others), and each row's
    # features are its own: incomplete rows (a patient's first window's worth of beats, a gap) are
    # left out of the arithmetic instead of computed and thrown away.
    dash = np.flatnonzero(~learned & complete)
    if len(dash):
        sub = {name: column[dash] for name, column in params.items()}
        out[dash] = _dash(rr[dash], complete[dash], sub)
    chosen = np.flatnonzero(learned & complete)
    if len(chosen):
        out[chosen] = _learned(rr[chosen], complete[chosen])
        # A gap-free window whose beats the model's beat-error filter mostly rejected is too irregular
        # for beat errors to explain (AF of CV >= ~0.4, whose short and long cycles are judged split
        # or merged beats), or a geminy of early coupling: the Dash criteria judge it, with their own
        # filter and the trim scaled to the window (8 of 128), unless its intervals repeat (issue 17,
        # seventh round); before, it was left unknown.
        emptied = chosen[np.isnan(out[chosen]) & (rr[chosen] > 0).all(axis=1)] if FALLBACK_DASH else chosen[:0]
        if len(emptied):
            sub = {name: column[emptied] for name, column in params.items()}
            sub["trim"] = np.round(sub["trim"] * rr.shape[1] / DASH_WINDOW)
            by_dash = _dash(rr[emptied], complete[emptied], sub)
            out[emptied] = np.where(_repeats(rr[emptied]), np.where(np.isnan(by_dash), np.nan, 0.0), by_dash)
    return out


def _repeats(rr: FloatArray) -> BoolArray:
    """Per row: the intervals repeat with a period of 2-6 beats (bigeminy, trigeminy, ...), unfiltered.

    The smallest median |RR(i) - RR(i+k)|, k = 2..6, under half the median |RR(i) - RR(i+1)|: a
    geminy's premature beats and pauses come back every k beats (the Dash criteria's turning
    points and histogram entropy call a trigeminy irregular); AF's intervals are independent (all
    lags alike, ratio ~1).
    """
    x = rr / np.median(rr, axis=1, keepdims=True)
    lag1 = np.median(np.abs(np.diff(x, axis=1)), axis=1)
    lags = np.stack([np.median(np.abs(x[:, k:] - x[:, :-k]), axis=1) for k in range(2, af_model.MAX_LAG + 1)],
                    axis=1)
    repeating: BoolArray = lags.min(axis=1) < REPEAT_RATIO * lag1
    return repeating


def _dash(rr: FloatArray, complete: BoolArray, params: Mapping[str, FloatArray]) -> FloatArray:
    """Dash et al. 2009 criteria on the cleaned and trimmed intervals."""
    keep = _cleaned(rr, params["trim"])
    enough = keep.sum(axis=1) * 2 >= rr.shape[1]
    nrmssd, tpr, entropy = features(rr, keep)
    verdict = (nrmssd > params["nrmssd"]) & (tpr >= params["tpr_low"]) & (tpr <= params["tpr_high"])
    verdict &= entropy >= params["entropy"]
    return np.where(complete & enough, verdict.astype(np.float64), np.nan)


def _learned(rr: FloatArray, complete: BoolArray) -> FloatArray:
    """The learned classifier of :mod:`detectors.af_model` (probability of AF >= 0.5)."""
    keep = af_model.cleaned(np.maximum(rr, 1e-9))
    enough = keep.sum(axis=1) * 2 >= rr.shape[1]
    columns = af_model.features(rr, keep)
    usable = complete & enough & (rr > 0).all(axis=1) & np.isfinite(columns).all(axis=1)
    p = af_model.probability(np.where(usable[:, None], columns, 0.0))
    return np.where(usable, (p >= af_model.THRESHOLD).astype(np.float64), np.nan)


def _cleaned(rr: FloatArray, trim: FloatArray) -> BoolArray:
    """Which intervals survive the beat-error filter and the trimming of the extremes."""
    median = np.median(rr, axis=1, keepdims=True)
    ok = (rr >= EXTRA_BEAT_RATIO * median) & (rr <= MISSED_BEAT_RATIO * median)
    ordered = np.sort(np.where(ok, rr, np.inf), axis=1)
    n_ok = ok.sum(axis=1)
    k = trim.astype(np.int64)
    rows = np.arange(len(rr))
    low = ordered[rows, np.minimum(k, rr.shape[1] - 1)]
    high = ordered[rows, np.clip(n_ok - 1 - k, 0, rr.shape[1] - 1)]
    keep: BoolArray = ok & (rr >= low[:, None]) & (rr <= high[:, None])
    return keep


def features(rr: FloatArray, keep: BoolArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Normalized RMSSD, turning-point ratio and normalized Shannon entropy of the kept intervals.

    As Dash et al. do, the dropped intervals are removed and the kept ones taken as one sequence:
    each row is compacted (kept intervals first, in order) before the successive differences.
    """
    entropy = _entropy(rr, keep)
    # Compaction by scatter: each kept interval goes to its rank among the kept ones of its row.
    rank = np.cumsum(keep, axis=1) - 1
    rows = np.broadcast_to(np.arange(len(rr))[:, None], rr.shape)
    seq = np.zeros_like(rr)
    seq[rows[keep], rank[keep]] = rr[keep]
    n = keep.sum(axis=1)
    valid = np.arange(rr.shape[1])[None, :] < n[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        pair = valid[:, 1:]
        step = np.diff(seq, axis=1)
        rmssd = np.sqrt(np.where(pair, step * step, 0.0).sum(axis=1) / pair.sum(axis=1))
        mean = np.where(valid, seq, 0.0).sum(axis=1) / n
        triple = valid[:, 2:]
        turning = (seq[:, 1:-1] - seq[:, :-2]) * (seq[:, 1:-1] - seq[:, 2:]) > 0
        tpr = (turning & triple).sum(axis=1) / triple.sum(axis=1)
    return rmssd / mean, tpr, entropy


def _entropy(rr: FloatArray, keep: BoolArray) -> FloatArray:
    """Shannon entropy of a 16-bin histogram over each row's kept range, divided by log(16)."""
    low = np.min(np.where(keep, rr, np.inf), axis=1, keepdims=True)
    high = np.max(np.where(keep, rr, -np.inf), axis=1, keepdims=True)
    width = np.where(high > low, high - low, 1.0)
    bins = np.clip(np.floor((rr - low) / width * ENTROPY_BINS), 0, ENTROPY_BINS - 1).astype(np.int64)
    cell = (np.arange(len(rr))[:, None] * ENTROPY_BINS + bins)[keep]
    counts = np.bincount(cell, minlength=len(rr) * ENTROPY_BINS).reshape(len(rr), ENTROPY_BINS).astype(np.float64)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    logs = np.log(np.where(share > 0, share, 1.0))
    entropy: FloatArray = -(share * logs).sum(axis=1) / math.log(ENTROPY_BINS)
    return entropy


def _carry(view: MetricView, judged: IntArray, verdict: FloatArray, carried: FloatArray) -> FloatArray:
    """Each beat's latest verdict: of the latest judged beat of its patient, else the one carried in."""
    n = len(view)
    values = np.full(n, np.nan)
    values[judged] = verdict
    is_judged = np.zeros(n, np.bool_)
    is_judged[judged] = True
    latest = np.maximum.accumulate(np.where(is_judged, np.arange(n), -1))
    group_start = view.per_sample(view.starts)
    own = latest >= group_start
    return np.where(own, values[np.maximum(latest, 0)], carried[view.patient])
