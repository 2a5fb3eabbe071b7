"""``rpm backtest``: scripted episodes end to end through the CLI, determinism, and clear input errors."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpm_app.backtest import BacktestInputError, iso, parse_time, read_readings
from rpm_app.cli import main
from tests.detectors.helpers import T0
from tests.detectors.scripted import scripted

ROOT = Path(__file__).resolve().parents[2]
HEADER = "patient,metric,time,value,device,flags\n"


def write_csv(path: Path, rows: list[tuple], *, iso_times: bool = False) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient", "metric", "time", "value", "device", "flags"])
        for patient, metric, t, value, flags, device in rows:
            writer.writerow([patient, metric, iso(t) if iso_times else repr(t), repr(value), device, flags])
    return path


def backtest(tmp_path: Path, readings: Path, name: str = "alerts.csv") -> list[dict[str, str]]:
    out = tmp_path / name
    code = main(["backtest", "--rules", str(ROOT / "alert_rules.yaml"), "--readings", str(readings), "--out", str(out)])
    assert code == 0
    with out.open() as handle:
        return list(csv.DictReader(handle))


def test_default_rules_fire_once_per_scripted_episode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    alerts = backtest(tmp_path, write_csv(tmp_path / "readings.csv", scripted()))
    raised = [(a["patient"], a["rule"], a["severity"]) for a in alerts if a["state"] == "raised"]
    assert sorted(raised) == [
        ("p-af", "af_screening", "warning"),
        ("p-falling", "glucose_falling_fast", "warning"),
        # 65 then 50 mg/dL: level 1 on one reading, the same alert upgraded to level 2 on the next.
        ("p-falling", "glucose_low", "critical"),
        ("p-falling", "glucose_low", "warning"),
        ("p-falling", "glucose_urgent_low_soon", "critical"),
        ("p-hypo", "glucose_low", "critical"),
        ("p-meter", "glucose_meter_low", "critical"),
        ("p-tachy", "tachycardia", "warning"),
    ]
    assert not [a for a in alerts if a["patient"] == "p-fine"]
    assert list(alerts[0]) == ["patient", "rule", "severity", "metric", "time", "value", "state"]
    tachy = next(a for a in alerts if a["rule"] == "tachycardia")
    assert (tachy["time"], tachy["value"]) == (iso(T0 + 600), "135.0")
    out = capsys.readouterr().out
    assert "tachycardia" in out and "per patient-day" in out


def test_readings_that_contradict_an_earlier_one_are_counted_not_silently_ignored(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two readings of one device and time with different values: the first is judged (as live)."""
    rows = [("p1", "glucose", T0, 45.0, 0, "cgm-1"), ("p1", "glucose", T0, 150.0, 0, "cgm-1"),
            ("p1", "glucose", T0 + 300, 150.0, 0, "cgm-1"), ("p1", "glucose", T0 + 300, 150.0, 0, "cgm-1")]
    alerts = backtest(tmp_path, write_csv(tmp_path / "readings.csv", rows))
    assert [(a["rule"], a["value"]) for a in alerts if a["state"] == "raised"] == [("glucose_low", "45.0")]
    out = capsys.readouterr().out
    assert "1 readings ignored: an earlier reading has their patient, metric, device and time" in out


def test_backtest_is_deterministic_whatever_the_row_order(tmp_path: Path) -> None:
    rows = scripted()
    first = backtest(tmp_path, write_csv(tmp_path / "a.csv", rows), "a.out")
    random.Random(3).shuffle(rows)
    second = backtest(tmp_path, write_csv(tmp_path / "b.csv", rows, iso_times=True), "b.out")
    assert first == second


def test_times_as_iso_or_epoch() -> None:
    assert parse_time("1700000000") == parse_time("2023-11-14T22:13:20Z") == parse_time("2023-11-14 22:13:20")
    assert parse_time("2023-11-14T23:13:20+01:00") == 1_700_000_000.0


@pytest.mark.parametrize(
    ("text", "line", "column", "reason"),
    [
        ("", 1, None, "empty"),
        ("patient,metric,time\n", 1, "value", "missing required column"),
        ("patient,metric,time,value,vlaue\n", 1, "vlaue", "unknown column"),
        ("patient,metric,time,value,time\n", 1, "time", "twice"),
        (HEADER + "p1,heart_rate,1700000000,80,,0\np1,spo2,1700000001,97,,0\n", 3, "metric", "unknown metric"),
        (HEADER + "p1,heart_rate,yesterday,80,,0\n", 2, "time", "cannot read 'yesterday'"),
        (HEADER + "p1,heart_rate,1700000000,eighty,,0\n", 2, "value", "cannot read 'eighty'"),
        (HEADER + "p1,heart_rate,1700000000,nan,,0\n", 2, "value", "finite"),
        (HEADER + "p 1,heart_rate,1700000000,80,,0\n", 2, "patient", "not a valid patient id"),
        (HEADER + "p1,heart_rate,1700000000,80,,-1\n", 2, "flags", "flag mask"),
        (HEADER + "p1,heart_rate,1700000000,80\n", 2, None, "4 fields, the header has 6"),
        (HEADER + 'p1,heart_rate,1700000000,"80,,0\n', 2, None, "not valid CSV"),
    ],
)
def test_malformed_csv_names_line_column_and_reason(text: str, line: int, column: str | None, reason: str) -> None:
    with pytest.raises(BacktestInputError) as info:
        read_readings(io.StringIO(text), "r.csv")
    err = info.value
    assert (err.line, err.column) == (line, column), str(err)
    assert reason in err.reason
    assert str(err).startswith(f"r.csv:{line}:")


def test_cli_reports_a_malformed_file_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "p1,heart_rate,soon,80,,0\n")
    out = tmp_path / "alerts.csv"
    assert main(["backtest", "--rules", str(ROOT / "alert_rules.yaml"), "--readings", str(bad), "--out", str(out)]) == 2
    assert f"{bad}:2: column 'time'" in capsys.readouterr().err
    assert not out.exists()


CELLS = st.one_of(
    st.sampled_from(["p1", "heart_rate", "glucose", "rr_interval", "1700000000", "2023-11-14T22:13:20Z", "80", "0"]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=st.permutations(["patient", "metric", "time", "value", "device", "flags"]).map(list),
    rows=st.lists(st.lists(CELLS, min_size=0, max_size=7), max_size=6),
    noise=st.text(max_size=20),
)
def test_fuzz_the_reader_parses_or_explains(header: list[str], rows: list[list[str]], noise: str) -> None:
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])
    text = buffer.getvalue() + noise
    error: BacktestInputError | None = None
    try:
        readings = read_readings(io.StringIO(text, newline=""), "f.csv")
    except BacktestInputError as exc:
        error = exc
    if error is None:
        assert len(readings.t) == len(readings.value) == len(readings.patient)
    else:
        assert error.file == "f.csv" and error.reason
        assert error.line is None or error.line >= 1
