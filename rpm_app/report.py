"""``rpm report --patient P --days 14 --out FILE.html [--png]``: the clinician's report of one patient.

From InfluxDB (``vitals`` and ``alerts``), for the period:

- glucose: Ambulatory Glucose Profile of the CGM readings (5/25/50/75/95th percentiles by time of
  day, 15-minute bins, smoothed over three bins), time in ranges per the International Consensus on
  Time in Range (Battelino T et al., Diabetes Care 2019;42:1593-1603: <54, 54-69, 70-180, 181-250,
  >250 mg/dL) as % and hours:minutes per day, mean, GMI (Bergenstal RM et al., Diabetes Care
  2018;41:2275-2280: 3.31 + 0.02392 × mean mg/dL; withheld below the consensus' data sufficiency of
  ≥ 14 days and ≥ 70 % CGM wear, with a visible warning), coefficient of variation (target ≤ 36 %),
  level-1/level-2 hypoglycaemia episodes (number, median duration; :mod:`rpm_core.glycaemia`),
  daily profiles, and meter readings apart (never in the AGP); in mg/dL or mmol/L;
- heart rate: 15-minute means over the period and the daily mean/min/max;
- alerts: every episode with its severity, when it was raised, escalated, acknowledged (by whom)
  and cleared.

An unknown patient or a period without readings is a :class:`~rpm_core.errors.NoDataError` (the
CLI exits non-zero), not an empty report. Plots are rendered by matplotlib (Agg backend, no display
needed) and embedded in the HTML as base64 PNG, so the report is one self-contained file to print
or attach. Data are fetched one day
at a time, with a progress bar on stderr when that takes more than a second.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt
import orjson

from rpm_core.errors import ConfigError, NoDataError, ServiceError
from rpm_core.glycaemia import (
    HYPO_LEVEL1_MG_DL,
    HYPO_LEVEL2_MG_DL,
    Episodes,
    Sufficiency,
    Unit,
    episodes,
    fmt_duration,
    fmt_glucose,
    hours_minutes_per_day,
    to_unit,
)
from rpm_core.settings import InfluxAuth, Settings, influx_endpoint
from rpm_core.wire import is_valid_id

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_LOGGER = logging.getLogger(__name__)

Floats = npt.NDArray[np.float64]

# International Consensus on Time in Range (Battelino 2019): range edges in mg/dL and targets.
TIR_RANGES: Final = (
    ("very_low", "Very low (<54)", -math.inf, 54.0, "< 1 %"),
    ("low", "Low (54–69)", 54.0, 70.0, "< 4 % (with very low)"),
    ("in_range", "In range (70–180)", 70.0, 180.0 + 1e-9, "> 70 %"),
    ("high", "High (181–250)", 180.0 + 1e-9, 250.0 + 1e-9, "< 25 % (with very high)"),
    ("very_high", "Very high (>250)", 250.0 + 1e-9, math.inf, "< 5 %"),
)
TIR_COLOURS: Final = ("#8b0000", "#e53935", "#43a047", "#fbc02d", "#fb8c00")
CV_TARGET_PCT: Final = 36.0
GMI_INTERCEPT: Final = 3.31
GMI_SLOPE: Final = 0.02392
AGP_BIN_MIN: Final = 15
AGP_PERCENTILES: Final = (5, 25, 50, 75, 95)
CGM_INTERVAL_S: Final = 300.0
HR_BUCKET: Final = "15m"
HR_BUCKET_S: Final = 900
QUERY_TIMEOUT_S: Final = 60.0
# Daily profiles show at most four weeks (a 90-day report would otherwise be a 13-row poster).
DAILY_MAX_DAYS: Final = 28


# -- InfluxDB --------------------------------------------------------------------------------------


class InfluxReader:
    """InfluxQL over HTTP (``/query``; a token header for 2.x/3.x), results with epoch-ms times."""

    def __init__(self, *, url: str, db: str, auth: InfluxAuth | None = None) -> None:
        bare, self._auth = influx_endpoint(url, auth)
        self.url = bare or url
        self.db = db

    @classmethod
    def from_settings(cls, settings: Settings) -> InfluxReader:
        """A reader for the configured InfluxDB."""
        return cls(url=settings.require_influx(), db=settings.influx_db, auth=settings.influx_auth())

    def series(self, q: str) -> list[dict[str, Any]]:
        """The series of one statement; :class:`ServiceError` on failure."""
        body = urllib.parse.urlencode({"q": q, "db": self.db, "epoch": "ms"}).encode()
        req = urllib.request.Request(f"{self.url}/query", data=body, method="POST")  # noqa: S310 (http(s) only)
        for name, value in self._auth.headers().items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=QUERY_TIMEOUT_S) as resp:  # noqa: S310
                doc = orjson.loads(resp.read())
        except (urllib.error.URLError, OSError, orjson.JSONDecodeError) as exc:
            raise ServiceError(f"InfluxDB query failed at {self.url}: {exc}") from exc
        results = (doc.get("results") or [{}]) if isinstance(doc, dict) else None
        if not isinstance(results, list) or not isinstance(results[0], dict):
            raise ServiceError(f"{self.url} did not answer like InfluxDB's /query (no list of results)")
        result = results[0]
        if "error" in result:
            raise ServiceError(f"InfluxDB query failed: {result['error']}")
        out = result.get("series") or []
        if not isinstance(out, list) or not all(_is_series(s) for s in out):
            raise ServiceError(f"{self.url} did not answer like InfluxDB's /query (malformed series)")
        return out

    def rows(self, q: str) -> list[dict[str, Any]]:
        """Every row of every series, as dicts with the series' tags merged in."""
        return [{**s.get("tags", {}), **dict(zip(s["columns"], v, strict=True))}
                for s in self.series(q) for v in s["values"]]


def _is_series(s: object) -> bool:
    """Whether ``s`` is a series of an InfluxDB answer: column names, rows as long, optional tags."""
    if not isinstance(s, dict):
        return False
    columns, values, tags = s.get("columns"), s.get("values"), s.get("tags", {})
    return (isinstance(columns, list) and all(isinstance(c, str) for c in columns) and isinstance(values, list)
            and all(isinstance(v, list) and len(v) == len(columns) for v in values) and isinstance(tags, dict))


def time_clause(start: datetime, end: datetime) -> str:
    """``time >= …ms AND time < …ms``."""
    return f"time >= {int(start.timestamp() * 1000)}ms AND time < {int(end.timestamp() * 1000)}ms"


def day_chunks(start: datetime, end: datetime, *, align_s: int = HR_BUCKET_S) -> Iterator[tuple[datetime, datetime]]:
    """``[start, end)`` in pieces of at most one day, cut on multiples of ``align_s`` since the epoch.

    Aligned cuts keep every ``GROUP BY time(…)`` bucket inside one piece (no bucket split in two).
    """
    t = start
    while t < end:
        cut = math.floor((t + timedelta(days=1)).timestamp() / align_s) * align_s
        nxt = min(datetime.fromtimestamp(cut, UTC), end)
        yield t, nxt
        t = nxt


# -- numbers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlucoseStats:
    """Summary of the glucose readings of a period."""

    n: int
    mean: float
    sd: float
    cv_pct: float
    gmi_pct: float | None
    ranges_pct: dict[str, float]
    active_pct: float
    sufficiency: Sufficiency


def time_in_ranges(values: Floats) -> dict[str, float]:
    """Percent of readings in each consensus range (keys of :data:`TIR_RANGES`)."""
    if values.size == 0:
        return {key: 0.0 for key, *_ in TIR_RANGES}
    return {key: float(np.count_nonzero((values >= lo) & (values < hi)) * 100.0 / values.size)
            for key, _label, lo, hi, _target in TIR_RANGES}


def gmi(mean_mg_dl: float) -> float:
    """Glucose Management Indicator (%) from the mean glucose in mg/dL (Bergenstal 2018)."""
    return GMI_INTERCEPT + GMI_SLOPE * mean_mg_dl


def glucose_stats(values: Floats, *, period_s: float) -> GlucoseStats | None:
    """Mean, SD, CV, GMI, time in ranges and CGM wear; None without readings.

    GMI is None (withheld) when the period is not sufficient (< 14 days or < 70 % wear).
    """
    if values.size == 0:
        return None
    mean = float(values.mean())
    sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
    expected = max(period_s / CGM_INTERVAL_S, 1.0)
    active = min(100.0, values.size * 100.0 / expected)
    enough = Sufficiency(days=period_s / 86400.0, wear_pct=active)
    return GlucoseStats(n=int(values.size), mean=mean, sd=sd, cv_pct=sd / mean * 100.0,
                        gmi_pct=gmi(mean) if enough.sufficient else None, ranges_pct=time_in_ranges(values),
                        active_pct=active, sufficiency=enough)


def agp(times_s: Floats, values: Floats, tz: ZoneInfo, *, bin_min: int = AGP_BIN_MIN) -> tuple[Floats, Floats]:
    """AGP percentiles by local time of day: (bin centres in hours, array [percentile, bin]).

    Bins without readings are NaN. Each percentile curve is smoothed with a circular 3-bin moving
    average (the day wraps around midnight), as AGP reports draw smooth curves.
    """
    n_bins = 24 * 60 // bin_min
    minute = _local_minute_of_day(times_s, tz)
    bins = (minute // bin_min).astype(np.int64) % n_bins
    out = np.full((len(AGP_PERCENTILES), n_bins), np.nan)
    order = np.argsort(bins, kind="stable")
    edges = np.searchsorted(bins[order], np.arange(n_bins + 1))
    sorted_values = values[order]
    for b in range(n_bins):
        chunk = sorted_values[edges[b]:edges[b + 1]]
        if chunk.size:
            out[:, b] = np.percentile(chunk, AGP_PERCENTILES)
    centres: Floats = (np.arange(n_bins, dtype=np.float64) + 0.5) * (bin_min / 60.0)
    return centres, _circular_smooth(out)


def _local_minute_of_day(times_s: Floats, tz: ZoneInfo) -> Floats:
    """Minute of the local day of each time (UTC offsets looked up per distinct hour: DST-safe)."""
    hours = np.floor(times_s / 3600.0).astype(np.int64)
    uniq, inverse = np.unique(hours, return_inverse=True)
    offsets = np.array([_offset_s(int(h) * 3600, tz) for h in uniq], dtype=np.float64)
    local = times_s + offsets[inverse]
    result: Floats = np.mod(local, 86400.0) / 60.0
    return result


def _offset_s(epoch_s: int, tz: ZoneInfo) -> float:
    offset = datetime.fromtimestamp(epoch_s, tz).utcoffset()
    return offset.total_seconds() if offset else 0.0


def _circular_smooth(curves: Floats) -> Floats:
    padded = np.concatenate([curves[:, -1:], curves, curves[:, :1]], axis=1)
    stacked = np.stack([padded[:, :-2], padded[:, 1:-1], padded[:, 2:]])
    with np.errstate(invalid="ignore"):
        counts = np.sum(~np.isnan(stacked), axis=0)
        sums = np.nansum(stacked, axis=0)
        smooth: Floats = np.where(np.isnan(curves), np.nan, sums / np.maximum(counts, 1))
    return smooth


# -- data ------------------------------------------------------------------------------------------


@dataclass
class PatientData:
    """What the report shows, fetched from InfluxDB."""

    patient: str
    start: datetime
    end: datetime
    glucose_t: Floats = field(default_factory=lambda: np.empty(0))  # CGM readings only
    glucose_v: Floats = field(default_factory=lambda: np.empty(0))
    meter_t: Floats = field(default_factory=lambda: np.empty(0))  # meter (bgm-…) and manual readings
    meter_v: Floats = field(default_factory=lambda: np.empty(0))
    hr_t: Floats = field(default_factory=lambda: np.empty(0))
    hr_mean: Floats = field(default_factory=lambda: np.empty(0))
    hr_min: Floats = field(default_factory=lambda: np.empty(0))
    hr_max: Floats = field(default_factory=lambda: np.empty(0))
    alerts: list[dict[str, Any]] = field(default_factory=list)


def _columns(rows: Sequence[dict[str, Any]], *names: str) -> list[Floats]:
    return [np.array([np.nan if r.get(n) is None else float(r[n]) for r in rows], dtype=np.float64) for n in names]


def fetch(reader: InfluxReader, patient: str, start: datetime, end: datetime, *, progress: bool = True) -> PatientData:
    """Read glucose, heart rate (15-min buckets) and alerts of ``patient`` in ``[start, end)``."""
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

    if not is_valid_id(patient):
        raise ConfigError(f"patient {patient!r} is not a valid id")
    data = PatientData(patient=patient, start=start, end=end)
    g_parts: list[list[Floats]] = []
    m_parts: list[list[Floats]] = []
    h_parts: list[list[Floats]] = []
    chunks = list(day_chunks(start, end))
    bar = tqdm(chunks, desc=f"report {patient}", unit="day", disable=not progress, delay=1.0, leave=False)
    for lo, hi in bar:
        where = f"\"patient\" = '{patient}' AND {time_clause(lo, hi)}"
        rows = reader.rows(f"SELECT \"value\" FROM \"vitals\" WHERE \"metric\" = 'glucose' AND {where} "  # noqa: S608
                           'GROUP BY "device"')
        g_parts.append(_columns([r for r in rows if is_cgm(r.get("device"))], "time", "value"))
        m_parts.append(_columns([r for r in rows if not is_cgm(r.get("device"))], "time", "value"))
        h_parts.append(_columns(reader.rows(
            'SELECT mean("value") AS "mean", min("value") AS "min", max("value") AS "max" FROM "vitals" '  # noqa: S608
            f"WHERE \"metric\" = 'heart_rate' AND {where} GROUP BY time({HR_BUCKET}) fill(none)"),
            "time", "mean", "min", "max"))
    if g_parts:
        data.glucose_t, data.glucose_v = _sorted_by_time(g_parts)
        data.meter_t, data.meter_v = _sorted_by_time(m_parts)
    if h_parts:
        data.hr_t, data.hr_mean, data.hr_min, data.hr_max = (np.concatenate(c) for c in zip(*h_parts, strict=True))
        data.hr_t /= 1000.0
    data.alerts = alert_episodes(reader.rows(
        'SELECT "rule", "severity", "metric", "state", "value", "message", "by", "alert_id" FROM "alerts" '  # noqa: S608
        f"WHERE \"patient\" = '{patient}' AND {time_clause(start, end)}"))
    return data


def is_cgm(device: object) -> bool:
    """Whether a glucose reading's device is a CGM (``cgm-…``; meters are ``bgm-…``, manual entries others)."""
    return isinstance(device, str) and device.startswith("cgm-")


def _sorted_by_time(parts: list[list[Floats]]) -> tuple[Floats, Floats]:
    """Concatenated (time in s, value) of the chunks, in time order (several devices interleave)."""
    t, v = (np.concatenate(c) for c in zip(*parts, strict=True))
    order = np.argsort(t, kind="stable")
    times: Floats = t[order] / 1000.0
    values: Floats = v[order]
    return times, values


def require_data(reader: InfluxReader, patient: str, start: datetime, end: datetime) -> None:
    """:class:`NoDataError` when InfluxDB has never heard of ``patient``, or has nothing of it in ``[start, end)``."""
    if not is_valid_id(patient):
        raise ConfigError(f"patient {patient!r} is not a valid id")
    known = reader.rows(f"SHOW TAG VALUES FROM \"vitals\" WITH KEY = \"patient\" WHERE \"patient\" = '{patient}'")
    if not known:
        raise NoDataError(f"unknown patient {patient!r}: InfluxDB {reader.db!r} has no readings of it at all "
                          "(check the id against the roster; ids are case-sensitive)")
    where = f"\"patient\" = '{patient}' AND {time_clause(start, end)}"
    found = reader.rows(f'SELECT count("value") FROM "vitals" WHERE {where}')  # noqa: S608 (validated id)
    if not any(r.get("count") for r in found):
        raise NoDataError(f"patient {patient!r} has no readings between {start.isoformat()} and {end.isoformat()}; "
                          "choose another period (--end, --days; --since, --until)")


def alert_episodes(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per alert id from its state changes (rows in time order, time in epoch ms)."""
    rank = {"info": 1, "warning": 2, "critical": 3}
    out: dict[str, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: r["time"]):
        aid = r.get("alert_id") or f"{r.get('rule')}@{r['time']}"
        e = out.setdefault(aid, {"alert_id": aid, "rule": r.get("rule"), "metric": r.get("metric"),
                                 "severity": r.get("severity"), "raised": None, "escalated": None,
                                 "acknowledged": None, "by": None, "cleared": None, "peak": None, "message": ""})
        t, state = r["time"] / 1000.0, r.get("state")
        if rank.get(r.get("severity") or "", 0) > rank.get(e["severity"] or "", 0):
            e["severity"] = r.get("severity")
        if state == "raised":
            e["raised"] = e["raised"] or t
            e["message"] = r.get("message") or e["message"]
        elif state in ("escalated", "acknowledged", "cleared"):
            e[state] = e[state] or t
        if state == "acknowledged":
            e["by"] = r.get("by")
        if r.get("value") is not None and state == "raised":
            e["peak"] = _extreme(e["peak"], float(r["value"]), r.get("rule") or "")
    return sorted(out.values(), key=lambda e: e["raised"] or e["cleared"] or 0.0)


def _extreme(old: float | None, new: float, rule: str) -> float:
    if old is None:
        return new
    return min(old, new) if rule.endswith("low") or rule == "bradycardia" else max(old, new)


# -- figures ---------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass(frozen=True)
class View:
    """How the report is drawn: time zone, glucose unit, when it was generated."""

    tz: ZoneInfo
    unit: Unit = "mg/dL"
    generated: datetime = field(default_factory=lambda: datetime.now(UTC))


def _glucose_axis(ax: Any, unit: Unit) -> None:
    """Target range band, the 54 and 250 mg/dL lines and the y limits, in ``unit``."""
    ax.axhspan(to_unit(70.0, unit), to_unit(180.0, unit), color="#43a047", alpha=0.12)
    ax.axhline(to_unit(54.0, unit), color="#8b0000", lw=0.8, ls="--")
    ax.axhline(to_unit(250.0, unit), color="#fb8c00", lw=0.8, ls="--")
    ax.set_ylim(to_unit(40.0, unit), to_unit(350.0, unit))


def agp_figure(data: PatientData, view: View) -> Figure:
    """The AGP of the CGM readings: 5-95 and 25-75 % bands, median, and the 70-180 mg/dL target range."""
    plt = _pyplot()
    fig: Figure
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=110)
    _glucose_axis(ax, view.unit)
    if data.glucose_v.size:
        hours, p = agp(data.glucose_t, data.glucose_v, view.tz)
        p = np.asarray(to_unit(p, view.unit))
        ax.fill_between(hours, p[0], p[4], color="#1e88e5", alpha=0.18, label="5–95 %")
        ax.fill_between(hours, p[1], p[3], color="#1e88e5", alpha=0.38, label="25–75 %")
        ax.plot(hours, p[2], color="#0d47a1", lw=2.2, label="median")
        ax.legend(loc="upper right", fontsize=8, ncols=3)
    else:
        ax.text(12, float(to_unit(150.0, view.unit)), "No CGM readings in this period", ha="center", color="#555",
                fontsize=14)
    ax.set(xlim=(0, 24), xticks=range(0, 25, 3), xlabel=f"time of day ({view.tz.key})",
           ylabel=f"glucose ({view.unit})", title="Ambulatory Glucose Profile (CGM readings only)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def tir_figure(stats: GlucoseStats | None, unit: Unit = "mg/dL") -> Figure:
    """A stacked bar of the five consensus ranges."""
    plt = _pyplot()
    fig: Figure
    fig, ax = plt.subplots(figsize=(3.4, 4.2), dpi=110)
    bottom = 0.0
    for key, colour in zip((r[0] for r in TIR_RANGES), TIR_COLOURS, strict=True):
        pct = stats.ranges_pct[key] if stats else 0.0
        ax.bar(0, pct, bottom=bottom, color=colour, width=0.6)
        if pct >= 3:
            ax.text(0.4, bottom + pct / 2, f"{range_label(key, unit)}: {pct:.0f} %", va="center", fontsize=8)
        bottom += pct
    ax.set(xlim=(-0.5, 2.8), ylim=(0, 100), xticks=[], ylabel="% of CGM readings", title="Time in ranges")
    fig.tight_layout()
    return fig


def daily_figure(data: PatientData, view: View) -> Figure:
    """Daily profiles: one small panel per local day (the last :data:`DAILY_MAX_DAYS`), CGM trace and meter dots."""
    plt = _pyplot()
    first = datetime.fromtimestamp(data.start.timestamp(), view.tz).replace(hour=0, minute=0, second=0, microsecond=0)
    n_days = max(1, math.ceil((data.end.astimezone(view.tz) - first).total_seconds() / 86400.0))
    shown = ""
    if n_days > DAILY_MAX_DAYS:
        first += timedelta(days=n_days - DAILY_MAX_DAYS)
        n_days, shown = DAILY_MAX_DAYS, f"last {DAILY_MAX_DAYS} days; "
    cols = min(7, n_days)
    rows = math.ceil(n_days / cols)
    fig: Figure
    fig, axes = plt.subplots(rows, cols, figsize=(13.2, 1.9 * rows + 0.5), dpi=110, sharey=True, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= n_days:
            ax.set_axis_off()
            continue
        day = first + timedelta(days=k)
        _day_panel(ax, data, day, view)
    fig.suptitle(f"Daily profiles ({shown}{view.unit}; dots: meter readings)", fontsize=11)
    fig.tight_layout()
    return fig


def _day_panel(ax: Any, data: PatientData, day: datetime, view: View) -> None:
    lo = day.timestamp()
    hi = (day + timedelta(days=1)).timestamp()
    _glucose_axis(ax, view.unit)
    cgm = (data.glucose_t >= lo) & (data.glucose_t < hi)
    if cgm.any():
        t = data.glucose_t[cgm]
        hours = (t - lo) / 3600.0
        v = np.asarray(to_unit(data.glucose_v[cgm], view.unit), dtype=np.float64)
        broken = np.concatenate([[False], np.diff(t) > 20 * 60])  # no line across a data gap
        v_line = np.where(broken, np.nan, v)
        ax.plot(hours, v_line, color="#0d47a1", lw=0.9)
    met = (data.meter_t >= lo) & (data.meter_t < hi)
    if met.any():
        ax.plot((data.meter_t[met] - lo) / 3600.0, to_unit(data.meter_v[met], view.unit), "o", color="#d81b60",
                mec="white", ms=5, zorder=3)
    if not cgm.any() and not met.any():
        ax.text(12, float(to_unit(200.0, view.unit)), "no data", ha="center", color="#777", fontsize=8)
    ax.set_xlim(0, 24)
    ax.set_xticks([0, 6, 12, 18, 24])
    ax.tick_params(labelsize=7)
    ax.set_title(day.strftime("%a %d %b"), fontsize=8)


def hr_figure(data: PatientData, tz: ZoneInfo) -> Figure:
    """Heart rate: 15-minute means with their min-max, and the daily mean; "No heart-rate data" without any."""
    plt = _pyplot()
    fig: Figure
    if not data.hr_t.size:
        fig, ax = plt.subplots(figsize=(13.2, 1.2), dpi=110)
        ax.set_axis_off()
        ax.text(0.5, 0.5, "Heart rate: no data in this period", ha="center", va="center", fontsize=14,
                color="#555", transform=ax.transAxes)
        return fig
    fig, ax = plt.subplots(figsize=(13.2, 3.6), dpi=110)
    when = [datetime.fromtimestamp(t, tz) for t in data.hr_t.tolist()]
    ax.fill_between(when, data.hr_min, data.hr_max, color="#e53935", alpha=0.15, label="15-min min–max")
    ax.plot(when, data.hr_mean, color="#c62828", lw=1.0, label="15-min mean")
    days, means = daily_means(data.hr_t, data.hr_mean, tz)
    ax.plot([datetime.fromtimestamp(d, tz) for d in days.tolist()], means, "o-", color="#212121", lw=1.5,
            label="daily mean")
    ax.legend(loc="upper right", fontsize=8, ncols=3)
    fig.autofmt_xdate()
    ax.set(ylabel="heart rate (bpm)", title="Heart-rate trend")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def header_figure(data: PatientData, view: View, warning: str = "") -> Figure:
    """The PNG's title block: patient, period and generation time (a printed PNG must say whose it is),
    and the data-sufficiency warning when there is one (the PNG may travel without the HTML)."""
    plt = _pyplot()
    fig: Figure = plt.figure(figsize=(13.2, 1.3 if warning else 0.9), dpi=110)
    top = 0.72 if warning else 0.62
    fig.text(0.01, top, f"Patient {data.patient}", fontsize=16, weight="bold")
    fig.text(0.01, top - (0.3 if warning else 0.44), f"{period_text(data, view.tz)} · generated "
             f"{generated_text(view)} by rpm", fontsize=10, color="#333")
    if warning:
        fig.text(0.01, 0.06, warning, fontsize=8.5, color="#e65100", weight="bold", wrap=True)
    return fig


def daily_means(t: Floats, v: Floats, tz: ZoneInfo) -> tuple[Floats, Floats]:
    """Mean of ``v`` per local calendar day: (mean time of that day's samples, mean value)."""
    local_day = np.floor((t + np.array([_offset_s(int(x), tz) for x in t.tolist()])) / 86400.0)
    _days, inverse = np.unique(local_day, return_inverse=True)
    counts = np.bincount(inverse)
    when: Floats = np.bincount(inverse, weights=t) / counts
    result: Floats = np.bincount(inverse, weights=v) / counts
    return when, result


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG (and closed)."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# -- HTML ------------------------------------------------------------------------------------------

_MMOL_LABELS: Final = {"very_low": "Very low (<3.0)", "low": "Low (3.0–3.8)", "in_range": "In range (3.9–10.0)",
                       "high": "High (10.1–13.9)", "very_high": "Very high (>13.9)"}


def range_label(key: str, unit: Unit) -> str:
    """The label of a consensus range in ``unit``."""
    if unit == "mmol/L":
        return _MMOL_LABELS[key]
    return next(label for k, label, *_ in TIR_RANGES if k == key)


def period_text(data: PatientData, tz: ZoneInfo) -> str:
    """``2026-01-01 00:00 – 2026-01-15 00:00 (Europe/Berlin)``."""
    return f"{_fmt_time(data.start.timestamp(), tz)} – {_fmt_time(data.end.timestamp(), tz)} ({tz.key})"


def generated_text(view: View) -> str:
    """When the report was generated, in the report's time zone."""
    return view.generated.astimezone(view.tz).strftime("%Y-%m-%d %H:%M %Z")


def _fmt_time(t: float | None, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M") if t else "—"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _rows(rows: Sequence[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)


def _stats_table(stats: GlucoseStats | None, unit: Unit) -> str:
    if stats is None:
        return "<p>No CGM readings in this period.</p>"
    cv_note = "stable" if stats.cv_pct <= CV_TARGET_PCT else "labile (target ≤ 36 %)"
    gmi_text = f"{stats.gmi_pct:.1f} %" if stats.gmi_pct is not None else "withheld (insufficient data)"
    rows = [("CGM readings", f"{stats.n} ({stats.active_pct:.0f} % CGM wear over {stats.sufficiency.days:.1f} days)"),
            ("Mean glucose", fmt_glucose(stats.mean, unit)),
            ("GMI", gmi_text),
            ("Coefficient of variation", f"{stats.cv_pct:.1f} % ({cv_note})")]
    head = "<tr><th>Range</th><th>% of readings</th><th>h:min per day</th><th>Target</th></tr>"
    tir = "".join(
        f"<tr><th>{html.escape(range_label(key, unit))}</th><td>{stats.ranges_pct[key]:.1f} %</td>"
        f"<td>{hours_minutes_per_day(stats.ranges_pct[key])}</td><td>{html.escape(target)}</td></tr>"
        for key, _label, _lo, _hi, target in TIR_RANGES)
    return f'<table class="stats">{_rows(rows)}</table><table class="tir">{head}{tir}</table>'


def _episodes_table(found: Sequence[Episodes], unit: Unit) -> str:
    names = {HYPO_LEVEL1_MG_DL: "Level 1 (<", HYPO_LEVEL2_MG_DL: "Level 2 (<"}
    head = "<tr><th>Hypoglycaemia episodes (≥ 15 min)</th><th>Number</th><th>Median duration</th></tr>"
    body = "".join(
        f"<tr><th>{html.escape(names[e.threshold_mg_dl] + fmt_glucose(e.threshold_mg_dl, unit))})</th>"
        f"<td>{e.count}</td><td>{fmt_duration(e.median_s)}</td></tr>" for e in found)
    return f'<table class="episodes">{head}{body}</table>'


def _meter_table(data: PatientData, view: View) -> str:
    if not data.meter_v.size:
        return "<p>No meter readings in this period.</p>"
    shown = 50
    rows = [(_fmt_time(t, view.tz), fmt_glucose(v, view.unit))
            for t, v in zip(data.meter_t[-shown:].tolist(), data.meter_v[-shown:].tolist(), strict=True)]
    more = f" (the last {shown} shown)" if data.meter_v.size > shown else ""
    return (f"<p>{data.meter_v.size} meter readings{more}: not part of the AGP or the CGM metrics.</p>"
            f'<table class="meter"><tr><th>Time</th><th>Glucose</th></tr>{_rows(rows)}</table>')


def _alerts_table(alerts: Sequence[dict[str, Any]], tz: ZoneInfo) -> str:
    if not alerts:
        return "<p>No alerts in this period.</p>"
    head = ("<tr><th>Raised</th><th>Alert</th><th>Severity</th><th>Peak</th><th>Escalated</th>"
            "<th>Acknowledged</th><th>Cleared</th></tr>")
    rows = []
    for a in alerts:
        ack = f"{_fmt_time(a['acknowledged'], tz)} by {a['by']}" if a["acknowledged"] else "—"
        peak = f"{a['peak']:g}" if a["peak"] is not None else "—"
        cells = [_fmt_time(a["raised"], tz), a["message"] or a["rule"], a["severity"], peak,
                 _fmt_time(a["escalated"], tz), ack, _fmt_time(a["cleared"], tz)]
        rows.append(f'<tr class="sev-{html.escape(str(a["severity"]))}">'
                    + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f'<table class="alerts">{head}{"".join(rows)}</table>'


_CSS: Final = """
body{font-family:"DejaVu Sans",Arial,sans-serif;margin:2rem auto;max-width:1100px;color:#111}
h1{margin-bottom:.2rem}.meta{color:#555}img{max-width:100%}
.row{display:flex;gap:1rem;align-items:flex-start;flex-wrap:wrap}
table{border-collapse:collapse;font-size:.92rem;margin-bottom:.6rem}
th,td{text-align:left;padding:.3rem .6rem;border-bottom:1px solid #ddd}
table.stats th,table.tir th{font-weight:normal;color:#444}table.alerts{width:100%}
tr.sev-critical td:nth-child(3){color:#b71c1c;font-weight:bold}tr.sev-warning td:nth-child(3){color:#e65100}
.warning{border:2px solid #e65100;background:#fff3e0;padding:.6rem 1rem;font-weight:bold}
.note{color:#666;font-size:.85rem}.printed{display:none}
@page{margin:12mm 12mm 18mm}
@media print{body{margin:0}h2{break-before:auto}img,table{break-inside:avoid}
.printed{display:block;position:fixed;bottom:0;left:0;right:0;font-size:.75rem;color:#444;background:#fff;
border-top:1px solid #bbb;padding-top:.2rem}}
"""


def render_html(data: PatientData, stats: GlucoseStats | None, figures: dict[str, bytes], view: View) -> str:
    """The report as one self-contained HTML page."""
    p = html.escape(data.patient)
    tz, unit = view.tz, view.unit
    warning = _sufficiency_warning(stats)
    found = hypo_episodes(data)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Report {p}</title><style>{_CSS}</style></head>
<body>
<div class="printed">Patient {p} · {html.escape(period_text(data, tz))} · generated {html.escape(generated_text(view))}
by rpm</div>
<h1>Patient {p}</h1>
<p class="meta">{html.escape(period_text(data, tz))} · generated {html.escape(generated_text(view))} by rpm ·
glucose in {html.escape(unit)}</p>
{warning}
<h2>Glucose</h2>
<div class="row">{_img(figures["agp"], "Ambulatory Glucose Profile")}</div>
<div class="row">{_img(figures["tir"], "Time in ranges")}<div>{_stats_table(stats, unit)}
{_episodes_table(found, unit)}</div></div>
<p class="note">Ranges and targets: International Consensus on Time in Range (Battelino et al., Diabetes Care
2019); a report needs ≥ 14 days with ≥ 70 % CGM wear. GMI = 3.31 + 0.02392 × mean glucose in mg/dL (Bergenstal
et al., Diabetes Care 2018). AGP: percentiles of the CGM readings by time of day in {AGP_BIN_MIN}-minute bins,
smoothed over three bins. Episodes: ≥ 15 consecutive minutes below the threshold, ended by ≥ 15 minutes at or
above it.</p>
<h3>Daily profiles</h3>
{_img(figures["daily"], "Daily profiles")}
<h3>Meter readings</h3>
{_meter_table(data, view)}
<h2>Heart rate</h2>
{_img(figures["hr"], "Heart-rate trend")}
<h2>Alerts</h2>
{_alerts_table(data.alerts, tz)}
</body></html>
"""


def sufficiency_text(stats: GlucoseStats | None) -> str:
    """The data-sufficiency warning of the report, empty when the data suffice."""
    if stats is None:
        return "No CGM readings in this period: no glucose metrics can be reported."
    return stats.sufficiency.warning()


def _sufficiency_warning(stats: GlucoseStats | None) -> str:
    text = sufficiency_text(stats)
    return f'<p class="warning" role="alert">{html.escape(text)}</p>' if text else ""


def hypo_episodes(data: PatientData) -> tuple[Episodes, Episodes]:
    """Level-1 (< 70 mg/dL) and level-2 (< 54 mg/dL) hypoglycaemia episodes of the CGM readings."""
    return (episodes(data.glucose_t, data.glucose_v, HYPO_LEVEL1_MG_DL),
            episodes(data.glucose_t, data.glucose_v, HYPO_LEVEL2_MG_DL))


# -- entry point -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportOptions:
    """What ``rpm report`` writes."""

    patient: str
    start: datetime
    end: datetime
    out: Path
    png: Path | None = None
    tz: str = "UTC"
    progress: bool = True
    unit: Unit = "mg/dL"


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin") from exc


FIGURES: Final = ("header", "agp", "tir", "daily", "hr")


def build(data: PatientData, view: View) -> tuple[str, dict[str, bytes], GlucoseStats | None]:
    """The HTML, the figures (PNG) and the glucose statistics for ``data``."""
    stats = glucose_stats(data.glucose_v, period_s=(data.end - data.start).total_seconds())
    figures = {"header": png_bytes(header_figure(data, view, sufficiency_text(stats))),
               "agp": png_bytes(agp_figure(data, view)),
               "tir": png_bytes(tir_figure(stats, view.unit)), "daily": png_bytes(daily_figure(data, view)),
               "hr": png_bytes(hr_figure(data, view.tz))}
    return render_html(data, stats, figures, view), figures, stats


def combined_png(figures: dict[str, bytes]) -> bytes:
    """The title block and all figures stacked into one PNG (for ``--png``)."""
    plt = _pyplot()
    images = [plt.imread(io.BytesIO(figures[k]), format="png") for k in FIGURES]
    width = max(img.shape[1] for img in images)
    padded = [np.pad(img, ((0, 0), (0, width - img.shape[1]), (0, 0)), constant_values=1.0) for img in images]
    buf = io.BytesIO()
    plt.imsave(buf, np.concatenate(padded, axis=0), format="png")
    return buf.getvalue()


def write_report(settings: Settings, options: ReportOptions) -> list[Path]:
    """Fetch, compute, render and write; return the files written (:class:`NoDataError` if nothing to show)."""
    view = View(tz=_zone(options.tz), unit=options.unit)
    reader = InfluxReader.from_settings(settings)
    require_data(reader, options.patient, options.start, options.end)
    data = fetch(reader, options.patient, options.start, options.end, progress=options.progress)
    page, figures, _stats = build(data, view)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(page, encoding="utf-8")
    written = [options.out]
    if options.png is not None:
        options.png.write_bytes(combined_png(figures))
        written.append(options.png)
    _LOGGER.info("report for %s written to %s", options.patient, options.out)
    return written
