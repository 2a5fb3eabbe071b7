"""The live worker runs the detectors fully: device-prefixed rules, roster staleness, /metrics, /healthz.

Real services and the real ``rpm bridge`` / ``rpm worker`` commands; readings go in over MQTT and
the assertions read InfluxDB and the worker's own HTTP pages. Every wait is a deadline for a
condition, never a claim about speed.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from rpm_app.services import ServiceProcess, Stack
from rpm_core.host import free_port
from rpm_core.roster import hash_password
from tests.support.influx import rows
from tests.support.mqtt import Publisher
from tests.support.procs import eventually, rpm_env, running, spawn, spawn_bridge

pytestmark = pytest.mark.services

PARTITIONS = 8


def get(url: str) -> tuple[int, bytes]:
    """Status and body of GET ``url`` (4xx/5xx too); (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (loopback)
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())
    except (urllib.error.URLError, OSError):
        return 0, b""


def spawn_worker(stack: Stack, tmp_path: Path, name: str, **env_extra: str) -> ServiceProcess:
    port = free_port()
    proc = spawn(name, ["worker", "--partitions", str(PARTITIONS), "--data-dir", str(tmp_path / name),
                        "--web-port", str(port)], rpm_env(stack, **env_extra), tmp_path)
    proc.port = port
    return proc


def healthz(worker: ServiceProcess) -> tuple[int, dict[str, Any]]:
    status, body = get(f"http://127.0.0.1:{worker.port}/healthz")
    return status, (orjson.loads(body) if status else {})


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = "^" + re.escape(name + (f"{{{want}}}" if want else "")) + r" (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else None


def test_meter_low_alert_and_worker_pages(stack: Stack, tmp_path: Path) -> None:
    url, db = stack.settings.influx_url, stack.settings.influx_db
    assert url
    worker = spawn_worker(stack, tmp_path, "worker")
    with running(worker):
        ready = eventually(lambda: healthz(worker), lambda r: r[0] == 200, timeout=120,
                           what="worker /healthz 200 (running, partitions assigned)", watch=(worker,))
        assert ready[1]["running"] is True and ready[1]["assigned"] is True
        assert sorted(ready[1]["partitions"]) == list(range(PARTITIONS)), "a lone worker owns every partition"

        bridge = spawn_bridge(stack, tmp_path)
        with running(bridge):
            t0 = time.time() - 120
            with Publisher(stack) as pub:
                # Fingerstick meter (device id with the rule's prefix bgm-, as the edge agent names meters)
                # and a CGM, both at 45 mg/dL.
                pub.readings("pmeter", "bgm-00:11:22:33:44:55", [["glucose", t0, 45.0]])
                pub.readings("pcgm", "cgm-pcgm", [["glucose", t0, 45.0]])
                pub.readings("pcgm", "hr-pcgm", [["heart_rate", t0 + k, 70.0] for k in range(30)])

            def meter_alerts() -> list[dict[str, Any]]:
                return rows(url, db, "SELECT * FROM alerts WHERE rule = 'glucose_meter_low'")

            got = eventually(meter_alerts, bool, timeout=120, what="glucose_meter_low alert in InfluxDB",
                             watch=(worker, bridge))
            assert [(r["patient"], r["severity"], r["state"]) for r in got] == [("pmeter", "critical", "raised")]
            # The CGM's 45 mg/dL reached InfluxDB too, and raised glucose_low (one reading), not the meter's
            # rule; the meter's reading raised no glucose_low (it leaves out bgm- devices): one page each.
            eventually(lambda: rows(url, db, "SELECT * FROM vitals WHERE patient = 'pcgm'"), lambda r: len(r) == 31,
                       timeout=120, what="the CGM patient's vitals", watch=(worker, bridge))
            low = eventually(lambda: rows(url, db, "SELECT * FROM alerts WHERE rule = 'glucose_low'"), bool,
                             timeout=120, what="glucose_low alert in InfluxDB", watch=(worker, bridge))
            assert [(r["patient"], r["severity"], r["state"]) for r in low] == [("pcgm", "critical", "raised")]
            assert [r["patient"] for r in meter_alerts()] == ["pmeter"]

        def scrape() -> str:
            status, body = get(f"http://127.0.0.1:{worker.port}/metrics")
            return body.decode() if status == 200 else ""

        text = eventually(scrape, lambda t: (metric(t, "rpm_worker_readings_total") or 0) >= 32, timeout=60,
                          what="worker metrics counting the readings", watch=(worker,))
    assert (metric(text, "rpm_worker_records_total") or 0) >= 1
    assert (metric(text, "rpm_worker_batches_total") or 0) >= 1
    assert metric(text, "rpm_worker_alert_events_total", rule="glucose_meter_low", state="raised") == 1
    assert (metric(text, "rpm_sink_lines_written_total") or 0) >= 33
    assert metric(text, "rpm_worker_deadlettered_total") == 0
    assert metric(text, "rpm_sink_retries_total") is not None
    assert metric(text, "rpm_worker_detector_seconds_total") is not None
    # where the worker's time goes: handling batches (of which InfluxDB writes), the rest waiting
    handle, write = metric(text, "rpm_worker_handle_seconds_total"), metric(text, "rpm_sink_write_seconds_total")
    assert handle is not None and write is not None and 0 < write <= handle
    assert metric(text, "rpm_worker_batch_records_count") == metric(text, "rpm_worker_batches_total")
    assert metric(text, "rpm_worker_assigned_partitions") == PARTITIONS
    behind = metric(text, "rpm_worker_behind_seconds")  # 0 once the last batch is 30 s old
    assert behind is not None and 0 <= behind < 60, "nothing waited a minute in Kafka here"
    assert "# TYPE rpm_worker_batch_records histogram" in text


STALE_RULES = """\
version: 1
rules:
  cgm_silent:
    type: staleness
    metric: glucose
    description: test rule, a short gap
    levels:
      warning: {after: 5s, escalate_after: null}
"""


def test_roster_patient_who_never_sends_goes_stale_once(stack: Stack, tmp_path: Path) -> None:
    """Two workers split the roster by partition: each silent patient gets exactly one staleness alert."""
    url, db = stack.settings.influx_url, stack.settings.influx_db
    assert url
    patients = [f"quiet{i}" for i in range(6)]
    rules = tmp_path / "rules.yaml"
    rules.write_text(STALE_RULES)
    roster = tmp_path / "roster.yaml"
    roster.write_text(
        f"version: 1\nwards:\n  north: {{patients: [{', '.join(patients)}]}}\n"
        f"stations:\n  desk: {{ward: north, password_hash: \"{hash_password('unused', n=2)}\"}}\n"
    )
    env = {"RPM_RULES": str(rules), "RPM_ROSTER": str(roster)}
    workers = (spawn_worker(stack, tmp_path, "worker-a", **env), spawn_worker(stack, tmp_path, "worker-b", **env))
    with running(*workers):
        def owned() -> list[list[int]]:
            return [healthz(w)[1].get("partitions", []) if healthz(w)[0] == 200 else [] for w in workers]

        split = eventually(owned, lambda o: all(o) and sorted(o[0] + o[1]) == list(range(PARTITIONS)),
                           timeout=180, what="both workers healthy with the partitions split", watch=workers)
        assert not set(split[0]) & set(split[1])

        def stale() -> list[dict[str, Any]]:
            return rows(url, db, "SELECT * FROM alerts WHERE rule = 'cgm_silent' AND state = 'raised'")

        eventually(lambda: {r["patient"] for r in stale()}, lambda s: s == set(patients), timeout=120,
                   what="a staleness alert for every silent roster patient", watch=workers)
        enrolled = [healthz(w)[1].get("enrolled", 0) for w in workers]
        # A few more ticks: a patient enrolled on both workers would be raised twice (two points).
        time.sleep(3)
        raised = stale()
    assert sorted(r["patient"] for r in raised) == patients, "one raise per patient, by the worker that owns it"
    assert all(r["severity"] == "warning" for r in raised)
    assert sum(enrolled) == len(patients), f"each roster patient enrolled on one worker: {enrolled}"
