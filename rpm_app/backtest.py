"""``rpm backtest``: replay readings from a CSV through the very detectors the live stream runs.

Input (``--readings``): a CSV with a header and the columns ``patient,metric,time,value`` in any
order, optionally ``device`` and ``flags``; ``time`` is ISO 8601 (a time without offset is UTC) or
epoch seconds, UTC. Output (``--out``): one row per alert state change, columns
``patient,rule,severity,metric,time,value,state`` (time as ISO 8601 UTC, value empty when none).

The run is deterministic: readings are sorted by event time (stably, so ties keep file order)
and fed to one :class:`detectors.Engine` in consecutive ``--tick`` windows of event time; after
each window the engine ticks at the window's end, so staleness and escalation happen at the same
event times whatever the file's size or order. No acknowledgements exist in a backtest: every
alert that stays open long enough escalates, which is what a rule change should be judged on.

A malformed file stops the run before anything is written, with the line, the column and the
reason (:class:`BacktestInputError`).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import numpy as np
import numpy.typing as npt

from detectors import AlertEvent, Engine
from rpm_core.errors import RpmError
from rpm_core.files import atomic_writer
from rpm_core.rules import load_rules
from rpm_core.wire import METRICS, is_valid_id

REQUIRED_COLUMNS: Final = ("patient", "metric", "time", "value")
OPTIONAL_COLUMNS: Final = ("device", "flags")
OUTPUT_COLUMNS: Final = ("patient", "rule", "severity", "metric", "time", "value", "state")
DEFAULT_TICK_S: Final = 60.0
T = TypeVar("T")
PROGRESS_MIN_ROWS: Final = 100_000  # smaller inputs finish before a bar would help
MAX_FLAGS: Final = 0x7FFF  # SampleBatch.flags is int16


class BacktestInputError(RpmError, ValueError):
    """A readings CSV we cannot use: names the file, the line, the column and the reason."""

    def __init__(self, file: str, line: int | None, column: str | None, reason: str) -> None:
        where = file + (f":{line}" if line is not None else "")
        what = f" column {column!r}:" if column else ""
        super().__init__(f"{where}:{what} {reason}")
        self.file = file
        self.line = line
        self.column = column
        self.reason = reason


@dataclass
class Readings:
    """Parsed readings as columns (file order)."""

    patient: list[str] = field(default_factory=list)
    metric: list[str] = field(default_factory=list)
    t: list[float] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    device: list[str] = field(default_factory=list)
    flags: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.t)


# -- reading the CSV ---------------------------------------------------------------------------------


def parse_time(text: str) -> float:
    """Epoch seconds (UTC) of ISO 8601 text or of a number of epoch seconds; ``ValueError`` otherwise."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # DESIGN.md: times are UTC
        seconds = moment.timestamp()
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is not a finite time")
    return seconds


def _value(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text!r} is not a finite number")
    return number


def _flags(text: str) -> int:
    if not text.strip():
        return 0
    number = int(text)
    if not 0 <= number <= MAX_FLAGS:
        raise ValueError(f"{number} is not a flag mask from 0 to {MAX_FLAGS}")
    return number


def _header(row: list[str] | None, file: str) -> dict[str, int]:
    """Column positions; rejects missing, duplicate and unknown columns."""
    if row is None:
        raise BacktestInputError(file, 1, None, "the file is empty; expected a header " + ",".join(REQUIRED_COLUMNS))
    names = [name.strip() for name in row]
    for name in names:
        if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
            known = ", ".join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
            raise BacktestInputError(file, 1, name, f"unknown column; the columns are {known}")
        if names.count(name) > 1:
            raise BacktestInputError(file, 1, name, "the column appears twice")
    for name in REQUIRED_COLUMNS:
        if name not in names:
            raise BacktestInputError(file, 1, name, "missing required column")
    return {name: i for i, name in enumerate(names)}


def read_readings(stream: Iterable[str], file: str = "<readings>") -> Readings:
    """Parse a readings CSV (any iterable of lines); :class:`BacktestInputError` at the first bad cell."""
    reader = csv.reader(stream, strict=True)
    try:
        columns = _header(next(reader, None), file)
        out = Readings()
        for row in reader:
            _append(out, row, columns, file, reader.line_num)
    except csv.Error as exc:
        raise BacktestInputError(file, reader.line_num, None, f"not valid CSV ({exc})") from exc
    return out


def _append(out: Readings, row: list[str], columns: dict[str, int], file: str, line: int) -> None:
    if not row:
        return  # blank line
    if len(row) != len(columns):
        raise BacktestInputError(file, line, None, f"{len(row)} fields, the header has {len(columns)}")

    def cell(name: str) -> str:
        return row[columns[name]] if name in columns else ""

    patient, metric = cell("patient").strip(), cell("metric").strip()
    device = cell("device").strip()
    if not is_valid_id(patient):
        raise BacktestInputError(file, line, "patient", f"{patient!r} is not a valid patient id")
    if metric not in METRICS:
        raise BacktestInputError(file, line, "metric", f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    if device and not is_valid_id(device):
        raise BacktestInputError(file, line, "device", f"{device!r} is not a valid device id")
    t = _converted(cell, "time", parse_time, file, line)
    value = _converted(cell, "value", _value, file, line)
    flags = _converted(cell, "flags", _flags, file, line)
    out.patient.append(patient)
    out.metric.append(metric)
    out.t.append(t)
    out.value.append(value)
    out.flags.append(flags)
    out.device.append(device)


def _converted(cell: Callable[[str], str], name: str, convert: Callable[[str], T], file: str, line: int) -> T:
    """``convert`` applied to the named cell, its failure as a :class:`BacktestInputError`."""
    try:
        return convert(cell(name))
    except (ValueError, OverflowError) as exc:
        raise BacktestInputError(file, line, name, f"cannot read {cell(name)!r}: {exc}") from exc


def load_readings(path: str) -> Readings:
    """Read and parse the readings file at ``path``."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return read_readings(handle, path)
    except OSError as exc:
        raise BacktestInputError(path, None, None, f"cannot read the file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise BacktestInputError(path, None, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


# -- running -----------------------------------------------------------------------------------------


@dataclass
class Summary:
    """What a backtest found: events, raised episodes per rule, patient-days."""

    events: list[AlertEvent]
    readings: int
    patient_days: int
    raised_by_rule: Counter[str]
    seconds: float
    # readings not judged: an earlier reading had their patient, metric, device and time, another value
    conflicts: int = 0

    def report(self) -> str:
        """Per-rule counts and alerts per patient-day, for people."""
        lines = [f"{self.readings} readings, {self.patient_days} patient-days, {len(self.events)} alert events"]
        if self.conflicts:
            lines.append(f"  {self.conflicts} readings ignored: an earlier reading has their patient, metric, "
                         "device and time but another value (the earlier one is judged, as in the live worker)")
        days = max(self.patient_days, 1)
        for rule, count in sorted(self.raised_by_rule.items()):
            lines.append(f"  {rule:<28} {count:>7} alerts  {count / days:8.3f} per patient-day")
        total = sum(self.raised_by_rule.values())
        lines.append(f"  {'all rules':<28} {total:>7} alerts  {total / days:8.3f} per patient-day")
        return "\n".join(lines)


def run(
    engine: Engine, readings: Readings, *, tick_s: float = DEFAULT_TICK_S, progress: Progress | None = None
) -> Summary:
    """Feed ``readings`` to ``engine`` in event-time order, ticking every ``tick_s`` of event time."""
    started = time.perf_counter()
    t = np.asarray(readings.t, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    t = t[order]
    patients = np.asarray(readings.patient, dtype=object)[order]
    batch_all = engine.batch(
        patients,
        np.asarray(readings.metric, dtype=object)[order],
        t,
        np.asarray(readings.value, dtype=np.float64)[order],
        np.asarray(readings.flags, dtype=np.int16)[order],
        np.asarray(readings.device, dtype=object)[order],
    )
    events: list[AlertEvent] = []
    conflicts = 0
    for lo, hi, edge in _windows(t, tick_s):
        events += engine.process(batch_all.take(slice(lo, hi)))
        conflicts += len(engine.conflicts.dropped)
        events += engine.tick(edge)
        if progress is not None:
            progress.update(hi)
    if progress is not None:
        progress.done()
    # One alert per episode: an upgrade re-raises the same alert id and is not counted again.
    episodes = {(e.rule, e.alert_id) for e in events if e.state == "raised"}
    raised = Counter(rule for rule, _ in episodes)
    return Summary(
        events=events,
        readings=len(readings),
        patient_days=_patient_days(patients, t),
        raised_by_rule=raised,
        seconds=time.perf_counter() - started,
        conflicts=conflicts,
    )


def _windows(t: npt.NDArray[np.float64], tick_s: float) -> Iterator[tuple[int, int, float]]:
    """``(lo, hi, edge)``: rows ``[lo, hi)`` have times before ``edge``, edges every ``tick_s``, gaps skipped.

    Empty windows between two readings are skipped but their ticks still happen (one tick per
    window edge would be too many over a long silence): the engine's tick at the next edge covers
    everything due since, because staleness and escalation compare times, not tick counts.
    """
    if len(t) == 0:
        return
    first = math.floor(t[0] / tick_s) * tick_s
    edges_of = np.floor((t - first) / tick_s).astype(np.int64)
    bounds = np.flatnonzero(np.diff(edges_of)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(t)]))
    for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
        yield lo, hi, first + (int(edges_of[lo]) + 1) * tick_s


def _patient_days(patients: npt.NDArray[Any], t: npt.NDArray[np.float64]) -> int:
    """Distinct (patient, UTC day) pairs with at least one reading."""
    if len(t) == 0:
        return 0
    days = np.floor(t / 86400.0).astype(np.int64)
    return len(set(zip(patients.tolist(), days.tolist(), strict=True)))


# -- writing -----------------------------------------------------------------------------------------


def iso(t: float) -> str:
    """ISO 8601 UTC with milliseconds and ``Z``."""
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_alerts(events: list[AlertEvent], out: IO[str]) -> None:
    """The alerts CSV (DESIGN.md columns)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(OUTPUT_COLUMNS)
    for e in events:
        value = "" if math.isnan(e.value) else repr(e.value)
        writer.writerow((e.patient, e.rule, e.severity, e.metric, iso(e.time), value, e.state))


class Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, total: int, stream: IO[str] = sys.stderr) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.last = 0.0
        self.started = time.perf_counter()

    def update(self, done: int) -> None:
        """Redraw for ``done`` rows processed."""
        now = time.perf_counter()
        if now - self.last < 0.1 and done < self.total:
            return
        self.last = now
        share = done / self.total
        bar = "#" * int(share * 30)
        rate = done / max(now - self.started, 1e-9)
        self.stream.write(f"\rbacktest [{bar:<30}] {share:6.1%} {done}/{self.total} rows {rate:,.0f}/s")
        self.stream.flush()

    def done(self) -> None:
        """Finish the line."""
        self.update(self.total)
        self.stream.write("\n")
        self.stream.flush()


# -- command -----------------------------------------------------------------------------------------


def backtest(rules_path: str, readings_path: str, out_path: str, *, tick_s: float, progress: bool | None) -> Summary:
    """Load, run and write; the whole of ``rpm backtest`` but the printing."""
    ruleset = load_rules(rules_path)
    readings = load_readings(readings_path)
    show = progress if progress is not None else len(readings) >= PROGRESS_MIN_ROWS and sys.stderr.isatty()
    bar = Progress(len(readings)) if show else None
    summary = run(Engine(ruleset), readings, tick_s=tick_s, progress=bar)
    target = Path(out_path)
    with atomic_writer(target, mode=0o600) as handle:  # health data; never a half-written alerts file
        write_alerts(summary.events, handle)
    return summary


def cmd_backtest(args: argparse.Namespace) -> int:
    """``rpm backtest``: print the summary; errors propagate as :class:`RpmError` (exit 2)."""
    summary = backtest(args.rules, args.readings, args.out, tick_s=args.tick, progress=args.progress)
    print(summary.report())  # noqa: T201 - the command's output
    print(f"wrote {len(summary.events)} alert events to {args.out} in {summary.seconds:.1f} s")  # noqa: T201
    return 0


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``rpm backtest`` on the ``rpm`` sub-command parser."""
    help_text = "replay a readings CSV through the alert rules and write the alerts CSV"
    p = sub.add_parser("backtest", help=help_text, description=help_text)
    p.add_argument(
        "--rules",
        default=os.environ.get("RPM_RULES", "alert_rules.yaml"),
        help="alert rules file (env RPM_RULES, default alert_rules.yaml)",
    )
    p.add_argument("--readings", required=True, help="CSV: patient,metric,time,value[,device][,flags]")
    p.add_argument("--out", required=True, help="alerts CSV to write: patient,rule,severity,metric,time,value,state")
    p.add_argument(
        "--tick",
        type=_positive_seconds,
        default=DEFAULT_TICK_S,
        help="seconds of event time between ticks (staleness, escalation); default 60",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: on for large inputs on a terminal)",
    )
    p.set_defaults(func=cmd_backtest)
