"""Start and stop the "naive" peer pipeline (:mod:`benchmarks.peers.naive`) for the end-to-end benchmark.

``start`` creates the Kafka topic and the InfluxDB database, starts the bridge and the Faust worker
as subprocesses (logs in ``workdir``) and returns once both are ready: the bridge's MQTT
subscription is acknowledged (it writes ``bridge.ready`` after SUBACK) and the worker has joined
its group and been assigned partitions of the topic (``worker.ready``, from Faust's
``on_partitions_assigned`` signal).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from rpm_app.services import influx_query, wait_until
from rpm_core.errors import ServiceError
from rpm_core.host import free_port
from rpm_core.settings import kafka_bootstrap as parse_kafka_url

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S: Final = 90.0
STOP_TIMEOUT_S: Final = 15.0


@dataclass
class _Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class NaivePeer:
    """The naive peer's two processes: the paho → Kafka bridge and the Faust worker."""

    name: str = "naive-faust"
    procs: list[_Proc] = field(default_factory=list)
    workdir: Path | None = None

    def alive(self) -> bool:
        """Whether both processes still run."""
        return bool(self.procs) and all(p.alive() for p in self.procs)

    def stop(self) -> None:
        """SIGTERM both processes (the worker writes its last buffer), then kill what is left; idempotent."""
        for p in self.procs:
            if p.alive():
                with contextlib.suppress(ProcessLookupError):
                    p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for p in self.procs:
            try:
                p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.proc.pid, signal.SIGKILL)  # its own session: the whole group
                p.proc.wait(timeout=STOP_TIMEOUT_S)


def _spawn(name: str, argv: list[str], workdir: Path, env: dict[str, str]) -> _Proc:
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env=env,
            start_new_session=True,
        )
    return _Proc(name=name, proc=proc, log_path=log_path)


async def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in set(await admin.list_topics()):
            await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


def start(*, mqtt_url: str, kafka_bootstrap: str, influx_url: str, database: str, workdir: Path,
          topic: str = "naive.readings", partitions: int = 4) -> NaivePeer:
    """Start the naive peer and return once the bridge is subscribed and the worker owns partitions.

    ``kafka_bootstrap`` is ``host:port`` (``kafka://host:port`` accepted).
    """
    bootstrap = parse_kafka_url(kafka_bootstrap) if kafka_bootstrap.startswith("kafka://") else kafka_bootstrap
    influx_url = influx_url.rstrip("/")
    workdir.mkdir(parents=True, exist_ok=True)
    asyncio.run(_create_topic(bootstrap, topic, partitions))
    influx_query(influx_url, f'CREATE DATABASE "{database}"')

    bridge_ready, worker_ready = workdir / "bridge.ready", workdir / "worker.ready"
    for f in (bridge_ready, worker_ready):
        f.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    worker_env = {
        **env,
        "NAIVE_KAFKA": f"kafka://{bootstrap}", "NAIVE_TOPIC": topic, "NAIVE_PARTITIONS": str(partitions),
        "NAIVE_INFLUX_URL": influx_url, "NAIVE_INFLUX_DB": database, "NAIVE_WEB_PORT": str(free_port()),
        "NAIVE_DATADIR": str(workdir / "faust-data"), "NAIVE_READY_FILE": str(worker_ready),
    }
    peer = NaivePeer(workdir=workdir)
    try:
        peer.procs.append(_spawn(
            "naive-worker", [sys.executable, "-m", "benchmarks.peers.naive.app", "worker", "-l", "warn"],
            workdir, worker_env,
        ))
        peer.procs.append(_spawn(
            "naive-bridge",
            [sys.executable, "-m", "benchmarks.peers.naive.bridge", "--kafka", bootstrap,
             "--topic", topic, "--ready-file", str(bridge_ready), "--client-id", f"naive-bridge-{topic}"],
            workdir, {**env, "NAIVE_MQTT_URL": mqtt_url},  # in the environment: not on ps's command line
        ))

        def ready() -> bool:
            for p in peer.procs:
                if not p.alive():
                    raise ServiceError(f"{p.name} exited with code {p.proc.returncode}:\n{p.log_tail()}")
            return bridge_ready.exists() and worker_ready.exists()

        wait_until(ready, timeout=READY_TIMEOUT_S, what="naive peer (bridge subscription, worker assignment)",
                   interval=0.1)
    except BaseException:
        peer.stop()
        raise
    return peer
