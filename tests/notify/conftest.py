"""Fixtures of the notifier tests: the stack with the notifier's and an agent's MQTT users, a real SMTP
server with STARTTLS (aiosmtpd, certificate from a test CA), and a webhook receiver (aiohttp) that
checks every signature with its own HMAC code (``tests/notify/servers.py``).
"""

from __future__ import annotations

import email
import email.policy
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from rpm_app.services import MqttCredentials, ServiceProcess, Stack, start_mosquitto, start_stack
from rpm_core.host import free_port
from rpm_core.mqtt_users import (
    ADMIN_USER,
    ALERTS_USER,
    BRIDGE_USER,
    NOTIFIER_USER,
    NURSE_USER,
    PIPELINE_ACL,
    SIMULATOR_USER,
)
from rpm_core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
PATIENT = "p0001"
AGENT_USER = f"agent-{PATIENT}"
# The agent's own topics only, as `rpm mqtt-auth` grants them.
AGENT_ACL = f"""
user {AGENT_USER}
topic write rpm/v1/p/{PATIENT}/readings
topic write rpm/v1/p/{PATIENT}/status
topic write rpm/v1/p/{PATIENT}/ack
topic read rpm/v1/p/{PATIENT}/cmd
"""


@dataclass
class Broker:
    """A Mosquitto of this test and the URL of each of its users."""

    creds: MqttCredentials
    svc: ServiceProcess

    def url(self, user: str) -> str:
        return self.creds.url(user, self.svc.host, self.svc.port)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto alone, with the pipeline's users, rpm-notifier and agent-p0001."""
    creds = MqttCredentials.generate([ADMIN_USER, NOTIFIER_USER, AGENT_USER, "agent-p0002"])
    acl = PIPELINE_ACL + AGENT_ACL + AGENT_ACL.replace(PATIENT, "p0002")
    svc = start_mosquitto(tmp_path / "mosquitto", creds=creds, acl_text=acl)
    try:
        yield Broker(creds, svc)
    finally:
        svc.stop()


@pytest.fixture
def notify_stack(tmp_path: Path) -> Iterator[Stack]:
    """Mosquitto (pipeline users, rpm-notifier, agent-p0001), Tansu and InfluxDB, fresh for this test."""
    users = [BRIDGE_USER, SIMULATOR_USER, ALERTS_USER, NURSE_USER, ADMIN_USER, NOTIFIER_USER, AGENT_USER]
    creds = MqttCredentials.generate(users)
    mosquitto = start_mosquitto(tmp_path / "mosquitto", creds=creds, acl_text=PIPELINE_ACL + AGENT_ACL)
    settings = Settings(rules_path=str(REPO / "alert_rules.yaml"),
                        mqtt_url=creds.url(ADMIN_USER, mosquitto.host, mosquitto.port))
    try:
        stack = start_stack(settings, tmp_path / "services")
    except BaseException:
        mosquitto.stop()
        raise
    stack.processes = {"mosquitto": mosquitto, **stack.processes}
    stack.mqtt_creds = creds
    try:
        yield stack
    finally:
        stack.stop()


# --- SMTP --------------------------------------------------------------------------------------------


@dataclass
class Inbox:
    """What the SMTP server received: parsed messages and whether each came over TLS."""

    messages: list[EmailMessage] = field(default_factory=list)
    over_tls: list[bool] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    ca_file: str = ""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.over_tls.append(session.ssl is not None)
        return "250 2.0.0 queued"


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[Inbox]:
    """aiosmtpd on a free port that requires STARTTLS, with a certificate from a test CA."""
    import trustme
    from aiosmtpd.controller import Controller

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    inbox = Inbox(port=free_port(), ca_file=str(ca_file))
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port, tls_context=context,
                            require_starttls=True, ready_timeout=10)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()
