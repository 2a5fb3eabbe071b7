"""A second edge agent for the same patient refuses to start, with a message that says what to do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.lock import AgentAlreadyRunningError, AgentLock

HOLD = "import sys,time; from pathlib import Path; from edge_agent.lock import AgentLock\n" \
       "with AgentLock(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()"


def test_a_second_agent_on_the_same_state_refuses_while_the_first_runs_and_starts_after(tmp_path: Path) -> None:
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "held"
        with pytest.raises(AgentAlreadyRunningError, match=rf"pid {first.pid}.*systemctl stop rpm-edge"):
            AgentLock(tmp_path).__enter__()
    finally:
        first.kill()  # kill -9: the lock dies with the process
        first.communicate()
    with AgentLock(tmp_path):
        assert (tmp_path / "agent.lock").read_text().strip().isdigit()


def test_the_refusal_reaches_the_person_running_rpm_edge_run(tmp_path: Path) -> None:
    """Through the CLI: exit code and plain language, no traceback."""
    from edge_agent.pairing import DeviceInfo, DeviceKind, PairedDevice, Registry, RegistryStore

    RegistryStore(tmp_path / "pairings.json").save(Registry(patient="p1", devices=(
        PairedDevice(address="C0:FF:EE:00:00:01", kind=DeviceKind.HEART_RATE, name="strap",
                     info=DeviceInfo(serial="1"), bonded=True),)))
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "held"
        done = subprocess.run([sys.executable, "-m", "rpm_app.cli", "edge", "run", "--state-dir", str(tmp_path)],
                              env={"PATH": "/usr/bin:/bin", "RPM_MQTT_URL": "mqtt://agent-p1:pw@127.0.0.1:1",
                                   "HOME": str(tmp_path)},
                              capture_output=True, text=True, timeout=120, check=False)
    finally:
        first.kill()
        first.communicate()
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in out, out
    assert "another edge agent is already running" in out and "systemctl stop rpm-edge" in out, out
