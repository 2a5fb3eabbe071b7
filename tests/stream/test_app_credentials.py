"""The Faust worker connects with the same TLS/SASL settings as every other Kafka client: what
``create_app`` hands Faust is what Faust's aiokafka driver turns into aiokafka's arguments."""

from __future__ import annotations

from pathlib import Path

from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from rpm_core.host import free_port
from rpm_core.kafka_security import KafkaSecurity
from rpm_core.settings import Secret
from stream.app import create_app
from tests.security.pki import TestCA


def test_faust_gets_ssl_and_sasl_credentials_as_aiokafka_arguments(tmp_path: Path) -> None:
    ca = TestCA.create("faust test CA").write_ca(tmp_path / "ca.pem")
    common = {"broker": "kafka://k1:9093", "partitions": 1, "datadir": str(tmp_path / "faust"),
              "web_port": free_port()}
    tls = create_app(**common, security=KafkaSecurity(protocol="SSL", ca_file=str(ca)))
    got = credentials_to_aiokafka_auth(tls.conf.broker_credentials)
    assert got["security_protocol"] == "SSL" and got["ssl_context"].check_hostname
    sasl = create_app(**common, security=KafkaSecurity(protocol="SASL_SSL", ca_file=str(ca), username="rpm-worker",
                                                      password=Secret("pw"), sasl_mechanism="SCRAM-SHA-256"))
    got = credentials_to_aiokafka_auth(sasl.conf.broker_credentials)
    assert (got["security_protocol"], got["sasl_mechanism"], got["sasl_plain_username"],
            got["sasl_plain_password"]) == ("SASL_SSL", "SCRAM-SHA-256", "rpm-worker", "pw")
    plain = create_app(**common, security=KafkaSecurity())
    assert credentials_to_aiokafka_auth(plain.conf.broker_credentials) == {"security_protocol": "PLAINTEXT"}
