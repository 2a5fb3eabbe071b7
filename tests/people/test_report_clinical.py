"""``rpm report`` as a clinician reads it: data sufficiency, episodes, CGM-only AGP, units, "no data".

Numbers are checked against independent computations on the data the test writes; the report is
read from a real InfluxDB through the real CLI.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from rpm_app.report import PatientData, View, daily_figure, glucose_stats, header_figure, hr_figure
from rpm_core.glycaemia import Sufficiency, episodes, fmt_duration, hours_minutes_per_day
from tests.people.support import write_lines
from tests.support.procs import rpm_argv

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _env(url: str, db: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    return {**env, "RPM_INFLUX_URL": url, "RPM_INFLUX_DB": db}


# -- pure ------------------------------------------------------------------------------------------


def test_episodes_follow_the_consensus_definition() -> None:
    t = np.arange(0, 48 * 300, 300, dtype=float)  # 4 h of 5-minute readings
    v = np.full(t.size, 120.0)
    v[2:4] = 65.0  # 2 readings = 10 min below 70: not an episode
    v[10:14] = 60.0  # 20 min below 70
    v[15:18] = 50.0  # 5 min above (v[14]) then 15 min below 54: merged with the run before (level 1)
    v[30:36] = 62.0  # a separate 30-min episode (≥ 15 min above since)
    one = episodes(t, v, 70.0)
    assert one.count == 2
    assert one.durations_s.tolist() == [(18 - 10) * 300.0, 6 * 300.0]
    assert one.median_s == pytest.approx(((8 + 6) / 2) * 300.0)
    two = episodes(t, v, 54.0)
    assert two.count == 1 and two.durations_s.tolist() == [900.0]
    assert episodes(t, np.full(t.size, 100.0), 70.0).count == 0
    assert episodes(t, np.full(t.size, 100.0), 70.0).median_s is None


def test_a_data_gap_ends_a_low_run() -> None:
    t = np.array([0, 300, 600, 3600, 3900, 4200], dtype=float)  # 50 min without readings in between
    v = np.array([60, 60, 60, 60, 60, 60], dtype=float)
    found = episodes(t, v, 70.0)
    assert found.count == 2 and found.durations_s.tolist() == [900.0, 900.0]


def test_sufficiency_withholds_gmi_below_14_days_or_70_percent_wear() -> None:
    one_day = np.full(288, 150.0)
    short = glucose_stats(one_day, period_s=86400.0)
    assert short is not None and short.gmi_pct is None
    assert "1.0 days" in short.sufficiency.warning()
    full = glucose_stats(np.full(14 * 288, 150.0), period_s=14 * 86400.0)
    assert full is not None and full.gmi_pct == pytest.approx(3.31 + 0.02392 * 150)
    assert full.sufficiency.warning() == ""
    worn = glucose_stats(np.full(int(14 * 288 * 0.69), 150.0), period_s=14 * 86400.0)
    assert worn is not None and worn.gmi_pct is None and "wear is 69 %" in worn.sufficiency.warning()
    assert Sufficiency(days=14.0, wear_pct=70.0).sufficient


def test_hours_minutes_and_durations() -> None:
    assert hours_minutes_per_day(70.0) == "16:48"
    assert hours_minutes_per_day(0.0) == "0:00" and hours_minutes_per_day(100.0) == "24:00"
    assert fmt_duration(35 * 60) == "35 min" and fmt_duration(125 * 60) == "2 h 05 min"


def test_heart_rate_panel_says_no_data_without_axes() -> None:
    data = PatientData("p1", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))
    fig = hr_figure(data, ZoneInfo("UTC"))
    [ax] = fig.axes
    assert not ax.axison
    assert [t.get_text() for t in ax.texts] == ["Heart rate: no data in this period"]


def test_png_title_block_names_patient_period_and_time() -> None:
    from zoneinfo import ZoneInfo

    data = PatientData("p1", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 15, tzinfo=UTC))
    view = View(tz=ZoneInfo("Europe/Berlin"), generated=datetime(2026, 1, 15, 9, 30, tzinfo=UTC))
    texts = [t.get_text() for t in header_figure(data, view).texts]
    assert len(texts) == 2 and texts[0] == "Patient p1"
    assert "2026-01-01 01:00 – 2026-01-15 01:00 (Europe/Berlin)" in texts[1]
    assert "generated 2026-01-15 10:30 CET" in texts[1]


# -- through InfluxDB and the CLI ------------------------------------------------------------------


def _two_days(patient: str, end: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    start = end - 2 * 86400
    tg = np.arange(start, end, 300)
    v = np.full(tg.size, 140.0)
    v[100:106] = 60.0  # one 30-minute level-1 episode
    v[300:304] = 50.0  # one 20-minute level-2 (and level-1) episode
    lines = [f"vitals,device=cgm-{patient},metric=glucose,patient={patient},source=ble value={x} {t * 1000}"
             for t, x in zip(tg.tolist(), v.tolist(), strict=True)]
    meter = [(start + 3600, 333.0), (start + 7200, 35.0)]  # extreme: would move the AGP and TIR if mixed in
    lines += [f"vitals,device=bgm-{patient},metric=glucose,patient={patient},source=ble value={x} {t * 1000}"
              for t, x in meter]
    return lines, tg, v


@pytest.mark.services
def test_short_period_report_warns_withholds_gmi_and_keeps_meter_apart(influx_url: str, influx_db: str,
                                                                      tmp_path: Path) -> None:
    end = int(time.time()) // 300 * 300
    lines, _tg, v = _two_days("pc", end)
    write_lines(influx_url, influx_db, lines)
    out = tmp_path / "pc.html"
    done = subprocess.run(rpm_argv("report", "--patient", "pc", "--days", "2", "--out", str(out), "--png", "--quiet",
                                   "--end", datetime.fromtimestamp(end, UTC).isoformat(), "--units", "mmol/L"),
                          env=_env(influx_url, influx_db), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    page = out.read_text()
    warning = re.search(r'<p class="warning" role="alert">([^<]+)</p>', page)
    assert warning and "Insufficient CGM data" in warning.group(1) and "2.0 days" in warning.group(1)
    assert "GMI</th><td>withheld" in page
    in_range = float(np.mean((v >= 70) & (v <= 180)) * 100)
    assert f"<td>{in_range:.1f} %</td><td>{hours_minutes_per_day(in_range)}</td>" in page
    assert "In range (3.9–10.0)" in page and f"{v.mean() / 18:.1f} mmol/L" in page
    assert re.search(r"Level 1 \(&lt;3\.9 mmol/L\)</th><td>2</td><td>25 min</td>", page), "30 and 20 min → median 25"
    assert re.search(r"Level 2 \(&lt;3\.0 mmol/L\)</th><td>1</td><td>20 min</td>", page)
    assert "2 meter readings" in page and "18.5 mmol/L" in page  # 333 mg/dL, shown apart
    very_low = float(np.mean(v < 54) * 100)
    assert f"<td>{very_low:.1f} %</td>" in page, "the meter's 35 mg/dL is not in the CGM time in ranges"
    png = out.with_suffix(".png").read_bytes()
    assert png.startswith(PNG_MAGIC)

    import matplotlib.pyplot as plt

    img = plt.imread(io.BytesIO(png), format="png")
    # title block with the warning 143 px + AGP 462 + TIR 462 + one row of daily profiles 264 + "no data" HR 132
    assert img.shape[0] == 143 + 462 + 462 + 264 + 132
    assert img[:143, :600, :3].min() < 0.3, "the title block holds dark text"
    orange = (img[100:143, :, 0] > 0.8) & (img[100:143, :, 1] < 0.6) & (img[100:143, :, 2] < 0.3)
    assert orange.any(), "the sufficiency warning is on the PNG too"


@pytest.mark.services
@pytest.mark.parametrize("command", ["report", "fhir"])
def test_unknown_patient_and_empty_period_exit_non_zero(influx_url: str, influx_db: str, tmp_path: Path,
                                                        command: str) -> None:
    end = int(time.time()) // 300 * 300
    write_lines(influx_url, influx_db, _two_days("pe", end)[0])
    out = tmp_path / "out"
    long_ago = datetime.fromtimestamp(end - 30 * 86400, UTC)

    def run(patient: str, when: datetime) -> subprocess.CompletedProcess[str]:
        if command == "report":
            argv = ["report", "--patient", patient, "--days", "1", "--end", when.isoformat(), "--out", str(out),
                    "--quiet"]
        else:
            argv = ["export", "fhir", "--patient", patient, "--since", (when.replace(day=1)).isoformat(),
                    "--until", when.isoformat(), "--out", str(out)]
        return subprocess.run(rpm_argv(*argv), env=_env(influx_url, influx_db), capture_output=True, text=True,
                              timeout=120)

    unknown = run("nobody", datetime.fromtimestamp(end, UTC))
    assert unknown.returncode != 0 and "unknown patient 'nobody'" in unknown.stderr
    assert not out.exists()
    empty = run("pe", long_ago)
    assert empty.returncode != 0 and "has no readings between" in empty.stderr
    assert not out.exists()


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_every_printed_page_names_patient_period_and_generation_time(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from rpm_app.report import build

    start = datetime(2026, 11, 16, tzinfo=UTC)
    t = np.arange(start.timestamp(), start.timestamp() + 14 * 86400, 300.0)
    data = PatientData("p0042", start, datetime(2026, 11, 30, tzinfo=UTC), glucose_t=t,
                       glucose_v=np.full(t.size, 120.0))
    view = View(tz=ZoneInfo("Europe/Berlin"), generated=datetime(2026, 11, 30, 8, 15, tzinfo=UTC))
    page_html, _figures, _stats = build(data, view)
    html_path = tmp_path / "r.html"
    html_path.write_text(page_html)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(html_path.as_uri())
            footer = page.locator(".printed")
            assert not footer.is_visible(), "on screen the title at the top says it"
            page.emulate_media(media="print")
            assert footer.is_visible()
            assert footer.evaluate("e => getComputedStyle(e).position") == "fixed", "repeated on every page"
            text = footer.inner_text()
            pdf = page.pdf(format="A4")
        finally:
            browser.close()
    assert "Patient p0042" in text and "2026-11-16 01:00 – 2026-11-30 01:00 (Europe/Berlin)" in text
    assert "generated 2026-11-30 09:15 CET" in text
    assert pdf.startswith(b"%PDF"), "the page prints"


def test_daily_profiles_show_at_most_four_weeks() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    data = PatientData("p1", start, datetime(2026, 4, 1, tzinfo=UTC))
    fig = daily_figure(data, View(tz=ZoneInfo("UTC")))
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert len(titles) == 28 and titles[0] == "Wed 04 Mar" and titles[-1] == "Tue 31 Mar"
    assert "last 28 days" in fig._suptitle.get_text()
