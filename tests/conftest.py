"""Fixtures shared by every suite: real services on free loopback ports, stopped by PID.

Mosquitto, Tansu and InfluxDB each start in well under a second here, so pipeline tests get a
fresh stack of their own (``stack``): no test sees another's topics, sessions or points. Tests that
only need a database share one InfluxDB (``influx``) and use a database of their own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rpm_app.services import (
    INFLUX_ADMIN,
    ServiceProcess,
    Stack,
    influx_query,
    influx_users,
    start_influxdb,
    start_stack,
)
from rpm_core.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def _clean_settings(**kw: object) -> Settings:
    """Settings that ignore the developer's own RPM_* environment."""
    return Settings(rules_path=str(REPO / "alert_rules.yaml"), **kw)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _close_an_orphaned_event_loop() -> Iterator[None]:
    """Close the current event loop if the test left it unclosed and no longer current.

    pytest-asyncio leaves a fresh loop current after every async test; ``asyncio.run`` (in a test,
    or in a command a test runs in-process) ends by setting the current loop to None. The loop it
    replaced is then collected unclosed, and its ResourceWarning (an error here) is blamed on
    whichever later test the garbage collector happens to run in.
    """
    local = getattr(asyncio.get_event_loop_policy(), "_local", None)
    before = getattr(local, "_loop", None)
    yield
    after = getattr(local, "_loop", None)
    if before is not None and before is not after and not before.is_closed() and not before.is_running():
        before.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Mosquitto + Tansu + InfluxDB, fresh for this test."""
    st = start_stack(_clean_settings(), tmp_path / "services")
    try:
        yield st
    finally:
        st.stop()


@pytest.fixture(scope="session")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One InfluxDB for the session; tests create their own database (see ``influx_db``)."""
    svc = start_influxdb(tmp_path_factory.mktemp("influx"))
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def influx_url(influx: ServiceProcess) -> str:
    """URL of the session InfluxDB, with its admin's credentials in it (authentication is on; tests
    make a database each, which takes an admin)."""
    return influx_users(influx).url(INFLUX_ADMIN, f"http://{influx.host}:{influx.port}")


@pytest.fixture
def influx_db(influx_url: str) -> str:
    """A fresh database for this test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    influx_query(influx_url, f'CREATE DATABASE "{name}"')
    return name
