"""The Faust application (Faust's documented layout: this module holds only the ``faust.App``)."""

from __future__ import annotations

from typing import Final

import faust

from rpm_core.kafka_security import KafkaSecurity
from stream.faust_adapter import adapt
from stream.faust_tuning import faust_settings

APP_ID: Final = "rpm-worker"  # also the Kafka consumer group every worker joins


def faust_credentials(security: KafkaSecurity) -> faust.types.auth.CredentialsT | None:
    """Faust's ``broker_credentials`` for the same TLS/SASL settings every other client uses."""
    if not security.tls:
        return None
    ctx = security.ssl_context()
    if security.protocol == "SASL_SSL":
        return faust.SASLCredentials(username=security.username, password=security.password.get(), ssl_context=ctx,
                                     mechanism=security.sasl_mechanism)
    return faust.SSLCredentials(ctx)


def create_app(*, broker: str, partitions: int, datadir: str, web_port: int, app_id: str = APP_ID,
               store: str = "memory", security: KafkaSecurity | None = None) -> faust.App:
    """A Faust app for one worker process (several of them form one consumer group).

    ``store``: where the state table lives between changelog reads: ``memory`` (recovered from the
    changelog at every start) or ``rocksdb`` (on disk in the data directory, so a restart with
    the same data directory reads only the changelog's tail; needs the ``rocksdict`` package).
    """
    settings = faust_settings(broker=broker, partitions=partitions, datadir=datadir, web_port=web_port, store=store)
    credentials = faust_credentials(security) if security is not None else None
    if credentials is not None:
        settings["broker_credentials"] = credentials
    app = faust.App(app_id, autodiscover=False, **settings)
    adapt(app)  # our patches of Faust's internals: fetch wait, seek fence, recovery watchdog
    return app
