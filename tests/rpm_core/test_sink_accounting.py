"""The sink alone, against a stand-in for InfluxDB 1.x's write endpoint with its limits (the real
InfluxDB 1.6 with low limits is in tests/stream/test_sink.py): whatever the batch, every line is
either written or handed back as rejected, exactly once, and the counts say so.

The stand-in does what InfluxDB 1.6's inmem index does: a point of a new series is dropped when the
database holds ``max_series`` series, or when one of its tag values would be value number
``max_values + 1`` of that tag; the others are written; the answer (a "partial write", 400) names
the first refused tag value (or none, for the series limit) and counts the dropped points. A line
that does not parse is dropped too ("unable to parse", named by no limit)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from unittest.mock import patch

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from rpm_core.sink import InfluxSink, rejection, series_of

_TIME = re.compile(r" (\d+)$")


class LimitedInflux:
    """A LineWriter storing points in a dict; ``max_values`` / ``max_series`` 0: no limit."""

    def __init__(self, max_values: int, max_series: int) -> None:
        self.max_values = max_values
        self.max_series = max_series
        self.points: dict[tuple[str, int], str] = {}  # (series key, time) -> the line
        self.series: set[str] = set()
        self.values: dict[tuple[str, str], set[str]] = {}
        self.requests = 0

    async def write(self, body: bytes) -> None:
        self.requests += 1
        dropped, reason, unparsed = 0, "", ""
        for line in body.decode().split("\n"):
            key, measurement, tags = series_of(line)
            if "BAD" in line:
                unparsed = unparsed or line
                continue
            if key not in self.series:
                known = {t: self.values.get((measurement, t), set()) for t in tags}
                new = [(t, v) for t, v in sorted(tags.items()) if v not in known[t]]
                full = [(t, v) for t, v in new if self.max_values and len(known[t]) >= self.max_values]
                if self.max_series and len(self.series) >= self.max_series:
                    dropped += 1
                    reason = reason or f"max-series-per-database limit exceeded: ({self.max_series})"
                    continue
                if full:
                    dropped += 1
                    t, v = full[0]
                    reason = reason or (f"max-values-per-tag limit exceeded ({self.max_values + 1}/{self.max_values}): "
                                        f"measurement={_go(measurement)} tag={_go(t)} value={_go(v)}")
                    continue
                self.series.add(key)
                for t, v in new:
                    self.values.setdefault((measurement, t), set()).add(v)
            match = _TIME.search(line)
            assert match is not None
            self.points[(key, int(match.group(1)))] = line
        if reason:
            raise rejection(400, orjson.dumps({"error": f"partial write: {reason} dropped={dropped}"}).decode())
        if unparsed:
            raise rejection(400, orjson.dumps({"error": f"partial write: unable to parse '{unparsed}': invalid "
                                                        "field format dropped=0"}).decode())

    async def close(self) -> None:
        return None


def _go(text: str) -> str:
    """Go's %q of a plain or escaped-quote string (enough for these names)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


DEVICES = [f"d{k}" for k in range(8)] + ['d\\ "x\\,y']  # the last one needs escaping
line_spec = st.tuples(st.sampled_from(DEVICES), st.sampled_from(["hr", "spo2"]), st.booleans(),
                      st.integers(0, 9))
batches = st.lists(st.lists(line_spec, min_size=1, max_size=40), min_size=1, max_size=5)


@settings(max_examples=200, deadline=None)
@given(batches=batches, max_values=st.integers(0, 5), max_series=st.integers(0, 12),
       raise_after=st.integers(0, 5), recheck_now=st.booleans(), max_lines=st.sampled_from([3, 7, 5_000]))
def test_every_line_is_written_or_rejected_exactly_once(batches: list[list[tuple[str, str, bool, int]]],
                                                        max_values: int, max_series: int, raise_after: int,
                                                        recheck_now: bool, max_lines: int) -> None:
    influx = LimitedInflux(max_values, max_series)
    sink = InfluxSink(writer=influx, max_lines=max_lines)
    clock = [0]

    async def scenario() -> None:
        for n, batch in enumerate(batches):
            if n == raise_after:  # the operator sets both limits to 0 and restarts InfluxDB
                influx.max_values = influx.max_series = 0
            lines = []
            for device, metric, bad, patient in batch:
                clock[0] += 1
                field = "value=BAD" if bad else f"value={clock[0]}.0"
                lines.append(f"vitals,device={device},metric={metric},patient=p{patient},source=sim {field} {clock[0]}")
            written, rejected_before = sink.stats.lines_written, sink.stats.rejected_lines
            rejected = await sink.write(lines)
            refused = Counter(line for line, _ in rejected)
            assert all(refused[line] <= 1 for line in lines), "each line handed back at most once"
            assert set(refused) <= set(lines)
            for line in lines:
                stored = influx.points.get((series_of(line)[0], int(line.rsplit(" ", 1)[1]))) == line
                assert stored != (line in refused), f"written or rejected, not both nor neither: {line}"
            assert ((sink.stats.lines_written - written) + (sink.stats.rejected_lines - rejected_before)
                    == len(lines)), "the counts add up"
            limited = [reason for _, reason in rejected if "limit" in reason]
            if limited:
                assert sink.stats.limit is not None, "a limit refusing lines is said"
            if n >= raise_after and recheck_now:
                assert not limited and sink.stats.limit is None, "a limit gone is no longer said"

    with patch("rpm_core.sink.RECHECK_S", 0.0 if recheck_now else 3600.0):
        asyncio.run(scenario())
