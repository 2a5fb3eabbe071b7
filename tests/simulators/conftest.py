"""Fixtures for the simulator tests."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from simulators.bluez import DEBIAN_PYTHON

_INSTALL_HINT = "install them with: apt-get install dbus-daemon python3-dbusmock (CI does)"


@pytest.fixture(scope="session")
def bluez_prerequisites() -> None:
    """Fail early, with the fix, when the BlueZ emulation cannot run here.

    bleak's BlueZ backend only exists on Linux; elsewhere the tests are skipped. On Linux a
    missing ``dbus-daemon`` or Debian python3-dbus/python3-gi is an error, not a skip, so CI
    cannot go green without running them.
    """
    if sys.platform != "linux":
        pytest.skip("bleak uses BlueZ only on Linux")
    if shutil.which("dbus-daemon") is None:
        pytest.fail(f"dbus-daemon not found; {_INSTALL_HINT}")
    probe = subprocess.run(
        [DEBIAN_PYTHON, "-I", "-c", "import dbus, dbus.mainloop.glib, gi.repository.GLib"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    if probe.returncode != 0:
        pytest.fail(f"{DEBIAN_PYTHON} lacks python3-dbus/python3-gi ({probe.stderr.decode()[-300:]}); {_INSTALL_HINT}")
