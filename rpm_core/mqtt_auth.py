"""``rpm mqtt-auth``: Mosquitto's password file and ACL file, maintained from a small state file.

One directory (``--dir D`` or ``RPM_MQTT_AUTH_DIR``, mode 0700) holds::

    D/mqtt-auth.json        users, their roles and patients, revoked users (no secrets), 0600
    D/passwd                Mosquitto password file, hashed by ``mosquitto_passwd -b``, 0600
    D/acl                   Mosquitto ACL file, generated from the state, 0600
    D/credentials/<user>    passwords of the service users made by ``init`` (RPM_MQTT_PASSWORD_FILE), 0600

Point Mosquitto at them (``password_file D/passwd``, ``acl_file D/acl``, ``allow_anonymous false``).
Mosquitto reads both at start and again on SIGHUP, when it also disconnects clients whose
credentials are gone: ``--reload-pid PID`` sends that signal after a change.

Roles (ACL grants in :mod:`rpm_core.services`): ``bridge`` reads readings and status; ``alerts``
writes alerts; ``nurse`` reads alerts; ``admin`` everything; ``simulator`` (opt-in) writes any
patient's readings; ``notifier`` writes patients' ``cmd`` and reads their ``ack``; ``agent`` writes
only ``rpm/v1/p/<patient>/readings``, ``…/status`` and ``…/ack`` and reads only ``…/cmd``.
Passwords are never stored here in clear: they are printed once or written to a 0600 file, and
only their hashes stay in ``passwd``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from rpm_core.errors import ConfigError, ServiceError
from rpm_core.services import (
    ADMIN_USER,
    ALERTS_USER,
    BRIDGE_USER,
    NURSE_USER,
    SIMULATOR_USER,
    WATCHDOG_USER,
    Role,
    build_acl,
    check_mqtt_user,
    require_binary,
)
from rpm_core.settings import Secret, check_private_file
from rpm_core.wire import is_valid_id

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

    def to_json(self) -> dict[str, Any]:
        """The state-file form."""
        return {"role": self.role.value, "patient": self.patient, "created": self.created}

    @classmethod
    def from_json(cls, name: str, doc: object) -> MqttUser:
        """Parse the state-file form; :class:`ConfigError` on anything unexpected."""
        if not isinstance(doc, dict) or set(doc) - {"role", "patient", "created"}:
            raise ConfigError(f"user {name!r}: expected an object with role, patient, created")
        try:
            role = Role(str(doc.get("role")))
        except ValueError:
            raise ConfigError(f"user {name!r}: unknown role {doc.get('role')!r}") from None
        user = cls(name=check_mqtt_user(name), role=role, patient=doc.get("patient"), created=str(doc.get("created")))
        build_acl([(user.name, user.role, user.patient)])  # validates the role/patient combination
        return user


@dataclass(frozen=True, slots=True)
class AuthState:
    """Every user the broker knows, and the users revoked (name → when)."""

    users: tuple[MqttUser, ...] = ()
    revoked: dict[str, str] = field(default_factory=dict)

    def find(self, name: str) -> MqttUser | None:
        """The active user called ``name``."""
        return next((u for u in self.users if u.name == name), None)

    def with_user(self, user: MqttUser) -> AuthState:
        """``user`` added (or replaced) and no longer revoked."""
        users = (*(u for u in self.users if u.name != user.name), user)
        return AuthState(users, {k: v for k, v in self.revoked.items() if k != user.name})

    def without(self, name: str, when: str) -> AuthState:
        """``name`` removed and recorded as revoked at ``when``."""
        return AuthState(tuple(u for u in self.users if u.name != name), {**self.revoked, name: when})

    def acl_text(self) -> str:
        """The Mosquitto ACL: service users first, then agents by name."""
        ordered = sorted(self.users, key=lambda u: (u.role is Role.AGENT, u.name))
        return build_acl((u.name, u.role, u.patient) for u in ordered)

    def to_json(self) -> dict[str, Any]:
        """The state file's document."""
        return {"version": STATE_VERSION, "users": {u.name: u.to_json() for u in self.users},
                "revoked": dict(sorted(self.revoked.items()))}

    @classmethod
    def from_json(cls, doc: object) -> AuthState:
        """Parse the state file's document."""
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            raise ConfigError(f"unsupported state document (expected version {STATE_VERSION})")
        users, revoked = doc.get("users"), doc.get("revoked", {})
        if not isinstance(users, dict) or not isinstance(revoked, dict):
            raise ConfigError("'users' and 'revoked' must be objects")
        parsed = tuple(MqttUser.from_json(n, d) for n, d in users.items())
        return cls(parsed, {str(k): str(v) for k, v in revoked.items()})


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
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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


def reload_broker(pid: int) -> None:
    """Send SIGHUP to Mosquitto (pid ``pid``): it re-reads the password and ACL files."""
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ServiceError(f"no process {pid}: is Mosquitto running? {RELOAD_HINT}") from None
    except PermissionError:
        raise ServiceError(f"not allowed to signal process {pid}; run as Mosquitto's user or root") from None


# --- CLI ---------------------------------------------------------------------------------------------


def _dir(args: argparse.Namespace) -> Path:
    path = args.dir or os.environ.get("RPM_MQTT_AUTH_DIR")
    if not path:
        raise ConfigError("no directory: pass --dir D or set RPM_MQTT_AUTH_DIR")
    return Path(path)


def _after_change(args: argparse.Namespace, out: list[str]) -> None:
    if args.reload_pid:
        reload_broker(args.reload_pid)
        out.append(f"sent SIGHUP to Mosquitto (pid {args.reload_pid}): it re-reads the password and ACL files")
    else:
        out.append(RELOAD_HINT)


def _say(lines: list[str]) -> None:
    sys.stdout.write("".join(f"{line}\n" for line in lines))


def cmd_init(args: argparse.Namespace) -> int:
    """``rpm mqtt-auth init``."""
    path = _dir(args)
    files = init_auth(path, simulator=args.simulator)
    auth = AuthDir(path)
    out = [f"created {auth.state_path}, {auth.passwd_path} and {auth.acl_path}",
           "service users (password files for RPM_MQTT_PASSWORD_FILE, mode 0600):"]
    out += [f"  {user:<14} {file}" for user, file in files.items()]
    _after_change(args, out)
    _say(out)
    return 0


def cmd_add_agent(args: argparse.Namespace) -> int:
    """``rpm mqtt-auth add-agent``."""
    creds = add_agent(_dir(args), args.patient, user=args.user, rotate=args.rotate)
    name = args.user or agent_user(args.patient)
    grants = (f"may publish only under rpm/v1/p/{args.patient}/ (readings, status, ack) "
              f"and read only rpm/v1/p/{args.patient}/cmd")
    return _issued(args, name, creds, grants)


def cmd_add_service(args: argparse.Namespace) -> int:
    """``rpm mqtt-auth add-service``."""
    creds = add_service(_dir(args), args.user, Role(args.role), rotate=args.rotate)
    return _issued(args, args.user, creds, f"has role {args.role}")


def _issued(args: argparse.Namespace, name: str, creds: Credentials | None, grants: str) -> int:
    if creds is None:
        _say([f"user {name} exists already; nothing changed (--rotate issues a new password)"])
        return 1
    out = [f"user {creds.user} {grants}"]
    if args.out:
        write_credential_file(Path(args.out), creds)
        out.append(f"password written to {args.out} (mode 0600); give it to the client as "
                   f"RPM_MQTT_URL=mqtts://{creds.user}@BROKER:8883 RPM_MQTT_PASSWORD_FILE={args.out}")
    else:
        out.append(f"password (shown once): {creds.password.get()}")
    _after_change(args, out)
    _say(out)
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    """``rpm mqtt-auth revoke``."""
    user = revoke(_dir(args), args.user)
    out = [f"revoked {user.name} ({user.role.value}{', patient ' + user.patient if user.patient else ''})"]
    _after_change(args, out)
    _say(out)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``rpm mqtt-auth list``."""
    state = AuthDir(_dir(args)).load()
    out = [f"{'user':<24} {'role':<10} {'patient':<16} {'status':<8} since"]
    out += [f"{u.name:<24} {u.role.value:<10} {u.patient or '-':<16} {'active':<8} {u.created}" for u in state.users]
    out += [f"{name:<24} {'-':<10} {'-':<16} {'revoked':<8} {when}" for name, when in state.revoked.items()]
    _say(out)
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``rpm mqtt-auth`` and its subcommands."""
    p = sub.add_parser("mqtt-auth", help="MQTT users, passwords and ACLs of the broker (Mosquitto)")
    commands = p.add_subparsers(dest="mqtt_auth_command", required=True, metavar="MQTT_AUTH_COMMAND")

    c = commands.add_parser("init", help="create the state, password and ACL files with the service users")
    c.add_argument("--simulator", action="store_true", help="also a simulator user (demo/test brokers only)")
    _common(c, reload=True)
    c.set_defaults(func=cmd_init)

    c = commands.add_parser("add-agent", help="create the MQTT user of a patient's edge agent")
    c.add_argument("--patient", required=True, help="patient id, e.g. p0001")
    c.add_argument("--user", help="user name (default agent-<patient>)")
    c.add_argument("--out", help="write the password to this file (0600) instead of printing it")
    c.add_argument("--rotate", action="store_true", help="issue a new password if the user exists")
    _common(c, reload=True)
    c.set_defaults(func=cmd_add_agent)

    c = commands.add_parser("add-service", help="create a service user (a second bridge, the notifier, …)")
    c.add_argument("--user", required=True, help="user name, e.g. rpm-bridge-2")
    c.add_argument("--role", required=True, choices=[r.value for r in Role if r is not Role.AGENT])
    c.add_argument("--out", help="write the password to this file (0600) instead of printing it")
    c.add_argument("--rotate", action="store_true", help="issue a new password if the user exists")
    _common(c, reload=True)
    c.set_defaults(func=cmd_add_service)

    c = commands.add_parser("revoke", help="remove a user (then reload Mosquitto)")
    c.add_argument("--user", required=True)
    _common(c, reload=True)
    c.set_defaults(func=cmd_revoke)

    c = commands.add_parser("list", help="list users, roles and revoked users")
    _common(c, reload=False)
    c.set_defaults(func=cmd_list)


def _common(p: argparse.ArgumentParser, *, reload: bool) -> None:
    p.add_argument("--dir", help="the broker's auth directory (env RPM_MQTT_AUTH_DIR)")
    if reload:
        p.add_argument("--reload-pid", type=int, help="send SIGHUP to this Mosquitto process afterwards")

