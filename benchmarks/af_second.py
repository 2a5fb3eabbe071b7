"""A second opinion for windows the AF classifier calls regular: a guarded Dash rule (issue 17, tenth round).

Reproduce (see benchmarks/RESULTS.md, "AF screening, tenth round")::

    .venv/bin/python benchmarks/af_second.py --seeds 0 1 2 --base 2600      # window level, tuning seeds
    .venv/bin/python benchmarks/af_second.py --per-episode --families A B --base 2600 \
        --variants default second:0.5,0,0.1,0.6,0.62                        # per episode (af_bins' arguments)

The classifier of ``detectors/af_model.py`` learned "AF is unpredictable" from one family's
independent AF; AF whose intervals are serially correlated, or rate-controlled AF in a style it
never saw, can look patterned to it, while the Dash 2009 criteria (irregularity, turning points,
histogram entropy) still call it irregular. The candidate: a 64-beat window the classifier
calls regular is irregular when all of

- the Dash criteria on it say irregular (the rule's own nrmssd / tpr / entropy, trim 4 of 64, as
  the seventh round's fallback for emptied windows),
- its intervals do not repeat every 2-6 beats (``rhythm._repeats``: bigeminy, trigeminy, breathing
  at a whole number of beats),
- the spectral flatness of its intervals whitened of their lag-1 correlation is at least ``flat``
  (``af_candidates.whitened_flatness``: ~0.6 for AF of any lag-1 correlation, a breathing line
  0.05-0.4),
- the classifier's own probability of AF is at least ``p_min`` (not a window it is sure of),
- the median |successive difference| / 0.6745 (the RMSSD of normal steps: Dash's nRMSSD made
  robust to a few ectopic jumps) is at least ``robust``, the share of compensated short -> long
  steps (``af_model``'s ``compensated``) under ``compensated`` (frequent, clustered ectopy), and
  the turning-point ratio at least ``tpr`` (alternation; D's young rhythm has fewer).

``af_bins.py`` runs it per episode as the variant ``second:FLAT,PMIN,ROBUST,COMP[,TPR]`` (the
classifier swapped for this function in ``detectors.rhythm`` for the run). The tenth round chose
``second:0.5,0,0.1,0.6,0.62`` on the tuning seeds and did not adopt it (RESULTS.md).
This module also prints the window-level shares of a grid of (flat, p_min) on generator
families' windows (by background) and on ``af_styles.py``'s AF laws (none of them a family).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import af_bins, af_styles  # noqa: E402
from benchmarks.af_candidates import whitened_flatness  # noqa: E402
from benchmarks.rr_models import cohort  # noqa: E402
from benchmarks.train_af import windows  # noqa: E402
from detectors import af_model, rhythm  # noqa: E402
from detectors.rules import RhythmRule  # noqa: E402
from rpm_core.rules import load_rules  # noqa: E402

MAD_NORMAL = 0.6745  # median |N(0, 1)|: median |step| / 0.6745 estimates the RMS step of normal steps
FAMILY_OFFSET = {f: 1000 * i for i, f in enumerate("ABCDEFGHI")}


def _dash_params(n: int) -> dict[str, np.ndarray]:
    rule = load_rules(ROOT / "alert_rules.yaml").by_name()["af_screening"]
    assert isinstance(rule, RhythmRule)
    return {
        "trim": np.full(n, float(round(rule.trim_beats * rule.window_beats / rhythm.DASH_WINDOW))),
        "nrmssd": np.full(n, rule.nrmssd_min),
        "tpr_low": np.full(n, rule.tpr_low),
        "tpr_high": np.full(n, rule.tpr_high),
        "entropy": np.full(n, rule.entropy_min),
    }


def components(rr: np.ndarray) -> dict[str, np.ndarray]:
    """Per window row: the classifier's probability (NaN unusable), Dash's verdict, repeats, flatness."""
    keep = af_model.cleaned(np.maximum(rr, 1e-9))
    enough = keep.sum(axis=1) * 2 >= rr.shape[1]
    columns = af_model.features(rr, keep)
    usable = enough & (rr > 0).all(axis=1) & np.isfinite(columns).all(axis=1)
    p = np.where(usable, af_model.probability(np.where(usable[:, None], columns, 0.0)), np.nan)
    dash = rhythm._dash(rr, np.ones(len(rr), np.bool_), _dash_params(len(rr)))
    x = rr / np.median(rr, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(keep, x, 0.0).sum(axis=1) / keep.sum(axis=1)
        centred = np.where(keep, x - mean[:, None], 0.0)
        flat = whitened_flatness(centred, keep)
    robust = np.exp(columns[:, 0]) / MAD_NORMAL  # median |successive difference| as an RMSSD (normal steps)
    compensated = columns[:, af_model.FEATURES.index("compensated")]
    tpr = columns[:, af_model.FEATURES.index("tpr")]
    return {"p": p, "dash": dash, "repeats": rhythm._repeats(rr), "flat": flat, "robust": robust,
            "compensated": compensated, "tpr": tpr}


def second(c: dict[str, np.ndarray], flat: float, p_min: float, threshold: float,
           robust: float = 0.0, compensated: float = 1.01, tpr: float = 0.0) -> np.ndarray:
    """Irregular (1) / regular (0) / unknown (NaN) with the second opinion over the classifier's verdict."""
    model = c["p"] >= threshold
    rescued = (c["dash"] == 1) & ~c["repeats"] & (c["flat"] >= flat) & (c["p"] >= p_min)
    rescued &= (c["robust"] >= robust) & (c["compensated"] < compensated) & (c["tpr"] >= tpr)
    return np.where(np.isnan(c["p"]), np.nan, (model | rescued).astype(np.float64))


@contextlib.contextmanager
def installed(args: str) -> Iterator[None]:
    """``rhythm._learned`` with the second opinion for one run (af_bins' ``second:FLAT,PMIN,ROBUST,COMP[,TPR]``)."""
    flat, p_min, robust, compensated, tpr = ([float(v) for v in args.split(",")] + [0.0])[:5]
    saved = rhythm._learned

    def learned(rr: np.ndarray, complete: np.ndarray) -> np.ndarray:
        verdict = second(components(rr), flat, p_min, float(af_model.THRESHOLD), robust, compensated, tpr)
        return np.where(complete, verdict, np.nan)

    rhythm._learned = learned  # type: ignore[assignment]
    try:
        yield
    finally:
        rhythm._learned = saved  # type: ignore[assignment]


GRID_FLAT = (0.0, 0.4, 0.45, 0.5, 0.55)
GRID_P = (0.0, 0.02, 0.05, 0.1, 0.2)


def family_windows(families: list[str], seeds: list[int], base: int) -> dict[str, dict[str, np.ndarray]]:
    """Components of the 64-beat windows (every 16) of each family's recordings, by label."""
    groups: dict[str, list[np.ndarray]] = {}
    for family in families:
        for seed in seeds:
            for rec in cohort(family, 1, 40, (5, 15), base + FAMILY_OFFSET[family] + seed):
                rr, label = windows([rec])
                ok = np.isfinite(rr).all(axis=1)
                groups.setdefault(f"{family} AF", []).append(rr[ok & (label == 1)])
                if rec.af_kind == "AF low variability":
                    groups.setdefault(f"{family} AF rate-controlled", []).append(rr[ok & (label == 1)])
                groups.setdefault(f"{family} {rec.background}", []).append(rr[ok & (label == 0)])
    return {name: components(np.concatenate(rows)) for name, rows in groups.items()}


def style_windows() -> dict[str, dict[str, np.ndarray]]:
    """Components of ``af_styles.py``'s AF laws at CV 0.06-0.15 (five 1500-beat sequences per cell)."""
    out = {}
    for name in ("independent normal", "AR(1) lag-1 -0.6", "AR(1) lag-1 -0.4", "AR(1) lag-1 +0.6",
                 "alternans + independent", "two modes"):
        rng = np.random.default_rng(17)
        for cv in (0.06, 0.08, 0.10, 0.12, 0.15):
            seqs = [np.clip(af_styles.STYLES[name](rng, cv, 60 / rng.uniform(60, 110)), 0.25, 3.0) for _ in range(5)]
            rows = np.concatenate([np.lib.stride_tricks.sliding_window_view(s, 64)[::16] for s in seqs])
            out[f"style {name} CV {cv:g}"] = components(rows)
    return out


def main() -> int:
    """Print the share of windows irregular per group for each (flat, p_min) of the grid, or with
    ``--per-episode``, run ``af_bins`` (its own arguments follow) with the ``second:`` variants."""
    if "--per-episode" in sys.argv:
        af_bins.SWAPS["second"] = installed
        return af_bins.main([a for a in sys.argv[1:] if a != "--per-episode"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["A", "B", "C", "D"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--base", type=int, default=2600)
    parser.add_argument("--no-styles", action="store_true")
    args = parser.parse_args()
    groups = family_windows(args.families, args.seeds, args.base)
    if not args.no_styles:
        groups |= style_windows()
    threshold = float(af_model.THRESHOLD)
    grid = [(None, None), *itertools.product(GRID_FLAT, GRID_P)]
    labels = ["model"] + [f"{f:g},{p:g}" for f, p in grid[1:]]
    print("| windows | n | " + " | ".join(labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    for name, c in groups.items():
        cells = []
        for flat, p_min in grid:
            v = (np.where(np.isnan(c["p"]), np.nan, (c["p"] >= threshold).astype(float)) if flat is None
                 else second(c, flat, p_min, threshold))
            cells.append(f"{np.nanmean(v):.3f}" if np.isfinite(v).any() else "-")
        print(f"| {name} | {len(c['p'])} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
