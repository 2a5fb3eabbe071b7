"""``rpm mqtt-auth``: Mosquitto's password file and ACL file, maintained from a small state file.

One directory (``--dir D`` or ``RPM_MQTT_AUTH_DIR``, mode 0700) holds::

    D/mqtt-auth.json        users, their roles and patients, revoked users (no secrets), 0600
    D/passwd                Mosquitto password file, hashed by ``mosquitto_passwd -b``, 0600
    D/acl                   Mosquitto ACL file, generated from the state, 0600
    D/credentials/<user>    passwords of the service users made by ``init`` (RPM_MQTT_PASSWORD_FILE), 0600

Point Mosquitto at them (``password_file D/passwd``, ``acl_file D/acl``, ``allow_anonymous false``).
Mosquitto reads both at start and again on SIGHUP, when it also disconnects clients whose
credentials are gone: ``--reload-pid PID`` sends that signal after a change.

Roles (ACL grants and the store in :mod:`rpm_core.mqtt_users`): ``bridge`` reads readings and status; ``alerts``
writes alerts; ``nurse`` reads alerts; ``admin`` everything; ``simulator`` (opt-in) writes any
patient's readings; ``notifier`` writes patients' ``cmd`` and reads their ``ack``; ``agent`` writes
only ``rpm/v1/p/<patient>/readings``, ``…/status`` and ``…/ack`` and reads only ``…/cmd``.
Passwords are never stored here in clear: they are printed once or written to a 0600 file, and
only their hashes stay in ``passwd``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from rpm_app.audit_cli import record_command
from rpm_core.audit import AuditEvent, os_user
from rpm_core.errors import ConfigError, ServiceError
from rpm_core.mqtt_users import (
    RELOAD_HINT,
    AuthDir,
    Credentials,
    MqttUser,
    Role,
    add_agent,
    add_service,
    agent_user,
    init_auth,
    revoke,
    write_credential_file,
)


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
    _audit(args, *(AuditEvent(action="credential.add", actor=os_user(), target=user,
                              detail={"kind": "mqtt", "role": "service", "dir": str(path)}) for user in files))
    return 0


def _audit(args: argparse.Namespace, *events: AuditEvent) -> None:
    """Record credential changes in rpm.audit (after they took effect: the password was shown once)."""
    record_command("rpm mqtt-auth", *events)


def cmd_add_agent(args: argparse.Namespace) -> int:
    """``rpm mqtt-auth add-agent``."""
    creds = add_agent(_dir(args), args.patient, user=args.user, rotate=args.rotate)
    name = args.user or agent_user(args.patient)
    grants = (f"may publish only under rpm/v1/p/{args.patient}/ (readings, status, ack) "
              f"and read only rpm/v1/p/{args.patient}/cmd")
    return _issued(args, name, creds, grants, role="agent", patient=args.patient)


def cmd_add_service(args: argparse.Namespace) -> int:
    """``rpm mqtt-auth add-service``."""
    creds = add_service(_dir(args), args.user, Role(args.role), rotate=args.rotate)
    return _issued(args, args.user, creds, f"has role {args.role}", role=args.role)


def _issued(args: argparse.Namespace, name: str, creds: Credentials | None, grants: str, *, role: str,
            patient: str = "") -> int:
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
    _audit(args, AuditEvent(action="credential.rotate" if args.rotate and _existed(args, creds.user)
                            else "credential.add", actor=os_user(), target=creds.user, patient=patient,
                            detail={"kind": "mqtt", "role": role, "dir": str(_dir(args))}))
    return 0


def _existed(args: argparse.Namespace, user: str) -> bool:
    """Whether ``user`` was re-keyed (it has a last-change time) rather than created."""
    found = AuthDir(_dir(args)).load().find(user)
    return found is not None and bool(found.changed)


def cmd_revoke(args: argparse.Namespace) -> int:
    """``rpm mqtt-auth revoke``."""
    user = revoke(_dir(args), args.user)
    out = [f"revoked {user.name} ({user.role.value}{', patient ' + user.patient if user.patient else ''})"]
    _after_change(args, out)
    _say(out)
    _audit(args, AuditEvent(action="credential.revoke", actor=os_user(), target=user.name, patient=user.patient or "",
                            detail={"kind": "mqtt", "role": user.role.value, "dir": str(_dir(args))}))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``rpm mqtt-auth list``."""
    state = AuthDir(_dir(args)).load()
    out = [f"{'user':<24} {'role':<10} {'patient':<16} {'status':<8} {'created':<25} {'changed':<25} revoked"]
    out += [_row(u, "active") for u in state.users]
    for name, when in state.revoked.items():
        was = state.retired.get(name)
        out.append(_row(was, "revoked", when) if was else
                   f"{name:<24} {'-':<10} {'-':<16} {'revoked':<8} {'-':<25} {'-':<25} {when}")
    _say(out)
    return 0


def _row(u: MqttUser, status: str, revoked: str = "-") -> str:
    """One line of the access review: who, what role, created, last re-keyed, revoked."""
    return (f"{u.name:<24} {u.role.value:<10} {u.patient or '-':<16} {status:<8} {u.created or '-':<25} "
            f"{u.changed or '-':<25} {revoked}")


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

    c = commands.add_parser("list", help="access review: users, roles, created, last re-keyed, revoked")
    _common(c, reload=False)
    c.set_defaults(func=cmd_list)


def _common(p: argparse.ArgumentParser, *, reload: bool) -> None:
    p.add_argument("--dir", help="the broker's auth directory (env RPM_MQTT_AUTH_DIR)")
    if reload:
        p.add_argument("--reload-pid", type=int, help="send SIGHUP to this Mosquitto process afterwards")

