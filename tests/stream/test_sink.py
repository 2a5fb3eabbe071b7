"""The InfluxDB sink against the real InfluxDB 1.6: v1 and v2 paths, idempotence, bad points."""

from __future__ import annotations

import contextlib
import time
import types
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from unittest.mock import patch

import numpy as np
import orjson
import pytest

from detectors.engine import Engine
from rpm_app.services import INFLUX_ADMIN, ServiceProcess, influx_query, influx_users, start_influxdb
from rpm_core.errors import SinkLimitError, SinkRejectedError, SinkUnavailableError
from rpm_core.lineprotocol import AlertPoint, alert_line, vitals_lines
from rpm_core.rules import load_rules
from rpm_core.sink import InfluxSink, V1Writer, make_sink, rejection
from stream.pipeline import Pipeline
from stream.protocol import WorkerStatus
from stream.worker import health, heartbeat
from tests.conftest import REPO
from tests.stream.test_watchdog import T0, bridge, make, run
from tests.support.influx import count_by, rows
from tests.support.v2proxy import V2Proxy

T0_MS = 1_780_000_000_000


def sample_lines(n: int, patient: str = "p0001", offset_ms: int = 0) -> list[str]:
    t_ms = T0_MS + offset_ms + np.arange(n, dtype=np.int64) * 1000
    return vitals_lines(patient=[patient], device=["hrs-1"], source=["sim"], size=np.array([n]),
                        metric_code=np.zeros(n, dtype=np.int8), metric_names=["heart_rate"],
                        t_ms=t_ms, value=np.linspace(60, 90, n))


def test_vitals_lines_carry_each_groups_tags_and_each_samples_metric() -> None:
    lines = vitals_lines(patient=["p1", "p2"], device=["hrs-1", "cgm-2"], source=["sim", "ble"], size=np.array([2, 1]),
                         metric_code=np.array([0, 1, 2], dtype=np.int8),
                         metric_names=["heart_rate", "rr_interval", "glucose"],
                         t_ms=np.array([1, 2, 3], dtype=np.int64), value=np.array([70.0, 0.8125, 99.0]))
    assert lines == [
        "vitals,device=hrs-1,metric=heart_rate,patient=p1,source=sim value=70.0 1",
        "vitals,device=hrs-1,metric=rr_interval,patient=p1,source=sim value=0.8125 2",
        "vitals,device=cgm-2,metric=glucose,patient=p2,source=ble value=99.0 3",
    ]


def hi_lo_lines() -> list[str]:
    return vitals_lines(patient=["p1"], device=["bgm-1"], source=["ble"], size=np.array([4]),
                        metric_code=np.full(4, 2, dtype=np.int8), metric_names=["heart_rate", "rr_interval", "glucose"],
                        t_ms=np.array([1, 2, 3, 4], dtype=np.int64), value=np.array([600.0, 20.0, 99.0, 98.0]),
                        flags=np.array([8, 16, 2, 0], dtype=np.int16))


def test_a_reading_beyond_the_measuring_range_is_marked_on_its_point() -> None:
    """Issue 14: a meter's "HI" keeps its limit as value and says which side it lies beyond."""
    assert hi_lo_lines() == [
        'vitals,device=bgm-1,metric=glucose,patient=p1,source=ble value=600.0,beyond="above" 1',
        'vitals,device=bgm-1,metric=glucose,patient=p1,source=ble value=20.0,beyond="below" 2',
        "vitals,device=bgm-1,metric=glucose,patient=p1,source=ble value=99.0 3",
        "vitals,device=bgm-1,metric=glucose,patient=p1,source=ble value=98.0 4",
    ]


async def test_influxdb_keeps_the_beyond_field(influx_url: str, influx_db: str) -> None:
    sink = InfluxSink(writer=V1Writer(url=influx_url, db=influx_db))
    try:
        assert await sink.write(hi_lo_lines()) == []
    finally:
        await sink.close()
    got = rows(influx_url, influx_db, 'SELECT "value", "beyond" FROM vitals')
    assert [(r["value"], r["beyond"]) for r in got] == [(600.0, "above"), (20.0, "below"), (99.0, None), (98.0, None)]


async def test_v1_writes_every_line_in_batches(influx_url: str, influx_db: str) -> None:
    sink = InfluxSink(writer=V1Writer(url=influx_url, db=influx_db), max_lines=700)
    try:
        assert await sink.write(sample_lines(2_000)) == []
    finally:
        await sink.close()
    assert count_by(influx_url, influx_db, "vitals", "value", "patient") == {"p0001": 2_000}
    assert sink.stats.writes == 3 and sink.stats.lines_written == 2_000


async def test_writing_the_same_samples_twice_leaves_one_point_each(influx_url: str, influx_db: str) -> None:
    sink = make_sink(url=influx_url, db=influx_db)
    try:
        await sink.write(sample_lines(50))
        await sink.write(sample_lines(50))
    finally:
        await sink.close()
    assert count_by(influx_url, influx_db, "vitals", "value", "patient") == {"p0001": 50}


async def test_v2_path_through_influxdb_client(influx_url: str, influx_db: str) -> None:
    """The v2 API path (influxdb-client's async write API) against the real 1.6 server.

    InfluxDB 1.6 has no /api/v2/write, so the test-only proxy in tests/support/v2proxy.py maps
    /api/v2/write?bucket=db/rp onto /write?db=db&rp=rp, exactly the mapping InfluxDB 1.8 does.
    """
    proxy = V2Proxy(influx_url)
    async with proxy as url:
        sink = make_sink(url=url, db=influx_db, token="test-token", org="rpm")
        try:
            assert await sink.write(sample_lines(120)) == []
        finally:
            await sink.close()
    assert proxy.requests >= 1
    assert count_by(influx_url, influx_db, "vitals", "value", "patient") == {"p0001": 120}


async def test_bad_points_are_isolated_and_the_rest_written(influx_url: str, influx_db: str) -> None:
    good = sample_lines(40)
    # A field-type conflict: 'value' is a float for vitals; a string value is refused by InfluxDB.
    bad = [f'vitals,device=x,metric=heart_rate,patient=p0009,source=sim value="high" {T0_MS}',
           "this is not line protocol"]
    sink = make_sink(url=influx_url, db=influx_db)
    try:
        await sink.write(good[:5])  # fix the field type first
        rejected = await sink.write(good[5:20] + bad[:1] + good[20:] + bad[1:])
    finally:
        await sink.close()
    assert [line for line, _ in rejected] == bad
    assert all("rejected" in reason for _, reason in rejected)
    assert count_by(influx_url, influx_db, "vitals", "value", "patient") == {"p0001": 40}


async def test_alert_lines_round_trip(influx_url: str, influx_db: str) -> None:
    point = AlertPoint(alert_id="abc123", patient="p0002", rule="hr_high", severity="warning",
                       metric="heart_rate", state="raised", time_s=1_780_000_000.5, value=134.0,
                       message='Heart rate "high" \\ 134 bpm')
    ack = AlertPoint(alert_id="abc123", patient="p0002", rule="hr_high", severity="warning",
                     metric="heart_rate", state="acknowledged", time_s=1_780_000_060.0, value=float("nan"),
                     message="acknowledged", by="nurse Ann")
    sink = make_sink(url=influx_url, db=influx_db)
    try:
        assert await sink.write([alert_line(point), alert_line(ack)]) == []
    finally:
        await sink.close()
    got = rows(influx_url, influx_db, "SELECT * FROM alerts")
    assert [(r["state"], r["value"], r["by"]) for r in got] == [("raised", 134.0, None),
                                                                ("acknowledged", None, "nurse Ann")]
    assert got[0]["message"] == 'Heart rate "high" \\ 134 bpm' and got[0]["alert_id"] == "abc123"


async def test_unreachable_influx_is_retried_not_dropped() -> None:
    writer = V1Writer(url="http://127.0.0.1:9", db="rpm")
    try:
        with pytest.raises(SinkUnavailableError):
            await writer.write(b"vitals value=1 1")
    finally:
        await writer.close()


async def test_a_fresh_influxdb_without_the_database_gets_it_created_and_nothing_dead_lettered(
        influx_url: str) -> None:
    """Issue 13: a fresh InfluxDB 1.x without the database dead-lettered every point (404 split down
    to single lines). The sink creates the database (1.x allows it here) and writes everything."""
    db = f"fresh_{time.time_ns()}"
    sink = make_sink(url=influx_url, db=db)
    try:
        assert await sink.write(sample_lines(300)) == []
    finally:
        await sink.close()
    assert sink.stats.rejected_lines == 0 and sink.stats.problem is None
    assert count_by(influx_url, db, "vitals", "value", "patient") == {"p0001": 300}


@pytest.mark.parametrize(("status", "body", "expect"), [
    (401, '{"error":"authorization failed"}', "check RPM_INFLUX_USER and RPM_INFLUX_PASSWORD_FILE"),
    (403, '{"error":"user is not authorized to write to database rpm"}', "GRANT WRITE"),
    (404, '{"error":"database not found: \\"rpm\\""}', "CREATE DATABASE"),
])
async def test_configuration_faults_wait_and_say_what_to_fix_without_dead_lettering(
        status: int, body: str, expect: str) -> None:
    """Credentials refused, or a database that cannot be created: waited out like an outage, with
    the fix in ``SinkStats.problem``; the points are not the problem, so none is dead-lettered. The
    server stands for an InfluxDB we may not administer; it answers the fault ``faults`` times."""
    from aiohttp import web

    faults = 3
    calls: list[str] = []

    async def write(request: web.Request) -> web.Response:
        calls.append("write")
        if len(calls) <= faults:
            return web.Response(status=status, text=body, content_type="application/json")
        return web.Response(status=204)

    async def query(request: web.Request) -> web.Response:
        calls.append("query")
        return web.Response(status=403, text='{"error":"requires admin privilege"}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/write", write)
    app.router.add_post("/query", query)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    seen: list[str | None] = []
    sink = make_sink(url=url, db="rpm")
    original = sink.writer.write

    async def observed(b: bytes) -> None:
        seen.append(sink.stats.problem)
        await original(b)

    sink.writer.write = observed  # type: ignore[method-assign]
    try:
        with patch("rpm_core.sink.backoff_s", return_value=0.01):
            assert await sink.write(sample_lines(20)) == []
    finally:
        await sink.close()
        await runner.cleanup()
    assert sink.stats.rejected_lines == 0 and sink.stats.lines_written == 20
    assert any(p is not None and expect in p for p in seen), seen
    assert sink.stats.problem is None, "cleared once writes succeed"
    assert ("query" in calls) is (status == 404), "only a missing database is created"


@pytest.mark.parametrize("index", ["inmem", "tsi1"])
async def test_the_influxdb_rpm_starts_takes_more_than_100k_devices(tmp_path: Path, index: str) -> None:
    """InfluxDB 1.x refuses, by default, a tag's 100,001st value (a partial write): with a device tag
    per device, every point of the 100,001st device on would be dead-lettered (issue 20's 2x overload
    run, 99,849 patients). The InfluxDB rpm starts (rpm_app.services.influx_config) has no such limit,
    with either index (1.6 enforces the limits with ``inmem``, InfluxDB's default, which
    ``RPM_INFLUX_INDEX=inmem`` selects)."""
    svc = start_influxdb(tmp_path, index=index)
    url = influx_users(svc).url(INFLUX_ADMIN, f"http://{svc.host}:{svc.port}")
    try:
        n = 100_001
        lines = [f"vitals,device=hrs-{k:06d},metric=heart_rate,patient=p{k:06d},source=sim value=70.0 {T0_MS}"
                 for k in range(n)]
        sink = make_sink(url=url, db="rpm")
        try:
            assert await sink.write(lines) == []
        finally:
            await sink.close()
            assert sink.stats.lines_written == n
        got = rows(url, "rpm", 'SELECT count("value") FROM vitals WHERE device = \'hrs-100000\'')
        assert [r["count"] for r in got] == [1]
    finally:
        svc.stop()


# --- an InfluxDB left at its limits (issue 20 follow-up) -----------------------------------------------

LIMIT = 5


@pytest.fixture(scope="module")
def limited_influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An InfluxDB 1.6 with small limits, standing for one left at its defaults (100,000 values of a
    tag, 1,000,000 series): ``max-values-per-tag`` and ``max-series-per-database`` = 5. Admin URL."""
    svc = start_influxdb(tmp_path_factory.mktemp("limited"), index="inmem", max_values_per_tag=LIMIT,
                         max_series_per_database=LIMIT * LIMIT)
    try:
        yield influx_users(svc).url(INFLUX_ADMIN, f"http://{svc.host}:{svc.port}")
    finally:
        svc.stop()


def device_lines(devices: range, per_device: int, *, metrics: int = 1) -> list[str]:
    """``per_device`` readings of each device, interleaved as a worker's batch is (device k: patient k)."""
    return [f"vitals,device=d{k},metric=m{j % metrics},patient=p{k},source=sim value={j}.0 {T0_MS + j * 1000}"
            for j in range(per_device) for k in devices]


def counting(sink: InfluxSink) -> list[int]:
    """Count the write requests ``sink`` sends (each one's number of lines)."""
    sent: list[int] = []
    original = sink.writer.write

    async def write(body: bytes) -> None:
        sent.append(body.count(b"\n") + 1)
        await original(body)

    sink.writer.write = write  # type: ignore[method-assign]
    return sent


@pytest.mark.parametrize("api", ["v1", "v2"])
async def test_a_tag_value_limit_dead_letters_the_new_devices_alone_without_bisection(
        limited_influx: str, api: str) -> None:
    """InfluxDB at max-values-per-tag refuses the points of new devices (a partial write naming one
    device): those are dead-lettered with the limit and the fix in the reason, the known devices'
    points written; at most two requests per refused device at first, and one per batch after."""
    db = f"lim_{time.time_ns()}"
    influx_query(limited_influx, f'CREATE DATABASE "{db}"')
    async with contextlib.AsyncExitStack() as stack:
        if api == "v2":  # InfluxDB 1.8's /api/v2/write, as in test_v2_path_through_influxdb_client
            url = await stack.enter_async_context(V2Proxy(limited_influx))
            sink = make_sink(url=url, db=db, token="test-token", org="rpm")
        else:
            sink = make_sink(url=limited_influx, db=db)
        sent = counting(sink)
        first, rejected, again = await _known_then_new_devices(sink, sent)
    assert sorted({line.split(",")[1] for line, _ in rejected}) == ["device=d5", "device=d6", "device=d7"]
    assert len(rejected) == 900 and all("max-values-per-tag" in reason and "max-values-per-tag = 0" in reason
                                        for _, reason in rejected)
    assert first <= 2 * 3, f"at most two requests per refused device, not a bisection per line: {first}"
    assert len(again) == 30 and len(sent) == 1, "refused devices remembered: no request for them"
    assert count_by(limited_influx, db, "vitals", "value", "patient") == {f"p{k}": 300 for k in range(LIMIT)}
    assert sink.stats.limit is not None and "max-values-per-tag = 0" in sink.stats.limit
    assert "[data]" in sink.stats.limit and sink.stats.problem is None, "a warning, not a configuration fault"
    assert sink.stats.limit_refused == 930


async def _known_then_new_devices(sink: InfluxSink, sent: list[int]) -> tuple[int, list[tuple[str, str]],
                                                                               list[tuple[str, str]]]:
    try:
        assert await sink.write(device_lines(range(LIMIT), 2)) == []  # the known devices
        batch = device_lines(range(LIMIT + 3), 300)  # 1,500 lines of known devices, 900 of 3 new ones
        sent.clear()
        rejected = await sink.write(batch)
        first = len(sent)
        sent.clear()
        again = await sink.write(device_lines(range(LIMIT + 3), 10))
    finally:
        await sink.close()
    return first, rejected, again


async def test_a_series_limit_dead_letters_the_new_series_once(limited_influx: str) -> None:
    """max-series-per-database names no series: the new ones are found by halving, once, then remembered."""
    db = f"lim_{time.time_ns()}"
    influx_query(limited_influx, f'CREATE DATABASE "{db}"')
    sink = make_sink(url=limited_influx, db=db)
    sent = counting(sink)
    try:
        assert await sink.write(device_lines(range(LIMIT), LIMIT, metrics=LIMIT)) == []  # 25 series: full
        new = [line.replace("source=sim", "source=ble") for line in device_lines(range(1), 20)]
        rejected = await sink.write(device_lines(range(LIMIT), 100, metrics=LIMIT) + new)
        sent.clear()
        again = await sink.write(device_lines(range(LIMIT), 10, metrics=LIMIT) + new[:3])
    finally:
        await sink.close()
    assert [line for line, _ in rejected] == new
    assert all("max-series-per-database = 0" in reason for _, reason in rejected)
    assert [line for line, _ in again] == new[:3] and len(sent) == 1, "refused series remembered"
    assert count_by(limited_influx, db, "vitals", "value", "patient") == {f"p{k}": 100 for k in range(LIMIT)}
    assert sink.stats.limit is not None and "max-series-per-database = 0" in sink.stats.limit


async def test_the_limit_warning_stays_while_the_limit_refuses_and_clears_when_it_no_longer_does(
        limited_influx: str) -> None:
    """Every RECHECK_S a refused line is written again: still refused, the warning stays (new devices
    keep being refused even when a batch of known ones succeeds); taken, everything is forgotten."""
    db = f"lim_{time.time_ns()}"
    influx_query(limited_influx, f'CREATE DATABASE "{db}"')
    sink = make_sink(url=limited_influx, db=db)
    sent = counting(sink)
    try:
        await sink.write(device_lines(range(LIMIT), 1))
        with patch("rpm_core.sink.RECHECK_S", 0.0):
            assert len(await sink.write(device_lines(range(LIMIT + 1), 2))) == 2
            sent.clear()
            assert await sink.write(device_lines(range(LIMIT), 3)) == []  # known devices only: written
            assert sink.stats.limit is not None and len(sent) == 2, "the refused device rechecked: still refused"
            # The limit no longer refuses the device (here: the database is emptied; in production:
            # max-values-per-tag = 0 and a restart).
            influx_query(limited_influx, f'DROP DATABASE "{db}"')
            influx_query(limited_influx, f'CREATE DATABASE "{db}"')
            assert await sink.write(device_lines(range(LIMIT - 1, LIMIT + 1), 2)) == []
        assert sink.stats.limit is None
    finally:
        await sink.close()
    assert count_by(limited_influx, db, "vitals", "value", "patient") == {"p4": 2, "p5": 2}


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_limit_answers_are_recognised(api: str) -> None:
    """The texts of InfluxDB 1.6 (seen in these tests), as /write (v1) and 1.8's /api/v2/write give them."""
    values = ('partial write: max-values-per-tag limit exceeded (4/3): measurement="vitals" tag="device" '
              'value="d \\"q" dropped=4')
    series = "partial write: max-series-per-database limit exceeded: (3) dropped=6"
    key = "error" if api == "v1" else "message"
    exc = rejection(400, orjson.dumps({key: values}).decode())
    assert isinstance(exc, SinkLimitError) and exc.partial
    assert (exc.limit, exc.measurement, exc.tag, exc.value, exc.dropped) == (
        "max-values-per-tag", "vitals", "device", 'd "q', 4)
    exc = rejection(400, orjson.dumps({key: series}).decode())
    assert isinstance(exc, SinkLimitError) and (exc.limit, exc.tag, exc.dropped) == ("max-series-per-database", None, 6)
    other = rejection(400, orjson.dumps({key: "partial write: unable to parse 'x': invalid field format dropped=0"})
                      .decode())
    assert type(other) is SinkRejectedError and other.partial


async def test_a_limit_reaches_the_watchdog_as_a_warning_from_a_worker_that_still_delivers(
        limited_influx: str) -> None:
    """The technical path: the sink's limit → the worker's /healthz body and heartbeat (healthy: it
    still analyses and writes every other point, so no 503) → the watchdog's tech.worker_warning,
    naming InfluxDB and what to set, within the confirmation time; it clears with the limit."""
    db = f"lim_{time.time_ns()}"
    influx_query(limited_influx, f'CREATE DATABASE "{db}"')
    sink = make_sink(url=limited_influx, db=db)
    try:
        await sink.write(device_lines(range(LIMIT), 1))
        assert len(await sink.write(device_lines(range(LIMIT + 1), 1))) == 1
    finally:
        await sink.close()
    app = types.SimpleNamespace(started=True, should_stop=False)
    rules = load_rules(REPO / "alert_rules.yaml")
    pipeline = Pipeline(engine_factory=lambda: Engine(rules), sink=sink)
    status = WorkerStatus(partitions=frozenset({0, 1, 2, 3}), recovered=True)
    body = health(app, pipeline, status)
    assert body["configured"] and body["progressing"] and "max-values-per-tag = 0" in body["problem"]
    wd = make()
    t0 = T0 + 60
    out = run(wd, t0, t0 + 30, lambda t: [replace(heartbeat(app, pipeline, status, instance="w1", ward_of={}),
                                                   time=t), bridge("b1", t)])
    [raised] = out
    assert (raised.rule, raised.severity, raised.component) == ("tech.worker_warning", "warning", "influxdb")
    assert "max-values-per-tag = 0" in raised.message and "[data]" in raised.message
    assert raised.time - t0 <= 60
    sink.stats.limit = None  # what the recheck does once InfluxDB takes the refused points again
    out = run(wd, t0 + 31, t0 + 40, lambda t: [replace(heartbeat(app, pipeline, status, instance="w1", ward_of={}),
                                                        time=t), bridge("b1", t)])
    assert [(a.rule, a.state) for a in out] == [("tech.worker_warning", "cleared")]


async def test_a_refused_device_whose_name_needs_escaping_is_recognised(limited_influx: str) -> None:
    """InfluxDB names the refused value unescaped (Go-quoted); the line has it escaped."""
    db = f"lim_{time.time_ns()}"
    influx_query(limited_influx, f'CREATE DATABASE "{db}"')
    sink = make_sink(url=limited_influx, db=db)
    sent = counting(sink)
    odd = [f'vitals,device=d\\ "x\\,y,metric=m0,patient=q,source=sim value={j}.0 {T0_MS + j}' for j in range(3)]
    try:
        await sink.write(device_lines(range(LIMIT), 1))
        first = await sink.write(device_lines(range(LIMIT), 2) + odd)
        sent.clear()
        again = await sink.write(odd + device_lines(range(LIMIT), 2))
    finally:
        await sink.close()
    assert [line for line, _ in first] == odd and [line for line, _ in again] == odd
    assert "device='d \"x,y'" in first[0][1]
    assert len(sent) == 1


async def test_what_the_sink_remembers_is_bounded() -> None:
    sink = InfluxSink(writer=V1Writer(url="http://127.0.0.1:9", db="rpm"))
    with patch("rpm_core.sink.MAX_REMEMBERED", 3):
        for k in range(5):
            sink._remember(sink._values, f"vitals\0device\0d{k}")
            sink._remember(sink._series, f"vitals,device=e{k}")
    assert len(sink._values) + len(sink._series) == 3
    assert "vitals,device=e4" in sink._series, "the newest kept, the oldest forgotten"
    await sink.close()


async def test_the_influxdb_rpm_starts_indexes_series_on_disk_with_tsi1(influx: ServiceProcess, influx_url: str,
                                                                         influx_db: str) -> None:
    """Series creation is what InfluxDB spends its CPU on when many patients are new (issue 20's 2x
    overload); ``tsi1`` cost 0.63-0.75x of ``inmem``'s per point there and half the memory
    (benchmarks/RESULTS.md). tsi1 keeps an ``index`` directory in every shard it writes; the
    in-memory index has none."""
    sink = make_sink(url=influx_url, db=influx_db)
    try:
        line = f"vitals,device=hrs-1,metric=heart_rate,patient=p1,source=sim value=70.0 {T0_MS}"
        assert await sink.write([line]) == []
    finally:
        await sink.close()
    # data/<database>/<retention policy>/<shard id>/ (and data/<database>/_series/, the series file)
    shards = [p for p in (influx.workdir / "data" / influx_db).glob("*/*") if p.is_dir() and p.parent.name != "_series"]
    assert shards, "no shard written"
    assert all((shard / "index").is_dir() for shard in shards), [sorted(c.name for c in s.iterdir()) for s in shards]


async def test_the_limit_warning_clears_on_a_worker_that_writes_nothing(limited_influx: str) -> None:
    """A worker left with no readings to write (no partitions after a rebalance, its patients
    quiet): the recheck ran only inside a write, so the warning stayed after the limit was raised,
    until a restart. The worker's timer (Pipeline.tick) rechecks too."""
    db = f"lim_{time.time_ns()}"
    influx_query(limited_influx, f'CREATE DATABASE "{db}"')
    sink = make_sink(url=limited_influx, db=db)
    rules = load_rules(REPO / "alert_rules.yaml")
    pipeline = Pipeline(engine_factory=lambda: Engine(rules), sink=sink)
    try:
        with patch("rpm_core.sink.RECHECK_S", 0.0):
            await sink.write(device_lines(range(LIMIT), 1))
            assert len(await sink.write(device_lines(range(LIMIT + 1), 1))) == 1
            await pipeline.tick(checkpoint=False)
            assert sink.stats.limit is not None, "still refused: still said"
            influx_query(limited_influx, f'DROP DATABASE "{db}"')  # the limit no longer refuses the device
            influx_query(limited_influx, f'CREATE DATABASE "{db}"')
            await pipeline.tick(checkpoint=False)
        assert sink.stats.limit is None
    finally:
        await sink.close()
