"""MQTT over TLS (``mqtts://``) against a real Mosquitto with a certificate from a test CA.

The broker's certificate names ``localhost`` only. Every client of ours builds its TLS context with
``MqttSettings.ssl_context()`` (certificate and host name verified, ``RPM_MQTT_CA`` or the system
store as trust anchors); the edge agent's and the simulator's connection code are exercised here
directly, the bridge's in ``test_tls_pipeline.py``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

from edge_agent.errors import BrokerUnavailableError
from edge_agent.publisher import _Connection
from rpm_core.settings import MqttSettings
from rpm_core.wire import readings_topic, status_topic
from simulators.runner import _connect
from tests.security.conftest import PATIENT_A, SecureBroker
from tests.security.mqttclient import Client

pytestmark = [
    pytest.mark.services,
    # paho leaves the socket of a failed TLS handshake to the garbage collector (closed there, but
    # with a ResourceWarning): paho's, not ours, and only when verification refuses a broker.
    pytest.mark.filterwarnings(r"ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning"),
]

AGENT_A = f"agent-{PATIENT_A}"


def test_tls_with_the_test_ca_works_and_verification_is_on(broker: SecureBroker) -> None:
    settings = broker.settings(AGENT_A, tls=True)
    ctx = settings.ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    with Client(settings) as c:
        connack = c.connect()
        assert connack is not None and not connack.is_failure
        assert not c.publish(readings_topic(PATIENT_A), b"{}").is_failure
        cipher = c.client.socket().cipher()  # type: ignore[union-attr]
    assert cipher is not None and cipher[1] in ("TLSv1.2", "TLSv1.3")


def test_a_certificate_from_another_ca_is_refused(broker: SecureBroker) -> None:
    settings = broker.settings(AGENT_A, tls=True, ca_file=broker.pki.rogue_ca_file)
    with Client(settings) as c, pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        c.connect()


def test_the_system_store_does_not_trust_the_test_ca(broker: SecureBroker) -> None:
    settings = MqttSettings.from_url(f"mqtts://localhost:{broker.svc.tls_port}").with_user(AGENT_A, "x")
    with Client(settings) as c, pytest.raises(ssl.SSLCertVerificationError):
        c.connect()


@pytest.mark.parametrize("host", ["127.0.0.1", socket.gethostname()])
def test_a_wrong_host_name_is_refused(broker: SecureBroker, host: str) -> None:
    """The certificate names DNS:localhost only; the same broker reached by another name is refused."""
    try:
        loopback = all(str(a[4][0]).startswith("127.") for a in socket.getaddrinfo(host, None, socket.AF_INET))
    except OSError:
        loopback = False
    if not loopback or host == "localhost":
        pytest.skip(f"{host} is not another name of this host's loopback")
    settings = broker.settings(AGENT_A, tls=True, host=host)
    with Client(settings) as c, pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|doesn't match"):
        c.connect()


def test_plaintext_to_the_tls_listener_gets_nowhere(broker: SecureBroker) -> None:
    s = broker.settings(AGENT_A)
    plain = MqttSettings.from_url(f"mqtt://localhost:{broker.svc.tls_port}").with_user(AGENT_A, s.password.get())
    with Client(plain) as c:
        assert not connects(c)


def connects(c: Client) -> bool:
    try:
        connack = c.connect()
    except (AssertionError, OSError):  # no CONNACK, or the connection closed
        return False
    return connack is not None and not connack.is_failure


async def test_edge_agent_connection_verifies_the_broker(broker: SecureBroker) -> None:
    will = (status_topic(PATIENT_A), b'{"state":"offline"}')
    good = _Connection(mqtt=broker.settings(AGENT_A, tls=True), client_id="edge-good", will=will)
    await good.open()
    await good.close()
    for settings in (broker.settings(AGENT_A, tls=True, ca_file=broker.pki.rogue_ca_file),
                     broker.settings(AGENT_A, tls=True, host="127.0.0.1")):
        bad = _Connection(mqtt=settings, client_id="edge-bad", will=will)
        with pytest.raises(BrokerUnavailableError, match="certificate verify failed"):
            await bad.open()
        await bad.close()
    await asyncio.sleep(0)


def test_simulator_connection_verifies_the_broker(broker: SecureBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    url = broker.settings("rpm-simulator", tls=True).url(redact=False)
    monkeypatch.setenv("RPM_MQTT_CA", str(broker.pki.ca_file))
    client, _ = _connect(url, "sim-good")
    client.disconnect()
    client.loop_stop()
    monkeypatch.setenv("RPM_MQTT_CA", str(broker.pki.rogue_ca_file))
    with pytest.raises(ssl.SSLCertVerificationError):
        _connect(url, "sim-bad")
