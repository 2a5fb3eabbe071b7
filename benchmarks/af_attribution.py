"""Why the model misses serially correlated AF: which decision step, which features (issue 17).

Reproduce (see benchmarks/RESULTS.md, "AF screening, eighth round"; ~30 s)::

    .venv/bin/python benchmarks/af_attribution.py

AF of ``af_styles.py``'s AR(1) law (lag-1 correlation -0.6 / -0.4) against independent AF of the
same CV (five 1500-beat sequences per cell at 60-110 bpm, the seed of ``af_styles.py``), in 64-beat
windows every 16 beats. Per cell: the share of beats the model's beat-error filter keeps, of
windows it empties (those go to the seventh round's Dash fallback), of windows the classifier
calls irregular; the mean standardized feature (z) of each cell, with family A's training AF and
non-AF windows for scale; and a *swap* attribution: each feature of a correlated window replaced,
one at a time, by the same feature of an independent window of the same CV (same position), and
the share irregular again. A feature whose swap alone restores the share carries the miss.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.af_styles import alternans, ar1  # noqa: E402
from benchmarks.rr_models import cohort  # noqa: E402
from benchmarks.train_af import TRAIN_SEEDS, windows  # noqa: E402
from detectors import af_model  # noqa: E402
from detectors.af_model import FEATURES  # noqa: E402

STRUCTURE = ("log_ar_ratio", "spectral_peak", "perm_entropy", "log_nn_error")
CELLS = [(rho, cv) for rho in (-0.6, -0.4) for cv in (0.10, 0.15)]


def style_windows(style: object, cv: float) -> np.ndarray:
    """64-beat windows (every 16) of five sequences of an ``af_styles`` law, as af_styles draws them."""
    rng = np.random.default_rng(17)
    rows = []
    for _ in range(5):
        mean = 60 / rng.uniform(60, 110)
        rr = np.clip(style(rng, cv, mean), 0.25, 3.0)  # type: ignore[operator]
        rows.append(sliding_window_view(rr, 64)[::16])
    return np.concatenate(rows)


def irregular(columns: np.ndarray) -> float:
    """Share of rows the classifier calls irregular (rows with a non-finite feature count as not)."""
    finite = np.isfinite(columns).all(axis=1)
    p = af_model.probability(np.where(finite[:, None], columns, 0.0))
    return float(np.mean(finite & (p >= af_model.THRESHOLD)))


def main() -> int:
    """Print the three tables."""
    train = [r for seed in TRAIN_SEEDS[:1] for r in cohort("A", 1, 40, (5, 15), seed)]
    rr, label = windows(train)
    a = af_model.features(rr, af_model.cleaned(rr))
    finite = np.isfinite(a).all(axis=1)
    groups: dict[str, np.ndarray] = {}
    print("Decision steps (share of beats kept by the model's beat-error filter; windows emptied -> Dash "
          "fallback; windows irregular):\n")
    print("| AF law | CV | beats kept | windows emptied | irregular |")
    print("|---|---|---|---|---|")
    laws = [("independent", 0.0), *((f"AR(1) lag-1 {rho:+.1f}", rho) for rho in (-0.6, -0.4))]
    for cv in (0.10, 0.15):
        for name, rho in laws:
            w = style_windows(ar1(rho), cv)
            keep = af_model.cleaned(w)
            x = af_model.features(w, keep)
            groups[f"{name}, CV {cv:g}"] = x
            emptied = np.mean(keep.sum(axis=1) * 2 < w.shape[1])
            print(f"| {name} | {cv:g} | {keep.mean():.3f} | {emptied:.3f} | {irregular(x):.2f} |")
        w = style_windows(alternans, cv)
        x = af_model.features(w, af_model.cleaned(w))
        groups[f"alternans, CV {cv:g}"] = x
        print(f"| alternans + independent | {cv:g} | {af_model.cleaned(w).mean():.3f} | - | {irregular(x):.2f} |")
    print("\nMean standardized feature (z):\n")
    print("| windows | " + " | ".join(FEATURES) + " |")
    print("|---|" + "---|" * len(FEATURES))
    rows = [("family A training AF", a[finite & (label == 1)]), ("family A training non-AF", a[finite & (label == 0)]),
            *groups.items()]
    for name, x in rows:
        z = (x - af_model.MEAN) / af_model.SCALE
        print(f"| {name} | " + " | ".join(f"{v:+.2f}" for v in np.nanmean(z, axis=0)) + " |")
    print("\nSwap attribution (share irregular with one feature taken from independent AF of the same CV):\n")
    print("| AF law | CV | as is | " + " | ".join(FEATURES) + " | the four structure features |")
    print("|---|---|---|" + "---|" * (len(FEATURES) + 1))
    for rho, cv in CELLS:
        x, ref = groups[f"AR(1) lag-1 {rho:+.1f}, CV {cv:g}"], groups[f"independent, CV {cv:g}"]
        cells = []
        for j in range(len(FEATURES)):
            swapped = x.copy()
            swapped[:, j] = ref[:, j]
            cells.append(f"{irregular(swapped):.2f}")
        swapped = x.copy()
        structure = [FEATURES.index(f) for f in STRUCTURE]
        swapped[:, structure] = ref[:, structure]
        cells.append(f"{irregular(swapped):.2f}")
        print(f"| AR(1) lag-1 {rho:+.1f} | {cv:g} | {irregular(x):.2f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
