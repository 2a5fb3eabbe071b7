"""``RPM_KAFKA_URL`` schemes and the ``RPM_KAFKA_*`` TLS/SASL settings: what is accepted, what is
refused (naming the variable), and what every aiokafka client is given."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest

from rpm_core.errors import ConfigError
from rpm_core.kafka_security import KafkaBootstrap, kafka_client_kwargs
from rpm_core.settings import Settings
from tests.security.pki import TestCA


def private(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    path.chmod(0o600)
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    ca = TestCA.create("kafka test CA")
    cert, key = ca.issue(dns=["rpm-worker"], client=True)
    return {"RPM_KAFKA_CA": str(ca.write_ca(tmp_path / "ca.pem")),
            "RPM_KAFKA_CERT": str(private(tmp_path / "client.pem", cert)),
            "RPM_KAFKA_KEY": str(private(tmp_path / "client.key", key)),
            "RPM_KAFKA_PASSWORD_FILE": str(private(tmp_path / "kafka-password", "s3cret-Kafka-pw\n"))}


def test_plain_kafka_gives_only_the_servers() -> None:
    bootstrap = Settings.from_env({"RPM_KAFKA_URL": "kafka://k1:9092,k2:9092"}).kafka_bootstrap()
    assert bootstrap == "k1:9092,k2:9092" and isinstance(bootstrap, KafkaBootstrap)
    assert kafka_client_kwargs(bootstrap) == {"bootstrap_servers": "k1:9092,k2:9092"}
    assert kafka_client_kwargs("k3:9092") == {"bootstrap_servers": "k3:9092"}  # a bare string: plain text


def test_kafka_ssl_with_a_client_certificate(files: dict[str, str]) -> None:
    env = {"RPM_KAFKA_URL": "kafka+ssl://k1:9093", **{k: v for k, v in files.items() if "PASSWORD" not in k}}
    kwargs = kafka_client_kwargs(Settings.from_env(env).kafka_bootstrap())
    assert kwargs["bootstrap_servers"] == "k1:9093" and kwargs["security_protocol"] == "SSL"
    ctx = kwargs["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert "sasl_mechanism" not in kwargs


def test_kafka_sasl_ssl_takes_the_password_from_a_private_file(files: dict[str, str]) -> None:
    env = {"RPM_KAFKA_URL": "kafka+sasl_ssl://k1:9093", "RPM_KAFKA_CA": files["RPM_KAFKA_CA"],
           "RPM_KAFKA_USER": "rpm-worker", "RPM_KAFKA_PASSWORD_FILE": files["RPM_KAFKA_PASSWORD_FILE"]}
    settings = Settings.from_env(env)
    kwargs = kafka_client_kwargs(settings.kafka_bootstrap())
    assert (kwargs["security_protocol"], kwargs["sasl_mechanism"], kwargs["sasl_plain_username"],
            kwargs["sasl_plain_password"]) == ("SASL_SSL", "SCRAM-SHA-512", "rpm-worker", "s3cret-Kafka-pw")
    assert "s3cret" not in repr(settings) + repr(settings.kafka_security())
    assert settings.kafka_env()["RPM_KAFKA_PASSWORD_FILE"] == files["RPM_KAFKA_PASSWORD_FILE"]


@pytest.mark.parametrize(("env", "message"), [
    ({"RPM_KAFKA_URL": "kafka+sasl_ssl://k:9093"}, "RPM_KAFKA_USER and RPM_KAFKA_PASSWORD_FILE"),
    ({"RPM_KAFKA_URL": "kafka://k:9092", "RPM_KAFKA_USER": "u"}, "never sends a password in the clear"),
    ({"RPM_KAFKA_URL": "kafka://k:9092", "RPM_KAFKA_CA": "CA"}, "use kafka+ssl://"),
    ({"RPM_KAFKA_URL": "kafka+ssl://k:9093", "RPM_KAFKA_CERT": "CERT"}, "go together"),
    ({"RPM_KAFKA_URL": "kafka+ssl://k:9093", "RPM_KAFKA_CA": "/nonexistent/ca.pem"}, "does not exist"),
    ({"RPM_KAFKA_URL": "kafka+sasl_ssl://k:9093", "RPM_KAFKA_SASL_MECHANISM": "GSSAPI"}, "SCRAM-SHA-512"),
    ({"RPM_KAFKA_URL": "kafkas://k:9093"}, "kafka+ssl://"),
])
def test_settings_that_cannot_work_are_refused_naming_the_variable(files: dict[str, str], env: dict[str, str],
                                                                   message: str) -> None:
    env = {k: (files[f"RPM_KAFKA_{v}"] if v in ("CA", "CERT") else v) for k, v in env.items()}  # real files
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env(env)


def test_a_client_key_others_can_read_is_refused(files: dict[str, str]) -> None:
    Path(files["RPM_KAFKA_KEY"]).chmod(0o644)
    env = {"RPM_KAFKA_URL": "kafka+ssl://k:9093", **{k: v for k, v in files.items() if "PASSWORD" not in k}}
    with pytest.raises(ConfigError, match=r"RPM_KAFKA_KEY .* chmod 600"):
        Settings.from_env(env)
