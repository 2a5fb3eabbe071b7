"""The house's layers, proved by reading every import (module-level and lazy ones alike).

From the bottom up::

    detectors      pure detection: numpy and the standard library, nothing of ours
    rpm_core       the ground floor: wire contracts (readings, alerts, acknowledgements, patient
                   commands, technical alerts, dead letters, topics), settings, errors, rules,
                   the InfluxDB writer, MQTT users, files; depends on detectors alone
    edge_agent     the patient's gateway                      } services: the core below them,
    stream         bridge, worker, watchdog                   } never the application layer nor
    notify         the notifier                               } each other (but the simulators,
    station        the nurse station                          } which drive the edge's codecs)
    simulators     virtual patients and devices               }
    hl7out, rpm_app  applications: the rpm command, demo, launcher, reports, exports, admin tools

A lower layer never imports a higher one, and the notifier knows the others only through the
core's contracts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_STREAM_FUNCTION_LINES = 60
PACKAGES = ("detectors", "rpm_core", "edge_agent", "stream", "notify", "station", "simulators", "hl7out", "rpm_app")
# What each package may import of ours besides itself.
ALLOWED: dict[str, frozenset[str]] = {
    "detectors": frozenset(),
    "rpm_core": frozenset({"detectors"}),
    "edge_agent": frozenset({"rpm_core"}),
    "stream": frozenset({"rpm_core", "detectors"}),
    "notify": frozenset({"rpm_core", "detectors"}),
    "station": frozenset({"rpm_core", "detectors"}),
    "simulators": frozenset({"rpm_core", "edge_agent"}),
    "hl7out": frozenset({"rpm_core", "detectors", "rpm_app"}),
    "rpm_app": frozenset(PACKAGES) - {"rpm_app"},
}


def _ours(package: str) -> dict[str, set[str]]:
    """``{file: {package of ours it imports}}`` for every module of ``package``."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        tops: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                tops |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = {t for t in tops if t in PACKAGES and t != package}
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_a_layer_imports_only_what_lies_below_it(package: str) -> None:
    bad = {f: sorted(tops - ALLOWED[package]) for f, tops in _ours(package).items() if tops - ALLOWED[package]}
    assert bad == {}, f"{package} may import only {sorted(ALLOWED[package])}"


def test_the_check_sees_imports() -> None:
    """The scan is not vacuous: known edges are found, lazy imports included."""
    assert "rpm_core" in _ours("stream")["stream/worker.py"]
    assert "stream" in _ours("rpm_app")["rpm_app/cli.py"]  # a lazy import inside a function


def test_every_cross_process_contract_is_in_the_core() -> None:
    contracts = {"wire.py": "readings and alerts", "acks.py": "acknowledgements", "commands.py": "patient commands",
                 "technical.py": "technical alerts and heartbeats", "deadletter.py": "dead letters",
                 "topics.py": "Kafka topics"}
    assert {name for name in contracts if (REPO / "rpm_core" / name).is_file()} == set(contracts)



def test_no_function_in_stream_exceeds_sixty_lines() -> None:
    long: dict[str, int] = {}
    for path in sorted((REPO / "stream").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_STREAM_FUNCTION_LINES:
                    long[f"{path.relative_to(REPO)}:{node.lineno} {node.name}"] = lines
    assert long == {}
