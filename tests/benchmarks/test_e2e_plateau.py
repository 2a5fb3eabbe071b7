"""The overload plateau of ``benchmarks.e2e``: 1-s samples and 5-s windows of the landed rate."""

from __future__ import annotations

import types

from benchmarks.e2e import (
    PLATEAU_WINDOW_S,
    WARMUP_S,
    _series,
    cores_between,
    influx_requests,
    max_patients,
    plateau_lines,
    plateau_windows,
    worker_time,
)


def test_a_lumpy_landing_is_lumpy_per_second_and_steady_per_window() -> None:
    """A worker that lands 100,000 points every second second keeps up at 50,000/s: 1-s samples
    swing between 0 and 100,000, every 5-s window inside the load says about 50,000."""
    rows, total = [], 0.0
    for k in range(0, 41):  # a sample every 0.5 s for 20 s
        t = k * 0.5
        if k and k % 4 == 0:  # every 2 s
            total += 100_000
        rows.append({"t": 1000.0 + t, "influx_points": total})
    per_second = [v for t, v in _series(rows, "influx_points", 1000.0) if WARMUP_S < t <= 20]
    assert min(per_second) == 0 and max(per_second) >= 100_000
    windows = plateau_windows(_series(rows, "influx_points", 1000.0, step=PLATEAU_WINDOW_S), 20.0)
    assert len(windows) == 3  # 4.5-9.5, 9.5-14.5, 14.5-19.5 s (not 0-4.5, nor the 0.5 s after 19.5)
    assert all(40_000 <= w <= 60_000 for w in windows), windows


def test_windows_outside_the_load_window_or_in_the_warm_up_do_not_count() -> None:
    series = [(5.0, 1.0), (10.0, 2.0), (15.0, 3.0), (20.0, 4.0), (25.0, 5.0), (25.5, 6.0)]
    assert plateau_windows(series, 20.0) == [2.0, 3.0, 4.0]  # not the first (in the warm-up), nor past the load
    assert plateau_windows(series, 30.0) == [2.0, 3.0, 4.0, 5.0]  # nor the short last one
    assert plateau_windows([], 20.0) == []


def test_the_cores_each_process_used_during_the_load_are_its_cpu_seconds_over_the_window() -> None:
    rows = [{"t": 100.0, "cpu:worker": 10.0, "cpu:influxdb": 50.0, "cpu:bridge": 3.0},
            {"t": 105.0, "cpu:worker": 12.0, "cpu:influxdb": 55.0, "cpu:bridge": 4.0},
            {"t": 110.0, "cpu:worker": 15.0, "cpu:influxdb": 59.0, "cpu:loadgen": 4.0}]
    # busiest first; the loadgen came late (one sample: no interval), the bridge's samples span 100-105 s
    assert cores_between(rows) == {"influxdb": 0.9, "worker": 0.5, "bridge": 0.2}
    assert list(cores_between(rows)) == ["influxdb", "worker", "bridge"]
    assert cores_between(rows[:1]) == {}


def test_the_workers_time_is_split_into_handling_batches_and_waiting_outside_them() -> None:
    keys = ("worker:rpm_worker_handle_seconds_total", "worker:rpm_worker_detector_seconds_total",
            "worker:rpm_sink_write_seconds_total")
    rows = [{"t": 10.0, **dict(zip(keys, (1.0, 0.5, 0.2), strict=True))},
            {"t": 20.0, **dict(zip(keys, (7.0, 2.5, 4.2), strict=True))}]
    assert worker_time(rows) == {"handle": 0.6, "detectors": 0.2, "influx_writes": 0.4, "outside": 0.4}
    assert worker_time(rows[:1]) == {}


def test_influxdbs_write_requests_are_counted_from_its_own_counters() -> None:
    """8 requests of 20,000 points in 4 s, open 2 s in all: 2/s, 250 ms each, open half the time, and
    12.5 µs per point inside them; a sample missing a counter does not count."""
    rows = [{"t": 100.0, "influx_write_requests": 10.0, "influx_write_ns": 1e9, "influx_points": 40_000.0},
            {"t": 102.0, "influx_points": 50_000.0},
            {"t": 104.0, "influx_write_requests": 18.0, "influx_write_ns": 3e9, "influx_points": 200_000.0}]
    assert influx_requests(rows) == {"requests_per_s": 2.0, "ms_per_request": 250.0, "points_per_request": 20_000,
                                     "in_request": 0.5, "us_per_point_in_requests": 12.5}
    idle = [dict(rows[0], t=100.0), dict(rows[0], t=104.0)]
    assert influx_requests(idle) == {"requests_per_s": 0.0, "in_request": 0.0}
    assert influx_requests(rows[:1]) == {}


def test_the_same_patients_overload_takes_the_patients_of_the_sustained_maximum() -> None:
    """The second 2x run of ``--max`` keeps the maximum's patients (no new series during it): those of
    this system's sustained run at the highest sustained load, not of a failed or another system's."""
    runs = [{"system": "ours", "sustained": True, "offered_rate": 100_000.0, "patients": 45_454},
            {"system": "ours", "sustained": False, "offered_rate": 130_000.0, "patients": 59_090},
            {"system": "nodered", "sustained": True, "offered_rate": 100_000.0, "patients": 1}]
    bench, ours = types.SimpleNamespace(runs=runs), types.SimpleNamespace(name="ours")
    assert max_patients(bench, ours, 100_000.0) == 45_454  # type: ignore[arg-type]
    assert max_patients(bench, ours, 130_000.0) is None  # type: ignore[arg-type]


def test_each_overload_plateau_is_one_paragraph_of_the_report_saying_which_overload() -> None:
    plateau = {"max_sustained_offered": 100_000.0, "max_sustained_landed": 99_000, "seconds": 18, "min": 40_000.0,
               "median": 80_000, "min_vs_max": 0.4, "median_vs_max": 0.81, "drain_s": 20.0, "loss": 0,
               "windows_5s": 3, "min_5s": 70_000.0, "min_5s_vs_max": 0.71}
    [text, blank] = plateau_lines("ours", plateau, ", the maximum's patients only")
    assert blank == "" and "2x 100,000/s offered, the maximum's patients only" in text
    assert "**0.40x**" in text and "**0.71x**" in text and "loss +0" in text
    assert plateau_lines("ours", None) == [] and plateau_lines("ours", {"seconds": 0}) == []
