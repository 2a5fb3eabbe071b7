"""The nurse station end to end, in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Real pipeline (``sim``: worker, bridge, simulator) → ``rpm.alerts`` → ``rpm nurse-station`` (its own
process, as deployed) → the page. A nurse logs in (a wrong password is refused first), sees the
scripted episodes, acknowledges one with a click; the alarm stays on the list, marked with who and
when (acknowledged is not resolved); the ack reaches ``rpm.alert-acks``, the worker applies it and
the ``acknowledged`` state reaches InfluxDB and comes back to the page; a reload shows the same state.
A screenshot is left in the test's tmp dir.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rpm_app.services import http_ok
from rpm_core.acks import decode_ack
from rpm_core.host import free_port
from rpm_core.roster import hash_password
from tests.people.conftest import Sim
from tests.people.support import event, produce_events, read_topic, run_sync
from tests.support.influx import rows
from tests.support.procs import eventually, rpm_env, running, spawn

pytestmark = [pytest.mark.services, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
PASSWORD = "3am-shift-north"
NURSE = "Ana Lima"
WAIT_MS = 30_000


@pytest.fixture
def station_url(sim: Sim, tmp_path: Path) -> str:
    port = free_port()
    env = rpm_env(sim.stack, mqtt_user=None, RPM_NURSE_CREDENTIALS=f"north-desk={hash_password(PASSWORD)}")
    proc = spawn("nurse-station", ["nurse-station", "--supervision-timeout", "0", "--port", str(port)], env, tmp_path)
    with running(proc):
        eventually(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), bool, timeout=60,
                   what="the nurse station caught up with rpm.alerts", watch=(proc,), interval=0.2)
        yield f"http://127.0.0.1:{port}"


@pytest.mark.skipif(shutil.which("chromium") is None and not Path(CHROMIUM).exists(),
                    reason="Debian's chromium is not installed (apt-get install chromium)")
def test_a_nurse_sees_acknowledges_and_reloads(sim: Sim, station_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)  # a deadline for a condition, not a speed claim
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            page.goto(station_url)
            expect(page).to_have_url(f"{station_url}/login")

            page.fill("#station", "north-desk")
            page.fill("#password", "not-the-password")
            page.click("button[type=submit]")
            expect(page.locator("#login-error")).to_have_text("Wrong station or password.")

            page.fill("#station", "north-desk")
            page.fill("#password", PASSWORD)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{station_url}/")
            expect(page.locator("#conn")).to_have_text("Live")

            # The scripted episodes of the real simulation, critical first.
            tachy = page.locator("li.alert", has_text="p0000")
            expect(tachy).to_contain_text("Tachycardia")
            # The scripted hypoglycaemia: the forecast's warning, then the low itself, both critical.
            lows = page.locator("li.alert", has_text="p0001")
            expect(lows).to_have_count(2)
            # Each alert's rule title (its own element: an ESCALATED tag may precede the patient line,
            # as it does once the low has gone unacknowledged for its 5 minutes).
            titles = sorted(lows.locator(".what").all_inner_texts())
            assert titles == ["Glucose low", "Glucose urgent low soon"]
            whos = page.locator("li.alert .who").all_inner_texts()  # other tests of the session add alerts
            assert whos.index("p0001") < whos.index("p0000"), "critical before warning"
            assert "sev-critical" in (page.locator("li.alert").first.get_attribute("class") or "")
            expect(page.locator("li.alert.sev-critical", has_text="p0001")).to_have_count(2)
            expect(tachy.locator("svg polyline")).to_have_count(1)  # last-hour sparkline from InfluxDB

            # Sound on, then a new critical alert arrives live: a tone and a visual cue.
            page.click("#sound")
            expect(page.locator("#sound")).to_have_text("Sound on")
            page.evaluate("window.__cues = []; const realCue = window.cue;"
                          "window.cue = (a) => { window.__cues.push(a.patient); return realCue(a); }; true")
            new_critical = event("p0003", "bradycardia", severity="critical", value=38.0, since=sim.started - 120,
                                 time=sim.started)
            run_sync(produce_events(sim.bootstrap, [new_critical], keys=sim.keys))
            expect(page.locator("li.alert.new", has_text="p0003")).to_have_count(1)
            expect(page.locator("body")).to_have_class("flash")
            assert page.evaluate("window.__cues") == ["p0003"]
            assert page.evaluate("state.audio.state") == "running", "the tone was played, not blocked"

            # Acknowledge the tachycardia without a name: refused; with a name: it goes.
            tachy.locator(".ack-btn").click()
            expect(tachy.locator(".ack-err")).to_contain_text("Type your name")
            page.fill("#nurse", NURSE)
            tachy.locator(".ack-btn").click()
            history = tachy.locator(".ack-line")
            expect(history).to_contain_text(f"ACKNOWLEDGED by {NURSE}")
            expect(page.locator("#history tbody tr", has_text="p0000")).to_have_count(0)  # not resolved: stays

            acks = [decode_ack(v, key=k) for k, v in run_sync(read_topic(sim.bootstrap, "rpm.alert-acks"))]
            acks = [a for a in acks if a.patient == "p0000"]  # other tests of the session ack other patients
            assert [(a.patient, a.by, a.station) for a in acks] == [("p0000", NURSE, "north-desk")]
            stored = eventually(
                lambda: rows(sim.url, sim.db,
                             "SELECT * FROM alerts WHERE state = 'acknowledged' AND patient = 'p0000'"), bool,
                timeout=30, what="the acknowledgement in InfluxDB", watch=(sim.worker,))
            assert [(r["patient"], r["rule"], r["by"], r["alert_id"]) for r in stored] == [
                ("p0000", "tachycardia", NURSE, acks[0].alert_id)]
            expect(history).to_contain_text("(confirmed)")

            page.reload()
            expect(page.locator("#conn")).to_have_text("Live")
            acked = page.locator("li.alert.acked", has_text="p0000")
            expect(acked.locator(".ack-line")).to_contain_text(f"by {NURSE} at")
            expect(acked.locator(".ack-line")).to_contain_text("(confirmed)")
            expect(page.locator("li.alert", has_text="p0001")).to_have_count(2)  # the low and its forecast
            # Sound was on: after the reload a browser that blocks autoplay says so, and any click restores it.
            expect(page.locator("#sound-blocked")).to_be_visible()
            page.click("h1")
            expect(page.locator("#sound")).to_have_text("Sound on")
            expect(page.locator("#sound-blocked")).to_be_hidden()
            page.screenshot(path=str(tmp_path / "nurse-station.png"), full_page=True)
        finally:
            browser.close()
