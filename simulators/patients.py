"""Virtual patients: heart rate with RR intervals (1 Hz) and CGM glucose (every 5 min).

Each patient follows a scenario. ``normal`` patients stay well inside every default alert
threshold; the others carry a scripted episode that starts at the beginning of the simulated
timeline and lasts ``EPISODE_S``:

| scenario | what happens | alert it must raise with the default rules |
| --- | --- | --- |
| tachycardia | heart rate ~135 bpm | heart-rate high (warning), once |
| bradycardia | heart rate ~42 bpm | heart-rate low (warning), once |
| hypoglycemia | glucose ~48 mg/dL | glucose urgent low (critical), once |

Values are generated for all patients of a process at once with numpy (one call per tick), so a
process can offer tens of thousands of readings per second.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Positions = npt.NDArray[np.int64]

HR_INTERVAL_S: Final = 1.0
CGM_INTERVAL_S: Final = 300.0
# Long enough that an episode outlasts any default rule's minimum duration (15 min for glucose).
EPISODE_S: Final = 40 * 60.0
# Ramp into and out of an episode, so the traces look like physiology rather than a step.
RAMP_S: Final = 60.0


class Scenario(enum.IntEnum):
    """What a virtual patient does."""

    NORMAL = 0
    TACHYCARDIA = 1
    HYPOGLYCEMIA = 2
    BRADYCARDIA = 3


# Every 8th patient starting at 0 is tachycardic, at 1 hypoglycemic, at 2 bradycardic.
_SCENARIO_CYCLE: Final = (
    Scenario.TACHYCARDIA, Scenario.HYPOGLYCEMIA, Scenario.BRADYCARDIA,
    *([Scenario.NORMAL] * 5),
)


def scenario_for(index: int) -> Scenario:
    """The scenario of patient number ``index`` (deterministic, so tests know what to expect)."""
    return _SCENARIO_CYCLE[index % len(_SCENARIO_CYCLE)]


def patient_id(index: int, prefix: str = "p") -> str:
    """The id of patient number ``index``: ``p0000``, ``p0001``, …"""
    return f"{prefix}{index:04d}"


def _episode_weight(elapsed_s: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """0 → 1 over the ramp at the start of the episode, 1 → 0 at its end."""
    up = np.clip(elapsed_s / RAMP_S, 0.0, 1.0)
    down = np.clip((EPISODE_S - elapsed_s) / RAMP_S, 0.0, 1.0)
    w: npt.NDArray[np.float64] = np.minimum(up, down)
    return w


@dataclass
class Population:
    """The patients of one simulator process, with their physiological state."""

    indices: npt.NDArray[np.int64]
    start_s: float
    seed: int = 0
    scenario: npt.NDArray[np.int64] = field(init=False)
    hr_base: npt.NDArray[np.float64] = field(init=False)
    glucose_base: npt.NDArray[np.float64] = field(init=False)
    next_beat_s: npt.NDArray[np.float64] = field(init=False)
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng([self.seed, int(self.indices[0]) if self.indices.size else 0])
        n = self.indices.size
        self.scenario = np.array([scenario_for(int(i)) for i in self.indices], dtype=np.int64)
        self.hr_base = self.rng.uniform(62.0, 82.0, n)
        self.glucose_base = self.rng.uniform(100.0, 140.0, n)
        self.next_beat_s = self.start_s + self.rng.uniform(0.0, 0.8, n)
        # The RR level follows the heart rate smoothly (sinus rhythm does not jump with every reading's
        # noise); each patient breathes at their own rate, which modulates RR (respiratory sinus arrhythmia).
        self.rr_level = np.full(n, np.nan)
        self.breath_s = self.rng.uniform(3.5, 5.5, n)

    def heart_rate(self, t: float) -> npt.NDArray[np.float64]:
        """Heart rate (bpm) of every patient at time ``t``."""
        w = _episode_weight(np.full(self.indices.size, t - self.start_s))
        # Each target sits at least 5 noise SDs (1.5 bpm) inside its rule's threshold (tachycardia
        # > 120, bradycardia < 50): one reading back across restarts the rule's 10-minute run, and
        # at 44 bpm that happened often enough to make failover tests miss an alert
        # (tests/simulators/test_scenarios.py).
        target = np.select(
            [self.scenario == Scenario.TACHYCARDIA, self.scenario == Scenario.BRADYCARDIA],
            [np.full_like(self.hr_base, 135.0), np.full_like(self.hr_base, 42.0)],
            self.hr_base,
        )
        noise = self.rng.normal(0.0, 1.5, self.indices.size)
        hr: npt.NDArray[np.float64] = np.round(self.hr_base + w * (target - self.hr_base) + noise)
        return hr

    def glucose(self, t: float) -> npt.NDArray[np.float64]:
        """CGM glucose (mg/dL) of every patient at time ``t``."""
        w = _episode_weight(np.full(self.indices.size, t - self.start_s))
        target = np.where(self.scenario == Scenario.HYPOGLYCEMIA, 48.0, self.glucose_base)
        drift = 12.0 * np.sin(2 * np.pi * (t - self.start_s) / 7200.0 + self.indices)
        normal = self.glucose_base + drift
        g = normal + w * (target - normal) * (self.scenario == Scenario.HYPOGLYCEMIA)
        out: npt.NDArray[np.float64] = np.round(g + self.rng.normal(0.0, 1.0, self.indices.size))
        return out

    def beats_until(self, t: float, hr: npt.NDArray[np.float64]) -> tuple[Positions, Floats, Floats]:
        """RR intervals of the beats up to ``t``: (patient position, beat time, RR seconds).

        At most a few beats per patient per second, generated column by column (a loop over
        beat number, not over patients or samples).
        """
        pos_parts, t_parts, rr_parts = [], [], []
        target = 60.0 / np.clip(hr, 30.0, 250.0)
        self.rr_level = np.where(np.isnan(self.rr_level), target, 0.8 * self.rr_level + 0.2 * target)
        mean_rr = self.rr_level
        while True:
            due = np.flatnonzero(self.next_beat_s <= t)
            if due.size == 0:
                break
            # The phase runs from the timeline's start, so a seed gives the same beats at any wall-clock time.
            breath = np.sin(2 * np.pi * (self.next_beat_s[due] - self.start_s) / self.breath_s[due])
            jitter = 1.0 + 0.03 * breath + self.rng.normal(0.0, 0.008, due.size)
            rr = np.round(mean_rr[due] * jitter * 1024.0) / 1024.0
            pos_parts.append(due)
            t_parts.append(self.next_beat_s[due].copy())
            rr_parts.append(rr)
            self.next_beat_s[due] += rr
        if not pos_parts:
            empty = np.empty(0)
            return np.empty(0, dtype=np.int64), empty, empty
        return np.concatenate(pos_parts), np.concatenate(t_parts), np.concatenate(rr_parts)
