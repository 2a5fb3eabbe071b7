"""The durable outbox: every decoded reading is stored here before anything else happens to it.

One SQLite database in the state directory (``outbox.sqlite3``), in WAL mode with
``synchronous=FULL``: a commit is on disk when it returns, so readings survive a kill -9 *and* a
power cut (a Raspberry Pi loses power more often than its agent crashes). The cost is one fsync
per commit, which the writer amortises by committing whatever has queued up as one transaction.

Tables::

    readings(id, device, metric, t, value, flags, priority, message)  -- one row per sample
    messages(id, device)            -- an MQTT message being delivered: a fixed set of readings
    seen(key, at)                   -- de-duplication keys (glucose: serial|sequence|base time), and
                                       when first stored: kept OUTBOX_SEEN_KEEP_S, at most
                                       OUTBOX_SEEN_MAX_KEYS (the newest), so the table stays bounded
    watermarks(device, name, value) -- glucose last sequence, CGM session + last time offset
    meta(key, value)                -- install id, eviction counters

Delivery: :meth:`Outbox.take_batch` groups the oldest unsent readings of one device (up to
``max_samples``) into a ``messages`` row *before* they are published, so a message that is
published again after a reconnect or a crash has the same id and the same samples, and a receiver
recognises the redelivery by its id. :meth:`Outbox.ack` deletes a message and its readings once
the broker acknowledged it (PUBACK). Ids are AUTOINCREMENT, never reused.

Watermarks and de-duplication keys are written in the *same transaction* as the readings they
stand for: the glucose meter's "last sequence number" can never be ahead of what is stored.

Disk budget: the budget (bytes) is enforced as a number of stored readings
(:data:`~edge_agent.const.OUTBOX_BYTES_PER_READING` each). When a write takes the outbox over
it, the oldest not-yet-sent readings are evicted until it is at
:data:`~edge_agent.const.OUTBOX_LOW_WATER_FRACTION` of its budget, least critical first:

1. ``rr_interval`` (beat-to-beat detail; the heart rate itself survives),
2. ``heart_rate``,
3. ``glucose`` last: only when nothing else is left, and then the oldest first.

Readings already in a message being delivered are not evicted. Every eviction is counted per metric
(``meta``), logged as an error and published as a status alarm by the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final, ParamSpec, TypeVar

from edge_agent import const
from edge_agent.errors import OutboxError
from rpm_core.wire import METRICS, Sample

_LOGGER = logging.getLogger(__name__)

# 2: seen.at (when a de-duplication key was stored), so old keys can be deleted.
SCHEMA_VERSION: Final = 2
# Eviction order (lowest first): see the module docstring.
PRIORITY: Final[Mapping[str, int]] = {"rr_interval": 0, "heart_rate": 1, "glucose": 2}
_METRIC_BY_PRIORITY: Final = {p: m for m, p in PRIORITY.items()}

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    metric TEXT NOT NULL,
    t REAL NOT NULL,
    value REAL NOT NULL,
    flags INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    message INTEGER
);
CREATE INDEX IF NOT EXISTS readings_unsent_by_device ON readings(device, id) WHERE message IS NULL;
CREATE INDEX IF NOT EXISTS readings_unsent_by_priority ON readings(priority, id) WHERE message IS NULL;
CREATE INDEX IF NOT EXISTS readings_by_message ON readings(message) WHERE message IS NOT NULL;
CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_age ON seen(at);
CREATE TABLE IF NOT EXISTS watermarks (
    device TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (device, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """What a device session hands to the outbox: samples of one device, stored all or nothing.

    ``dedupe_key``: if already seen, the entry is skipped (counted as a duplicate).
    ``watermark``: ``(name, value)`` stored for ``device`` in the same transaction.
    """

    device: str
    samples: tuple[Sample, ...] = ()
    dedupe_key: str | None = None
    watermark: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one :meth:`Outbox.append` did."""

    stored: int = 0
    duplicates: int = 0
    evicted: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutMessage:
    """A batch of readings of one device that is published as one MQTT message."""

    id: int
    device: str
    samples: tuple[Sample, ...]


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """Counts for status messages and ``rpm edge devices``."""

    pending: Mapping[str, int]
    messages_in_flight: int
    capacity: int
    evicted_total: Mapping[str, int]

    @property
    def total(self) -> int:
        """Readings waiting."""
        return sum(self.pending.values())


class Outbox:
    """The SQLite outbox. Not thread-safe: use it from one thread (:class:`AsyncOutbox` does)."""

    def __init__(self, path: Path, *, budget_bytes: int = const.DEFAULT_OUTBOX_BUDGET_BYTES,
                 seen_keep_s: float = const.OUTBOX_SEEN_KEEP_S, seen_max_keys: int = const.OUTBOX_SEEN_MAX_KEYS,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.capacity = max(1, budget_bytes // const.OUTBOX_BYTES_PER_READING)
        self._seen_keep_s = seen_keep_s
        self._seen_max_keys = seen_max_keys
        self._clock = clock
        self._pruned_at = -math.inf
        self._db = _connect(path)
        self._count = 0
        self._pending_devices: set[str] = set()
        try:
            self._init_schema()
        except sqlite3.Error as exc:
            self._db.close()
            raise OutboxError(f"cannot open the outbox {path}: {exc}") from exc

    def _init_schema(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise OutboxError(f"{self.path} has schema {version}; this agent knows {SCHEMA_VERSION}: upgrade it")
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(seen)")}
        if columns and "at" not in columns:  # schema 1: its keys count as stored now (kept a whole window)
            with self._tx():
                self._db.execute("ALTER TABLE seen ADD COLUMN at REAL NOT NULL DEFAULT 0")
                self._db.execute("UPDATE seen SET at = ?", (self._clock(),))
        self._db.executescript(_SCHEMA)  # idempotent; executescript manages its own transaction
        with self._tx():
            self._prune_seen()
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('install_id', ?)", (secrets.token_hex(4),))
        self._count = self._db.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
        rows = self._db.execute("SELECT DISTINCT device FROM readings WHERE message IS NULL")
        self._pending_devices = {r[0] for r in rows}

    def close(self) -> None:
        """Close the database (a WAL checkpoint happens on the last close)."""
        self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:  # disk full, I/O error, corrupt file: nothing was committed
            raise OutboxError(f"outbox {self.path}: {exc}") from exc

    @property
    def install_id(self) -> str:
        """A random id of this outbox, the prefix of message ids (unique across re-installs)."""
        return str(self._meta("install_id"))

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    # -- writing

    def append(self, entries: Sequence[Entry]) -> AppendResult:
        """Store ``entries`` (samples, de-duplication keys, watermarks) in one transaction."""
        stored = duplicates = 0
        with self._tx():
            for entry in entries:
                added = self._append_one(entry)
                stored += max(added, 0)
                duplicates += added < 0
            evicted = self._enforce_budget()
            # also when the clock was set back (it would otherwise wait until it passes the last prune)
            since = self._clock() - self._pruned_at
            if since >= const.OUTBOX_SEEN_PRUNE_EVERY_S or since < 0:
                self._prune_seen()
        return AppendResult(stored, duplicates, evicted)

    def _prune_seen(self) -> int:
        """Delete de-duplication keys older than the window, then all but the newest
        ``seen_max_keys``; the number deleted. Inside a transaction."""
        now = self._clock()
        self._pruned_at = now
        deleted = self._db.execute("DELETE FROM seen WHERE at < ?", (now - self._seen_keep_s,)).rowcount
        over = self._db.execute("SELECT COUNT(*) FROM seen").fetchone()[0] - self._seen_max_keys
        if over > 0:
            deleted += self._db.execute(
                "DELETE FROM seen WHERE key IN (SELECT key FROM seen ORDER BY at, key LIMIT ?)", (over,)).rowcount
        if deleted:
            _LOGGER.info("outbox: %d de-duplication keys past their window deleted", deleted)
        return int(deleted)

    def _append_one(self, entry: Entry) -> int:
        """Store one entry; the number of samples stored, or -1 for a duplicate."""
        if entry.watermark is not None:
            self._db.execute("INSERT OR REPLACE INTO watermarks VALUES (?, ?, ?)", (entry.device, *entry.watermark))
        if entry.dedupe_key is not None:
            cursor = self._db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (entry.dedupe_key, self._clock()))
            if cursor.rowcount == 0:
                return -1
        rows = [(entry.device, m, t, v, f, PRIORITY[m]) for m, t, v, f in entry.samples]
        self._db.executemany(
            "INSERT INTO readings (device, metric, t, value, flags, priority) VALUES (?, ?, ?, ?, ?, ?)", rows
        )
        self._count += len(rows)
        if rows:
            self._pending_devices.add(entry.device)
        return len(rows)

    def _enforce_budget(self) -> dict[str, int]:
        if self._count <= self.capacity:
            return {}
        excess = self._count - int(self.capacity * const.OUTBOX_LOW_WATER_FRACTION)
        evicted: dict[str, int] = {}
        for priority in sorted(_METRIC_BY_PRIORITY):
            if excess <= 0:
                break
            cursor = self._db.execute(
                "DELETE FROM readings WHERE id IN (SELECT id FROM readings WHERE message IS NULL AND priority = ?"
                " ORDER BY id LIMIT ?)",
                (priority, excess),
            )
            if cursor.rowcount > 0:
                evicted[_METRIC_BY_PRIORITY[priority]] = cursor.rowcount
                excess -= cursor.rowcount
                self._count -= cursor.rowcount
        for metric, count in evicted.items():
            key = f"evicted.{metric}"
            self._db.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + ?",
                (key, str(count), count),
            )
        return evicted

    # -- delivering

    def take_batch(self, *, after: int, max_messages: int, max_samples: int) -> list[OutMessage]:
        """Messages to publish, oldest first: unacknowledged ones with id > ``after`` (again, same
        id and samples), then new ones of ``max_samples`` readings of one device each, round robin
        over the devices that have readings waiting."""
        with self._tx():
            messages = self._existing_messages(after, max_messages)
            for device in sorted(self._pending_devices):
                if len(messages) >= max_messages:
                    break
                message = self._new_message(device, max_samples)
                if message is None:
                    self._pending_devices.discard(device)
                else:
                    messages.append(message)
        return messages

    def _existing_messages(self, after: int, limit: int) -> list[OutMessage]:
        found = self._db.execute("SELECT id, device FROM messages WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
        messages = []
        for message_id, device in found.fetchall():
            rows = self._db.execute(
                "SELECT metric, t, value, flags FROM readings WHERE message = ? ORDER BY id", (message_id,)
            ).fetchall()
            if rows:
                messages.append(OutMessage(message_id, device, tuple(rows)))
            else:  # nothing left to deliver (cannot happen: in-flight readings are never evicted)
                self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
        return messages

    def _new_message(self, device: str, max_samples: int) -> OutMessage | None:
        rows = self._db.execute(
            "SELECT id, metric, t, value, flags FROM readings WHERE message IS NULL AND device = ? ORDER BY id LIMIT ?",
            (device, max_samples),
        ).fetchall()
        if not rows:
            return None
        message_id = self._db.execute("INSERT INTO messages (device) VALUES (?)", (device,)).lastrowid
        assert message_id is not None
        self._db.execute(
            "UPDATE readings SET message = ? WHERE message IS NULL AND device = ? AND id <= ?",
            (message_id, device, rows[-1][0]),
        )
        return OutMessage(message_id, device, tuple((m, t, v, f) for _id, m, t, v, f in rows))

    def ack(self, message_ids: Sequence[int]) -> int:
        """Delete acknowledged messages and their readings; the number of readings deleted."""
        if not message_ids:
            return 0
        marks = ",".join("?" * len(message_ids))
        with self._tx():
            deleted = self._db.execute(f"DELETE FROM readings WHERE message IN ({marks})", message_ids).rowcount  # noqa: S608
            self._db.execute(f"DELETE FROM messages WHERE id IN ({marks})", message_ids)  # noqa: S608
        self._count -= deleted
        return deleted

    # -- reading state

    def watermark(self, device: str, name: str) -> str | None:
        """The watermark ``name`` of ``device``, if one was stored."""
        row = self._db.execute("SELECT value FROM watermarks WHERE device = ? AND name = ?", (device, name)).fetchone()
        return None if row is None else str(row[0])

    def stats(self) -> OutboxStats:
        """Pending readings per metric, messages in flight, capacity, evictions so far."""
        pending = dict.fromkeys(METRICS, 0)
        pending.update(self._db.execute("SELECT metric, COUNT(*) FROM readings GROUP BY metric").fetchall())
        in_flight = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        evicted = {m: int(self._meta(f"evicted.{m}") or 0) for m in METRICS}
        return OutboxStats(pending, in_flight, self.capacity, evicted)

    def pending_by_device(self) -> dict[str, int]:
        """Readings waiting (unsent or unacknowledged) per device."""
        return dict(self._db.execute("SELECT device, COUNT(*) FROM readings GROUP BY device").fetchall())

    @property
    def count(self) -> int:
        """Readings stored (sent or not, until acknowledged)."""
        return self._count


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit survives a power cut, not only a crash (see the module docstring).
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA busy_timeout = 5000")
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot open the outbox {path}: {exc}") from exc
    return db


_P = ParamSpec("_P")
_T = TypeVar("_T")


class AsyncOutbox:
    """:class:`Outbox` for asyncio code: every call runs on one dedicated thread, off the event loop."""

    def __init__(self, outbox: Outbox, executor: ThreadPoolExecutor) -> None:
        self._outbox = outbox
        self._executor = executor
        self.install_id = outbox.install_id
        self.capacity = outbox.capacity

    @classmethod
    async def open(cls, path: Path, *, budget_bytes: int = const.DEFAULT_OUTBOX_BUDGET_BYTES) -> AsyncOutbox:
        """Open (creating) the outbox at ``path``."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox")
        try:
            loop = asyncio.get_running_loop()
            outbox = await loop.run_in_executor(executor, partial(Outbox, path, budget_bytes=budget_bytes))
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(outbox, executor)

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args, **kwargs))

    async def append(self, entries: Sequence[Entry]) -> AppendResult:
        """See :meth:`Outbox.append`."""
        return await self._run(self._outbox.append, entries)

    async def take_batch(self, *, after: int, max_messages: int, max_samples: int) -> list[OutMessage]:
        """See :meth:`Outbox.take_batch`."""
        return await self._run(self._outbox.take_batch, after=after, max_messages=max_messages, max_samples=max_samples)

    async def ack(self, message_ids: Sequence[int]) -> int:
        """See :meth:`Outbox.ack`."""
        return await self._run(self._outbox.ack, message_ids)

    async def watermark(self, device: str, name: str) -> str | None:
        """See :meth:`Outbox.watermark`."""
        return await self._run(self._outbox.watermark, device, name)

    async def stats(self) -> OutboxStats:
        """See :meth:`Outbox.stats`."""
        return await self._run(self._outbox.stats)

    async def close(self) -> None:
        """Close the database and stop the thread."""
        await self._run(self._outbox.close)
        self._executor.shutdown(wait=True)


class OutboxWriter:
    """Drains the bounded queue that BLE callbacks fill into the outbox, one transaction per batch.

    ``submit_nowait`` is what a notify callback calls (never blocks; a full queue drops the entry
    and counts it); coroutines that can wait use ``submit``. After each commit ``on_stored`` runs
    (the publisher wakes up) and evictions are reported through ``on_evicted``.
    """

    def __init__(
        self,
        outbox: AsyncOutbox,
        *,
        on_stored: Callable[[], None] = lambda: None,
        on_evicted: Callable[[Mapping[str, int]], None] = lambda _e: None,
        maxsize: int = const.READING_QUEUE_MAX_ENTRIES,
    ) -> None:
        self._outbox = outbox
        self._queue: asyncio.Queue[tuple[Entry, asyncio.Future[AppendResult] | None]] = asyncio.Queue(maxsize)
        self._on_stored = on_stored
        self._on_evicted = on_evicted
        self.dropped = 0
        self.duplicates = 0
        self.stored = 0

    def submit_nowait(self, entry: Entry) -> bool:
        """Queue ``entry``; False (and counted, logged as an error once) if the queue is full."""
        try:
            self._queue.put_nowait((entry, None))
        except asyncio.QueueFull:
            if not self.dropped:
                _LOGGER.error("reading queue full (%d entries): the outbox cannot keep up", self._queue.maxsize)
            self.dropped += 1
            return False
        return True

    async def enqueue(self, entry: Entry) -> asyncio.Future[AppendResult]:
        """Queue ``entry`` (waiting for room); the future resolves once it is committed."""
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        await self._queue.put((entry, future))
        return future

    async def submit(self, entry: Entry) -> AppendResult:
        """Queue ``entry`` (waiting for room) and return once it is committed."""
        return await (await self.enqueue(entry))

    async def run(self) -> None:
        """Commit queued entries until cancelled."""
        while True:
            batch = [await self._queue.get()]
            await self._commit(batch)

    async def flush(self) -> None:
        """Commit whatever is queued (on shutdown, after the sessions stopped)."""
        while not self._queue.empty():
            await self._commit([])

    async def _commit(self, batch: list[tuple[Entry, asyncio.Future[AppendResult] | None]]) -> None:
        while len(batch) < const.OUTBOX_WRITE_BATCH_MAX_ENTRIES and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        try:
            result = await self._outbox.append([entry for entry, _future in batch])
        except BaseException as exc:
            for _entry, future in batch:
                if future is not None and not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else OutboxError("writer stopped"))
            raise
        self.stored += result.stored
        self.duplicates += result.duplicates
        for _entry, future in batch:
            if future is not None and not future.done():
                future.set_result(result)
        if result.evicted:
            self._on_evicted(result.evicted)
        self._on_stored()


def merge_counts(*counts: Mapping[str, int]) -> dict[str, int]:
    """Sum per-key counts (eviction reports)."""
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return dict(total)
