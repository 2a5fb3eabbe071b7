"""Fit the AF window classifier of ``detectors/af_model.py`` on four generator families' training seeds.

Reproduce (prints the constants pasted into detectors/af_model.py; ~1 min)::

    .venv/bin/python benchmarks/train_af.py --write

Training data (since issue 17's thirteenth round): ``benchmarks/rr_models.py`` families A, B, C
and D, seeds 1000-1002 each (never used for evaluation), 2 recordings per cell (6 backgrounds x no
AF / AF / low-variability AF x clean / beat errors) of 40 min with one 5-15 min paroxysm; 64-beat
windows every 16 beats, labelled 1 when wholly inside an AF episode, 0 when wholly outside, dropped
when straddling an onset or an end (150,740 windows, 30,017 AF). Families E-J are never fitted on.
Until the twelfth round the model was fitted on family A alone (``--families A``); family A's young
sinus holds breathing-driven sinus arrhythmia in time (``rr_models.a_sinus_breathing``, fourth
round) and irregular breathing, breath by breath (``rr_models.a_sinus_breaths``, fifth round).
``--augmented`` and ``--young`` (ninth round; 0 by default) add recordings of ``rr_models``'
training-only ``A-augmented`` rhythms (family A's, with AF of lag-1 correlation -0.6..0.5 and the
young breathing at 2-3.5 beats a breath) drawn from the same seeds.

The model (thirteenth round) is a network of one hidden layer: the standardized features, 16 ReLU
units, a logistic output; cross-entropy with L2 1e-4 on the weights, Adam, 30 epochs of batches of
512, deterministic for ``--seed`` (:func:`fit_mlp`). The earlier rounds' model, an L2-regularized
(1e-2) logistic regression on the standardized features and their pairwise products (:func:`fit`),
is kept for ``benchmarks/af_candidates.py``'s logistic candidates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.rr_models import Recording, cohort, jittered_cohort, recording  # noqa: E402
from detectors.af_model import FEATURES, cleaned, features  # noqa: E402

TRAIN_SEEDS = (1000, 1001, 1002)
BEGIN = "# BEGIN fitted constants (benchmarks/train_af.py --write)\n"
END = "# END fitted constants"
WINDOW, STEP = 64, 16
AUGMENTED = 0  # recordings per cell of the A-augmented rhythms (ninth round; the shipped model: none)
YOUNG = 0  # more A-augmented young recordings (2-3.5 beats a breath), each clean and with beat errors
FAMILIES = ("A", "B", "C", "D")  # the generator families whose training seeds are fitted on (A alone until round 12)
HIDDEN = 16  # the network's hidden ReLU units
NET_L2 = 1e-4  # its L2 penalty on the weights


def training_windows(
    per_cell: int,
    augmented: int,
    young: int = 0,
    seeds: tuple[int, ...] = TRAIN_SEEDS,
    families: tuple[str, ...] = FAMILIES,
) -> tuple[np.ndarray, np.ndarray]:
    """The training windows and labels: each of ``families``' cohorts on the training seeds (family A's
    alone for the shipped model), ``augmented`` per cell of A-augmented, and ``young`` more of its
    young rhythm at 2-3.5 beats a breath (without AF, clean and with beat errors; drawn from
    ``default_rng([seed, 1])`` of the same seeds)."""
    recordings = [r for family in families for seed in seeds
                  for r in jittered_cohort(family, per_cell, 40, (5, 15), seed)]
    if augmented:
        recordings += [r for seed in seeds for r in cohort("A-augmented", augmented, 40, (5, 15), seed)]
    for seed in seeds if young else ():
        rng = np.random.default_rng([seed, 1])
        recordings += [recording("A-augmented", "sinus young", None, errors, 40, (5, 15), rng)
                       for _ in range(young) for errors in (False, True)]
    return windows(recordings)


def windows(recordings: list[Recording]) -> tuple[np.ndarray, np.ndarray]:
    """64-beat windows every 16 beats and their labels (1 AF, 0 not, NaN straddling)."""
    rows, labels = [], []
    for rec in recordings:
        if len(rec.rr) < WINDOW:
            continue
        win = sliding_window_view(rec.rr, WINDOW)[::STEP]
        end = rec.t[WINDOW - 1 :][::STEP]
        start = end - win.sum(axis=1)
        label = np.zeros(len(win))
        for a, b in rec.episodes:
            inside = (start >= a) & (end <= b)
            label[(end > a) & (start < b) & ~inside] = np.nan
            label[inside] = 1.0
        rows.append(win)
        labels.append(label)
    return np.concatenate(rows), np.concatenate(labels)


def expanded(columns: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The logistic model's inputs: standardized features and all their pairwise products (and squares)."""
    z = (columns - mean) / scale
    i, j = np.triu_indices(z.shape[1])
    out: np.ndarray = np.hstack([z, z[:, i] * z[:, j]])
    return out


def logistic_probability(columns: np.ndarray, mean: np.ndarray, scale: np.ndarray, weights: np.ndarray,
                         bias: float) -> np.ndarray:
    """The probability of AF per feature row of a logistic model fitted by :func:`fit` (rounds 1-12's form)."""
    logit = expanded(columns, mean, scale) @ weights + bias
    p: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(logit, -50, 50)))
    return p


def fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iterations: int = 50) -> tuple[np.ndarray, ...]:
    """Standardization of the features and logistic-regression weights (Newton's method)."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = np.hstack([expanded(x, mean, scale), np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    penalty = np.r_[np.full(len(w) - 1, l2), 0.0]
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-z @ w))
        grad = z.T @ (p - y) / len(y) + penalty * w
        hess = (z * (p * (1 - p))[:, None]).T @ z / len(y) + np.diag(penalty + 1e-9)
        w -= np.linalg.solve(hess, grad)
    return mean, scale, w[:-1], w[-1:]


def fit_mlp(
    x: np.ndarray,
    y: np.ndarray,
    hidden: int = 16,
    epochs: int = 30,
    rate: float = 3e-3,
    l2: float = 1e-4,
    seed: int = 0,
    batch: int = 512,
) -> tuple[np.ndarray, ...]:
    """Standardization and the weights of a one-hidden-layer ReLU network (cross-entropy, Adam).

    Returns (mean, scale, hidden weights (features x hidden), hidden biases, output weights,
    output bias), the parameters of ``detectors.af_model.network``. Deterministic for a seed.
    """
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mean) / scale
    rng = np.random.default_rng(seed)
    params = [
        rng.normal(0.0, np.sqrt(2.0 / z.shape[1]), (z.shape[1], hidden)),
        np.zeros(hidden),
        rng.normal(0.0, np.sqrt(2.0 / hidden), hidden),
        np.zeros(1),
    ]
    first, second = [np.zeros_like(q) for q in params], [np.zeros_like(q) for q in params]
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(z))
        for start in range(0, len(z), batch):
            rows = order[start : start + batch]
            w1, b1, w2, b2 = params
            h = np.maximum(z[rows] @ w1 + b1, 0.0)
            p = 1.0 / (1.0 + np.exp(-np.clip(h @ w2 + b2[0], -50, 50)))
            g = (p - y[rows]) / len(rows)
            gh = np.outer(g, w2) * (h > 0)
            grads = [z[rows].T @ gh + l2 * w1, gh.sum(axis=0), h.T @ g + l2 * w2, np.array([g.sum()])]
            step += 1
            for q, grad, m, v in zip(params, grads, first, second, strict=True):
                m *= 0.9
                m += 0.1 * grad
                v *= 0.999
                v += 0.001 * grad * grad
                q -= rate * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    w1, b1, w2, b2 = params
    return mean, scale, w1, b1, w2, float(b2[0])


def _array(name: str, values: np.ndarray) -> str:
    numbers = [f"{v:.6g}" for v in values.ravel()]
    rows = [", ".join(numbers[i : i + 8]) for i in range(0, len(numbers), 8)]
    body = "".join(f"        {row},\n" for row in rows)
    shape = f".reshape{values.shape}" if values.ndim > 1 else ""
    return f"{name}: Final = np.array(\n    [\n{body}    ]\n){shape}"


def constants(mean: np.ndarray, scale: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray,
              b2: float) -> str:
    """The constants block of detectors/af_model.py (the network of :func:`fit_mlp`)."""
    lines = [_array("MEAN", mean), _array("SCALE", scale), _array("HIDDEN_WEIGHTS", w1), _array("HIDDEN_BIAS", b1),
             _array("OUTPUT_WEIGHTS", w2), f"OUTPUT_BIAS: Final = {b2:.6g}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Fit; print the constants, or write them into detectors/af_model.py with ``--write``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-cell", type=int, default=2)
    parser.add_argument("--augmented", type=int, default=AUGMENTED)
    parser.add_argument("--young", type=int, default=YOUNG)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), help="training families, seeds 1000-1002")
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    parser.add_argument("--l2", type=float, default=NET_L2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rr, label = training_windows(args.per_cell, args.augmented, args.young, families=tuple(args.families))
    x = features(rr, cleaned(rr))
    ok = ~np.isnan(label) & np.isfinite(x).all(axis=1)
    net = fit_mlp(x[ok], label[ok], hidden=args.hidden, l2=args.l2, seed=args.seed)
    print(f"# {ok.sum()} training windows ({int(label[ok].sum())} AF) of families {', '.join(args.families)}, "
          f"features {', '.join(FEATURES)}")
    block = constants(*net)
    print(block)
    if args.write:
        path = ROOT / "detectors" / "af_model.py"
        text = path.read_text()
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        path.write_text(text[:start] + block + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
