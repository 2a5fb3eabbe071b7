"""Settings from the environment: parsed once, validated, secrets never shown."""

from __future__ import annotations

import pytest

from rpm_core.errors import ConfigError
from rpm_core.settings import MqttSettings, Settings


def test_environment_is_read_into_settings() -> None:
    s = Settings.from_env({
        "RPM_MQTT_URL": "mqtts://agent:s%40cret@broker.example:8884", "RPM_KAFKA_URL": "kafka://k1:9092,k2:9092",
        "RPM_INFLUX_URL": "http://influx:8086", "RPM_INFLUX_DB": "ward7", "RPM_RULES": "/etc/rpm/rules.yaml",
    })
    m = s.mqtt()
    assert (m.host, m.port, m.username, m.password.get(), m.tls) == ("broker.example", 8884, "agent", "s@cret", True)
    assert s.kafka_bootstrap() == "k1:9092,k2:9092" and s.influx_db == "ward7"
    assert s.rules_path == "/etc/rpm/rules.yaml"


def test_defaults() -> None:
    s = Settings.from_env({})
    assert (s.influx_db, s.rules_path, s.mqtt_url) == ("rpm", "alert_rules.yaml", None)
    assert MqttSettings.from_url("mqtt://h").port == 1883 and MqttSettings.from_url("mqtts://h").port == 8883


@pytest.mark.parametrize(("env", "names"), [
    ({"RPM_MQTT_URL": "http://broker:1883"}, "RPM_MQTT_URL"),
    ({"RPM_MQTT_URL": "mqtt://"}, "RPM_MQTT_URL"),
    ({"RPM_MQTT_URL": "mqtt://h:99999"}, "RPM_MQTT_URL"),
    ({"RPM_KAFKA_URL": "localhost:9092"}, "RPM_KAFKA_URL"),
    ({"RPM_INFLUX_URL": "influx:8086"}, "RPM_INFLUX_URL"),
])
def test_bad_values_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        Settings.from_env(env)


def test_secrets_never_appear_in_repr_or_str() -> None:
    s = Settings.from_env({"RPM_MQTT_URL": "mqtt://u:hunter2@h:1", "RPM_INFLUX_TOKEN": "tok-hunter2",
                           "RPM_INFLUX_URL": "http://u:hunter2@influx:8086"})
    for text in (repr(s), str(s), repr(s.mqtt()), s.mqtt().url(), str(s.influx_token)):
        assert "hunter2" not in text
    assert s.mqtt().url(redact=False) == "mqtt://u:hunter2@h:1"


def test_tls_context_verifies_by_default() -> None:
    import ssl

    ctx = MqttSettings.from_url("mqtts://h").ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert MqttSettings.from_url("mqtt://h").ssl_context() is None
