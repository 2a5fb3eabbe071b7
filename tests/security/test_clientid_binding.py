"""No client can take over another's MQTT session (issue 13).

Mosquitto lets a client that connects with an id already in use take that session: the other
connection is closed, and its subscriptions and queued messages go to the newcomer. With valid
agent credentials that was enough to knock the bridge off (readings PUBACKed meanwhile were lost)
or to take a patient's command channel. Our Mosquitto loads the ``rpm_clientid`` plugin: a client
id must be the user name, or the user name and ``:`` and anything. Each takeover attempt here uses
an agent's real credentials against the real broker; each is refused, and the owner notices nothing.
"""

from __future__ import annotations

import time

import pytest

from rpm_core.mqtt_users import ADMIN_USER, BRIDGE_USER
from rpm_core.wire import command_topic
from tests.security.conftest import PATIENT_A, PATIENT_B, SecureBroker
from tests.security.mqttclient import NOT_AUTHORIZED, Client

pytestmark = pytest.mark.services

AGENT_A, AGENT_B = f"agent-{PATIENT_A}", f"agent-{PATIENT_B}"


def owner(broker: SecureBroker, user: str, client_id: str) -> Client:
    c = Client(broker.settings(user), client_id=client_id)
    reason = c.connect()
    assert reason is not None and not reason.is_failure, reason
    return c


@pytest.mark.parametrize("victim", [
    (BRIDGE_USER, f"{BRIDGE_USER}:host-0"),  # the bridge's id, shown in its /healthz
    ("rpm-notifier", "rpm-notifier:host"),
    (AGENT_B, f"{AGENT_B}:edge-{PATIENT_B}"),  # another patient's readings connection
    (AGENT_B, f"{AGENT_B}:edge-{PATIENT_B}-cmd"),  # ... and command channel
    (AGENT_B, AGENT_B),
], ids=["bridge", "notifier", "other-agent", "other-agent-cmd", "other-agent-bare"])
def test_an_agent_cannot_take_another_clients_session(broker: SecureBroker, victim: tuple[str, str]) -> None:
    user, client_id = victim
    held = owner(broker, user, client_id)
    try:
        thief = Client(broker.settings(AGENT_A), client_id=client_id)
        reason = thief.connect()
        assert reason is not None and reason.value == NOT_AUTHORIZED, reason
        thief.close()
        assert not held.disconnected.is_set(), "the owner's connection was closed"
        # still the owner's session: it still talks to the broker
        assert held.subscribe(f"rpm/v1/p/{PATIENT_B}/#" if user == AGENT_B else "rpm/v1/#")
    finally:
        held.close()


def test_a_patients_command_channel_stays_with_its_agent(broker: SecureBroker) -> None:
    agent = owner(broker, AGENT_B, f"{AGENT_B}:edge-{PATIENT_B}-cmd")
    try:
        assert not agent.subscribe(command_topic(PATIENT_B))[0].is_failure
        thief = Client(broker.settings(AGENT_A), client_id=f"{AGENT_B}:edge-{PATIENT_B}-cmd")
        assert thief.connect().value == NOT_AUTHORIZED  # type: ignore[union-attr]
        thief.close()
        sender = owner(broker, "rpm-notifier", "rpm-notifier:host")
        try:
            assert not sender.publish(command_topic(PATIENT_B), b'{"take": "15 g carbs"}').is_failure
        finally:
            sender.close()
        deadline = time.monotonic() + 10
        while command_topic(PATIENT_B) not in agent.received.topics() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert agent.received.topics() == [command_topic(PATIENT_B)], "the message reached its patient"
    finally:
        agent.close()


@pytest.mark.parametrize("client_id", [
    f"{AGENT_A}-x",  # looks like a prefix, but would be patient "pA001-x"'s user
    f"x{AGENT_A}",
    f"{AGENT_A.upper()}:edge",
    f"{ADMIN_USER}:{AGENT_A}",
])
def test_ids_not_bound_to_the_user_are_refused(broker: SecureBroker, client_id: str) -> None:
    c = Client(broker.settings(AGENT_A), client_id=client_id)
    reason = c.connect()
    c.close()
    assert reason is not None and reason.value == NOT_AUTHORIZED, (client_id, reason)


@pytest.mark.parametrize("client_id", [AGENT_A, f"{AGENT_A}:edge-{PATIENT_A}", f"{AGENT_A}:edge-{PATIENT_A}-cmd",
                                       f"{AGENT_A}:"])
def test_ids_bound_to_the_user_are_accepted(broker: SecureBroker, client_id: str) -> None:
    c = Client(broker.settings(AGENT_A), client_id=client_id)
    reason = c.connect()
    c.close()
    assert reason is not None and not reason.is_failure, (client_id, reason)


def test_a_wrong_password_is_still_refused_with_a_bound_id(broker: SecureBroker) -> None:
    c = Client(broker.settings(AGENT_A, password="wrong"), client_id=AGENT_A)
    reason = c.connect()
    c.close()
    assert reason is not None and reason.is_failure


def test_a_server_assigned_id_belongs_to_nobody(broker: SecureBroker) -> None:
    """An empty client id makes Mosquitto assign one (``auto-…``): not bound to the user, refused."""
    c = Client(broker.settings(AGENT_A), client_id="placeholder")
    c.client._client_id = b""  # paho sends what it holds; an empty id asks the broker for one
    reason = c.connect()
    c.close()
    assert reason is not None and reason.value == NOT_AUTHORIZED, reason
