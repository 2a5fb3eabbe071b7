"""Prometheus metrics for the bridge and the worker, rendered from the counters they already keep.

The text exposition format (``text/plain; version=0.0.4``) is rendered at scrape time from the
``*Stats`` dataclasses, so the hot path only increments plain integers and nothing here needs a
process-global registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Metric:
    """One metric family: name, type (counter|gauge), help and its samples (labels → value)."""

    name: str
    kind: str
    help: str
    samples: list[tuple[Mapping[str, str], float]] = field(default_factory=list)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items())) + "}"


def render(metrics: Iterable[Metric]) -> str:
    """The exposition text of ``metrics``."""
    lines: list[str] = []
    for m in metrics:
        lines += [f"# HELP {m.name} {m.help}", f"# TYPE {m.name} {m.kind}"]
        lines += [f"{m.name}{_labels(labels)} {value:.17g}" for labels, value in m.samples]
    return "\n".join(lines) + "\n"


def counter(name: str, help_text: str, value: float, **labels: str) -> Metric:
    """A counter with one sample."""
    return Metric(name, "counter", help_text, [(labels, float(value))])


def gauge(name: str, help_text: str, value: float, **labels: str) -> Metric:
    """A gauge with one sample."""
    return Metric(name, "gauge", help_text, [(labels, float(value))])


def by_label(name: str, kind: str, help_text: str, label: str, values: Mapping[str, Any]) -> Metric:
    """One sample per key of ``values``, labelled ``label=key``."""
    return Metric(name, kind, help_text, [({label: str(k)}, float(v)) for k, v in sorted(values.items())])


def bridge_metrics(stats: Any, *, connected: bool, subscribed: bool) -> list[Metric]:
    """Metrics of one bridge (``stream.bridge.BridgeStats``)."""
    return [
        counter("rpm_bridge_messages_in_total", "MQTT messages received", stats.messages_in),
        counter("rpm_bridge_readings_out_total", "Readings produced to rpm.readings", stats.readings_out),
        counter("rpm_bridge_records_out_total", "Kafka records produced to rpm.readings", stats.records_out),
        counter("rpm_bridge_deadlettered_total", "Messages sent to rpm.deadletter", stats.deadlettered),
        counter("rpm_bridge_produce_retries_total", "Kafka produce attempts retried", stats.produce_retries),
        by_label("rpm_bridge_deadletter_reasons_total", "counter", "Dead-lettered messages by kind of reason",
                 "reason", stats.reasons.counts),
        gauge("rpm_bridge_mqtt_connected", "1 while connected to MQTT", float(connected)),
        gauge("rpm_bridge_subscribed", "1 while subscribed to the readings topics", float(subscribed)),
    ]


def worker_metrics(stats: Any, sink_stats: Any, alerts_by: Mapping[str, int]) -> list[Metric]:
    """Metrics of one worker (``stream.pipeline.PipelineStats`` and ``stream.sink.SinkStats``)."""
    return [
        counter("rpm_worker_records_total", "rpm.readings records processed", stats.records),
        counter("rpm_worker_readings_total", "Readings processed", stats.samples),
        counter("rpm_worker_batches_total", "Micro-batches processed", stats.batches),
        counter("rpm_worker_detector_seconds_total", "Time spent in the detectors", stats.detector_s),
        counter("rpm_worker_alert_events_total", "Alert state changes published", stats.alerts),
        by_label("rpm_worker_alert_events_by_total", "counter", "Alert state changes by rule/state",
                 "rule_state", alerts_by),
        counter("rpm_worker_deadlettered_total", "Inputs sent to rpm.deadletter", stats.deadlettered),
        counter("rpm_worker_state_checkpoints_total", "Patient states written to the state table", stats.checkpoints),
        counter("rpm_worker_acks_total", "Acknowledgements applied", stats.acks),
        counter("rpm_sink_lines_written_total", "Line-protocol lines written to InfluxDB", sink_stats.lines_written),
        counter("rpm_sink_writes_total", "InfluxDB write requests that succeeded", sink_stats.writes),
        counter("rpm_sink_retries_total", "InfluxDB write attempts retried", sink_stats.retries),
        counter("rpm_sink_rejected_lines_total", "Lines InfluxDB refused (dead-lettered)", sink_stats.rejected_lines),
    ]
