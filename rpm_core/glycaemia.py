"""CGM metrics of the International Consensus on Time in Range beyond the ranges themselves.

- data sufficiency: Battelino T et al., Diabetes Care 2019;42:1593-1603, table 1 and "Data
  sufficiency": a report needs at least 14 days of data with at least 70 % of possible CGM
  readings (Riddlesworth TD et al., Diabetes Technol Ther 2018;20:314-316: 14 days predict three
  months of TIR, mean and hypoglycaemia). Below that, GMI in particular is not representative.
- hypoglycaemia episodes: Battelino 2019 "CGM-based glycemic event definitions" (after Danne T
  et al., Diabetes Care 2017;40:1631-1640): a level-1 event is at least 15 consecutive minutes
  below 70 mg/dL (level 2: below 54 mg/dL); it ends with at least 15 consecutive minutes at or
  above the threshold.
- units: mmol/L = mg/dL / 18.0 (glucose 180.16 g/mol; 18 is the factor CGM makers and the
  consensus tables use: 54 mg/dL = 3.0, 70 = 3.9, 180 = 10.0, 250 = 13.9 mmol/L).

Pure numpy; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Unit = Literal["mg/dL", "mmol/L"]

SUFFICIENT_DAYS: Final = 14.0
SUFFICIENT_WEAR_PCT: Final = 70.0
EPISODE_MIN_S: Final = 15 * 60.0  # Battelino 2019: ≥ 15 consecutive minutes below, and ≥ 15 above to end
HYPO_LEVEL1_MG_DL: Final = 70.0
HYPO_LEVEL2_MG_DL: Final = 54.0
MG_DL_PER_MMOL_L: Final = 18.0
# A gap longer than this between two CGM readings is missing data: it ends a run of readings below
# a threshold (the sensor did not say the patient stayed low). Three missed 5-minute readings.
CGM_GAP_S: Final = 20 * 60.0


@dataclass(frozen=True)
class Sufficiency:
    """Whether a period holds enough CGM data for a consensus report."""

    days: float
    wear_pct: float

    @property
    def enough_days(self) -> bool:
        """At least 14 days."""
        return self.days >= SUFFICIENT_DAYS - 1e-9

    @property
    def enough_wear(self) -> bool:
        """At least 70 % of the possible CGM readings."""
        return self.wear_pct >= SUFFICIENT_WEAR_PCT

    @property
    def sufficient(self) -> bool:
        """Both: the metrics, GMI included, can be reported."""
        return self.enough_days and self.enough_wear

    def warning(self) -> str:
        """Plain text for the clinician; empty when sufficient."""
        if self.sufficient:
            return ""
        why = []
        if not self.enough_days:
            why.append(f"the period is {self.days:.1f} days (needs ≥ {SUFFICIENT_DAYS:.0f})")
        if not self.enough_wear:
            why.append(f"CGM wear is {self.wear_pct:.0f} % (needs ≥ {SUFFICIENT_WEAR_PCT:.0f} %)")
        return ("Insufficient CGM data: " + " and ".join(why) + ". The metrics may not represent this patient's "
                "usual glucose; GMI is withheld (International Consensus on Time in Range, 2019).")


@dataclass(frozen=True)
class Episodes:
    """Hypoglycaemia episodes below one threshold: how many and their durations (seconds)."""

    threshold_mg_dl: float
    starts: Floats
    durations_s: Floats

    @property
    def count(self) -> int:
        """Number of episodes."""
        return int(self.starts.size)

    @property
    def median_s(self) -> float | None:
        """Median duration, None without episodes."""
        return float(np.median(self.durations_s)) if self.durations_s.size else None


def episodes(t: Floats, v: Floats, threshold_mg_dl: float, *, interval_s: float = 300.0) -> Episodes:
    """Episodes of readings below ``threshold_mg_dl`` per the consensus (readings sorted by time ``t``, s).

    A run of readings below the threshold that lasts ≥ 15 min is an event; runs separated by less
    than 15 min at or above the threshold are one event; a data gap longer than :data:`CGM_GAP_S`
    ends a run. A run's duration is from its first reading to its last plus one reading interval.
    """
    below = v < threshold_mg_dl
    if not below.any():
        return Episodes(threshold_mg_dl, np.empty(0), np.empty(0))
    gap = np.diff(t, prepend=-np.inf) > CGM_GAP_S
    # a new run starts at a reading below that follows one above, or a gap
    prev_below = np.concatenate([[False], below[:-1]])
    starts_idx = np.flatnonzero(below & (~prev_below | gap))
    next_below = np.concatenate([below[1:], [False]])
    next_gap = np.concatenate([gap[1:], [True]])
    ends_idx = np.flatnonzero(below & (~next_below | next_gap))
    run_start, run_end = t[starts_idx], t[ends_idx] + interval_s
    # merge runs whose time above in between is < 15 min and not a data gap
    between = run_start[1:] - run_end[:-1]
    gaps_so_far = np.cumsum(gap)
    contiguous = gaps_so_far[starts_idx[1:]] == gaps_so_far[ends_idx[:-1]]
    join = (between < EPISODE_MIN_S) & contiguous
    group = np.concatenate([[0], np.cumsum(~join)])
    first = np.flatnonzero(np.diff(group, prepend=-1))
    ev_start = run_start[first]
    ev_end = np.maximum.reduceat(run_end, first)
    durations = ev_end - ev_start
    keep = durations >= EPISODE_MIN_S
    return Episodes(threshold_mg_dl, ev_start[keep], durations[keep])


def to_unit(mg_dl: Floats | float, unit: Unit) -> Floats | float:
    """A glucose value (or array) in ``unit``."""
    return mg_dl if unit == "mg/dL" else mg_dl / MG_DL_PER_MMOL_L


def fmt_glucose(mg_dl: float, unit: Unit) -> str:
    """``"154 mg/dL"`` or ``"8.6 mmol/L"``."""
    return f"{mg_dl:.0f} mg/dL" if unit == "mg/dL" else f"{mg_dl / MG_DL_PER_MMOL_L:.1f} mmol/L"


def hours_minutes_per_day(pct: float) -> str:
    """The share ``pct`` of a day as ``"h:mm"`` (e.g. 70 % → ``"16:48"``)."""
    minutes = round(pct * 1440.0 / 100.0)
    return f"{minutes // 60}:{minutes % 60:02d}"


def fmt_duration(seconds: float | None) -> str:
    """``"35 min"`` or ``"2 h 05 min"``; an em dash for None."""
    if seconds is None:
        return "—"
    minutes = round(seconds / 60.0)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
