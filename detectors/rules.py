"""Rule models: frozen, plain-Python descriptions of what the detectors look for.

They are built by ``rpm_core.rules`` from ``alert_rules.yaml`` (or directly in code by tests and
backtests) and validated here, so that every way of making a rule gets the same checks. Validation
errors are :class:`~detectors.errors.RuleValidationError` naming the field, which the YAML loader
maps back to a file line.

Every rule type carries ``type`` (the YAML discriminator). Signal rules share the threshold
machinery (levels, hysteresis, ``for``, gaps, cooldown, escalation, day/night schedules, flapping
suppression) over a per-sample *signal*: the reading itself (``threshold``), its rate of change
(``rate``), a forecast (``forecast``), a robust z-score against the patient's own baseline
(``baseline``) or an atrial-fibrillation indicator from RR intervals (``rhythm``). ``staleness``
(deadman) rules are time-driven and stand apart.
"""

from __future__ import annotations

import enum
import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from detectors.const import (
    CRITICAL,
    FLAP_SLOTS,
    FORECAST_MAX_POINTS,
    INFO,
    METRIC_NAMES,
    RATE_MAX_READINGS,
    RHYTHM_MAX_BEATS,
    RHYTHM_MAX_VOTES,
    SEVERITY_NAMES,
    WARNING,
)
from detectors.errors import RuleValidationError

# Rule names become InfluxDB tag values and parts of alert ids: keep them tame.
_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")

DEFAULT_MAX_GAP_S: Final = 300.0
# The longest running median a threshold rule may take (readings): its window is per-patient state.
MAX_MEDIAN_OF: Final = 31
BASELINE_MAX_BLOCKS: Final = 168  # a week of hourly blocks: bounded state per patient


class Severity(enum.IntEnum):
    """How urgent an alert is; the integer is the level code used in the engine's arrays."""

    INFO = INFO
    WARNING = WARNING
    CRITICAL = CRITICAL

    @property
    def label(self) -> str:
        """The name used in YAML, events and InfluxDB (``info`` | ``warning`` | ``critical``)."""
        return SEVERITY_NAMES[self.value - 1]

    @classmethod
    def from_label(cls, label: str) -> Severity:
        """The severity called ``label``; ``ValueError`` for anything else."""
        if label not in SEVERITY_NAMES:
            raise ValueError(f"unknown severity {label!r}")
        return cls(SEVERITY_NAMES.index(label) + 1)


class Direction(enum.Enum):
    """Which side of a threshold is abnormal."""

    ABOVE = "above"
    BELOW = "below"

    @property
    def sign(self) -> float:
        """Multiplier that turns a ``below`` rule into an ``above`` one (negation is exact in floats)."""
        return 1.0 if self is Direction.ABOVE else -1.0


def _check_duration(field_name: str, value: float, *, positive: bool = False) -> None:
    bad = not math.isfinite(value) or value < 0 or (positive and value == 0)
    if bad:
        need = "a positive" if positive else "a non-negative"
        raise RuleValidationError(
            field_name,
            f"duration {value!r} s is not {need} finite number",
            f"Write {need} duration such as 90, 90s, 10m or 1h.",
        )


def _check_finite(field_name: str, value: float) -> None:
    if not math.isfinite(value):
        raise RuleValidationError(field_name, f"{value!r} is not a finite number", "Write a number such as 120.")


@dataclass(frozen=True, slots=True, kw_only=True)
class ThresholdLevel:
    """One severity of a threshold rule: abnormal beyond ``threshold`` for at least ``for_s`` seconds.

    ``escalate_after_s``: an alert raised at this severity that nobody acknowledged for this long
    escalates once; ``None`` never escalates (sensible for ``info``).
    """

    severity: Severity
    threshold: float
    for_s: float = 0.0
    escalate_after_s: float | None = None

    def __post_init__(self) -> None:
        where = f"levels.{self.severity.label}"
        _check_finite(f"{where}.threshold", self.threshold)
        _check_duration(f"{where}.for", self.for_s)
        if self.escalate_after_s is not None:
            _check_duration(f"{where}.escalate_after", self.escalate_after_s, positive=True)


def _check_levels(levels: tuple[ThresholdLevel, ...], direction: Direction, where: str) -> None:
    """Levels present, each severity once in ascending order, thresholds further out as severity rises."""
    if not levels:
        raise RuleValidationError(where, "a rule needs at least one level", "Add e.g. `warning: {threshold: 120}`.")
    severities = [lv.severity for lv in levels]
    if severities != sorted(set(severities)):
        raise RuleValidationError(
            where,
            "levels must be listed once each, from least to most severe",
            "Keep at most one of info, warning, critical, in that order.",
        )
    sign = direction.sign
    for lower, higher in itertools.pairwise(levels):
        if not sign * higher.threshold > sign * lower.threshold:
            side = "above" if direction is Direction.ABOVE else "below"
            raise RuleValidationError(
                f"{where}.{higher.severity.label}.threshold",
                f"the {higher.severity.label} threshold {higher.threshold:g} is not {side} the "
                f"{lower.severity.label} threshold {lower.threshold:g}",
                f"For a `direction: {direction.value}` rule a more severe level must lie further "
                f"{side} the normal range; swap or correct the thresholds.",
            )


def _check_hysteresis(levels: tuple[ThresholdLevel, ...], clear: float, direction: Direction, where: str) -> None:
    """The clearing level must not lie on the abnormal side of the least severe threshold."""
    least = levels[0]
    sign = direction.sign
    if sign * clear > sign * least.threshold:
        side = "at or below" if direction is Direction.ABOVE else "at or above"
        raise RuleValidationError(
            where,
            f"clearing level {clear:g} is on the abnormal side of the "
            f"{least.severity.label} threshold {least.threshold:g} (inverted hysteresis)",
            f"For a `direction: {direction.value}` rule the clearing level must be {side} the least "
            f"severe threshold, e.g. {least.threshold - sign * 10:g}.",
        )


def _check_device_prefix(prefix: str | None, exclude: str | None = None) -> None:
    """``device_prefix`` (only devices whose id starts with it) and ``exclude_device_prefix`` (every
    device but those): non-empty text each, and the exclusion must leave some included device."""
    for field_name, value, example in (("device_prefix", prefix, "gls-"), ("exclude_device_prefix", exclude, "bgm-")):
        if value is None:
            continue
        if not isinstance(value, str):
            raise RuleValidationError(
                field_name, f"{value!r} is not text", f"Write a device id prefix such as `{example}`."
            )
        if not value:
            which = "matches" if field_name == "device_prefix" else "would leave out"
            raise RuleValidationError(
                field_name, f"an empty device prefix {which} every device", f"Remove it, or write e.g. `{example}`."
            )
    if prefix is not None and exclude is not None and prefix.startswith(exclude):
        raise RuleValidationError(
            "exclude_device_prefix",
            f"excluding {exclude}* leaves out every {prefix}* device the rule takes, so it would never see a reading",
            f"Remove one of them, or exclude only some of the included devices, e.g. `{prefix}old-`.",
        )


# The kinds of device behind the id prefixes the edge agent's pairing gives (edge_agent/pairing.py),
# for messages a nurse reads: "glucose meters (bgm-*)" rather than "bgm-* devices".
DEVICE_KINDS: Final = {"bgm-": "glucose meters", "cgm-": "CGMs", "hr-": "heart-rate sensors"}


def _devices(prefix: str) -> str:
    kind = DEVICE_KINDS.get(prefix)
    return f"{kind} ({prefix}*)" if kind else f"{prefix}* devices"


def device_source(prefix: str | None, exclude: str | None) -> str:
    """Which devices a rule takes, for messages: ``" from glucose meters (bgm-*)"``, ``" from devices
    other than glucose meters (bgm-*)"``, ``" from CGMs (cgm-*) other than cgm-old-*"``, ``" from
    gls-* devices"``, or ``""`` (every device)."""
    if prefix is not None and exclude is not None:
        return f" from {_devices(prefix)} other than {exclude}*"
    if prefix is not None:
        return f" from {_devices(prefix)}"
    if exclude is not None:
        kind = DEVICE_KINDS.get(exclude)
        return f" from devices other than {kind} ({exclude}*)" if kind else f" from devices other than {exclude}*"
    return ""


def _check_int(field_name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RuleValidationError(
            field_name, f"{value!r} is not a whole number from {low} to {high}", f"Write a number from {low} to {high}."
        )


def parse_clock(field_name: str, text: str) -> int:
    """Minutes after midnight of a ``HH:MM`` wall-clock time; :class:`RuleValidationError` otherwise."""
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", text.strip())
    if match is None:
        raise RuleValidationError(field_name, f"{text!r} is not a time of day", 'Write a 24-hour time such as "22:00".')
    return int(match.group(1)) * 60 + int(match.group(2))


@dataclass(frozen=True, slots=True, kw_only=True)
class Period:
    """A daily period in local time (e.g. night, 22:00-07:00 Europe/Paris) with its own levels.

    ``start_min``/``end_min`` are minutes after local midnight; a period with ``end < start``
    wraps past midnight. During the period ``levels`` (if given) replace the rule's levels, and
    ``clear_threshold``/``clear_for_s`` (if given) its clearing condition. Periods are tried in
    order; the first that contains a sample's local time applies.
    """

    name: str
    start_min: int
    end_min: int
    tz: str = "UTC"
    levels: tuple[ThresholdLevel, ...] | None = None
    clear_threshold: float | None = None
    clear_for_s: float | None = None

    def __post_init__(self) -> None:
        where = f"schedule.{self.name}"
        if not _NAME_RE.fullmatch(self.name):
            raise RuleValidationError(
                where, f"period name {self.name!r} is not a lower-case identifier", "Use e.g. night."
            )
        _check_int(f"{where}.from", self.start_min, 0, 1439)
        _check_int(f"{where}.to", self.end_min, 0, 1439)
        if self.start_min == self.end_min:
            raise RuleValidationError(
                f"{where}.to", "a period must not start and end at the same time", "Give it a real span."
            )
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise RuleValidationError(
                f"{where}.tz", f"unknown time zone {self.tz!r}", "Use an IANA zone name such as Europe/Paris or UTC."
            ) from exc
        if self.clear_threshold is not None:
            _check_finite(f"{where}.clear.threshold", self.clear_threshold)
        if self.clear_for_s is not None:
            _check_duration(f"{where}.clear.for", self.clear_for_s)

    def contains(self, minute: float) -> bool:
        """Whether a local minute-of-day lies in the period (start inclusive, end exclusive)."""
        if self.start_min < self.end_min:
            return self.start_min <= minute < self.end_min
        return minute >= self.start_min or minute < self.end_min


@dataclass(frozen=True, slots=True, kw_only=True)
class Flapping:
    """Flapping suppression: an episode that is the ``raises``-th (or later) raise within ``within_s``
    is held open: it clears only once the clearing condition has held for ``hold_s`` (instead of
    ``clear.for``), so a nurse sees one long alert instead of a burst of raise/clear pairs."""

    raises: int
    within_s: float
    hold_s: float

    def __post_init__(self) -> None:
        _check_int("flapping.raises", self.raises, 2, FLAP_SLOTS + 1)
        _check_duration("flapping.within", self.within_s, positive=True)
        _check_duration("flapping.hold", self.hold_s, positive=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class ThresholdRule:
    """Multi-level threshold with hysteresis, minimum durations, gap handling and cooldown.

    Semantics (one episode = one alert; see ``detectors/threshold.py`` for the algorithm):

    - a level is *met* by a sample beyond its threshold (strictly: ``>`` for ``above``, ``<`` for
      ``below``) and *due* once met continuously for ``for_s`` seconds of event time;
    - continuity breaks when two consecutive usable samples are more than ``max_gap_s`` apart;
    - with ``median_of`` > 1 (threshold rules only), the signal is the median of the patient's
      last ``median_of`` readings (:func:`detectors.runs.rolling_median`), not each reading;
    - with ``tolerate_s``, a level's run survives samples back across its threshold (or of unknown
      signal) that last less than ``tolerate_s``, from the first of them to the next sample beyond
      (a 1 Hz heart rate's beat-to-beat noise around a sustained value near the threshold); 0: any
      sample back across restarts the run;
    - with no open episode, the most severe due level raises an alert (unless within ``cooldown_s``
      of the previous episode's clearing); a more severe level becoming due later in the same episode
      re-raises the same alert at the higher severity; severities never drop within an episode;
    - the episode clears once samples stay on the normal side of ``clear_threshold`` (``<=`` for
      ``above``, ``>=`` for ``below``) continuously for ``clear_for_s`` seconds;
    - the rule sees samples of devices whose id starts with ``device_prefix`` (None: every device)
      and not with ``exclude_device_prefix`` (None: none left out). An exclusion leaves devices
      with an unexpected id covered, where an inclusion would silently drop them.
    """

    TYPE: ClassVar[str] = "threshold"

    name: str
    metric: str
    direction: Direction
    levels: tuple[ThresholdLevel, ...]
    clear_threshold: float
    clear_for_s: float = 0.0
    max_gap_s: float = DEFAULT_MAX_GAP_S
    tolerate_s: float = 0.0
    median_of: int = 1
    cooldown_s: float = 0.0
    enabled: bool = True
    description: str = ""
    schedule: tuple[Period, ...] = ()
    flapping: Flapping | None = None
    device_prefix: str | None = None
    exclude_device_prefix: str | None = None

    @property
    def type(self) -> str:
        """The YAML ``type:`` discriminator of this rule."""
        return self.TYPE

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_metric(self.metric)
        _check_levels(self.levels, self.direction, "levels")
        _check_finite("clear.threshold", self.clear_threshold)
        _check_duration("clear.for", self.clear_for_s)
        _check_duration("max_gap", self.max_gap_s, positive=True)
        _check_duration("tolerate", self.tolerate_s)
        _check_int("median_of", self.median_of, 1, MAX_MEDIAN_OF)
        _check_duration("cooldown", self.cooldown_s)
        _check_hysteresis(self.levels, self.clear_threshold, self.direction, "clear.threshold")
        _check_device_prefix(self.device_prefix, self.exclude_device_prefix)
        self._check_schedule()

    def _check_schedule(self) -> None:
        names = [period.name for period in self.schedule]
        if len(set(names)) != len(names):
            raise RuleValidationError("schedule", "period names must be unique", "Give every period its own name.")
        for period in self.schedule:
            where = f"schedule.{period.name}"
            levels = self.period_levels(period)
            _check_levels(levels, self.direction, f"{where}.levels")
            _check_hysteresis(levels, self.period_clear(period)[0], self.direction, f"{where}.clear.threshold")

    def period_levels(self, period: Period | None) -> tuple[ThresholdLevel, ...]:
        """The levels in force during ``period`` (``None``: outside every period)."""
        return self.levels if period is None or period.levels is None else period.levels

    def period_clear(self, period: Period | None) -> tuple[float, float]:
        """Clearing level and duration in force during ``period``."""
        if period is None:
            return self.clear_threshold, self.clear_for_s
        threshold = self.clear_threshold if period.clear_threshold is None else period.clear_threshold
        for_s = self.clear_for_s if period.clear_for_s is None else period.clear_for_s
        return threshold, for_s

    def level(self, severity: Severity) -> ThresholdLevel | None:
        """The level of ``severity``, if this rule has one."""
        return next((lv for lv in self.levels if lv.severity == severity), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateRule(ThresholdRule):
    """Rate of change (metric units per minute) between consecutive readings, with noise guards.

    The signal at a reading is the *least extreme* of the last ``consecutive`` rates (for
    ``direction: below`` the slowest fall), so a level is met only when every one of the last
    ``consecutive`` rates is beyond it: glucose falling faster than 2 mg/dL/min for 3 consecutive
    readings. A rate spanning more than ``max_gap_s`` is unknown. The level gate (``gate_below`` /
    ``gate_above``) counts a reading outside it as normal (e.g. only while glucose < 120 mg/dL).
    """

    TYPE: ClassVar[str] = "rate"

    consecutive: int = 3
    gate_below: float | None = None
    gate_above: float | None = None

    def __post_init__(self) -> None:
        ThresholdRule.__post_init__(self)
        _check_int("consecutive", self.consecutive, 1, RATE_MAX_READINGS)
        for name, gate in (("gate.below", self.gate_below), ("gate.above", self.gate_above)):
            if gate is not None:
                _check_finite(name, gate)


FORECAST_MODELS: Final = ("damped_trend", "ar2", "kalman")


@dataclass(frozen=True, slots=True, kw_only=True)
class ForecastRule(ThresholdRule):
    """Predicted value crossing a level within ``horizon_s`` (CGM "urgent low soon").

    The signal is the most extreme predicted value over ``[now, now + horizon]`` (the minimum for
    ``direction: below``). ``model``: ``damped_trend`` (robust linear trend of ln(glucose) over the
    last ``window_s``, one outlier-rejection pass, anchored at the latest reading, damped with time
    constant ``damping_s``), ``kalman`` (blood glucose from a Kalman filter that models the CGM's
    interstitial lag and slow sensor error, the default since issue 17) or ``ar2`` (Nightscout's
    AR(2) on ln(bg/140) at 5-min steps, the baseline it must beat). ``confirm`` (units per
    minute, 0: off): a predicted crossing counts only while the latest step (for ``kalman``: the
    filtered rate) moves toward the level at least that fast, so a fall that is already levelling
    off does not alert (see benchmarks/RESULTS.md).
    """

    TYPE: ClassVar[str] = "forecast"

    model: str = "damped_trend"
    horizon_s: float = 1200.0
    window_s: float = 1500.0
    damping_s: float = 1200.0
    min_points: int = 3
    confirm: float = 1.0

    def __post_init__(self) -> None:
        ThresholdRule.__post_init__(self)
        if self.model not in FORECAST_MODELS:
            raise RuleValidationError(
                "model", f"unknown forecast model {self.model!r}", f"Use one of: {', '.join(FORECAST_MODELS)}."
            )
        _check_duration("horizon", self.horizon_s, positive=True)
        _check_duration("window", self.window_s, positive=True)
        _check_duration("damping", self.damping_s, positive=True)
        if self.horizon_s > 3600:
            raise RuleValidationError("horizon", "a horizon beyond 1 h is not a forecast", "Use at most 60m.")
        _check_int("min_points", self.min_points, 2, FORECAST_MAX_POINTS)
        if not (math.isfinite(self.confirm) and self.confirm >= 0):
            raise RuleValidationError("confirm", f"{self.confirm!r} is not a rate >= 0", "Write e.g. 1 (mg/dL/min).")


@dataclass(frozen=True, slots=True, kw_only=True)
class BaselineRule(ThresholdRule):
    """Deviation from the patient's own rolling robust baseline, as a robust z-score.

    Readings are summarised as one mean per ``block_s`` of event time (e.g. hourly); the baseline is
    the median of the block means of the last ``window_s`` (completed blocks only), the scale
    1.4826 x their MAD, floored at ``min_scale`` (metric units) so a very steady patient does not
    alert on small changes. The signal is ``(reading - median) / scale``; it is unknown until
    ``min_blocks`` blocks exist. The state per patient is the ring of block means, never raw history.
    """

    TYPE: ClassVar[str] = "baseline"

    block_s: float = 3600.0
    window_s: float = 86400.0
    min_blocks: int = 12
    min_scale: float = 5.0

    def __post_init__(self) -> None:
        ThresholdRule.__post_init__(self)
        _check_duration("block", self.block_s, positive=True)
        _check_duration("window", self.window_s, positive=True)
        blocks = self.window_s / self.block_s
        if blocks != int(blocks) or not 2 <= blocks <= BASELINE_MAX_BLOCKS:
            raise RuleValidationError(
                "window",
                f"the window must hold a whole number of blocks, 2 to {BASELINE_MAX_BLOCKS} (it holds {blocks:g})",
                "Use e.g. window: 24h with block: 1h.",
            )
        _check_int("min_blocks", self.min_blocks, 1, int(blocks))
        if not (math.isfinite(self.min_scale) and self.min_scale > 0):
            raise RuleValidationError("min_scale", f"{self.min_scale!r} is not positive", "Write e.g. 5 (bpm).")

    @property
    def n_blocks(self) -> int:
        """How many block means the baseline keeps."""
        return int(self.window_s / self.block_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class RhythmRule(ThresholdRule):
    """Atrial-fibrillation screening from RR intervals over sliding beat windows.

    Every ``every_beats`` beats, the last ``window_beats`` RR intervals are cleaned (beat errors:
    intervals below ``0.6`` or above ``1.6`` times the window median, i.e. extra and missed beats;
    ectopy: the ``trim_beats`` largest and smallest remaining are dropped) and the window is
    irregular when normalized RMSSD > ``nrmssd_min``, the turning-point ratio lies in
    ``[tpr_low, tpr_high]`` and the normalized Shannon entropy (16 bins) >= ``entropy_min``.
    That is ``method: dash``; with ``method: model`` (see :mod:`detectors.af_model`) a window is
    irregular when a small learned classifier over nine RR features gives AF a probability >= 0.5
    (``trim_beats``, ``nrmssd_min``, ``tpr_*`` and ``entropy_min`` are then unused).
    The signal is the share of irregular verdicts among the last ``votes`` judged windows
    (carried between judgements); levels have threshold 0.5, so a majority must be irregular.
    """

    TYPE: ClassVar[str] = "rhythm"
    METHODS: ClassVar[tuple[str, ...]] = ("dash", "model")

    window_beats: int = 128
    every_beats: int = 8
    votes: int = 4
    trim_beats: int = 8
    nrmssd_min: float = 0.1
    tpr_low: float = 0.54
    tpr_high: float = 0.77
    entropy_min: float = 0.7
    method: str = "dash"

    def __post_init__(self) -> None:
        ThresholdRule.__post_init__(self)
        if self.method not in self.METHODS:
            raise RuleValidationError("method", f"unknown method {self.method!r}", "Write dash or model.")
        _check_int("window", self.window_beats, 16, RHYTHM_MAX_BEATS)
        _check_int("every", self.every_beats, 1, self.window_beats)
        _check_int("votes", self.votes, 1, RHYTHM_MAX_VOTES)
        _check_int("trim", self.trim_beats, 0, self.window_beats // 4)
        for name, value in (("nrmssd", self.nrmssd_min), ("entropy", self.entropy_min)):
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise RuleValidationError(name, f"{value!r} is not between 0 and 1", "Write e.g. 0.1.")
        if not (0 <= self.tpr_low < self.tpr_high <= 1):
            raise RuleValidationError(
                "tpr", f"[{self.tpr_low}, {self.tpr_high}] is not a range within [0, 1]", "Write e.g. [0.54, 0.77]."
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class StaleLevel:
    """One severity of a staleness rule: no usable data for longer than ``after_s``."""

    severity: Severity
    after_s: float
    escalate_after_s: float | None = None

    def __post_init__(self) -> None:
        where = f"levels.{self.severity.label}"
        _check_duration(f"{where}.after", self.after_s, positive=True)
        if self.escalate_after_s is not None:
            _check_duration(f"{where}.escalate_after", self.escalate_after_s, positive=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class StalenessRule:
    """Deadman: no usable reading of ``metric`` (from devices matching ``device_prefix``) for longer
    than a level's ``after_s``, including enrolled patients who never sent anything.

    Raised by ``Engine.tick(now)`` (the clock runs from the last usable reading, or from enrolment),
    upgraded as more severe levels become due, cleared by the next usable reading.
    """

    TYPE: ClassVar[str] = "staleness"

    name: str
    metric: str
    levels: tuple[StaleLevel, ...]
    cooldown_s: float = 0.0
    enabled: bool = True
    description: str = ""
    device_prefix: str | None = None
    exclude_device_prefix: str | None = None
    direction: Direction = Direction.ABOVE  # silence grows upwards; kept for uniform overrides
    flapping: None = None
    schedule: tuple[Period, ...] = ()

    @property
    def type(self) -> str:
        """The YAML ``type:`` discriminator of this rule."""
        return self.TYPE

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_metric(self.metric)
        _check_duration("cooldown", self.cooldown_s)
        _check_device_prefix(self.device_prefix, self.exclude_device_prefix)
        if not self.levels:
            raise RuleValidationError("levels", "a staleness rule needs a level", "Add e.g. `warning: {after: 30m}`.")
        severities = [lv.severity for lv in self.levels]
        if severities != sorted(set(severities)):
            raise RuleValidationError(
                "levels", "levels must be listed once each, from least to most severe", "Keep info, warning, critical."
            )
        for lower, higher in zip(self.levels, self.levels[1:], strict=False):
            if not higher.after_s > lower.after_s:
                raise RuleValidationError(
                    f"levels.{higher.severity.label}.after",
                    f"the {higher.severity.label} level must wait longer than the {lower.severity.label} level",
                    "Give more severe levels longer silences.",
                )

    def level(self, severity: Severity) -> StaleLevel | None:
        """The level of ``severity``, if this rule has one."""
        return next((lv for lv in self.levels if lv.severity == severity), None)


# The union of all rule types. Signal rules are ThresholdRule and its subclasses.
Rule = ThresholdRule | StalenessRule
SignalRule = ThresholdRule

RULE_TYPES: Final[Mapping[str, type[ThresholdRule] | type[StalenessRule]]] = MappingProxyType(
    {cls.TYPE: cls for cls in (ThresholdRule, RateRule, ForecastRule, BaselineRule, RhythmRule, StalenessRule)}
)
PLANNED_RULE_TYPES: Final[tuple[str, ...]] = ()


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise RuleValidationError(
            "name",
            f"rule name {name!r} is not a lower-case identifier",
            "Use lower-case letters, digits and _, starting with a letter (e.g. tachycardia).",
        )


def _check_metric(metric: str) -> None:
    if metric not in METRIC_NAMES:
        raise RuleValidationError("metric", f"unknown metric {metric!r}", f"Use one of: {', '.join(METRIC_NAMES)}.")


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleSet:
    """All rules in force: the defaults and, per patient, fully resolved overriding rules.

    ``patient_rules[patient][name]`` replaces rule ``name`` for that patient only; it must keep the
    rule's type, metric and direction (the engine keeps one set of arrays per rule).
    """

    rules: tuple[Rule, ...]
    patient_rules: Mapping[str, Mapping[str, Rule]] = field(default_factory=dict)
    version: int = 1

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise RuleValidationError(
                    f"rules.{rule.name}", f"duplicate rule name {rule.name!r}", "Give every rule its own name."
                )
            seen.add(rule.name)
        for patient, overrides in self.patient_rules.items():
            for name, rule in overrides.items():
                self._check_override(patient, name, rule)
        frozen = {p: MappingProxyType(dict(o)) for p, o in self.patient_rules.items()}
        object.__setattr__(self, "patient_rules", MappingProxyType(frozen))

    def _check_override(self, patient: str, name: str, rule: Rule) -> None:
        where = f"patients.{patient}.rules.{name}"
        base = self.by_name().get(name)
        if base is None:
            raise RuleValidationError(
                where, f"override of unknown rule {name!r}", f"Use one of: {', '.join(self.names())}."
            )
        for attr in ("name", "type", "metric", "direction", "device_prefix", "exclude_device_prefix"):
            if getattr(rule, attr, None) != getattr(base, attr, None):
                raise RuleValidationError(
                    f"{where}.{attr}",
                    f"a per-patient override cannot change the rule's {attr}",
                    "Define a separate rule instead, and disable the default one for this patient.",
                )

    def names(self) -> tuple[str, ...]:
        """Rule names in file order (the order of the engine's detectors and of events at one instant)."""
        return tuple(rule.name for rule in self.rules)

    def by_name(self) -> dict[str, Rule]:
        """Default rules keyed by name."""
        return {rule.name: rule for rule in self.rules}

    def rule_for(self, patient: str, name: str) -> Rule:
        """The rule ``name`` as it applies to ``patient`` (the override if there is one)."""
        override = self.patient_rules.get(patient, {}).get(name)
        return override if override is not None else self.by_name()[name]
