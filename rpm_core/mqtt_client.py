"""The one way rpm makes an MQTT client: paho, MQTT v5, an id bound to its user, credentials, TLS.

Every client of ours (the bridge, the watchdog, the notifier, the edge agent's publisher and its
command subscriber, the simulators) is built here, so a change of how we connect (a TLS option, the
client-id binding that stops one user from taking over another's session) is made once.
"""

from __future__ import annotations

from typing import Any, TypeVar, overload

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from rpm_core.settings import MqttSettings

C = TypeVar("C", bound=paho.Client)
# paho's own reconnect backoff of our long-lived clients: from 1 s doubling up to 15 s.
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 15


@overload
def mqtt_client(settings: MqttSettings, name: str, *, manual_ack: bool = ..., reconnect: bool = ...,
                max_inflight: int | None = ...) -> paho.Client: ...
@overload
def mqtt_client(settings: MqttSettings, name: str, *, cls: type[C], manual_ack: bool = ..., reconnect: bool = ...,
                max_inflight: int | None = ...) -> C: ...
def mqtt_client(settings: MqttSettings, name: str, *, cls: type[paho.Client] = paho.Client,
                manual_ack: bool = False, reconnect: bool = True, max_inflight: int | None = None) -> paho.Client:
    """A paho client (of ``cls``, paho's or a subclass) for ``settings``'s user with the client id
    ``name`` bound to it (``<user>:<name>``: the broker refuses ids of other users), logged in and
    with TLS when the URL asks for it. ``reconnect``: paho's own backoff (1 s to 15 s); without it
    the caller reconnects. Not connected yet: set the callbacks, then connect."""
    client = cls(CallbackAPIVersion.VERSION2, client_id=settings.client_id(name), protocol=paho.MQTTv5,
                 manual_ack=manual_ack)
    if settings.username:
        client.username_pw_set(settings.username, settings.password.get() or None)
    context = settings.ssl_context()
    if context is not None:
        client.tls_set_context(context)
    if reconnect:
        client.reconnect_delay_set(min_delay=RECONNECT_MIN_S, max_delay=RECONNECT_MAX_S)
    if max_inflight is not None:
        client.max_inflight_messages_set(max_inflight)
    return client


def session_properties(expiry_s: int, *, receive_maximum: int | None = None) -> Any:
    """CONNECT properties of a persistent session: the broker keeps the subscriptions and the QoS 1
    messages for ``expiry_s`` while the client is away (connect with ``clean_start=False``)."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = expiry_s
    if receive_maximum is not None:
        props.ReceiveMaximum = receive_maximum
    return props


def message_topic(msg: paho.MQTTMessage) -> str:
    """A received message's topic, bytes that are not UTF-8 replaced (then no topic check passes).

    paho's ``msg.topic`` raises ``UnicodeDecodeError`` on them, and an exception in ``on_message``
    ends paho's network thread: nothing is read after it, silently (the bridge's finding of the last
    round, for every other subscriber: the notifier's patient acks, the watchdog's device status)."""
    return bytes(msg._topic).decode("utf-8", "replace")
