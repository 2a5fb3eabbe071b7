"""Hostile readings files for ``rpm backtest``: whatever the bytes, the reader returns finite,
valid columns or a :class:`BacktestInputError` naming the file (never another exception).

tests/rpm_core/test_backtest.py fuzzes the reader with well-formed CSV of random cells; this adds
files as an attacker or a broken export writes them: arbitrary bytes (invalid UTF-8, NUL, CR),
numbers that are not finite or do not fit, extreme dates, oversized fields.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpm_app.backtest import MAX_FLAGS, BacktestInputError, Readings, load_readings, read_readings
from rpm_core.wire import METRICS, is_valid_id

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])
HEADER = "patient,metric,time,value,device,flags\n"
HOSTILE_NUMBERS = ["nan", "NaN", "inf", "-Infinity", "1e999", "-1e999", "9" * 400, "1_000", "0x10", " 7 ", "",
                   "-0", "1e-400", "٣", "７２", "\x00", "1,5"]
HOSTILE_TIMES = ["9999-12-31T23:59:59+14:00", "0001-01-01T00:00:00-23:59", "2024-02-30", "2024-01-01T25:00",
                 "1e20", "-1e20", "1700000000.5", "2023-11-14T22:13:20z", "2023-11-14 22:13:20.123456+05:30",
                 *HOSTILE_NUMBERS]
cells = st.sampled_from(["p1", "heart_rate", "glucose", "rr_interval", "80", "0", *HOSTILE_NUMBERS, *HOSTILE_TIMES])


def outcome(read: Callable[[], Readings]) -> Readings | BacktestInputError:
    """The readings, or the input error (any other exception fails the test)."""
    try:
        return read()
    except BacktestInputError as err:
        return err


def check(readings: Readings) -> None:
    """What the detectors may rely on for every row the reader accepted."""
    n = len(readings.t)
    assert len(readings.value) == len(readings.patient) == len(readings.metric) == len(readings.flags) == n
    assert all(math.isfinite(x) for x in readings.t) and all(math.isfinite(x) for x in readings.value)
    assert all(is_valid_id(p) for p in readings.patient) and set(readings.metric) <= set(METRICS)
    assert all(0 <= f <= MAX_FLAGS for f in readings.flags)


@FUZZ
@given(data=st.binary(max_size=400))
def test_fuzz_any_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "readings.csv"
    path.write_bytes(HEADER.encode() + data)
    result = outcome(lambda: load_readings(str(path)))
    if isinstance(result, BacktestInputError):
        assert result.file == str(path) and result.reason
    else:
        check(result)


@FUZZ
@given(rows=st.lists(st.tuples(cells, cells, cells, cells, cells, cells), min_size=1, max_size=5))
def test_fuzz_hostile_cells(rows: list[tuple[str, ...]]) -> None:
    buffer = io.StringIO()
    csv.writer(buffer).writerows([HEADER.strip().split(","), *rows])
    result = outcome(lambda: read_readings(io.StringIO(buffer.getvalue(), newline=""), "f.csv"))
    if isinstance(result, BacktestInputError):
        assert result.file == "f.csv" and result.line is not None and result.reason
    else:
        check(result)


@pytest.mark.parametrize("cell", ["nan", "inf", "1e999", "-1e999"])
@pytest.mark.parametrize("column", ["time", "value"])
def test_non_finite_numbers_are_refused_with_their_line_and_column(column: str, cell: str) -> None:
    row = {"patient": "p1", "metric": "heart_rate", "time": "1700000000", "value": "80", "device": "", "flags": "0"}
    row[column] = cell
    text = HEADER + ",".join(row.values()) + "\n"
    with pytest.raises(BacktestInputError) as info:
        read_readings(io.StringIO(text, newline=""), "f.csv")
    assert (info.value.line, info.value.column) == (2, column)


def test_an_oversized_field_is_an_input_error_not_a_crash() -> None:
    text = HEADER + "p1,heart_rate,1700000000,80," + "d" * (csv.field_size_limit() + 10) + ",0\n"
    with pytest.raises(BacktestInputError, match="not valid CSV"):
        read_readings(io.StringIO(text, newline=""), "f.csv")
