# ruff: noqa: T201 - a CLI talks to its user with print (as rpm_app/cli.py does)
"""``rpm edge …``: pair devices, run the agent, list and forget pairings.

Registered into the one ``rpm`` command by :func:`add_commands`. Only light modules are imported
here; bleak, paho and dbus-fast are imported inside the handlers that need them.

- ``rpm edge pair --patient P [--address ADDR] [--timeout S] [--passkey N]``: without
  ``--address``, scan and let the user choose by number; with it, pair that device (scripts);
  with ``--provision-credentials DIR`` (the broker's ``rpm mqtt-auth`` directory) it also creates
  the patient's agent MQTT user and writes its password to a 0600 file (``RPM_MQTT_PASSWORD_FILE``);
- ``rpm edge run``: run the agent until SIGTERM;
- ``rpm edge devices``: the patient, the paired devices, what waits in the outbox;
- ``rpm edge status``: is the agent running, per device: connected, last reading, battery, outbox;
- ``rpm edge forget ADDRESS``: remove a pairing (and, unless ``--keep-bond``, the BlueZ bond);
- ``rpm edge ack ALERT_ID…``: the patient acknowledges a message from the care team (see
  :mod:`edge_agent.commands`): its alerts stop escalating.

Each handler returns an exit code: 0 done, 1 nothing to do / cancelled, 2 bad input or failure.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import const
from edge_agent.config import AgentSettings
from edge_agent.errors import EdgeAgentError
from edge_agent.pairing import PairedDevice, Registry, RegistryStore, normalize_address

if TYPE_CHECKING:
    from edge_agent.provision import Candidate

_LOGGER = logging.getLogger(__name__)
_SubParsers = argparse._SubParsersAction  # argparse exposes no public name for it


def add_commands(sub: _SubParsers[argparse.ArgumentParser]) -> None:
    """Register ``rpm edge`` and its subcommands."""
    edge = sub.add_parser("edge", help="the edge agent: pair BLE devices, run the agent")
    commands = edge.add_subparsers(dest="edge_command", required=True, metavar="EDGE_COMMAND")

    p = commands.add_parser("pair", help="pair a heart-rate strap, glucose meter or CGM with a patient")
    p.add_argument("--patient", required=True, help="patient id, e.g. p0001")
    p.add_argument("--address", help="Bluetooth address to pair (scriptable); without it: scan and choose")
    p.add_argument("--timeout", type=float, default=const.DEFAULT_PAIR_SCAN_TIMEOUT_S, help="scan seconds")
    p.add_argument("--passkey", type=_passkey_arg, help="passkey shown by the device (default: ask when needed)")
    p.add_argument("--provision-credentials", metavar="DIR",
                   help="also create the patient's agent MQTT user in this rpm mqtt-auth directory")
    p.add_argument("--credentials-out", metavar="FILE",
                   help="where to write its password (0600; default <state dir>/mqtt-password)")
    _state_flag(p)
    p.set_defaults(func=cmd_pair)

    p = commands.add_parser("run", help="run the agent (until SIGTERM)")
    _state_flag(p)
    p.add_argument("--mqtt-url", help="mqtts://agent-<patient>:<password>@host:8883 (env RPM_MQTT_URL)")
    p.add_argument("--mqtt-ca", help="CA bundle of the broker's certificate (env RPM_MQTT_CA)")
    p.add_argument("--mqtt-password-file", help="file (0600) holding the agent's password (env RPM_MQTT_PASSWORD_FILE)")
    p.add_argument("--allow-plaintext", action="store_true", default=None, help="allow mqtt:// to a remote broker")
    p.add_argument("--outbox-max-mb", type=float, help="disk budget of the outbox (env RPM_EDGE_OUTBOX_MAX_MB)")
    p.set_defaults(func=cmd_run)

    p = commands.add_parser("devices", help="list the paired devices and the outbox")
    _state_flag(p)
    p.set_defaults(func=cmd_devices)

    p = commands.add_parser("status", help="is the agent running; per device: connected, last reading, battery")
    _state_flag(p)
    p.set_defaults(func=cmd_status)

    p = commands.add_parser("forget", help="remove a paired device")
    p.add_argument("address")
    p.add_argument("--keep-bond", action="store_true", help="keep BlueZ's bond, only forget the pairing")
    _state_flag(p)
    p.set_defaults(func=cmd_forget)

    p = commands.add_parser("ack", help="acknowledge a message from the care team (stops its escalation)")
    p.add_argument("alert_ids", nargs="+", metavar="ALERT_ID", help="the alert id(s) the message named")
    p.add_argument("--patient", help="patient id (default: the one paired in the state directory)")
    p.add_argument("--mqtt-url", help="mqtts://agent-<patient>:<password>@host:8883 (env RPM_MQTT_URL)")
    p.add_argument("--mqtt-ca", help="CA bundle of the broker's certificate (env RPM_MQTT_CA)")
    p.add_argument("--mqtt-password-file", help="file (0600) holding the agent's password (env RPM_MQTT_PASSWORD_FILE)")
    p.add_argument("--allow-plaintext", action="store_true", default=None, help="allow mqtt:// to a remote broker")
    _state_flag(p)
    p.set_defaults(func=cmd_ack)


def _state_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", help="state directory (env RPM_EDGE_STATE)")


def _settings(args: argparse.Namespace) -> AgentSettings:
    return AgentSettings.from_env(
        state_dir=args.state_dir,
        mqtt_url=_mqtt_url(args),
        mqtt_ca=getattr(args, "mqtt_ca", None),
        allow_plaintext=getattr(args, "allow_plaintext", None),
        outbox_max_mb=getattr(args, "outbox_max_mb", None),
    )


def _mqtt_url(args: argparse.Namespace) -> str | None:
    """The broker URL, with the password of ``--mqtt-password-file`` / ``RPM_MQTT_PASSWORD_FILE`` if named."""
    url: str | None = getattr(args, "mqtt_url", None)
    if not hasattr(args, "mqtt_password_file"):
        return url
    password_file = args.mqtt_password_file or os.environ.get("RPM_MQTT_PASSWORD_FILE")
    url = url or os.environ.get("RPM_MQTT_URL")
    if not url or not password_file:
        return url
    from rpm_core.settings import url_with_password_file

    return url_with_password_file(url, password_file)  # refuses a file other users can read


def _passkey_arg(text: str) -> int:
    from edge_agent.advice import parse_passkey

    passkey = parse_passkey(text)
    if passkey is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a passkey: the 6 digits the device shows, e.g. 123456")
    return passkey


def _fail(args: argparse.Namespace, exc: BaseException) -> int:
    """Say what went wrong in plain language, with the next step (the details go to the debug log)."""
    from edge_agent.advice import plain_error

    _LOGGER.debug("rpm edge %s failed", args.edge_command, exc_info=exc)
    print(f"rpm edge {args.edge_command}: {plain_error(exc, timeout_s=getattr(args, 'timeout', None))}",
          file=sys.stderr)
    return 2


def _patient_facing(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """No traceback anywhere a patient can reach: every failure becomes a plain message and exit 2."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except KeyboardInterrupt:
            print("cancelled; nothing was changed", file=sys.stderr)
            return 1
        except Exception as exc:
            return _fail(args, exc)

    return run


# --- pair ------------------------------------------------------------------------------------------


@_patient_facing
def cmd_pair(args: argparse.Namespace) -> int:
    """Pair a device with the patient (interactive without ``--address``)."""
    try:
        settings = _settings(args)
        if args.provision_credentials:
            _check_auth_dir(Path(args.provision_credentials))  # fail before pairing, not after
        store = RegistryStore(settings.ensure_state_dir() / settings.registry_path.name)
        Registry().with_device(args.patient, _placeholder())  # validates the patient id early
        with store.locked() as registry:
            registry.with_device(args.patient, _placeholder())  # refuses another patient early
            device = asyncio.run(_pair(args))
            if device is None:
                return 1
            store.save(registry.with_device(args.patient, device))
    except EdgeAgentError as exc:
        return _fail(args, exc)
    info = device.info
    print(f"paired {device.kind.value} {device.address} ({device.name or 'no name'}) with patient {args.patient}")
    print(f"  {info.manufacturer or '?'} {info.model or '?'}, serial {info.serial or '?'}, firmware {info.firmware}")
    print(f"  battery {device.battery_pct if device.battery_pct is not None else '?'} %; device id {device.device_id}")
    if args.provision_credentials:
        _provision(args, settings)
    return 0


def _check_auth_dir(path: Path) -> None:
    from rpm_core.mqtt_users import AuthDir

    AuthDir(path).load()


def _provision(args: argparse.Namespace, settings: AgentSettings) -> None:
    """Create the patient's agent MQTT user (``rpm mqtt-auth add-agent``) and keep its password here."""
    from rpm_core.mqtt_users import RELOAD_HINT, add_agent, agent_user, write_credential_file

    out = Path(args.credentials_out) if args.credentials_out else settings.state_dir / "mqtt-password"
    creds = add_agent(Path(args.provision_credentials), args.patient)
    if creds is None:
        print(f"MQTT user {agent_user(args.patient)} exists already; its password is unchanged "
              "(rpm mqtt-auth add-agent --rotate issues a new one)")
        return
    write_credential_file(out, creds)
    print(f"MQTT user {creds.user} created; its password is in {out} (mode 0600). Run the agent with "
          f"RPM_MQTT_URL=mqtts://{creds.user}@BROKER:8883 RPM_MQTT_PASSWORD_FILE={out}")
    print(RELOAD_HINT)
    _audit_provision(creds.user, args.patient, Path(args.provision_credentials))


def _audit_provision(user: str, patient: str, auth_dir: Path) -> None:
    """Record the new credential in rpm.audit like ``rpm mqtt-auth add-agent`` (RPM_KAFKA_URL set)."""
    from rpm_core.audit import AuditError, AuditEvent, os_user, record_now
    from rpm_core.settings import Settings

    settings = Settings.from_env()
    if not settings.kafka_url:
        print("rpm edge pair: not audited: RPM_KAFKA_URL is not set, so rpm.audit cannot be written", file=sys.stderr)
        return
    event = AuditEvent(action="credential.add", actor=os_user(), target=user, patient=patient,
                       detail={"kind": "mqtt", "role": "agent", "dir": str(auth_dir)})
    try:
        record_now(settings.kafka_bootstrap(), settings.key_ring(), "rpm edge pair", event)
    except (AuditError, ModuleNotFoundError) as exc:  # an edge-only install has no Kafka client
        print(f"rpm edge pair: MQTT user created, but NOT audited: {exc}", file=sys.stderr)


def _placeholder() -> PairedDevice:
    from edge_agent.pairing import DeviceKind

    return PairedDevice(address="00:00:00:00:00:00", kind=DeviceKind.HEART_RATE)


async def _pair(args: argparse.Namespace) -> PairedDevice | None:
    from edge_agent.provision import pair_device, scan

    address = normalize_address(args.address) if args.address else None
    if address is None:
        print(f"scanning {args.timeout:g} s for heart-rate straps, glucose meters and CGMs…", flush=True)
        candidates = await scan(args.timeout)
        address = await _choose(candidates)
        if address is None:
            return None
    print(f"pairing {address}…", flush=True)
    async with _agent(args.passkey):
        return await pair_device(address, timeout_s=args.timeout)


def _agent(passkey: int | None) -> Any:
    """The BlueZ passkey agent: answers with ``passkey``, or asks on the terminal."""
    from edge_agent.bluez_agent import passkey_agent

    async def prompt(device_path: str) -> int | None:
        if passkey is not None:
            return passkey
        return await asyncio.to_thread(ask_passkey)

    return passkey_agent(prompt)


def ask_passkey(read: Callable[[str], str] = input) -> int | None:
    """Ask for the passkey until one is typed (None: the user quit, or input ended)."""
    from edge_agent.advice import parse_passkey

    while True:
        try:
            text = read("passkey shown on the device (6 digits, q to cancel): ")
        except EOFError:
            return None
        if text.strip().lower() in ("q", "quit"):
            return None
        passkey = parse_passkey(text)
        if passkey is not None:
            return passkey
        print("that is not a passkey: type the 6 digits the device shows, e.g. 123456 (or q to cancel)", flush=True)


async def _choose(candidates: Sequence[Candidate]) -> str | None:
    if not candidates:
        print("no devices found: put the device in pairing mode (and near), then try again")
        return None
    print(f"{'#':>3}  {'name':<24} {'address':<17} {'RSSI':>5}  kind")
    for number, c in enumerate(candidates, 1):
        rssi = f"{c.rssi}" if c.rssi is not None else "?"
        print(f"{number:>3}  {(c.name or '?')[:24]:<24} {c.address:<17} {rssi:>5}  {c.kind.value}")
    while True:
        try:
            text = await asyncio.to_thread(input, f"pair which device? [1-{len(candidates)}, q to quit]: ")
        except EOFError:
            return None
        text = text.strip().lower()
        if text in ("q", "quit", ""):
            return None
        if text.isdigit() and 1 <= int(text) <= len(candidates):
            return candidates[int(text) - 1].address
        print(f"please type a number from 1 to {len(candidates)}, or q")


# --- run, devices, forget --------------------------------------------------------------------------


@_patient_facing
def cmd_run(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM / Ctrl-C."""
    from edge_agent.agent import Agent, run_until_signalled

    try:
        settings = _settings(args)
        settings.mqtt()
        registry = RegistryStore(settings.registry_path).load()
        asyncio.run(run_until_signalled(Agent(settings, registry)))
    except EdgeAgentError as exc:
        return _fail(args, exc)
    return 0


@_patient_facing
def cmd_devices(args: argparse.Namespace) -> int:
    """List the patient, the paired devices and the outbox."""
    try:
        settings = _settings(args)
        registry = RegistryStore(settings.registry_path).load()
    except EdgeAgentError as exc:
        return _fail(args, exc)
    if not registry.devices:
        print(f"no devices paired (state: {settings.state_dir}); run: rpm edge pair --patient ID")
        return 1
    print(f"patient {registry.patient} (state: {settings.state_dir})")
    for d in registry.devices:
        battery = f"{d.battery_pct}%" if d.battery_pct is not None else "?"
        print(
            f"  {d.kind.value:<13} {d.address}  {d.name or '?':<20} serial {d.info.serial or '?':<12} "
            f"battery {battery:>4}  paired {d.paired_at}"
        )
    _print_outbox(settings)
    return 0


@_patient_facing
def cmd_status(args: argparse.Namespace) -> int:
    """What the running agent last reported (its status file), and what waits in the outbox."""
    import json
    import time

    settings = _settings(args)
    registry = RegistryStore(settings.registry_path).load()
    if not registry.devices:
        print(f"no devices paired (state: {settings.state_dir}); pair one with: rpm edge pair --patient ID")
        return 1
    try:
        doc = json.loads(settings.status_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        doc = {}
    age = time.time() - float(doc.get("t", 0))
    running = age <= const.STATUS_FILE_STALE_S
    pending = _pending_by_device(settings)
    print(f"patient {registry.patient}")
    if running:
        broker = "connected to the server" if doc.get("broker_connected") else "NOT connected to the server"
        print(f"agent: running, {broker} (status {age:.0f} s old)")
    else:
        print("agent: NOT running (no recent status); start it with:  sudo systemctl start rpm-edge")
    now = time.time()
    for device in registry.devices:
        info = doc.get("devices", {}).get(device.device_id, {}) if running else {}
        print(_device_line(device, info, pending.get(device.device_id, 0), now))
    for alarm in doc.get("alarms", []) if running else []:
        remedy = f" -> {alarm['remedy']}" if alarm.get("remedy") else ""
        print(f"  ! {alarm.get('message', alarm.get('alarm'))}{remedy}")
    return 0


def _device_line(device: PairedDevice, info: dict[str, Any], waiting: int, now: float) -> str:
    state = info.get("state", "unknown")
    if info.get("error") and state in ("error", "unreachable"):
        state = f"{state} ({info['error']})"
    last = info.get("last_reading_t")
    last_text = "never" if last is None else f"{_ago(now - float(last))} ago"
    battery = info.get("battery_pct", device.battery_pct)
    return (f"  {device.kind.value:<13} {device.address}  {state:<13} last reading {last_text:<12} "
            f"battery {f'{battery}%' if battery is not None else '?':>4}  outbox {waiting} waiting")


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _pending_by_device(settings: AgentSettings) -> dict[str, int]:
    from edge_agent.outbox import Outbox

    if not settings.outbox_path.exists():
        return {}
    outbox = Outbox(settings.outbox_path, budget_bytes=settings.outbox_budget_bytes)
    try:
        return outbox.pending_by_device()
    finally:
        outbox.close()


def _print_outbox(settings: AgentSettings) -> None:
    from edge_agent.outbox import Outbox

    if not settings.outbox_path.exists():
        return
    outbox = Outbox(settings.outbox_path, budget_bytes=settings.outbox_budget_bytes)
    try:
        stats = outbox.stats()
    finally:
        outbox.close()
    pending = ", ".join(f"{count} {metric}" for metric, count in stats.pending.items())
    print(f"outbox: {stats.total} reading(s) waiting ({pending}); capacity {stats.capacity}")
    if any(stats.evicted_total.values()):
        print(f"  dropped when full so far: {dict(stats.evicted_total)}")


@_patient_facing
def cmd_forget(args: argparse.Namespace) -> int:
    """Forget a paired device."""
    try:
        settings = _settings(args)
        store = RegistryStore(settings.registry_path)
        with store.locked() as registry:
            store.save(registry.without(args.address))
    except EdgeAgentError as exc:
        return _fail(args, exc)
    address = normalize_address(args.address)
    print(f"forgot {address}; the running agent stops reading it within seconds")
    if not args.keep_bond:
        _remove_bond(address)
    return 0


def _remove_bond(address: str) -> None:
    from edge_agent.provision import unpair

    try:
        removed = asyncio.run(unpair(address))
    except EdgeAgentError as exc:
        print(f"  (BlueZ bond not removed: {exc})")
        return
    print("  BlueZ bond removed" if removed else "  (BlueZ did not know the device)")


@_patient_facing
def cmd_ack(args: argparse.Namespace) -> int:
    """Publish the patient's acknowledgement of the given alerts on the agent's ack topic."""
    import time

    from edge_agent.commands import publish_ack_blocking
    from rpm_core.commands import PatientAck

    try:
        settings = _settings(args)
        mqtt = settings.mqtt()
        patient = args.patient or RegistryStore(settings.registry_path).load().patient
        if patient is None:
            print("rpm edge ack: no patient paired here; pass --patient", file=sys.stderr)
            return 2
        publish_ack_blocking(mqtt, patient, PatientAck(id="", alert_ids=tuple(args.alert_ids), at=time.time()))
    except (EdgeAgentError, ValueError) as exc:
        return _fail(args, exc)
    print(f"acknowledged {len(args.alert_ids)} alert(s) for patient {patient}")
    return 0
