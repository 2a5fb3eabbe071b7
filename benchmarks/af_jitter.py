"""Specificity against beat-time jitter (issue 17, eleventh round): jitter-aware candidates of the AF classifier.

Reproduce (see benchmarks/RESULTS.md, "AF screening, eleventh round")::

    .venv/bin/python benchmarks/af_jitter.py --candidates j13 j15 --seeds 0 1 2 --base 2600       # window level
    .venv/bin/python benchmarks/af_jitter.py --per-episode --candidates j15 --families A B \
        --seeds 0 1 2 3 4 5 6 7 8 9 --base 2600                                               # per episode

A wrist PPG times each pulse with an error e(i) of 10-30 ms; the interval RR(i) = t(i) - t(i-1)
then carries e(i) - e(i-1): its variance grows by 2 s^2 and neighbouring intervals' errors are
anticorrelated (lag-1 autocovariance -s^2). Older sinus rhythm, whose own variability is a few
per cent, becomes a low-variability, unpredictable series: what rate-controlled AF looks like to
the shipped classifier (tenth round: 47-62 % of windows irregular at 20-30 ms). The candidates:

- ``j13``: the shipped thirteen features, trained on family A's training recordings *and* a copy
  of each with Gaussian jitter of 5-30 ms (uniform per recording) on every beat time (labels
  unchanged: AF seen through a PPG is still AF);
- ``j15``: the same data, and two more features per window: ``r1``, the lag-1 autocorrelation of
  the kept intervals (jitter pulls it towards -0.5, sinus rhythm is positive, independent AF ~0),
  and ``log_dejitter_sd``, the log of the standard deviation (over the median) net of the jitter
  a lag-1 autocovariance explains: sqrt(max(var - 2 s^2, 0)) with s^2 = max(0, -acov(1));
- ``j15n``: the two features without the jittered training copies (a classifier uses a feature
  only for what its training data asks of it; for comparison).

``base`` is the shipped model (its constants read from git at ``--base-rev``). Per episode they run
through ``af_bins.main`` as ``model:NAME`` variants on the same recordings in one process. The
window level prints the share of 64-beat windows irregular per group: families' tuning windows by
background, family A's and B's sinus backgrounds with beat-time jitter added (``+jit S ms``), and
``af_styles.py``'s AF laws with and without jitter (none of them a generator family).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import af_bins, af_styles  # noqa: E402
from benchmarks.af_candidates import THIRTEEN, base_model  # noqa: E402
from benchmarks.rr_models import Recording, cohort  # noqa: E402
from benchmarks.train_af import TRAIN_SEEDS, fit, windows  # noqa: E402
from detectors import af_model, rhythm  # noqa: E402

SHIPPED_FEATURES = af_model.features  # bound at import: af_bins.installed swaps af_model.features
JITTER_SD = (0.005, 0.03)  # s, uniform per training copy
FIFTEEN = (*THIRTEEN, 13, 14)
# columns, jittered training copies per recording
CANDIDATES: dict[str, tuple[tuple[int, ...], int]] = {
    "j13": (THIRTEEN, 1),
    "j15": (FIFTEEN, 1),
    "j15n": (FIFTEEN, 0),
}


def jitter_features(rr: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``r1`` and ``log_dejitter_sd`` per row (columns 13 and 14; kept adjacent pairs only)."""
    x = rr / np.median(rr, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = keep.sum(axis=1)
        mean = np.where(keep, x, 0.0).sum(axis=1) / n
        c = np.where(keep, x - mean[:, None], 0.0)
        var = (c * c).sum(axis=1) / n
        pair = keep[:, 1:] & keep[:, :-1]
        acov = np.where(pair, c[:, 1:] * c[:, :-1], 0.0).sum(axis=1) / np.maximum(pair.sum(axis=1), 1)
        r1 = acov / np.maximum(var, 1e-18)
        jitter = np.maximum(-acov, 0.0)
        dejittered = np.sqrt(np.maximum(var - 2 * jitter, 0.0))
        return np.stack([r1, np.log(dejittered + 1e-3)], axis=1)


def jitter_stats(rr: np.ndarray, keep: np.ndarray, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Per row: Q = var(S_k) / var(S_1) and the jitter an all-jitter reading implies, sqrt(var(S_1) / 6) (s).

    S_k(i) = t(i+k) - 2 t(i) + t(i-k), from kept intervals only (every one of its 2k intervals kept).
    Beat-time jitter of SD s gives var(S_k) = 6 s^2 at every k (Q ~ 1, the implied jitter s);
    independent AF 2k var (Q ~ k), AR(1) AF of lag-1 -0.4 Q ~ 1.65 at k = 4 (-0.6: ~1, inseparable
    from jitter by second-order statistics), smooth sinus rhythm grows with k (Q >> 1).
    """
    n = rr.shape[1]
    t = np.concatenate([np.zeros((len(rr), 1)), np.cumsum(np.where(keep, rr, 0.0), axis=1)], axis=1)
    bad = np.concatenate([np.zeros((len(rr), 1)), np.cumsum(~keep, axis=1)], axis=1)

    def var_s(j: int) -> np.ndarray:
        mid = np.arange(j, n - j + 1)
        s = t[:, mid + j] - 2 * t[:, mid] + t[:, mid - j]
        ok = (bad[:, mid + j] - bad[:, mid - j]) == 0
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(np.where(ok, s * s, 0.0).sum(axis=1) / ok.sum(axis=1))

    v1, vk = var_s(1), var_s(k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return vk / v1, np.sqrt(v1 / 6)


def vetoed(rr: np.ndarray, q_max: float, s_max: float) -> np.ndarray:
    """Windows whose irregularity beat-time jitter explains: Q <= q_max and implied jitter <= s_max (s)."""
    q, s = jitter_stats(rr, af_model.cleaned(np.maximum(rr, 1e-9)))
    return np.asarray((q <= q_max) & (s <= s_max))


@contextlib.contextmanager
def veto_installed(args: str) -> Iterator[None]:
    """``rhythm._learned`` with the jitter veto for one run (af_bins' ``jit:QMAX,SMAX_MS``)."""
    q_max, s_ms = (float(v) for v in args.split(","))
    saved = rhythm._learned

    def learned(rr: np.ndarray, complete: np.ndarray) -> np.ndarray:
        verdict = saved(rr, complete)
        return np.where(verdict == 1, np.where(vetoed(rr, q_max, s_ms / 1000), 0.0, 1.0), verdict)

    rhythm._learned = learned  # type: ignore[assignment]
    try:
        yield
    finally:
        rhythm._learned = saved  # type: ignore[assignment]


def features(rr: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The shipped thirteen features, then ``r1`` and ``log_dejitter_sd``."""
    return np.hstack([SHIPPED_FEATURES(rr, keep), jitter_features(rr, keep)])


def jittered(rec: Recording, rng: np.random.Generator, sd: float | None = None) -> Recording:
    """``rec`` seen through a pulse timer with Gaussian error ``sd`` (drawn from JITTER_SD if None)."""
    s = rng.uniform(*JITTER_SD) if sd is None else sd
    e = rng.normal(0, s, len(rec.rr) + 1)
    rr = np.clip(rec.rr + e[1:] - e[:-1], 0.2, None)
    return dataclasses.replace(rec, rr=rr)


def training_recordings(copies: int, per_cell: int = 2) -> list[Recording]:
    """Family A's training recordings (train_af's) and ``copies`` jittered copies of each."""
    recordings = [r for seed in TRAIN_SEEDS for r in cohort("A", per_cell, 40, (5, 15), seed)]
    rng = np.random.default_rng([TRAIN_SEEDS[0], 11])
    return recordings + [jittered(r, rng) for _ in range(copies) for r in recordings]


def fitted(columns: tuple[int, ...], copies: int) -> af_bins.Model:
    """A model of ``columns`` fitted on the training recordings."""
    rr, label = windows(training_recordings(copies))
    x = features(rr, af_model.cleaned(rr))[:, list(columns)]
    ok = ~np.isnan(label) & np.isfinite(x).all(axis=1)
    mean, scale, weights, bias = fit(x[ok], label[ok])
    print(f"# fitted on {ok.sum()} windows ({int(label[ok].sum())} AF), columns {columns}, "
          f"jittered copies {copies}", file=sys.stderr, flush=True)
    return af_bins.Model(columns, mean, scale, weights, float(bias[0]), features)


def probability(model: af_bins.Model, rr: np.ndarray) -> np.ndarray:
    """The model's probability of AF per window row (NaN where under half the beats are kept)."""
    keep = af_model.cleaned(rr)
    p = model.judge(features(rr, keep)[:, list(model.columns)])
    return np.where(keep.sum(axis=1) >= rr.shape[1] / 2, p, np.nan)


def groups(families: list[str], seeds: list[int], base: int) -> dict[str, np.ndarray]:
    """Window groups: tuning windows by background and AF, jittered sinus, af_styles' laws (+ jitter)."""
    out: dict[str, list[np.ndarray]] = {}
    rng = np.random.default_rng(1111)
    for fam in families:
        for seed in seeds:
            recs = cohort(fam, 1, 40, (5, 15), base + af_bins.FAMILY_OFFSET[fam] + seed)
            for rec in recs:
                rr, label = windows([rec])
                bg = f"{fam} {rec.background}{' err' if rec.beat_errors else ''}"
                out.setdefault(f"{fam} AF", []).append(rr[label == 1])
                out.setdefault(bg, []).append(rr[label == 0])
                if rec.af_kind is None and not rec.beat_errors and fam in ("A", "B"):
                    for sd in (0.01, 0.02, 0.03):
                        jr, jl = windows([jittered(rec, rng, sd)])
                        out.setdefault(f"{fam} {rec.background} +jit {sd * 1000:.0f} ms", []).append(jr[jl == 0])
                if rec.af_kind is not None and fam in ("A", "B"):
                    jr, jl = windows([jittered(rec, rng, 0.02)])
                    out.setdefault(f"{fam} AF ({rec.af_kind}) +jit 20 ms", []).append(jr[jl == 1])
    for name in ("independent normal", "AR(1) lag-1 -0.6", "AR(1) lag-1 -0.4", "AR(1) lag-1 +0.6",
                 "alternans + independent"):
        style = af_styles.STYLES[name]
        srng = np.random.default_rng(17)
        for cv in (0.06, 0.08, 0.10, 0.15):
            for sd in (0.0, 0.02):
                rows = []
                for _ in range(5):
                    rr = np.clip(style(srng, cv, 60 / srng.uniform(60, 110)), 0.25, 3.0)
                    if sd:
                        e = srng.normal(0, sd, len(rr) + 1)
                        rr = np.clip(rr + e[1:] - e[:-1], 0.2, None)
                    rows.append(np.lib.stride_tricks.sliding_window_view(rr, 64)[::16])
                out[f"AF {name} CV {cv:g}{' +jit 20 ms' if sd else ''}"] = rows
    return {k: np.concatenate(v) for k, v in out.items() if sum(len(r) for r in v)}


def main() -> int:
    """Window-level shares per group and candidate, or with ``--per-episode`` run ``af_bins`` with them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--candidates", nargs="+", default=["j15"])
    parser.add_argument("--base-rev", default="08d2710")
    parser.add_argument("--per-episode", action="store_true")
    parser.add_argument("--vetoes", nargs="*", default=[], help="QMAX,SMAX_MS of the jitter veto (jit: variants)")
    args, rest = parser.parse_known_args()
    base = base_model(args.base_rev)
    models = {name.split("+")[0]: fitted(*CANDIDATES[name.split("+")[0]]) for name in args.candidates if name}
    if args.per_episode:
        af_bins.MODELS["base"] = base
        af_bins.MODELS.update(models)
        af_bins.SWAPS["jit"] = veto_installed
        return af_bins.main([*rest, "--variants", "model:base", *(f"model:{n}" for n in args.candidates),
                             *(f"jit:{v}" for v in args.vetoes)])
    wparser = argparse.ArgumentParser()
    wparser.add_argument("--families", nargs="+", default=["A", "B", "C", "D"])
    wparser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    wparser.add_argument("--base", type=int, default=2600)
    wargs = wparser.parse_args(rest)
    threshold = float(af_model.THRESHOLD)
    every = {"base": base, **models}
    print("| windows | n | " + " | ".join([*every, *args.vetoes]) + " |")
    print("|---|---|" + "---|" * (len(every) + len(args.vetoes)))
    for name, rr in groups(wargs.families, wargs.seeds, wargs.base).items():
        cells = []
        for model in every.values():
            p = probability(model, rr)
            v = np.where(np.isnan(p), np.nan, (p >= threshold).astype(float))
            cells.append(f"{np.nanmean(v) if np.isfinite(v).any() else np.nan:.3f}")
        p = probability(base, rr)
        v = np.where(np.isnan(p), np.nan, (p >= threshold).astype(float))
        for spec in args.vetoes:
            q_max, s_ms = (float(x) for x in spec.split(","))
            w = np.where(v == 1, np.where(vetoed(rr, q_max, s_ms / 1000), 0.0, 1.0), v)
            cells.append(f"{np.nanmean(w) if np.isfinite(w).any() else np.nan:.3f}")
        print(f"| {name} | {len(rr)} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
