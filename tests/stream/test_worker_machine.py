"""The worker's protocol, transition by transition (stream.protocol.WorkerMachine).

A real pipeline (detectors, engine state, checkpoints into a dict store) drives each test; the only
stand-ins are the two things outside the process: the Kafka consumer (:class:`Consumer` records
which events were acknowledged, the interface the machine needs of Faust) and InfluxDB's HTTP API
(:class:`Influx`, which can fail, hang or accept). The worker on real Faust, Tansu and InfluxDB is
covered by tests/e2e and tests/chaos.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from detectors import Engine
from rpm_core import topics
from rpm_core.acks import encode_ack
from rpm_core.errors import SinkUnavailableError
from rpm_core.rules import load_rules
from rpm_core.signing import KeyRing
from rpm_core.sink import InfluxSink
from rpm_core.wire import encode_readings_record
from stream.pipeline import DictStore, Pipeline
from stream.protocol import ISOLATE_AFTER, MAX_SLICE_BYTES, Phase, WorkerMachine, WorkerStatus, slice_ends

T0 = 1_700_000_000.0
P, A, C, K = Phase.PROCESSING, Phase.ASSIGNED, Phase.CHECKPOINTING, Phase.ACKNOWLEDGING


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Ev:
    """A taken record, as Faust hands it over."""

    value: bytes
    key: bytes | None = None
    headers: Any = None


@dataclass
class Consumer:
    """The Kafka side: which events were acknowledged (made committable), in order."""

    acked: list[Ev] = field(default_factory=list)

    async def ack(self, event: Any) -> None:
        self.acked.append(event)


class Influx:
    """InfluxDB's write API as the sink sees it: fails ``fail`` times with ``error``, hangs while
    ``hang`` is set, else accepts."""

    def __init__(self) -> None:
        self.fail = 0
        self.error: Exception = RuntimeError("a defect of ours")
        self.hang = False
        self.hanging = asyncio.Event()  # set once a write hangs
        self.bodies: list[bytes] = []
        self.poison: bytes | None = None
        self.on_write: Callable[[bytes], Awaitable[None]] | None = None  # called first by every write

    async def write(self, body: bytes) -> None:
        if self.on_write is not None:
            await self.on_write(body)
        if self.hang:
            self.hanging.set()
            await asyncio.Event().wait()  # until cancelled
        if self.poison is not None and self.poison in body:
            raise RuntimeError("cannot write this one")
        if self.fail:
            self.fail -= 1
            raise self.error
        self.bodies.append(body)

    async def close(self) -> None:
        return None


class Outputs:
    """Kafka's alert and dead-letter topics; ``alerts_down`` makes sending an alert fail."""

    def __init__(self) -> None:
        self.alerts: list[bytes] = []
        self.deadletters: list[bytes] = []
        self.alerts_down = False

    async def alert(self, _key: bytes | None, value: bytes) -> None:
        if self.alerts_down:
            raise RuntimeError("the alert could not be sent")
        self.alerts.append(value)

    async def deadletter(self, _key: bytes | None, value: bytes) -> None:
        self.deadletters.append(value)


@dataclass
class Rig:
    machine: WorkerMachine
    pipeline: Pipeline
    influx: Influx
    out: Outputs
    clock: Clock
    consumer: Consumer = field(default_factory=Consumer)

    @property
    def status(self) -> WorkerStatus:
        return self.machine.status

    def since(self, mark: int) -> list[Phase]:
        return list(self.machine.history)[mark:]


def rig(*, interval_s: float = 0.0, key_ring: KeyRing | None = None, stop_grace_s: float = 0.2,
        max_slice_bytes: int = MAX_SLICE_BYTES) -> Rig:
    ruleset = load_rules("alert_rules.yaml")
    clock, influx, out = Clock(), Influx(), Outputs()
    pipeline = Pipeline(engine_factory=lambda: Engine(ruleset), sink=InfluxSink(writer=influx), store=DictStore(),
                        clock=clock)
    pipeline.bind(send_alert=out.alert, send_deadletter=out.deadletter)
    machine = WorkerMachine(pipeline, WorkerStatus(configured_partitions=4), checkpoint_interval_s=interval_s,
                            key_ring=key_ring, retry_first_s=0.01, stop_grace_s=stop_grace_s,
                            max_slice_bytes=max_slice_bytes)
    return Rig(machine, pipeline, influx, out, clock)


def reading(patient: str, t: float, hr: float = 70.0) -> Ev:
    group = {"device": f"hr-{patient}", "source": "sim", "metric": ["heart_rate"], "t": [t], "value": [hr],
             "flags": [0]}
    return Ev(encode_readings_record(patient, [group]))


def assigned(r: Rig) -> None:
    r.machine.recovered(frozenset({0, 1}), 4)


async def test_a_worker_waits_in_recovering_until_its_table_is_recovered() -> None:
    r = rig()
    assert r.machine.phase is Phase.RECOVERING and r.status.phase == "recovering"
    assigned(r)
    assert r.machine.phase is A and r.status.recovered and r.status.partitions == {0, 1}


async def test_a_batch_goes_processing_checkpointing_acknowledging_and_back() -> None:
    r = rig()
    assigned(r)
    mark = len(r.machine.history)
    batch = [reading("p1", T0), reading("p2", T0)]
    await r.machine.readings(r.consumer, batch)
    assert r.since(mark) == [P, C, K, A]
    assert r.consumer.acked == batch
    assert r.pipeline.store.get("p1") is not None and r.pipeline.store.get("p2") is not None
    assert r.influx.bodies, "the readings reached InfluxDB before anything was acknowledged"


async def test_records_are_acknowledged_only_once_the_states_they_changed_are_checkpointed() -> None:
    r = rig(interval_s=10)
    assigned(r)
    first = [reading("p1", T0)]
    await r.machine.readings(r.consumer, first)
    assert r.consumer.acked == [] and r.pipeline.store.get("p1") is None, "pending for less than the interval"
    r.clock.now += 11
    second = [reading("p2", r.clock.now)]
    await r.machine.readings(r.consumer, second)
    assert r.pipeline.store.get("p1") is not None and r.consumer.acked == first
    assert r.pipeline.store.get("p2") is None, "p2 is not due yet, so its batch waits"


async def test_a_failing_batch_is_retried_in_place_and_acknowledged_only_after_it_succeeds() -> None:
    r = rig()
    assigned(r)
    r.influx.fail = 2
    batch = [reading("p1", T0)]
    mark = len(r.machine.history)
    await r.machine.readings(r.consumer, batch)
    assert r.status.batch_failures == 2 and r.status.failing_since is None
    assert r.consumer.acked == batch and len(r.influx.bodies) == 1
    assert r.since(mark) == [P, C, K, A], "retries stay in PROCESSING"


async def test_a_poison_record_is_dead_lettered_and_the_rest_of_its_batch_processed() -> None:
    r = rig()
    assigned(r)
    r.influx.poison = b"patient=poison"
    batch = [reading("p1", T0), reading("poison", T0), reading("p2", T0)]
    await r.machine.readings(r.consumer, batch)
    assert r.status.batch_failures >= ISOLATE_AFTER
    assert len(r.out.deadletters) == 1 and b"processing failed: RuntimeError" in r.out.deadletters[0]
    assert r.consumer.acked == batch, "the whole batch is done: good records processed, the poison set aside"
    written = b"".join(r.influx.bodies)
    assert b"patient=p1" in written and b"patient=p2" in written


async def test_an_outage_is_waited_out_not_isolated() -> None:
    r = rig()
    assigned(r)
    r.influx.error = SinkUnavailableError("InfluxDB down")  # the sink's own retry waits it out
    r.influx.fail = ISOLATE_AFTER + 2
    r.pipeline.sink = InfluxSink(writer=r.influx)
    batch = [reading("p1", T0)]
    await asyncio.wait_for(r.machine.readings(r.consumer, batch), timeout=60)
    assert r.out.deadletters == [] and r.consumer.acked == batch


async def test_a_rebalance_drains_everything_then_recovers_forgetting_nothing_acknowledged() -> None:
    r = rig(interval_s=30)
    assigned(r)
    batch = [reading("p1", T0)]
    await r.machine.readings(r.consumer, batch)
    assert r.consumer.acked == []
    assert await r.machine.drain() is True
    assert r.consumer.acked == batch and r.pipeline.store.get("p1") is not None, "drain writes and acks it all"
    during = [reading("p2", T0 + 1)]
    await r.machine.readings(r.consumer, during)
    assert r.consumer.acked == batch + during, "while Faust waits, every batch is flushed at once"
    r.machine.drained()
    r.machine.revoked()
    assert r.machine.phase is Phase.RECOVERING and r.status.partitions == frozenset()
    assigned(r)
    assert r.machine.phase is A


async def test_what_was_not_checkpointed_before_a_rebuild_is_never_acknowledged() -> None:
    r = rig(interval_s=30)
    assigned(r)
    await r.machine.readings(r.consumer, [reading("p1", T0)])
    r.machine.revoked()
    assigned(r)  # the engine is rebuilt from the table: p1's change is gone, Kafka delivers it again
    r.clock.now += 60
    await r.machine.readings(r.consumer, later := [reading("p2", r.clock.now)])
    r.clock.now += 60
    await r.machine.readings(r.consumer, last := [reading("p3", r.clock.now)])
    assert later[0] in r.consumer.acked and last[0] not in r.consumer.acked
    assert all(e.value != reading("p1", T0).value for e in r.consumer.acked)


async def test_a_graceful_stop_writes_every_pending_state_and_acknowledges() -> None:
    r = rig(interval_s=30)
    assigned(r)
    batch = [reading("p1", T0)]
    await r.machine.readings(r.consumer, batch)
    await r.machine.stop()
    assert r.consumer.acked == batch and r.pipeline.store.get("p1") is not None
    assert r.machine.phase is Phase.STOPPED and not r.machine.committer.abandoned
    await r.machine.tick()  # timers after a stop change nothing
    assert r.machine.phase is Phase.STOPPED


async def test_a_stop_during_an_outage_abandons_the_batch_unacknowledged() -> None:
    r = rig(interval_s=30, stop_grace_s=0.2)
    assigned(r)
    await r.machine.readings(r.consumer, [reading("p0", T0)])  # pending, not yet acknowledged
    r.influx.hang = True
    stuck = asyncio.ensure_future(r.machine.readings(r.consumer, [reading("p1", T0 + 1)]))
    await asyncio.wait_for(r.influx.hanging.wait(), timeout=30)
    assert r.machine.phase is P
    await r.machine.stop()
    await asyncio.wait_for(stuck, timeout=30)
    assert r.machine.committer.abandoned and r.machine.phase is Phase.STOPPED
    assert r.consumer.acked == [], "nothing after the abandoned batch's engine state may be acknowledged"
    assert r.pipeline.store.get("p0") is None and r.pipeline.store.get("p1") is None
    assert await r.machine.drain() is False, "Faust must not wait for acknowledgements that will never come"


async def test_acknowledgements_are_applied_when_signed_and_dead_lettered_when_forged() -> None:
    ring = KeyRing.generate()
    r = rig(key_ring=ring)
    assigned(r)
    value = encode_ack(alert_id="a" * 16, patient="p1", by="Nurse Joy", at=T0, station="ward-a")
    good = Ev(value, b"p1", ring.sign(topics.ALERT_ACKS, b"p1", value))
    forged = Ev(value, b"p1", KeyRing.generate().sign(topics.ALERT_ACKS, b"p1", value))
    unsigned = Ev(value, b"p1", None)
    await r.machine.acknowledgements(r.consumer, [good, forged, unsigned])
    assert r.consumer.acked == [good, forged, unsigned], "every record is dealt with, none is retried forever"
    assert len(r.out.deadletters) == 2
    assert all(b"acknowledgement refused" in d for d in r.out.deadletters)
    assert r.machine.phase is A


async def test_a_tick_whose_alert_cannot_be_sent_forgets_its_transitions_and_raises_it_again() -> None:
    r = rig(interval_s=3600)
    assigned(r)
    await r.machine.readings(r.consumer, [reading("p1", T0)])
    r.machine.committer.checkpoint(everything=True)  # p1 checkpointed as a sender of heart rate
    r.clock.now += 2 * 3600  # silent for two hours: the staleness rule fires on the next tick
    r.out.alerts_down = True
    with pytest.raises(RuntimeError):
        await r.machine.tick()
    assert r.machine.phase is A and r.pipeline.pending == 0, "rebuilt from the checkpoints, nothing half done"
    r.out.alerts_down = False
    await r.machine.tick()
    assert any(b"heart_rate_stale" in a for a in r.out.alerts), "the transition happens again and is told"


async def test_an_ack_in_one_patients_name_for_another_patients_alert_is_dead_lettered() -> None:
    """The engine acknowledges by alert id alone: an ack in p1's name (p1's device through the notifier,
    or a station of p1's ward) stopped the escalation of p2's alert on the same worker."""
    r = rig(interval_s=3600)
    assigned(r)
    await r.machine.readings(r.consumer, [reading("p2", T0)])
    r.clock.now += 2 * 3600
    await r.machine.tick()  # p2 silent for two hours: heart_rate_stale raised
    (raised,) = [orjson.loads(a) for a in r.out.alerts if b'"raised"' in a]
    assert raised["patient"] == "p2"
    forged = encode_ack(alert_id=raised["alert_id"], patient="p1", by="Nurse Joy", at=r.clock.now, station="ward-a")
    rekeyed = encode_ack(alert_id=raised["alert_id"], patient="p2", by="Nurse Joy", at=r.clock.now, station="ward-a")
    await r.machine.acknowledgements(r.consumer, [Ev(forged, b"p1"), Ev(rekeyed, b"p1")])
    assert not any(b'"acknowledged"' in a for a in r.out.alerts), "p2's alert must still escalate"
    assert len(r.out.deadletters) == 2
    assert b"not the named patient" in r.out.deadletters[0] and b"record key" in r.out.deadletters[1]
    await r.machine.acknowledgements(r.consumer, [Ev(rekeyed, b"p2")])
    assert any(b'"acknowledged"' in a for a in r.out.alerts), "p2's own ack acknowledges it"


@dataclass
class Message:
    timestamp: float | None


@dataclass
class StampedEv(Ev):
    """A taken record with the timestamp Kafka gave it (when the bridge produced it)."""

    message: Message | None = None


async def test_how_long_a_batchs_readings_waited_in_kafka_is_how_far_behind_the_worker_is() -> None:
    """Never silent: a worker that keeps processing but further and further behind (a backlog) is
    not stuck, yet its alerts come late; the oldest record's wait is measured per batch, /healthz
    warns from a minute, and an idle worker is behind nothing."""
    from stream.protocol import BEHIND_AFTER_S, BEHIND_FRESH_S
    from stream.worker import health

    r = rig()
    assigned(r)
    waited = [StampedEv(reading("p1", T0 - 200).value, message=Message(r.clock.now - 95)),
              StampedEv(reading("p2", T0 - 10).value, message=Message(r.clock.now - 5))]
    await r.machine.readings(r.consumer, waited)
    assert r.status.behind_s == pytest.approx(95)
    app = type("App", (), {"started": True, "should_stop": False})()
    body = health(app, r.pipeline, r.status)
    assert body["behind_s"] == pytest.approx(95) and body["progressing"] and body["configured"]
    assert "95 s after they arrived" in body["problem"] and BEHIND_AFTER_S <= 95
    assert health(app, r.pipeline, r.status, now=r.status.behind_at + BEHIND_FRESH_S + 1)["problem"] is None
    await r.machine.readings(r.consumer, [StampedEv(reading("p1", T0).value, message=Message(r.clock.now - 2))])
    assert health(app, r.pipeline, r.status)["problem"] is None, "caught up"


async def test_a_worker_behind_its_readings_reaches_the_watchdog_as_a_warning_with_a_capacity_remedy() -> None:
    from dataclasses import replace

    from stream.worker import heartbeat
    from tests.stream.test_watchdog import T0 as WATCH_T0
    from tests.stream.test_watchdog import bridge, make, run

    r = rig()
    assigned(r)
    await r.machine.readings(r.consumer, [StampedEv(reading("p1", T0).value, message=Message(r.clock.now - 130))])
    app = type("App", (), {"started": True, "should_stop": False})()
    t0 = WATCH_T0 + 60
    out = run(make(), t0, t0 + 30, lambda t: [replace(heartbeat(app, r.pipeline, r.status, instance="w1", ward_of={}),
                                                       time=t), bridge("b1", t)])
    [raised] = [a for a in out if a.rule == "tech.worker_warning"]  # (partitions 2-3 have no worker here)
    assert (raised.severity, raised.component) == ("warning", "worker")
    assert "130 s after they arrived" in raised.message and "but that late" in raised.message
    assert "start another worker" in raised.remedy
    assert raised.time - t0 <= 60


@pytest.mark.parametrize("stamp", [None, float("nan"), float("inf"), -5.0, 0.0, T0 + 10_000.0],
                         ids=["none", "nan", "inf", "negative", "zero", "future"])
async def test_a_record_timestamp_that_is_missing_or_odd_makes_no_worker_behind(stamp: float | None) -> None:
    """The timestamp is the producer's to set: none, not a number, before 1970 or ahead of our clock
    (a skewed or rogue producer) neither breaks the batch nor makes the worker look behind."""
    r = rig()
    assigned(r)
    await r.machine.readings(r.consumer, [StampedEv(reading("p1", T0).value, message=Message(stamp))])
    assert len(r.consumer.acked) == 1
    assert r.status.behind_for(r.status.behind_at or 0.0) == 0.0


# -- a large batch in slices (MAX_SLICE_BYTES) --------------------------------------------------------


def sliced_rig(records_per_slice: int, **kwargs: Any) -> tuple[Rig, list[Ev]]:
    """A rig whose slices hold ``records_per_slice`` records of the batch it returns (3 slices, 9
    patients; every record the same size)."""
    batch = [reading(f"p{i}", T0 + i) for i in range(9)]
    assert len({len(e.value) for e in batch}) == 1
    r = rig(max_slice_bytes=records_per_slice * len(batch[0].value), **kwargs)
    assigned(r)
    return r, batch


def written_patients(r: Rig) -> set[str]:
    return {line.split(b",patient=")[1].split(b",")[0].decode()
            for body in r.influx.bodies for line in body.splitlines() if line.startswith(b"vitals,")}


def test_slices_are_consecutive_records_within_the_bound_and_an_oversized_record_alone() -> None:
    values = [b"a" * 3, b"b" * 3, b"c" * 9, b"d" * 2, b"e" * 2, b"f" * 5]
    assert slice_ends(values, 6) == [2, 3, 5, 6]
    assert slice_ends(values, 100) == [6]
    assert slice_ends([], 6) == []
    # a tombstone (a record without a value, dead-lettered by the pipeline) weighs nothing; it crashed
    # the readings agent (len(None)) and so stopped the worker on one hostile record
    assert slice_ends([None, b"a" * 3, None, b"b" * 5], 6) == [3, 4]
    assert slice_ends([None], 6) == [1]


async def test_a_batch_beyond_the_bound_is_written_in_slices_with_a_tick_between_and_acknowledged_after_the_last(
) -> None:
    r, batch = sliced_rig(3)
    seen: list[tuple[int, int]] = []  # at each InfluxDB write: (records acknowledged, ticks run)
    ticks: list[asyncio.Future[None]] = []

    async def write(_body: bytes) -> None:
        seen.append((len(r.consumer.acked), r.pipeline.stats.ticks))
        if len(seen) == 1:
            ticks.append(asyncio.ensure_future(r.machine.tick()))  # a timer comes due while slice 1 is written

    r.influx.on_write = write
    await r.machine.readings(r.consumer, batch)
    assert seen == [(0, 0), (0, 1), (0, 1)], "three writes; the tick ran between slices, not after the batch"
    await ticks[0]
    assert r.consumer.acked == batch, "acknowledged once the last slice is written, all together"
    assert written_patients(r) == {f"p{i}" for i in range(9)}
    assert r.pipeline.stats.batches == 3 and r.pipeline.stats.samples == 9


async def test_a_batch_within_the_bound_is_one_slice() -> None:
    r, batch = sliced_rig(9)
    await r.machine.readings(r.consumer, batch)
    assert len(r.influx.bodies) == 1 and r.consumer.acked == batch


async def test_a_failing_slice_holds_the_whole_batch_back_and_its_retry_gives_the_engine_the_earlier_slices(
) -> None:
    """Slice 2's write fails: nothing of the batch is acknowledged meanwhile (slice 1 was written), the
    engine is rebuilt from its checkpoints (slice 1 was not checkpointed: the interval is 30 s), so the
    retry processes slices 1 and 2 together; every patient's state then reaches the checkpoint."""
    r, batch = sliced_rig(3, interval_s=30)
    acked_during_failure: list[int] = []

    async def write(_body: bytes) -> None:
        if len(r.influx.bodies) == 1 and r.status.batch_failures < 2:
            acked_during_failure.append(len(r.consumer.acked))
            r.influx.fail = 1

    r.influx.on_write = write
    await r.machine.readings(r.consumer, batch)
    assert r.status.batch_failures == 2 and acked_during_failure == [0, 0]
    assert r.consumer.acked == [], "the batch's states are pending (the interval), so it waits for them"
    assert await r.machine.drain() is True
    assert r.consumer.acked == batch
    assert all(r.pipeline.store.get(f"p{i}") is not None for i in range(9)), "slice 1's patients were not lost"
    assert written_patients(r) == {f"p{i}" for i in range(9)}


async def test_a_stop_while_a_slice_cannot_be_written_abandons_the_whole_batch_unacknowledged() -> None:
    r, batch = sliced_rig(3, interval_s=0)

    async def write(_body: bytes) -> None:
        if len(r.influx.bodies) == 1:
            r.influx.hang = True  # InfluxDB stops answering during slice 2

    r.influx.on_write = write
    stuck = asyncio.ensure_future(r.machine.readings(r.consumer, batch))
    await asyncio.wait_for(r.influx.hanging.wait(), timeout=30)
    await r.machine.stop()
    await asyncio.wait_for(stuck, timeout=30)
    assert r.machine.committer.abandoned and r.machine.phase is Phase.STOPPED
    assert r.consumer.acked == [], "slice 1 was written, but the batch is acknowledged whole or not at all"
    assert len(r.influx.bodies) == 1


async def test_a_drain_comes_between_batches_not_between_the_slices_of_one() -> None:
    """A rebalance's drain (and a stop) waits for the batch's last slice, so once it returns every
    record taken is acknowledged, as Faust's wait for acknowledgements expects."""
    r, batch = sliced_rig(3, interval_s=30)
    drained: list[list[Ev]] = []
    tasks: list[asyncio.Future[None]] = []

    async def drain() -> None:
        assert await r.machine.drain() is True
        drained.append(list(r.consumer.acked))

    async def write(_body: bytes) -> None:
        if len(r.influx.bodies) == 0:
            tasks.append(asyncio.ensure_future(drain()))

    r.influx.on_write = write
    await r.machine.readings(r.consumer, batch)
    await asyncio.gather(*tasks)
    assert drained == [batch] and len(r.influx.bodies) == 3


async def test_a_stop_during_a_slice_lets_the_batch_finish_then_writes_and_acknowledges_it() -> None:
    r, batch = sliced_rig(3, interval_s=30, stop_grace_s=30)
    stopped: list[list[Ev]] = []
    tasks: list[asyncio.Future[None]] = []

    async def stop() -> None:
        await r.machine.stop()
        stopped.append(list(r.consumer.acked))

    async def write(_body: bytes) -> None:
        if len(r.influx.bodies) == 0:
            tasks.append(asyncio.ensure_future(stop()))

    r.influx.on_write = write
    await r.machine.readings(r.consumer, batch)
    await asyncio.gather(*tasks)
    assert stopped == [batch] and r.machine.phase is Phase.STOPPED and not r.machine.committer.abandoned
    assert all(r.pipeline.store.get(f"p{i}") is not None for i in range(9))


async def test_a_defect_that_escapes_a_batch_makes_the_worker_say_it_is_stuck_to_the_watchdog() -> None:
    """A defect outside the retried step (this session's slicing took len() of a tombstone's value)
    crashed the agent: Faust restarts it, but the batch is never acknowledged and the stream stalls,
    while /healthz and the heartbeat said all was well."""
    from dataclasses import replace

    from stream.worker import health, heartbeat
    from tests.stream.test_watchdog import T0 as WATCH_T0
    from tests.stream.test_watchdog import bridge, make, run

    r = rig()
    assigned(r)
    with pytest.raises(TypeError):
        await r.machine.readings(r.consumer, [Ev(value=12345)])  # type: ignore[arg-type]  # a value no record has
    app = type("App", (), {"started": True, "should_stop": False})()
    body = health(app, r.pipeline, r.status)
    assert body["progressing"] is False
    assert "readings agent failed on a defect (TypeError" in body["problem"] and "restart it" in body["problem"]
    t0 = WATCH_T0 + 60
    out = run(make(), t0, t0 + 30, lambda t: [replace(heartbeat(app, r.pipeline, r.status, instance="w1", ward_of={}),
                                                       time=t), bridge("b1", t)])
    [stuck] = [a for a in out if a.rule == "tech.worker_stuck"]
    assert stuck.severity == "critical" and "failed on a defect" in stuck.message and stuck.time - t0 <= 60
