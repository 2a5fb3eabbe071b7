"""Window-level AF sensitivity by AF *style* and irregularity: where the model is blind (issue 17).

Reproduce (see benchmarks/RESULTS.md, "AF screening, seventh round"; ~1 min)::

    .venv/bin/python benchmarks/af_styles.py

Simple AF interval laws, none of them a generator family of ``rr_models.py`` (so no family's
held-out status is touched): independent normal, log-normal and uniform intervals over a range
of coefficients of variation (CV) and rates, serially correlated intervals (AR(1), lag-1
correlation -0.6..0.6: concealed conduction alternates long and short, a drifting rate makes
neighbours alike), an alternans component, two or three discrete modes, 5 % long pauses. Each
cell is five 1500-beat sequences at 60-110 bpm (rates fixed where given); the share of 64-beat
windows (every 16 beats) the default model calls irregular, and of 128-beat windows (every 32)
the Dash 2009 criteria call irregular, with the share of windows left unknown (under half the
beats kept by the beat-error filter) after a slash.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detectors.rhythm import irregular  # noqa: E402
from detectors.rules import RhythmRule  # noqa: E402
from rpm_core.rules import load_rules  # noqa: E402

CVS = (0.04, 0.06, 0.08, 0.10, 0.15, 0.25, 0.40, 0.50)
N = 1500
Style = Callable[[np.random.Generator, float, float], np.ndarray]


def verdicts(rr: np.ndarray, method: str) -> np.ndarray:
    """Per window: 1 irregular, 0 regular, NaN unknown (the default rule's model, or Dash 2009)."""
    window, every = (64, 16) if method == "model" else (128, 32)
    rows = np.lib.stride_tricks.sliding_window_view(rr, window)[::every]
    rule = load_rules(ROOT / "alert_rules.yaml").by_name()["af_screening"]
    assert isinstance(rule, RhythmRule)
    params = {
        "model": np.full(len(rows), float(method == "model")),
        "trim": np.full(len(rows), float(rule.trim_beats)),
        "nrmssd": np.full(len(rows), rule.nrmssd_min),
        "tpr_low": np.full(len(rows), rule.tpr_low),
        "tpr_high": np.full(len(rows), rule.tpr_high),
        "entropy": np.full(len(rows), rule.entropy_min),
    }
    return irregular(rows, np.ones(len(rows), np.bool_), params)


def ar1(rho: float) -> Style:
    def make(rng: np.random.Generator, cv: float, mean: float) -> np.ndarray:
        z = lfilter([np.sqrt(1 - rho * rho)], [1.0, -rho], rng.normal(0, 1, N + 50))[50:]
        return np.asarray(mean * (1 + cv * z))
    return make


def lognormal(rng: np.random.Generator, cv: float, mean: float) -> np.ndarray:
    sigma = np.sqrt(np.log(1 + cv * cv))
    return np.asarray(mean * rng.lognormal(-sigma * sigma / 2, sigma, N))


def uniform(rng: np.random.Generator, cv: float, mean: float) -> np.ndarray:
    return np.asarray(mean * (1 + cv * np.sqrt(12) * (rng.random(N) - 0.5)))


def alternans(rng: np.random.Generator, cv: float, mean: float) -> np.ndarray:
    return np.asarray(mean * (1 + cv * rng.normal(0, 1, N)) * (1 + 0.5 * cv * (-1.0) ** np.arange(N)))


def modes(k: int) -> Style:
    def make(rng: np.random.Generator, cv: float, mean: float) -> np.ndarray:
        level = rng.integers(0, k, N) - (k - 1) / 2
        spread = np.sqrt(((np.arange(k) - (k - 1) / 2) ** 2).mean())
        return np.asarray(mean * (1 + 0.9 * cv * level / spread + 0.43 * cv * rng.normal(0, 1, N)))
    return make


def pauses(rng: np.random.Generator, cv: float, mean: float) -> np.ndarray:
    x = mean * (1 + cv * rng.normal(0, 1, N))
    p = rng.random(N) < 0.05
    x[p] *= rng.uniform(1.7, 2.5, p.sum())
    return np.asarray(x)


STYLES: dict[str, Style] = {
    "independent normal": ar1(0.0),
    "independent log-normal": lognormal,
    "independent uniform": uniform,
    **{f"AR(1) lag-1 {rho:+.1f}": ar1(rho) for rho in (-0.6, -0.4, -0.2, 0.2, 0.4, 0.6)},
    "alternans + independent": alternans,
    "two modes": modes(2),
    "three modes": modes(3),
    "5 % long pauses (x1.7-2.5)": pauses,
}


def main() -> int:
    """Print the table (model, then Dash) per style and CV."""
    print("| style | method | " + " | ".join(f"CV {cv:g}" for cv in CVS) + " |")
    print("|---|---|" + "---|" * len(CVS))
    for name, style in STYLES.items():
        for method in ("model", "dash"):
            rng = np.random.default_rng(17)
            cells = []
            for cv in CVS:
                v = np.concatenate([
                    verdicts(np.clip(style(rng, cv, 60 / rng.uniform(60, 110)), 0.25, 3.0), method) for _ in range(5)
                ])
                cells.append(f"{np.mean(v == 1):.2f} / {np.mean(np.isnan(v)):.2f}")
            print(f"| {name} | {method} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
