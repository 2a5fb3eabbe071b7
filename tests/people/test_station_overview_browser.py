"""The ward overview of a 30-patient ward in a real headless Chromium at 1920x1080.

Readings are written to the real InfluxDB in the worker's ``vitals`` schema (fresh, falling, old,
none), one patient's device status in ``device_status``, one critical alert produced to real
Tansu; ``rpm nurse-station`` runs with a roster of 30 patients. The page must show a tile per
patient with current values, trend arrows, data age, stale marking and battery, the alarm tile
first, at least 24 tiles on one 1080p screen, and a detail view.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from rpm_app.services import http_ok
from rpm_core.host import free_port
from rpm_core.roster import hash_password
from rpm_core.technical import TechnicalAlert
from tests.people.conftest import Sim
from tests.people.support import event, produce, produce_events, run_sync, write_lines
from tests.support.influx import rows
from tests.support.procs import eventually, rpm_env, running, spawn

pytestmark = [pytest.mark.services, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
PASSWORD = "ward-overview-3N"
WAIT_MS = 30_000
PATIENTS = [f"p{n:04d}" for n in range(100, 130)]
FALLING, STALE, NO_DATA, LOW_BATTERY, ALARM = "p0101", "p0128", "p0129", "p0103", "p0104"
BADGE, PIN, NURSE = "4711", "482913", "Ana Lima"


def vitals(patient: str, metric: str, values: list[float], end_s: float) -> list[str]:
    """One reading a minute ending at ``end_s``, as the worker writes them (ms precision)."""
    start = end_s - 60 * (len(values) - 1)
    return [f"vitals,device=dev-{patient},metric={metric},patient={patient},source=ble value={v!r} "
            f"{int((start + 60 * i) * 1000)}" for i, v in enumerate(values)]


@pytest.fixture
def ward_station(sim: Sim, tmp_path: Path) -> Iterator[str]:
    now = time.time()
    lines: list[str] = []
    for i, p in enumerate(PATIENTS):
        if p == NO_DATA:
            continue
        end = now - 40 * 60 if p == STALE else now - 20
        glucose = [160.0 - 2.5 * k for k in range(15)] if p == FALLING else [110.0 + (i % 5)] * 15
        lines += vitals(p, "heart_rate", [70.0 + i] * 15, end) + vitals(p, "glucose", glucose, end)
    lines.append(f"device_status,device=dev-{LOW_BATTERY},patient={LOW_BATTERY} battery_pct=12i,"
                 f'state="connected" {int((now - 30) * 1000)}')
    write_lines(sim.url, sim.db, lines)
    roster = tmp_path / "roster.yaml"
    roster.write_text(f"""version: 1
wards:
  north:
    name: Ward 3 North
    patients: [{", ".join(PATIENTS)}]
    glucose_unit: mmol/L
    beds: {{{ALARM}: {{bed: "12A", name: "Test Patient"}}}}
stations:
  north-desk: {{ward: north, password_hash: "{hash_password(PASSWORD)}"}}
nurses:
  "{BADGE}": {{name: {NURSE}, pin_hash: "{hash_password(PIN)}", wards: [north]}}
""")
    port = free_port()
    proc = spawn("nurse-station", ["nurse-station", "--supervision-timeout", "0", "--port", str(port)],
                 rpm_env(sim.stack, mqtt_user=None, RPM_ROSTER=str(roster)), tmp_path)
    with running(proc):
        eventually(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), bool, timeout=60,
                   what="the nurse station caught up with rpm.alerts", watch=(proc,), interval=0.2)
        yield f"http://127.0.0.1:{port}"


def test_a_tile_per_patient_alarms_first_stale_visible_24_on_one_screen_and_a_detail_view(
        sim: Sim, ward_station: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    now = time.time()
    low = event(ALARM, "glucose_low", severity="critical", metric="glucose", value=48.0, since=now - 900, time=now)
    run_sync(produce_events(sim.bootstrap, [low], keys=sim.keys))
    battery = TechnicalAlert(rule="tech.device.battery_low", scope="p0105/cgm-p0105", severity="warning",
                             state="raised", time=now, since=now, message="CGM cgm-p0105 battery at 8 %",
                             remedy="Replace or charge the CGM transmitter", component="device", wards=("north",),
                             patient="p0105").to_dict()
    run_sync(produce(sim.bootstrap, "rpm.alerts", [(b"p0105", orjson.dumps(battery))], keys=sim.keys))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            page.set_default_timeout(WAIT_MS)
            page.goto(ward_station)
            page.fill("#station", "north-desk")
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            expect(page.locator("#conn")).to_have_text("Live")
            tiles = page.locator("#overview li.tile")
            expect(tiles).to_have_count(30)
            expect(tiles.first).to_have_attribute("data-patient", ALARM)
            expect(tiles.first).to_contain_text("Glucose low")
            expect(tiles.first.locator(".tile-id")).to_have_text(f"12A · {ALARM}")
            expect(tiles.first.locator(".tile-name")).to_have_text("Test Patient")
            first = tiles.first.get_attribute("class") or ""
            assert "sev-critical" in first, first

            def tile(p: str):  # type: ignore[no-untyped-def]
                return page.locator(f'#overview li.tile[data-patient="{p}"]')

            expect(tile(FALLING).locator('.tile-val[data-metric="glucose"] .arrow')).to_have_text("↓")
            # This ward reads glucose in mmol/L: 125 mg/dL is 6.9 mmol/L.
            expect(tile(FALLING).locator('.tile-val[data-metric="glucose"]')).to_contain_text("6.9 mmol/L")
            expect(tile("p0102").locator('.tile-val[data-metric="heart_rate"]')).to_contain_text("72")
            expect(tile("p0102").locator('.tile-val[data-metric="heart_rate"] .arrow')).to_have_text("→")
            expect(tile(STALE).locator(".tile-age").first).to_contain_text("STALE")
            assert "stale" in (tile(STALE).get_attribute("class") or "")
            expect(tile(NO_DATA)).to_contain_text("no data")
            expect(tile(LOW_BATTERY).locator(".tile-dev")).to_contain_text("battery 12%")
            assert "low" in (tile(LOW_BATTERY).locator(".tile-dev").get_attribute("class") or "")
            # The alarm card: the value at alarm beside the current one, a sparkline with its thresholds.
            card = page.locator("li.alert", has_text=ALARM)
            expect(card.locator(".value")).to_contain_text("2.7 mmol/L")  # 48 mg/dL at alarm
            expect(card.locator(".now-value")).to_contain_text("now 6.3 mmol/L")  # 114 mg/dL now
            expect(card.locator("svg text", has_text="3.9")).to_have_count(1)  # the 70 mg/dL threshold, labelled
            expect(card.locator("svg line")).to_have_count(2)  # glucose_low warning 70, critical 54
            expect(card.locator("svg text", has_text="now")).to_have_count(1)
            # A device's technical alarm shows on its patient's tile (and in the band above).
            expect(tile("p0105").locator(".tile-tech")).to_have_text("⚠ Device battery low")
            expect(page.locator("#tech-band li.tech-item", has_text="battery at 8 %")).to_have_count(1)
            # Stale, no-data and device-trouble tiles come right after the alarms, before the quiet ones.
            order = [tiles.nth(i).get_attribute("data-patient") for i in range(4)]
            assert order == [ALARM, "p0105", STALE, NO_DATA], order

            # At least 24 tiles fit one 1080p screen below the header, text no smaller than 14 px.
            page.evaluate("document.getElementById('overview-h').scrollIntoView()")
            fit = page.evaluate("""() => {
                const tiles = [...document.querySelectorAll('#overview li.tile')];
                const top = document.getElementById('top').getBoundingClientRect().bottom;
                const visible = tiles.filter((t) => { const r = t.getBoundingClientRect();
                    return r.top >= top && r.bottom <= window.innerHeight; }).length;  // not under the header
                const px = parseFloat(getComputedStyle(tiles[0].querySelector('.tile-age')).fontSize);
                return [visible, px, top]; }""")
            assert fit[0] >= 24 and fit[1] >= 14, fit
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(tmp_path / "overview.png"))

            # A tile opens the patient's detail: trends and alarms with dates.
            tile(ALARM).click()
            dialog = page.locator("dialog#detail")
            expect(dialog).to_be_visible()
            expect(dialog.locator("#detail-h")).to_have_text(ALARM)
            expect(dialog.locator("#detail-glucose svg polyline")).to_have_count(1)
            expect(dialog.locator("#detail-alerts tbody tr")).to_contain_text("Glucose low")
            expect(dialog.locator("#detail-alerts tbody tr")).to_contain_text(time.strftime("%Y"))
            page.screenshot(path=str(tmp_path / "detail.png"))
            dialog.locator("#detail-close").click()
            expect(dialog).to_be_hidden()
            # The battery was changed: the producer clears it, the tile's warning goes.
            cleared = {**battery, "state": "cleared", "time": time.time() + 1}
            run_sync(produce(sim.bootstrap, "rpm.alerts", [(b"p0105", orjson.dumps(cleared))], keys=sim.keys))
            expect(tile("p0105").locator(".tile-tech")).to_have_count(0)

            # Individual nurses: acting needs a badge and PIN; the acknowledgement is in that nurse's name.
            expect(page.locator("#nurse-name")).to_have_text("nobody signed in")
            card.locator(".ack-action").select_option("Called patient")
            card.locator(".ack-btn").click()
            signin = page.locator("dialog#signin")
            expect(signin).to_be_visible()
            page.fill("#badge", BADGE)
            page.fill("#pin", "000000")
            signin.locator("button[type=submit]").click()
            expect(page.locator("#signin-error")).to_have_text("wrong badge number or PIN")
            page.fill("#pin", PIN)
            signin.locator("button[type=submit]").click()
            expect(signin).to_be_hidden()
            expect(page.locator("#nurse-name")).to_have_text(NURSE)
            card.locator(".ack-action").select_option("Called patient")
            card.locator(".ack-btn").click()
            expect(card.locator(".ack-line")).to_contain_text(f"ACKNOWLEDGED by {NURSE}")
        finally:
            browser.close()
    audit = eventually(lambda: rows(sim.url, sim.db, f"SELECT * FROM station_audit WHERE \"user\" = '{BADGE}'"),
                       lambda got: {r["action"] for r in got} >= {"nurse_sign_in", "ack"}, timeout=60,
                       what="the nurse's actions in InfluxDB")
    [ack] = [r for r in audit if r["action"] == "ack"]
    assert (ack["patient"], ack["by"], ack["station"], ack["note"], ack["ward"]) == (
        ALARM, NURSE, "north-desk", "Called patient", "north")
