"""The worker's group commit: outputs delivered, then state checkpointed, then offsets acknowledged."""

from __future__ import annotations

import random
from typing import Any

from detectors import Engine
from rpm_core.rules import load_rules
from rpm_core.sink import InfluxSink, V1Writer
from stream.pipeline import DictStore, Pipeline
from stream.protocol import MAX_CHECKPOINTS_PER_FLUSH, MAX_UNSENT_CHECKPOINTS, MIN_CHECKPOINTS_PER_FLUSH, Committer

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


def wave(p: Pipeline, n: int, t: float) -> list[str]:
    patients = [f"p{k:05d}" for k in range(n)]
    p.engine.process(p.engine.batch(patients, ["heart_rate"] * n, [t] * n, [70.0] * n))
    return patients


async def test_a_late_flush_writes_no_more_than_the_cap_and_the_budget_does_not_grow_with_lateness() -> None:
    """Under overload a flush comes late (the batch before it was slow). Its budget used to grow with
    the time since the last flush (up to the whole interval: thousands of states, seconds of
    changelog writes, so the next flush was later still). Now a flush writes at most
    MAX_CHECKPOINTS_PER_FLUSH, whatever the delay, and the batch is acknowledged only once every
    state it changed is written."""
    clock, stream = Clock(), Acks()
    p = pipeline(clock)
    committer = Committer(p, interval_s=10)
    await committer.flush()
    n = 3 * MAX_CHECKPOINTS_PER_FLUSH
    wave(p, n, clock.now)
    committer.changed(committer.next_seq(), stream, ["wave"])
    written = []
    for delay in (25.0, 12.0, 0.05, 30.0, 8.0, 60.0, 1.0):  # late flushes, and one soon after another
        clock.now += delay
        before = p.stats.checkpoints
        await committer.flush()
        written.append(p.stats.checkpoints - before)
        assert stream.acked == ([] if p.pending else ["wave"]), "acknowledged before its states were written"
    assert max(written) <= MAX_CHECKPOINTS_PER_FLUSH, written
    assert written[0] == MAX_CHECKPOINTS_PER_FLUSH and written[2] == MIN_CHECKPOINTS_PER_FLUSH
    assert sum(written) == n - p.pending
    while p.pending:
        clock.now += 1.0
        await committer.flush()
    assert stream.acked == ["wave"] and p.stats.checkpoints == n


async def test_while_written_states_wait_for_the_changelog_producer_a_flush_writes_none() -> None:
    """Back-pressure: while MAX_UNSENT_CHECKPOINTS written states still wait for the Kafka client, a
    flush writes nothing (and acknowledges nothing that depends on an unwritten state); once they
    are sent, it writes again."""
    clock, stream = Clock(), Acks()
    p = pipeline(clock)
    unsent = [MAX_UNSENT_CHECKPOINTS]
    committer = Committer(p, interval_s=10, unsent=lambda: unsent[0])
    wave(p, 100, clock.now)
    committer.changed(committer.next_seq(), stream, ["b1"])
    clock.now += 11
    await committer.flush()
    assert p.stats.checkpoints == 0 and p.pending == 100 and stream.acked == []
    unsent[0] = MAX_UNSENT_CHECKPOINTS - 1
    clock.now += 10  # a whole interval since the last flush: every pending state may be written
    await committer.flush()
    assert p.stats.checkpoints == 100 and p.pending == 0 and stream.acked == ["b1"]


async def test_the_acknowledgement_frontier_never_passes_an_unwritten_state() -> None:
    """Random batches over random patients, flushes at random delays (some far later than the
    interval), the changelog sometimes backed up: a batch is acknowledged only when no patient it
    changed is still pending from it or from an earlier batch, and acknowledgements come in order."""
    rng = random.Random(20)
    clock, stream = Clock(), Acks()
    p = pipeline(clock)
    unsent = [0]
    committer = Committer(p, interval_s=5, unsent=lambda: unsent[0])
    changed_by: dict[int, list[str]] = {}
    for _ in range(300):
        clock.now += rng.choice((0.05, 0.05, 0.2, 1.0, 7.0, 20.0))
        patients = rng.sample([f"p{k:04d}" for k in range(2000)], rng.randint(1, 400))
        p.engine.process(p.engine.batch(patients, ["heart_rate"] * len(patients), [clock.now] * len(patients),
                                        [70.0] * len(patients)))
        seq = committer.next_seq()
        changed_by[seq] = patients
        committer.changed(seq, stream, [seq])
        unsent[0] = rng.choice((0, 0, 0, MAX_UNSENT_CHECKPOINTS + 1))
        await committer.flush()
        pending = {patient: s for patient, (_since, s) in p._pending.items()}
        for acked in stream.acked:
            assert all(pending.get(patient, acked + 1) > acked for patient in changed_by[acked]), acked
    assert stream.acked == sorted(stream.acked)
    assert len(stream.acked) > 100, "the frontier moved on"
