"""A small learned AF classifier over RR-interval windows (the ``method: model`` of rhythm rules).

Per window row (vectorized over rows, numpy only):

1. beat errors: an interval above 1.6 x the window median is a missed beat and dropped; one below
   0.6 x is an extra beat that split an interval, dropped with both neighbours (the other part of
   the split is one of them);
2. eleven features of the kept intervals, normalized by the window median, from pairs and triples
   that were adjacent in the recording (a dropped beat breaks the pair, no false jump is made):

   - ``log_med_d1``: log median |successive difference| (robust irregularity; ectopic beats move
     only a few differences, so the median ignores them);
   - ``log_rms_d1``: log RMS of successive differences (normalized RMSSD, Dash et al. 2009); its
     excess over the median says "a few large jumps" (ectopy), not "all jumps" (AF);
   - ``log_min_lag_ratio``: log of the smallest median |RR(i) - RR(i+k)|, k = 2..6, over the
     lag-1 median: bigeminy (k = 2), trigeminy (k = 3) and respiratory sinus arrhythmia (k ~ the
     beats per breath) repeat, AF does not (a Markov / pattern view of the intervals);
   - ``tpr``: turning-point ratio (2/3 for a random sequence);
   - ``log_ar2_residual``: log median |residual| of a least-squares AR(2) fit: sinus arrhythmia
     is a smooth oscillation an AR(2) predicts, AF is not predictable;
   - ``log_sd``: log standard deviation (coefficient of variation);
   - ``share_big``: share of successive differences above 4 % of the median;
   - ``kept``: share of intervals kept by the beat-error filter;
   - ``compensated``: share of the short -> long steps (above 8 % of the median) whose two
     intervals sum to two median cycles within a quarter of the step: a premature beat and its
     compensatory pause do (so does an interpolated beat), AF's independent intervals rarely do
     (for normal intervals sum and difference are independent). Clustered premature beats of
     varying coupling (up to ~30 % of beats) otherwise look irregular to the other features;
   - ``log_ar_ratio``: log RMS residual of a least-squares AR(4) predictor over the standard
     deviation (scale-free predictability): breathing moves the heart period smoothly, so a few
     past intervals predict the next even when the beats per breath are not an integer and drift
     within the window (sinus arrhythmia of the young, breathing in time); AF's are unpredictable
     at any variability (~0.9-1);
   - ``spectral_peak``: share of a Hann-windowed periodogram's power in its strongest band of 5
     of 32 bins: respiration concentrates it, AF spreads it (~0.3) (spectral view of RSA;
     issue 17, fourth round);

3. a logistic regression on the standardized features and their pairwise products (77 inputs:
   a quadratic decision boundary); the window is irregular when the probability of AF is at
   least :data:`THRESHOLD`.

The weights below were fitted by ``benchmarks/train_af.py`` on the *training* seeds of the
design generator family only (``benchmarks/rr_models.py``, family A); the evaluation on other seeds
and on the independent family B is in benchmarks/RESULTS.md. Features follow the ideas of
Dash S et al. Ann Biomed Eng 2009;37:1701 (RMSSD, turning points), Lake DE, Moorman JR. Am J
Physiol Heart Circ Physiol 2011;300:H319 (entropy of short RR series: irregularity net of
variability) and Sarkar S et al. IEEE TBME 2008;55:1219 (successive-difference patterns of AF).
"""

from __future__ import annotations

from typing import Final

import numpy as np

from detectors.batch import BoolArray, FloatArray

MISSED_BEAT_RATIO: Final = 1.6
EXTRA_BEAT_RATIO: Final = 0.6
BIG_STEP: Final = 0.04  # share_big: successive differences above 4 % of the median
MAX_LAG: Final = 6
COMPENSATED_STEP: Final = 0.08  # compensated: short -> long steps above 8 % of the median
COMPENSATED_TOLERANCE: Final = 0.25  # ... whose sum is within a quarter of the step of 2 cycles
AR_ORDER: Final = 4  # ar_ratio: a least-squares AR(4) predictor (two oscillations, or one that drifts)
PEAK_BINS: Final = 5  # spectral_peak: the strongest band of 5 periodogram bins (of 32)
THRESHOLD: Final = 0.5  # probability of AF from which a window is irregular
FEATURES: Final = (
    "log_med_d1",
    "log_rms_d1",
    "log_min_lag_ratio",
    "tpr",
    "log_ar2_residual",
    "log_sd",
    "share_big",
    "kept",
    "compensated",
    "log_ar_ratio",
    "spectral_peak",
)
# Fitted by benchmarks/train_af.py (family A, training seeds); see the module docstring.
# BEGIN fitted constants (benchmarks/train_af.py --write)
MEAN: Final = np.array(
    [
        -2.60118, -1.93526, -0.874223, 0.624731, -3.4512, -2.35688, 0.628258, 0.954967,
        0.464447, -0.732522, 0.596922,
    ]
)
SCALE: Final = np.array(
    [
        1.10827, 0.920695, 1.08081, 0.16155, 0.812088, 0.787248, 0.29622, 0.0736613,
        0.368268, 0.860709, 0.274995,
    ]
)
WEIGHTS: Final = np.array(
    [
        0.215723, -0.442367, 0.48464, 0.352846, 0.63971, -0.246464, 0.296069, -0.0288931,
        -0.77318, 0.520236, -0.553716, -0.200495, 0.0401097, 0.281985, -0.109395, 0.163172,
        0.0505247, -0.125258, -0.0761435, -0.089258, 0.233017, -0.255309, -0.205264, -0.254134,
        -0.128377, -0.309097, -0.197481, -0.0442687, -0.105307, -0.0751797, -0.277644, 0.424631,
        -0.0296752, 0.22477, 0.276132, -0.161467, 0.385077, 0.0282232, -0.369395, 0.208861,
        -0.244502, -0.321071, 0.170051, -0.0899102, -0.014517, 0.027363, -0.224997, 0.230083,
        -0.267773, 0.210081, -0.204594, 0.318423, -0.172345, -0.523616, 0.221849, -0.371041,
        -0.187715, -0.00118256, -0.132816, -0.13219, -0.174318, 0.28473, -0.178065, -0.0529816,
        -0.2057, 0.371485, -0.40185, -0.0554352, -0.0628412, -0.0806233, -0.106271, 0.0152625,
        -0.412773, 0.532861, 0.0653752, -0.265268, 0.141223,
    ]
)
BIAS: Final = -3.08725
# END fitted constants


def cleaned(rr: FloatArray) -> BoolArray:
    """Which intervals survive the beat-error filter (missed beats; extra beats and neighbours)."""
    median = np.median(rr, axis=1, keepdims=True)
    short = rr < EXTRA_BEAT_RATIO * median
    keep: BoolArray = ~short & (rr <= MISSED_BEAT_RATIO * median)
    keep[:, 1:] &= ~short[:, :-1]
    keep[:, :-1] &= ~short[:, 1:]
    return keep


def masked_median(values: FloatArray, mask: BoolArray) -> FloatArray:
    """Per row, the median of ``values`` where ``mask`` (NaN for a row with none).

    Rows with every value kept (most of them) take a partition at the two middle positions;
    the others a sort with the dropped values pushed to the end.
    """
    n = mask.sum(axis=1)
    width = values.shape[1]
    low, high = np.full(len(values), np.nan), np.full(len(values), np.nan)
    full = n == width
    if full.any() and width:
        middle = [(width - 1) // 2, width // 2]
        parted = np.partition(values[full], middle, axis=1)
        low[full], high[full] = parted[:, middle[0]], parted[:, middle[1]]
    partial = np.flatnonzero(~full & (n > 0))
    if len(partial):
        ordered = np.sort(np.where(mask[partial], values[partial], np.inf), axis=1)
        rows = np.arange(len(partial))
        low[partial] = ordered[rows, (n[partial] - 1) // 2]
        high[partial] = ordered[rows, n[partial] // 2]
    median: FloatArray = (low + high) / 2
    return median


def features(rr: FloatArray, keep: BoolArray) -> FloatArray:
    """The eleven features (columns, in :data:`FEATURES` order) of each window row."""
    x = rr / np.median(rr, axis=1, keepdims=True)
    d1 = np.abs(np.diff(x, axis=1))
    pair = keep[:, 1:] & keep[:, :-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        med1 = masked_median(d1, pair)
        rms1 = np.sqrt(np.where(pair, d1 * d1, 0.0).sum(axis=1) / pair.sum(axis=1))
        lags = np.stack([_lag_median(x, keep, k) for k in range(2, MAX_LAG + 1)], axis=1)
        min_ratio = lags.min(axis=1) / np.maximum(med1, 1e-6)  # a paced, constant rhythm: 0
        triple = pair[:, 1:] & pair[:, :-1]
        turning = (x[:, 1:-1] - x[:, :-2]) * (x[:, 1:-1] - x[:, 2:]) > 0
        tpr = (turning & triple).sum(axis=1) / triple.sum(axis=1)
        residual = _ar2_residual(x, keep, triple)
        n = keep.sum(axis=1)
        mean = np.where(keep, x, 0.0).sum(axis=1) / n
        sd = np.sqrt(np.where(keep, (x - mean[:, None]) ** 2, 0.0).sum(axis=1) / n)
        big = (pair & (d1 > BIG_STEP)).sum(axis=1) / pair.sum(axis=1)
        compensated = _compensated(x, pair)
        centred = np.where(keep, x - mean[:, None], 0.0)
        ar_ratio = _ar_ratio(centred, keep, sd)
        peak = _spectral_peak(centred)
        columns = (
            np.log(med1 + 1e-4),
            np.log(rms1 + 1e-4),
            np.log(min_ratio + 1e-3),
            tpr,
            np.log(residual + 1e-4),
            np.log(sd + 1e-4),
            big,
            n / rr.shape[1],
            compensated,
            np.log(ar_ratio + 1e-3),
            peak,
        )
    return np.stack(columns, axis=1)


def _compensated(x: FloatArray, pair: BoolArray) -> FloatArray:
    """Share of the short -> long steps whose two intervals sum to about two cycles (0 if none).

    A premature beat's short interval and its compensatory pause sum to ~2 median cycles, also an
    interpolated beat's; AF's successive intervals are independent, so their sum does not track
    their step (for normal intervals the sum and the difference are independent).
    """
    short, long = x[:, :-1], x[:, 1:]
    step = long - short
    candidate = pair & (step > COMPENSATED_STEP)
    close = candidate & (np.abs(short + long - 2.0) < COMPENSATED_TOLERANCE * step)
    share: FloatArray = close.sum(axis=1) / np.maximum(candidate.sum(axis=1), 1)
    return share


def _ar_ratio(centred: FloatArray, keep: BoolArray, sd: FloatArray) -> FloatArray:
    """RMS residual of a least-squares AR(:data:`AR_ORDER`) predictor over the row's SD (scale-free).

    Breathing moves the heart period smoothly, so a few past intervals predict the next even when
    the beats per breath are not an integer and drift (an AR(4) fits two close frequencies, or one
    that changes within the window); AF's intervals are unpredictable (ratio ~1 at any variability).
    Only targets whose ``AR_ORDER`` predecessors were all kept count. Batched 4 x 4 normal equations.
    """
    p, width = AR_ORDER, centred.shape[1]
    valid = keep[:, p:].copy()
    for k in range(1, p + 1):
        valid &= keep[:, p - k : width - k]
    # (rows, lag, time), zero where a target is not valid; matmul (batched BLAS), not einsum: ~8x faster
    regressors = np.stack([centred[:, p - k : width - k] for k in range(1, p + 1)], axis=1) * valid[:, None, :]
    target = centred[:, p:] * valid
    gram = regressors @ regressors.transpose(0, 2, 1) + 1e-9 * np.eye(p)
    coef = np.linalg.solve(gram, regressors @ target[:, :, None])
    residual = target - (coef.transpose(0, 2, 1) @ regressors)[:, 0, :]
    count = np.maximum(valid.sum(axis=1), 1)
    rms: FloatArray = np.sqrt((residual * residual).sum(axis=1) / count) / np.maximum(sd, 1e-9)
    return rms


def _spectral_peak(centred: FloatArray) -> FloatArray:
    """Share of the (Hann-windowed) periodogram's power in its strongest :data:`PEAK_BINS`-bin band.

    Respiratory sinus arrhythmia puts the power of a window near one frequency (smeared a little by
    a changing breathing rate); AF's independent intervals spread it over all 32 bins (~0.3 for 5
    bins). Dropped intervals count as the row's mean (0 after centring).
    """
    power = np.abs(np.fft.rfft(centred * np.hanning(centred.shape[1]), axis=1)[:, 1:]) ** 2
    summed = np.cumsum(np.pad(power, ((0, 0), (1, 0))), axis=1)
    band = summed[:, PEAK_BINS:] - summed[:, :-PEAK_BINS]
    share: FloatArray = band.max(axis=1) / np.maximum(power.sum(axis=1), 1e-18)
    return share


def _lag_median(x: FloatArray, keep: BoolArray, k: int) -> FloatArray:
    return masked_median(np.abs(x[:, k:] - x[:, :-k]), keep[:, k:] & keep[:, :-k])


def _ar2_residual(x: FloatArray, keep: BoolArray, triple: BoolArray) -> FloatArray:
    """Median |residual| of a least-squares AR(2) fit over each row's valid triples (closed form)."""
    n = keep.sum(axis=1, keepdims=True)
    c = x - np.where(keep, x, 0.0).sum(axis=1, keepdims=True) / n
    lag1, lag2, now = c[:, 1:-1], c[:, :-2], c[:, 2:]

    def total(v: FloatArray) -> FloatArray:
        summed: FloatArray = np.where(triple, v, 0.0).sum(axis=1)
        return summed

    s11, s22, s12 = total(lag1 * lag1), total(lag2 * lag2), total(lag1 * lag2)
    b1, b2 = total(lag1 * now), total(lag2 * now)
    det = s11 * s22 - s12 * s12 + 1e-12
    a1 = (b1 * s22 - b2 * s12) / det
    a2 = (s11 * b2 - s12 * b1) / det
    residual = np.abs(now - a1[:, None] * lag1 - a2[:, None] * lag2)
    return masked_median(residual, triple)


def expanded(columns: FloatArray) -> FloatArray:
    """The model's inputs: standardized features and all their pairwise products (and squares)."""
    z = (columns - MEAN) / SCALE
    i, j = np.triu_indices(z.shape[1])
    out: FloatArray = np.hstack([z, z[:, i] * z[:, j]])
    return out


def probability(columns: FloatArray) -> FloatArray:
    """The logistic model's probability of AF per feature row."""
    logit = expanded(columns) @ WEIGHTS + BIAS
    p: FloatArray = 1.0 / (1.0 + np.exp(-np.clip(logit, -50, 50)))
    return p
