"""At rest (issue 18, item 6): what the edge agent keeps on disk is its user's alone.

The agent's state directory holds the patient's unsent readings (the SQLite outbox and its WAL),
the pairings, the status file, the lock and, when provisioned here, the MQTT password. Every file
must be 0600 and the directory 0700 whatever the process umask is (a service manager may run it
with ``UMask=0000``), and another local user must not be able to read any of it. Disk encryption
(docs/security.md, "At rest") covers the disk being taken; this covers the other users of the box.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.agent import write_status_file
from edge_agent.config import AgentSettings
from edge_agent.lock import AgentLock
from edge_agent.outbox import Entry, Outbox
from edge_agent.pairing import DeviceInfo, DeviceKind, PairedDevice, RegistryStore
from rpm_core.mqtt_users import Credentials, write_credential_file
from rpm_core.settings import Secret

T0 = 1_710_489_600.0


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """The most permissive umask there is: nothing may depend on the umask being kind."""
    before = os.umask(0)
    try:
        yield
    finally:
        os.umask(before)


@contextlib.contextmanager
def filled_state_dir(state: Path) -> Iterator[AgentSettings]:
    """Everything the agent writes, written by the agent's own code; the outbox open (so its WAL
    and shared-memory files exist) and the lock held while the block runs."""
    settings = AgentSettings(state_dir=state)
    with AgentLock(settings.ensure_state_dir()):
        outbox = Outbox(settings.outbox_path)
        try:
            outbox.append([Entry("hr-A", (("heart_rate", T0 + i, 60.0 + i, 0),)) for i in range(50)])
            assert Path(f"{settings.outbox_path}-wal").exists(), "the WAL holds readings too; it is checked below"
            store = RegistryStore(settings.registry_path)
            device = PairedDevice(address="C0:FF:EE:00:00:01", kind=DeviceKind.HEART_RATE, name="HR",
                                  info=DeviceInfo("Acme", "HR-1", "SN1", "1.0"), battery_pct=80, bonded=True,
                                  paired_at="2024-03-15T08:00:00+00:00")
            with store.locked() as registry:
                store.save(registry.with_device("p0001", device))
            write_status_file(settings.status_path, {"patient": "p0001", "devices": [device.device_id]})
            write_credential_file(state / "mqtt-password", Credentials("agent-p0001", Secret("s3cret-Pa55-word")))
            yield settings
        finally:
            outbox.close()


def modes(state: Path) -> dict[str, int]:
    return {str(p.relative_to(state.parent)): stat.S_IMODE(p.stat().st_mode) for p in [state, *state.rglob("*")]}


@pytest.mark.usefixtures("umask_zero")
def test_every_file_of_the_agent_is_0600_and_its_directory_0700_even_with_umask_0(tmp_path: Path) -> None:
    state = tmp_path / "edge"
    with filled_state_dir(state):
        found = modes(state)
    names = {Path(name).name for name in found}
    assert {"outbox.sqlite3", "outbox.sqlite3-wal", "outbox.sqlite3-shm", "pairings.json", "pairings.json.lock",
            "status.json", "mqtt-password"} <= names, names
    wrong = {name: f"{mode:04o}" for name, mode in found.items()
             if mode != (0o700 if (tmp_path / name).is_dir() else 0o600)}
    assert wrong == {}, "files others could read, or directories others could enter"


def test_an_existing_state_directory_open_to_others_is_narrowed_to_0700(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "edge"
    state.mkdir()
    state.chmod(0o755)  # made by hand, or by an installer with the usual umask
    AgentSettings(state_dir=state).ensure_state_dir()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert "narrowed to 0700" in caplog.text


def test_another_local_user_cannot_read_the_outbox_the_pairings_or_the_password() -> None:
    """Acting as another user (``runuser -u nobody``) takes root: the test container runs as root."""
    assert os.geteuid() == 0 and shutil.which("runuser"), "run the security tests as root (the CI container)"
    # pytest's own temporary directories are 0700: a directory of our own that others may enter,
    # so that only the agent's directory and files stand between the other user and the data
    with tempfile.TemporaryDirectory(prefix="rpm-at-rest-", dir="/tmp") as top:
        Path(top).chmod(0o755)
        control = Path(top) / "public.txt"
        control.write_text("anyone\n")
        control.chmod(0o644)
        assert as_nobody("cat", str(control)).returncode == 0, "the other user can reach this directory"
        state = Path(top) / "edge"
        with filled_state_dir(state):
            for name in ("outbox.sqlite3", "outbox.sqlite3-wal", "pairings.json", "mqtt-password", "status.json"):
                assert (state / name).exists(), name
                done = as_nobody("cat", str(state / name))
                assert done.returncode != 0 and "Permission denied" in done.stderr, (name, done.stderr)
            listing = as_nobody("ls", str(state))
            assert listing.returncode != 0 and "Permission denied" in listing.stderr


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "nobody", "--", *argv], capture_output=True, text=True, timeout=30,
                          check=False)
