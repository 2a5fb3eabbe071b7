"""InfluxDB with authentication on (issue 18, item 3): nobody without credentials reads or writes,
the read-only user cannot write, the pipeline writes as the writer, Grafana reads as the reader.

The InfluxDB is the real one (Debian's 1.6, ``auth-enabled = true``) that every test and ``rpm demo``
start through :func:`rpm_app.services.start_influxdb`.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from rpm_app.grafana import ProvisionOptions, provision
from rpm_app.report import InfluxReader
from rpm_app.services import (
    INFLUX_ADMIN,
    INFLUX_READER,
    INFLUX_WRITER,
    ServiceProcess,
    Stack,
    influx_query,
    influx_users,
)
from rpm_core.errors import ConfigError, ServiceError
from rpm_core.host import free_port
from rpm_core.mqtt_users import SIMULATOR_USER
from rpm_core.settings import InfluxAuth, Secret, Settings
from rpm_core.sink import make_sink
from tests.support.influx import rows
from tests.support.procs import eventually, rpm_argv, rpm_env, running, spawn, spawn_bridge

pytestmark = pytest.mark.services

DB = "rpm"  # the database the writer and the reader are granted on


def base(influx: ServiceProcess) -> str:
    return f"http://{influx.host}:{influx.port}"


def status_of(url: str, path: str, *, data: bytes, headers: dict[str, str] | None = None) -> int:
    """The HTTP status of one POST (errors included)."""
    req = urllib.request.Request(f"{url}{path}", data=data, method="POST", headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (loopback http)
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def query_body(q: str) -> bytes:
    return urllib.parse.urlencode({"db": DB, "q": q}).encode()


def line(patient: str) -> bytes:
    return f"vitals,patient={patient},metric=heart_rate,device=d,source=s value=61 {time.time_ns()}".encode()


def test_without_credentials_influxdb_answers_401_to_query_and_write(influx: ServiceProcess) -> None:
    url = base(influx)
    assert status_of(url, "/query", data=query_body("SELECT * FROM vitals")) == 401
    assert status_of(url, f"/write?db={DB}", data=line("pNoAuth")) == 401
    wrong = InfluxAuth(username=INFLUX_WRITER, password=Secret("not-the-password")).headers()
    assert status_of(url, "/query", data=query_body("SHOW MEASUREMENTS"), headers=wrong) == 401
    assert status_of(url, f"/write?db={DB}", data=line("pWrongPw"), headers=wrong) == 401


def test_the_reader_reads_but_cannot_write_and_the_writer_is_no_admin(influx: ServiceProcess) -> None:
    url, users = base(influx), influx_users(influx)
    reader, writer = users.auth(INFLUX_READER).headers(), users.auth(INFLUX_WRITER).headers()
    assert status_of(url, f"/write?db={DB}", data=line("pWriter"), headers=writer) == 204
    assert status_of(url, f"/write?db={DB}", data=line("pReader"), headers=reader) == 403
    got = rows(users.url(INFLUX_READER, url), DB, "SELECT * FROM vitals WHERE patient =~ /^pWriter|pReader$/")
    assert [r["patient"] for r in got] == ["pWriter"], "the reader reads what the writer wrote, and wrote nothing"
    admin_only = ('CREATE DATABASE "stolen"', 'DROP DATABASE "rpm"',
                  "CREATE USER eve WITH PASSWORD 'x' WITH ALL PRIVILEGES", 'GRANT ALL ON "rpm" TO rpm_reader')
    for q in admin_only:
        for who in (INFLUX_WRITER, INFLUX_READER):  # "requires admin privilege"
            assert status_of(url, "/query", data=query_body(q), headers=users.auth(who).headers()) == 403, (who, q)
    other = 'CREATE DATABASE "other_db"'
    influx_query(users.url(INFLUX_ADMIN, url), other)
    for who in (INFLUX_WRITER, INFLUX_READER):  # granted on rpm only
        assert status_of(url, "/write?db=other_db", data=line("pOther"), headers=users.auth(who).headers()) == 403


def test_password_files_are_private_to_their_owner(influx: ServiceProcess) -> None:
    users = influx_users(influx)
    assert users.directory.stat().st_mode & 0o077 == 0
    for role in (INFLUX_ADMIN, INFLUX_WRITER, INFLUX_READER):
        assert users.password_file(role).stat().st_mode & 0o777 == 0o600


async def test_a_sink_without_credentials_is_a_configuration_fault_naming_the_settings(
        influx: ServiceProcess) -> None:
    """What a worker with no or wrong InfluxDB credentials shows on /healthz and in its technical
    alert (``SinkStats.problem``): the settings to check, not a dead-lettered point."""
    for settings in (Settings(influx_url=base(influx)),
                     Settings(influx_url=f"http://{INFLUX_WRITER}:wrong@{influx.host}:{influx.port}")):
        sink = make_sink(url=settings.require_influx(), db=DB, auth=settings.influx_auth())
        try:
            with pytest.raises(Exception) as info:  # noqa: PT011 (the writer's own error, checked below)
                await sink.writer.write(line("pFault"))
        finally:
            await sink.close()
        text = str(info.value)
        assert "401" in text and "RPM_INFLUX_USER" in text and "RPM_INFLUX_PASSWORD_FILE" in text, text
        assert "wrong" not in text


async def test_the_reader_as_a_sink_is_told_to_grant_write(influx: ServiceProcess) -> None:
    users = influx_users(influx)
    sink = make_sink(url=base(influx), db=DB, auth=users.auth(INFLUX_READER))
    try:
        with pytest.raises(Exception) as info:  # noqa: PT011
            await sink.writer.write(line("pReaderSink"))
    finally:
        await sink.close()
    text = str(info.value)
    assert "403" in text and "rpm_reader" in text and "GRANT WRITE" in text, text


def test_settings_take_the_user_and_a_private_password_file(influx: ServiceProcess, tmp_path: Path) -> None:
    users = influx_users(influx)
    env = {"RPM_INFLUX_URL": base(influx), "RPM_INFLUX_USER": INFLUX_READER,
           "RPM_INFLUX_PASSWORD_FILE": str(users.password_file(INFLUX_READER))}
    settings = Settings.from_env(env)
    assert InfluxReader.from_settings(settings).rows("SELECT count(value) FROM vitals") is not None
    assert users.auth(INFLUX_READER).password.get() not in repr(settings) + repr(settings.influx_auth())
    leaky = tmp_path / "pw"
    leaky.write_text("secret\n")
    leaky.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Settings.from_env({**env, "RPM_INFLUX_PASSWORD_FILE": str(leaky)})
    with pytest.raises(ConfigError, match="RPM_INFLUX_PASSWORD_FILE"):
        Settings.from_env({"RPM_INFLUX_URL": base(influx), "RPM_INFLUX_USER": INFLUX_READER})
    with pytest.raises(ServiceError, match="401"):  # a report without credentials is refused, clearly
        InfluxReader.from_settings(Settings(influx_url=base(influx))).rows("SELECT count(value) FROM vitals")


def test_grafana_is_provisioned_with_the_read_only_user_and_no_secret_in_its_files(
        influx: ServiceProcess, tmp_path: Path) -> None:
    users = influx_users(influx)
    written = provision(tmp_path, ProvisionOptions(
        influx_url=users.url(INFLUX_READER, base(influx)), influx_user=INFLUX_READER,
        influx_password_file=str(users.password_file(INFLUX_READER))))
    ds = yaml.safe_load(written[0].read_text())["datasources"][0]
    assert ds["user"] == INFLUX_READER and ds["url"] == base(influx)
    password_ref = ds["secureJsonData"]["password"]
    assert password_ref == f"$__file{{{users.password_file(INFLUX_READER).resolve()}}}"
    secret = users.auth(INFLUX_READER).password.get()
    assert not any(secret in p.read_text() for p in written)
    # what Grafana then sends (HTTP Basic as rpm_reader) reads the dashboards' data and cannot write
    grafana = InfluxAuth(username=ds["user"], password=Secret(Path(password_ref[8:-1]).read_text().strip())).headers()
    assert status_of(base(influx), "/query", data=query_body("SHOW MEASUREMENTS"), headers=grafana) == 200
    assert status_of(base(influx), f"/write?db={DB}", data=line("pGrafana"), headers=grafana) == 403


def test_a_worker_with_a_wrong_password_says_so_on_healthz_naming_the_setting(stack: Stack, tmp_path: Path) -> None:
    """The real worker, given the writer's name but a wrong password file, takes readings and
    cannot write them: /healthz says ``configured: false`` and names the settings to check (the
    watchdog turns that into a technical alert); nothing is dead-lettered, the readings wait in Kafka."""
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    env = rpm_env(stack, RPM_INFLUX_PASSWORD_FILE=str(wrong))
    assert env["RPM_INFLUX_USER"] == INFLUX_WRITER
    port = free_port()
    worker = spawn("worker", ["worker", "--data-dir", str(tmp_path / "worker"), "--web-port", str(port)], env,
                   tmp_path)
    with running(worker):
        bridge = spawn_bridge(stack, tmp_path)
        with running(bridge):
            subprocess.run(rpm_argv("simulate", "--patients", "1", "--duration", "1", "--history", "60"),
                           env=rpm_env(stack, mqtt_user=SIMULATOR_USER), check=True, timeout=300,
                           capture_output=True)

            def healthz() -> dict[str, Any]:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
                        return dict(json.loads(resp.read()))
                except urllib.error.HTTPError as exc:
                    return dict(json.loads(exc.read() or b"{}"))
                except OSError:
                    return {}

            body = eventually(healthz, lambda b: b.get("configured") is False, timeout=180,
                              what="the worker's /healthz reporting the refused credentials", watch=(worker, bridge))
    assert "401" in body["problem"] and "RPM_INFLUX_PASSWORD_FILE" in body["problem"], body["problem"]
    assert "rpm_writer" in body["problem"] and "not-the-password" not in body["problem"]
    assert "not-the-password" not in worker.log_path.read_text()


async def test_a_station_audit_refused_by_influxdb_says_why_and_keeps_its_entries(influx: ServiceProcess) -> None:
    """The station's audit writes through the shared sink: credentials InfluxDB refuses are waited out
    (entries stay queued, none counted as written) and named for the station's /healthz."""
    import asyncio

    from station.audit import AuditEntry, AuditLog

    audit = AuditLog(url=f"http://{INFLUX_WRITER}:wrong@{influx.host}:{influx.port}", db=DB)
    audit.record(AuditEntry(action="login", ward="north", station="north-desk", at=time.time()))
    task = asyncio.ensure_future(audit.run())
    try:
        deadline = time.monotonic() + 60
        while audit.problem is None and time.monotonic() < deadline and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        problem = audit.problem
        assert problem is not None and "401" in problem and "RPM_INFLUX_PASSWORD_FILE" in problem, problem
        assert "wrong" not in problem
        assert audit.written == 0 and audit.failed == 0, "refused credentials drop nothing"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
