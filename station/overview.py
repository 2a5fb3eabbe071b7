"""The ward overview: a tile per patient with the current heart rate and glucose, from InfluxDB.

One ``/query`` with three statements, cached for ``OVERVIEW_CACHE_S``:

1. the last ``vitals`` value and its time per patient and metric (last 24 h);
2. 1-minute means of the last 15 minutes, whose least-squares slope gives the trend arrow;
3. the last ``battery_pct`` (and ``state`` when written) of ``device_status`` per patient, where
   the edge agents' status reaches InfluxDB; without it the tile shows no device line.

Trend arrows for glucose follow the rate-of-change categories CGM receivers show (mg/dL per
minute: steady within 1, rising/falling 1-2, fast 2-3, very fast beyond 3; the Dexcom G6 user
guide's arrows). Heart rate has no such convention; the tile uses the same five steps at 1, 2 and
3 bpm per minute, a display choice. A value is stale when older than the rules' ``max_gap`` for
its metric (heart rate 5 min, glucose 20 min).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from typing import Any, Final

import aiohttp
import numpy as np
import orjson

from rpm_core.settings import InfluxAuth, influx_endpoint
from rpm_core.wire import is_valid_id

_LOGGER = logging.getLogger(__name__)

OVERVIEW_METRICS: Final = ("heart_rate", "glucose")
OVERVIEW_CACHE_S: Final = 10.0
STALE_AFTER_S: Final = {"heart_rate": 300.0, "glucose": 1200.0}
# (upper bound of |slope| per minute, arrow name): steady, then rising/falling, fast, very fast.
TREND_STEPS: Final = ((1.0, "steady"), (2.0, "slow"), (3.0, "fast"))
QUERY: Final = (
    "SELECT last(\"value\") FROM \"vitals\" WHERE time > now() - 24h "
    "AND (\"metric\" = 'heart_rate' OR \"metric\" = 'glucose') GROUP BY \"patient\", \"metric\";"
    "SELECT mean(\"value\") FROM \"vitals\" WHERE time > now() - 15m "
    "AND (\"metric\" = 'heart_rate' OR \"metric\" = 'glucose') GROUP BY time(1m), \"patient\", \"metric\" "
    "fill(none);"
    "SELECT last(\"battery_pct\") AS \"battery_pct\", last(\"state\") AS \"state\" FROM \"device_status\" "
    "WHERE time > now() - 24h GROUP BY \"patient\""
)


def trend(points: list[tuple[float, float]]) -> tuple[float | None, str]:
    """Slope per minute of ``points`` (epoch s, value) by least squares, and its arrow category
    (``up-very-fast`` … ``steady`` … ``down-very-fast``); ``(None, "unknown")`` with fewer than 3 points."""
    if len(points) < 3:
        return None, "unknown"
    arr = np.asarray(points, dtype=np.float64)
    t = (arr[:, 0] - arr[0, 0]) / 60.0
    if float(np.ptp(t)) <= 0:
        return None, "unknown"
    slope = float(np.polyfit(t, arr[:, 1], 1)[0])
    for bound, name in TREND_STEPS:
        if abs(slope) < bound:
            return slope, "steady" if name == "steady" else f"{'up' if slope > 0 else 'down'}-{name}"
    return slope, f"{'up' if slope > 0 else 'down'}-very-fast"


def parse_overview(doc: Any, now: float) -> dict[str, dict[str, Any]]:
    """Tiles by patient from the answer to :data:`QUERY`; ``ValueError`` if it has another shape."""
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, list) or len(results) != 3 or not all(isinstance(r, dict) for r in results):
        raise ValueError("InfluxDB answer without three results")
    tiles: dict[str, dict[str, Any]] = defaultdict(dict)
    for patient, metric, rows in _series(results[0]):
        t, v = _last_row(rows)
        if metric in OVERVIEW_METRICS and t is not None and v is not None:
            age = max(0.0, now - t)
            tiles[patient][metric] = {"value": v, "time": t, "age_s": age, "stale": age > STALE_AFTER_S[metric],
                                      "slope": None, "trend": "unknown"}
    trends: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for patient, metric, rows in _series(results[1]):
        trends[(patient, metric)] += [(float(r[0]), float(r[1])) for r in rows if _finite_row(r)]
    for (patient, metric), points in trends.items():
        cell = tiles.get(patient, {}).get(metric)
        if cell is not None and not cell["stale"]:
            cell["slope"], cell["trend"] = trend(sorted(points))
    for patient, _metric, rows in _series(results[2], need_metric=False):
        row = rows[-1] if rows else None
        if isinstance(row, list) and len(row) >= 3:
            battery = row[1] if isinstance(row[1], int | float) and not isinstance(row[1], bool) else None
            state = row[2] if isinstance(row[2], str) else None
            tiles[patient]["device"] = {"battery_pct": battery, "state": state}
    return dict(tiles)


def _series(result: dict[str, Any], *, need_metric: bool = True) -> list[tuple[str, str, list[Any]]]:
    if "error" in result:
        # device_status may not exist yet; vitals errors are real errors
        if not need_metric:
            return []
        raise ValueError(f"InfluxDB error: {str(result['error'])[:200]}")
    out = []
    series = result.get("series") or []
    if not isinstance(series, list):
        raise ValueError("InfluxDB series is not a list")
    for s in series:
        tags = s.get("tags") if isinstance(s, dict) else None
        rows = s.get("values") if isinstance(s, dict) else None
        if not isinstance(tags, dict) or not isinstance(rows, list):
            raise ValueError("InfluxDB series without tags and values")
        patient, metric = tags.get("patient"), tags.get("metric", "")
        if not is_valid_id(patient) or (need_metric and metric not in OVERVIEW_METRICS):
            continue
        out.append((str(patient), str(metric), rows))
    return out


def _finite_row(row: Any) -> bool:
    return (isinstance(row, list) and len(row) >= 2 and all(
        isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in row[:2]))


def _last_row(rows: list[Any]) -> tuple[float | None, float | None]:
    row = rows[-1] if rows else None
    if not _finite_row(row):
        return None, None
    assert isinstance(row, list)
    return float(row[0]), float(row[1])


class Overview:
    """The ward's tiles from InfluxDB (cached); empty tiles without InfluxDB, a warning when it fails."""

    def __init__(self, *, url: str | None, db: str, auth: InfluxAuth | None = None) -> None:
        self.url, self._auth = influx_endpoint(url, auth)
        self.db = db
        self.error: str | None = None
        self._cache: tuple[float, dict[str, dict[str, Any]]] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def tiles(self) -> dict[str, dict[str, Any]]:
        """Tiles by patient (every patient InfluxDB knows; the caller keeps the ward's)."""
        now = time.monotonic()
        if self._cache is not None and now - self._cache[0] < OVERVIEW_CACHE_S:
            return self._cache[1]
        tiles = await self._query()
        self._cache = (now, tiles)
        return tiles

    async def _query(self) -> dict[str, dict[str, Any]]:
        if self.url is None:
            self.error = "no InfluxDB configured (RPM_INFLUX_URL)"
            return {}
        headers = self._auth.headers()
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with self._session.get(f"{self.url}/query", params={"db": self.db, "q": QUERY, "epoch": "s"},
                                         headers=headers) as resp:
                doc = await resp.json(loads=orjson.loads, content_type=None)
            tiles = parse_overview(doc, time.time())
            self.error = None
            return tiles
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            _LOGGER.warning("ward overview query failed: %s", type(exc).__name__)
            self.error = f"InfluxDB query failed ({type(exc).__name__}): current values unknown"
            return {}

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
