"""Render docs/img/report.png: a clinician report of 14 synthetic days, as headless Chromium prints it.

Usage: .venv/bin/python scripts/report_screenshot.py [OUT.png]

The data are made here (a CGM with a daily pattern, two nocturnal lows, meter readings, 15-minute
heart-rate means, one acknowledged alert), the report is built by rpm_app.report exactly as
``rpm report`` builds it, and Debian's chromium (via Playwright, as the nurse-station tests drive
it) renders the HTML.
"""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from rpm_app.report import PatientData, View, build

CHROMIUM = "/usr/bin/chromium"


def synthetic() -> PatientData:
    """14 days of one patient."""
    end = datetime(2026, 11, 30, tzinfo=UTC)
    start = datetime(2026, 11, 16, tzinfo=UTC)
    rng = np.random.default_rng(19)
    t = np.arange(start.timestamp(), end.timestamp(), 300.0)
    t = t[rng.random(t.size) > 0.08]  # 92 % wear
    day = (t % 86400) / 86400
    g = (135 + 45 * np.sin(2 * np.pi * (day - 0.35)) + 30 * np.exp(-((day - 0.55) ** 2) / 0.002)
         + rng.normal(0, 18, t.size))
    for lo in (start.timestamp() + 3 * 86400 + 3 * 3600, start.timestamp() + 9 * 86400 + 2.5 * 3600):
        g = np.where((t >= lo) & (t < lo + 2400), 50 + rng.normal(0, 3, t.size), g)
    meter_t = start.timestamp() + np.arange(14) * 86400 + 7 * 3600
    hr_t = np.arange(start.timestamp(), end.timestamp(), 900.0)
    hr = 72 + 10 * np.sin(2 * np.pi * ((hr_t % 86400) / 86400 - 0.3)) + rng.normal(0, 2, hr_t.size)
    raised = start.timestamp() + 9 * 86400 + 2.5 * 3600 + 900
    alerts = [{"alert_id": "a1", "rule": "glucose_low", "metric": "glucose", "severity": "critical", "raised": raised,
               "escalated": None, "acknowledged": raised + 240, "by": "Ana Lima", "cleared": raised + 1800,
               "peak": 47.0, "message": "Glucose below 54 mg/dL for 15 min (now 49 mg/dL)"}]
    return PatientData(patient="p0042", start=start, end=end, glucose_t=t, glucose_v=np.clip(g, 40, 400),
                       meter_t=meter_t, meter_v=np.interp(meter_t, t, np.clip(g, 40, 400)) + 6,
                       hr_t=hr_t, hr_mean=hr, hr_min=hr - 6, hr_max=hr + 9, alerts=alerts)


def main(out: Path) -> None:
    """Build the report and take the screenshot."""
    from playwright.sync_api import sync_playwright

    view = View(tz=ZoneInfo("Europe/Berlin"), generated=datetime(2026, 11, 30, 8, 15, tzinfo=UTC))
    page_html, _figures, _stats = build(synthetic(), view)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        html = Path(tmp) / "report.html"
        html.write_text(page_html, encoding="utf-8")
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.goto(html.as_uri())
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "docs/img/report.png")
