"""Prometheus metrics: the exposition text and the bridge's /metrics page."""

from __future__ import annotations

import re
import urllib.request

import pytest

from rpm_app.services import Stack
from stream.bridge import BridgeStats
from stream.metrics import Metric, bridge_metrics, render
from tests.support.procs import running, spawn_bridge

VALUE = r'"(?:[^"\\]|\\.)*"'
LINE = re.compile(rf"^[a-z_]+(\{{[a-z_]+={VALUE}(,[a-z_]+={VALUE})*\}})? -?[0-9.e+-]+$")


def test_rendered_text_is_valid_exposition_format() -> None:
    text = render([Metric("rpm_x_total", "counter", "X", [({"reason": 'bad "json"\n'}, 3.0), ({}, 1.5)])])
    lines = text.splitlines()
    assert lines[:2] == ["# HELP rpm_x_total X", "# TYPE rpm_x_total counter"]
    assert lines[2] == 'rpm_x_total{reason="bad \\"json\\"\\n"} 3'
    assert all(LINE.match(line) for line in lines[2:])


def test_bridge_metrics_carry_the_counters() -> None:
    stats = BridgeStats(messages_in=7, readings_out=70, deadlettered=2)
    stats.reasons.counts["not JSON"] = 2
    text = render(bridge_metrics(stats, connected=True, subscribed=False))
    assert "rpm_bridge_messages_in_total 7" in text and "rpm_bridge_readings_out_total 70" in text
    assert 'rpm_bridge_deadletter_reasons_total{reason="not JSON"} 2' in text
    assert "rpm_bridge_subscribed 0" in text


@pytest.mark.services
def test_running_bridge_serves_metrics(stack: Stack, tmp_path: object) -> None:
    from pathlib import Path

    bridge = spawn_bridge(stack, Path(str(tmp_path)))
    with running(bridge), urllib.request.urlopen(f"http://127.0.0.1:{bridge.port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
        assert resp.headers["Content-Type"].startswith("text/plain")
    assert "rpm_bridge_mqtt_connected 1" in text and "rpm_bridge_subscribed 1" in text
