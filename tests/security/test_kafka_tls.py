"""Kafka over TLS (issue 18, item 1): ``RPM_KAFKA_URL=kafka+ssl://…`` for every Kafka client of rpm
(the bridge's producer, the Faust worker, the admin client that makes the topics), with the
broker's certificate checked against ``RPM_KAFKA_CA`` and a client certificate presented.

Tansu 0.6 serves plain text only (docs/security.md), so a TLS front that requires a client
certificate from our test CA stands before it (tests/support/kafkatls.py) and Tansu advertises the
front's address: every byte the pipeline exchanges with Kafka goes over TLS.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from rpm_app.services import Stack, start_stack, start_tansu
from rpm_core import topics
from rpm_core.errors import ConfigError
from rpm_core.host import free_port
from rpm_core.kafka_security import kafka_client_kwargs
from rpm_core.mqtt_users import SIMULATOR_USER
from rpm_core.settings import Settings
from simulators.patients import Scenario, patient_id, scenario_for
from tests.security.pki import TestCA, write_server_files
from tests.support.influx import count_by, rows
from tests.support.kafkatls import KafkaTlsFront
from tests.support.procs import eventually, rpm_argv, rpm_env, running, spawn, spawn_bridge

pytestmark = pytest.mark.services

PATIENTS = 4
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TlsKafka:
    """The stack (Mosquitto, InfluxDB) with Kafka at ``url`` over TLS, and the files to reach it."""

    stack: Stack
    url: str
    ca_file: Path
    rogue_ca_file: Path
    cert: Path
    key: Path


def write_client_files(ca: TestCA, directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = ca.issue(dns=[name], client=True)
    (directory / "client.pem").write_bytes(cert)
    (directory / "client.key").write_bytes(key)
    (directory / "client.key").chmod(0o600)
    return directory / "client.pem", directory / "client.key"


@pytest.fixture
def tls_kafka(tmp_path: Path) -> Iterator[TlsKafka]:
    ca = TestCA.create("rpm test Kafka CA")
    server_cert, server_key = write_server_files(ca, tmp_path / "pki" / "broker", dns=["localhost"], ips=("127.0.0.1",))
    client_cert, client_key = write_client_files(ca, tmp_path / "pki" / "pipeline", "rpm-pipeline")
    ca_file = ca.write_ca(tmp_path / "pki" / "ca.pem")
    rogue = TestCA.create("rpm test Kafka CA").write_ca(tmp_path / "pki" / "rogue-ca.pem")
    front_port = free_port()
    tansu = start_tansu(tmp_path / "tansu", advertised=f"127.0.0.1:{front_port}")
    try:
        with KafkaTlsFront(tansu.port, server_cert, server_key, client_ca=ca_file, port=front_port) as port:
            url = f"kafka+ssl://127.0.0.1:{port}"
            settings = Settings(rules_path=str(REPO / "alert_rules.yaml"), kafka_url=url, kafka_ca=str(ca_file),
                                kafka_cert=str(client_cert), kafka_key=str(client_key))
            stack = start_stack(settings, tmp_path / "services")
            try:
                yield TlsKafka(stack, url, ca_file, rogue, client_cert, client_key)
            finally:
                stack.stop()
    finally:
        tansu.stop()


def test_the_pipeline_over_kafka_ssl_delivers_readings_to_alerts(tls_kafka: TlsKafka, tmp_path: Path) -> None:
    stack = tls_kafka.stack
    env = rpm_env(stack)
    assert env["RPM_KAFKA_URL"].startswith("kafka+ssl://") and env["RPM_KAFKA_CA"] == str(tls_kafka.ca_file)
    url, db = stack.settings.influx_url, stack.settings.influx_db
    assert url
    worker = spawn("worker", ["worker", "--data-dir", str(tmp_path / "worker")], env, tmp_path)
    with running(worker):
        bridge = spawn_bridge(stack, tmp_path)
        summary = tmp_path / "summary.json"
        subprocess.run(rpm_argv("simulate", "--patients", str(PATIENTS), "--duration", "3", "--history", "1200",
                                "--summary-json", str(summary)),
                       env=rpm_env(stack, mqtt_user=SIMULATOR_USER), check=True, timeout=300, capture_output=True)
        sent: dict[str, int] = json.loads(summary.read_text())["by_metric"]
        got = eventually(lambda: count_by(url, db, "vitals", "value", "metric"),
                         lambda g: all(g.get(m, 0) >= n for m, n in sent.items()),
                         timeout=240, what="every reading through Kafka over TLS in InfluxDB", watch=(bridge, worker))
        raised = eventually(lambda: rows(url, db, "SELECT * FROM alerts WHERE state = 'raised'"),
                            lambda r: len(r) >= sum(scenario_for(i) != Scenario.NORMAL for i in range(PATIENTS)),
                            timeout=120, what="the alerts", watch=(bridge, worker))
        bridge.stop()
    assert got == sent
    assert {r["patient"] for r in raised} == {patient_id(i) for i in range(PATIENTS)
                                              if scenario_for(i) != Scenario.NORMAL}


def test_a_client_without_the_ca_fails_at_start_with_a_clear_error(tls_kafka: TlsKafka, tmp_path: Path) -> None:
    for ca in (None, str(tls_kafka.rogue_ca_file)):  # the system store; a CA of the same name, other key
        settings = Settings(kafka_url=tls_kafka.url, kafka_ca=ca, kafka_cert=str(tls_kafka.cert),
                            kafka_key=str(tls_kafka.key))
        with pytest.raises(ConfigError) as info:
            asyncio.run(topics.ensure_topics(settings.kafka_bootstrap()))
        assert "cannot be verified" in str(info.value) and "RPM_KAFKA_CA" in str(info.value)
    env = rpm_env(tls_kafka.stack)
    del env["RPM_KAFKA_CA"]
    done = subprocess.run(rpm_argv("bridge", "--health-port", str(free_port())), env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "certificate" in done.stderr and "RPM_KAFKA_CA" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


async def _produce_and_consume(**kwargs: object) -> bytes:
    producer = AIOKafkaProducer(**kwargs, request_timeout_ms=10_000, enable_idempotence=False)  # type: ignore[arg-type]
    try:
        await producer.start()
        await producer.send_and_wait("rpm.tls-probe", b"probe")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer("rpm.tls-probe", **kwargs, auto_offset_reset="earliest",  # type: ignore[arg-type]
                                group_id=None, request_timeout_ms=10_000)
    try:
        await consumer.start()
        record = await consumer.getone()
        return bytes(record.value or b"")
    finally:
        await consumer.stop()


def test_only_a_client_with_a_certificate_of_our_ca_produces_or_consumes(tls_kafka: TlsKafka) -> None:
    s = tls_kafka.stack.settings
    assert asyncio.run(_produce_and_consume(**kafka_client_kwargs(s.kafka_bootstrap()))) == b"probe"
    servers = s.kafka_bootstrap()
    plain = {"bootstrap_servers": str(servers)}
    no_cert = kafka_client_kwargs(Settings(kafka_url=tls_kafka.url, kafka_ca=str(tls_kafka.ca_file)).kafka_bootstrap())
    for kwargs in (plain, no_cert):  # refused in the TLS handshake, before any Kafka request reaches Tansu
        with pytest.raises(KafkaConnectionError):
            asyncio.run(_produce_and_consume(**kwargs))
