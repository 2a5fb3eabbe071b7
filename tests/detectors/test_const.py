"""``detectors.const`` duplicates a few wire constants (detectors may not import rpm_core): keep them equal."""

from __future__ import annotations

from detectors import const
from rpm_core import wire


def test_metric_codes_follow_the_wire_order() -> None:
    assert const.METRIC_NAMES == wire.METRICS
    assert [const.HEART_RATE, const.RR_INTERVAL, const.GLUCOSE] == [
        wire.METRICS.index(m) for m in ("heart_rate", "rr_interval", "glucose")
    ]


def test_quality_flags_equal_the_wire_flags() -> None:
    assert const.FLAG_CONTACT_LOST == wire.SampleFlag.CONTACT_LOST
    assert const.FLAG_DEVICE_WARNING == wire.SampleFlag.DEVICE_WARNING
    assert const.FLAG_LOW_QUALITY == wire.SampleFlag.LOW_QUALITY
    assert const.ALL_QUALITY_FLAGS == wire.QUALITY_FLAGS
    assert const.FLAG_ABOVE_RANGE == wire.SampleFlag.ABOVE_RANGE
    assert const.FLAG_BELOW_RANGE == wire.SampleFlag.BELOW_RANGE
    assert const.RANGE_FLAGS == wire.RANGE_FLAGS
    assert const.ALL_QUALITY_FLAGS | const.RANGE_FLAGS == wire.ALL_FLAGS


def test_every_metric_has_a_unit_and_label() -> None:
    for metric in wire.METRICS:
        assert const.METRIC_UNITS[metric]
        assert const.METRIC_LABELS[metric]
