"""The audit trail on a real run: the real ``rpm nurse-station`` over HTTP, ``rpm mqtt-auth``, Tansu.

People act (a wrong password, a login, an acknowledgement, a silence; an operator adds, re-keys and
revokes an MQTT user); ``rpm audit verify`` passes on what was stored and names who did each thing.
Then the log is rewritten as someone with Kafka access but without the signing key could: one
entry altered, one removed, two swapped (each written to a topic of its own, the only way to
"change" a Kafka log), the newest entries cut off, an exported file edited. Each time verify exits
1 naming the first bad entry.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from rpm_app.services import Stack, http_ok
from rpm_core.audit import AuditError, StoredRecord, canonical, decode_entry, ensure_topic, read_log
from rpm_core.host import free_port
from rpm_core.roster import hash_password
from rpm_core.topics import ensure_topics
from tests.people.support import event, produce_events
from tests.support.procs import eventually, rpm_argv, rpm_env, running, spawn

pytestmark = pytest.mark.services

PASSWORD = "night-shift-7"


def rpm(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(rpm_argv(*args), env=rpm_env(stack, mqtt_user=None, **env), capture_output=True,
                          text=True, timeout=120, check=False)


def stored(stack: Stack, topic: str = "rpm.audit") -> list[StoredRecord]:
    return asyncio.run(read_log(stack.settings.kafka_bootstrap(), topic))


def actions(stack: Stack) -> list[tuple[str, str]]:
    try:
        return [(b["action"], b["outcome"]) for b in (decode_entry(r.value) for r in stored(stack))]
    except AuditError:  # the topic does not exist yet
        return []


async def _copy(bootstrap: str, topic: str, records: list[StoredRecord]) -> None:
    """Write ``records`` (key, value, signature header as stored) to a new one-partition topic."""
    await ensure_topic(bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for r in records:
            await producer.send_and_wait(topic, value=r.value, key=r.key, partition=0,
                                         headers=[("rpm-sig", r.sig)] if r.sig else None)
    finally:
        await producer.stop()


def rewrite(stack: Stack, topic: str, records: list[StoredRecord]) -> None:
    asyncio.run(_copy(stack.settings.kafka_bootstrap(), topic, records))


async def _act_at_the_station(url: str, alert_id: str) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:
        form = {"station": "desk-1", "password": "wrong-password"}
        async with http.post(f"{url}/login", data=form, headers={"Origin": url}, allow_redirects=False) as resp:
            assert resp.status == 401
        # a password typed into the station field, seven times: five refusals, then locked out
        for n in range(7):
            typo = {"station": "hunter2-typed-here", "password": "x"}
            async with http.post(f"{url}/login", data=typo, headers={"Origin": url}, allow_redirects=False) as resp:
                assert resp.status == (401 if n < 5 else 429)
        form["password"] = PASSWORD
        async with http.post(f"{url}/login", data=form, headers={"Origin": url}, allow_redirects=False) as resp:
            assert resp.status == 303
        async with http.get(f"{url}/api/session") as resp:
            csrf = (await resp.json())["csrf"]
        headers = {"X-CSRF-Token": csrf, "Origin": url}
        async with http.post(f"{url}/api/ack", json={"alert_id": alert_id, "by": "Ana Lima", "note": "checked"},
                             headers=headers) as resp:
            assert resp.status == 202, await resp.text()
        async with http.post(f"{url}/api/silence", json={"alert_id": alert_id, "by": "Ana Lima", "minutes": 2},
                             headers=headers) as resp:
            assert resp.status == 200, await resp.text()


def test_a_real_run_verifies_and_every_kind_of_rewrite_is_named(stack: Stack, tmp_path: Path) -> None:
    bootstrap = stack.settings.kafka_bootstrap()
    asyncio.run(ensure_topics(bootstrap, partitions=2))
    alert = event("p0001", "tachycardia")
    asyncio.run(produce_events(bootstrap, [alert], keys=stack.settings.key_ring()))

    port = free_port()
    env = rpm_env(stack, mqtt_user=None, RPM_NURSE_CREDENTIALS=f"desk-1={hash_password(PASSWORD)}")
    proc = spawn("nurse-station", ["nurse-station", "--supervision-timeout", "0", "--port", str(port)], env, tmp_path)
    with running(proc):
        eventually(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), bool, timeout=60,
                   what="the nurse station caught up", watch=(proc,), interval=0.2)
        asyncio.run(_act_at_the_station(f"http://127.0.0.1:{port}", alert["alert_id"]))
        want = [("login", "failure"), ("login", "success"), ("ack", "success"), ("silence", "success")]
        eventually(lambda: actions(stack), lambda got: all(w in got for w in want), timeout=60,
                   what="the station's entries in rpm.audit", watch=(proc,))

    # a station restarted with another station password: the login credentials changed
    env["RPM_NURSE_CREDENTIALS"] = f"desk-1={hash_password(PASSWORD + '-new')}"
    again = spawn("nurse-station-2", ["nurse-station", "--supervision-timeout", "0", "--port", str(port)], env,
                  tmp_path)
    with running(again):
        eventually(lambda: actions(stack), lambda got: ("roster.changed", "success") in got, timeout=60,
                   what="the second station's roster entry", watch=(again,))
    assert [a for a, _o in actions(stack) if a.startswith("roster.")] == ["roster.loaded", "roster.changed"]

    auth = str(tmp_path / "mqtt-auth")
    for args in (["init"], ["add-agent", "--patient", "p0001"], ["add-agent", "--patient", "p0001", "--rotate"],
                 ["revoke", "--user", "agent-p0001"]):
        done = rpm(stack, "mqtt-auth", *args, "--dir", auth)
        assert done.returncode == 0, done.stderr
    review = rpm(stack, "mqtt-auth", "list", "--dir", auth).stdout
    row = next(line.split() for line in review.splitlines() if line.startswith("agent-p0001"))
    assert row[3] == "revoked" and row[4] != "-" and row[5] != "-" and row[6] != "-", review

    ok = rpm(stack, "audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "signed" in ok.stdout
    entries = [json.loads(line) for line in rpm(stack, "audit", "list", "--json").stdout.splitlines()]
    by_action: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_action.setdefault(e["action"], []).append(e)
    failed = [e for e in by_action["login"] if e["outcome"] == "failure"]
    assert failed[0]["actor"] == "desk-1" and failed[0]["detail"]["client"] == "127.0.0.1"
    typos = failed[1:]
    assert len({e["actor"] for e in typos}) == 1 and typos[0]["actor"].startswith("unknown:")
    assert [e["detail"].get("locked_out", False) for e in typos] == [False] * 5 + [True], "a flood: noted once"
    said = json.dumps(entries)
    assert PASSWORD not in said and "wrong-password" not in said and "hunter2" not in said
    ack = by_action["ack"][0]
    assert (ack["actor"], ack["patient"], ack["target"], ack["detail"]["by"]) == \
        ("desk-1", "p0001", alert["alert_id"], "Ana Lima")
    me = getpass.getuser()
    assert [(e["actor"], e["target"]) for e in by_action["credential.rotate"]] == [(me, "agent-p0001")]
    assert [(e["actor"], e["target"]) for e in by_action["credential.revoke"]] == [(me, "agent-p0001")]
    assert {e["target"] for e in by_action["credential.add"]} >= {"rpm-bridge", "rpm-admin", "agent-p0001"}

    records = stored(stack)
    station = [r for r in records if decode_entry(r.value)["via"] == "nurse-station"]
    assert len(station) >= 4
    ack_rec = next(r for r in records if decode_entry(r.value)["action"] == "ack")
    assert ack_rec.value is not None

    # one entry altered (re-encoded canonically, as a careful forger would; the signature kept)
    body = decode_entry(ack_rec.value)
    body["detail"]["by"] = "Someone Else"

    altered = [StoredRecord(r.partition, r.offset, r.key, canonical(body) if r is ack_rec else r.value, r.sig)
               for r in records]
    # one entry removed (the station's second), two entries of one chain swapped
    removed = [r for r in records if r is not station[1]]
    i = records.index(station[1])
    j = records.index(station[2])
    swapped = list(records)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    for name, recs, offset in (("altered", altered, records.index(ack_rec)), ("removed", removed, i),
                               ("swapped", swapped, i)):
        rewrite(stack, f"rpm.audit-{name}", recs)
        bad = rpm(stack, "audit", "verify", "--topic", f"rpm.audit-{name}")
        assert bad.returncode == 1, (name, bad.stdout, bad.stderr)
        assert f"first bad entry at offset {offset}:" in bad.stderr, (name, bad.stderr)
    shown = [json.loads(line) for line in
             rpm(stack, "audit", "list", "--json", "--topic", "rpm.audit-altered").stdout.splitlines()]
    assert next(e["offset"] for e in shown if not e["verified"]) == records.index(ack_rec), "list marks it too"
    assert all(e["verified"] for e in shown[:records.index(ack_rec)])
    listed = rpm(stack, "audit", "verify", "--all", "--topic", "rpm.audit-swapped")
    assert listed.returncode == 1 and "\n  also at offset" in listed.stderr, listed.stderr
    # without the key the alteration is still found, at the entry that links to it
    unkeyed = rpm(stack, "audit", "verify", "--topic", "rpm.audit-altered", RPM_SIGNING_KEYS_FILE="")
    assert unkeyed.returncode == 1 and "hash of seq" in unkeyed.stderr, unkeyed.stderr

    # the newest entries cut off: found against the heads an earlier verify recorded
    heads = tmp_path / "heads.json"
    assert rpm(stack, "audit", "verify", "--heads", str(heads)).returncode == 0
    rewrite(stack, "rpm.audit-cut", records[:-1])
    cut = rpm(stack, "audit", "verify", "--topic", "rpm.audit-cut", "--heads", str(heads))
    assert cut.returncode == 1 and "gone" in cut.stderr, cut.stderr

    # an export verifies offline, and an edited export does not
    export = tmp_path / "audit.jsonl"
    assert rpm(stack, "audit", "export", "--out", str(export)).returncode == 0
    assert rpm(stack, "audit", "verify", "--file", str(export)).returncode == 0
    lines = export.read_text().splitlines()
    k = records.index(ack_rec)
    lines[k] = lines[k].replace("Ana Lima", "Ana Lime")
    export.write_text("\n".join(lines) + "\n")
    edited = rpm(stack, "audit", "verify", "--file", str(export))
    assert edited.returncode == 1 and f"offset {ack_rec.offset}" in edited.stderr, edited.stderr


ROUTES = """
version: 1
receivers:
  nurses: {channels: [{type: nurse_station}]}
route: {receiver: nurses}
"""


def test_a_changed_routes_or_rules_file_is_recorded_as_changed(stack: Stack, tmp_path: Path) -> None:
    """``rpm notifier`` (a real process) and the worker's start-up hook record each file they load."""
    import hashlib

    from rpm_app.cli import audit_config_load
    from rpm_core.mqtt_users import NOTIFIER_USER

    routes = tmp_path / "routes.yaml"
    digests = []
    for n, text in enumerate((ROUTES, ROUTES.replace("nurses", "ward"))):
        routes.write_text(text)
        digests.append(hashlib.sha256(text.encode()).hexdigest())
        env = rpm_env(stack, mqtt_user=NOTIFIER_USER, RPM_ROUTES=str(routes))
        proc = spawn(f"notifier-{n}", ["notifier"], env, tmp_path / f"logs-{n}")
        with running(proc):
            eventually(lambda: actions(stack), lambda got, n=n: len([a for a in got if a[0].startswith("routes.")]) > n,
                       timeout=60, what="the notifier's routes entry", watch=(proc,))
    rules = tmp_path / "rules.yaml"
    rules.write_text(Path(stack.settings.rules_path).read_text())
    from dataclasses import replace

    settings = replace(stack.settings, rules_path=str(rules))
    audit_config_load(settings, "rpm worker", "rules", str(rules))
    audit_config_load(settings, "rpm worker", "rules", str(rules))
    rules.write_text(rules.read_text() + "\n# a clinician's edit\n")
    audit_config_load(settings, "rpm worker", "rules", str(rules))

    entries = [json.loads(line) for line in rpm(stack, "audit", "list", "--json").stdout.splitlines()]
    loads = [(e["action"], e["detail"]["sha256"], e["detail"]["previous_sha256"]) for e in entries]
    assert loads[:2] == [("routes.loaded", digests[0], ""), ("routes.changed", digests[1], digests[0])]
    assert [a for a, _d, _p in loads[2:]] == ["rules.loaded", "rules.loaded", "rules.changed"]
    assert loads[4][2] == loads[3][1] != loads[4][1]
    assert all(e["actor"] == getpass.getuser() for e in entries)
    assert rpm(stack, "audit", "verify").returncode == 0


def test_exports_of_patient_data_and_kiosk_revocations_name_who(stack: Stack, tmp_path: Path) -> None:
    """``rpm export fhir``, ``rpm report`` and ``rpm nurse-station kiosk revoke``, as real commands."""
    import time
    from datetime import UTC, datetime

    from station.kiosk import KioskRegistry
    from tests.people.support import write_lines

    url, db = stack.settings.influx_url or "", stack.settings.influx_db  # the stack made it; we write as its writer
    t0 = (int(time.time()) // 3600 - 2) * 3600 * 1000
    write_lines(url, db, [f"vitals,device=hrs-1,metric=heart_rate,patient=pf,source=ble value={70.0 + i} "
                          f"{t0 + i * 60_000}" for i in range(60)])
    since = datetime.fromtimestamp(t0 / 1000 - 60, UTC).isoformat()
    bundle, report = tmp_path / "pf.json", tmp_path / "pf.html"
    done = rpm(stack, "export", "fhir", "--patient", "pf", "--since", since, "--out", str(bundle))
    assert done.returncode == 0, done.stderr
    done = rpm(stack, "report", "--patient", "pf", "--days", "1", "--out", str(report), "--quiet")
    assert done.returncode == 0, done.stderr
    registry = KioskRegistry(tmp_path / "station")
    kiosk, _token = registry.issue("desk-1", label="bay 3")
    done = rpm(stack, "nurse-station", "kiosk", "--state-dir", str(tmp_path / "station"), "revoke", kiosk.id)
    assert done.returncode == 0, done.stderr

    entries = {e["action"]: e for e in map(json.loads, rpm(stack, "audit", "list", "--json").stdout.splitlines())}
    me = getpass.getuser()
    assert (entries["export.fhir"]["actor"], entries["export.fhir"]["patient"], entries["export.fhir"]["target"]) \
        == (me, "pf", str(bundle))
    assert entries["export.fhir"]["detail"]["since"].startswith(since[:16])
    assert (entries["export.report"]["actor"], entries["export.report"]["patient"]) == (me, "pf")
    assert (entries["kiosk_revoked"]["actor"], entries["kiosk_revoked"]["target"]) == (me, kiosk.id)
    assert rpm(stack, "audit", "verify").returncode == 0
