"""A large batch in parts: the delivery of one part (InfluxDB, alerts) overlaps the next part's detection.

Against the real InfluxDB 1.6; the engine and the sink are the real ones, each method of interest
wrapped only to note when it was called (and, for the write, when InfluxDB answered).
"""

from __future__ import annotations

import asyncio
from typing import Any

from detectors.engine import Engine
from rpm_core.rules import load_rules
from rpm_core.sink import InfluxSink, V1Writer
from rpm_core.wire import encode_readings_record
from stream.pipeline import MAX_PART_BYTES, Pipeline
from tests.conftest import REPO
from tests.support.influx import count_by

T0 = 1_780_000_000.0


def record(patient: str, values: list[float]) -> bytes:
    n = len(values)
    return encode_readings_record(patient, [{"device": f"hrs-{patient}", "source": "sim", "metric": ["heart_rate"] * n,
                                             "t": [T0 + k for k in range(n)], "value": values, "flags": [0] * n}])


def noted_pipeline(influx_url: str, db: str, log: list[tuple[str, int]], part_bytes: int,
                   overlap_parts: int = 0) -> Pipeline:
    """A pipeline whose engine notes ("detect", samples) and whose InfluxDB writer notes ("write", lines)
    when a request starts and ("written", lines) when InfluxDB answered it.

    ``overlap_parts``: the write of each of the first ``overlap_parts - 1`` parts, once InfluxDB
    answered, does not return until the next part's detection has begun (the overlap this module is
    about); if that does not happen (a pipeline that detects the next part only after the write
    returned), the write fails instead of waiting for ever."""
    rules = load_rules(REPO / "alert_rules.yaml")
    loop = asyncio.get_running_loop()
    begun = [asyncio.Event() for _ in range(overlap_parts)]

    def engine() -> Engine:
        real = Engine(rules)
        process = real.process

        def noted(batch: Any, *, now: float | None = None) -> Any:
            log.append(("detect", len(batch.t)))
            detected = sum(1 for what, _n in log if what == "detect")
            if detected <= overlap_parts:
                loop.call_soon_threadsafe(begun[detected - 1].set)  # the detection may run in a thread
            return process(batch, now=now)

        real.process = noted  # type: ignore[method-assign]
        return real

    writer = V1Writer(url=influx_url, db=db)
    write = writer.write

    async def noted_write(body: bytes) -> None:
        lines = body.count(b"\n") + 1
        part = sum(1 for what, _n in log if what == "write")
        log.append(("write", lines))
        await write(body)
        if part + 1 < overlap_parts:
            try:
                async with asyncio.timeout(60):  # a guard against waiting for ever, not a measure of speed
                    await begun[part + 1].wait()
            except TimeoutError:
                raise AssertionError(f"part {part + 2} was not detected while part {part + 1} was written") from None
        log.append(("written", lines))

    writer.write = noted_write  # type: ignore[method-assign]
    pipe = Pipeline(engine_factory=engine, sink=InfluxSink(writer=writer), part_bytes=part_bytes)
    pipe.bind(send_alert=_nowhere, send_deadletter=_nowhere)
    return pipe


async def _nowhere(_key: bytes | None, _value: bytes) -> None:
    """No alert is raised by these normal heart rates, and no record is bad."""
    raise AssertionError("nothing to send")


async def test_the_next_part_is_detected_while_influxdb_writes_the_previous_one(influx_url: str,
                                                                                influx_db: str) -> None:
    """Three records, one part each: part 2 is detected while part 1's write is under way, part 3 while
    part 2's is (each write waits for it), the writes go one at a time and in order, and the batch
    returns with everything written. Before parts, the batch was detected whole, then written:
    [detect 12, write 12, written 12]; a pipeline that detects a part only after the previous part's
    write returned fails here."""
    log: list[tuple[str, int]] = []
    pipe = noted_pipeline(influx_url, influx_db, log, part_bytes=1, overlap_parts=3)  # a part per record
    values = [record("p1", [70.0] * 3), record("p2", [71.0] * 4), record("p3", [72.0] * 5)]
    await pipe.handle(values, checkpoint=False)
    try:
        assert log == [("detect", 3), ("write", 3), ("detect", 4), ("written", 3), ("write", 4), ("detect", 5),
                       ("written", 4), ("write", 5), ("written", 5)]
        assert count_by(influx_url, influx_db, "vitals", "value", "patient") == {"p1": 3, "p2": 4, "p3": 5}
        assert (pipe.stats.records, pipe.stats.samples, pipe.stats.batches) == (3, 12, 1)
    finally:
        await pipe.sink.writer.close()


async def test_a_batch_within_a_part_is_detected_and_written_whole(influx_url: str, influx_db: str) -> None:
    """At a steady load a batch is far below MAX_PART_BYTES: one detection, one write, as before."""
    log: list[tuple[str, int]] = []
    pipe = noted_pipeline(influx_url, influx_db, log, part_bytes=MAX_PART_BYTES)
    await pipe.handle([record("p1", [70.0] * 3), record("p2", [71.0] * 4)], checkpoint=False)
    try:
        assert log == [("detect", 7), ("write", 7), ("written", 7)]
    finally:
        await pipe.sink.writer.close()
