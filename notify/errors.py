"""Errors of the notifier.

::

    NotifyError (RpmError)
    ├── RoutesError (RulesError, ValueError)   bad routes.yaml; names file, line, field and the fix
    └── ChannelError                           a channel could not deliver one notification
        ├── TransientDeliveryError             worth another try (down, timeout, 5xx, 429, SMTP 4xx)
        └── PermanentDeliveryError             no retry will help (4xx, SMTP 5xx, bad address)
"""

from __future__ import annotations

from rpm_core.errors import RpmError, RulesError


class NotifyError(RpmError):
    """Root of the errors raised by :mod:`notify`."""


class RoutesError(NotifyError, RulesError):
    """An invalid routes file; like :class:`~rpm_core.errors.RulesError` it names file, line, field and fix."""


class ChannelError(NotifyError):
    """A channel could not deliver a notification; ``detail`` says why (no secrets, no readings)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class TransientDeliveryError(ChannelError):
    """A failure another attempt may not have: connection refused, timeout, HTTP 5xx/429, SMTP 4xx."""


class PermanentDeliveryError(ChannelError):
    """A failure no retry will fix: HTTP 4xx, SMTP 5xx, a missing secret, a refused recipient."""
