"""A small learned AF classifier over RR-interval windows (the ``method: model`` of rhythm rules).

Per window row (vectorized over rows, numpy only):

1. beat errors: an interval above 1.6 x the window median is a missed beat and dropped; one below
   0.6 x is an extra beat that split an interval, dropped with both neighbours (the other part of
   the split is one of them);
2. thirteen features of the kept intervals, normalized by the window median, from pairs and triples
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
   - ``perm_entropy``: normalized permutation (ordinal-pattern) entropy of order 4: breathing,
     even irregular breath by breath, favours a few orderings of four successive intervals, AF
     uses all 24 about equally (issue 17, fifth round);
   - ``log_nn_error``: log RMS error of a nearest-neighbour (analogue) prediction of each interval
     from the two before it, over the SD: breathing repeats short shapes, AF does not (~sqrt 2)
     (issue 17, fifth round);

3. a small network (issue 17, thirteenth round): the standardized features through one hidden
   layer of 16 ReLU units into a logistic output, 241 weights; the window is irregular when the
   probability of AF is at least :data:`THRESHOLD` (0.5: of the thresholds tried on tuning seeds,
   the one with the fewest AF episodes left without any alert; fourteenth round).

The weights below were fitted by ``benchmarks/train_af.py`` on the *training* seeds of four of the
generator families (``benchmarks/rr_models.py``, families A-D, seeds 1000-1002); families E-J were
never fitted on, and every family's evaluation seeds are others (benchmarks/RESULTS.md, "AF
screening, thirteenth and fourteenth rounds"). Until the twelfth round the model was a logistic
regression on the features and their pairwise products fitted on family A alone. Features follow the ideas of
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
PATTERN_ORDER: Final = 4  # perm_entropy: ordinal patterns of 4 successive intervals (24 of them)
NN_CHUNK: Final = 64  # nn_error: rows per block of the pairwise distances (~2 MB at 64 beats; 16 and 256 were slower)
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
    "perm_entropy",
    "log_nn_error",
)
# Fitted by benchmarks/train_af.py (families A-D, training seeds); see the module docstring.
# BEGIN fitted constants (benchmarks/train_af.py --write)
MEAN: Final = np.array(
    [
        -2.71228, -2.03577, -0.65964, 0.611396, -3.3797, -2.38522, 0.581738, 0.936625,
        0.406962, -0.641749, 0.53934, 0.815745, -0.226446,
    ]
)
SCALE: Final = np.array(
    [
        1.17413, 0.984984, 1.10914, 0.16372, 0.831885, 0.801108, 0.317313, 0.0970807,
        0.368381, 0.897999, 0.248403, 0.130361, 0.772328,
    ]
)
HIDDEN_WEIGHTS: Final = np.array(
    [
        0.694624, -0.0751531, 0.0550194, 0.364341, 0.923802, -3.28031e-31, -1.02682, 0.539074,
        -0.242592, -1.15455, -0.410716, 0.450214, -0.413334, -0.483416, -0.741759, 0.375869,
        0.213679, -1.01436, -0.445428, -0.117702, -0.855391, 6.90531e-11, 1.7141, -0.60574,
        1.5168, 1.45712, -1.43835, -0.518749, 0.304488, 2.03566, 0.0773308, -0.384961,
        -0.59192, 0.401695, -0.977713, 0.44715, -0.684359, 1.27568e-16, 0.159095, 0.777776,
        -0.345919, 0.173651, -0.276993, 0.711498, 0.0278222, -0.359426, -0.199721, 0.341809,
        0.514897, 0.232766, -0.371099, 0.104293, -0.362709, 1.28098e-15, -0.135723, 0.274962,
        -0.361716, 0.0799074, -0.429913, 0.138871, 0.0591422, -0.296916, 0.499609, 0.129871,
        -0.318946, -0.00372888, -0.223696, 0.747361, 0.0870439, 4.39604e-40, -0.536623, 0.879035,
        -0.318653, -0.421815, -0.336926, 0.47782, -0.0326666, -0.180382, -0.10649, 0.668178,
        -0.693595, -0.68865, -0.61524, 0.254421, -0.981327, 3.85253e-14, 0.512683, 0.570969,
        0.160612, 0.637723, -0.734141, 0.668785, 0.248498, -0.0532844, 0.21598, 0.416117,
        0.690394, 0.0660169, 0.364197, -0.0544853, 0.991648, -7.14861e-40, -0.805638, -0.0205598,
        0.207809, -0.731307, -0.478769, 0.258554, -0.475527, 0.318048, -0.474255, 0.132576,
        0.30106, 0.365757, -0.180204, -0.268617, 0.232837, -4.26249e-44, 0.140752, 0.316708,
        0.119115, -0.0950444, 0.452348, -0.466496, -0.0533504, 0.0411458, -0.7403, -0.418305,
        0.615295, 0.209463, -0.757911, -0.26538, -0.420914, 1.25143e-06, 0.726662, 0.0723347,
        0.122721, 0.620121, -0.190005, -0.166489, 0.289201, 0.0394954, 0.0622836, -0.269509,
        -0.245459, 1.35867, -0.172886, 0.126766, -0.417223, 2.16485e-16, -0.0121382, 1.39422,
        0.260481, -0.0157033, -0.488437, 0.0395712, -0.0516764, 0.319535, 0.196775, -0.24672,
        0.405043, -0.0529489, 0.212959, -0.252603, 0.252627, 3.60053e-28, -0.0396571, -0.204199,
        0.0558513, -0.116661, 0.45783, -0.296303, -0.0131954, -0.291162, 0.156389, -0.263544,
        -0.262145, 0.754785, -0.34847, 0.16896, -0.337631, -7.18248e-19, -0.050404, 0.41725,
        -0.0732555, 0.149317, -0.542948, 0.339859, 0.0223009, 0.043971, 0.260559, -0.118287,
        -0.529024, 0.12603, -0.0546069, 0.504363, -0.511225, -6.72918e-14, -0.174458, 0.302216,
        -0.422293, 0.10354, -0.0114158, 0.61708, 0.040419, -0.113915, 0.216911, 0.168998,
    ]
).reshape(13, 16)
HIDDEN_BIAS: Final = np.array(
    [
        1.37473, -0.515789, 1.2936, -0.0469547, 0.681259, -0.193694, 1.15225, -0.962645,
        1.40584, 0.586009, 0.259394, -0.0686964, 0.413349, 0.778472, 0.138668, -0.184112,
    ]
)
OUTPUT_WEIGHTS: Final = np.array(
    [
        -1.50215, 1.68377, -1.20946, 1.0229, -1.82389, 0.00707499, -2.22917, 1.69726,
        -1.22227, -1.88242, -1.85754, 1.37066, -0.628937, -1.96802, -1.12064, 0.963366,
    ]
)
OUTPUT_BIAS: Final = -0.301469
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
    """The thirteen features (columns, in :data:`FEATURES` order) of each window row."""
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
        pattern = _perm_entropy(x, keep)
        nn = _nn_error(x, keep, sd)
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
            pattern,
            np.log(nn + 1e-3),
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


def _perm_entropy(x: FloatArray, keep: BoolArray) -> FloatArray:
    """Normalized permutation (ordinal-pattern) entropy of order :data:`PATTERN_ORDER` (0 with none).

    Each run of four kept, adjacent intervals has one of 24 orderings (ties broken by position:
    the earlier one counts as smaller); the Shannon entropy of their frequencies over log(24).
    Breathing makes a few orderings (rising, falling runs) frequent even when each breath has its
    own length and depth; AF's independent intervals use all 24 about equally (Bandt C, Pompe B.
    Phys Rev Lett 2002;88:174102). Each ordering is coded by its six pairwise comparisons (a
    6-bit code) and counted per row with one ``bincount``.
    """
    rows, width = x.shape
    m = width - PATTERN_ORDER + 1
    valid = keep[:, :m].copy()
    for k in range(1, PATTERN_ORDER):
        valid &= keep[:, k : k + m]
    code = np.zeros((rows, m), np.int64)
    bit = 0
    for a in range(PATTERN_ORDER):
        for b in range(a + 1, PATTERN_ORDER):
            code |= (x[:, a : a + m] > x[:, b : b + m]).astype(np.int64) << bit
            bit += 1
    codes = 1 << bit
    flat = np.where(valid, code + codes * np.arange(rows)[:, None], codes * rows)
    counts = np.bincount(flat.ravel(), minlength=codes * rows + 1)[: codes * rows].reshape(rows, codes)
    p = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    logs = np.log(np.where(counts > 0, p, 1.0))
    entropy: FloatArray = -(p * logs).sum(axis=1) / np.log(float(np.prod(np.arange(1, PATTERN_ORDER + 1))))
    return entropy


def _nn_error(x: FloatArray, keep: BoolArray, sd: FloatArray) -> FloatArray:
    """RMS error of a nearest-neighbour prediction of x(n+1) from (x(n-1), x(n)), over the row's SD.

    For each triple of kept, adjacent intervals, the other triple of the window whose first two
    intervals are nearest (Euclidean, ties to the earliest) predicts the third (a method of
    analogues, Lorenz 1969; Sugihara G, May RM. Nature 1990;344:734). Breathing revisits the
    same short shapes, so an analogue predicts the next interval even when breaths differ in
    length and depth (an AR model fits only one linear law per window); AF's intervals are
    independent, so the error is about sqrt(2) SD. Pairwise distances in blocks of
    :data:`NN_CHUNK` rows (62 x 62 per row); NaN for a row with fewer than two triples.
    """
    rows, width = x.shape
    n = width - 2
    out = np.empty(rows)
    for s in range(0, rows, NN_CHUNK):
        xs, ks = x[s : s + NN_CHUNK], keep[s : s + NN_CHUNK]
        c = xs[:, 2:]
        valid = ks[:, :-2] & ks[:, 1:-1] & ks[:, 2:]
        square = xs[:, :, None] - xs[:, None, :]  # all pairwise differences once: (x(i) - x(j))^2
        square *= square
        dist = square[:, :-2, :-2] + square[:, 1:-1, 1:-1]  # (i, j): the pairs (i, i+1) and (j, j+1)
        dist.reshape(len(xs), n * n)[:, :: n + 1] = np.inf  # not itself
        partial = ~valid.all(axis=1)
        if partial.any():  # rows with dropped beats: their broken triples are nobody's neighbour
            dist[partial] += np.where(valid[partial], 0.0, np.inf)[:, None, :]
        nearest = dist.argmin(axis=2)
        error = c - np.take_along_axis(c, nearest, axis=1)
        used = valid & (valid.sum(axis=1) >= 2)[:, None]  # with two valid triples, each has a neighbour
        with np.errstate(invalid="ignore", divide="ignore"):
            mse = np.where(used, error * error, 0.0).sum(axis=1) / used.sum(axis=1)
        out[s : s + NN_CHUNK] = np.sqrt(mse) / np.maximum(sd[s : s + NN_CHUNK], 1e-9)
    return out


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


def network(
    columns: FloatArray,
    mean: FloatArray,
    scale: FloatArray,
    hidden_weights: FloatArray,
    hidden_bias: FloatArray,
    output_weights: FloatArray,
    output_bias: float,
) -> FloatArray:
    """A one-hidden-layer ReLU network's probability per feature row (standardized by mean and scale)."""
    hidden = np.maximum(((columns - mean) / scale) @ hidden_weights + hidden_bias, 0.0)
    logit = hidden @ output_weights + output_bias
    p: FloatArray = 1.0 / (1.0 + np.exp(-np.clip(logit, -50, 50)))
    return p


def probability(columns: FloatArray) -> FloatArray:
    """The shipped network's probability of AF per feature row."""
    return network(columns, MEAN, SCALE, HIDDEN_WEIGHTS, HIDDEN_BIAS, OUTPUT_WEIGHTS, OUTPUT_BIAS)
