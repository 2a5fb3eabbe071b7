"""Window-classifier candidates fitted in process and scored per episode against a base model (issue 17).

Reproduce (see benchmarks/RESULTS.md, "AF screening, ninth round")::

    .venv/bin/python benchmarks/af_candidates.py --candidates c14a c13a --families A B C D \
        --seeds 0 1 2 3 4 5 6 7 8 9 --base 2600

Each candidate is a choice of feature columns (``detectors.af_model.features``' thirteen and this
module's ``log_flatness``, the log spectral flatness of the intervals whitened of their lag-1
correlation) and of training data
(family A's training seeds 1000-1002, ``--per-cell`` recordings per cell, plus ``augmented`` per
cell of ``rr_models``' training-only ``A-augmented`` rhythms and ``young`` more of its young
rhythm at 2-3.5 beats a breath, from the same seeds), fitted with
``train_af.fit``; ``base`` is the model at ``--base-rev`` (its thirteen features and fitted
constants, read from git). All run on the same recordings in one process through
``af_bins.main`` (``model:NAME`` variants), so the per-family rows compare like with like.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import af_bins  # noqa: E402
from benchmarks.train_af import fit, fit_mlp, training_windows  # noqa: E402
from detectors import af_model  # noqa: E402

ALL = tuple(range(len(af_model.FEATURES) + 1))
THIRTEEN = tuple(range(len(af_model.FEATURES)))  # the eighth round's features (log_flatness is the fourteenth)


def whitened_flatness(centred: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Spectral flatness of the intervals whitened of their lag-1 correlation (ninth round's feature).

    e(i) = c(i) - r1 c(i-1) over kept adjacent pairs (r1 the row's lag-1 autocorrelation, within
    +-0.95; 0 where a pair is broken), then the geometric over the arithmetic mean of its
    Hann-windowed periodogram (without the zero frequency). An AR(1) is white once whitened (~0.6
    for any lag-1 correlation, the flatness of a white periodogram being about e^-0.577), a
    breathing line is not: at 2-3.5 beats a breath it alternates like concealed conduction, but
    its power stays in a few bins (~0.05-0.4). Vectorized over rows; one FFT per row.
    """
    pair = keep[:, 1:] & keep[:, :-1]
    lagged = np.where(pair, centred[:, 1:] * centred[:, :-1], 0.0).sum(axis=1)
    r1 = np.clip(lagged / np.maximum((centred * centred).sum(axis=1), 1e-18), -0.95, 0.95)
    white = np.where(pair, centred[:, 1:] - r1[:, None] * centred[:, :-1], 0.0)
    power = np.abs(np.fft.rfft(white * np.hanning(white.shape[1]), axis=1)[:, 1:]) ** 2
    mean = power.mean(axis=1)
    floor = 1e-9 * mean[:, None] + 1e-30  # an exact zero bin would send the geometric mean to 0
    flatness: np.ndarray = np.exp(np.log(power + floor).mean(axis=1)) / np.maximum(mean, 1e-30)
    return flatness


SHIPPED_FEATURES = af_model.features  # bound at import: af_bins.installed swaps af_model.features


def features(rr: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The shipped thirteen features and a fourteenth, ``log_flatness`` (log whitened spectral flatness)."""
    x = rr / np.median(rr, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = keep.sum(axis=1)
        mean = np.where(keep, x, 0.0).sum(axis=1) / n
        centred = np.where(keep, x - mean[:, None], 0.0)
        flatness = np.log(whitened_flatness(centred, keep) + 1e-3)
    return np.hstack([SHIPPED_FEATURES(rr, keep), flatness[:, None]])
class Candidate(NamedTuple):
    """A candidate's feature columns and training data (``train_af.training_windows``) and L2 penalty."""

    columns: tuple[int, ...]
    augmented: int = 0  # A-augmented recordings per cell
    young: int = 0  # more of its young rhythm at 2-3.5 beats a breath
    families: tuple[str, ...] = ("A",)  # training families, seeds 1000-1002 each (thirteenth round)
    l2: float = 1e-2
    hidden: int = 0  # > 0: a one-hidden-layer network of this width (train_af.fit_mlp) instead of the logistic model
    seed: int = 0  # the network's initialization and batch order


CANDIDATES: dict[str, Candidate] = {
    "c14": Candidate(ALL),  # the whitened flatness alone, main's training data
    "c13a": Candidate(THIRTEEN, 1),  # the training data alone, main's features
    "c14a": Candidate(ALL, 1),  # both
    "c14b": Candidate(ALL, 2),  # both, twice the augmented data
    "c14y": Candidate(ALL, 0, 2),  # the flatness, and the young at 2-3.5 beats a breath only (no correlated AF)
    "c14ay": Candidate(ALL, 1, 4),  # both, and more of the young at 2-3.5 beats a breath
    # thirteenth round: the shipped features fitted on several generator families' training seeds
    "p2": Candidate(THIRTEEN, families=("A", "B")),
    "p4": Candidate(THIRTEEN, families=("A", "B", "C", "D")),
    "p4a": Candidate(THIRTEEN, 1, families=("A", "B", "C", "D")),
    "p4s": Candidate(THIRTEEN, families=("A", "B", "C", "D"), l2=3e-2),
    "p4w": Candidate(THIRTEEN, families=("A", "B", "C", "D"), l2=3e-3),
    "p14": Candidate(ALL, families=("A", "B", "C", "D")),
    # leave-one-family-out checks of pooling (each family's tuning seeds scored by a model without it)
    "p-A": Candidate(THIRTEEN, families=("B", "C", "D")),
    "p-B": Candidate(THIRTEEN, families=("A", "C", "D")),
    "p-C": Candidate(THIRTEEN, families=("A", "B", "D")),
    "p-D": Candidate(THIRTEEN, families=("A", "B", "C")),
    # thirteenth round: a small network (13 -> 16 ReLU -> 1) instead of the quadratic logistic model
    "n4": Candidate(THIRTEEN, families=("A", "B", "C", "D"), l2=1e-4, hidden=16),
    "n4s1": Candidate(THIRTEEN, families=("A", "B", "C", "D"), l2=1e-4, hidden=16, seed=1),
    "n4w": Candidate(THIRTEEN, families=("A", "B", "C", "D"), l2=1e-4, hidden=32),
    "nA": Candidate(THIRTEEN, l2=1e-4, hidden=16),
    "n4j": Candidate(THIRTEEN, families=("A", "B", "C", "D", "Aj", "Bj"), l2=1e-4, hidden=16),
    "n6j": Candidate(THIRTEEN, families=("A", "B", "C", "D", "Aj", "Bj", "Cj", "Dj"), l2=1e-4, hidden=16),
}


def _floats(text: str, name: str) -> np.ndarray:
    body = re.search(rf"{name}: Final = np.array\(\s*\[(.*?)\]", text, re.S)
    assert body is not None, name
    return np.array([float(v) for v in body.group(1).replace("\n", " ").split(",") if v.strip()])


def base_model(rev: str) -> af_bins.Model:
    """The thirteen-feature model of ``detectors/af_model.py`` at ``rev``: the logistic model of rounds
    1-12 or the network of the thirteenth round (its probability function, on that rev's constants)."""
    text = subprocess.run(["git", "show", f"{rev}:detectors/af_model.py"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    return model_from_source(text)


def model_from_source(text: str) -> af_bins.Model:
    """The thirteen-feature model whose fitted constants ``text`` (af_model.py's source) holds."""
    mean, scale = _floats(text, "MEAN"), _floats(text, "SCALE")
    if "HIDDEN_WEIGHTS" not in text:
        bias = re.search(r"BIAS: Final = (\S+)", text)
        assert bias is not None
        return af_bins.Model(THIRTEEN, mean, scale, _floats(text, "WEIGHTS"), float(bias.group(1)))
    hidden = _floats(text, "HIDDEN_BIAS")
    w1 = _floats(text, "HIDDEN_WEIGHTS").reshape(len(mean), len(hidden))
    w2 = _floats(text, "OUTPUT_WEIGHTS")
    out = re.search(r"OUTPUT_BIAS: Final = (\S+)", text)
    assert out is not None
    b2 = float(out.group(1))

    def probability(columns: np.ndarray) -> np.ndarray:
        return af_model.network(columns, mean, scale, w1, hidden, w2, b2)

    return af_bins.Model(THIRTEEN, mean, scale, np.zeros(0), 0.0, None, probability)


def fitted(candidate: Candidate, per_cell: int) -> af_bins.Model:
    """A model of the candidate's columns fitted on its training data."""
    columns = candidate.columns
    rr, label = training_windows(per_cell, candidate.augmented, candidate.young, families=candidate.families)
    x = features(rr, af_model.cleaned(rr))[:, list(columns)]
    ok = ~np.isnan(label) & np.isfinite(x).all(axis=1)
    print(f"# fitting on {ok.sum()} windows ({int(label[ok].sum())} AF), {candidate}", file=sys.stderr, flush=True)
    if candidate.hidden:
        net = fit_mlp(x[ok], label[ok], hidden=candidate.hidden, l2=candidate.l2, seed=candidate.seed)

        def probability(rows: np.ndarray) -> np.ndarray:
            return af_model.network(rows, *net)

        return af_bins.Model(columns, net[0], net[1], np.zeros(0), 0.0, features, probability)
    mean, scale, weights, bias = fit(x[ok], label[ok], l2=candidate.l2)
    return af_bins.Model(columns, mean, scale, weights, float(bias[0]), features)


def main() -> int:
    """Fit the candidates, register them and the base model, run ``af_bins`` with them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--candidates", nargs="+", default=["c14a"],
                        help=f"of {sorted(CANDIDATES)}, each optionally with af_bins variant parts (c14a+thr:0.6)")
    parser.add_argument("--base-rev", default="08d2710")
    parser.add_argument("--per-cell", type=int, default=2)
    parser.add_argument("--base-variants", nargs="*", default=[], help="more variants of the base (model:base+thr:0.6)")
    args, rest = parser.parse_known_args()
    af_bins.MODELS["base"] = base_model(args.base_rev)
    for name in {c.split("+")[0] for c in args.candidates}:
        af_bins.MODELS[name] = fitted(CANDIDATES[name], args.per_cell)
    variants = ["model:base", *args.base_variants, *(f"model:{name}" for name in args.candidates)]
    return af_bins.main([*rest, "--variants", *variants])


if __name__ == "__main__":
    sys.exit(main())
