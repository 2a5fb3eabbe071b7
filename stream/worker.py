"""``rpm worker``: one Faust worker process. Run more of them to scale out (one consumer group).

Each worker gets its own data directory and web port unless told otherwise, so several can run
on one host without clashing. Faust's web server (``127.0.0.1:<web port>``) also serves:

- ``GET /metrics``: Prometheus text (:func:`stream.metrics.worker_metrics`);
- ``GET /healthz``: 200 when the worker runs, owns readings partitions whose state has been
  recovered, and is not stuck on a failing batch or InfluxDB write (``STUCK_AFTER_S``), 503
  otherwise; a JSON body whose booleans are the checks.

With a roster (``--roster`` or ``RPM_ROSTER``) the worker enrolls the roster patients of its
partitions for staleness alerts (see :mod:`stream.agents`); without one nobody is enrolled.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from rpm_core.host import free_port
from rpm_core.settings import Settings
from rpm_core.topics import DEFAULT_READINGS_PARTITIONS

_LOGGER = logging.getLogger(__name__)

DEFAULT_KAFKA_URL: Final = "kafka://localhost:9092"


@dataclass(frozen=True)
class WorkerOptions:
    """How to run one worker."""

    partitions: int = DEFAULT_READINGS_PARTITIONS
    datadir: str | None = None
    web_port: int = 0
    loglevel: str = "info"
    roster: str | None = None  # roster file; None: RPM_ROSTER, else nobody is enrolled


def roster_patients(path: str | None, env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Every patient of the roster at ``path`` (or ``RPM_ROSTER``), sorted; ``()`` without a roster.

    A roster that is set but invalid stops the worker at start-up (the error names file and line).
    """
    return tuple(sorted(roster_wards(path, env)))


def roster_wards(path: str | None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Patient → ward of the roster at ``path`` (or ``RPM_ROSTER``); ``{}`` without a roster."""
    from rpm_core.roster import ROSTER_ENV, load_roster

    env = os.environ if env is None else env
    path = path or env.get(ROSTER_ENV) or None
    if path is None:
        return {}
    roster = load_roster(path, env=env)
    return {p: ward.id for ward in roster.wards.values() for p in ward.patients}


def heartbeat(app: Any, pipeline: Any, status: Any, *, instance: str, ward_of: Mapping[str, str],
              state: str = "running") -> Any:
    """What this worker tells ``rpm watchdog``: its health, the partitions it owns and has recovered,
    per ward when a reading of one of its patients last arrived (every patient counts for the
    ward ``all`` without a roster), the patients whose stored state it could not read lately, and
    those on no ward of the roster whose readings arrived lately (no station shows their alerts)."""
    from rpm_core.roster import ALL_WARD
    from rpm_core.technical import (
        MAX_STATE_RESET_IDS,
        MAX_UNASSIGNED_IDS,
        STATE_RESET_HOLD_S,
        UNASSIGNED_HOLD_S,
        Heartbeat,
    )

    body = health(app, pipeline, status)
    reset, reset_count = pipeline.recent_resets(STATE_RESET_HOLD_S)
    healthy = body["running"] and body["progressing"] and body["configured"]
    wards: dict[str, float] = {}
    unassigned: list[tuple[float, str]] = []  # on no ward of the roster (none without one), lately
    cutoff = pipeline.now() - UNASSIGNED_HOLD_S
    for patient, t in pipeline.last_seen.items():
        ward = ward_of.get(patient, ALL_WARD if not ward_of else None)
        if ward is None:
            if t >= cutoff:
                unassigned.append((t, patient))
        elif t > wards.get(ward, 0.0):
            wards[ward] = t
    unassigned.sort(reverse=True)
    return Heartbeat(component="worker", instance=instance, time=time.time(), state=state,  # type: ignore[arg-type]
                     healthy=healthy, problem=body["problem"],
                     partitions=tuple(sorted(status.partitions)) if status.recovered else (),
                     partition_count=status.total_partitions(), ward_last_reading=wards,
                     messages=pipeline.stats.records, deadlettered=pipeline.stats.deadlettered,
                     state_reset=tuple(reset[:MAX_STATE_RESET_IDS]), state_reset_count=reset_count,
                     unassigned=tuple(p for _t, p in unassigned[:MAX_UNASSIGNED_IDS]),
                     unassigned_count=len(unassigned))


def register_heartbeat(app: Any, pipeline: Any, status: Any, *, instance: str, ward_of: Mapping[str, str],
                       keys: Any = None) -> None:
    """Send :func:`heartbeat` to ``rpm.heartbeats`` every ``HEARTBEAT_INTERVAL_S`` (a Faust timer:
    a worker whose event loop is stuck stops sending, and the watchdog notices), signed with ``keys``."""
    from rpm_core import topics
    from rpm_core.technical import HEARTBEAT_INTERVAL_S, HeartbeatSender

    beats = app.topic(topics.HEARTBEATS, key_type=bytes, value_type=bytes, partitions=1)

    async def send(key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
        await beats.send(key=key, value=value, headers=headers)

    sender = HeartbeatSender(send, keys=keys, what="this worker", logger=_LOGGER)

    async def beat() -> None:
        stopping = bool(app.should_stop)
        await sender.send(heartbeat(app, pipeline, status, instance=instance, ward_of=ward_of,
                                    state="stopping" if stopping else "running"))

    app.timer(HEARTBEAT_INTERVAL_S)(beat)


def build_pipeline(settings: Settings, status: Any = None) -> object:
    """The detection pipeline for ``settings`` (rules loaded and validated before Kafka is touched).

    ``status`` (a :class:`stream.protocol.WorkerStatus`) says which patients to enroll for staleness.
    """
    from detectors.engine import Engine
    from rpm_core.alarm_policy import load_alarm_policy, realarm_table
    from rpm_core.rules import load_rules
    from rpm_core.sink import make_sink
    from stream.pipeline import Pipeline

    ruleset = load_rules(settings.rules_path)
    # acknowledged is not resolved: still open after the rule's interval, an alert is raised again
    realarm = realarm_table(load_alarm_policy(settings.rules_path), [rule.name for rule in ruleset.rules])
    sink = make_sink(
        url=settings.require_influx(), db=settings.influx_db,
        org=settings.influx_org, auth=settings.influx_auth(),
    )
    return Pipeline(engine_factory=lambda: Engine(ruleset, realarm_after=realarm), sink=sink,
                    enrolled=status.enrolled if status is not None else None, state_format=state_format())


def state_format(env: Mapping[str, str] | None = None) -> str:
    """``RPM_STATE_FORMAT``: how the worker writes checkpoints, ``packed`` (default) or ``json`` (the
    format of workers before packed checkpoints: during a rolling upgrade, so that a worker of the
    previous version taking over a partition can read its states). Both are read."""
    from rpm_core.errors import ConfigError
    from stream.pipeline import STATE_FORMATS

    env = os.environ if env is None else env
    value = (env.get("RPM_STATE_FORMAT") or STATE_FORMATS[0]).strip().lower()
    if value not in STATE_FORMATS:
        raise ConfigError(f"RPM_STATE_FORMAT={value!r}: expected one of {', '.join(STATE_FORMATS)}")
    return value


def checkpoint_interval_s(env: Mapping[str, str] | None = None) -> float:
    """``RPM_CHECKPOINT_INTERVAL_S`` (seconds between group commits of state and offsets), or the default."""
    from stream.protocol import CHECKPOINT_INTERVAL_S

    env = os.environ if env is None else env
    raw = env.get("RPM_CHECKPOINT_INTERVAL_S", "").strip()
    if not raw:
        return CHECKPOINT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 300.0:
        raise ValueError(f"RPM_CHECKPOINT_INTERVAL_S={raw!r}: expected seconds between 0 and 300")
    return value


def state_store(env: Mapping[str, str] | None = None) -> str:
    """``RPM_STATE_STORE``: ``memory`` (default) or ``rocksdb`` (needs the ``rocksdict`` package)."""
    import importlib.util

    from rpm_core.errors import ConfigError
    from stream.faust_tuning import STORES

    env = os.environ if env is None else env
    store = (env.get("RPM_STATE_STORE") or "memory").strip().lower()
    if store not in STORES:
        raise ConfigError(f"RPM_STATE_STORE={store!r}: expected one of {', '.join(STORES)}")
    if store == "rocksdb" and importlib.util.find_spec("rocksdict") is None:
        raise ConfigError("RPM_STATE_STORE=rocksdb needs the Python package 'rocksdict': pip install rocksdict")
    return store


def run_worker(settings: Settings, options: WorkerOptions) -> None:
    """Run a worker until SIGTERM/SIGINT (Faust handles both and shuts down gracefully)."""
    from faust.worker import Worker

    from stream.agents import register_agents
    from stream.app import create_app
    from stream.pipeline import Pipeline
    from stream.protocol import WorkerStatus

    store = state_store()  # checked before anything starts
    ward_of = roster_wards(options.roster)
    status = WorkerStatus(roster=tuple(sorted(ward_of)), configured_partitions=options.partitions)
    pipeline = build_pipeline(settings, status)
    assert isinstance(pipeline, Pipeline)
    ensure_topics(settings, options.partitions)
    datadir = options.datadir or tempfile.mkdtemp(prefix="rpm-worker-")
    Path(datadir).mkdir(parents=True, exist_ok=True)
    web_port = options.web_port or free_port()
    kafka = replace(settings, kafka_url=settings.kafka_url or DEFAULT_KAFKA_URL)
    app = create_app(
        broker=f"kafka://{kafka.kafka_bootstrap()}", security=kafka.kafka_security(),
        partitions=options.partitions, datadir=datadir, web_port=web_port, store=store,
    )
    key_ring = settings.key_ring()
    if key_ring is None:
        _LOGGER.warning("RPM_SIGNING_KEYS_FILE is not set: alerts go out unsigned and acknowledgements are not "
                        "checked; anyone who can reach Kafka could forge them (docs/security.md)")
    register_agents(app, pipeline, partitions=options.partitions, status=status,
                    checkpoint_interval_s=checkpoint_interval_s(), key_ring=key_ring)
    register_pages(app, pipeline, status)
    register_heartbeat(app, pipeline, status, instance=f"{socket.gethostname()}:{web_port}", ward_of=ward_of,
                       keys=key_ring)
    _LOGGER.info("worker starting: data dir %s, web port %d, %d roster patients", datadir, web_port,
                 len(status.roster))
    worker = Worker(app, sink_closer(pipeline), loglevel=options.loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


def ensure_topics(settings: Settings, partitions: int) -> None:
    """Create the pipeline's topics with ``partitions`` partitions unless they exist (as the bridge does).

    Faust does not create the topics it consumes, and a broker that auto-creates topics picks its own
    partition count; a worker started before any bridge would then fix ``rpm.readings`` at a count
    that does not match the state table's changelog. A loop of its own, not set as current: Faust
    makes its own afterwards.
    """
    import asyncio

    from rpm_core import topics

    bootstrap = replace(settings, kafka_url=settings.kafka_url or DEFAULT_KAFKA_URL).kafka_bootstrap()
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(topics.ensure_topics(bootstrap, partitions=partitions))
    finally:
        loop.close()


def health(app: Any, pipeline: Any, status: Any, now: float | None = None) -> dict[str, Any]:
    """``/healthz`` body: the booleans are the checks (all true: 200).

    ``progressing`` is false once a batch, or an InfluxDB write, has been failing for
    ``STUCK_AFTER_S`` (``failing_s`` says how long), or a defect escaped a batch (``status.defect``):
    the worker is alive but delivers nothing.
    ``problem`` is why a check fails, or, all passing, a warning: an InfluxDB limit refusing the
    points of new devices (``SinkStats.limit``), detector states not yet in the state changelog after
    a Kafka failure (``TableStore.problem``), readings processed ``BEHIND_AFTER_S`` or more after
    they arrived (``behind_s``: a backlog); detection goes on, so no 503 to restart us for.
    """
    from rpm_core.technical import WARNING_BEHIND
    from stream.protocol import BEHIND_AFTER_S, STUCK_AFTER_S

    now = time.monotonic() if now is None else now
    failing_s = status.failing_for(now, pipeline.sink.stats.failing_since)
    busy_s = status.busy_for(now)
    problem = pipeline.sink.stats.problem or (f"{status.defect}: its records are no longer processed; restart it"
                                              if status.defect else None)
    if problem is None and busy_s >= STUCK_AFTER_S:
        problem = f"a batch has been unfinished for {busy_s:.0f} s"
    elif problem is None and failing_s >= STUCK_AFTER_S:
        problem = f"a batch or an InfluxDB write has been failing for {failing_s:.0f} s"
    behind_s = status.behind_for(now)
    if problem is None:  # a warning: detection and delivery go on, something is not as it should be
        warnings = [w for w in (pipeline.sink.stats.limit, pipeline.store.problem) if w]
        if behind_s >= BEHIND_AFTER_S:
            warnings.append(f"it processes readings {behind_s:.0f} s {WARNING_BEHIND} (a backlog in Kafka): "
                            "alerts for its patients come that late")
        problem = "; ".join(warnings) or None
    return {
        "running": bool(app.started and not app.should_stop),
        "assigned": bool(status.partitions) and status.recovered,
        "progressing": failing_s < STUCK_AFTER_S and busy_s < STUCK_AFTER_S and status.defect is None,
        # a configuration fault (InfluxDB database missing, credentials refused) fails at once
        "configured": pipeline.sink.stats.problem is None,
        "problem": problem,
        "failing_s": round(failing_s, 1),
        "batch_s": round(busy_s, 1),
        "behind_s": round(behind_s, 1),
        "partitions": sorted(status.partitions),
        "phase": status.phase,
        "enrolled": pipeline.stats.enrolled,
        "records": pipeline.stats.records,
    }


def register_pages(app: Any, pipeline: Any, status: Any) -> None:
    """Serve ``/metrics`` and ``/healthz`` on the Faust web server of ``app``."""
    import orjson

    from stream.metrics import CONTENT_TYPE, render, worker_metrics

    async def metrics_page(self: Any, _request: Any) -> Any:
        body = render(worker_metrics(pipeline.stats, pipeline.sink.stats, status=status,
                                     rebalancing=bool(app.rebalancing), now=time.monotonic(), store=pipeline.store))
        return self.bytes(body.encode(), headers={"Content-Type": CONTENT_TYPE})

    async def healthz_page(self: Any, _request: Any) -> Any:
        body = health(app, pipeline, status)
        ok = all(v for v in body.values() if isinstance(v, bool))
        return self.bytes(orjson.dumps(body), content_type="application/json", status=200 if ok else 503)

    app.page("/metrics")(metrics_page)
    app.page("/healthz")(healthz_page)


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
