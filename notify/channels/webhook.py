"""The webhook channel: a signed JSON POST, the way hospitals plug in pagers, SMS gateways and messengers.

Request::

    POST <url>
    Content-Type: application/json
    X-RPM-Timestamp: 1764100000                      (Unix seconds when signed)
    X-RPM-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>
    X-RPM-Delivery: <notification id>                (the same on every retry: drop duplicates by it)

    {"v": 1, "id": …, "kind": "step", "patient": "p0001", "step": 1, "alerts": [...], …}

The signature covers the timestamp and the body together (as Stripe's and Slack's do), so a
captured request cannot be replayed later with a fresh timestamp; receivers check it with
:func:`verify_signature`, rejecting timestamps more than ``WEBHOOK_TOLERANCE_S`` away from their clock.
2xx is a delivery; 408, 429, 5xx and network errors are retried; any other status is permanent.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

import aiohttp
import orjson

from notify.const import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, WEBHOOK_TOLERANCE_S
from notify.errors import PermanentDeliveryError, TransientDeliveryError
from notify.messages import webhook_payload
from notify.model import ChannelSpec
from notify.router import Notification
from rpm_core.settings import Secret

_RETRYABLE: Final = frozenset({408, 429})
_SCHEME: Final = "sha256="


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 over ``"<timestamp>." + body``."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return _SCHEME + digest


def verify_signature(secret: bytes, *, timestamp: str, body: bytes, signature: str, now: float,
                     tolerance_s: float = WEBHOOK_TOLERANCE_S) -> bool:
    """Whether a request is authentic and fresh (for receivers; constant-time comparison)."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(now - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path``: no credentials, query or fragment (they may hold tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class WebhookChannel:
    """POSTs the notification as signed JSON to ``spec.url``."""

    def __init__(self, *, spec: ChannelSpec, secret: Secret, session: Callable[[], aiohttp.ClientSession],
                 clock: Callable[[], float] = time.time) -> None:
        assert spec.url is not None
        self.spec = spec
        self._url = spec.url
        self._secret = secret
        self._session = session
        self._clock = clock

    def recipient(self, note: Notification) -> str:
        """The configured label, else the URL without secrets."""
        return self.spec.recipient or redact_url(self._url)

    async def send(self, note: Notification) -> str:
        """One signed POST."""
        body = orjson.dumps(webhook_payload(note))
        timestamp = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret.get().encode(), timestamp, body),
            DELIVERY_HEADER: note.id,
        }
        try:
            async with self._session().post(self._url, data=body, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                await resp.read()
        except (aiohttp.ClientError, OSError) as exc:
            raise TransientDeliveryError(f"cannot reach {redact_url(self._url)}: {type(exc).__name__}") from exc
        if 200 <= status < 300:
            return f"HTTP {status}"
        if status in _RETRYABLE or status >= 500:
            raise TransientDeliveryError(f"HTTP {status}")
        raise PermanentDeliveryError(f"HTTP {status}")
