"""The e-mail channel: SMTP with STARTTLS (certificate verified), through the stdlib in a worker thread.

``smtplib`` blocks, so each attempt runs in :func:`asyncio.to_thread` with the socket timeout of the
delivery policy (the retry loop's ``asyncio.timeout`` bounds the wait as well). STARTTLS is required
unless routes.yaml says ``starttls: false`` (a relay on this host): a server that does not offer it is a
permanent failure, never a silent fall-back to clear text. SMTP 4xx and lost connections are retried;
5xx (and refused recipients) are permanent.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from notify.errors import PermanentDeliveryError, TransientDeliveryError
from notify.messages import body, subject
from notify.model import ChannelSpec, SmtpServer
from notify.router import Notification
from rpm_core.settings import Secret


def build_message(note: Notification, *, sender: str, to: tuple[str, ...]) -> EmailMessage:
    """The e-mail for ``note`` (plain text; the notification id in a header for de-duplication)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject(note)
    msg["Date"] = formatdate(note.at, usegmt=True)
    msg["Message-ID"] = make_msgid(idstring=note.id, domain="rpm.local")
    msg["X-RPM-Notification"] = note.id
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(body(note))
    return msg


class EmailChannel:
    """Sends the notification as an e-mail to ``spec.to`` through ``server``."""

    def __init__(self, *, spec: ChannelSpec, server: SmtpServer, timeout_s: float,
                 username: Secret | None = None, password: Secret | None = None) -> None:
        self.spec = spec
        self._server = server
        self._timeout_s = timeout_s
        self._username = username
        self._password = password

    def recipient(self, note: Notification) -> str:
        """The addresses."""
        return self.spec.recipient or ", ".join(self.spec.to)

    async def send(self, note: Notification) -> str:
        """One SMTP transaction."""
        msg = build_message(note, sender=self._server.sender, to=self.spec.to)
        return await asyncio.to_thread(self._send_blocking, msg)

    def _send_blocking(self, msg: EmailMessage) -> str:
        s = self._server
        try:
            with smtplib.SMTP(s.host, s.port, timeout=self._timeout_s) as smtp:
                smtp.ehlo()
                if s.starttls:
                    smtp.starttls(context=ssl.create_default_context(cafile=s.ca_file))
                    smtp.ehlo()
                if self._username is not None and self._username.get():
                    smtp.login(self._username.get(), self._password.get() if self._password else "")
                refused = smtp.send_message(msg)
        except smtplib.SMTPNotSupportedError as exc:
            raise PermanentDeliveryError(f"{s.host} does not offer STARTTLS; not sending in clear text") from exc
        except smtplib.SMTPRecipientsRefused as exc:
            raise PermanentDeliveryError(f"{s.host} refused every recipient") from exc
        except smtplib.SMTPResponseException as exc:
            kind = TransientDeliveryError if 400 <= exc.smtp_code < 500 else PermanentDeliveryError
            raise kind(f"{s.host} answered SMTP {exc.smtp_code}") from exc
        except ssl.SSLCertVerificationError as exc:
            raise PermanentDeliveryError(f"{s.host}: TLS certificate not trusted ({exc.verify_message})") from exc
        except (smtplib.SMTPException, OSError) as exc:  # disconnected, refused, timeout, TLS handshake
            raise TransientDeliveryError(f"cannot reach {s.host}:{s.port}: {type(exc).__name__}") from exc
        accepted = len(self.spec.to) - len(refused)
        return f"accepted by {s.host} for {accepted} of {len(self.spec.to)} recipient(s)"
