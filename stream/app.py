"""The Faust application (Faust's documented layout: this module holds only the ``faust.App``)."""

from __future__ import annotations

from typing import Final

import faust

from stream.faust_adapter import adapt
from stream.faust_tuning import faust_settings

APP_ID: Final = "rpm-worker"  # also the Kafka consumer group every worker joins


def create_app(*, broker: str, partitions: int, datadir: str, web_port: int, app_id: str = APP_ID,
               store: str = "memory") -> faust.App:
    """A Faust app for one worker process (several of them form one consumer group).

    ``store``: where the state table lives between changelog reads: ``memory`` (recovered from the
    changelog at every start) or ``rocksdb`` (on disk in the data directory, so a restart with
    the same data directory reads only the changelog's tail; needs the ``rocksdict`` package).
    """
    app = faust.App(app_id, autodiscover=False, **faust_settings(
        broker=broker, partitions=partitions, datadir=datadir, web_port=web_port, store=store,
    ))
    adapt(app)  # our patches of Faust's internals: fetch wait, seek fence, recovery watchdog
    return app
