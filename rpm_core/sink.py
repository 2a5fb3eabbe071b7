"""The InfluxDB sink: batched line-protocol writes with retries, for InfluxDB 1.x and 2.x+.

- v1 (``/write?db=…``, Debian's InfluxDB 1.6 and every 1.8+): a plain aiohttp POST.
- v2 (``/api/v2/write``, InfluxDB 1.8+/2.x/3.x): influxdb-client's async write API; chosen when
  ``RPM_INFLUX_TOKEN`` is set.

Failure policy (what a worker does when InfluxDB misbehaves):
- down, refusing connections or answering 5xx/429: retry the same batch with jittered backoff,
  forever. The caller awaits, so the Faust agent stops taking records and the backlog stays in
  Kafka, not in memory (bounded memory; nothing lost).
- a configuration fault (no such database or bucket, credentials refused: 401, 403, 404 naming a
  database, bucket or organisation): not the points' fault, so nothing is dead-lettered. On 1.x a
  missing database is created (``CREATE DATABASE``, logged) when the credentials allow it;
  otherwise the write waits, like an outage, and ``SinkStats.problem`` says exactly what to fix
  (the worker's log, ``/healthz`` and its heartbeat, hence the technical alert).
- a limit of InfluxDB 1.x (``max-values-per-tag``, ``max-series-per-database``; 100,000 and
  1,000,000 by default): a "partial write" (400) refusing the points of new series beyond the
  limit. Not the points' fault, and stopping every write (as for a configuration fault) would stop
  detection for every patient; so only the refused lines are dead-lettered, with a reason naming
  the limit and the fix, and ``SinkStats.limit`` says it while it lasts (the worker's ``/healthz``
  and heartbeat, hence the watchdog's technical warning). No bisection for max-values-per-tag: the
  answer names a refused tag value; the lines carrying it are dead-lettered and the rest written
  again (idempotent) until InfluxDB takes all of it, in halves while its ``dropped=`` says other
  values were refused too (each answer names one). (The rest must be written again: InfluxDB 1.6
  was seen to lose some points of known series in such a partial write without counting them in
  its ``dropped=``.) max-series-per-database names no series: its refused lines are found by
  halving. Either way the sink remembers what was refused
  (at most ``MAX_REMEMBERED`` tag values and series, oldest forgotten first) and dead-letters later
  lines of it without a request; every ``RECHECK_S`` one refused line is written again: refused,
  the warning stays; taken (the limit was raised), everything is forgotten and the warning cleared.
- any other 4xx: the points themselves are bad. Bisect the batch until the bad lines are isolated,
  write the good ones, and hand the bad ones back to the caller to dead-letter (re-writing the good
  ones of a 1.x "partial write", which InfluxDB already wrote, is idempotent).
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import aiohttp
import orjson

from rpm_core.backoff import backoff_s
from rpm_core.errors import SinkConfigError, SinkLimitError, SinkRejectedError, SinkUnavailableError, limit_reason
from rpm_core.lineprotocol import PRECISION, join_lines
from rpm_core.settings import InfluxAuth, split_influx_url

_LOGGER = logging.getLogger(__name__)

# Lines per request. InfluxDB's guidance is 5,000-10,000 and one client writing alone measured best
# at 5,000 (~240k points/s); but the worker waits for each answer before it goes on (half of its
# time under load), and end to end 20,000 landed 1.11x at 2x overload, with a lower p99 and worker
# CPU per reading at 140,000/s (alternated runs, benchmarks/RESULTS.md "Overload, session 16").
# ~2 MB a request: far below InfluxDB's default max-body-size of 25 MB; sent as a stream (aiohttp
# warns that a body of raw bytes over 1 MB may hold up the event loop).
MAX_LINES_PER_WRITE: Final = 20_000
# The v2 API goes through influxdb-client, which hands aiohttp the body as it is: kept under 1 MB.
MAX_LINES_PER_WRITE_V2: Final = 5_000
WRITE_TIMEOUT_S: Final = 30.0
# A missing database that could not be created: try again this often (someone may grant the right).
CREATE_RETRY_S: Final = 60.0
# Tag values and series an InfluxDB limit refused, remembered so their later lines are dead-lettered
# without a request (bounded: one string of ~100-200 bytes each with the dict's entry, ~10 MB at
# most; the oldest forgotten first, and then found again at the cost of a few requests).
MAX_REMEMBERED: Final = 50_000
_VALUES_LIMIT_NAME: Final = "max-values-per-tag"
# While something is remembered as refused, one refused line is written again this often: the way
# to notice the limit was raised (and to stop saying it is there).
RECHECK_S: Final = 60.0

_QUOTED = r'"((?:[^"\\]|\\.)*)"'
_VALUES_LIMIT = re.compile(r"max-values-per-tag limit exceeded \(\d+/\d+\): measurement=" + _QUOTED
                           + " tag=" + _QUOTED + " value=" + _QUOTED)
_SERIES_LIMIT = "max-series-per-database limit exceeded"
_DROPPED = re.compile(r"dropped=(\d+)")
_GO_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)")
_GO_CHAR = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_TAG_UNESCAPE = re.compile(r"\\([,= ])")
_KEY = re.compile(r"(?:[^ \\]|\\.)+")
_TAG_PAIR = re.compile(r",((?:[^,=\\]|\\.)+)=((?:[^,\\]|\\.)*)")


def _go_unquote(text: str) -> str:
    """The string Go's ``%q`` quoted (InfluxDB names the refused tag value so)."""
    def one(m: re.Match[str]) -> str:
        esc = m.group(1)
        return chr(int(esc[1:], 16)) if len(esc) > 1 else _GO_CHAR.get(esc, esc)
    return _GO_ESCAPE.sub(one, text)


def rejection(status: int, body: str) -> SinkRejectedError:
    """The error for a 4xx ``body`` that is no configuration fault: a :class:`SinkLimitError` when a
    limit of InfluxDB 1.x refused new series (v1 ``{"error": …}``, v2 ``{"message": …}`` or text)."""
    text = body
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    said = doc.get("error", doc.get("message")) if isinstance(doc, dict) else None
    if isinstance(said, str):
        text = said
    dropped = _DROPPED.search(text)
    count = int(dropped.group(1)) if dropped else None
    named = _VALUES_LIMIT.search(text)
    if named:
        m, tag, value = (_go_unquote(g) for g in named.groups())
        return SinkLimitError(status, body, limit=_VALUES_LIMIT_NAME, dropped=count, measurement=m, tag=tag,
                              value=value)
    if "max-values-per-tag limit exceeded" in text:
        return SinkLimitError(status, body, limit=_VALUES_LIMIT_NAME, dropped=count)
    if _SERIES_LIMIT in text:
        return SinkLimitError(status, body, limit="max-series-per-database", dropped=count)
    return SinkRejectedError(status, body)


def series_of(line: str) -> tuple[str, str, dict[str, str]]:
    """A line-protocol line's series key (as written), measurement and tags (unescaped)."""
    space = line.find(" ")
    key = line[:space] if space >= 0 else line
    if "\\" not in key:
        measurement, _, rest = key.partition(",")
        tags = dict(pair.split("=", 1) for pair in rest.split(",") if "=" in pair) if rest else {}
        return key, measurement, tags
    match = _KEY.match(line)
    key = match.group(0) if match else line
    first = _TAG_PAIR.search(key)
    measurement = _TAG_UNESCAPE.sub(r"\1", key[: first.start()] if first else key)
    return key, measurement, {_TAG_UNESCAPE.sub(r"\1", k): _TAG_UNESCAPE.sub(r"\1", v)
                              for k, v in _TAG_PAIR.findall(key)}


class LineWriter(Protocol):
    """Writes one batch of lines or raises SinkUnavailableError / SinkRejectedError."""

    async def write(self, body: bytes) -> None:
        """Write ``body`` (newline-separated lines)."""

    async def close(self) -> None:
        """Release connections."""


def config_fault(status: int, body: str, *, db: str, api: str, who: str = "") -> SinkConfigError | None:
    """The configuration fault an InfluxDB answer reports (``api``: ``v1`` or ``v2``), if it is one.

    ``who`` (:meth:`InfluxAuth.describe`) names the credentials used, so the message says whose they were.
    """
    text = body.lower()
    as_who = f" ({who})" if who else ""
    if status == 401:
        fix = ("check RPM_INFLUX_TOKEN_FILE / RPM_INFLUX_TOKEN (an API token with write access to the bucket)"
               if api == "v2" else
               "check RPM_INFLUX_USER and RPM_INFLUX_PASSWORD_FILE (the user and password of an InfluxDB user "
               f"with WRITE on {db!r})")
        if who == "no credentials":
            return SinkConfigError("InfluxDB requires credentials and this worker has none (401)", fix)
        return SinkConfigError(f"InfluxDB refused this worker's credentials{as_who} (401)", fix)
    if status == 403:
        return SinkConfigError(f"InfluxDB does not let this worker{as_who} write to {db!r} (403)",
                               f"grant RPM_INFLUX_USER WRITE on {db!r} (1.x: GRANT WRITE ON \"{db}\" TO <user>) "
                               "or use a token with write access (RPM_INFLUX_TOKEN_FILE)")
    if status == 404 and "database not found" in text:
        return SinkConfigError(f"InfluxDB has no database {db!r}",
                               f"create it (influx -execute 'CREATE DATABASE \"{db}\"') or set RPM_INFLUX_DB")
    if status == 404 and "bucket" in text:
        return SinkConfigError(f"InfluxDB has no bucket {db!r}",
                               f"create it (influx bucket create -n {db}) or set RPM_INFLUX_DB")
    if status == 404 and "organization" in text:
        return SinkConfigError("InfluxDB does not know the organisation in RPM_INFLUX_ORG", "set RPM_INFLUX_ORG")
    return None


class V1Writer:
    """``POST /write?db=…&precision=ms`` (InfluxDB 1.x API)."""

    def __init__(self, *, url: str, db: str, retention_policy: str | None = None,
                 auth: InfluxAuth | None = None) -> None:
        self._base, from_url = split_influx_url(url)
        self._auth = auth if auth is not None and auth.authorization() else from_url
        self._url = f"{self._base}/write"
        self._db = db
        self._params = {"db": db, "precision": PRECISION, **({"rp": retention_policy} if retention_policy else {})}
        self._session: aiohttp.ClientSession | None = None
        self._create_after = 0.0  # time.monotonic() before which not to try CREATE DATABASE again

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WRITE_TIMEOUT_S),
                                                  headers=self._auth.headers())
        return self._session

    async def write(self, body: bytes) -> None:
        """Write one batch (creating a missing database once, if allowed)."""
        status, text = await self._post(self._url, params=self._params, data=io.BytesIO(body))
        if status == 204:
            return
        if status >= 500 or status == 429:
            raise SinkUnavailableError(f"InfluxDB answered {status}: {text[:200]}")
        fault = config_fault(status, text, db=self._db, api="v1", who=self._auth.describe())
        if fault is not None and status == 404 and time.monotonic() >= self._create_after:
            self._create_after = time.monotonic() + CREATE_RETRY_S
            if await self._create_database():
                return await self.write(body)
        if fault is not None:
            raise fault
        raise rejection(status, text)

    async def _post(self, url: str, **kw: Any) -> tuple[int, str]:
        try:
            async with self._client().post(url, **kw) as resp:
                return resp.status, await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SinkUnavailableError(f"InfluxDB unreachable: {exc!r}") from exc

    async def _create_database(self) -> bool:
        """``CREATE DATABASE`` (idempotent in InfluxDB 1.x); True if it worked."""
        name = self._db.replace("\\", "\\\\").replace('"', '\\"')
        status, text = await self._post(f"{self._base}/query", data={"q": f'CREATE DATABASE "{name}"'})
        if status == 200 and '"error"' not in text:
            _LOGGER.warning("InfluxDB had no database %r: created it", self._db)
            return True
        _LOGGER.error("InfluxDB has no database %r and creating it failed (%d): %s", self._db, status, text[:200])
        return False

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()


class V2Writer:
    """``/api/v2/write`` through influxdb-client's async API (InfluxDB 1.8+, 2.x, 3.x)."""

    def __init__(self, *, url: str, bucket: str, org: str | None, token: str) -> None:
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
        from influxdb_client.domain.write_precision import WritePrecision

        self._precision = WritePrecision.MS

        self._client = InfluxDBClientAsync(url=url, token=token, org=org or "-", timeout=int(WRITE_TIMEOUT_S * 1000))
        self._bucket = bucket
        self._api = self._client.write_api()

    async def write(self, body: bytes) -> None:
        """Write one batch."""
        from influxdb_client.rest import ApiException

        try:
            await self._api.write(bucket=self._bucket, record=body.decode(), write_precision=self._precision)  # type: ignore[arg-type]
        except ApiException as exc:
            status = int(exc.status or 0)
            if status >= 500 or status == 429 or status == 0:
                raise SinkUnavailableError(f"InfluxDB answered {status}: {exc.body!r:.200}") from exc
            # influxdb-client's async API gives the body as bytes (str() of them would be their repr)
            text = exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(exc.body or "")
            fault = config_fault(status, text, db=self._bucket, api="v2")
            if fault is not None:
                raise fault from exc
            raise rejection(status, text) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SinkUnavailableError(f"InfluxDB unreachable: {exc!r}") from exc

    async def close(self) -> None:
        """Close the client."""
        await self._client.close()  # type: ignore[no-untyped-call]


@dataclass
class SinkStats:
    """Counters for metrics and tests."""

    lines_written: int = 0
    writes: int = 0
    retries: int = 0
    rejected_lines: int = 0
    # time.monotonic() of the first failed attempt of the write under way; None while writes succeed.
    failing_since: float | None = None
    # A configuration fault under way (what is wrong and how to fix it); None when there is none.
    problem: str | None = None
    # An InfluxDB limit refusing some points (which limit, what to set); None when none is known.
    # Unlike ``problem`` every other point is written: a warning, not a fault.
    limit: str | None = None
    limit_refused: int = 0  # lines dead-lettered because of a limit (also in rejected_lines)
    write_s: float = 0.0  # wall time in write(): InfluxDB's answers (and retries) included


@dataclass
class InfluxSink:
    """Batched, retrying writer of line-protocol lines."""

    writer: LineWriter
    max_lines: int = MAX_LINES_PER_WRITE
    stats: SinkStats = field(default_factory=SinkStats)

    # What a limit refused, oldest first: "measurement\0tag\0value" (max-values-per-tag) and series
    # keys as written (max-series-per-database); and the tags at their limit: (measurement, tag) -> ",tag=".
    _values: dict[str, None] = field(default_factory=dict, repr=False)
    _series: dict[str, str] = field(default_factory=dict, repr=False)  # series key -> the limit
    _full_tags: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    _sample: str | None = field(default=None, repr=False)  # a refused line, to see whether the limit is gone
    _recheck_at: float = field(default=0.0, repr=False)

    async def write(self, lines: Sequence[str]) -> list[tuple[str, str]]:
        """Write every line; return the rejected ones as (line, reason) for the dead-letter topic.

        Waits (retrying with backoff) for as long as InfluxDB is unavailable.
        """
        rejected: list[tuple[str, str]] = []
        began = time.perf_counter()
        try:
            await self.recheck_due()
            for start in range(0, len(lines), self.max_lines):
                rejected += await self._write_chunk(lines[start : start + self.max_lines])
        finally:
            self.stats.write_s += time.perf_counter() - began
        return rejected

    async def recheck_due(self) -> None:
        """While a limit is said, every ``RECHECK_S``: see whether it still refuses (by every
        :meth:`write`, and by the worker's timer: a worker that writes nothing, e.g. left without
        partitions, would otherwise say the limit for ever after it was raised)."""
        if self._sample is not None and time.monotonic() >= self._recheck_at:
            await self._recheck(self._sample)

    async def _recheck(self, line: str) -> None:
        """Write a refused line again: if a limit still refuses it, keep everything; else forget."""
        self._recheck_at = time.monotonic() + RECHECK_S
        try:
            await self._write_retrying(join_lines([line]))
        except SinkLimitError as exc:
            self.stats.limit = self._limit_text(exc)
            return
        except SinkRejectedError:
            pass
        _LOGGER.warning("InfluxDB takes points it refused for a limit again: %d tag values and %d series forgotten",
                        len(self._values), len(self._series))
        self._values.clear()
        self._series.clear()
        self._full_tags.clear()
        self._sample = None
        self.stats.limit = None

    def _known(self, lines: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
        """The lines remembered as refused, with their reasons, and the others (1-2 µs a line measured)."""
        if not self._values and not self._series:
            return [], list(lines)
        known: list[tuple[str, str]] = []
        rest: list[str] = []
        values, series = self._values, self._series
        full = [(f"{m},", needle, f"{m}\0{t}\0") for (m, t), needle in self._full_tags.items()]
        for line in lines:
            key = line[: line.find(" ")]
            hit = None
            if "\\" in key:  # escapes: the slow, exact way
                key, measurement, tags = series_of(line)
                hit = next((f"{m}\0{t}\0{tags[t]}" for (m, t) in self._full_tags
                            if m == measurement and t in tags and f"{m}\0{t}\0{tags[t]}" in values), None)
            else:
                for prefix, needle, base in full:
                    at = key.find(needle) if key.startswith(prefix) else -1
                    if at >= 0:
                        at += len(needle)
                        end = key.find(",", at)
                        value = base + (key[at:end] if end >= 0 else key[at:])
                        if value in values:
                            hit = value
                            break
            if hit is not None:
                m, t, v = hit.split("\0")
                known.append((line, limit_reason(_VALUES_LIMIT_NAME, m, t, v)))
            elif key in series:
                known.append((line, limit_reason(series[key])))
            else:
                rest.append(line)
        return known, rest

    def _remember(self, store: dict[str, Any], key: str, limit: str | None = None) -> None:
        if key not in store and len(self._values) + len(self._series) >= MAX_REMEMBERED:
            if len(self._values) >= len(self._series):
                del self._values[next(iter(self._values))]
            else:
                del self._series[next(iter(self._series))]
        store[key] = limit

    def _limited(self, exc: SinkLimitError, line: str) -> None:
        """A limit refused ``line``: say so (logged when it starts), and keep the line to recheck."""
        if self._sample is None:
            self._recheck_at = time.monotonic() + RECHECK_S
        self._sample = line
        if self.stats.limit is None:
            _LOGGER.error("%s", self._limit_text(exc))
        self.stats.limit = self._limit_text(exc)

    def _limit_text(self, exc: SinkLimitError) -> str:
        return (f"InfluxDB's {exc.limit} limit refuses the points of new series (dead-lettered, every other "
                f"point is written; rpm_sink_limit_refused_lines_total counts them): {exc.fix}")

    def _refused(self, lines: list[tuple[str, str]]) -> list[tuple[str, str]]:
        self.stats.rejected_lines += len(lines)
        self.stats.limit_refused += len(lines)
        return lines

    async def _write_chunk(self, lines: Sequence[str]) -> list[tuple[str, str]]:
        rejected, pending = self._known(lines)
        self.stats.rejected_lines += len(rejected)
        self.stats.limit_refused += len(rejected)
        while pending:
            try:
                await self._write_retrying(join_lines(pending))
            except SinkLimitError as exc:
                if exc.value is not None and exc.tag is not None and exc.measurement is not None:
                    self._full_tags[(exc.measurement, exc.tag)] = f",{exc.tag}="
                    self._remember(self._values, f"{exc.measurement}\0{exc.tag}\0{exc.value}")
                    named, rest = self._known(pending)
                    if named:
                        rejected += self._refused(named)
                        self._limited(exc, named[0][0])
                        # The rest is written again (idempotent) until InfluxDB takes all of it: 1.6
                        # loses some points of known series in such a partial write without counting
                        # them. If it dropped more than the named lines, other values were refused
                        # too: halves, so that each answer names one of them in fewer lines.
                        if (exc.dropped is None or exc.dropped > len(named)) and len(rest) > 1:
                            mid = len(rest) // 2
                            return (rejected + await self._write_chunk(rest[:mid])
                                    + await self._write_chunk(rest[mid:]))
                        pending = rest
                        continue
                if len(pending) == 1:  # max-series-per-database names no series: found by halving
                    self._remember(self._series, series_of(pending[0])[0], exc.limit)
                    self._limited(exc, pending[0])
                    return rejected + self._refused([(pending[0], exc.reason())])
                mid = len(pending) // 2
                return rejected + await self._write_chunk(pending[:mid]) + await self._write_chunk(pending[mid:])
            except SinkRejectedError as exc:
                if len(pending) == 1:
                    self.stats.rejected_lines += 1
                    return [*rejected, (pending[0], f"InfluxDB rejected the point ({exc.status}): {exc.body[:300]}")]
                mid = len(pending) // 2
                return rejected + await self._write_chunk(pending[:mid]) + await self._write_chunk(pending[mid:])
            self.stats.lines_written += len(pending)
            return rejected
        return rejected

    async def _write_retrying(self, body: bytes) -> None:
        attempt = 0
        while True:
            try:
                await self.writer.write(body)
                self.stats.writes += 1
                self.stats.failing_since = None
                self.stats.problem = None
                return
            except SinkUnavailableError as exc:
                attempt += 1
                if self.stats.failing_since is None:
                    self.stats.failing_since = time.monotonic()
                self.stats.retries += 1
                delay = backoff_s(attempt)
                if isinstance(exc, SinkConfigError):
                    self.stats.problem = str(exc)
                    if attempt == 1 or attempt % 10 == 0:
                        _LOGGER.error("InfluxDB cannot take writes: %s (nothing is dead-lettered; waiting, attempt "
                                      "%d)", exc, attempt)
                elif attempt == 1 or attempt % 10 == 0:
                    _LOGGER.warning("InfluxDB write failed (attempt %d), retrying in %.1f s: %s", attempt, delay, exc)
                await asyncio.sleep(delay)

    async def close(self) -> None:
        """Close the writer."""
        await self.writer.close()


def make_sink(*, url: str, db: str, token: str = "", org: str | None = None, auth: InfluxAuth | None = None,
              **kwargs: Any) -> InfluxSink:
    """A sink for the v2 API when a token is given (``token`` or in ``auth``), else the v1 API
    (authenticated as ``auth``'s user, or a user in ``url``)."""
    writer: LineWriter
    token = token or (auth.token.get() if auth is not None else "")
    if token:
        writer = V2Writer(url=split_influx_url(url)[0], bucket=db, org=org, token=token)
        kwargs.setdefault("max_lines", MAX_LINES_PER_WRITE_V2)
    else:
        writer = V1Writer(url=url, db=db, auth=auth)
    return InfluxSink(writer=writer, **kwargs)
