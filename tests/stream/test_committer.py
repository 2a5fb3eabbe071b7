"""The worker's group commit: outputs delivered, then state checkpointed, then offsets acknowledged."""

from __future__ import annotations

from typing import Any

from detectors import Engine
from rpm_core.rules import load_rules
from rpm_core.sink import InfluxSink, V1Writer
from stream.pipeline import DictStore, Pipeline
from stream.protocol import Committer

RULES = "alert_rules.yaml"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Acks:
    """Stands in for the Faust stream: records which events were acknowledged."""

    def __init__(self) -> None:
        self.acked: list[Any] = []

    async def ack(self, event: Any) -> None:
        self.acked.append(event)


def pipeline(clock: Clock) -> Pipeline:
    ruleset = load_rules(RULES)
    sink = InfluxSink(writer=V1Writer(url="http://127.0.0.1:9", db="unused"))  # never written to here
    return Pipeline(engine_factory=lambda: Engine(ruleset), sink=sink, store=DictStore(), clock=clock)


def touch(p: Pipeline, patient: str, t: float) -> None:
    """A state change of ``patient`` whose outputs count as delivered."""
    p.engine.process(p.engine.batch([patient], ["heart_rate"], [t], [70.0]))


async def test_a_batch_is_acknowledged_only_once_the_states_it_changed_are_written() -> None:
    clock, stream = Clock(), Acks()
    p = pipeline(clock)
    committer = Committer(p, interval_s=10)
    touch(p, "a", clock.now)
    committer.changed(committer.next_seq(), stream, ["batch-1"])
    await committer.flush()
    assert stream.acked == [] and p.store.get("a") is None  # pending for less than the interval

    clock.now += 4
    touch(p, "b", clock.now)
    committer.changed(committer.next_seq(), stream, ["batch-2"])
    clock.now += 7  # a: pending 11 s, b: 7 s
    await committer.flush()
    assert p.store.get("a") is not None and p.store.get("b") is None
    assert stream.acked == ["batch-1"]  # batch 2 changed b, which is still pending

    clock.now += 4
    await committer.flush()
    assert stream.acked == ["batch-1", "batch-2"] and p.store.get("b") is not None


async def test_a_patient_sending_often_is_written_once_per_interval() -> None:
    clock, stream = Clock(), Acks()
    p = pipeline(clock)
    committer = Committer(p, interval_s=10)
    for k in range(30):  # one message a second for 30 s
        touch(p, "a", clock.now)
        committer.changed(committer.next_seq(), stream, [f"b{k}"])
        await committer.flush()
        clock.now += 1
    assert p.stats.checkpoints == 2  # at 10 s and 21 s (dirty again at 11 s); not 30
    assert len(stream.acked) >= 20  # the ack frontier follows about one interval behind


async def test_after_a_rebuild_what_was_pending_is_not_acknowledged() -> None:
    clock, stream = Clock(), Acks()
    p = pipeline(clock)
    committer = Committer(p, interval_s=0)
    touch(p, "a", clock.now)
    committer.changed(committer.next_seq(), stream, ["old"])
    committer.forget_pending()
    p.reload()
    touch(p, "a", clock.now + 1)
    committer.changed(committer.next_seq(), stream, ["new"])
    await committer.flush()
    assert stream.acked == ["new"]


async def test_a_wave_of_patients_falling_due_together_is_written_in_paced_slices() -> None:
    """Thousands of patients who started together fall due together: one flush must not write them
    all (that stalls the stream for seconds); each writes a little more than its share, and within
    an interval all are written and every batch acknowledged."""
    clock, stream = Clock(), Acks()
    p = pipeline(clock)
    committer = Committer(p, interval_s=10)
    await committer.flush()
    patients = [f"p{k:04d}" for k in range(4000)]
    p.engine.process(p.engine.batch(patients, ["heart_rate"] * 4000, [clock.now] * 4000, [70.0] * 4000))
    committer.changed(committer.next_seq(), stream, ["wave"])
    written = []
    for _ in range(400):  # a batch every 50 ms, for 20 s
        clock.now += 0.05
        before = p.stats.checkpoints
        await committer.flush()
        written.append(p.stats.checkpoints - before)
    assert max(written) <= 30, written  # 1.25 x 4000 x 0.05 / 10 = 25 while all are pending
    assert sum(written) == 4000 and p.pending == 0 and stream.acked == ["wave"]
    busy = [k for k, n in enumerate(written) if n]
    assert busy[0] >= 199 and 100 <= busy[-1] - busy[0] <= 200  # from 10 s on, spread over 5-10 s


async def test_while_draining_every_flush_writes_everything_and_acknowledges_at_once() -> None:
    """A rebalance waits for every event taken to be acknowledged. A batch still in flight when the
    wait began must be acknowledged when it is done, not when its states fall due (up to an
    interval later, past the group's rebalance timeout)."""
    clock, stream = Clock(), Acks()
    p = pipeline(clock)
    committer = Committer(p, interval_s=30)
    committer.draining = True
    touch(p, "a", clock.now)
    committer.changed(committer.next_seq(), stream, ["in-flight"])
    await committer.flush()
    assert stream.acked == ["in-flight"] and p.store.get("a") is not None

    committer.draining = False
    touch(p, "b", clock.now)
    committer.changed(committer.next_seq(), stream, ["later"])
    await committer.flush()
    assert stream.acked == ["in-flight"], "paced again once the wait is over"


class LogStore(DictStore):
    """A store that notes, in one log shared with the acknowledger, when states reach its durable
    log (``flush``): what was put since the last flush is only in memory until then."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log
        self.unflushed: list[str] = []

    def put_many(self, records: Any) -> None:
        super().put_many(records)
        self.unflushed += [patient for patient, _state in records]

    async def flush(self) -> None:
        if self.unflushed:
            self.log.append("flushed " + ",".join(self.unflushed))
            self.unflushed = []


class LoggedAcks(Acks):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    async def ack(self, event: Any) -> None:
        await super().ack(event)
        self.log.append(f"acked {event}")


async def test_the_states_a_batch_depends_on_reach_the_durable_log_before_the_batch_is_acknowledged() -> None:
    """The store writes states into memory at once and into its changelog in bulk (``flush``); an
    acknowledged offset may be committed, so every state it depends on must have been flushed
    first, in the paced commit, while draining, and for a nurse's acknowledgement alike."""
    clock, log = Clock(), []
    p = pipeline(clock)
    p.use_store(LogStore(log))
    stream = LoggedAcks(log)
    committer = Committer(p, interval_s=10)
    touch(p, "a", clock.now)
    committer.changed(committer.next_seq(), stream, ["batch-1"])
    clock.now += 11
    touch(p, "b", clock.now)
    committer.changed(committer.next_seq(), stream, ["batch-2"])
    await committer.flush()
    assert log == ["flushed a", "acked batch-1"]
    committer.draining = True
    await committer.flush()
    assert log[2:] == ["flushed b", "acked batch-2"]
