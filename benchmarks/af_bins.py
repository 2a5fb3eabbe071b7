"""AF screening per episode, binned by the paroxysm's irregularity, rate, length and beat errors (issue 17).

Reproduce (see benchmarks/RESULTS.md, "AF screening, seventh round")::

    .venv/bin/python benchmarks/af_bins.py --families A B C D --seeds 0 1 2 3 4 5 6 7 8 9 --base 2600
    .venv/bin/python benchmarks/af_bins.py --families A --seeds 0 1 2 --variants default thr:0.3 for:60

Each family's seeds are ``base + 1000 * k + seed`` (A 2600.., B 3600.., ... G 8600.. for
``--base 2600``), one cohort per seed as ``evaluate_af.py`` makes it, run through one
``detectors.Engine`` per variant (the worker's and ``rpm backtest``'s code) and scored the same way
(``evaluate_af.score``). Variants: ``default`` (the default rule), ``dash`` (the Dash 2009 anchor:
128-beat windows every 32 beats, one vote, 30 s, as the first round's per-window row), ``thr:P``
(the model's window threshold P), ``for:S`` (persistence S seconds), ``clear:S`` (the rule's clear
time), ``cool:S`` (its cooldown), ``nofallback`` (the model's windows emptied by its beat-error
filter left unknown, as before the seventh round, instead of judged by the Dash criteria),
``model:NAME`` (the window classifier's features and constants swapped for those registered in
:data:`MODELS` under NAME, by ``benchmarks/af_candidates.py``: several models on the same
recordings in one process), combinable with ``+`` (``thr:0.4+for:60``).

Per AF episode the bins use the paroxysm's own intervals before beat errors
(``Recording.af_rr``): coefficient of variation, mean rate, length; and, with the recording's beat
errors, the share of the episode's emitted intervals the model's beat-error filter would drop in a
window around each (the filter's view of "beat errors", AF's own outliers included).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.evaluate_af import Outcome, bootstrap, run, summary  # noqa: E402
from benchmarks.rr_models import Recording, jittered_cohort  # noqa: E402
from benchmarks.train_af import logistic_probability  # noqa: E402
from detectors import af_model, rhythm  # noqa: E402
from detectors.rules import RhythmRule  # noqa: E402
from rpm_core.rules import load_rules  # noqa: E402

FAMILY_OFFSET = {f: 1000 * i for i, f in enumerate("ABCDEFGHIJ")}
FAMILY_OFFSET |= {f + "j": offset + 500 for f, offset in FAMILY_OFFSET.items()}  # family X with beat-time jitter


@dataclasses.dataclass(frozen=True)
class Model:
    """A window classifier: which columns of ``af_model.features`` it uses, and its fitted constants.

    ``probability`` None: a logistic model on the standardized columns and their pairwise products
    (``weights``, ``bias``; rounds 1-12's form, ``train_af.fit``); else the model's own function of
    the columns (a network: ``train_af.fit_mlp``).
    """

    columns: tuple[int, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    features: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # None: af_model.features
    probability: Callable[[np.ndarray], np.ndarray] | None = None

    def judge(self, columns: np.ndarray) -> np.ndarray:
        """The probability of AF per row of this model's columns."""
        if self.probability is not None:
            return self.probability(columns)
        return logistic_probability(columns, self.mean, self.scale, self.weights, self.bias)


MODELS: dict[str, Model] = {}  # model:NAME variants (benchmarks/af_candidates.py registers them)
# PREFIX:ARGS variant parts that swap part of the detector for a run (benchmarks/af_second.py registers
# "second"): the prefix maps to a function of ARGS giving the context manager of the swap
SWAPS: dict[str, Callable[[str], contextlib.AbstractContextManager[None]]] = {}


@contextlib.contextmanager
def installed(model: Model | None) -> Iterator[None]:
    """``af_model`` computing ``model``'s columns with its constants, restored afterwards."""
    if model is None:
        yield
        return
    names = ("features", "MEAN", "SCALE", "probability")
    saved = {name: getattr(af_model, name) for name in names}
    every = model.features or saved["features"]

    def chosen(rr: np.ndarray, keep: np.ndarray) -> np.ndarray:
        return np.asarray(every(rr, keep)[:, list(model.columns)])

    for name, value in zip(names, (chosen, model.mean, model.scale, model.judge), strict=True):
        setattr(af_model, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(af_model, name, value)
BINS: dict[str, tuple[float, ...]] = {
    "cv": (0.0, 0.06, 0.08, 0.10, 0.12, 0.15, 0.20, 0.30, 0.40, 1.0),
    "hr": (0.0, 60.0, 80.0, 100.0, 130.0, 1000.0),
    "minutes": (5.0, 7.5, 10.0, 12.5, 15.01),
    "dropped": (0.0, 0.02, 0.05, 0.10, 0.20, 1.01),
}


def variant(name: str) -> tuple[RhythmRule, float]:
    """The rule and window threshold of a variant name (see the module docstring)."""
    rule = load_rules(ROOT / "alert_rules.yaml").by_name()["af_screening"]
    assert isinstance(rule, RhythmRule)
    threshold = float(af_model.THRESHOLD)
    for part in name.split("+"):
        if part in ("default", "nofallback") or part.startswith("model:") or part.split(":")[0] in SWAPS:
            continue
        if part == "dash":
            level = dataclasses.replace(rule.levels[0], for_s=30.0)
            rule = dataclasses.replace(rule, method="dash", window_beats=128, every_beats=32, votes=1, levels=(level,))
        elif part.startswith("thr:"):
            threshold = float(part[4:])
        elif part.startswith("for:"):
            levels = tuple(dataclasses.replace(lv, for_s=float(part[4:])) for lv in rule.levels)
            rule = dataclasses.replace(rule, levels=levels)
        elif part.startswith("clear:"):
            rule = dataclasses.replace(rule, clear_for_s=float(part[6:]))
        elif part.startswith("cool:"):
            rule = dataclasses.replace(rule, cooldown_s=float(part[5:]))
        else:
            raise SystemExit(f"unknown variant {part!r}")
    return rule, threshold


def episode_stats(rec: Recording) -> dict[str, float]:
    """The paroxysm's CV, rate (bpm), length (min) and share of its emitted intervals the filter drops."""
    assert rec.af_rr is not None
    assert rec.episodes
    a, b = rec.episodes[0]
    af = rec.af_rr
    inside = (rec.t > a) & (rec.t <= b)
    rr = rec.rr
    idx = np.flatnonzero(inside)
    dropped = 0.0
    if len(idx) and len(rr) >= 64:
        rows = np.lib.stride_tricks.sliding_window_view(rr, 64)
        centre = np.clip(idx - 32, 0, len(rows) - 1)  # the window with the interval near its middle
        keep = af_model.cleaned(rows[centre])
        dropped = float(1 - keep[np.arange(len(idx)), idx - centre].mean())
    return {
        "cv": float(np.std(af) / np.mean(af)),
        "hr": float(60 / np.mean(af)),
        "minutes": float((b - a) / 60),
        "dropped": dropped,
    }


def main(argv: list[str] | None = None) -> int:
    """Print per-bin sensitivity and the operating points of each variant per family."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["A", "B", "C", "D"])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--base", type=int, default=2600)
    parser.add_argument("--variants", nargs="+", default=["default", "dash"])
    args = parser.parse_args(argv)
    rows: list[dict[str, object]] = []
    segments: dict[tuple[str, str], list[bool]] = {}
    outcomes: dict[tuple[str, str], list[Outcome]] = {}
    for family in args.families:
        for seed in args.seeds:
            s = args.base + FAMILY_OFFSET[family] + seed
            recordings = jittered_cohort(family, 1, 40, (5, 15), s)
            results: dict[str, list[Outcome]] = {}
            for name in args.variants:
                rule, threshold = variant(name)
                saved = af_model.THRESHOLD
                af_model.THRESHOLD = threshold  # type: ignore[misc]
                rhythm.FALLBACK_DASH = "nofallback" not in name.split("+")
                model = next((MODELS[p[6:]] for p in name.split("+") if p.startswith("model:")), None)
                swaps = [SWAPS[q.split(":")[0]](q.split(":", 1)[1]) for q in name.split("+")
                         if q.split(":")[0] in SWAPS]
                try:
                    with installed(model), contextlib.ExitStack() as stack:
                        for swap in swaps:
                            stack.enter_context(swap)
                        results[name] = run(rule, recordings)
                finally:
                    af_model.THRESHOLD = saved  # type: ignore[misc]
                    rhythm.FALLBACK_DASH = True
            for name in args.variants:
                outcomes.setdefault((family, name), []).extend(results[name])
            for i, rec in enumerate(recordings):
                for name in args.variants:
                    segments.setdefault((family, name), []).extend(results[name][i].segments)
                if rec.af_kind is None:
                    continue
                row: dict[str, object] = {"family": family, "seed": s, "background": rec.background,
                                          "errors": rec.beat_errors, "kind": rec.af_kind, **episode_stats(rec)}
                for name in args.variants:
                    o = results[name][i]
                    row[name] = not np.isnan(o.delays[0])
                    row[name + ":cause"] = o.causes[0] if o.causes else ""
                rows.append(row)
        print(f"# family {family} done", file=sys.stderr, flush=True)
    print(f"families {args.families}, seeds {args.base}+family offset+{args.seeds}; variants {args.variants}")
    print()
    print("Operating points (AF episodes alerted; non-AF segments free):")
    print()
    print("| family | " + " | ".join(args.variants) + " |")
    print("|---|" + "---|" * len(args.variants))
    for family in [*args.families, "all"]:
        mine = [r for r in rows if family in ("all", r["family"])]
        cells = []
        for name in args.variants:
            hit = sum(bool(r[name]) for r in mine)
            seg = [x for f in args.families if family in ("all", f) for x in segments[(f, name)]]
            cells.append(f"{hit}/{len(mine)} ({hit / max(len(mine), 1):.1%}); {len(seg) - sum(seg)}/{len(seg)} "
                         f"({1 - sum(seg) / max(len(seg), 1):.1%})")
        print(f"| {family} | " + " | ".join(cells) + " |")
    print()
    print("Per family, 95 % bootstrap CIs over recordings (2000 resamples; evaluate_af's scoring):")
    print()
    print("| family | variant | AF episodes alerted | non-AF segments free | median onset -> alert "
          "| missed: open / cooldown / none |")
    print("|---|---|---|---|---|---|")
    for family in args.families:
        for name in args.variants:
            mine = outcomes[(family, name)]
            sens, spec, median, hits, episodes, free, n_segments = summary(mine)
            (s_lo, p_lo, m_lo), (s_hi, p_hi, m_hi) = bootstrap(mine)
            causes = [c for o in mine for c in o.causes]
            print(f"| {family} | {name} | {hits}/{episodes}, {sens:.1%} ({s_lo:.1%}-{s_hi:.1%}) "
                  f"| {free}/{n_segments}, {spec:.1%} ({p_lo:.1%}-{p_hi:.1%}) "
                  f"| {median / 60:.1f} min ({m_lo / 60:.1f}-{m_hi / 60:.1f}) "
                  f"| {causes.count('open')} / {causes.count('cooldown')} / {causes.count('none')} |")
    for key, edges in BINS.items():
        print()
        print(f"Episodes alerted by {key} (all families above; missed: open / cooldown / none):")
        print()
        print(f"| {key} | episodes | " + " | ".join(args.variants) + " |")
        print("|---|---|" + "---|" * len(args.variants))
        for lo, hi in itertools.pairwise(edges):
            mine = [r for r in rows if lo <= float(r[key]) < hi]  # type: ignore[arg-type]
            if not mine:
                continue
            cells = []
            for name in args.variants:
                hit = sum(bool(r[name]) for r in mine)
                causes = [r[name + ":cause"] for r in mine if not r[name]]
                cells.append(f"{hit / len(mine):.1%} ({causes.count('open')}/{causes.count('cooldown')}/"
                             f"{causes.count('none')})")
            print(f"| {lo:g}-{hi:g} | {len(mine)} | " + " | ".join(cells) + " |")
    print()
    print("Episodes alerted by beat errors and AF kind:")
    print()
    print("| kind | beat errors | episodes | " + " | ".join(args.variants) + " |")
    print("|---|---|---|" + "---|" * len(args.variants))
    for kind in ("AF", "AF low variability"):
        for errors in (False, True):
            mine = [r for r in rows if r["kind"] == kind and r["errors"] == errors]
            cells = [f"{sum(bool(r[n]) for r in mine) / max(len(mine), 1):.1%}" for n in args.variants]
            print(f"| {kind} | {'yes' if errors else 'no'} | {len(mine)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
