"""Prometheus metrics for the bridge and the worker, rendered from the counters they already keep.

The text exposition format (``text/plain; version=0.0.4``) is rendered at scrape time from the
``*Stats`` dataclasses, so the hot path only increments plain integers and nothing here needs a
process-global registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Metric:
    """One metric family: name, type (counter|gauge|histogram), help and its samples (labels → value).

    ``suffixed`` samples are named ``name + suffix`` (a histogram's ``_bucket``, ``_sum``, ``_count``).
    """

    name: str
    kind: str
    help: str
    samples: list[tuple[Mapping[str, str], float]] = field(default_factory=list)
    suffixed: list[tuple[str, Mapping[str, str], float]] = field(default_factory=list)


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
        lines += [f"{m.name}{suffix}{_labels(labels)} {value:.17g}" for suffix, labels, value in m.suffixed]
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


def histogram(name: str, help_text: str, bounds: Sequence[float], counts: Sequence[int], total: float) -> Metric:
    """A histogram from per-bucket counts (``counts[i]``: observations ``<= bounds[i]`` and above the
    previous bound; one more for ``+Inf``) and the sum of the observations."""
    samples: list[tuple[str, Mapping[str, str], float]] = []
    running = 0
    for bound, n in zip([*(f"{b:.17g}" for b in bounds), "+Inf"], counts, strict=True):
        running += n  # buckets are cumulative in the exposition format
        samples.append(("_bucket", {"le": bound}, float(running)))
    samples += [("_sum", {}, float(total)), ("_count", {}, float(running))]
    return Metric(name, "histogram", help_text, suffixed=samples)


def worker_metrics(stats: Any, sink_stats: Any, *, status: Any = None, rebalancing: bool = False,
                   now: float = 0.0, store: Any = None) -> list[Metric]:
    """Metrics of one worker (``stream.pipeline.PipelineStats``, ``rpm_core.sink.SinkStats`` and
    ``stream.protocol.WorkerStatus``; ``now``: ``time.monotonic()``, for how long a failure lasts;
    ``store``: the worker's ``stream.agents.TableStore``, for its changelog failures)."""
    from stream.pipeline import BATCH_BUCKETS

    alerts = Metric("rpm_worker_alert_events_total", "counter", "Alert state changes published, by rule and state",
                    [({"rule": r, "state": st}, float(n)) for (r, st), n in sorted(stats.alerts_by.items())])
    out = [
        counter("rpm_worker_records_total", "rpm.readings records processed", stats.records),
        counter("rpm_worker_readings_total", "Readings processed", stats.samples),
        counter("rpm_worker_batches_total", "Micro-batches processed (a batch beyond the slice bound: each slice)",
                stats.batches),
        histogram("rpm_worker_batch_records", "Records per micro-batch (per slice)", BATCH_BUCKETS, stats.batch_records,
                  stats.records),
        counter("rpm_worker_detector_seconds_total", "Time spent in the detectors", stats.detector_s),
        counter("rpm_worker_handle_seconds_total", "Time spent handling batches, waits included", stats.handle_s),
        alerts,
        counter("rpm_worker_deadlettered_total", "Inputs sent to rpm.deadletter", stats.deadlettered),
        by_label("rpm_worker_deadletter_reasons_total", "counter", "Dead-lettered inputs by kind of reason",
                 "reason", stats.reasons.counts),
        counter("rpm_worker_state_checkpoints_total", "Patient states written to the state table", stats.checkpoints),
        counter("rpm_worker_state_loads_total", "Patient states restored from the state table", stats.state_loads),
        counter("rpm_worker_state_resets_total", "Patients started afresh: their stored state was unreadable",
                stats.state_resets),
        counter("rpm_worker_reloads_total", "Detector engine rebuilds from the state table", stats.reloads),
        counter("rpm_worker_ticks_total", "Time-driven detector runs (escalation, staleness)", stats.ticks),
        counter("rpm_worker_acks_total", "Acknowledgements applied", stats.acks),
        gauge("rpm_worker_patients", "Patients whose detector state this worker holds", stats.patients),
        gauge("rpm_worker_enrolled_patients", "Roster patients enrolled for staleness on this worker", stats.enrolled),
        counter("rpm_sink_lines_written_total", "Line-protocol lines written to InfluxDB", sink_stats.lines_written),
        counter("rpm_sink_writes_total", "InfluxDB write requests that succeeded", sink_stats.writes),
        counter("rpm_sink_retries_total", "InfluxDB write attempts retried", sink_stats.retries),
        counter("rpm_sink_write_seconds_total", "Time spent waiting for InfluxDB to take writes", sink_stats.write_s),
        counter("rpm_sink_rejected_lines_total", "Lines InfluxDB refused (dead-lettered)", sink_stats.rejected_lines),
        counter("rpm_sink_limit_refused_lines_total",
                "Lines dead-lettered because an InfluxDB limit refuses their series (also in rejected)",
                sink_stats.limit_refused),
        gauge("rpm_sink_limited", "1 while an InfluxDB limit refuses the points of new series",
              float(sink_stats.limit is not None)),
        gauge("rpm_worker_rebalancing", "1 while the consumer group rebalances", float(rebalancing)),
    ]
    if store is not None and hasattr(store, "failed_records"):
        out += _store_metrics(store)
    if status is not None:
        out += [
            gauge("rpm_worker_assigned_partitions", "rpm.readings partitions owned by this worker",
                  len(status.partitions)),
            gauge("rpm_worker_roster_patients", "Patients in the roster", len(status.roster)),
            counter("rpm_worker_batch_failures_total", "Failed attempts of batches (each is retried)",
                    status.batch_failures),
            gauge("rpm_worker_failing_seconds",
                  "How long the batch or InfluxDB write under way has been failing (0: none is)",
                  status.failing_for(now, sink_stats.failing_since)),
            gauge("rpm_worker_behind_seconds", "How long the last batch's oldest record waited in Kafka",
                  status.behind_for(now)),
        ]
    return out


def _store_metrics(store: Any) -> list[Metric]:
    """The state changelog's failures (``stream.agents.TableStore``)."""
    return [
        counter("rpm_worker_state_changelog_failures_total",
                "Detector states whose changelog record Kafka failed (each is sent again)", store.failed_records),
        counter("rpm_worker_state_changelog_dropped_total",
                "Failed changelog records not sent again: their partition had moved to another worker",
                store.dropped_records),
        gauge("rpm_worker_state_unsaved_patients",
              "Patients whose detector state failed to reach the changelog and is not there yet", store.unsaved),
    ]
