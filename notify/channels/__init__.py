"""Channel adapters: each turns a :class:`~notify.router.Notification` into one delivery attempt.

:func:`build_channels` makes one adapter per configured channel, with the secrets and connections
the service owns; :func:`notify.channels.base.deliver` adds timeouts, retries and receipts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp

from notify.channels.base import Channel
from notify.channels.edge import EdgeAgentChannel, PublishFn
from notify.channels.email import EmailChannel
from notify.channels.nurse_station import NurseStationChannel
from notify.channels.webhook import WebhookChannel
from notify.errors import NotifyError
from notify.model import ChannelSpec, Routes
from rpm_core.errors import ConfigError
from rpm_core.settings import Secret


class MissingSecretError(NotifyError, ConfigError):
    """A channel needs an environment variable that is not set."""


@dataclass(frozen=True)
class ChannelContext:
    """What the adapters need from the service: secrets by variable name, an HTTP session, MQTT."""

    secrets: Mapping[str, Secret]
    http: Callable[[], aiohttp.ClientSession]
    publish: PublishFn


def _secret(ctx: ChannelContext, name: str | None, what: str) -> Secret:
    secret = ctx.secrets.get(name or "")
    if secret is None or not secret.get():
        raise MissingSecretError(f"{name} is not set: {what} needs it (routes.yaml names the variable; set it)")
    return secret


def build_channel(routes: Routes, spec: ChannelSpec, ctx: ChannelContext) -> Channel:
    """The adapter of one channel."""
    if spec.type == "webhook":
        secret = _secret(ctx, spec.secret_env, f"webhook {spec.tag}")
        return WebhookChannel(spec=spec, secret=secret, session=ctx.http)
    if spec.type == "email":
        server = routes.smtp
        assert server is not None  # the loader requires smtp: for email channels
        user = _secret(ctx, server.username_env, "smtp.username_env") if server.username_env else None
        password = _secret(ctx, server.password_env, "smtp.password_env") if server.password_env else None
        return EmailChannel(spec=spec, server=server, timeout_s=routes.delivery.timeout_s, username=user,
                            password=password)
    if spec.type == "edge_agent":
        return EdgeAgentChannel(spec=spec, publish=ctx.publish)
    return NurseStationChannel(spec=spec)


def build_channels(routes: Routes, ctx: ChannelContext) -> dict[str, Channel]:
    """Every configured channel by its tag (``<receiver>.<name>``); fails early on a missing secret."""
    return {spec.tag: build_channel(routes, spec, ctx)
            for receiver in routes.receivers.values() for spec in receiver.channels}
