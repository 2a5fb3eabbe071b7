"""MQTT users of rpm: roles and their ACL grants, and the store behind ``rpm mqtt-auth``.

A store is one directory (``--dir D`` or ``RPM_MQTT_AUTH_DIR``, mode 0700)::

    D/mqtt-auth.json        users, their roles and patients, when each was created, last re-keyed and
                            revoked (no secrets), 0600
    D/passwd                Mosquitto password file, hashed by ``mosquitto_passwd -b``, 0600
    D/acl                   Mosquitto ACL file, generated from the state, 0600
    D/credentials/<user>    passwords of the service users made by ``init`` (RPM_MQTT_PASSWORD_FILE), 0600

Roles: ``bridge`` reads readings and status; ``alerts`` writes alerts; ``nurse`` reads alerts;
``admin`` everything; ``simulator`` (opt-in) writes any patient's readings; ``notifier`` writes
patients' ``cmd`` and reads their ``ack``; ``watchdog`` reads agents' status; ``agent`` writes only
``rpm/v1/p/<patient>/readings``, ``…/status`` and ``…/ack`` and reads only ``…/cmd``.
Passwords are never stored here in clear: they are returned once (the caller prints them or writes
a 0600 file), and only their hashes stay in ``passwd``. Lives in the core because the edge's
``rpm edge pair --provision-credentials`` and the application's ``rpm mqtt-auth`` both use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import fcntl
import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from rpm_core.commands import ack_topic
from rpm_core.errors import ConfigError, ServiceError
from rpm_core.files import write_atomic
from rpm_core.host import require_binary
from rpm_core.settings import Secret, check_private_file
from rpm_core.wire import (
    ALERTS_TOPIC_ROOT,
    READINGS_TOPIC_FILTER,
    command_topic,
    is_valid_id,
    readings_topic,
    status_topic,
)

# MQTT users of the pipeline itself; edge agents get their own per-patient users (rpm mqtt-auth).
BRIDGE_USER: Final = "rpm-bridge"
SIMULATOR_USER: Final = "rpm-simulator"
ALERTS_USER: Final = "rpm-alerts"
NURSE_USER: Final = "rpm-nurse"
ADMIN_USER: Final = "rpm-admin"
NOTIFIER_USER: Final = "rpm-notifier"  # rpm notifier: patients' messages out, their acks in
WATCHDOG_USER: Final = "rpm-watchdog"  # rpm watchdog: reads agents' status (device alarms)


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


# "{patient}" is filled in for agents. Anything not granted here is denied (Mosquitto's ACL default).
_ROLE_GRANTS: Final[dict[Role, tuple[tuple[str, str], ...]]] = {
    Role.BRIDGE: (("read", READINGS_TOPIC_FILTER), ("read", status_topic("+"))),
    Role.SIMULATOR: (("write", READINGS_TOPIC_FILTER), ("write", status_topic("+"))),
    Role.ALERTS: (("write", f"{ALERTS_TOPIC_ROOT}/#"),),
    Role.NURSE: (("read", f"{ALERTS_TOPIC_ROOT}/#"),),
    Role.ADMIN: (("readwrite", "#"),),
    Role.NOTIFIER: (("write", command_topic("+")), ("read", ack_topic("+"))),
    Role.WATCHDOG: (("read", status_topic("+")),),
    Role.AGENT: (
        ("write", readings_topic("{patient}")), ("write", status_topic("{patient}")),
        ("write", ack_topic("{patient}")), ("read", command_topic("{patient}")),
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


STATE_FILE: Final = "mqtt-auth.json"
PASSWD_FILE: Final = "passwd"  # noqa: S105 (a file name)
ACL_FILE: Final = "acl"
CREDENTIALS_DIR: Final = "credentials"
STATE_VERSION: Final = 1
AGENT_PREFIX: Final = "agent-"
# 24 random bytes (192 bits), URL-safe so the password can sit in an mqtt:// URL unquoted.
PASSWORD_BYTES: Final = 24
SERVICE_USERS: Final = {BRIDGE_USER: Role.BRIDGE, ALERTS_USER: Role.ALERTS, NURSE_USER: Role.NURSE,
                        ADMIN_USER: Role.ADMIN, WATCHDOG_USER: Role.WATCHDOG}
RELOAD_HINT: Final = ("Mosquitto re-reads the password and ACL files on SIGHUP: kill -HUP <mosquitto pid> "
                      "(or systemctl reload mosquitto), or pass --reload-pid PID")


def _now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass(frozen=True, slots=True)
class MqttUser:
    """One MQTT user: its role and, for an edge agent, its patient."""

    name: str
    role: Role
    patient: str | None = None
    created: str = ""
    changed: str = ""  # last password rotation ("" = never); absent from state files of before rotations were dated

    def to_json(self) -> dict[str, Any]:
        """The state-file form."""
        doc = {"role": self.role.value, "patient": self.patient, "created": self.created}
        return doc | {"changed": self.changed} if self.changed else doc

    @classmethod
    def from_json(cls, name: str, doc: object) -> MqttUser:
        """Parse the state-file form; :class:`ConfigError` on anything unexpected."""
        if not isinstance(doc, dict) or set(doc) - {"role", "patient", "created", "changed"}:
            raise ConfigError(f"user {name!r}: expected an object with role, patient, created (and changed)")
        try:
            role = Role(str(doc.get("role")))
        except ValueError:
            raise ConfigError(f"user {name!r}: unknown role {doc.get('role')!r}") from None
        user = cls(name=check_mqtt_user(name), role=role, patient=doc.get("patient"),
                   created=str(doc.get("created") or ""), changed=str(doc.get("changed") or ""))
        build_acl([(user.name, user.role, user.patient)])  # validates the role/patient combination
        return user


@dataclass(frozen=True, slots=True)
class AuthState:
    """Every user the broker knows, the users revoked (name → when) and what they were (``retired``)."""

    users: tuple[MqttUser, ...] = ()
    revoked: dict[str, str] = field(default_factory=dict)
    retired: dict[str, MqttUser] = field(default_factory=dict)  # revoked users' role, creation, last change

    def find(self, name: str) -> MqttUser | None:
        """The active user called ``name``."""
        return next((u for u in self.users if u.name == name), None)

    def with_user(self, user: MqttUser) -> AuthState:
        """``user`` added (or replaced) and no longer revoked."""
        users = (*(u for u in self.users if u.name != user.name), user)
        return AuthState(users, {k: v for k, v in self.revoked.items() if k != user.name},
                         {k: v for k, v in self.retired.items() if k != user.name})

    def without(self, name: str, when: str) -> AuthState:
        """``name`` removed and recorded as revoked at ``when`` (what it was kept in ``retired``)."""
        gone = self.find(name)
        retired = {**self.retired, name: gone} if gone is not None else dict(self.retired)
        return AuthState(tuple(u for u in self.users if u.name != name), {**self.revoked, name: when}, retired)

    def acl_text(self) -> str:
        """The Mosquitto ACL: service users first, then agents by name."""
        ordered = sorted(self.users, key=lambda u: (u.role is Role.AGENT, u.name))
        return build_acl((u.name, u.role, u.patient) for u in ordered)

    def to_json(self) -> dict[str, Any]:
        """The state file's document."""
        doc = {"version": STATE_VERSION, "users": {u.name: u.to_json() for u in self.users},
               "revoked": dict(sorted(self.revoked.items()))}
        if self.retired:
            doc["retired"] = {n: u.to_json() for n, u in sorted(self.retired.items())}
        return doc

    @classmethod
    def from_json(cls, doc: object) -> AuthState:
        """Parse the state file's document."""
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            raise ConfigError(f"unsupported state document (expected version {STATE_VERSION})")
        users, revoked, retired = doc.get("users"), doc.get("revoked", {}), doc.get("retired", {})
        if not isinstance(users, dict) or not isinstance(revoked, dict) or not isinstance(retired, dict):
            raise ConfigError("'users', 'revoked' and 'retired' must be objects")
        parsed = tuple(MqttUser.from_json(n, d) for n, d in users.items())
        return cls(parsed, {str(k): str(v) for k, v in revoked.items()},
                   {str(n): MqttUser.from_json(n, d) for n, d in retired.items()})


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user and its new password (shown once)."""

    user: str
    password: Secret


def generate_password() -> Secret:
    """A new random password."""
    return Secret(secrets.token_urlsafe(PASSWORD_BYTES))


def write_private_file(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``, mode 0600 from the first byte."""
    write_atomic(path, text, mode=0o600)


def write_credential_file(path: Path, creds: Credentials) -> None:
    """Write a password file for ``RPM_MQTT_PASSWORD_FILE``: the password on its first line, mode 0600."""
    write_private_file(path, creds.password.get() + "\n")


class AuthDir:
    """The directory of one broker's users: state, password file, ACL file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def state_path(self) -> Path:
        """The state file (users, roles, revoked)."""
        return self.path / STATE_FILE

    @property
    def passwd_path(self) -> Path:
        """Mosquitto's ``password_file``."""
        return self.path / PASSWD_FILE

    @property
    def acl_path(self) -> Path:
        """Mosquitto's ``acl_file``."""
        return self.path / ACL_FILE

    def credential_path(self, user: str) -> Path:
        """Where ``init`` leaves a service user's password."""
        return self.path / CREDENTIALS_DIR / user

    def load(self) -> AuthState:
        """The state; refuses files that other users may read."""
        if not self.state_path.exists():
            raise ConfigError(f"{self.path} holds no {STATE_FILE}; create it: rpm mqtt-auth init --dir {self.path}")
        check_private_file(self.state_path, what="mqtt-auth state file")
        check_private_file(self.passwd_path, what="Mosquitto password file")
        try:
            doc = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.state_path}: cannot read it: {exc}") from exc
        try:
            return AuthState.from_json(doc)
        except ConfigError as exc:
            raise ConfigError(f"{self.state_path}: {exc}") from exc

    def save(self, state: AuthState) -> None:
        """Write the state and regenerate the ACL (the password file is changed user by user)."""
        write_private_file(self.state_path, json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n")
        write_private_file(self.acl_path, state.acl_text())

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise writers (two operators, or a script and an operator)."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def set_password(self, creds: Credentials) -> None:
        """Add or update a user in the password file (hashed by ``mosquitto_passwd``)."""
        self._passwd("-b", str(self.passwd_path), creds.user, creds.password.get())

    def delete_user(self, user: str) -> None:
        """Remove a user from the password file."""
        self._passwd("-D", str(self.passwd_path), user)

    def _passwd(self, *args: str) -> None:
        binary = require_binary("mosquitto_passwd", "mosquitto")
        if not self.passwd_path.exists():
            write_private_file(self.passwd_path, "")
        # The password is on mosquitto_passwd's command line for a moment (its -b batch mode);
        # run rpm mqtt-auth on the broker host, where only operators have shells.
        result = subprocess.run([binary, *args], capture_output=True, text=True, umask=0o077, check=False)
        self.passwd_path.chmod(0o600)
        if result.returncode != 0:
            raise ServiceError(f"mosquitto_passwd failed on {self.passwd_path}: {result.stderr.strip()[:200]}")


# --- operations ------------------------------------------------------------------------------------


def init_auth(path: Path, *, simulator: bool = False) -> dict[str, Path]:
    """Create the state with the service users; their passwords go to ``credentials/<user>`` (0600)."""
    auth = AuthDir(path)
    with auth.locked():
        if auth.state_path.exists():
            raise ConfigError(f"{auth.state_path} exists already; add users with rpm mqtt-auth add-agent")
        services = {**SERVICE_USERS, **({SIMULATOR_USER: Role.SIMULATOR} if simulator else {})}
        write_private_file(auth.passwd_path, "")
        state, files = AuthState(), {}
        for name, role in services.items():
            creds = Credentials(name, generate_password())
            auth.set_password(creds)
            files[name] = auth.credential_path(name)
            write_credential_file(files[name], creds)
            state = state.with_user(MqttUser(name=name, role=role, created=_now_iso()))
        auth.save(state)
    return files


def agent_user(patient: str) -> str:
    """The default MQTT user of the edge agent of ``patient``."""
    if not is_valid_id(patient):
        raise ConfigError(f"patient id {patient!r} must be 1-64 characters of [A-Za-z0-9_.:-]")
    return check_mqtt_user(f"{AGENT_PREFIX}{patient}")


def add_agent(path: Path, patient: str, *, user: str | None = None, rotate: bool = False) -> Credentials | None:
    """Create (or with ``rotate``, re-key) the agent user of ``patient``; its credentials, shown once.

    Returns None when the user exists and ``rotate`` is false (nothing changed).
    """
    name = check_mqtt_user(user) if user else agent_user(patient)
    return _add_user(path, MqttUser(name=name, role=Role.AGENT, patient=patient, created=_now_iso()), rotate=rotate)


def add_service(path: Path, user: str, role: Role, *, rotate: bool = False) -> Credentials | None:
    """Create (or re-key) a service user, e.g. a second bridge or the notifier; None if it exists."""
    if role is Role.AGENT:
        raise ConfigError("agents are added with add-agent --patient P")
    return _add_user(path, MqttUser(name=check_mqtt_user(user), role=role, created=_now_iso()), rotate=rotate)


def _add_user(path: Path, user: MqttUser, *, rotate: bool) -> Credentials | None:
    auth = AuthDir(path)
    with auth.locked():
        state = auth.load()
        existing = state.find(user.name)
        if existing is not None and (existing.role, existing.patient) != (user.role, user.patient):
            raise ConfigError(f"user {user.name} exists with role {existing.role.value}"
                              f"{', patient ' + existing.patient if existing.patient else ''}; pick another name")
        if existing is not None and not rotate:
            return None
        if existing is not None:  # a rotation: same user since its creation, re-keyed now
            user = dataclasses.replace(user, created=existing.created, changed=_now_iso())
        creds = Credentials(user.name, generate_password())
        auth.set_password(creds)
        auth.save(state.with_user(user))
    return creds


def revoke(path: Path, user: str) -> MqttUser:
    """Remove ``user`` from the password and ACL files and record it as revoked."""
    auth = AuthDir(path)
    with auth.locked():
        state = auth.load()
        existing = state.find(user)
        if existing is None:
            known = "revoked already" if user in state.revoked else "unknown"
            raise ConfigError(f"user {user!r} is {known}; rpm mqtt-auth list shows the users")
        auth.delete_user(user)
        auth.save(state.without(user, _now_iso()))
    return existing
