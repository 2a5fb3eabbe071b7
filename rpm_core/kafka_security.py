"""How every Kafka client of rpm connects: in plain text, over TLS, or with SASL over TLS.

| ``RPM_KAFKA_URL`` scheme | aiokafka ``security_protocol`` | for |
| --- | --- | --- |
| ``kafka://h:p[,h:p…]`` | ``PLAINTEXT`` | loopback and test brokers (``rpm demo``'s Tansu) |
| ``kafka+ssl://h:p`` | ``SSL`` | TLS; with ``RPM_KAFKA_CERT``/``_KEY`` also a client certificate (mTLS) |
| ``kafka+sasl_ssl://h:p`` | ``SASL_SSL`` | TLS plus a SASL principal per role (production Kafka, Redpanda) |

There is deliberately no SASL without TLS: a password is never sent in the clear.

| variable | meaning | default |
| --- | --- | --- |
| ``RPM_KAFKA_CA`` | CA bundle that signed the brokers' certificates | system store |
| ``RPM_KAFKA_CERT`` / ``RPM_KAFKA_KEY`` | client certificate (PEM) and its key (PEM, mode 0600) | unset |
| ``RPM_KAFKA_USER`` / ``RPM_KAFKA_PASSWORD_FILE`` | SASL principal and its password (file, mode 0600) | unset |
| ``RPM_KAFKA_SASL_MECHANISM`` | ``SCRAM-SHA-512``, ``SCRAM-SHA-256`` or ``PLAIN`` | ``SCRAM-SHA-512`` |

Every service hands its Kafka clients the bootstrap string it always did; that string is a
:class:`KafkaBootstrap` built by ``Settings.kafka_bootstrap()`` which carries the
:class:`KafkaSecurity` along, and :func:`kafka_client_kwargs` turns it into aiokafka's keyword
arguments. So no client can be built with the servers but without the TLS settings.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from typing import Any, Final

from rpm_core.errors import ConfigError
from rpm_core.settings import Secret

# URL scheme → aiokafka security_protocol
SCHEMES: Final = {"kafka": "PLAINTEXT", "kafka+ssl": "SSL", "kafka+sasl_ssl": "SASL_SSL"}
SASL_MECHANISMS: Final = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
DEFAULT_SASL_MECHANISM: Final = "SCRAM-SHA-512"
# How long the start-up check waits for a TLS handshake: a loaded 2-core box still answers in far less.
TLS_CHECK_TIMEOUT_S: Final = 15.0


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """TLS and SASL settings shared by every Kafka client of one process."""

    protocol: str = "PLAINTEXT"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    sasl_mechanism: str = DEFAULT_SASL_MECHANISM
    username: str | None = None
    password: Secret = field(default_factory=lambda: Secret(""))

    @property
    def tls(self) -> bool:
        """Whether connections are encrypted (``kafka+ssl://`` or ``kafka+sasl_ssl://``)."""
        return self.protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A verifying client context (certificate chain and host name checked), with the client
        certificate loaded when one is configured; None in plain text."""
        if not self.tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"the Kafka TLS files (RPM_KAFKA_CA, RPM_KAFKA_CERT, RPM_KAFKA_KEY) cannot be "
                              f"loaded: {exc}") from exc
        return ctx

    def client_kwargs(self) -> dict[str, Any]:
        """aiokafka's security keyword arguments (nothing for plain text)."""
        if self.protocol == "PLAINTEXT":
            return {}
        kwargs: dict[str, Any] = {"security_protocol": self.protocol, "ssl_context": self.ssl_context()}
        if self.protocol == "SASL_SSL":
            kwargs.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.username,
                          sasl_plain_password=self.password.get())
        return kwargs


class KafkaBootstrap(str):
    """``host:port[,host:port…]`` that also knows how to connect (its :class:`KafkaSecurity`)."""

    __slots__ = ("security",)
    security: KafkaSecurity

    def __new__(cls, servers: str, security: KafkaSecurity | None = None) -> KafkaBootstrap:
        """``servers`` with ``security`` (plain text when None)."""
        self = super().__new__(cls, servers)
        self.security = security or KafkaSecurity()
        return self


def security_of(bootstrap: str) -> KafkaSecurity:
    """The security a bootstrap string carries (plain text for a bare ``host:port``)."""
    return bootstrap.security if isinstance(bootstrap, KafkaBootstrap) else KafkaSecurity()


def kafka_client_kwargs(bootstrap: str) -> dict[str, Any]:
    """``bootstrap_servers`` and the TLS/SASL arguments for an aiokafka producer, consumer or admin client."""
    return {"bootstrap_servers": str(bootstrap), **security_of(bootstrap).client_kwargs()}


def check_tls(bootstrap: str) -> None:
    """For a TLS bootstrap: one handshake with the first server, so that a certificate the
    configured CA does not vouch for is a :class:`ConfigError` that says so at start-up, not an
    endless "Unable to bootstrap" from aiokafka. Unreachable brokers are left to the clients' retries."""
    security = security_of(bootstrap)
    ctx = security.ssl_context()
    if ctx is None:
        return
    host, _, port = str(bootstrap).split(",")[0].strip().rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=TLS_CHECK_TIMEOUT_S) as raw, \
                ctx.wrap_socket(raw, server_hostname=host):
            return
    except ssl.SSLCertVerificationError as exc:
        raise ConfigError(
            f"Kafka at {host}:{port} presented a certificate that cannot be verified ({exc.verify_message}); "
            "set RPM_KAFKA_CA to the CA that signed the brokers' certificates") from exc
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS with Kafka at {host}:{port} failed ({exc.reason or exc}); is it a TLS listener "
                          "(kafka+ssl://), and does it want a client certificate (RPM_KAFKA_CERT, "
                          "RPM_KAFKA_KEY)?") from exc
    except OSError:
        return  # not reachable yet: the clients retry and report it
