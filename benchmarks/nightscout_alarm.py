"""Our glucose rules' lows against Nightscout's *shipped* AR2 alarm, per seed and age group.

Reproduce (needs the ``eval`` extra, simglucose; traces cached as in ``evaluate_glucose_rules.py``)::

    .venv/bin/python benchmarks/nightscout_alarm.py --seeds 101 202 303 606 707
    .venv/bin/python benchmarks/nightscout_alarm.py --seeds 909 --sensor Dexcom

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
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.evaluate_glucose import cache_path, load_traces  # noqa: E402
from benchmarks.evaluate_glucose_rules import (  # noqa: E402
    LOOKAHEAD_S,
    LOW_RULES,
    PATIENTS,
    leads,
    nightscout,
    raised_events,
    runs,
)
from benchmarks.glucose_traces import Trace  # noqa: E402
from detectors import RuleSet  # noqa: E402
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


def main() -> int:
    """Print ours, our anchor and the shipped alarm per seed, per age group and pooled."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[101])
    parser.add_argument("--sensor", default="GuardianRT")
    parser.add_argument("--days", type=float, default=2.0)
    parser.add_argument("--rules", default="alert_rules.yaml")
    args = parser.parse_args()
    full = load_rules(ROOT / args.rules)
    rules = RuleSet(rules=tuple(r for r in full.rules if r.metric == "glucose" and r.device_prefix is None))
    names = ("ours", "our anchor", "shipped AR2")
    groups: dict[str, dict[str, list[float]]] = {}
    for seed in args.seeds:
        traces = load_traces(args.days, cache_path(seed, args.sensor), PATIENTS, seed, args.sensor)
        raised = {"ours": raised_events(rules, traces), "our anchor": raised_events(nightscout(rules), traces)}
        for tr in traces:
            lows = runs(tr.t, tr.bg < 54)
            spans = {n: [(a, b) for r, _, a, b in raised[n][tr.patient] if r in LOW_RULES] for n in names[:2]}
            spans["shipped AR2"] = spans_of(tr.t, shipped_ar2_low(tr.t, tr.cgm) | (tr.cgm < LOW_ALARM))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
