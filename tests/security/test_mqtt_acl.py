"""Per-patient access control against a real Mosquitto using ``rpm mqtt-auth``'s password and ACL files.

Mosquitto answers a publish its ACL denies with an MQTT v5 PUBACK "Not authorized" (0x87) and
drops the message (Mosquitto 2.0.11 then also closes the connection, so each denied publish below
uses a connection of its own). A subscription is granted but filtered at delivery, so reading
rights are proven by what arrives, with a message the subscriber *may* read as the sentinel.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rpm_core.mqtt_users import ADMIN_USER, ALERTS_USER, BRIDGE_USER, NURSE_USER, SIMULATOR_USER
from rpm_core.wire import command_topic, encode_readings, readings_topic, status_topic
from tests.security.conftest import PATIENT_A, PATIENT_B, SecureBroker
from tests.security.mqttclient import BAD_USER_OR_PASSWORD, NOT_AUTHORIZED, Client
from tests.support.procs import eventually, rpm_argv

pytestmark = pytest.mark.services

AGENT_A, AGENT_B = f"agent-{PATIENT_A}", f"agent-{PATIENT_B}"
NOTIFIER_USER = "rpm-notifier"
ALERT_TOPIC = "rpm/v1/alerts/ward-1"


def reading(patient: str) -> bytes:
    return encode_readings(patient=patient, device="hr-1", source="ble", samples=[["heart_rate", time.time(), 70]])


def publish_once(broker: SecureBroker, user: str, topic: str, payload: bytes) -> int:
    """Connect as ``user``, publish QoS 1, return the PUBACK reason code."""
    with Client(broker.settings(user)) as c:
        assert not c.connect().is_failure  # type: ignore[union-attr]
        return int(c.publish(topic, payload).value)


def watcher(broker: SecureBroker) -> Client:
    c = Client(broker.settings(ADMIN_USER))
    assert not c.connect().is_failure  # type: ignore[union-attr]
    c.subscribe("#")
    return c


def wait_for(probe: Callable[[], list[str]], topic: str) -> list[str]:
    return eventually(probe, lambda got: topic in got, timeout=10, what=f"a message on {topic}", interval=0.05)


def test_agent_cannot_publish_under_another_patients_topics(broker: SecureBroker) -> None:
    with watcher(broker) as watch:
        for topic in (readings_topic(PATIENT_B), status_topic(PATIENT_B), command_topic(PATIENT_B),
                      command_topic(PATIENT_A), ALERT_TOPIC, "rpm/v1/p/pB002/readings/x", "other"):
            assert publish_once(broker, AGENT_A, topic, reading(PATIENT_B)) == NOT_AUTHORIZED, topic
        own = readings_topic(PATIENT_A)
        assert publish_once(broker, AGENT_A, own, reading(PATIENT_A)) == 0
        assert publish_once(broker, AGENT_A, f"rpm/v1/p/{PATIENT_A}/ack", b"{}") == 0
        assert publish_once(broker, AGENT_A, status_topic(PATIENT_A), b'{"state":"online"}') == 0
        got = wait_for(watch.received.topics, status_topic(PATIENT_A))
    assert got == [own, f"rpm/v1/p/{PATIENT_A}/ack", status_topic(PATIENT_A)], "nothing denied reached anyone"


def test_agent_cannot_read_other_patients_data_nor_its_own_readings(broker: SecureBroker) -> None:
    mine = command_topic(PATIENT_A)
    with Client(broker.settings(AGENT_A)) as a, Client(broker.settings(ADMIN_USER)) as admin:
        a.connect()
        admin.connect()
        for topic in ("#", "rpm/v1/p/+/readings", readings_topic(PATIENT_B), command_topic(PATIENT_B),
                      "$share/g/rpm/v1/p/+/readings", "rpm/v1/alerts/#", mine):
            a.subscribe(topic)
        for topic in (readings_topic(PATIENT_B), command_topic(PATIENT_B), status_topic(PATIENT_B),
                      readings_topic(PATIENT_A), ALERT_TOPIC, mine):
            assert not admin.publish(topic, reading(PATIENT_B)).is_failure
        wait_for(a.received.topics, mine)
        time.sleep(0.2)  # let any stray copy of an earlier message show itself
        assert set(a.received.topics()) == {mine}


@pytest.mark.parametrize(("user", "topic", "allowed"), [
    (BRIDGE_USER, readings_topic(PATIENT_A), False),
    (BRIDGE_USER, ALERT_TOPIC, False),
    (NURSE_USER, ALERT_TOPIC, False),
    (NURSE_USER, readings_topic(PATIENT_A), False),
    (ALERTS_USER, ALERT_TOPIC, True),
    (ALERTS_USER, readings_topic(PATIENT_A), False),
    (ALERTS_USER, command_topic(PATIENT_A), False),
    (SIMULATOR_USER, readings_topic(PATIENT_B), True),
    (SIMULATOR_USER, command_topic(PATIENT_B), False),
    (NOTIFIER_USER, command_topic(PATIENT_B), True),
    (NOTIFIER_USER, readings_topic(PATIENT_B), False),
    (NOTIFIER_USER, f"rpm/v1/p/{PATIENT_B}/ack", False),
])
def test_service_users_may_write_only_what_their_role_grants(
    broker: SecureBroker, user: str, topic: str, allowed: bool
) -> None:
    code = publish_once(broker, user, topic, reading(PATIENT_A))
    assert code < 0x80 if allowed else code == NOT_AUTHORIZED  # 0x10: accepted, no subscriber yet


@pytest.mark.parametrize(("user", "readable", "unreadable"), [
    (BRIDGE_USER, [readings_topic(PATIENT_A), status_topic(PATIENT_B)], [ALERT_TOPIC, command_topic(PATIENT_A)]),
    (NURSE_USER, [ALERT_TOPIC], [readings_topic(PATIENT_A), status_topic(PATIENT_A), command_topic(PATIENT_A)]),
    (ALERTS_USER, [], [ALERT_TOPIC, readings_topic(PATIENT_A)]),
    (NOTIFIER_USER, [f"rpm/v1/p/{PATIENT_A}/ack"], [readings_topic(PATIENT_A), command_topic(PATIENT_A)]),
])
def test_service_users_may_read_only_what_their_role_grants(
    broker: SecureBroker, user: str, readable: list[str], unreadable: list[str]
) -> None:
    sentinel = readable[-1] if readable else None
    with Client(broker.settings(user)) as c, Client(broker.settings(ADMIN_USER)) as admin:
        c.connect()
        admin.connect()
        c.subscribe("#")
        for topic in [*unreadable, *readable]:
            admin.publish(topic, b"{}")
        if sentinel is None:
            admin.publish(command_topic(PATIENT_A), b"{}")  # admin's own echo shows the broker is past them
            time.sleep(0.5)
        else:
            wait_for(c.received.topics, sentinel)
        assert c.received.topics() == readable


def test_revoked_agent_is_refused_after_sighup(broker: SecureBroker) -> None:
    a, b = Client(broker.settings(AGENT_A)), Client(broker.settings(AGENT_B))
    with a, b:
        assert not a.connect().is_failure  # type: ignore[union-attr]
        assert not b.connect().is_failure  # type: ignore[union-attr]
        result = subprocess.run(
            rpm_argv("mqtt-auth", "revoke", "--dir", str(broker.auth.path), "--user", AGENT_A,
                     "--reload-pid", str(broker.svc.pid)),
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert result.returncode == 0, result.stderr
        assert f"revoked {AGENT_A}" in result.stdout and "SIGHUP" in result.stdout
        # Mosquitto re-checks connected clients on reload: A's session is closed...
        eventually(a.disconnected.is_set, bool, timeout=10, what="the revoked agent disconnected")
        # ...and B, untouched, still publishes.
        assert not b.publish(readings_topic(PATIENT_B), reading(PATIENT_B)).is_failure
    with Client(broker.settings(AGENT_A)) as again:
        connack = again.connect()
    assert connack is not None and connack.value in (BAD_USER_OR_PASSWORD, NOT_AUTHORIZED)


def test_agent_added_while_the_broker_runs_works_after_sighup(broker: SecureBroker, tmp_path: Path) -> None:
    out = tmp_path / "agent-pC.password"
    result = subprocess.run(
        rpm_argv("mqtt-auth", "add-agent", "--dir", str(broker.auth.path), "--patient", "pC003", "--out", str(out),
                 "--reload-pid", str(broker.svc.pid)),
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (out.stat().st_mode & 0o777) == 0o600
    password = out.read_text().strip()
    assert password not in result.stdout, "with --out the password is not printed"

    def publish() -> int:
        settings = broker.settings("agent-pC003", password=password)
        with Client(settings) as c:
            connack = c.connect()
            if connack is None or connack.is_failure:
                return -1
            return int(c.publish(readings_topic("pC003"), reading("pC003")).value)

    eventually(publish, lambda code: 0 <= code < 0x80, timeout=10, what="the new agent accepted")
    assert publish_once_as(broker, "agent-pC003", password, readings_topic(PATIENT_A)) == NOT_AUTHORIZED


def publish_once_as(broker: SecureBroker, user: str, password: str, topic: str) -> int:
    with Client(broker.settings(user, password=password)) as c:
        c.connect()
        return int(c.publish(topic, b"{}").value)


@pytest.mark.parametrize("tls", [False, True])
def test_anonymous_and_wrong_password_are_refused(broker: SecureBroker, tls: bool) -> None:
    with Client(broker.settings(None, tls=tls)) as anonymous:
        connack = anonymous.connect()
    assert connack is not None and connack.value == NOT_AUTHORIZED
    with Client(broker.settings(AGENT_A, tls=tls, password="not-the-password")) as wrong:
        connack = wrong.connect()
    assert connack is not None and connack.value in (BAD_USER_OR_PASSWORD, NOT_AUTHORIZED)
    with Client(broker.settings("nobody", tls=tls, password="x")) as unknown:
        connack = unknown.connect()
    assert connack is not None and connack.is_failure
