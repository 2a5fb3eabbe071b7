"""Our glucose rules' lows against Nightscout's *shipped* AR2 alarm, per seed and age group.

Reproduce (needs the ``eval`` extra, simglucose; traces cached as in ``evaluate_glucose_rules.py``)::

    .venv/bin/python benchmarks/nightscout_alarm.py --seeds 101 202 303 606 707
    .venv/bin/python benchmarks/nightscout_alarm.py --seeds 909 --sensor Dexcom
    .venv/bin/python benchmarks/nightscout_alarm.py --seeds 1 101 202 303 --where   # where it is earlier
    .venv/bin/python benchmarks/nightscout_alarm.py --seeds 1 101 202 --low-soon 70 30 0.5   # a candidate added
    .venv/bin/python benchmarks/nightscout_alarm.py --seeds 1 101 202 303 --low-soon 70 40 0.5 --arm 3 70  # armed

``--low-soon LEVEL HORIZON CONFIRM`` adds to our rules a warning-level ``glucose_low_soon``: the
Kalman forecast of ``glucose_urgent_low_soon`` (same model, margin, window and damping) predicting
blood glucose < LEVEL mg/dL within HORIZON min while the filtered rate falls at CONFIRM mg/dL/min
or faster; ``--low-for MIN`` holds ``glucose_low``'s level 1 (< 70) that long; ``--arm HOURS BELOW`` arms the
``--low-soon`` forecast per patient: an alert of it counts only when the patient's own CGM read
< BELOW mg/dL within the HOURS before its raise (emulated afterwards from the trace's CGM readings,
which the live rule would have seen: no blood glucose, nothing from the future). None is a default
(benchmarks/RESULTS.md, "Glucose, eighth round" and "ninth round"). The last lines give 95 % bootstrap
intervals (over traces, 2000 resamples) of the pooled median lead and non-actionable (no BG < 70)
rate, ours against the shipped alarm; with a candidate, also the default rules on the same traces and
the paired interval of the candidate's difference from them.

``evaluate_glucose_rules.py``'s anchor alarms when AR2's forecast crosses 55 mg/dL within 20 min.
Nightscout's ``ar2`` plugin (cgm-remote-monitor ``lib/plugins/ar2.js``) does not alarm on a
crossing: from the latest reading and the value 5 min before it forecasts 6 points at 5-min steps
(the same AR(2) on ln(BG/140), each point rounded and clamped to 36-400), computes
``avgLoss = 1/5 * sum(log10(p / 120)^2)`` over them and WARNs above 0.05 (URGENT above 0.10); the
event is "low" when the 20-min point is below BG_TARGET_BOTTOM (80 mg/dL). A forecast averaging
~75 mg/dL over the next 30 min reaches WARN: a level-1 forecast. Here that alarm on the CGM
readings plus a low alarm on one reading < 70 mg/dL (as our anchor; Nightscout's
``simplealarms`` warns below BG_TARGET_BOTTOM, 80, by default), alarm spans merged across gaps
<= 10 min, scored as ``evaluate_glucose_rules.py`` scores our rules (a level-2 low: BG < 54 for
>= 15 min; lead capped at 60 min; a low alert non-actionable when no BG < 54, resp. < 70, comes
within 60 min of its raise).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.evaluate_glucose import cache_path, load_traces  # noqa: E402
from benchmarks.evaluate_glucose_rules import (  # noqa: E402
    LOOKAHEAD_S,
    LOW_RULES,
    leads,
    nightscout,
    raised_events,
    runs,
)
from benchmarks.glucose_traces import PATIENTS, Trace  # noqa: E402
from detectors import RuleSet  # noqa: E402
from detectors.rules import ForecastRule, Severity, StalenessRule, ThresholdRule  # noqa: E402
from rpm_core.rules import load_rules  # noqa: E402

WARN_LOSS = 0.05  # ar2.js WARN_THRESHOLD
TARGET_BOTTOM = 80.0  # Nightscout's default BG_TARGET_BOTTOM, mg/dL
LOW_ALARM = 70.0
MAX_STEP_S = 660.0  # a previous reading further back gives no forecast
MERGE_S = 600.0

Spans = list[tuple[float, float]]


def shipped_ar2_low(t: npt.NDArray[np.float64], cgm: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Per reading: does ar2.js WARN with event "low" (avgLoss > 0.05, 20-min point < 80)?"""
    out = np.zeros(len(cgm), dtype=bool)
    for i in range(1, len(cgm)):
        current, previous, elapsed = cgm[i], cgm[i - 1], t[i] - t[i - 1]
        if not (0 < elapsed <= MAX_STEP_S and current >= 36 and previous >= 36):
            continue
        five_min_ago = current - (current - previous) * 300.0 / elapsed
        if five_min_ago <= 0:
            continue
        prev, curr = np.log(five_min_ago / 140.0), np.log(current / 140.0)
        points = []
        for _ in range(6):
            prev, curr = curr, -0.723 * prev + 1.716 * curr
            points.append(min(max(float(np.floor(140.0 * np.exp(curr) + 0.5)), 36.0), 400.0))
        loss = sum(np.log10(p / 120.0) ** 2 for p in points) / 5
        out[i] = loss > WARN_LOSS and points[3] < TARGET_BOTTOM
    return out


def spans_of(t: npt.NDArray[np.float64], flag: npt.NDArray[np.bool_]) -> Spans:
    """(raise, last) of runs of ``flag``, runs closer than 10 min merged."""
    out: list[list[float]] = []
    for i in np.flatnonzero(flag):
        if out and t[i] - out[-1][1] <= MERGE_S:
            out[-1][1] = float(t[i])
        else:
            out.append([float(t[i]), float(t[i])])
    return [(a, b) for a, b in out]


def non_actionable(trace: Trace, spans: Spans, level: float) -> int:
    """Alerts with no BG below ``level`` within 60 min of their raise."""
    return sum(int(not (trace.bg[(trace.t >= a) & (trace.t <= a + LOOKAHEAD_S)] < level).any()) for a, _ in spans)


def where(rows: list[tuple[float, float, str, float, float, float, bool]]) -> None:
    """Print, for the lows both alerted, where the shipped alarm is earlier than ours and what it warned on.

    ``rows``: per low (our lead, its lead, our first rule, CGM, BG and the CGM's rate over the 15 min
    before at its raise, raised by its forecast rather than its low alarm).
    """
    gained = [r for r in rows if r[1] > r[0]]
    later = sum(r[1] < r[0] for r in rows)
    print(f"\nlows alerted by both: {len(rows)}; shipped AR2 earlier on {len(gained)}, later on {later}")
    if not gained:
        return
    gain = np.array([r[1] - r[0] for r in gained])
    q1, q2, q3 = np.percentile(gain, (25, 50, 75))
    print(f"earlier by median {q2:g} min (quartiles {q1:g}-{q3:g})")
    firsts: dict[str, int] = {}
    for r in gained:
        firsts[r[2]] = firsts.get(r[2], 0) + 1
    by_forecast = sum(r[6] for r in gained)
    print(f"our first alert on those lows: {firsts}; raised by its forecast (not its < 70 alarm): {by_forecast}")
    cgm, bg, rate = (np.array([r[k] for r in gained]) for k in (3, 4, 5))
    fast, middle = (rate <= -1.5).sum(), ((rate > -1.5) & (rate <= -0.75)).sum()
    print(
        f"at its raise: CGM median {np.median(cgm):.0f} mg/dL (range {cgm.min():.0f}-{cgm.max():.0f}), BG median"
        f" {np.median(bg):.0f}; CGM rate over the 15 min before, median {np.median(rate):.2f} mg/dL/min"
        f" (10-90 % {np.percentile(rate, 10):.2f} to {np.percentile(rate, 90):.2f}); falling faster than 1.5:"
        f" {fast}, 0.75-1.5: {middle}, slower: {len(rate) - fast - middle}"
    )


def candidate(rules: RuleSet, low_soon: list[float] | None, low_for_min: float) -> RuleSet:
    """``rules`` with the ``--low-soon`` forecast added and ``glucose_low``'s level 1 held ``low_for_min``."""
    out: list[ThresholdRule | StalenessRule] = []
    for r in rules.rules:
        if r.name == "glucose_low" and low_for_min > 0:
            assert isinstance(r, ThresholdRule)
            out.append(replace(r, levels=(replace(r.levels[0], for_s=low_for_min * 60.0), *r.levels[1:])))
        else:
            out.append(r)
    if low_soon is not None:
        level, horizon, confirm = low_soon
        urgent = next(r for r in rules.rules if r.name == "glucose_urgent_low_soon")
        assert isinstance(urgent, ForecastRule)
        warning = replace(urgent.levels[0], severity=Severity.WARNING, threshold=level)
        out.append(
            replace(
                urgent,
                name="glucose_low_soon",
                horizon_s=horizon * 60.0,
                confirm=confirm,
                clear_threshold=max(70.0, level + 5.0),
                levels=(warning,),
            )
        )
    return RuleSet(rules=tuple(out))


def armed(
    trace: Trace, alerts: list[tuple[str, str, float, float]], arm: list[float] | None
) -> list[tuple[str, str, float, float]]:
    """``alerts`` without the ``glucose_low_soon`` ones raised while the patient was not armed: no CGM
    reading < ``arm[1]`` mg/dL within the ``arm[0]`` hours before the raise (``None``: all kept)."""
    if arm is None:
        return alerts
    hours, below = arm
    low_t = trace.t[trace.cgm < below]

    def ok(raised: float) -> bool:
        return bool(((low_t < raised) & (low_t >= raised - hours * 3600.0)).any())

    return [a for a in alerts if a[0] != "glucose_low_soon" or ok(a[2])]


def pooled_intervals(per_trace: dict[str, list[tuple[list[float], int, float]]], n: int = 2000) -> None:
    """95 % bootstrap intervals over traces of the median lead and non-actionable (< 70) lows per patient-day;
    with a "default" entry (a candidate was given) also of the candidate's difference from it (paired)."""
    rng = np.random.default_rng(0)
    size = len(next(iter(per_trace.values())))
    picks = [rng.integers(0, size, size) for _ in range(n)]
    print()
    draws: dict[str, tuple[list[float], list[float]]] = {}
    for name, rows in per_trace.items():
        medians, rates = [], []
        for pick in picks:
            lead = np.array([x for i in pick for x in rows[i][0]])
            medians.append(float(np.nanmedian(lead)) if (~np.isnan(lead)).any() else float("nan"))
            rates.append(sum(rows[i][1] for i in pick) / sum(rows[i][2] for i in pick))
        draws[name] = (medians, rates)
        pooled = np.array([x for r in rows for x in r[0]])
        rate = sum(r[1] for r in rows) / sum(r[2] for r in rows)
        print(
            f"{name}: median lead {np.nanmedian(pooled):g} min (95 % CI {np.nanpercentile(medians, 2.5):g}-"
            f"{np.nanpercentile(medians, 97.5):g}); non-actionable (no BG < 70) {rate:.2f} / pt-day"
            f" ({np.percentile(rates, 2.5):.2f}-{np.percentile(rates, 97.5):.2f})"
        )
    if "default" in draws:
        lead = np.array(draws["ours"][0]) - np.array(draws["default"][0])
        rate = np.array(draws["ours"][1]) - np.array(draws["default"][1])
        print(
            f"ours - default, paired: median lead 95 % CI ({np.nanpercentile(lead, 2.5):g}, "
            f"{np.nanpercentile(lead, 97.5):g}) min; non-actionable (no BG < 70) ({np.percentile(rate, 2.5):+.3f}, "
            f"{np.percentile(rate, 97.5):+.3f}) / pt-day"
        )


def main() -> int:
    """Print ours, our anchor and the shipped alarm per seed, per age group and pooled."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[101])
    parser.add_argument("--sensor", default="GuardianRT")
    parser.add_argument("--days", type=float, default=2.0)
    parser.add_argument("--rules", default="alert_rules.yaml")
    parser.add_argument("--where", action="store_true", help="also: where the shipped alarm is earlier, and why")
    parser.add_argument("--low-soon", type=float, nargs=3, metavar=("LEVEL", "HORIZON", "CONFIRM"))
    parser.add_argument("--low-for", type=float, default=0.0, metavar="MIN")
    parser.add_argument("--arm", type=float, nargs=2, metavar=("HOURS", "BELOW"))
    args = parser.parse_args()
    full = load_rules(ROOT / args.rules)
    rules = RuleSet(rules=tuple(r for r in full.rules if r.metric == "glucose" and r.device_prefix is None))
    ours_rules = candidate(rules, args.low_soon, args.low_for)
    low_rules = (*LOW_RULES, "glucose_low_soon")
    per_trace: dict[str, list[tuple[list[float], int, float]]] = {"ours": [], "shipped AR2": []}
    changed = args.low_soon is not None or args.low_for > 0
    if changed:
        per_trace["default"] = []
    names = ("ours", "our anchor", "shipped AR2")
    groups: dict[str, dict[str, list[float]]] = {}
    both: list[tuple[float, float, str, float, float, float, bool]] = []
    for seed in args.seeds:
        traces = load_traces(args.days, cache_path(seed, args.sensor), PATIENTS, seed, args.sensor)
        raised = {"ours": raised_events(ours_rules, traces), "our anchor": raised_events(nightscout(rules), traces)}
        if changed:
            raised["default"] = raised_events(rules, traces)
        for tr in traces:
            raised["ours"][tr.patient] = armed(tr, raised["ours"][tr.patient], args.arm)
            lows = runs(tr.t, tr.bg < 54)
            spans = {n: [(a, b) for r, _, a, b in raised[n][tr.patient] if r in low_rules] for n in names[:2]}
            forecast_low = shipped_ar2_low(tr.t, tr.cgm)
            spans["shipped AR2"] = spans_of(tr.t, forecast_low | (tr.cgm < LOW_ALARM))
            if changed:
                spans["default"] = [(a, b) for r, _, a, b in raised["default"][tr.patient] if r in low_rules]
            ours_all = [(a, b, r) for r, _, a, b in raised[names[0]][tr.patient] if r in low_rules]
            pairs = zip(lows, leads(lows, spans[names[0]]), leads(lows, spans[names[2]]), strict=True)
            for (onset, end), our_lead, their_lead in pairs:
                if np.isnan(our_lead) or np.isnan(their_lead):
                    continue
                first = min((a, r) for a, b, r in ours_all if a <= end and b >= onset - LOOKAHEAD_S)[1]
                i = int(np.searchsorted(tr.t, onset - their_lead * 60.0))
                j = int(np.searchsorted(tr.t, tr.t[i] - 900.0))
                rate = (tr.cgm[i] - tr.cgm[j]) / max((tr.t[i] - tr.t[j]) / 60.0, 1.0)
                at = (float(tr.cgm[i]), float(tr.bg[i]), float(rate), bool(forecast_low[i]))
                both.append((our_lead, their_lead, first, *at))
            for n in per_trace:
                per_trace[n].append((leads(lows, spans[n]), non_actionable(tr, spans[n], 70.0), args.days))
            for key in (f"seed {seed}", tr.patient.split("#")[0], "all"):
                g = groups.setdefault(key, {"days": []})
                g["days"].append(args.days)
                for n in names:
                    g.setdefault(f"{n} lead", []).extend(leads(lows, spans[n]))
                    g.setdefault(f"{n} na54", []).append(non_actionable(tr, spans[n], 54.0))
                    g.setdefault(f"{n} na70", []).append(non_actionable(tr, spans[n], 70.0))
    print(
        "| set | level-2 lows | alerted: " + " / ".join(names) + " | median lead, min | ours earlier / later than"
        " shipped AR2 | non-actionable / pt-day (no BG < 54; < 70) |"
    )
    print("|---|---|---|---|---|---|")
    for key, g in groups.items():
        pd = sum(g["days"])
        lead = {n: np.array(g[f"{n} lead"]) for n in names}
        alerted = " / ".join(str(int((~np.isnan(lead[n])).sum())) for n in names)
        medians = " / ".join(f"{np.nanmedian(lead[n]):g}" for n in names)
        ours, shipped = lead["ours"], lead["shipped AR2"]
        na = " / ".join(f"{sum(g[f'{n} na54']) / pd:.2f}; {sum(g[f'{n} na70']) / pd:.2f}" for n in names)
        order = f"{(ours > shipped).sum()} / {(ours < shipped).sum()}"
        print(f"| {key} | {len(ours)} | {alerted} | {medians} | {order} | {na} |")
    pooled_intervals(per_trace)
    if args.where:
        where(both)
    return 0


if __name__ == "__main__":
    sys.exit(main())
