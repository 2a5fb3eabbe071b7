"""Running ``rpm`` commands as real child processes against a test stack."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from rpm_app.services import ServiceProcess, Stack, http_ok
from rpm_core.host import free_port
from rpm_core.mqtt_users import BRIDGE_USER

T = TypeVar("T")


def rpm_env(stack: Stack, *, mqtt_user: str | None = BRIDGE_USER, **extra: str) -> dict[str, str]:
    """Environment for an ``rpm`` child process pointed at ``stack`` (and nothing of the developer's)."""
    s = stack.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    env.update({
        **s.kafka_env(),  # the URL, and the CA and client certificate over TLS
        "RPM_SIGNING_KEYS_FILE": s.signing_keys_file or "",
        **stack.influx_env(),  # the writer, its password in a file
        "RPM_RULES": s.rules_path,
        "PYTHONUNBUFFERED": "1",
    })
    if mqtt_user:
        env["RPM_MQTT_URL"] = stack.mqtt_url(mqtt_user)
    env.update(extra)
    return env


def rpm_argv(*args: str) -> list[str]:
    """argv that runs ``rpm`` with this interpreter."""
    return [sys.executable, "-m", "rpm_app.cli", *args]


def spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> ServiceProcess:
    """Start ``rpm <args>`` in the background, logging to ``log_dir/<name>.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(rpm_argv(*args), env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return ServiceProcess(name=name, proc=proc, workdir=log_dir, log_path=log_path, host="", port=0)


@contextmanager
def running(*procs: ServiceProcess) -> Iterator[tuple[ServiceProcess, ...]]:
    """Stop the given processes on exit, whatever happens."""
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()


def eventually(probe: Callable[[], T], done: Callable[[T], bool], *, timeout: float, what: str,
               watch: tuple[ServiceProcess, ...] = (), interval: float = 0.5) -> T:
    """Poll ``probe`` until ``done(value)``; fail naming ``what`` (with logs of ``watch``) otherwise.

    The timeout is a deadline for a condition, never an assertion about speed.
    """
    deadline = time.monotonic() + timeout
    value = probe()
    while not done(value):
        for p in watch:
            if not p.alive():
                raise AssertionError(f"{p.name} died (code {p.proc.returncode}) while waiting for {what}:\n"
                                     f"{p.log_tail(40)}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name}\n{p.log_tail(30)}" for p in watch)
            raise AssertionError(f"timed out waiting for {what}; last value: {value!r}\n{logs}")
        time.sleep(interval)
        value = probe()
    return value


def spawn_bridge(stack: Stack, log_dir: Path, *, name: str = "bridge", client_id: str | None = None,
                 **env_extra: str) -> ServiceProcess:
    """Start ``rpm bridge`` and return once it is connected and subscribed (its /healthz is 200).

    Mosquitto drops messages published before any subscription exists, so tests must not publish
    before this returns.
    """
    port = free_port()
    args = ["bridge", "--health-port", str(port), *(["--client-id", client_id] if client_id else [])]
    proc = spawn(name, args, rpm_env(stack, **env_extra), log_dir)
    eventually(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), bool, timeout=60,
               what=f"{name} healthy", watch=(proc,), interval=0.1)
    proc.port = port
    return proc


def bridge_client_id(bridge: ServiceProcess) -> str:
    """The MQTT client id a running bridge took (its persistent session), from its /healthz."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{bridge.port}/healthz", timeout=10) as resp:
        return str(json.loads(resp.read())["client_id"])
