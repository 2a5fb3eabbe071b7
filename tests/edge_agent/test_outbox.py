"""The durable outbox: ordering, batching, delete-after-ack, restarts, kill -9, the disk budget."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_agent import const
from edge_agent.outbox import AsyncOutbox, Entry, Outbox, OutboxWriter

T0 = 1_710_489_600.0  # 2024-03-15T08:00:00Z


def hr(i: int, device: str = "hr-A") -> Entry:
    return Entry(device, (("heart_rate", T0 + i, 60.0 + i % 50, 0),))


def samples_of(outbox: Outbox) -> list[tuple[str, str, float, float, int]]:
    rows = outbox._db.execute("SELECT device, metric, t, value, flags FROM readings ORDER BY id").fetchall()
    return [tuple(r) for r in rows]


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(tmp_path / "outbox.sqlite3")
    yield box
    box.close()


def test_messages_keep_each_devices_order_and_respect_the_batch_size(outbox: Outbox) -> None:
    for i in range(7):
        outbox.append([hr(i, "hr-A"), hr(100 + i, "bgm-B")])
    batch = outbox.take_batch(after=0, max_messages=10, max_samples=3)
    by_device: dict[str, list[float]] = {}
    for message in batch:
        assert len(message.samples) <= 3
        by_device.setdefault(message.device, []).extend(s[1] for s in message.samples)
    assert by_device == {"hr-A": [T0 + i for i in range(3)], "bgm-B": [T0 + 100 + i for i in range(3)]}
    assert [m.id for m in batch] == sorted(m.id for m in batch)
    rest = outbox.take_batch(after=batch[-1].id, max_messages=10, max_samples=100)
    assert [s[1] for m in rest if m.device == "hr-A" for s in m.samples] == [T0 + i for i in range(3, 7)]


def test_a_message_is_deleted_only_when_acknowledged(outbox: Outbox) -> None:
    outbox.append([hr(i) for i in range(5)])
    first = outbox.take_batch(after=0, max_messages=1, max_samples=2)
    assert outbox.count == 5
    # published, not acknowledged: on the next connection it comes again, same id, same samples
    again = outbox.take_batch(after=0, max_messages=1, max_samples=2)
    assert again == first
    assert outbox.ack([first[0].id]) == 2
    assert outbox.count == 3
    remaining = outbox.take_batch(after=0, max_messages=10, max_samples=10)
    assert [s[1] for m in remaining for s in m.samples] == [T0 + 2, T0 + 3, T0 + 4]
    assert remaining[0].id > first[0].id


def test_restart_recovers_unsent_and_unacknowledged_readings_with_the_same_ids(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    install_id = box.install_id
    box.append([hr(i) for i in range(4)])
    in_flight = box.take_batch(after=0, max_messages=1, max_samples=2)
    box.close()

    box = Outbox(path)
    try:
        assert box.install_id == install_id
        assert box.count == 4
        batch = box.take_batch(after=0, max_messages=10, max_samples=10)
        assert batch[0] == in_flight[0]  # redelivery is recognisable: same message id
        assert [s[1] for m in batch for s in m.samples] == [T0 + i for i in range(4)]
    finally:
        box.close()


def test_dedupe_key_and_watermark_are_stored_with_the_readings(outbox: Outbox) -> None:
    entry = Entry("bgm-B", (("glucose", T0, 100.0, 0),), dedupe_key="gls|SN1|1|2024", watermark=("seq", "1"))
    first = outbox.append([entry])
    second = outbox.append([Entry("bgm-B", entry.samples, dedupe_key=entry.dedupe_key, watermark=("seq", "1"))])
    assert (first.stored, first.duplicates) == (1, 0)
    assert (second.stored, second.duplicates) == (0, 1)
    assert outbox.watermark("bgm-B", "seq") == "1"
    assert outbox.watermark("bgm-B", "other") is None
    assert outbox.count == 1


def test_disk_budget_drops_oldest_rr_then_heart_rate_and_keeps_glucose(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", budget_bytes=100 * const.OUTBOX_BYTES_PER_READING)  # 100 readings
    try:
        assert box.capacity == 100
        glucose = [Entry("bgm", (("glucose", T0 + i, 100.0 + i, 0),)) for i in range(10)]
        beats = [
            Entry("hr", (("heart_rate", T0 + i, 70.0, 0), ("rr_interval", T0 + i, 0.8, 0))) for i in range(45)
        ]
        assert box.append(glucose + beats).evicted == {}  # exactly 100
        result = box.append([Entry("hr", (("heart_rate", T0 + 99, 71.0, 0),))])
        # over budget: down to 90 % by dropping the *oldest* RR intervals first
        assert result.evicted == {"rr_interval": 11}
        assert box.count == 90
        remaining_rr = [r for r in samples_of(box) if r[1] == "rr_interval"]
        assert [r[2] for r in remaining_rr] == [T0 + i for i in range(11, 45)]

        # only glucose and heart rate left: heart rate goes next, glucose stays
        box.append([Entry("bgm", (("glucose", T0 + 50 + i, 120.0, 0),)) for i in range(45)])
        kinds = [r[1] for r in samples_of(box)]
        assert kinds.count("rr_interval") == 0
        assert kinds.count("glucose") == 55
        stats = box.stats()
        assert stats.evicted_total["rr_interval"] == 45
        assert stats.evicted_total["heart_rate"] > 0
        assert stats.evicted_total["glucose"] == 0

        # glucose only: the oldest glucose goes, the newest stays
        box.append([Entry("bgm", (("glucose", T0 + 200 + i, 130.0, 0),)) for i in range(60)])
        times = [r[2] for r in samples_of(box)]
        assert box.count <= 100
        assert times[-1] == T0 + 259
        assert box.stats().evicted_total["glucose"] > 0
    finally:
        box.close()


def test_readings_of_a_message_in_flight_are_never_evicted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite3", budget_bytes=10 * const.OUTBOX_BYTES_PER_READING)
    try:
        box.append([hr(i) for i in range(5)])
        in_flight = box.take_batch(after=0, max_messages=1, max_samples=5)[0]
        box.append([hr(10 + i) for i in range(8)])
        again = box.take_batch(after=0, max_messages=1, max_samples=5)[0]
        assert again == in_flight
    finally:
        box.close()


async def test_writer_commits_queued_entries_in_one_transaction_and_counts_drops(tmp_path: Path) -> None:
    outbox = await AsyncOutbox.open(tmp_path / "o.sqlite3")
    stored = asyncio.Event()
    writer = OutboxWriter(outbox, on_stored=stored.set, maxsize=3)
    try:
        assert all(writer.submit_nowait(hr(i)) for i in range(3))
        assert not writer.submit_nowait(hr(3))  # full: dropped, never blocks a BLE callback
        assert writer.dropped == 1
        task = asyncio.create_task(writer.run())
        await stored.wait()
        result = await writer.submit(hr(4))
        assert result.stored == 1
        task.cancel()
        stats = await outbox.stats()
        assert stats.pending["heart_rate"] == 4
    finally:
        await outbox.close()


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from edge_agent.outbox import Entry, Outbox

    box = Outbox(Path(sys.argv[1]))
    i = 0
    while True:
        box.append([Entry("hr-A", (("heart_rate", 1.7e9 + i, 70.0, 0),), watermark=("n", str(i)))])
        print(i, flush=True)  # printed only after the commit returned
        i += 1
    """
)


def test_committed_readings_survive_kill_9(tmp_path: Path) -> None:
    """A real process appending in a loop is killed with SIGKILL; every commit it reported is there."""
    path = tmp_path / "outbox.sqlite3"
    with subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            last = -1
            while last < 200:
                line = child.stdout.readline()
                assert line, "the child died"
                last = int(line)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
    assert child.returncode == -signal.SIGKILL
    box = Outbox(path)
    try:
        assert box._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert box.count >= last + 1  # the commit of the line we read, and maybe one more
        watermark = int(box.watermark("hr-A", "n") or -1)
        assert watermark == box.count - 1  # the watermark never runs ahead of the readings
        times = [r[2] for r in samples_of(box)]
        assert times == [1.7e9 + i for i in range(box.count)]
    finally:
        box.close()


def test_schema_from_the_future_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    from edge_agent.errors import OutboxError

    with pytest.raises(OutboxError, match="schema 99"):
        Outbox(path)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cgm(offset: int) -> Entry:
    return Entry("cgm-C", (("glucose", T0 + 60 * offset, 100.0, 0),), dedupe_key=f"cgm|SN9|s1|{offset}")


def seen_keys(outbox: Outbox) -> int:
    return int(outbox._db.execute("SELECT COUNT(*) FROM seen").fetchone()[0])


def test_dedupe_keys_are_kept_for_their_window_and_then_deleted(tmp_path: Path) -> None:
    """A CGM reading every minute for 90 days on a patient's home hub: the seen table grew for ever.
    Now it holds the last OUTBOX_SEEN_KEEP_S of keys; within that window a repeat is still refused."""
    clock = Clock(T0)
    box = Outbox(tmp_path / "o.sqlite3", clock=clock)
    try:
        minutes = 90 * 24 * 60
        window_min = int(const.OUTBOX_SEEN_KEEP_S // 60)
        for start in range(0, minutes, 600):  # ten hours per write; the clock moves with the readings
            clock.now = T0 + 60 * start
            box.append([cgm(k) for k in range(start, start + 600)])
            box.ack([m.id for m in box.take_batch(after=0, max_messages=1000, max_samples=500)])
        assert window_min - 600 <= seen_keys(box) <= window_min + 600  # not 129,600
        recent = box.append([cgm(minutes - 5)])  # a backfill sends a record of this session again
        assert (recent.stored, recent.duplicates) == (0, 1)
        old = box.append([cgm(5)])  # past the window: stored again (downstream drops the repeat)
        assert old.stored == 1
    finally:
        box.close()


def test_at_most_seen_max_keys_the_newest(tmp_path: Path) -> None:
    clock = Clock(T0)
    box = Outbox(tmp_path / "o.sqlite3", clock=clock, seen_max_keys=100)
    try:
        for k in range(250):
            clock.now = T0 + k
            box.append([cgm(k)])
        clock.now += const.OUTBOX_SEEN_PRUNE_EVERY_S
        box.append([cgm(250)])
        assert seen_keys(box) == 100
        assert box.append([cgm(250)]).duplicates == 1 and box.append([cgm(200)]).duplicates == 1
    finally:
        box.close()


def test_an_outbox_of_schema_1_keeps_its_keys_for_a_whole_window(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE seen (key TEXT PRIMARY KEY) WITHOUT ROWID;"
                     "INSERT INTO seen VALUES ('cgm|SN9|s1|1'); PRAGMA user_version = 1;")
    db.close()
    clock = Clock(T0)
    box = Outbox(path, clock=clock)
    try:
        assert box.append([cgm(1)]).duplicates == 1
        clock.now = T0 + const.OUTBOX_SEEN_KEEP_S + const.OUTBOX_SEEN_PRUNE_EVERY_S
        box.append([cgm(2)])
        assert box.append([cgm(1)]).stored == 1
        assert box._db.execute("PRAGMA user_version").fetchone()[0] == 2
    finally:
        box.close()


def test_keys_are_still_pruned_after_the_wall_clock_is_set_back(tmp_path: Path) -> None:
    """A hub's clock set back (NTP correcting a clock that ran ahead, a hub without a real-time
    clock): the hourly prune waited until the clock passed its last prune again, for as long as
    the clock had been ahead, and the table grew past ``seen_max_keys`` meanwhile."""
    clock = Clock(T0 + 365 * 86_400.0)  # a year ahead at open (the prune at open is then)
    box = Outbox(tmp_path / "o.sqlite3", clock=clock, seen_max_keys=100)
    try:
        for k in range(250):
            clock.now = T0 + k * const.OUTBOX_SEEN_PRUNE_EVERY_S / 10  # corrected: ten writes an hour
            box.append([cgm(k)])
        assert seen_keys(box) <= 100 + 10
    finally:
        box.close()
