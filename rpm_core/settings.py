"""Configuration, read once from the environment (and CLI flags) into one frozen object.

| variable | meaning | default |
| --- | --- | --- |
| ``RPM_MQTT_URL`` | ``mqtt://user:pass@host:port`` or ``mqtts://…`` (TLS) | started by ``rpm demo`` |
| ``RPM_MQTT_CA`` | CA bundle for ``mqtts://`` | system store |
| ``RPM_MQTT_PASSWORD_FILE`` | file holding the MQTT password (mode 0600); wins over a password in the URL | unset |
| ``RPM_KAFKA_URL`` | ``kafka://host:port[,…]``, ``kafka+ssl://…`` (TLS), ``kafka+sasl_ssl://…`` | ``rpm demo`` |
| ``RPM_KAFKA_CA`` / ``_CERT`` / ``_KEY`` | CA bundle; client certificate and key (mTLS) | system store / unset |
| ``RPM_KAFKA_USER`` / ``_PASSWORD_FILE`` | SASL principal; its password (file, mode 0600) | unset |
| ``RPM_INFLUX_URL`` | ``http://host:8086`` (a ``user:pass@`` in it works; the settings below win) | ``rpm demo`` |
| ``RPM_INFLUX_DB`` | database (1.x) / bucket (2.x+) | ``rpm`` |
| ``RPM_INFLUX_USER`` | InfluxDB 1.x user (HTTP Basic authentication) | unset |
| ``RPM_INFLUX_PASSWORD_FILE`` | file holding that user's password (mode 0600) | unset |
| ``RPM_INFLUX_TOKEN_FILE`` | InfluxDB 2.x+ API token in a file (mode 0600); selects the v2 API | unset |
| ``RPM_INFLUX_TOKEN`` | the same token as a value (``RPM_INFLUX_TOKEN_FILE`` wins) | unset |
| ``RPM_INFLUX_ORG`` | InfluxDB 2.x+ organisation | unset |
| ``RPM_RULES`` | alert rules file | ``alert_rules.yaml`` |
"""

from __future__ import annotations

import base64
import os
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from rpm_core.errors import ConfigError

if TYPE_CHECKING:
    from rpm_core.kafka_security import KafkaSecurity
    from rpm_core.signing import KeyRing

DEFAULT_INFLUX_DB: Final = "rpm"
DEFAULT_RULES_PATH: Final = "alert_rules.yaml"
# Permission bits that let anyone but the owner read, write or run a file: a credential file must have none.
_NOT_PRIVATE_MODE: Final = 0o077
# A password file holds one line; anything much larger is the wrong file.
MAX_SECRET_FILE_BYTES: Final = 4096


class Secret:
    """A string that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """The secret itself; call only where it is handed to a client."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _who_else(mode: int) -> str:
    who = [name for bits, name in ((0o007, "every user"), (0o070, "its group")) if mode & bits]
    return " and ".join(who)


def check_private_file(path: str | os.PathLike[str], *, what: str) -> Path:
    """``path`` if it is a regular file that only its owner may access; else :class:`ConfigError`.

    The error names the file and the fix (``chmod 600``). Credentials in a file that other users
    can read are as good as published, so ``rpm`` refuses to use them rather than warn.
    """
    file = Path(path)
    try:
        st = file.stat()
    except FileNotFoundError:
        raise ConfigError(f"{what} {file} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what} {file} cannot be read: {exc.strerror}") from exc
    return _check_private_stat(file, st, what=what)


def _check_private_stat(file: Path, st: os.stat_result, *, what: str) -> Path:
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {file} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & _NOT_PRIVATE_MODE:
        raise ConfigError(
            f"{what} {file} is accessible to {_who_else(mode)} (mode {mode:04o}); credentials must be "
            f"private to their owner. Fix: chmod 600 {file}"
        )
    return file


def read_secret_file(path: str | os.PathLike[str], *, what: str) -> Secret:
    """The first line of a private credential file (see :func:`check_private_file`), as a :class:`Secret`."""
    file = Path(path)
    try:
        fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"{what} {file} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what} {file} cannot be read: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        _check_private_stat(file, os.fstat(handle.fileno()), what=what)  # the file we read, not a swapped one
        data = handle.read(MAX_SECRET_FILE_BYTES + 1)
    try:
        lines = data.decode("utf-8").splitlines() if len(data) <= MAX_SECRET_FILE_BYTES else []
    except UnicodeDecodeError:
        lines = []
    if not lines or not lines[0].strip():
        raise ConfigError(f"{what} {file} must hold the secret on its first line (UTF-8, under 4 KiB)")
    return Secret(lines[0].strip())


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """Where and how to reach the MQTT broker."""

    host: str
    port: int
    username: str | None = None
    password: Secret = field(default_factory=lambda: Secret(""))
    tls: bool = False
    ca_file: str | None = None

    @classmethod
    def from_url(cls, url: str, *, ca_file: str | None = None) -> MqttSettings:
        """Parse ``mqtt://user:pass@host:port`` (``mqtts://`` for TLS)."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ConfigError(f"RPM_MQTT_URL must start with mqtt:// or mqtts://, got {parts.scheme!r}://")
        if not parts.hostname:
            raise ConfigError("RPM_MQTT_URL has no host; expected mqtt://user:pass@host:port")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ConfigError(f"RPM_MQTT_URL has an invalid port: {exc}") from exc
        return cls(
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=Secret(unquote(parts.password or "")),
            tls=tls,
            ca_file=ca_file,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context for ``mqtts://`` (certificate and host name checked), else None."""
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=self.ca_file)

    def with_password_file(self, path: str | os.PathLike[str]) -> MqttSettings:
        """The same broker and user with the password read from a private file (``RPM_MQTT_PASSWORD_FILE``)."""
        if not self.username:
            raise ConfigError(
                "RPM_MQTT_PASSWORD_FILE is set but RPM_MQTT_URL names no user; expected mqtts://USER@host:port"
            )
        return replace(self, password=read_secret_file(path, what="RPM_MQTT_PASSWORD_FILE"))

    def with_user(self, username: str, password: str) -> MqttSettings:
        """The same broker under other credentials."""
        return replace(self, username=username, password=Secret(password))

    def client_id(self, name: str) -> str:
        """The MQTT client id ``name`` bound to this user: ``<user>:<name>`` (see :func:`bound_client_id`)."""
        return bound_client_id(self.username, name)

    def url(self, *, redact: bool = True) -> str:
        """The URL, with the password hidden unless ``redact`` is False."""
        scheme = "mqtts" if self.tls else "mqtt"
        auth = ""
        if self.username:
            pw = "***" if redact else self.password.get()
            auth = f"{self.username}:{pw}@" if self.password.get() else f"{self.username}@"
        return f"{scheme}://{auth}{self.host}:{self.port}"


def bound_client_id(username: str | None, name: str) -> str:
    """``name`` as a client id the broker accepts for ``username``: the user name itself, or the
    user name, ``:`` and ``name``. Our Mosquitto refuses any other id (``rpm_clientid`` plugin), so no
    user can take over another's session; ``name`` already bound is returned as it is."""
    if not username or name == username or name.startswith(f"{username}:"):
        return name
    return f"{username}:{name}"


def url_with_password_file(url: str, path: str | os.PathLike[str]) -> str:
    """``url`` with its password replaced by the one in the private file ``path``.

    For entry points that hand a URL on (``rpm edge run``, the simulator's processes).
    """
    mqtt = MqttSettings.from_url(url).with_password_file(path)
    parts = urlsplit(url)
    user = quote(mqtt.username or "", safe="")
    host = f"[{mqtt.host}]" if ":" in mqtt.host else mqtt.host
    netloc = f"{user}:{quote(mqtt.password.get(), safe='')}@{host}:{mqtt.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True, slots=True)
class InfluxAuth:
    """How a client proves who it is to InfluxDB: a 1.x user and password (HTTP Basic), an API
    token (2.x+), or nothing. ``describe()`` says which, without the secret."""

    username: str | None = None
    password: Secret = field(default_factory=lambda: Secret(""))
    token: Secret = field(default_factory=lambda: Secret(""))

    def authorization(self) -> str:
        """The ``Authorization`` header value, or ``""`` when there are no credentials."""
        if self.token.get():
            return f"Token {self.token.get()}"
        if self.username:
            pair = f"{self.username}:{self.password.get()}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        return ""

    def headers(self) -> dict[str, str]:
        """``{"Authorization": …}``, or ``{}`` without credentials."""
        value = self.authorization()
        return {"Authorization": value} if value else {}

    def describe(self) -> str:
        """Who this is, for messages: ``user 'rpm_writer'``, ``an API token`` or ``no credentials``."""
        if self.token.get():
            return "an API token"
        return f"user {self.username!r}" if self.username else "no credentials"


def split_influx_url(url: str) -> tuple[str, InfluxAuth]:
    """``http://user:pass@host:8086/`` → (``http://host:8086``, the user and password)."""
    parts = urlsplit(url)
    if parts.username is None:
        return url.rstrip("/"), InfluxAuth()
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)).rstrip("/")
    return bare, InfluxAuth(username=unquote(parts.username), password=Secret(unquote(parts.password or "")))


def influx_endpoint(url: str | None, auth: InfluxAuth | None = None) -> tuple[str | None, InfluxAuth]:
    """The bare URL (None without one) and the credentials to use: ``auth`` when it holds any, else a
    user and password in ``url``, else none. Every InfluxDB client of rpm goes through here."""
    if not url:
        return None, auth or InfluxAuth()
    bare, from_url = split_influx_url(url)
    return bare, auth if auth is not None and auth.authorization() else from_url


# Codecs aiokafka supports, and the package each needs beyond the standard library.
KAFKA_CODECS = {"none": None, "gzip": None, "lz4": "lz4", "zstd": "zstandard", "snappy": "cramjam"}


def check_kafka_compression(codec: str | None) -> None:
    """``RPM_KAFKA_COMPRESSION``: a codec aiokafka knows, whose library is installed."""
    import importlib.util

    if codec in (None, ""):
        return
    if codec not in KAFKA_CODECS:
        raise ConfigError(f"RPM_KAFKA_COMPRESSION={codec!r}: expected one of {', '.join(KAFKA_CODECS)}")
    package = KAFKA_CODECS[codec]
    if package is not None and importlib.util.find_spec(package) is None:
        raise ConfigError(f"RPM_KAFKA_COMPRESSION={codec!r} needs the Python package {package!r}: "
                          f"pip install {package}, or use gzip")


def kafka_bootstrap(url: str) -> str:
    """``kafka://h1:9092,h2:9092`` → ``h1:9092,h2:9092`` (the form aiokafka takes); also for
    ``kafka+ssl://`` and ``kafka+sasl_ssl://`` (whose TLS settings only ``Settings.kafka_bootstrap`` adds)."""
    from rpm_core.kafka_security import SCHEMES

    # not urlsplit: "_" is not allowed in a URL scheme, so it would not see kafka+sasl_ssl:// as one
    scheme, _, rest = url.partition("://")
    servers = rest.split("/", 1)[0]
    if scheme not in SCHEMES or not servers:
        raise ConfigError(f"RPM_KAFKA_URL must look like kafka://host:port (or kafka+ssl://, kafka+sasl_ssl://), "
                          f"got {url!r}")
    return servers


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting the services need; built once at the entry point."""

    # URLs may carry credentials: kept out of repr() so a logged Settings never leaks them.
    mqtt_url: str | None = field(default=None, repr=False)
    mqtt_ca: str | None = None
    mqtt_password_file: str | None = None
    kafka_url: str | None = None
    kafka_compression: str | None = None  # the bridge's producer: None, "gzip", "lz4", "zstd", "snappy"
    kafka_ca: str | None = None  # RPM_KAFKA_CA .. RPM_KAFKA_SASL_MECHANISM: see rpm_core.kafka_security
    kafka_cert: str | None = None
    kafka_key: str | None = None
    kafka_user: str | None = None
    kafka_password_file: str | None = None
    kafka_sasl_mechanism: str | None = None
    influx_url: str | None = field(default=None, repr=False)
    influx_db: str = DEFAULT_INFLUX_DB
    influx_token: Secret = field(default_factory=lambda: Secret(""))
    influx_org: str | None = None
    influx_user: str | None = None  # RPM_INFLUX_USER (1.x); its password in influx_password_file
    influx_password_file: str | None = None
    influx_token_file: str | None = None  # RPM_INFLUX_TOKEN_FILE (2.x+); wins over influx_token
    rules_path: str = DEFAULT_RULES_PATH
    signing_keys_file: str | None = None  # RPM_SIGNING_KEYS_FILE: alerts and acks signed (rpm_core.signing)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the ``RPM_*`` variables."""
        env = os.environ if env is None else env
        settings = cls(
            mqtt_url=env.get("RPM_MQTT_URL") or None,
            mqtt_ca=env.get("RPM_MQTT_CA") or None,
            mqtt_password_file=env.get("RPM_MQTT_PASSWORD_FILE") or None,
            kafka_url=env.get("RPM_KAFKA_URL") or None,
            kafka_compression=(env.get("RPM_KAFKA_COMPRESSION") or "none").strip().lower(),
            kafka_ca=env.get("RPM_KAFKA_CA") or None,
            kafka_cert=env.get("RPM_KAFKA_CERT") or None,
            kafka_key=env.get("RPM_KAFKA_KEY") or None,
            kafka_user=env.get("RPM_KAFKA_USER") or None,
            kafka_password_file=env.get("RPM_KAFKA_PASSWORD_FILE") or None,
            kafka_sasl_mechanism=env.get("RPM_KAFKA_SASL_MECHANISM") or None,
            influx_url=env.get("RPM_INFLUX_URL") or None,
            influx_db=env.get("RPM_INFLUX_DB") or DEFAULT_INFLUX_DB,
            influx_token=Secret(env.get("RPM_INFLUX_TOKEN", "")),
            influx_org=env.get("RPM_INFLUX_ORG") or None,
            influx_user=env.get("RPM_INFLUX_USER") or None,
            influx_password_file=env.get("RPM_INFLUX_PASSWORD_FILE") or None,
            influx_token_file=env.get("RPM_INFLUX_TOKEN_FILE") or None,
            rules_path=env.get("RPM_RULES") or DEFAULT_RULES_PATH,
            signing_keys_file=env.get("RPM_SIGNING_KEYS_FILE") or None,
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Fail early, naming the variable, on values that cannot work."""
        if self.mqtt_url:
            MqttSettings.from_url(self.mqtt_url)
        if self.mqtt_password_file:
            check_private_file(self.mqtt_password_file, what="RPM_MQTT_PASSWORD_FILE")
        if self.kafka_url:
            self.kafka_security()
        check_kafka_compression(self.kafka_compression)
        if self.influx_url and urlsplit(self.influx_url).scheme not in ("http", "https"):
            bare = split_influx_url(self.influx_url)[0]
            raise ConfigError(f"RPM_INFLUX_URL must be http:// or https://, got {bare!r}")
        self.influx_auth()
        self.key_ring()

    def key_ring(self) -> KeyRing | None:
        """The signing keys (``RPM_SIGNING_KEYS_FILE``), or None: alerts and acks then go unsigned and
        unchecked. A file that is not private or not a valid keys file is a :class:`ConfigError`."""
        from rpm_core.signing import KeyFileError, load_key_ring

        try:
            return load_key_ring(self.signing_keys_file)
        except KeyFileError as exc:
            raise ConfigError(f"RPM_SIGNING_KEYS_FILE: {exc}") from exc

    def mqtt(self) -> MqttSettings:
        """The MQTT broker settings; requires ``mqtt_url``."""
        if not self.mqtt_url:
            raise ConfigError("RPM_MQTT_URL is not set")
        mqtt = MqttSettings.from_url(self.mqtt_url, ca_file=self.mqtt_ca)
        return mqtt.with_password_file(self.mqtt_password_file) if self.mqtt_password_file else mqtt

    def kafka_compression_type(self) -> str | None:
        """aiokafka's ``compression_type`` (``None``: uncompressed)."""
        return None if self.kafka_compression in (None, "", "none") else self.kafka_compression

    def kafka_bootstrap(self) -> str:
        """aiokafka bootstrap servers, carrying the TLS/SASL settings (a
        :class:`~rpm_core.kafka_security.KafkaBootstrap`); requires ``kafka_url``."""
        from rpm_core.kafka_security import KafkaBootstrap

        if not self.kafka_url:
            raise ConfigError("RPM_KAFKA_URL is not set")
        return KafkaBootstrap(kafka_bootstrap(self.kafka_url), self.kafka_security())

    def kafka_env(self) -> dict[str, str]:
        """``RPM_KAFKA_URL`` and the ``RPM_KAFKA_*`` TLS/SASL settings, for a child process (file paths only)."""
        names = {"RPM_KAFKA_URL": self.kafka_url, "RPM_KAFKA_CA": self.kafka_ca, "RPM_KAFKA_CERT": self.kafka_cert,
                 "RPM_KAFKA_KEY": self.kafka_key, "RPM_KAFKA_USER": self.kafka_user,
                 "RPM_KAFKA_PASSWORD_FILE": self.kafka_password_file,
                 "RPM_KAFKA_SASL_MECHANISM": self.kafka_sasl_mechanism}
        return {name: value for name, value in names.items() if value}

    def kafka_security(self) -> KafkaSecurity:
        """How Kafka clients connect (``RPM_KAFKA_URL``'s scheme and the ``RPM_KAFKA_*`` files), checked."""
        from rpm_core.kafka_security import DEFAULT_SASL_MECHANISM, SASL_MECHANISMS, SCHEMES, KafkaSecurity

        protocol = SCHEMES.get((self.kafka_url or "").partition("://")[0], "PLAINTEXT")
        kafka_bootstrap(self.kafka_url or "kafka://localhost:9092")
        tls_files = {"RPM_KAFKA_CA": self.kafka_ca, "RPM_KAFKA_CERT": self.kafka_cert, "RPM_KAFKA_KEY": self.kafka_key}
        if protocol == "PLAINTEXT" and any(tls_files.values()):
            raise ConfigError("RPM_KAFKA_CA/_CERT/_KEY are set but RPM_KAFKA_URL is kafka:// (plain text): use "
                              "kafka+ssl:// or kafka+sasl_ssl://")
        for name, path in tls_files.items():
            if path and not Path(path).is_file():
                raise ConfigError(f"{name} {path} does not exist")
        if bool(self.kafka_cert) != bool(self.kafka_key):
            raise ConfigError("RPM_KAFKA_CERT and RPM_KAFKA_KEY go together (a client certificate and its key)")
        if self.kafka_key:
            check_private_file(self.kafka_key, what="RPM_KAFKA_KEY")
        mechanism = (self.kafka_sasl_mechanism or DEFAULT_SASL_MECHANISM).upper()
        if mechanism not in SASL_MECHANISMS:
            raise ConfigError(f"RPM_KAFKA_SASL_MECHANISM={mechanism!r}: expected one of {', '.join(SASL_MECHANISMS)}")
        password = Secret("")
        if protocol == "SASL_SSL":
            if not (self.kafka_user and self.kafka_password_file):
                raise ConfigError("kafka+sasl_ssl:// needs RPM_KAFKA_USER and RPM_KAFKA_PASSWORD_FILE (mode 0600)")
            password = read_secret_file(self.kafka_password_file, what="RPM_KAFKA_PASSWORD_FILE")
        elif self.kafka_user or self.kafka_password_file:
            raise ConfigError("RPM_KAFKA_USER/RPM_KAFKA_PASSWORD_FILE are set but RPM_KAFKA_URL is not "
                              "kafka+sasl_ssl://: SASL is used over TLS only, never sends a password in the clear")
        return KafkaSecurity(protocol=protocol, ca_file=self.kafka_ca, cert_file=self.kafka_cert,
                             key_file=self.kafka_key, sasl_mechanism=mechanism, username=self.kafka_user,
                             password=password)

    def require_influx(self) -> str:
        """The InfluxDB URL; requires ``influx_url``."""
        if not self.influx_url:
            raise ConfigError("RPM_INFLUX_URL is not set")
        return split_influx_url(self.influx_url)[0]

    def influx_auth(self) -> InfluxAuth:
        """The InfluxDB credentials: ``RPM_INFLUX_TOKEN_FILE`` / ``RPM_INFLUX_TOKEN`` (2.x+), else
        ``RPM_INFLUX_USER`` with ``RPM_INFLUX_PASSWORD_FILE``, else a user in ``RPM_INFLUX_URL``."""
        from_url = split_influx_url(self.influx_url)[1] if self.influx_url else InfluxAuth()
        token = (read_secret_file(self.influx_token_file, what="RPM_INFLUX_TOKEN_FILE") if self.influx_token_file
                 else self.influx_token)
        if token.get():
            if self.influx_user or self.influx_password_file:
                raise ConfigError("set either RPM_INFLUX_TOKEN(_FILE) (InfluxDB 2.x+) or RPM_INFLUX_USER and "
                                  "RPM_INFLUX_PASSWORD_FILE (1.x), not both")
            return InfluxAuth(token=token)
        if self.influx_password_file:
            user = self.influx_user or from_url.username
            if not user:
                raise ConfigError("RPM_INFLUX_PASSWORD_FILE is set but no user: set RPM_INFLUX_USER")
            return InfluxAuth(username=user,
                              password=read_secret_file(self.influx_password_file, what="RPM_INFLUX_PASSWORD_FILE"))
        if self.influx_user and self.influx_user != from_url.username:
            raise ConfigError("RPM_INFLUX_USER is set but its password is not: set RPM_INFLUX_PASSWORD_FILE "
                              "(a file of mode 0600 holding it)")
        return from_url
