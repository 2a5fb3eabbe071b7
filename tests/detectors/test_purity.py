"""``detectors`` must import with numpy and scipy alone: no I/O stacks, no config parsers (DESIGN.md)."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("faust", "bleak", "paho", "aiokafka", "yaml", "pydantic", "asyncio", "mode", "influxdb_client", "orjson")

_PROBE = """
import json, sys
before = set(sys.modules)
import detectors, detectors.engine, detectors.threshold, detectors.episodes, detectors.rules
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _loaded_by_import() -> list[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout)


def test_importing_detectors_loads_no_io_or_config_library() -> None:
    loaded = _loaded_by_import()
    bad = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    assert bad == []


def test_detectors_depend_on_numpy_scipy_and_the_standard_library_only() -> None:
    roots = {m.split(".")[0] for m in _loaded_by_import()}
    third_party = {r for r in roots if r not in sys.stdlib_module_names and not r.startswith("_")}
    assert third_party <= {"detectors", "numpy", "scipy"}
