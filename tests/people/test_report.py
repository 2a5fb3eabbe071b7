"""``rpm report``: the numbers (consensus ranges, GMI, CV, AGP) and the HTML/PNG from a real InfluxDB."""

from __future__ import annotations

import base64
import re
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from rpm_app.report import InfluxReader, agp, alert_episodes, fetch, glucose_stats, gmi, time_in_ranges
from tests.people.conftest import Sim
from tests.people.support import alert_row, write_lines
from tests.support.procs import rpm_argv, rpm_env

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_time_in_ranges_follow_the_consensus_edges() -> None:
    values = np.array([53.9, 54, 69, 69.9, 70, 180, 180.5, 250, 251, 400], dtype=float)
    assert time_in_ranges(values) == {"very_low": 10.0, "low": 30.0, "in_range": 20.0, "high": 20.0,
                                      "very_high": 20.0}


def test_gmi_cv_and_coverage() -> None:
    assert gmi(154.0) == pytest.approx(3.31 + 0.02392 * 154.0)
    assert gmi(154.0) == pytest.approx(6.99, abs=0.01)
    values = np.array([100.0, 140.0, 180.0, 120.0])
    stats = glucose_stats(values, period_s=4 * 300)
    assert stats is not None
    assert stats.mean == 135.0 and stats.cv_pct == pytest.approx(np.std(values, ddof=1) / 135.0 * 100)
    assert stats.active_pct == 100.0
    assert glucose_stats(np.empty(0), period_s=1.0) is None


def test_agp_percentiles_by_local_time_of_day() -> None:
    tz = ZoneInfo("Europe/Berlin")
    start = datetime(2026, 1, 5, tzinfo=tz).timestamp()  # winter: UTC+1
    t = start + np.arange(14 * 288) * 300.0
    local_hour = ((t - start) % 86400) / 3600
    values = 100 + 50 * (local_hour >= 12)  # 100 mg/dL mornings, 150 afternoons (local time)
    hours, p = agp(t, values.astype(float), tz)
    assert p.shape == (5, 96)
    assert np.allclose(p[:, 4:44], 100) and np.allclose(p[:, 52:92], 150)
    assert np.all(p[0] <= p[2]) and np.all(p[2] <= p[4])
    assert hours[0] == pytest.approx(0.125)


def test_alert_episodes_fold_state_changes() -> None:
    rows = [
        {"time": 1000, "alert_id": "a", "rule": "glucose_low", "severity": "warning", "state": "raised", "value": 62.0,
         "message": "low"},
        {"time": 2000, "alert_id": "a", "rule": "glucose_low", "severity": "critical", "state": "raised", "value": 50.0,
         "message": "very low"},
        {"time": 3000, "alert_id": "a", "rule": "glucose_low", "severity": "critical", "state": "escalated"},
        {"time": 4000, "alert_id": "a", "rule": "glucose_low", "severity": "critical", "state": "acknowledged",
         "by": "Ana"},
        {"time": 5000, "alert_id": "a", "rule": "glucose_low", "severity": "critical", "state": "cleared",
         "value": 90.0},
    ]
    [e] = alert_episodes(rows)
    assert (e["severity"], e["raised"], e["escalated"], e["acknowledged"], e["by"], e["cleared"], e["peak"]) == (
        "critical", 1.0, 3.0, 4.0, "Ana", 5.0, 50.0)


@pytest.mark.services
def test_fourteen_days_report_html_and_png(influx_url: str, influx_db: str, tmp_path: Path) -> None:
    end = int(time.time()) // 300 * 300
    start = end - 14 * 86400
    rng = np.random.default_rng(3)
    tg = np.arange(start, end, 300)
    glucose = np.clip(140 + 60 * np.sin(2 * np.pi * ((tg % 86400) / 86400 - 0.3)) + rng.normal(0, 25, tg.size), 40, 400)
    glucose = np.round(glucose)
    th = np.arange(start, end, 60)
    hr = np.round(72 + 10 * np.sin(2 * np.pi * (th % 86400) / 86400) + rng.normal(0, 3, th.size))
    lines = [f"vitals,device=cgm-pr,metric=glucose,patient=pr,source=sim value={v} {t * 1000}"
             for t, v in zip(tg.tolist(), glucose.tolist(), strict=True)]
    lines += [f"vitals,device=hrs-pr,metric=heart_rate,patient=pr,source=sim value={v} {t * 1000}"
              for t, v in zip(th.tolist(), hr.tolist(), strict=True)]
    raised, acked = start + 3 * 86400, start + 3 * 86400 + 240
    low = {"alert": "g1", "metric": "glucose"}
    lines += [
        alert_row("pr", "glucose_low", "critical", "raised", raised, value=49.0,
                  message="Glucose below 54 mg/dL for 15 min (now 49 mg/dL)", **low),
        alert_row("pr", "glucose_low", "critical", "acknowledged", acked, by="Ana Lima", **low),
        alert_row("pr", "glucose_low", "critical", "cleared", acked + 1800, value=88.0, **low),
    ]
    write_lines(influx_url, influx_db, lines)

    out = tmp_path / "pr.html"
    env = rpm_env_for(influx_url, influx_db)
    done = subprocess.run(rpm_argv("report", "--patient", "pr", "--days", "14", "--out", str(out), "--png",
                                   "--end", datetime.fromtimestamp(end, UTC).isoformat(), "--tz", "Europe/Berlin"),
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    page = out.read_text()
    values = glucose.astype(float)
    tir = time_in_ranges(values)
    assert f"{tir['in_range']:.1f} %" in page and f"{tir['very_low']:.1f} %" in page
    assert f"{gmi(values.mean()):.1f} %" in page
    assert f"{np.std(values, ddof=1) / values.mean() * 100:.1f} %" in page
    assert "Ambulatory Glucose Profile" in page and "Heart-rate trend" in page
    assert "Ana Lima" in page and "Glucose below 54 mg/dL" in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert 'class="warning"' not in page, "14 full days of CGM: sufficient"
    assert len(images) == 4 and all(base64.b64decode(i).startswith(PNG_MAGIC) for i in images)
    png = out.with_suffix(".png")
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 20_000

    data = fetch(InfluxReader(url=influx_url, db=influx_db), "pr",
                 datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC), progress=False)
    assert data.glucose_v.size == tg.size
    assert data.hr_t.size == np.unique(th // 900).size == np.unique(data.hr_t).size, "no bucket split by a chunk"
    assert data.start + timedelta(days=14) == data.end


def rpm_env_for(url: str, db: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    return {**env, "RPM_INFLUX_URL": url, "RPM_INFLUX_DB": db}


@pytest.mark.services
@pytest.mark.slow
def test_report_of_a_simulated_patient(sim: Sim, tmp_path: Path) -> None:
    out = tmp_path / "p0001.html"
    done = subprocess.run(rpm_argv("report", "--patient", "p0001", "--days", "1", "--out", str(out), "--quiet"),
                          env=rpm_env(sim.stack, mqtt_user=None), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    page = out.read_text()
    assert "Glucose below 54 mg/dL" in page and "critical" in page
    very_low = re.search(r"Very low \(&lt;54\)</th><td>([\d.]+) %", page)
    assert very_low and float(very_low.group(1)) > 0
