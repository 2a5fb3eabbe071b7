"""The nurse station's alarm lifecycle and its own technical alarms, in a real headless Chromium.

Real Tansu, InfluxDB, worker and bridge (the ``sim`` pipeline), ``rpm nurse-station`` in its own
process as deployed, Debian's ``chromium`` driven by Playwright. Alert records are produced to
``rpm.alerts`` in the worker's format (clinical) and in the technical-alert contract (the producer
of those, ``rpm watchdog``, is not part of this branch).

- acknowledged is not resolved: the alarm stays on the list with who, when and the action, until
  the ``cleared`` record moves it to the history (with dates);
- an acknowledged alarm still open after its rule's re-alarm interval alarms again, with sound;
- a silence beyond the rule's floor is refused; a technical alarm shows in its own band with
  cause and remedy, with sound, can be silenced, stays visible until cleared;
- the actions are in InfluxDB ``station_audit``;
- the screen cannot go dark silently: a station that stops answering, a station restart (the
  kiosk stays logged in), a revoked kiosk token: each turns the page into a full-screen alarm.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from rpm_app.services import ServiceProcess, http_ok
from rpm_core.host import free_port
from rpm_core.roster import hash_password
from tests.people.conftest import REPO, Sim
from tests.people.support import event, produce, produce_events, run_sync
from tests.support.influx import rows
from tests.support.procs import eventually, rpm_argv, rpm_env, running, spawn

pytestmark = [pytest.mark.services, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
# A kiosk browser plays sound without a click on every load (what docs/nurse-station.md tells to set up).
KIOSK_ARGS = [*ARGS, "--autoplay-policy=no-user-gesture-required"]
PASSWORD = "3am-shift-north"
NURSE = "Ana Lima"
WAIT_MS = 30_000
# Short re-alarm for bradycardia so the test sees it; glucose_low keeps the file's 15 min floor.
STATION_POLICY = """station:
  realarm_after: {critical: 15m, warning: 30m, info: null}
  silence_max: {critical: 15m, warning: 30m, info: 60m}
  technical_silence_max: 60m
  rules:
    glucose_low: {realarm_after: {critical: 15m}, silence_max: {critical: 15m}}
    bradycardia: {realarm_after: {warning: 3s, critical: 3s}}
"""


class Station:
    """One ``rpm nurse-station`` process that can be stopped, frozen and started again on its port."""

    def __init__(self, sim: Sim, tmp: Path, *extra: str) -> None:
        self.extra = extra
        rules = (REPO / "alert_rules.yaml").read_text()
        rules_path = tmp / "rules.yaml"
        rules_path.write_text(rules[:rules.index("\nstation:")] + "\n" + STATION_POLICY)
        self.state_dir = tmp / "station-state"
        self.env = rpm_env(sim.stack, mqtt_user=None, RPM_NURSE_CREDENTIALS=f"north-desk={hash_password(PASSWORD)}",
                           RPM_RULES=str(rules_path))
        self.port = free_port()
        self.tmp = tmp
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: ServiceProcess | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        # no watchdog runs beside this station: its supervision is tested in tests/chaos/test_technical_alarms.py
        argv = ["nurse-station", "--supervision-timeout", "0", "--port", str(self.port), "--state-dir",
                str(self.state_dir), *self.extra]
        self.proc = spawn(f"nurse-station-{self.runs}", argv, self.env, self.tmp)
        eventually(lambda: http_ok(f"{self.url}/healthz"), bool, timeout=60,
                   what="the nurse station caught up with rpm.alerts", watch=(self.proc,), interval=0.2)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)


@pytest.fixture
def station(sim: Sim, tmp_path: Path) -> Iterator[Station]:
    st = Station(sim, tmp_path)
    st.start()
    try:
        yield st
    finally:
        if st.proc is not None and st.proc.alive():
            st.signal(signal.SIGCONT)
        st.stop()


def technical(state: str, at: float, *, since: float) -> dict[str, Any]:
    """A technical alert record as the watchdog produces it (``rpm_core.technical``)."""
    from rpm_core.technical import TechnicalAlert

    return TechnicalAlert(rule="tech.workers_missing", scope="", severity="critical", state=state,  # type: ignore[arg-type]
                          time=at, since=since,
                          message="No worker is processing readings of partitions 0-3: nobody's alerts are checked",
                          remedy="Call technical support: restart the worker service (rpm worker)",
                          component="worker", wards=("*",)).to_dict()


def login(page: Any, url: str, *, kiosk: bool = False) -> None:
    from playwright.sync_api import expect

    page.goto(url)
    page.fill("#station", "north-desk")
    page.fill("#password", PASSWORD)
    if kiosk:
        page.check("#kiosk")
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{url}/")
    expect(page.locator("#conn")).to_have_text("Live")


def record_cues(page: Any) -> None:
    page.evaluate("window.__cues = []; const realCue = window.cue;"
                  "window.cue = (a) => { window.__cues.push(a.patient || a.rule); return realCue(a); }; true")


def test_acknowledged_stays_realarms_is_silenced_within_floors_and_technical_alarms_show(
        sim: Sim, station: Station, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)  # a deadline for a condition on a loaded 2-core box, not a speed claim
    now = time.time()
    low = event("p0020", "glucose_low", severity="critical", metric="glucose", value=46.0, since=now - 1200,
                time=now - 300)
    brady = event("p0021", "bradycardia", severity="warning", value=41.0, since=now - 900, time=now - 200)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=KIOSK_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1100})
            page.set_default_timeout(WAIT_MS)
            login(page, station.url)
            page.fill("#nurse", NURSE)
            page.click("#sound")
            expect(page.locator("#sound")).to_have_text("Sound on")
            record_cues(page)

            run_sync(produce_events(sim.bootstrap, [low, brady], keys=sim.keys))
            low_item = page.locator("li.alert", has_text="p0020")
            expect(low_item).to_be_visible()
            eventually(lambda: page.evaluate("window.__cues"), lambda cues: "p0020" in cues, timeout=30,
                       what="the sound and flash of a new critical alarm")
            # Acknowledge with an action: the alarm stays, marked with who, when and what was done.
            low_item.locator(".ack-action").select_option("15 g carbohydrate given")
            low_item.locator(".ack-recheck").select_option("5")
            page.evaluate("render()")  # the page re-renders on every event: what the nurse picked stays
            expect(low_item.locator(".ack-action")).to_have_value("15 g carbohydrate given")
            expect(low_item.locator(".ack-recheck")).to_have_value("5")
            low_item.locator(".ack-btn").click()
            expect(low_item.locator(".ack-line")).to_contain_text(f"ACKNOWLEDGED by {NURSE}")
            expect(low_item.locator(".ack-line")).to_contain_text("15 g carbohydrate given")
            expect(low_item.locator(".ack-line .recheck")).to_contain_text("recheck at")  # 5 min, not 15
            expect(low_item).to_have_class(re.compile(r"\backed\b"))
            expect(page.locator("#history tbody tr", has_text="p0020")).to_have_count(0)

            # Silence beyond the rule's floor: not offered, and refused by the server.
            options = low_item.locator(".silence-pick option").all_inner_texts()
            assert options == ["Silence…", "2 min", "5 min", "10 min", "15 min"]
            answer = page.evaluate("""async (id) => {
                const r = await fetch('/api/silence', {method: 'POST', credentials: 'same-origin',
                  headers: {'Content-Type': 'application/json', 'X-CSRF-Token': state.csrf},
                  body: JSON.stringify({alert_id: id, minutes: 60, by: 'Ana Lima'})});
                return [r.status, (await r.json()).error]; }""", low["alert_id"])
            assert answer == [409, "a critical glucose_low alert can be silenced for at most 15 min"]

            # Acknowledged, still open after the rule's re-alarm interval: it alarms again, with sound.
            brady_item = page.locator("li.alert", has_text="p0021")
            brady_item.locator(".ack-btn").click()
            expect(brady_item.locator(".realarm-tag")).to_have_text("ALARMS AGAIN")
            expect(brady_item).to_have_class(re.compile(r"\brealarmed\b"))
            assert "p0021" in page.evaluate("window.__cues")
            first_warning = page.locator("li.alert.sev-warning:not(.acked) .who").first.inner_text()
            assert first_warning == "p0021", "back to the top of the warnings"

            # The worker's `cleared` ends it: to the history, with dates and the acknowledgement.
            cleared = event("p0020", "glucose_low", state="cleared", severity="critical", metric="glucose",
                            value=95.0, since=now - 1200, time=time.time())
            run_sync(produce_events(sim.bootstrap, [cleared], keys=sim.keys))
            expect(low_item).to_have_count(0)
            row = page.locator("#history tbody tr", has_text="p0020")
            expect(row).to_contain_text(NURSE)
            expect(row).to_contain_text(time.strftime("%Y"))

            # A technical alarm: its own band, cause and remedy, sound; silenced it stays until cleared.
            run_sync(produce(sim.bootstrap, "rpm.alerts",
                             [(None, orjson.dumps(technical("raised", time.time(), since=now)))], keys=sim.keys))
            band = page.locator("#tech-band")
            expect(band).to_be_visible()
            tech = band.locator("li.tech-item", has_text="Workers missing")  # other tests may leave others
            expect(tech).to_contain_text("No worker is processing readings")
            expect(tech.locator(".tech-remedy")).to_contain_text("restart the worker service")
            assert "tech.workers_missing" in page.evaluate("window.__cues")
            expect(tech.locator(".ack-btn")).to_have_count(0)
            tech.locator(".silence-pick").select_option("5")
            expect(tech.locator(".silenced-tag")).to_contain_text("Silenced until")
            expect(tech).to_have_class(re.compile(r"\bis-silenced\b"))
            page.screenshot(path=str(tmp_path / "station-alarms.png"), full_page=True)
            run_sync(produce(sim.bootstrap, "rpm.alerts",
                             [(None, orjson.dumps(technical("cleared", time.time() + 1, since=now)))],
                             keys=sim.keys))
            expect(tech).to_have_count(0)
            expect(page.locator("#history tbody tr", has_text="Workers missing")).to_have_count(1)
        finally:
            browser.close()

    audit = eventually(lambda: rows(sim.url, sim.db, "SELECT * FROM station_audit"),
                       lambda got: {r["action"] for r in got} >= {"ack", "realarm", "silence"}, timeout=60,
                       what="the station's actions in InfluxDB", watch=(station.proc,) if station.proc else ())
    acks = [(r["patient"], r["by"], r["station"], r["note"]) for r in audit if r["action"] == "ack"]
    assert ("p0020", NURSE, "north-desk", "15 g carbohydrate given") in acks
    assert [r["patient"] for r in audit if r["action"] == "realarm"] == ["p0021"]
    [silenced] = [r for r in audit if r["action"] == "silence"]
    assert (silenced["kind"], silenced["minutes"], silenced["by"]) == ("technical", 5.0, NURSE)


def test_the_screen_cannot_go_dark_silently_and_a_kiosk_survives_a_restart(sim: Sim, station: Station,
                                                                            tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)  # a deadline for a condition on a loaded 2-core box, not a speed claim
    dark = "#dark"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=KIOSK_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            login(page, station.url, kiosk=True)
            expect(page.locator("#station-name")).to_contain_text("kiosk")
            page.click("#sound")
            # Sound persists on a kiosk: after a reload it is on without a click.
            page.reload()
            expect(page.locator("#conn")).to_have_text("Live")
            expect(page.locator("#sound")).to_have_text("Sound on")
            assert page.evaluate("state.audio.state") == "running"
            expect(page.locator(dark)).to_be_hidden()

            # The station stops answering (process frozen, connection open, no error): no heartbeat,
            # so the whole screen turns into a technical alarm, with sound, until contact is back.
            beeps = page.evaluate("state.beeps")
            station.signal(signal.SIGSTOP)
            expect(page.locator(dark)).to_be_visible()
            expect(page.locator("#dark-title")).to_have_text("No contact with the station server")
            page.screenshot(path=str(tmp_path / "station-dark.png"))
            eventually(lambda: page.evaluate("state.beeps"), lambda n: n >= beeps + 2, timeout=30,
                       what="the tone repeating while the screen is dark")
            station.signal(signal.SIGCONT)
            expect(page.locator(dark)).to_be_hidden()
            expect(page.locator("#conn")).to_have_text("Live")

            # A restart: the connection is lost (alarm), then the kiosk is back, still logged in.
            station.stop()
            expect(page.locator(dark)).to_be_visible()
            expect(page.locator("#dark-title")).to_have_text("Connection to the station server lost")
            station.start()
            expect(page.locator(dark)).to_be_hidden()
            expect(page.locator("#conn")).to_have_text("Live")
            assert page.url == f"{station.url}/", "not sent to the login page"
            # ... with a fresh CSRF token: an acknowledgement still works.
            page.fill("#nurse", NURSE)
            raised = event("p0030", "tachycardia", severity="warning", value=131.0, since=time.time() - 600,
                           time=time.time())
            run_sync(produce_events(sim.bootstrap, [raised], keys=sim.keys))
            item = page.locator("li.alert", has_text="p0030")
            item.locator(".ack-btn").click()
            expect(item.locator(".ack-line")).to_contain_text(f"ACKNOWLEDGED by {NURSE}")

            # Revoking the kiosk token logs the screen out: a full-screen alarm, not a quiet login form.
            [kiosk_id] = [line.split()[0] for line in _kiosk_list(station).splitlines() if "live" in line]
            subprocess.run(rpm_argv("nurse-station", "kiosk", "--state-dir", str(station.state_dir), "revoke",
                                    kiosk_id), env=station.env, check=True, timeout=60, capture_output=True)
            expect(page.locator(dark)).to_be_visible()
            expect(page.locator("#dark-title")).to_have_text("Logged out: this screen is not monitoring")
            expect(page.locator("#dark-login")).to_be_visible()
            assert "revoked" in _kiosk_list(station)
        finally:
            browser.close()


def _kiosk_list(station: Station) -> str:
    return subprocess.run(rpm_argv("nurse-station", "kiosk", "--state-dir", str(station.state_dir), "list"),
                          env=station.env, check=True, timeout=60, capture_output=True, text=True).stdout


def test_behind_a_tls_proxy_a_kiosk_logs_in_with_a_secure_cookie_and_stays_live(sim: Sim, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from tests.security.pki import TestCA, write_server_files
    from tests.support.tlsproxy import TlsProxy

    expect.set_options(timeout=WAIT_MS)
    cert, key = write_server_files(TestCA.create("ward CA"), tmp_path / "tls", dns=["localhost"],
                                   ips=("127.0.0.1",))
    station = Station(sim, tmp_path, "--trusted-proxy", "127.0.0.1")
    station.start()
    try:
        with TlsProxy(station.url, cert, key) as proxy, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, "--ignore-certificate-errors"])
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 1000})
                page = context.new_page()
                page.set_default_timeout(WAIT_MS)
                login(page, proxy, kiosk=True)  # was 403 "cross-site login refused" behind a TLS proxy
                cookies = {c["name"]: c for c in context.cookies()}
                assert cookies["rpm_station"]["secure"] and cookies["rpm_kiosk"]["secure"]
                assert cookies["rpm_station"]["httpOnly"] and cookies["rpm_station"]["sameSite"] == "Strict"
                expect(page.locator("#dark")).to_be_hidden()
                now = time.time()
                run_sync(produce_events(sim.bootstrap, [event("p0040", "tachycardia", value=133.0,
                                                              since=now - 600, time=now)], keys=sim.keys))
                expect(page.locator("li.alert", has_text="p0040")).to_have_count(1)  # live through the proxy
            finally:
                browser.close()
    finally:
        station.stop()


def test_the_real_worker_raises_a_nurse_acknowledges_it_stays_and_the_worker_clears_it_to_history(
        sim: Sim, station: Station) -> None:
    """The whole lifecycle on the real pipeline: readings over MQTT → bridge → worker → station → page."""
    from playwright.sync_api import expect, sync_playwright

    from tests.support.mqtt import Publisher, heart_rate

    expect.set_options(timeout=60_000)  # the worker's detection too, on a loaded box
    patient, now = "p0060", time.time()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=KIOSK_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            login(page, station.url)
            page.fill("#nurse", NURSE)
            # 13 minutes above 120 bpm (the rule wants 10): the worker raises tachycardia.
            with Publisher(sim.stack) as pub:
                pub.readings(patient, "hrm-p0060", heart_rate(now - 25 * 60, 13 * 60, 131.0, step=5.0))
            item = page.locator("li.alert", has_text=patient).filter(has_text="Tachycardia")
            expect(item).to_have_count(1)
            item.locator(".ack-action").select_option("Visited patient")
            item.locator(".ack-btn").click()
            expect(item.locator(".ack-line")).to_contain_text("(confirmed)")  # the worker's acknowledged
            expect(item.locator(".ack-line")).to_contain_text(f"ACKNOWLEDGED by {NURSE}")
            expect(page.locator("#history tbody tr", has_text=patient)).to_have_count(0)
            # Back to 78 bpm for 11 minutes (the rule clears after 5 at <= 110): the worker clears it.
            with Publisher(sim.stack) as pub:
                pub.readings(patient, "hrm-p0060", heart_rate(now - 11 * 60, 11 * 60, 78.0, step=5.0))
            expect(item).to_have_count(0)
            row = page.locator("#history tbody tr", has_text=patient)
            expect(row).to_contain_text(NURSE)
            expect(row).to_contain_text("Visited patient")
        finally:
            browser.close()
    stored = eventually(lambda: rows(sim.url, sim.db, f"SELECT * FROM alerts WHERE patient = '{patient}'"),
                        lambda got: {r["state"] for r in got} >= {"raised", "acknowledged", "cleared"}, timeout=60,
                        what="the worker's raised/acknowledged/cleared in InfluxDB", watch=(sim.worker,))
    assert [r["by"] for r in stored if r["state"] == "acknowledged"] == [NURSE]


def test_a_device_alarm_from_an_edge_agent_reaches_the_station_through_the_real_watchdog(
        sim: Sim, station: Station) -> None:
    """Edge agent status (MQTT) → ``rpm watchdog`` → ``rpm.alerts`` (technical) → station → page, and back."""
    import json
    import urllib.request

    from playwright.sync_api import expect, sync_playwright

    from rpm_core.mqtt_users import WATCHDOG_USER
    from rpm_core.wire import status_topic
    from tests.support.mqtt import Publisher

    expect.set_options(timeout=60_000)
    port = free_port()
    watchdog = spawn("watchdog", ["watchdog", "--health-port", str(port), "--startup-grace", "5"],
                     rpm_env(sim.stack, mqtt_user=WATCHDOG_USER), station.tmp)

    def health() -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                doc: dict[str, Any] = json.loads(resp.read())
                return doc
        except OSError:
            return None

    def publish(active: bool) -> None:
        """The status message an edge agent sends (edge_agent/status.py), over real MQTT."""
        doc = {"kind": "alarm", "patient": "p0070", "alarm": "battery_low", "device": "cgm-p0070",
               "active": active, "severity": "warning", "message": "CGM battery at 6 %",
               "remedy": "Charge or replace the CGM transmitter"}
        with Publisher(sim.stack) as pub:
            info = pub.client.publish(status_topic("p0070"), json.dumps(doc).encode(), qos=1)
            info.wait_for_publish(30)
            assert info.is_published()

    with running(watchdog), sync_playwright() as pw:
        eventually(health, lambda h: h is not None and h.get("kafka"), timeout=120,
                   what="the watchdog connected", watch=(watchdog,))
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=KIOSK_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            login(page, station.url)
            publish(True)
            item = page.locator("#tech-band li.tech-item", has_text="p0070")
            expect(item).to_contain_text("CGM battery at 6 %")
            expect(item.locator(".tech-remedy")).to_contain_text("Charge or replace the CGM transmitter")
            expect(page.locator('#overview li.tile[data-patient="p0070"] .tile-tech')).to_have_count(1)
            publish(False)
            expect(item).to_have_count(0)
        finally:
            browser.close()
