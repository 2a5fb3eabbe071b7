"""``rpm demo`` stops on Ctrl-C and on SIGTERM, and takes every process it started with it.

The demo runs as a real child (its own services, bridge, worker, nurse station, watchdog and simulator
processes). Once every one of them runs, it gets the signal the way an operator sends it: Ctrl-C
in a terminal signals the whole foreground process group (the demo and its simulator processes;
the services run in sessions of their own), ``kill``/systemd signals the demo's pid only. Then
every process that descended from the demo must be gone. The deadlines are generous limits for a
loaded machine, not measurements of speed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.procs import eventually, rpm_argv

pytestmark = [pytest.mark.services, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 240.0
STOP_DEADLINE_S = 60.0


def _role(proc: psutil.Process) -> str | None:
    """Which of the demo's processes ``proc`` is (None for helpers such as multiprocessing's tracker)."""
    try:
        argv = proc.cmdline()
    except psutil.Error:
        return None
    text = " ".join(argv)
    if not argv:
        return None
    name = Path(argv[0]).name
    if name in {"mosquitto", "influxd"}:
        return name
    if "--listener-url" in argv:
        return "tansu"
    if "rpm_app.cli" in argv:
        return next((a for a in argv if a in {"bridge", "worker", "nurse-station", "watchdog"}), None)
    if "spawn_main" in text and "resource_tracker" not in text:
        return "simulator"
    return None


ROLES = {"mosquitto", "tansu", "influxd", "bridge", "worker", "nurse-station", "watchdog", "simulator"}


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(procs: list[psutil.Process]) -> list[str]:
    """``role:pid`` of the processes of ``procs`` that still run (zombies count as gone)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{_role(p) or p.name()}:{p.pid}")
        except psutil.NoSuchProcess:
            continue
    return out


# Execs the command given with SIGINT ignored and SIGINT and SIGTERM blocked: the state a demo inherits
# across exec when started from a shell's background job (SIGINT ignored) or from a thread or process
# that had them blocked (multiprocessing's resource tracker blocks both while it spawns). Same pid.
HOSTILE_EXEC = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}); "
                "os.execv(sys.argv[1], sys.argv[1:])")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``rpm demo`` running until told to stop, with services of its own; everything killed by pid after.

    It starts with SIGINT ignored and both signals blocked (``HOSTILE_EXEC``): Ctrl-C and SIGTERM must
    stop it anyway (it resets them), or an operator's Ctrl-C would be ignored for ever.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPM_")}
    env.update({"PYTHONUNBUFFERED": "1", "RPM_RULES": str(REPO / "alert_rules.yaml")})
    demo_argv = rpm_argv("demo", "--patients", "4", "--history", "60", "--station-port", "0",
                         "--workdir", str(tmp_path / "demo"))
    argv = [demo_argv[0], "-c", HOSTILE_EXEC, *demo_argv]
    with (tmp_path / "demo.out").open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    seen: list[psutil.Process] = []
    proc.seen = seen  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        for p in [*seen, *_descendants(proc.pid)]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                continue
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _running_everything(demo: subprocess.Popen[bytes], workdir: Path) -> list[psutil.Process]:
    """Every process of the demo, once all run and the simulator publishes (it is connected to Mosquitto)."""
    broker_log = workdir / "demo" / "services" / "mosquitto" / "mosquitto.log"

    def probe() -> list[psutil.Process]:
        if demo.poll() is not None:
            raise AssertionError(f"rpm demo exited with {demo.returncode}:\n{(workdir / 'demo.out').read_text()}")
        return _descendants(demo.pid)

    def up(procs: list[psutil.Process]) -> bool:
        log = broker_log.read_text(errors="replace") if broker_log.is_file() else ""
        simulating = re.search(r"New client connected .* as \S*rpm-sim-", log) is not None
        return simulating and ROLES <= {_role(p) for p in procs}

    return eventually(probe, up, timeout=START_DEADLINE_S,
                      what="rpm demo with every process it starts and a connected simulator")


@pytest.mark.parametrize(
    ("sig", "whole_group", "code"),
    [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)],
    ids=["ctrl-c", "sigterm"],
)
def test_demo_stops_every_child(
    demo: subprocess.Popen[bytes], tmp_path: Path, sig: signal.Signals, whole_group: bool, code: int
) -> None:
    log = tmp_path / "demo.out"
    kids = _running_everything(demo, tmp_path)
    demo.seen.extend(kids)  # type: ignore[attr-defined]
    assert len(kids) >= len(ROLES)
    if whole_group:
        os.killpg(demo.pid, sig)  # what a terminal's Ctrl-C does
    else:
        demo.send_signal(sig)
    try:
        demo.wait(timeout=STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"rpm demo still runs {STOP_DEADLINE_S:.0f} s after {sig.name}; children alive: "
                    f"{_alive(kids)}\n{log.read_text()[-3000:]}")
    eventually(lambda: _alive(kids), lambda alive: not alive, timeout=STOP_DEADLINE_S,
               what=f"every child of rpm demo gone after {sig.name}")
    assert demo.returncode == code, log.read_text()[-3000:]
    assert "stopping" in log.read_text()
