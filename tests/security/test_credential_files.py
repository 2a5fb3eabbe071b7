"""Secrets only from files with tight permissions: ``rpm`` refuses credential files others can read."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from rpm_app.services import start_mosquitto
from rpm_core import mqtt_users
from rpm_core.errors import ConfigError
from rpm_core.settings import MqttSettings, Settings, read_secret_file, url_with_password_file
from tests.support.procs import rpm_argv


def secret_file(tmp_path: Path, mode: int, text: str = "s3cret-Pa55\n") -> Path:
    path = tmp_path / "mqtt-password"
    path.write_text(text)
    path.chmod(mode)
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    return {**env, **extra}


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o700 | 0o004])
def test_a_password_file_others_can_access_is_refused_naming_the_file_and_fix(tmp_path: Path, mode: int) -> None:
    path = secret_file(tmp_path, mode)
    env = {"RPM_MQTT_URL": "mqtt://agent-p1@broker:1883", "RPM_MQTT_PASSWORD_FILE": str(path)}
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    text = str(info.value)
    assert str(path) in text and f"chmod 600 {path}" in text and "RPM_MQTT_PASSWORD_FILE" in text
    assert "s3cret" not in text


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_password_file_supplies_the_password(tmp_path: Path, mode: int) -> None:
    path = secret_file(tmp_path, mode)
    s = Settings.from_env({"RPM_MQTT_URL": "mqtts://agent-p1:ignored@broker:8883", "RPM_MQTT_PASSWORD_FILE": str(path)})
    m = s.mqtt()
    assert (m.username, m.password.get(), m.tls) == ("agent-p1", "s3cret-Pa55", True)
    assert "s3cret" not in repr(s) + repr(m) + m.url()
    assert MqttSettings.from_url(url_with_password_file(s.mqtt_url or "", path)).password.get() == "s3cret-Pa55"


@pytest.mark.parametrize(("text", "problem"), [("", "first line"), ("\n\n", "first line"),
                                               ("x" * 5000, "4 KiB"), ("\udcff", "UTF-8")])
def test_an_unusable_password_file_is_refused(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "pw"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=problem):
        read_secret_file(path, what="RPM_MQTT_PASSWORD_FILE")


def test_missing_file_and_url_without_user_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.from_env({"RPM_MQTT_URL": "mqtt://u@h", "RPM_MQTT_PASSWORD_FILE": str(tmp_path / "nope")})
    path = secret_file(tmp_path, 0o600)
    with pytest.raises(ConfigError, match="names no user"):
        Settings.from_env({"RPM_MQTT_URL": "mqtt://h", "RPM_MQTT_PASSWORD_FILE": str(path)}).mqtt()


@pytest.mark.parametrize("command", [["bridge"], ["simulate", "--patients", "1", "--duration", "1"],
                                     ["edge", "run"]])
def test_rpm_commands_refuse_a_world_readable_password_file(tmp_path: Path, command: list[str]) -> None:
    path = secret_file(tmp_path, 0o644)
    env = clean_env(RPM_MQTT_URL="mqtt://agent-p1@127.0.0.1:1", RPM_MQTT_PASSWORD_FILE=str(path),
                    RPM_KAFKA_URL="kafka://127.0.0.1:1", RPM_EDGE_STATE=str(tmp_path / "edge"))
    result = subprocess.run(rpm_argv(*command), env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert f"chmod 600 {path}" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


def test_mqtt_auth_refuses_a_readable_password_or_state_file(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    mqtt_users.init_auth(path)
    for name in (mqtt_users.PASSWD_FILE, mqtt_users.STATE_FILE):
        (path / name).chmod(0o644)
        result = subprocess.run(rpm_argv("mqtt-auth", "list", "--dir", str(path)), env=clean_env(),
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2
        assert f"chmod 600 {path / name}" in result.stderr
        (path / name).chmod(0o600)


def test_mosquitto_refuses_to_start_on_a_readable_password_file(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    mqtt_users.init_auth(path)
    auth = mqtt_users.AuthDir(path)
    auth.passwd_path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        start_mosquitto(tmp_path / "m", password_file=auth.passwd_path, acl_file=auth.acl_path)


def test_edge_run_takes_its_password_from_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_agent.cli import _settings
    from rpm_app.cli import build_parser

    path = secret_file(tmp_path, 0o600)
    for name in [k for k in os.environ if k.startswith("RPM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RPM_MQTT_URL", "mqtts://agent-p1@broker.example:8883")
    args = build_parser().parse_args(["edge", "run", "--state-dir", str(tmp_path / "s"), "--mqtt-password-file",
                                      str(path)])
    mqtt = _settings(args).mqtt()
    assert (mqtt.username, mqtt.password.get(), mqtt.tls) == ("agent-p1", "s3cret-Pa55", True)
    monkeypatch.setenv("RPM_MQTT_PASSWORD_FILE", str(path))
    args = build_parser().parse_args(["edge", "run", "--state-dir", str(tmp_path / "s")])
    assert _settings(args).mqtt().password.get() == "s3cret-Pa55"
