"""The systemd units in deploy/: systemd accepts them, they are hardened, and they run commands our CLI accepts.

``systemd-analyze verify`` parses each unit as systemd would (a template as one of its instances)
and reports unknown directives, bad values, unresolvable specifiers and the like. The only
complaint accepted is the one this machine cannot avoid: the ExecStart binary under /opt/rpm is
not installed here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))
# The units we ship; a missing one fails here rather than silently dropping out of the checks.
SHIPPED = {"rpm-edge.service", "rpm-bridge@.service", "rpm-worker@.service", "rpm-nurse-station@.service",
           "rpm-notifier.service", "rpm-watchdog.service", "rpm-hl7@.service"}
INSTALLED_RPM = "/opt/rpm/.venv/bin/rpm"
# The instance each template is verified as (default "0").
INSTANCES = {"rpm-nurse-station@.service": "north", "rpm-hl7@.service": "nursecall"}
SERVER_HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    "PrivateDevices": "yes", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "MemoryDenyWriteExecute": "yes",
    "CapabilityBoundingSet": "", "SystemCallFilter": "@system-service",
}


@dataclass(frozen=True)
class Unit:
    """A unit file's settings: ``(section, key) -> every value, in order``."""

    path: Path
    settings: dict[tuple[str, str], list[str]]

    @property
    def is_template(self) -> bool:
        return self.path.name.endswith("@.service")

    def instance_name(self) -> str:
        """The file name of the unit as verified: a template as one of its instances."""
        if not self.is_template:
            return self.path.name
        return self.path.name.replace("@.service", f"@{INSTANCES.get(self.path.name, '0')}.service")

    def all(self, key: str, section: str = "Service") -> list[str]:
        return self.settings.get((section, key), [])

    def one(self, key: str, section: str = "Service") -> str:
        values = self.all(key, section)
        assert len(values) == 1, f"{self.path.name}: expected one {key}= in [{section}], found {values}"
        return values[0]


def parse_unit(path: Path) -> Unit:
    """Sections, keys and values of a unit file (comments, blank lines and continuations as systemd reads them)."""
    settings: dict[tuple[str, str], list[str]] = {}
    section = ""
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a Key=value line: {raw!r}"
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return Unit(path=path, settings=settings)


def exec_start(unit: Unit) -> list[str]:
    """The words of ExecStart=, without systemd's prefixes (``-``, ``@``, ``+``, ``!``, ``:``)."""
    words = shlex.split(unit.one("ExecStart"))
    words[0] = words[0].lstrip("-@+!:")
    return words


def unit_environment(unit: Unit) -> dict[str, str]:
    """What ExecStart= may rely on when no environment file exists: Environment= and systemd's own variables."""
    env: dict[str, str] = {}
    for value in unit.all("Environment"):
        for assignment in shlex.split(value):
            name, _, val = assignment.partition("=")
            env[name] = val
    for state in unit.all("StateDirectory"):
        env["STATE_DIRECTORY"] = ":".join(f"/var/lib/{d}" for d in state.split())
    return env


_SPECIFIER = re.compile(r"%(.)")
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def expand(unit: Unit, words: list[str]) -> list[str]:
    """ExecStart's words as systemd passes them, with the unit's defaults (``${V}``: one word; ``$V``: split)."""
    instance = INSTANCES.get(unit.path.name, "0") if unit.is_template else ""
    host = socket.gethostname()
    specifiers = {"i": instance, "I": instance, "H": host, "l": host.split(".")[0], "%": "%"}
    env = unit_environment(unit)

    def specifier(m: re.Match[str]) -> str:
        assert m.group(1) in specifiers, f"{unit.path.name}: specifier %{m.group(1)} not known to this test"
        return specifiers[m.group(1)]

    def variable(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in env, (f"{unit.path.name}: ExecStart uses ${name} but the unit sets no default for it "
                             f"(Environment=), so without the optional environment file the argument is empty")
        return env[name]

    out: list[str] = []
    for word in words:
        word = _SPECIFIER.sub(specifier, word)
        split = re.fullmatch(r"\$(\w+)", word) is not None  # $V alone: split at whitespace
        word = _VARIABLE.sub(variable, word)
        out.extend(word.split() if split else [word])
    return out


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze not found on PATH: it is part of Debian's 'systemd' package "
                    "(apt-get install systemd); the deploy/ units cannot be verified without it", pytrace=False)
    return path


def test_every_shipped_unit_is_there() -> None:
    assert {u.name for u in UNITS} >= SHIPPED


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_accepts_the_unit(path: Path, systemd_analyze: str, tmp_path: Path) -> None:
    unit = parse_unit(path)
    name = unit.instance_name()
    shutil.copyfile(path, tmp_path / name)
    executable = exec_start(unit)[0]
    result = subprocess.run(
        [systemd_analyze, "verify", "--man=no", "--generators=no", str(tmp_path / name)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_LOG_LOCATION": "0", "LC_ALL": "C"},
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    # Not installed on this machine: the one complaint we accept, and only about ExecStart's binary.
    not_installed = f"{name}: Command {executable} is not executable: No such file or directory"
    complaints = [line for line in lines if line != not_installed]
    assert not complaints, f"systemd-analyze verify {path.name} (as {name}):\n" + "\n".join(lines)
    if not_installed in lines:
        assert executable == INSTALLED_RPM and not Path(executable).exists()
    else:
        assert result.returncode == 0, "\n".join(lines)


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_restarts_unprivileged_with_its_configuration(path: Path) -> None:
    unit = parse_unit(path)
    assert unit.one("Restart") == "always"
    user = unit.one("User")
    assert user and user not in ("root", "0"), f"{path.name}: User={user}"
    assert unit.one("Group") not in ("root", "0")
    assert unit.all("EnvironmentFile"), f"{path.name}: no EnvironmentFile="
    assert unit.one("NoNewPrivileges") == "yes"
    assert exec_start(unit)[0] == INSTALLED_RPM


@pytest.mark.parametrize("path", [p for p in UNITS if p.name != "rpm-edge.service"], ids=lambda p: p.name)
def test_server_units_share_user_configuration_and_hardening(path: Path) -> None:
    unit = parse_unit(path)
    assert (unit.one("User"), unit.one("Group")) == ("rpm", "rpm")
    files = unit.all("EnvironmentFile")
    assert files[0] == "/etc/rpm/rpm.env", f"{path.name}: the shared file comes first and is required"
    assert all(f.startswith("-/etc/rpm/") for f in files[1:]), f"{path.name}: further files are optional: {files}"
    if unit.is_template:
        assert any("%i" in f for f in files[1:]), f"{path.name}: no per-instance environment file"
    for key, value in SERVER_HARDENING.items():
        assert value in unit.all(key), f"{path.name}: {key}={value} missing (have {unit.all(key)})"
    assert unit.all("StandardOutput") in ([], ["journal"]), f"{path.name}: logs go to the journal"


def test_each_bridge_instance_has_its_own_stable_client_id() -> None:
    words = exec_start(parse_unit(DEPLOY / "rpm-bridge@.service"))
    client_id = words[words.index("--client-id") + 1]
    assert "%i" in client_id and ("%l" in client_id or "%H" in client_id), client_id
    assert "$" not in client_id, "the client id must not depend on an environment file"


def test_each_worker_instance_has_its_own_data_directory() -> None:
    unit = parse_unit(DEPLOY / "rpm-worker@.service")
    words = exec_start(unit)
    assert unit.one("StateDirectory") == "rpm-worker"
    assert words[words.index("--data-dir") + 1] == "${STATE_DIRECTORY}/%i"
    assert int(unit.one("TimeoutStopSec")) >= 60


# Parses a command line as `rpm` would, without running it.
_PARSE_ONLY = "import sys; from rpm_app.cli import build_parser; build_parser().parse_args(sys.argv[1:])"


def _cli_env() -> dict[str, str]:
    """The environment without the developer's RPM_* settings (help texts and defaults depend on none)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_exec_start_is_a_command_line_our_cli_accepts(path: Path) -> None:
    unit = parse_unit(path)
    words = exec_start(unit)
    assert len(words) > 1 and not words[1].startswith("-"), f"{path.name}: put the subcommand first: {words}"
    # `edge run`, `bridge`, …: the words before the first option
    first_option = next((i for i, w in enumerate(words) if w.startswith("-")), len(words))
    command = words[1:first_option]
    shown = subprocess.run(
        [sys.executable, "-m", "rpm_app.cli", *command, "--help"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=_cli_env(),
    )
    assert shown.returncode == 0, f"{path.name}: `rpm {' '.join(command)} --help` failed:\n{shown.stderr}"
    helptext = shown.stdout
    options = [w.split("=", 1)[0] for w in words[first_option:] if w.startswith("--")]
    for option in options:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", helptext), (
            f"{path.name}: `rpm {' '.join(command)}` has no option {option}:\n{helptext}")
    # The whole command line, as systemd would pass it with the unit's defaults, parses.
    argv = expand(unit, words[1:])
    parsed = subprocess.run(
        [sys.executable, "-c", _PARSE_ONLY, *argv],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=_cli_env(),
    )
    assert parsed.returncode == 0, f"{path.name}: rpm {shlex.join(argv)}:\n{parsed.stderr}"
