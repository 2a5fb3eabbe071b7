"""``rpm export fhir``: alerts with evidence, interpretation flags, Devices, Communications, AuditEvents,
and ``--post`` as a transaction to a local FHIR endpoint that validates what it gets."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from rpm_app.fhir import ExportOptions, bundle, collect, validate
from rpm_app.report import InfluxReader
from rpm_core.interpretation import limits
from rpm_core.rules import load_rules
from tests.people.support import alert_row, write_lines
from tests.support.procs import rpm_argv

pytestmark = pytest.mark.services
REPO = Path(__file__).resolve().parents[2]


def _env(url: str, db: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    return {**env, "RPM_INFLUX_URL": url, "RPM_INFLUX_DB": db, "RPM_RULES": str(REPO / "alert_rules.yaml")}


def _write(url: str, db: str, patient: str) -> float:
    t0 = (int(time.time()) // 3600 - 3) * 3600
    lines = [f"vitals,device=hrs-{patient},metric=heart_rate,patient={patient},source=ble value={v} "
             f"{(t0 + i * 60) * 1000}" for i, v in enumerate([80.0, 125.0, 155.0, 45.0, 35.0])]
    lines += [f"vitals,device=cgm-{patient},metric=glucose,patient={patient},source=ble value={v} "
              f"{(t0 + 600 + k * 300) * 1000}" for k, v in enumerate([120.0, 65.0, 48.0, 52.0, 90.0])]
    low = {"alert": "g1", "metric": "glucose"}
    lines += [alert_row(patient, "glucose_low", "critical", "raised", t0 + 1500, value=48.0, message="low", **low),
              alert_row(patient, "glucose_low", "critical", "acknowledged", t0 + 1600, by="Ana Lima", **low),
              alert_row(patient, "glucose_low", "critical", "cleared", t0 + 1800, value=90.0, **low)]
    lines.append(f'notifications,channel=ward.pager,outcome=delivered,patient={patient},rule=glucose_low,'
                 f'severity=critical alert_id="g1",detail="HTTP 200",recipient="https://pager.example/hook",'
                 f'kind="step",attempt=1i {(t0 + 1510) * 1000}')
    lines.append(f'notifications,channel=ward.sms,outcome=failed,patient={patient},rule=glucose_low,'
                 f'severity=critical alert_id="g1",detail="HTTP 503",kind="step",attempt=1i {(t0 + 1511) * 1000}')
    write_lines(url, db, lines)
    return float(t0)


def test_evidence_flags_devices_communications_and_audit(influx_url: str, influx_db: str) -> None:
    t0 = _write(influx_url, influx_db, "pv")
    opts = ExportOptions(patient="pv", since=datetime.fromtimestamp(t0, UTC),
                         until=datetime.fromtimestamp(t0 + 7200, UTC), heart_rate_every=timedelta(0),
                         limits=limits(load_rules(REPO / "alert_rules.yaml"), "pv"))
    doc = bundle(collect(InfluxReader(url=influx_url, db=influx_db), opts))
    validate(doc)
    by_url = {e["fullUrl"]: e["resource"] for e in doc["entry"]}
    kinds = [r["resourceType"] for r in by_url.values()]
    assert kinds.count("Device") == 2 and kinds.count("Communication") == 1 and kinds.count("AuditEvent") == 1

    obs = [r for r in by_url.values() if r["resourceType"] == "Observation"]
    none = [{"coding": [{"code": ""}]}]
    flags = {(o["valueQuantity"]["value"], (o.get("interpretation") or none)[0]["coding"][0]["code"]) for o in obs}
    assert flags == {(80.0, ""), (125.0, "H"), (155.0, "HH"), (45.0, "L"), (35.0, "LL"),
                     (120.0, ""), (65.0, "L"), (48.0, "LL"), (52.0, "LL"), (90.0, "")}
    assert all(by_url[o["device"]["reference"]]["resourceType"] == "Device" for o in obs), "device refs resolve"

    [issue] = [r for r in by_url.values() if r["resourceType"] == "DetectedIssue"]
    evidence = [by_url[ref["reference"]] for ref in issue["evidence"][0]["detail"]]
    assert {e["valueQuantity"]["value"] for e in evidence} == {120.0, 65.0, 48.0, 52.0, 90.0}, "glucose only"
    implicated = [by_url[ref["reference"]]["resourceType"] for ref in issue["implicated"]]
    assert implicated.count("Device") == 1 and implicated.count("Observation") == 5

    [comm] = [r for r in by_url.values() if r["resourceType"] == "Communication"]
    assert by_url[comm["about"][0]["reference"]] is issue and comm["status"] == "completed"
    assert comm["recipient"][0]["display"] == "https://pager.example/hook"
    [audit] = [r for r in by_url.values() if r["resourceType"] == "AuditEvent"]
    assert by_url[audit["entity"][0]["what"]["reference"]] is issue
    assert audit["agent"][0]["who"]["display"] == "Ana Lima" and audit["action"] == "U"


class FhirServer:
    """A FHIR endpoint stand-in: checks POSTed transactions like a server would, answers as scripted."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.bodies: list[dict[str, Any]] = []
        self.problems: list[str] = []


def _check_transaction(doc: dict[str, Any]) -> list[str]:
    problems = []
    try:
        Bundle.model_validate(doc)
    except ValueError as exc:
        return [f"invalid Bundle: {exc}"]
    if doc.get("type") != "transaction":
        problems.append(f"type {doc.get('type')!r}")
    urls = {e["fullUrl"] for e in doc["entry"]}
    for e in doc["entry"]:
        r, req = e["resource"], e.get("request") or {}
        if req.get("method") != "PUT" or req.get("url") != f"{r['resourceType']}/{r['id']}":
            problems.append(f"entry {e['fullUrl']}: request {req}")
    refs = [m for m in _refs(doc) if m.startswith("urn:uuid:")]
    problems += [f"dangling reference {r}" for r in refs if r not in urls]
    return problems


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


@contextmanager
def fhir_server(state: FhirServer) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            doc = json.loads(body)
            state.bodies.append(doc)
            state.problems += _check_transaction(doc)
            status = state.statuses.pop(0) if state.statuses else 200
            if self.headers.get("Content-Type") != "application/fhir+json":
                status = 415
            if status == 200:
                answer = {"resourceType": "Bundle", "type": "transaction-response",
                          "entry": [{"response": {"status": "201 Created"}} for _ in doc["entry"]]}
            else:
                answer = {"resourceType": "OperationOutcome",
                          "issue": [{"severity": "error", "code": "invalid", "diagnostics": f"scripted {status}"}]}
            out = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def test_post_sends_a_valid_transaction_and_retries_on_503(influx_url: str, influx_db: str) -> None:
    t0 = _write(influx_url, influx_db, "pp")
    state = FhirServer(statuses=[503])
    with fhir_server(state) as url:
        done = subprocess.run(rpm_argv("export", "fhir", "--patient", "pp", "--since", str(t0), "--until",
                                       str(t0 + 7200), "--post", url, "--retries", "2"),
                              env=_env(influx_url, influx_db), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(state.bodies) == 2 and state.bodies[0] == state.bodies[1], "the same Bundle again after a 503"
    assert state.problems == []
    assert f"posted {len(state.bodies[1]['entry'])} resources" in done.stderr
    assert done.stdout == "", "--post without --out writes nothing to stdout"


def test_post_stops_at_a_client_error_with_the_servers_reason(influx_url: str, influx_db: str) -> None:
    t0 = _write(influx_url, influx_db, "pq")
    state = FhirServer(statuses=[400])
    with fhir_server(state) as url:
        done = subprocess.run(rpm_argv("export", "fhir", "--patient", "pq", "--since", str(t0), "--until",
                                       str(t0 + 7200), "--post", url, "--retries", "3"),
                              env=_env(influx_url, influx_db), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "scripted 400" in done.stderr
    assert len(state.bodies) == 1, "a 400 is not retried"
