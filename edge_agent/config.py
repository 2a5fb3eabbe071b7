"""Settings of the edge agent, read once at the entry point into one frozen object.

- ``RPM_EDGE_STATE`` / ``--state-dir``: pairings, watermarks and the outbox. Default
  ``$STATE_DIRECTORY`` (set by systemd), else ``$XDG_STATE_HOME/rpm-edge``, else
  ``~/.local/state/rpm-edge``.
- ``RPM_MQTT_URL`` / ``--mqtt-url``: ``mqtts://agent-p0001:secret@broker:8883`` (``mqtt://`` is
  plaintext); required by ``rpm edge run``.
- ``RPM_MQTT_CA`` / ``--mqtt-ca``: CA bundle that signed the broker's certificate (default: the
  system trust store).
- ``RPM_EDGE_ALLOW_PLAINTEXT`` / ``--allow-plaintext``: allow ``mqtt://`` to a broker that is not
  on this host (default off).
- ``RPM_EDGE_OUTBOX_MAX_MB`` / ``--outbox-max-mb``: disk budget of the outbox (default 256).
- ``RPM_EDGE_MQTT_BACKOFF_MAX_S``, ``RPM_EDGE_BLE_BACKOFF_MAX_S``: caps of the reconnect backoff
  to the broker and to devices (default 60 s each).
- ``RPM_EDGE_BATTERY_LOW_PCT``: a device battery at or below this raises ``battery_low`` (default 20).
- ``RPM_EDGE_SILENT_AFTER_S``: a paired device without a reading for this long raises
  ``device_silent`` (default per kind: strap 1 h, CGM 30 min, meter 48 h).
- ``RPM_EDGE_SET_DEVICE_CLOCK``: the patient agreed that the agent sets their devices' clocks
  through the Current Time Service where a device allows it (default off: clocks are only read).

Plaintext MQTT carries the agent's password and the patient's readings in clear, so it is refused
unless the broker is on this host (loopback) or the operator opted in.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edge_agent import const
from edge_agent.errors import AgentConfigError
from rpm_core.errors import ConfigError
from rpm_core.settings import MqttSettings

_LOGGER = logging.getLogger(__name__)

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"", "0", "false", "no", "off"})
REGISTRY_FILE: Final = "pairings.json"
OUTBOX_FILE: Final = "outbox.sqlite3"
STATUS_FILE: Final = "status.json"


def default_state_dir(env: Mapping[str, str]) -> Path:
    """Where the agent keeps its state when ``RPM_EDGE_STATE`` is unset."""
    if env.get("STATE_DIRECTORY"):  # set by systemd's StateDirectory=
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "rpm-edge"
    return Path(env.get("HOME") or Path.home()) / ".local" / "state" / "rpm-edge"


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise AgentConfigError(f"{name}={value!r}: expected 1/0, true/false, yes/no or on/off")


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise AgentConfigError(f"{name}={text!r} is not a number") from None
    if not value > 0:
        raise AgentConfigError(f"{name}={text!r} must be greater than 0")
    return value


def _percent(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or not 1 <= int(text) <= 99:
        raise AgentConfigError(f"{name}={text!r} must be a whole percentage from 1 to 99")
    return int(text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine (``localhost`` or a loopback address)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Everything the edge agent needs to run, built once by :meth:`from_env`."""

    state_dir: Path
    mqtt_url: str | None = None
    mqtt_ca: str | None = None
    allow_plaintext: bool = False
    outbox_budget_bytes: int = const.DEFAULT_OUTBOX_BUDGET_BYTES
    mqtt_backoff_max_s: float = const.DEFAULT_MQTT_BACKOFF_MAX_S
    ble_backoff_max_s: float = const.DEFAULT_BLE_BACKOFF_MAX_S
    battery_low_pct: int = const.DEFAULT_BATTERY_LOW_PCT
    silent_after_s: float | None = None  # None: per device kind (const.DEVICE_SILENT_AFTER_S)
    set_device_clock: bool = False

    def __repr__(self) -> str:  # the URL may carry the agent's password
        return f"AgentSettings(state_dir={str(self.state_dir)!r}, mqtt={self.mqtt_url is not None})"

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        state_dir: str | None = None,
        mqtt_url: str | None = None,
        mqtt_ca: str | None = None,
        allow_plaintext: bool | None = None,
        outbox_max_mb: float | None = None,
    ) -> AgentSettings:
        """Read the ``RPM_*`` variables; keyword arguments (CLI flags) win over the environment."""
        env = os.environ if env is None else env
        budget_mb = outbox_max_mb or _positive(env, "RPM_EDGE_OUTBOX_MAX_MB", const.DEFAULT_OUTBOX_BUDGET_BYTES / 2**20)
        settings = cls(
            state_dir=Path(state_dir or env.get("RPM_EDGE_STATE") or default_state_dir(env)).expanduser(),
            mqtt_url=mqtt_url or env.get("RPM_MQTT_URL") or None,
            mqtt_ca=mqtt_ca or env.get("RPM_MQTT_CA") or None,
            allow_plaintext=_flag(env, "RPM_EDGE_ALLOW_PLAINTEXT") if allow_plaintext is None else allow_plaintext,
            outbox_budget_bytes=int(budget_mb * 2**20),
            mqtt_backoff_max_s=_positive(env, "RPM_EDGE_MQTT_BACKOFF_MAX_S", const.DEFAULT_MQTT_BACKOFF_MAX_S),
            ble_backoff_max_s=_positive(env, "RPM_EDGE_BLE_BACKOFF_MAX_S", const.DEFAULT_BLE_BACKOFF_MAX_S),
            battery_low_pct=_percent(env, "RPM_EDGE_BATTERY_LOW_PCT", const.DEFAULT_BATTERY_LOW_PCT),
            silent_after_s=_positive(env, "RPM_EDGE_SILENT_AFTER_S", 0.0) or None,
            set_device_clock=_flag(env, "RPM_EDGE_SET_DEVICE_CLOCK"),
        )
        if settings.mqtt_url:
            settings.mqtt()  # fail at start-up, naming the variable
        return settings

    @property
    def registry_path(self) -> Path:
        """The pairing registry (JSON)."""
        return self.state_dir / REGISTRY_FILE

    @property
    def status_path(self) -> Path:
        """What the running agent last knew (``rpm edge status`` reads it)."""
        return self.state_dir / STATUS_FILE

    @property
    def outbox_path(self) -> Path:
        """The outbox and watermarks (SQLite)."""
        return self.state_dir / OUTBOX_FILE

    def mqtt(self) -> MqttSettings:
        """The broker settings; refuses plaintext to a remote broker unless allowed."""
        if not self.mqtt_url:
            raise AgentConfigError("RPM_MQTT_URL is not set; expected mqtts://agent-<patient>:<password>@host:8883")
        try:
            mqtt = MqttSettings.from_url(self.mqtt_url, ca_file=self.mqtt_ca)
        except ConfigError as exc:
            raise AgentConfigError(str(exc)) from exc
        if not mqtt.tls and not self.allow_plaintext and not is_loopback(mqtt.host):
            raise AgentConfigError(
                f"RPM_MQTT_URL is plaintext mqtt:// to {mqtt.host}, which is not this host: use mqtts:// "
                "(and RPM_MQTT_CA), or set RPM_EDGE_ALLOW_PLAINTEXT=1 / --allow-plaintext on a trusted network"
            )
        if not mqtt.username:
            raise AgentConfigError("RPM_MQTT_URL has no user; each agent has its own, e.g. agent-p0001")
        return mqtt

    def ensure_state_dir(self) -> Path:
        """Create the state directory (0700: it holds health data) and return it.

        One that exists with access for others (made by hand or an installer with the default
        umask) is narrowed to 0700 and logged: the outbox and pairings in it are the patient's.
        """
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = stat.S_IMODE(self.state_dir.stat().st_mode)
        if mode & 0o077:
            self.state_dir.chmod(0o700)
            _LOGGER.warning("state directory %s was accessible to others (mode %04o): narrowed to 0700",
                            self.state_dir, mode)
        return self.state_dir
