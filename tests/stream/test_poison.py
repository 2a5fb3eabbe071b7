"""A batch that keeps failing: outages are waited out, a poison record is isolated and dead-lettered,
and a worker stuck on a failure says so in /healthz and /metrics."""

from __future__ import annotations

import types
from typing import Any

import pytest

from rpm_core.errors import SinkUnavailableError
from rpm_core.sink import SinkStats
from stream.metrics import render, worker_metrics
from stream.pipeline import DictStore, PipelineStats
from stream.protocol import ISOLATE_AFTER, STUCK_AFTER_S, WorkerStatus, isolate_poison, until_done
from stream.worker import health


class Bug(Exception):
    """Stands for a defect of ours that one particular record triggers."""


class Engine:
    """The part of the pipeline isolate_poison drives: records processed since the last rebuild."""

    def __init__(self, poison: set[bytes], outage: bool = False) -> None:
        self.poison, self.outage = poison, outage
        self.seen: list[bytes] = []
        self.rebuilds = 0
        self.deadlettered: list[tuple[bytes, str]] = []

    async def handle(self, values: list[bytes]) -> None:
        if self.outage:
            raise SinkUnavailableError("InfluxDB unreachable")
        for value in values:
            self.seen.append(value)  # a half-done effect, as a real failure may leave
            if value in self.poison:
                raise Bug(f"cannot process {value!r}")

    def rebuild(self) -> None:
        self.rebuilds += 1
        self.seen.clear()

    async def deadletter(self, value: bytes, reason: str) -> None:
        self.deadlettered.append((value, reason))


async def test_poison_records_are_dead_lettered_and_the_rest_processed_by_a_clean_engine() -> None:
    engine = Engine(poison={b"P", b"Q"})
    values = [b"a", b"P", b"b", b"Q", b"c"]
    assert await isolate_poison(values, engine.handle, engine.rebuild, engine.deadletter) == [1, 3]
    assert engine.seen == [b"a", b"b", b"c"], "the engine saw exactly the good records since its last rebuild"
    assert engine.rebuilds == 2
    assert [(v, r.split(":")[0]) for v, r in engine.deadlettered] == [(b"P", "processing failed"),
                                                                     (b"Q", "processing failed")]
    assert engine.deadlettered[0][1] == "processing failed: Bug", "the reason names the error, not the record"


async def test_an_outage_during_isolation_is_not_mistaken_for_poison() -> None:
    engine = Engine(poison=set(), outage=True)
    with pytest.raises(SinkUnavailableError):
        await isolate_poison([b"a", b"b"], engine.handle, engine.rebuild, engine.deadletter)
    assert engine.deadlettered == []


async def test_a_batch_failing_for_a_bug_is_isolated_after_a_few_attempts() -> None:
    engine = Engine(poison={b"P"})
    values = [b"a", b"P", b"b"]
    status = WorkerStatus()

    async def step() -> None:
        await engine.handle(values)

    async def isolate() -> None:
        await isolate_poison(values, engine.handle, engine.rebuild, engine.deadletter)

    await until_done("batch", step, before_retry=engine.rebuild, isolate=isolate, status=status,
                     first_delay=0.001, max_delay=0.002)
    assert status.batch_failures == ISOLATE_AFTER
    assert status.failing_since is None, "no failure under way once the batch is done"
    assert [v for v, _ in engine.deadlettered] == [b"P"] and engine.seen == [b"a", b"b"]


async def test_an_outage_is_waited_out_however_long_and_never_isolates() -> None:
    calls = 0
    isolated = False

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls <= 3 * ISOLATE_AFTER:
            raise SinkUnavailableError("InfluxDB unreachable")

    async def isolate() -> None:
        nonlocal isolated
        isolated = True

    status = WorkerStatus()
    await until_done("batch", step, isolate=isolate, status=status, first_delay=0.001, max_delay=0.002)
    assert calls == 3 * ISOLATE_AFTER + 1 and not isolated
    assert status.batch_failures == 3 * ISOLATE_AFTER


def fake_app() -> Any:
    return types.SimpleNamespace(started=True, should_stop=False)


def fake_pipeline(sink_failing_since: float | None = None) -> Any:
    return types.SimpleNamespace(stats=PipelineStats(), store=DictStore(), sink=types.SimpleNamespace(
        stats=SinkStats(failing_since=sink_failing_since)))


def test_healthz_reports_a_worker_stuck_on_a_failing_batch() -> None:
    status = WorkerStatus(partitions=frozenset({0, 1}), recovered=True)
    now = 10_000.0
    assert health(fake_app(), fake_pipeline(), status, now=now)["progressing"] is True
    status.failing_since = now - STUCK_AFTER_S / 2
    body = health(fake_app(), fake_pipeline(), status, now=now)
    assert body["progressing"] is True and body["failing_s"] == STUCK_AFTER_S / 2, "a short failure is tolerated"
    status.failing_since = now - STUCK_AFTER_S - 1
    body = health(fake_app(), fake_pipeline(), status, now=now)
    assert body["progressing"] is False and body["failing_s"] == STUCK_AFTER_S + 1


def test_healthz_reports_a_worker_stuck_on_an_influxdb_outage() -> None:
    status = WorkerStatus(partitions=frozenset({0}), recovered=True)
    now = 10_000.0
    body = health(fake_app(), fake_pipeline(sink_failing_since=now - 2 * STUCK_AFTER_S), status, now=now)
    assert body["progressing"] is False and body["failing_s"] == 2 * STUCK_AFTER_S


def test_metrics_show_failures_and_how_long_the_current_one_lasts() -> None:
    status = WorkerStatus(batch_failures=4, failing_since=100.0)
    text = render(worker_metrics(PipelineStats(), SinkStats(failing_since=90.0), status=status, now=130.0))
    assert "rpm_worker_batch_failures_total 4" in text
    assert "rpm_worker_failing_seconds 40" in text, "the oldest failure still under way: the sink's"


def test_healthz_reports_a_batch_that_hangs_without_failing() -> None:
    """A batch that neither fails nor finishes (a write that never returns) is not progress either."""
    status = WorkerStatus(partitions=frozenset({0}), recovered=True)
    now = 10_000.0
    status.batch_since = now - 5
    assert health(fake_app(), fake_pipeline(), status, now=now)["progressing"] is True
    status.batch_since = now - STUCK_AFTER_S - 1
    body = health(fake_app(), fake_pipeline(), status, now=now)
    assert body["progressing"] is False and "unfinished" in body["problem"]


def test_healthz_names_a_configuration_fault_at_once() -> None:
    status = WorkerStatus(partitions=frozenset({0}), recovered=True)
    pipe = fake_pipeline(sink_failing_since=9_999.0)
    pipe.sink.stats.problem = "InfluxDB has no database 'rpm'; create it (…)"
    body = health(fake_app(), pipe, status, now=10_000.0)
    assert body["configured"] is False and body["problem"].startswith("InfluxDB has no database 'rpm'")
