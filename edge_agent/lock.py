"""One agent per state directory: a second ``rpm edge run`` for the same patient refuses to start.

Two agents of one patient (the systemd service and a hand-run ``rpm edge run``) share the patient's
MQTT client ids, so the broker hands the session to whichever connected last: they knock each other
off every few seconds, each believing the broker flaky, and both read the same devices. The lock
is an ``flock`` on ``<state dir>/agent.lock``; it dies with the process (kill -9 included), so a
crashed agent never blocks the next start.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from edge_agent.errors import AgentConfigError

LOCK_FILE = "agent.lock"


class AgentAlreadyRunningError(AgentConfigError):
    """Another edge agent runs with this state directory (this patient)."""


class AgentLock:
    """``with AgentLock(state_dir):`` — held while the agent runs."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._handle: IO[str] | None = None

    def __enter__(self) -> AgentLock:
        # 0600 like everything in the state directory, whatever the umask (issue 18: at rest)
        handle = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600), "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise AgentAlreadyRunningError(
                f"another edge agent is already running for this patient (pid {holder}, state {self.path.parent}); "
                "two agents would take the same MQTT session from each other every few seconds. Stop the other "
                "one first (sudo systemctl stop rpm-edge), or check on it with: rpm edge status") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
