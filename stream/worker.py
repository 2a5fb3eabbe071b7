"""``rpm worker``: one Faust worker process. Run more of them to scale out (one consumer group).

Each worker gets its own data directory and web port unless told otherwise, so several can run
on one host without clashing.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpm_core.services import free_port
from rpm_core.settings import Settings
from stream.topics import DEFAULT_READINGS_PARTITIONS

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    """How to run one worker."""

    partitions: int = DEFAULT_READINGS_PARTITIONS
    datadir: str | None = None
    web_port: int = 0
    loglevel: str = "info"


def build_pipeline(settings: Settings) -> object:
    """The detection pipeline for ``settings`` (rules loaded and validated before Kafka is touched)."""
    from detectors.engine import Engine
    from rpm_core.rules import load_rules
    from stream.pipeline import Pipeline
    from stream.sink import make_sink

    ruleset = load_rules(settings.rules_path)
    sink = make_sink(
        url=settings.require_influx(), db=settings.influx_db,
        token=settings.influx_token.get(), org=settings.influx_org,
    )
    return Pipeline(engine_factory=lambda: Engine(ruleset), sink=sink)


def run_worker(settings: Settings, options: WorkerOptions) -> None:
    """Run a worker until SIGTERM/SIGINT (Faust handles both and shuts down gracefully)."""
    from faust.worker import Worker

    from stream.agents import register_agents
    from stream.app import create_app
    from stream.pipeline import Pipeline

    pipeline = build_pipeline(settings)
    assert isinstance(pipeline, Pipeline)
    datadir = options.datadir or tempfile.mkdtemp(prefix="rpm-worker-")
    Path(datadir).mkdir(parents=True, exist_ok=True)
    web_port = options.web_port or free_port()
    app = create_app(
        broker=settings.kafka_url or "kafka://localhost:9092",
        partitions=options.partitions, datadir=datadir, web_port=web_port,
    )
    register_agents(app, pipeline, partitions=options.partitions)
    _LOGGER.info("worker starting: data dir %s, web port %d", datadir, web_port)
    worker = Worker(app, sink_closer(pipeline), loglevel=options.loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def _sink_closer_class() -> type:
    import mode

    class SinkCloser(mode.Service):  # type: ignore[misc]
        """Closes the sink's HTTP session after the agents stopped (graceful shutdown)."""

        def __init__(self, pipeline: Any, **kwargs: Any) -> None:
            self._pipeline = pipeline
            super().__init__(**kwargs)

        async def on_stop(self) -> None:
            _LOGGER.info("worker stopping: %s", self._pipeline.stats)
            await self._pipeline.sink.close()

    return SinkCloser


def sink_closer(pipeline: Any) -> Any:
    """A mode service that closes ``pipeline``'s sink when the worker stops."""
    return _sink_closer_class()(pipeline)
