"""Synthetic RR-interval generators for evaluating AF screening, in ten independent families.

Family ``A`` (the design family: the AF classifier's features and weights were chosen on its
training seeds) and family ``B`` (written afterwards by different models and never used to choose
anything; held out). Each family turns a *background* rhythm and an optional AF *paroxysm* into a
recording; every rhythm may carry a wearable's beat errors.

Family A:

- sinus: respiratory sinus arrhythmia (RSA, a sinusoid in beats, 2.5-8 beats per breath,
  +-0-6 %, amplitude-modulated), random-walk drift and 0.3-2 % beat-to-beat noise; ``young``:
  RSA +-5-16 % at 45-75 bpm, 2.5-6 beats per breath (sinus arrhythmia of the young);
- ectopy: premature beats at random (6 % or 15 %), each a short interval (x0.6-0.85) and a
  long one (fully or partly compensatory); bigeminy and trigeminy (every 2nd / 3rd beat premature), throughout or
  in runs;
- AF: independent intervals (normal, log-normal, or a floor plus an exponential wait),
  coefficient of variation 0.15-0.3 at 60-140 bpm, or 0.055-0.12 (rate-controlled);
- beat errors: 0.5-3 % missed beats (two intervals merged), 0.5-2 % extra beats (an interval
  split at 20-50 %).

Family B (different generators, parameters and error models):

- sinus: a sum of a respiratory oscillation *in time* (0.15-0.4 Hz, +-1-6 %), a Mayer wave
  (~0.1 Hz, +-1-3 %) and AR(1) pink-ish noise, through an integral pulse-frequency model;
  ``young``: respiration 0.12-0.3 Hz at +-8-20 % with amplitude modulation, 45-75 bpm;
- ectopy: ventricular premature beats with a full compensatory pause (the pair sums to two
  cycles), atrial ones with a non-compensatory pause, couplets, and bigeminy / trigeminy in runs
  of minutes alternating with sinus;
- AF: an atrioventricular-node model, RR = refractory period + a gamma-distributed wait (shape
  1.5-4), which is skewed rather than normal; rate-controlled AF has a long refractory period
  and a short wait (coefficient of variation ~0.07-0.13);
- beat errors: missed and extra beats in bursts (a two-state Markov chain: motion), extra beats
  split at a uniform fraction.

Family C (written after family B had been looked at once, before any change was judged on it;
the final held-out family):

- sinus: 1/f^beta background (spectral synthesis, beta 0.8-1.4) plus a resonant (AR(2)
  narrow-band) respiratory component in beats, 50-100 bpm; ``young``: a strong resonant
  component (+-5-14 %) of random amplitude, 45-70 bpm;
- ectopy: clustered premature beats (a Poisson rate that switches on and off), interpolated
  ventricular beats (a cycle split in two, no pause), coupling 0.5-0.9; bigeminy and trigeminy
  with a coupling interval that drifts, interrupted by quadrigeminy;
- AF: dual atrioventricular-pathway AF (a mixture of two normal modes), or slightly correlated
  intervals (AR(1), 0.1-0.25), coefficient of variation 0.14-0.3; rate-controlled 0.06-0.12 at
  55-85 bpm;
- beat errors: missed beats 0.5-4 %, extra beats split at a Beta(2, 2) fraction, spurious
  triggers (a short interval inserted without shortening its neighbours).

Family D (written for issue 17's fourth round before its features were designed, by other
models again; evaluated once, at the end, as held out):

- sinus: respiration breath by breath (gamma-distributed durations of mean 2.5-6 s, coefficient
  of variation 0.1-0.3; 2 % sighs twice as long and deep; an asymmetric waveform, inspiration
  35-45 % of a breath, expiration decaying exponentially; 0.5-1.5 s lag), sampled at the beat
  times, a slow AR(1) wander and 2-10 ms fiducial jitter; ``young``: +-7-18 % at 41-80 bpm;
- ectopy: atrial (sinus reset), junctional (late coupling) and ventricular premature beats, 5 %
  of them salvos of three; bigeminy / trigeminy in runs of geometric length, a coupling per run;
- AF: renewal intervals from an inverse-Gaussian (Wald) law, CV 0.15-0.35 at 60-150 bpm, or a
  Weibull law when rate-controlled (CV 0.06-0.12 at 50-90 bpm), with a drifting mean rate;
- beat errors: missed beats 1-5 %, T waves counted as beats (an interval split at 0.3-0.45),
  dropouts of 3-4 beats (0.2 %).

Family E (written for issue 17's fifth round before its features were designed, committed on
its own; evaluated once per model, at the end, as held out):

- sinus: integral pulse-frequency modulation of the heart *rate* (not the period) by respiration
  through a vagal low-pass (0.3-1.5 s), a narrow-band Mayer wave (0.07-0.12 Hz, +-1-4 %) and a
  slow wander, with threshold noise; respiration is a noisy phase oscillator (each breath's
  length varies ~10-30 %), AR(1) depths over breaths, a random three-harmonic waveform, 1-3 %
  sighs followed by a 3-8 s apnoea. Age sets the respiratory amplitude: 40-90 y +-1-6 % at 55-100
  bpm; ``young`` (8-30 y) +-8-25 %, half young athletes (45-65 bpm, 8-16 breaths a minute), half
  children / adolescents (65-100 bpm, 16-30 breaths a minute);
- ectopy: ventricular parasystole (an independent focus with its own clock: the coupling
  interval varies; concealed or interpolated next sinus beat) or premature atrial beats with
  sinus reset, 15 % of them blocked (a pause alone); bigeminy / trigeminy whose coupling follows
  the preceding cycle (rule of bigeminy), in runs of log-normal length, some "concealed" (3 or
  5 sinus beats between premature ones);
- AF: an atrioventricular-node filter of a fibrillating atrium (gamma atrial cycles of 100-200
  ms) with concealed conduction and restitution; rate-controlled AF by a longer refractory
  period (CV ~0.05-0.10). Atrial flutter (variable block) is not generated: every labelled
  episode is AF, as the scorer counts it;
- beat errors: a wrist PPG's: motion bursts (a two-state chain) with 10-25 ms pulse-timing jitter
  and 8-15 % missed beats, 0.3-1 % missed at rest, 0.3-1.5 % dicrotic double counts (split at
  0.35-0.5).

Family F (written for issue 17's sixth round before its decision changes, committed on its own;
only the generator's own statistics were looked at while writing it; evaluated once, at the end):

- sinus: the heart period at 1 Hz from ECGSYN's bimodal spectrum (McSharry et al. 2003): an LF
  Gaussian bump at ~0.1 Hz and a respiratory HF bump, random phases; LF/HF ratio and HF
  amplitude by age (older 1-4, RR SD 1-4 % at 55-100 bpm; ``young`` 0.2-1, RR SD 5-14 % at
  45-95 bpm); breathing nonstationary: 20-90 s pieces with their own respiratory frequency, band
  width (irregular breathing: 0.02-0.08 Hz wide, half of the young) and depth, crossfaded;
- ectopy: foci of *fixed* coupling in seconds (re-entry), ventricular (compensatory) or atrial
  (sinus reset), bursts (the rate changes every ~2 min), couplets and atrial salvos; bigeminy /
  trigeminy from one fixed-coupling focus throughout, with 3-15 % exit block;
- AF: a hidden three-state (short / regular / long) Markov chain of intervals, after Moody &
  Mark's RR-interval Markov model of AF (1983), with a drifting rate; CV ~0.14-0.28 at 60-150
  bpm, rate-controlled ~0.05-0.10 at 50-95 bpm;
- beat errors: a PPG's pulse deficit (premature and short AF intervals make no pulse, missed
  with p 0.3-0.9), low-perfusion misses in clusters (0.5-3 %), smooth pulse-transit-time jitter
  and motion spikes (a spurious peak at 20-80 % of an interval, 0.2-1 %).

Family G (written for issue 17's seventh round before any of its changes, committed on its own;
only the generator's own statistics were looked at while writing it; held out):

- sinus: a beat-to-beat baroreflex model (DeBoer RW, Karemaker JM, Strackee J. Am J Physiol
  1987;253:H680): the Mayer wave emerges from the delayed sympathetic loop on pressure, the vagal
  baroreflex and a direct respiratory term move the interval; breaths of their own length (CV
  0.05-0.35) with an end-expiratory pause and an asymmetric (skewed) vagal waveform, sighs;
  older adults RSA +-0.5-4 % at 55-100 bpm, ``young`` +-6-20 % at 45-95 bpm breathing 6-30 a
  minute;
- ectopy: two or three foci of *variable* coupling (CV 4-12 % beat to beat), ventricular
  (compensatory or, at long cycles, interpolated) or atrial (reset; 10 % blocked), a slowly
  modulated rate, couplets; bigeminy / trigeminy whose coupling varies beat to beat and drifts,
  in episodes of 1-10 min (a quarter throughout);
- AF: uniform-plus-Gaussian intervals (a flat-topped histogram) or Hayano-type white intervals
  on 1/f fluctuations of the rate, with a lag-1 correlation of -0.3..0.3; AF 45-170 bpm at CV
  0.12-0.45, rate-controlled 50-100 bpm at CV 0.06-0.10;
- beat errors: a patch / watch's missed beats (isolated and runs of 2-3), doubled detections
  40-200 ms apart, and motion artefacts (bursts of 3-15 s of detections at random times).

Family H (written for issue 17's ninth round before any of its changes, committed on its own;
only the generator's own statistics were looked at while writing it; held out, never tuned on):

- sinus: the mean rate drifts with activity (piecewise-linear ramps of +-5-20 % over 1-6 min)
  and a slow wander; respiration in time, phase-coupled to the heart beat (cardiorespiratory
  coordination: a breath tends to start a fixed number of beats after the last, so the beats per
  breath lock to small integers for tens of seconds and slip between them); older adults RSA
  +-0.5-4 % at 55-100 bpm; ``young``: children (75-120 bpm, 18-40 breaths a minute: 2-5 beats a
  breath) or athletes (42-62 bpm, 8-16 breaths a minute), RSA +-4-15 %, with its depth and
  the respiratory waveform's second harmonic changing breath to breath;
- ectopy: ventricular premature beats followed by heart-rate turbulence (the sinus cycles after
  the compensatory pause shorten by 1-4 % for ~3 beats, then lengthen by 1-5 % over ~10),
  atrial premature beats with a non-compensatory pause (x1.05-1.4 of the cycle), late junctional
  escape beats (x1.15-1.35), runs of 3-5 (non-sustained tachycardia at 0.55-0.7 of the cycle);
  the coupling is a fixed time (ms), not a ratio, so it moves with the drifting rate; bigeminy /
  trigeminy with turbulence after each pause, interrupted every 20-200 beats by a few sinus
  beats;
- AF: an episode made of regimes of 20-180 s, each with its own lag-1 correlation (-0.6..0.5:
  concealed conduction alternating long and short, or a slowly varying rate) and its own
  variability (x0.7-1.3), Student-t intervals (4-10 degrees of freedom: heavy tails, not
  normal), a trend of the mean rate over the episode (+-0-30 %: rate control taking effect or
  failing) and a slow wander; AF CV 0.10-0.30 at 60-160 bpm, rate-controlled CV 0.06-0.12 at
  50-100 bpm;
- beat errors: a PPG's: Gaussian pulse-timing jitter of 5-25 ms on every beat time (which
  makes the intervals' errors anti-correlated), missed beats in runs (low perfusion, 0.5-3 %
  of beats, runs of 1-4), false peaks in motion (0.2-1 %, at 30-70 % of an interval).
Family I (written for issue 17's tenth round from the literature for the cases the steerer names,
rate-controlled AF of CV 0.08-0.12 and AF through a wearable's beat errors, after the tenth
round's candidate was chosen on the tuning seeds and before any held-out run; only the
generator's own statistics were looked at while writing it; never tuned on):

- sinus: respiration in time (breaths of their own length, CV 0.05-0.3, and depth) through a
  vagal low-pass on the heart *period*, a Mayer wave (0.08-0.12 Hz) and a slow wander, sampled
  at the beats; older adults RSA +-0.5-4 % at 55-100 bpm, ``young`` +-5-18 % at 45-90 bpm
  breathing 8-30 a minute;
- ectopy: ventricular premature beats (coupling a fixed share 0.55-0.8 of the preceding cycle,
  compensatory pause, 10 % interpolated) and atrial ones (sinus reset, pause x1.0-1.25), pairs
  1 in 10; bigeminy / trigeminy with coupling jitter of 1-4 %, in runs of 1-8 min;
- AF: an atrioventricular-node model after Lian J, Mussig D, Lang V (IEEE Trans Biomed Eng
  2006;53:1512): atrial activations of gamma cycles (90-180 ms, CV 0.1-0.25) reach a node whose
  refractory period recovers with the time since its last conduction (restitution) and which a
  blocked impulse partly re-excites (concealed conduction: each blocked impulse prolongs the
  refractory period by 10-40 % of its own atrial cycle); the conduction delay recovers too (a
  short cycle lengthens the next delay: alternation). Rate control (beta-blocker, digoxin)
  lengthens the refractory period; the intervals' deviations from the mean are then scaled to the
  episode's CV, 0.08-0.12 for rate-controlled AF (the band the steerer names) at 50-95 bpm,
  0.15-0.30 for AF at 70-150 bpm, with a weak respiratory modulation of the node (+-0.5-2 %) and a
  slow wander;
- beat errors: half the recordings a chest strap (RR quantized to 1/1024 s as its protocol
  sends them, 1-4 ms jitter, a dry-electrode start with 2-8 % missed beats decaying over ~5
  min, T waves double-counted in bursts at 0.3-0.45 of an interval), half a wrist PPG (the
  beat times sampled at 25-64 Hz, i.e. intervals quantized to 16-40 ms, 10-30 ms pulse-timing
  jitter, a pulse deficit: an interval under 0.75 x the recent mean, AF's short cycles and
  premature beats, makes no pulse with probability 0.3-0.8 and merges with the next, and
  motion bursts with 10-20 % missed beats).

Family J (written for issue 17's twelfth round after its candidate, a per-patient jitter
estimate, was chosen on tuning seeds, and committed with the adoption rule before any run on it;
never tuned on). Its point is a device whose timing error is *not* what the candidate assumes
(Gaussian, constant over a recording):

- sinus: respiration as a sinusoid in time whose frequency wanders (8-24 breaths a minute,
  log-normal drift), its depth slowly modulated (+-30 %), a slow AR(1) wander of the period and
  1-5 ms beat noise; older adults +-0.3-3 % at 55-105 bpm, ``young`` +-6-20 % at 50-95 bpm;
- ectopy: family E's (ventricular parasystole or atrial premature beats with sinus reset;
  bigeminy / trigeminy by the rule of bigeminy, in runs);
- AF: per episode one of three other families' laws at random: G's (uniform-plus-Gaussian or
  Hayano-type), H's (regimes of lag-1 correlation -0.6..0.5, heavy tails) or I's (AV-node model);
  rate-controlled with each law's own low CV (0.06-0.12);
- beat errors: a wrist PPG whose pulse-timing error is heavy-tailed (Student t, 2.5-5 degrees of
  freedom, scale 6-25 ms), modulated by motion (a slow log-normal factor, so the error's size
  changes over minutes within the recording) and by rate (larger on short cycles, x
  sqrt(median / RR)), 0.5-3 % missed pulses, 0.2-1 % false peaks, beat times sampled at 20-50 Hz.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy.signal import lfilter
from scipy.special import erf
from scipy.special import gamma as gamma_fn

Rng = np.random.Generator
FloatArray = np.ndarray

BACKGROUNDS = (
    "sinus",
    "sinus young",
    "ectopy 6%",
    "ectopy 15%",
    "bigeminy",
    "trigeminy",
)
AF_KINDS = ("AF", "AF low variability")


@dataclass(frozen=True)
class Recording:
    """One synthetic patient: RR intervals, their end times (s from 0) and the AF episodes (s)."""

    background: str
    af_kind: str | None
    beat_errors: bool
    rr: FloatArray
    t: FloatArray
    episodes: tuple[tuple[float, float], ...]
    af_rr: FloatArray | None = None  # the paroxysm's intervals before beat errors (for per-bin analyses)


# ---- family A ------------------------------------------------------------------------------------


def a_sinus(n: int, rng: Rng, young: bool = False) -> FloatArray:
    """Sinus rhythm: RSA in beats (amplitude-modulated), drift, beat-to-beat noise."""
    mean = rng.uniform(0.8, 1.3) if young else rng.uniform(0.5, 1.1)
    amp = rng.uniform(0.05, 0.16) if young else rng.uniform(0.0, 0.06)
    beats = np.arange(n)
    amp = amp * (1 + rng.uniform(0, 0.4) * np.sin(2 * np.pi * beats / rng.uniform(20, 80)))
    breath = rng.uniform(2.5, 6.0) if young else rng.uniform(2.5, 8.0)
    period = breath * (1 + 0.1 * np.cumsum(rng.normal(0, 0.05, n)).clip(-3, 3) / 3)
    phase = 2 * np.pi * np.cumsum(1 / period) + rng.uniform(0, 6.3)
    drift = np.cumsum(rng.normal(0, 0.002, n))
    noise = rng.normal(0, rng.uniform(0.003, 0.02), n)
    return np.asarray(mean * (1 + amp * np.sin(phase) + drift - drift.mean() + noise))


def a_sinus_breathing(n: int, rng: Rng) -> FloatArray:
    """Sinus arrhythmia of the young driven by breathing *in time* (issue 17, fourth round).

    The heart period follows a respiratory oscillation in seconds, not in beats: 8-30 breaths a
    minute whose rate wanders (+-10-25 %, a random walk with a 20-90 s memory) and whose depth
    changes breath to breath (+-20-50 %), with a second harmonic (0-40 %: a breath is not a
    sinusoid), +-5-20 % at 40-80 bpm, sampled at the beat times; so the beats per breath are not
    an integer and change within a window. Fiducial jitter 2-10 ms.
    """
    mean = rng.uniform(0.75, 1.5)
    dt = 0.1
    steps = int(n * mean * 1.5 / dt) + 10
    time = np.arange(steps) * dt
    memory = rng.uniform(20, 90) / dt
    walk = lfilter([1.0], [1.0, -(1 - 1 / memory)], rng.normal(0, 1, steps))
    walk *= rng.uniform(0.1, 0.25) / (walk.std() + 1e-12)
    rate = rng.uniform(8, 30) / 60 * (1 + walk)
    phase = 2 * np.pi * np.cumsum(rate) * dt + rng.uniform(0, 6.3)
    breath = np.floor(phase / (2 * np.pi)).astype(np.int64)
    depth = 1 + rng.uniform(0.2, 0.5) * rng.uniform(-1, 1, breath.max() + 1)
    second = rng.uniform(0, 0.4)
    wave = (np.sin(phase) + second * np.sin(2 * phase + rng.uniform(0, 6.3))) / (1 + second)
    modulation = rng.uniform(0.05, 0.2) * depth[breath] * wave
    rr = np.full(n, mean)
    for _ in range(3):  # beat times and their intervals agree after a few passes
        t = np.cumsum(rr)
        rr = mean * (1 + np.interp(t - rr, time, modulation))
    return np.asarray(np.clip(rr + rng.normal(0, rng.uniform(0.002, 0.01), n), 0.3, 2.5))


def a_sinus_breaths(n: int, rng: Rng) -> FloatArray:
    """Sinus arrhythmia of the young driven by irregular breathing, breath by breath (fifth round).

    Every breath has its own length (log-normal around 2-7.5 s, CV 0.1-0.35, correlated over
    breaths by an AR(1) of 0-0.6), depth (+-20-60 %; 3 % deep breaths x1.5-2) and share of
    inspiration (0.3-0.5); a raised-cosine rise and fall within each breath, +-5-22 % at 40-85 bpm,
    sampled at the beat times 0-1.5 s late; fiducial jitter 2-10 ms.
    """
    mean = rng.uniform(0.7, 1.5)
    breath_s, cv, rho = rng.uniform(2.0, 7.5), rng.uniform(0.1, 0.35), rng.uniform(0.0, 0.6)
    k = int(n * mean * 1.5 / (breath_s * (1 - cv))) + 20
    z = lfilter([np.sqrt(1 - rho * rho)], [1.0, -rho], rng.normal(0, 1, k))
    sigma = np.sqrt(np.log(1 + cv * cv))
    duration = breath_s * np.exp(sigma * z - sigma * sigma / 2)
    depth = 1 + rng.uniform(0.2, 0.6) * rng.uniform(-1, 1, k)
    deep = rng.random(k) < 0.03
    depth[deep] *= rng.uniform(1.5, 2.0, deep.sum())
    share = rng.uniform(0.3, 0.5, k)
    starts = np.r_[0.0, np.cumsum(duration)]
    amp, lag = rng.uniform(0.05, 0.22), rng.uniform(0.0, 1.5)

    def modulation(t: FloatArray) -> FloatArray:
        b = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, k - 1)
        phase = np.clip((t - starts[b]) / duration[b], 0, 1)
        up = phase < share[b]
        w = np.where(up, phase / share[b], (1 - phase) / (1 - share[b]))
        return np.asarray(amp * depth[b] * np.cos(np.pi * w))  # long at the turns, short mid-inspiration

    rr = np.full(n, mean)
    for _ in range(3):  # beat times and their intervals agree after a few passes
        t = np.cumsum(rr)
        rr = mean * (1 + modulation(t - rr - lag))
    return np.asarray(np.clip(rr + rng.normal(0, rng.uniform(0.002, 0.01), n), 0.3, 2.5))


def a_ectopy(rr: FloatArray, rng: Rng, rate: float) -> FloatArray:
    """Random premature beats: a short interval then a compensatory long one."""
    rr = rr.copy()
    coupling = rng.uniform(0.6, 0.85)
    for i in np.flatnonzero(rng.random(len(rr) - 1) < rate):
        c = coupling * rng.normal(1, 0.03)
        rr[i], rr[i + 1] = rr[i] * c, rr[i + 1] * (2 - c if rng.random() < 0.5 else rng.uniform(1.05, 1.3))
    return rr


def a_geminy(rr: FloatArray, rng: Rng, every: int) -> FloatArray:
    """Bigeminy (every 2) or trigeminy (every 3), throughout or in runs of 20-300 beats."""
    rr = rr.copy()
    n = len(rr)
    coupling = rng.uniform(0.6, 0.85)
    active = np.ones(n, np.bool_)
    if rng.random() < 0.5:  # runs alternating with sinus rhythm
        edges = np.cumsum(rng.integers(20, 300, n // 20 + 2))
        active = (np.searchsorted(edges, np.arange(n), side="right") % 2) == 0
    pre = np.flatnonzero(active & (np.arange(n) % every == 0))
    rr[pre] *= coupling * rng.normal(1, 0.02, len(pre))
    post = pre[pre + 1 < n] + 1
    rr[post] *= (2 - coupling) * rng.normal(1, 0.02, len(post))
    return rr


def a_af(n: int, rng: Rng, low: bool) -> FloatArray:
    """Independent normal intervals at 70-130 bpm."""
    mean = 60.0 / rng.uniform(60, 140)
    cv = rng.uniform(0.055, 0.12) if low else rng.uniform(0.15, 0.3)
    shape = rng.random()
    if shape < 0.4:
        return np.clip(rng.normal(mean, cv * mean, n), 0.25, 2.0)
    if shape < 0.7:  # skewed: a floor (refractory) plus an exponential wait
        wait = cv * mean
        return np.clip(mean - wait + rng.exponential(wait, n), 0.25, 2.0)
    sigma = np.sqrt(np.log(1 + cv * cv))  # log-normal of the same mean and variation
    return np.clip(mean * rng.lognormal(-sigma * sigma / 2, sigma, n), 0.25, 2.0)


def a_errors(rr: FloatArray, rng: Rng) -> FloatArray:
    """0.5-3 % missed beats (merged intervals), 0.5-2 % extra beats (split 20-50 / 80-50)."""
    out: list[float] = []
    p_miss, p_extra = rng.uniform(0.005, 0.03), rng.uniform(0.005, 0.02)
    i = 0
    while i < len(rr):
        draw = rng.random()
        if draw < p_miss and i + 1 < len(rr):
            out.append(rr[i] + rr[i + 1])
            i += 2
            continue
        if draw < p_miss + p_extra:
            f = rng.uniform(0.2, 0.5)
            out += [rr[i] * f, rr[i] * (1 - f)]
        else:
            out.append(rr[i])
        i += 1
    return np.array(out)


def with_ectopy(
    kind: str,
    sinus: FloatArray,
    rng: Rng,
    ectopy: Callable[[FloatArray, Rng, float], FloatArray],
    geminy: Callable[[FloatArray, Rng, int], FloatArray],
) -> FloatArray:
    """A family's non-AF rhythm of ``kind`` from its sinus rhythm, with its own ectopy generators."""
    if kind == "ectopy 6%":
        return ectopy(sinus, rng, 0.06)
    if kind == "ectopy 15%":
        return ectopy(sinus, rng, 0.15)
    if kind == "bigeminy":
        return geminy(sinus, rng, 2)
    if kind == "trigeminy":
        return geminy(sinus, rng, 3)
    return sinus


def a_background(kind: str, n: int, rng: Rng) -> FloatArray:
    """Family A's non-AF rhythm of ``kind`` (the young: RSA in beats, breathing in time, or breath by
    breath, a third each since the fifth round; half and half before)."""
    if kind == "sinus young":
        draw = rng.random()
        if draw < 1 / 3:
            return a_sinus_breathing(n, rng)
        if draw < 2 / 3:
            return a_sinus_breaths(n, rng)
    return with_ectopy(kind, a_sinus(n, rng, young=kind == "sinus young"), rng, a_ectopy, a_geminy)


def a_af_correlated(n: int, rng: Rng, low: bool) -> FloatArray:
    """Family A's AF laws with a lag-1 correlation of -0.6..0.5 (training data only, issue 17 ninth round).

    The same marginals as :func:`a_af` (normal, floor plus exponential, log-normal; the same CV and
    rates) through a Gaussian copula of an AR(1): concealed conduction alternates long and short
    intervals (negative), a slowly varying rate makes neighbours alike (positive).
    """
    mean = 60.0 / rng.uniform(60, 140)
    cv = rng.uniform(0.055, 0.12) if low else rng.uniform(0.15, 0.3)
    rho = rng.uniform(-0.6, 0.5)
    z = lfilter([np.sqrt(1 - rho * rho)], [1.0, -rho], rng.normal(0, 1, n + 50))[50:]
    shape = rng.random()
    if shape < 0.4:
        return np.asarray(np.clip(mean * (1 + cv * z), 0.25, 2.0))
    if shape < 0.7:
        wait = cv * mean
        u = np.clip(0.5 * (1 + erf(z / np.sqrt(2))), 1e-12, 1 - 1e-12)
        return np.asarray(np.clip(mean - wait - wait * np.log1p(-u), 0.25, 2.0))
    sigma = np.sqrt(np.log(1 + cv * cv))
    return np.asarray(np.clip(mean * np.exp(sigma * z - sigma * sigma / 2), 0.25, 2.0))


def a_sinus_fast_breathing(n: int, rng: Rng) -> FloatArray:
    """Sinus arrhythmia of the young at 2-3.5 beats a breath (training data only, ninth round).

    Family A's RSA in beats (:func:`a_sinus`, young) with a breath of 2.0-3.5 beats: sampled that
    coarsely, breathing alternates long and short intervals (lag-1 correlation < 0), as serially
    correlated AF does, but as a narrow spectral line.
    """
    mean = rng.uniform(0.8, 1.3)
    amp = rng.uniform(0.05, 0.16)
    beats = np.arange(n)
    amp = amp * (1 + rng.uniform(0, 0.4) * np.sin(2 * np.pi * beats / rng.uniform(20, 80)))
    breath = rng.uniform(2.0, 3.5)
    period = breath * (1 + 0.1 * np.cumsum(rng.normal(0, 0.05, n)).clip(-3, 3) / 3)
    phase = 2 * np.pi * np.cumsum(1 / period) + rng.uniform(0, 6.3)
    drift = np.cumsum(rng.normal(0, 0.002, n))
    noise = rng.normal(0, rng.uniform(0.003, 0.02), n)
    return np.asarray(mean * (1 + amp * np.sin(phase) + drift - drift.mean() + noise))


def a_background_augmented(kind: str, n: int, rng: Rng) -> FloatArray:
    """Family A's rhythms with the young breathing at 2-3.5 beats a breath (training data only)."""
    if kind == "sinus young":
        return a_sinus_fast_breathing(n, rng)
    return a_background(kind, n, rng)


# ---- family B ------------------------------------------------------------------------------------


def b_sinus(n: int, rng: Rng, young: bool = False) -> FloatArray:
    """Sinus rhythm from an integral pulse-frequency model of a modulated heart period."""
    mean = rng.uniform(0.8, 1.33) if young else rng.uniform(0.55, 1.05)
    dt = 0.05
    steps = int(n * mean * 1.5 / dt) + 10
    time = np.arange(steps) * dt
    f_resp = rng.uniform(0.12, 0.3) if young else rng.uniform(0.15, 0.4)
    a_resp = rng.uniform(0.06, 0.16) if young else rng.uniform(0.01, 0.06)
    resp_freq = f_resp * (1 + 0.15 * np.sin(2 * np.pi * time / rng.uniform(40, 120)))
    resp = a_resp * (1 + 0.3 * np.sin(2 * np.pi * time / rng.uniform(20, 60))) * np.sin(
        2 * np.pi * np.cumsum(resp_freq) * dt + rng.uniform(0, 6.3)
    )
    mayer = rng.uniform(0.01, 0.03) * np.sin(2 * np.pi * rng.uniform(0.08, 0.12) * time + rng.uniform(0, 6.3))
    noise = lfilter([1.0], [1.0, -0.995], rng.normal(0, 0.004, steps))  # AR(1) at 20 Hz: slow wander
    period = mean * (1 + resp + mayer + noise)
    phase = np.cumsum(dt / period)  # beats elapsed; a beat fires at each integer crossing
    t_beat = np.interp(np.arange(1, int(phase[-1])), phase, time + dt)
    rr = np.diff(t_beat)[:n]
    jitter = rng.normal(0, rng.uniform(0.003, 0.008), len(rr))  # fiducial-point jitter (s)
    return np.asarray(np.clip(rr + jitter, 0.3, 2.5))


def b_ectopy(rr: FloatArray, rng: Rng, rate: float) -> FloatArray:
    """Premature beats: ventricular (full compensatory pause) or atrial (non-compensatory), couplets."""
    rr = rr.copy()
    i = 1
    while i < len(rr) - 3:
        if rng.random() < rate:
            coupling = rng.uniform(0.55, 0.8)
            if rng.random() < 0.5:  # ventricular: the pair sums to two cycles
                rr[i], rr[i + 1] = rr[i] * coupling, rr[i + 1] * (2 - coupling)
            else:  # atrial: resets the sinus node, pause a little longer than a cycle
                rr[i], rr[i + 1] = rr[i] * coupling, rr[i + 1] * rng.uniform(1.0, 1.2)
            if rng.random() < 0.1:  # couplet
                rr[i + 1] = rr[i + 1] * coupling
            i += 3
        else:
            i += 1
    return rr


def b_geminy(rr: FloatArray, rng: Rng, every: int) -> FloatArray:
    """Runs of bigeminy / trigeminy (30 s to 5 min) alternating with sinus rhythm."""
    rr = rr.copy()
    i = 0
    on = True
    while i < len(rr):
        length = int(rng.uniform(30, 300) / max(np.mean(rr[i : i + 10]), 0.3))
        if on:
            coupling = rng.uniform(0.6, 0.8)
            seg = np.arange(i, min(i + length, len(rr)))
            pre = seg[(seg - i) % every == 0]
            rr[pre] *= coupling * rng.normal(1, 0.02, len(pre))
            post = pre[pre + 1 < len(rr)] + 1
            rr[post] *= (2 - coupling) * rng.normal(1, 0.02, len(post))
        on = not on if rng.random() < 0.3 else on
        i += length
    return rr


def b_af(n: int, rng: Rng, low: bool) -> FloatArray:
    """Atrioventricular-node model: refractory period plus a gamma-distributed wait."""
    if low:
        refractory = rng.uniform(0.45, 0.75)
        shape = rng.uniform(2.5, 4.0)
        mean_wait = refractory * rng.uniform(0.1, 0.3)
    else:
        refractory = rng.uniform(0.25, 0.4)
        shape = rng.uniform(1.5, 3.0)
        mean_wait = rng.uniform(0.15, 0.45)
    return np.asarray(refractory + rng.gamma(shape, mean_wait / shape, n))


def b_errors(rr: FloatArray, rng: Rng) -> FloatArray:
    """Missed and extra beats in bursts: a two-state (still / moving) Markov chain."""
    out: list[float] = []
    moving = False
    i = 0
    while i < len(rr):
        moving = rng.random() < (0.9 if moving else 0.01)
        p_miss, p_extra = (0.08, 0.04) if moving else (0.005, 0.003)
        draw = rng.random()
        if draw < p_miss and i + 1 < len(rr):
            out.append(rr[i] + rr[i + 1])
            i += 2
            continue
        if draw < p_miss + p_extra:
            f = rng.uniform(0.15, 0.85)
            out += [rr[i] * f, rr[i] * (1 - f)]
        else:
            out.append(rr[i])
        i += 1
    return np.array(out)


def b_background(kind: str, n: int, rng: Rng) -> FloatArray:
    """Family B's non-AF rhythm of ``kind``."""
    return with_ectopy(kind, b_sinus(n, rng, young=kind == "sinus young"), rng, b_ectopy, b_geminy)


Family = tuple[
    Callable[[str, int, Rng], FloatArray],
    Callable[[int, Rng, bool], FloatArray],
    Callable[[FloatArray, Rng], FloatArray],
]
# ---- family C ------------------------------------------------------------------------------------


def c_sinus(n: int, rng: Rng, young: bool = False) -> FloatArray:
    """1/f^beta variability plus a resonant respiratory component (in beats)."""
    mean = rng.uniform(0.85, 1.33) if young else rng.uniform(0.6, 1.2)
    beta = rng.uniform(0.8, 1.4)
    freq = np.fft.rfftfreq(n)
    amp = np.where(freq > 0, np.maximum(freq, 1.0 / n) ** (-beta / 2), 0.0)
    spectrum = amp * np.exp(2j * np.pi * rng.random(len(freq)))
    pink = np.fft.irfft(spectrum, n)
    pink *= rng.uniform(0.01, 0.04) / (pink.std() + 1e-12)
    beats_per_breath = rng.uniform(3.0, 7.0)
    radius = rng.uniform(0.9, 0.98)
    a1, a2 = 2 * radius * np.cos(2 * np.pi / beats_per_breath), -radius * radius
    resp = lfilter([1.0], [1.0, -a1, -a2], rng.normal(0, 1, n))
    resp *= (rng.uniform(0.05, 0.14) if young else rng.uniform(0.01, 0.05)) / (resp.std() * np.sqrt(2) + 1e-12)
    return np.asarray(mean * (1 + pink + resp + rng.normal(0, rng.uniform(0.004, 0.012), n)))


def c_ectopy(rr: FloatArray, rng: Rng, rate: float) -> FloatArray:
    """Clustered premature beats, some interpolated (a cycle split in two without a pause)."""
    out: list[float] = []
    on = True
    i = 0
    while i < len(rr):
        if rng.random() < 0.01:
            on = not on
        if rng.random() < (2 * rate if on else 0.2 * rate) and i + 1 < len(rr):
            coupling = rng.uniform(0.5, 0.9)
            if rng.random() < 0.2:  # interpolated ventricular beat
                out += [rr[i] * coupling, rr[i] * (1 - coupling) + rr[i + 1]]
            else:
                out += [rr[i] * coupling, rr[i + 1] * rng.uniform(2 - coupling - 0.15, 2 - coupling)]
            i += 2
            continue
        out.append(rr[i])
        i += 1
    return np.array(out)


def c_geminy(rr: FloatArray, rng: Rng, every: int) -> FloatArray:
    """Bigeminy / trigeminy with a drifting coupling interval, interrupted by quadrigeminy."""
    rr = rr.copy()
    n = len(rr)
    coupling = np.clip(rng.uniform(0.6, 0.8) + np.cumsum(rng.normal(0, 0.003, n)), 0.5, 0.9)
    period = np.where((np.arange(n) // 200) % 4 == 3, 4, every)  # every 4th block of 200 beats
    cycle_start = np.zeros(n, np.bool_)
    k = 0
    while k < n:
        cycle_start[k] = True
        k += int(period[k])
    pre = np.flatnonzero(cycle_start)
    rr[pre] *= coupling[pre]
    post = pre[pre + 1 < n] + 1
    rr[post] *= 2 - coupling[post - 1]
    return rr


def c_af(n: int, rng: Rng, low: bool) -> FloatArray:
    """Dual-pathway (bimodal) or slightly correlated AF intervals."""
    mean = 60.0 / (rng.uniform(55, 85) if low else rng.uniform(75, 150))
    cv = rng.uniform(0.06, 0.12) if low else rng.uniform(0.14, 0.3)
    if rng.random() < 0.5:
        z = lfilter([1.0], [1.0, -rng.uniform(0.1, 0.25)], rng.normal(0, 1, n))
        z /= z.std() + 1e-12
    else:  # two modes +-d with spread s: total variance d^2 + s^2 = 1
        d = rng.uniform(0.5, 0.9)
        z = np.where(rng.random(n) < 0.5, -d, d) + rng.normal(0, np.sqrt(1 - d * d), n)
    return np.asarray(np.clip(mean * (1 + cv * z), 0.25, 2.5))


def c_errors(rr: FloatArray, rng: Rng) -> FloatArray:
    """Missed beats, extra beats (Beta(2, 2) split) and spurious triggers."""
    return c_errors_traced(rr, rng)[0]


def c_errors_traced(rr: FloatArray, rng: Rng) -> tuple[FloatArray, np.ndarray]:
    """:func:`c_errors` (the same draws) and, per output interval, the input interval it ends in.

    A spurious trigger inserts a short interval without shortening its neighbours, so it adds
    time: beat times after it are later than in ``rr``; a caller that labels episodes by time
    (benchmarks/ward_week.py) maps its labels through the returned indices.
    """
    p_miss, p_extra, p_spur = rng.uniform(0.005, 0.04), rng.uniform(0.003, 0.02), rng.uniform(0.0, 0.01)
    out: list[float] = []
    source: list[int] = []
    i = 0
    while i < len(rr):
        draw = rng.random()
        if draw < p_miss and i + 1 < len(rr):
            out.append(rr[i] + rr[i + 1])
            source.append(i + 1)
            i += 2
            continue
        if draw < p_miss + p_extra:
            f = rng.beta(2, 2)
            out += [rr[i] * f, rr[i] * (1 - f)]
            source += [i, i]
        elif draw < p_miss + p_extra + p_spur:
            out += [rr[i], rng.uniform(0.1, 0.3)]
            source += [i, i]
        else:
            out.append(rr[i])
            source.append(i)
        i += 1
    return np.array(out), np.array(source, dtype=np.int64)


def c_background(kind: str, n: int, rng: Rng) -> FloatArray:
    """Family C's non-AF rhythm of ``kind``."""
    return with_ectopy(kind, c_sinus(n, rng, young=kind == "sinus young"), rng, c_ectopy, c_geminy)


# ---- family D ------------------------------------------------------------------------------------
# Written for issue 17's fourth round *before* its features were designed and never looked at while
# designing them: evaluated once, at the end (benchmarks/RESULTS.md, "AF screening, fourth round").


def d_sinus(n: int, rng: Rng, young: bool = False) -> FloatArray:
    """Breath-by-breath respiration (gamma durations, sighs, asymmetric waveform) sampled at beat times."""
    mean = rng.uniform(0.75, 1.45) if young else rng.uniform(0.6, 1.1)
    amp = rng.uniform(0.07, 0.18) if young else rng.uniform(0.005, 0.05)
    breath_s, cv = rng.uniform(2.5, 6.0), rng.uniform(0.1, 0.3)
    k = int(n * mean * 1.5 / breath_s) + 20
    duration = rng.gamma(1 / cv**2, breath_s * cv**2, k)
    depth = np.clip(rng.normal(1, 0.25, k), 0.3, None)
    sigh = rng.random(k) < 0.02  # a sigh: a breath twice as long and deep
    duration[sigh] *= 2.0
    depth[sigh] *= 1.8
    starts = np.r_[0.0, np.cumsum(duration)]
    inspiration = rng.uniform(0.35, 0.45)  # share of a breath spent breathing in
    lag = rng.uniform(0.5, 1.5)  # s from the respiration to the heart period

    def modulation(t: FloatArray) -> FloatArray:
        b = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, k - 1)
        phase = np.clip((t - starts[b]) / duration[b], 0, 1)
        rising = 0.5 - 0.5 * np.cos(np.pi * phase / inspiration)
        falling = np.exp(-(phase - inspiration) / (0.25 * (1 - inspiration)))
        w = np.where(phase < inspiration, rising, falling)
        return np.asarray(amp * depth[b] * (1 - 2 * w))  # short at peak inspiration

    slow = lfilter([1.0], [1.0, -0.98], rng.normal(0, rng.uniform(0.01, 0.03) * np.sqrt(1 - 0.98**2), n))
    rr = np.full(n, mean)
    for _ in range(3):  # beat times and their intervals agree after a few passes
        t = np.cumsum(rr)
        rr = mean * (1 + modulation(t - rr - lag) + slow)
    jitter = rng.normal(0, rng.uniform(0.002, 0.01), n)  # fiducial-point jitter (s)
    return np.asarray(np.clip(rr + jitter, 0.3, 2.5))


def d_ectopy(rr: FloatArray, rng: Rng, rate: float) -> FloatArray:
    """Atrial (reset), junctional and ventricular premature beats, some in salvos of three."""
    rr = rr.copy()
    i = 1
    while i < len(rr) - 5:
        if rng.random() >= rate:
            i += 1
            continue
        kind = rng.random()
        if kind < 0.4:  # atrial: the sinus node is reset, the pause is about one cycle
            rr[i], rr[i + 1] = rr[i] * rng.uniform(0.65, 0.9), rr[i + 1] * rng.uniform(1.0, 1.15)
        elif kind < 0.55:  # junctional: late coupling, compensatory
            c = rng.uniform(0.8, 0.92)
            rr[i], rr[i + 1] = rr[i] * c, rr[i + 1] * (2 - c)
        elif kind < 0.95:  # ventricular: full compensatory pause
            c = rng.uniform(0.5, 0.8)
            rr[i], rr[i + 1] = rr[i] * c, rr[i + 1] * (2 - c)
        else:  # a salvo of three ventricular beats, then a pause
            c = rng.uniform(0.5, 0.7)
            rr[i : i + 3] *= c
            rr[i + 3] *= rng.uniform(1.2, 1.5)
        i += 5
    return rr


def d_geminy(rr: FloatArray, rng: Rng, every: int) -> FloatArray:
    """Bigeminy / trigeminy in runs of geometric length (mean 100 cycles), a new coupling each run."""
    rr = rr.copy()
    i = 0
    on = rng.random() < 0.7
    while i < len(rr):
        length = int(rng.geometric(1 / 100) * every)
        if on:
            coupling = rng.uniform(0.55, 0.85)
            seg = np.arange(i, min(i + length, len(rr)))
            pre = seg[(seg - i) % every == 0]
            rr[pre] *= coupling * rng.normal(1, 0.015, len(pre))
            post = pre[pre + 1 < len(rr)] + 1
            rr[post] *= rng.uniform(2 - coupling - 0.1, 2 - coupling)
        on = not on
        i += length
    return rr


def _weibull_shape(cv: float) -> float:
    """The Weibull shape whose coefficient of variation is ``cv``."""
    shapes = np.linspace(1.0, 40.0, 4000)
    g1, g2 = gamma_fn(1 + 1 / shapes), gamma_fn(1 + 2 / shapes)
    cvs = np.sqrt(g2 / g1**2 - 1)  # decreasing in the shape
    return float(np.interp(cv, cvs[::-1], shapes[::-1]))


def d_af(n: int, rng: Rng, low: bool) -> FloatArray:
    """Renewal AF: inverse-Gaussian intervals, or Weibull when rate-controlled; the mean rate drifts."""
    drift = np.exp(np.cumsum(rng.normal(0, 0.003, n)).clip(-0.05, 0.05))
    if low:
        mean, cv = 60.0 / rng.uniform(50, 90), rng.uniform(0.06, 0.12)
        shape = _weibull_shape(cv)
        rr = rng.weibull(shape, n) / gamma_fn(1 + 1 / shape)
    else:
        mean, cv = 60.0 / rng.uniform(60, 150), rng.uniform(0.15, 0.35)
        rr = rng.wald(1.0, 1 / cv**2, n)  # variance mean^3 / scale = cv^2
    return np.asarray(np.clip(mean * drift * rr, 0.25, 2.5))


def d_errors(rr: FloatArray, rng: Rng) -> FloatArray:
    """Missed beats 1-5 %, T waves counted as beats (split at 0.3-0.45), dropouts of 2-3 beats."""
    p_miss, p_extra, p_drop = rng.uniform(0.01, 0.05), rng.uniform(0.005, 0.03), 0.002
    out: list[float] = []
    i = 0
    while i < len(rr):
        draw = rng.random()
        if draw < p_drop and i + 3 < len(rr):
            m = int(rng.integers(3, 5))
            out.append(float(rr[i : i + m].sum()))
            i += m
            continue
        if draw < p_drop + p_miss and i + 1 < len(rr):
            out.append(rr[i] + rr[i + 1])
            i += 2
            continue
        if draw < p_drop + p_miss + p_extra:
            f = rng.uniform(0.3, 0.45)
            out += [rr[i] * f, rr[i] * (1 - f)]
        else:
            out.append(rr[i])
        i += 1
    return np.array(out)


def d_background(kind: str, n: int, rng: Rng) -> FloatArray:
    """Family D's non-AF rhythm of ``kind``."""
    return with_ectopy(kind, d_sinus(n, rng, young=kind == "sinus young"), rng, d_ectopy, d_geminy)


# ---- family E ------------------------------------------------------------------------------------
# Written for issue 17's fifth round *before* its features were designed (committed on its own) and
# never looked at while designing them: evaluated once per model, at the end (benchmarks/RESULTS.md,
# "AF screening, fifth round").


def _narrowband(steps: int, dt: float, freq: float, bandwidth: float, rng: Rng) -> FloatArray:
    """A unit-SD narrow-band process in time: white noise through a resonant AR(2) (``freq`` Hz)."""
    radius = np.exp(-np.pi * bandwidth * dt)
    a1, a2 = 2 * radius * np.cos(2 * np.pi * freq * dt), -radius * radius
    burn = int(5 / (bandwidth * dt))
    out = lfilter([1.0], [1.0, -a1, -a2], rng.normal(0, 1, steps + burn))[burn:]
    return np.asarray(out / (out.std() + 1e-12))


def e_respiration(steps: int, dt: float, rng: Rng, rate_bpm: float) -> FloatArray:
    """Breathing as a noisy phase oscillator: phase diffusion, AR(1) depths, harmonics, sighs + apnoea.

    The breathing rate wanders by phase diffusion (each breath's length varies by ~10-30 %);
    depths follow an AR(1) over breaths (0.3-0.8); the waveform is a fixed random mix of the first
    three harmonics; 1-3 % of breaths are sighs (x2 deep) followed by a 3-8 s apnoea (flat).
    """
    diffusion = rng.uniform(0.1, 0.3)  # per-breath relative SD of the breath length
    rate = rate_bpm / 60.0
    dphase = 2 * np.pi * rate * dt * np.clip(1 + diffusion * rng.normal(0, 1, steps) / np.sqrt(rate * dt), 0.2, None)
    phase = np.cumsum(dphase) + rng.uniform(0, 6.3)
    breath = (phase // (2 * np.pi)).astype(np.int64)
    nb = int(breath.max()) + 2
    rho = rng.uniform(0.3, 0.8)
    depth = lfilter([np.sqrt(1 - rho * rho)], [1.0, -rho], rng.normal(0, rng.uniform(0.15, 0.35), nb))
    depth = np.clip(1 + depth, 0.2, None)
    sigh = rng.random(nb) < rng.uniform(0.01, 0.03)
    depth[sigh] *= 2.0
    h2, h3 = rng.uniform(0, 0.35), rng.uniform(0, 0.15)
    p2, p3 = rng.uniform(0, 6.3), rng.uniform(0, 6.3)
    wave = (np.sin(phase) + h2 * np.sin(2 * phase + p2) + h3 * np.sin(3 * phase + p3)) / (1 + h2 + h3)
    resp = depth[breath] * wave
    # apnoea after a sigh: hold the signal flat for 3-8 s from the end of the sigh breath
    for b in np.flatnonzero(sigh):
        ends = np.flatnonzero(breath == b)
        if len(ends):
            stop = ends[-1] + 1
            hold = int(rng.uniform(3, 8) / dt)
            resp[stop : stop + hold] = resp[stop - 1]
    return np.asarray(resp)


def e_sinus_times(seconds: float, rng: Rng, young: bool) -> FloatArray:
    """Beat times of sinus rhythm from an integral pulse-frequency-modulation (IPFM) model.

    The *rate* is modulated (not the period): vagal respiratory modulation (respiration through a
    first-order low-pass of 0.3-1.5 s), a Mayer wave (narrow-band around 0.07-0.12 Hz, +-1-4 %) and
    a slow sympathetic wander; a beat fires when the integral of the rate crosses its threshold
    (threshold noise 0.3-1 %). Age sets the respiratory amplitude: older adults (40-90 y) +-1-6 %,
    the young (8-30 y) +-8-25 % (young athletes at 45-65 bpm breathing 8-16 a minute, children and
    adolescents at 65-100 bpm breathing 16-30 a minute).
    """
    dt = 0.05
    steps = int(seconds / dt) + 200
    if young:
        age = rng.uniform(8, 30)
        athlete = rng.random() < 0.5
        hr = rng.uniform(45, 65) if athlete else rng.uniform(65, 100)
        breaths = rng.uniform(8, 16) if athlete else rng.uniform(16, 30)
        amp = rng.uniform(0.08, 0.25) * (1.2 - 0.01 * age) / (1.2 - 0.08)
    else:
        age = rng.uniform(40, 90)
        hr = rng.uniform(55, 100)
        breaths = rng.uniform(10, 22)
        amp = rng.uniform(0.01, 0.06) * (1.3 - 0.01 * age) / 0.9
    resp = e_respiration(steps, dt, rng, breaths)
    tau = rng.uniform(0.3, 1.5)
    alpha = dt / (tau + dt)
    vagal = lfilter([alpha], [1.0, -(1 - alpha)], resp)
    vagal /= np.abs(vagal).max() / np.abs(resp).max() + 1e-12
    mayer = rng.uniform(0.01, 0.04) * _narrowband(steps, dt, rng.uniform(0.07, 0.12), 0.03, rng)
    slow = lfilter([1.0], [1.0, -0.9995], rng.normal(0, 1, steps))
    slow *= rng.uniform(0.01, 0.04) / (slow.std() + 1e-12)
    rate = hr / 60.0 * np.clip(1 + amp * vagal + mayer + slow, 0.4, None)
    integral = np.cumsum(rate) * dt
    thresholds = np.cumsum(1 + rng.normal(0, rng.uniform(0.003, 0.01), int(integral[-1]) + 2))
    thresholds = thresholds[thresholds < integral[-1]]
    return np.asarray(np.interp(thresholds, integral, np.arange(steps) * dt))


def e_sinus(n: int, rng: Rng, young: bool = False) -> FloatArray:
    """``n`` sinus RR intervals (s) of :func:`e_sinus_times`."""
    seconds = n * 1.6
    rr = np.diff(e_sinus_times(seconds, rng, young))
    while len(rr) < n:
        rr = np.concatenate([rr, np.diff(e_sinus_times(seconds, rng, young))])
    return np.asarray(rr[:n])


def e_ectopy(rr: FloatArray, rng: Rng, rate: float) -> FloatArray:
    """Ventricular parasystole (half the recordings) or premature atrial beats, some blocked.

    Parasystole: an independent ventricular focus fires every 1.3-3.5 sinus cycles (its own clock,
    protected); a firing captures the ventricles when it falls outside their refractory period
    (0.3-0.4 s after a beat) with a probability that makes ~``rate`` of the beats ectopic, so the
    coupling interval *varies*; the next sinus beat is concealed when it would come within 0.35 s
    (a compensatory pause), else the ectopic beat is interpolated. Atrial: premature beats of
    coupling 0.6-0.9 with a pause that resets the sinus node (x1.0-1.2), 15 % of them blocked (a
    pause of 1.4-1.8 cycles, no short interval).
    """
    times = np.cumsum(rr)
    if rng.random() < 0.5:
        mean = float(np.mean(rr))
        period = mean * rng.uniform(1.3, 3.5)
        refractory = rng.uniform(0.3, 0.4)
        capture = float(np.clip(rate * period / max(mean - refractory, 0.1), 0, 1))
        fires = np.arange(rng.uniform(0, period), times[-1], period)
        fires = fires[rng.random(len(fires)) < capture]
        beats: list[float] = [0.0]
        sinus = np.r_[0.0, times]
        j = 1
        for e in fires:
            while j < len(sinus) and sinus[j] <= e:
                beats.append(float(sinus[j]))
                j += 1
            if e - beats[-1] < refractory or j >= len(sinus):
                continue
            beats.append(float(e))
            if sinus[j] - e < 0.35:  # concealed: the next sinus beat does not conduct
                j += 1
        beats += [float(s) for s in sinus[j:]]
        return np.diff(np.array(beats))
    out = rr.copy()
    i = 1
    while i < len(out) - 2:
        if rng.random() < rate:
            if rng.random() < 0.15:  # blocked premature atrial beat: a pause alone
                out[i] *= rng.uniform(1.4, 1.8)
            else:
                out[i], out[i + 1] = out[i] * rng.uniform(0.6, 0.9), out[i + 1] * rng.uniform(1.0, 1.2)
            i += 2
        else:
            i += 1
    return out


def e_geminy(rr: FloatArray, rng: Rng, every: int) -> FloatArray:
    """Bigeminy / trigeminy whose coupling follows the preceding cycle, in runs of log-normal length.

    The premature beat's coupling is ``c`` x the preceding sinus interval plus 0-40 ms x the change
    in that interval (rule of bigeminy: longer cycles, later couplings), with a full compensatory
    pause; runs last a log-normal number of cycles (median 40-200), separated by sinus rhythm
    (median 10-100 cycles); some runs are 'concealed' (an odd number of sinus beats between
    premature ones, 3 or 5, instead of ``every - 1``).
    """
    rr = rr.copy()
    n = len(rr)
    coupling = rng.uniform(0.55, 0.85)
    slope = rng.uniform(0.0, 0.4)
    i = int(rng.integers(1, 4))
    on = rng.random() < 0.8
    while i < n - 2:
        if on:
            cycles = int(np.exp(rng.normal(np.log(rng.uniform(40, 200)), 0.6)))
            gap = every if rng.random() < 0.8 else int(rng.choice([4, 6]))
            for _ in range(cycles):
                if i >= n - 2:
                    break
                base = rr[i]
                c = coupling + slope * (rr[i - 1] - base) / max(base, 0.3) + rng.normal(0, 0.015)
                c = float(np.clip(c, 0.45, 0.92))
                rr[i], rr[i + 1] = base * c, rr[i + 1] + base * (1 - c)
                i += gap
        else:
            i += int(np.exp(rng.normal(np.log(rng.uniform(10, 100)), 0.6))) + 1
        on = not on
    return rr


def e_af(n: int, rng: Rng, low: bool) -> FloatArray:
    """AV-node-filtered fibrillation: atrial impulses through a node with concealed conduction.

    Atrial impulses come as a renewal process of 100-200 ms cycles (gamma, CV 0.15-0.3). The node
    conducts an impulse arriving after its refractory period has ended, and the period restarts
    (its length follows the last RR, restitution +-10 %, and a slow autonomic tone). An impulse
    arriving in the last ``1 - theta`` of the refractory period is concealed: it does not conduct
    but extends the period by ``rho`` x how far into that relative part it came (capped below the
    atrial cycle, so the node cannot lock). Rate-controlled AF (a beta-blocker or digoxin): a
    longer period and a narrower relative part. The refractory period also varies beat to beat
    (log-normal, SD 5-15 %; 0-6 % rate-controlled). Coefficients of variation ~0.12-0.25 at ~60-150
    bpm (AF) and ~0.05-0.10 at ~55-100 bpm (rate-controlled), lag-1 autocorrelation ~0.1-0.3
    (the rate drifts).
    """
    if low:
        refractory = rng.uniform(0.55, 0.95)
        theta, rho = rng.uniform(0.8, 0.9), rng.uniform(0.2, 0.5)
    else:
        refractory = rng.uniform(0.28, 0.5)
        theta, rho = rng.uniform(0.2, 0.5), rng.uniform(0.5, 1.0)
    cycle, cv = rng.uniform(0.1, 0.2), rng.uniform(0.15, 0.3)
    m = int(n * 3 * (refractory + 0.6) / cycle) + 100
    atrial = np.cumsum(rng.gamma(1 / cv**2, cycle * cv**2, m))
    tone = np.exp(np.cumsum(rng.normal(0, 0.001, m)).clip(-0.08, 0.08))
    wobble = rng.uniform(0.0, 0.06) if low else rng.uniform(0.05, 0.15)  # beat-to-beat refractoriness
    out: list[float] = []
    last = 0.0
    end = refractory
    period = refractory
    for k in range(m):
        a = atrial[k]
        if a >= end:
            if last > 0:
                rr = a - last
                out.append(rr)
                if len(out) >= n:
                    break
                period = refractory * tone[k] * (1 + 0.05 * np.tanh((rr - refractory - 0.15) / 0.3))
                period *= float(np.exp(wobble * rng.normal()))
            last, end = a, a + period
        elif a >= end - (1 - theta) * period:
            end += min(rho * (a - end + (1 - theta) * period), 0.6 * cycle)
    return np.asarray(np.clip(np.array(out[:n]), 0.25, 2.5))


def e_errors(rr: FloatArray, rng: Rng) -> FloatArray:
    """A wrist PPG's errors: motion bursts with pulse-timing jitter and misses; dicrotic double counts.

    A two-state (rest / motion) chain over beats (motion entered with p 0.3-1 %, left with p 5-15 %):
    in motion the pulse arrival jitters by 10-25 ms SD (intervals change, none is lost) and
    8-15 % of beats are missed; at rest 0.3-1 % are missed. 0.3-1.5 % of beats are counted twice
    at the dicrotic notch (an interval split at 0.35-0.5).
    """
    p_in, p_out = rng.uniform(0.003, 0.01), rng.uniform(0.05, 0.15)
    jitter_sd, miss_motion = rng.uniform(0.01, 0.025), rng.uniform(0.08, 0.15)
    miss_rest, p_double = rng.uniform(0.003, 0.01), rng.uniform(0.003, 0.015)
    times = np.cumsum(rr)
    motion = np.zeros(len(rr), np.bool_)
    state = False
    for i in range(len(rr)):
        state = (rng.random() >= p_out) if state else (rng.random() < p_in)
        motion[i] = state
    times = times + np.where(motion, rng.normal(0, jitter_sd, len(rr)), 0.0)
    keep = rng.random(len(rr)) >= np.where(motion, miss_motion, miss_rest)
    keep[-1] = True
    times = np.sort(times[keep])
    out = np.diff(np.r_[0.0, times])
    pieces: list[float] = []
    for v in out:
        if rng.random() < p_double:
            f = rng.uniform(0.35, 0.5)
            pieces += [v * f, v * (1 - f)]
        else:
            pieces.append(float(v))
    return np.asarray(np.clip(np.array(pieces), 0.05, None))


def e_background(kind: str, n: int, rng: Rng) -> FloatArray:
    """Family E's non-AF rhythm of ``kind``."""
    return with_ectopy(kind, e_sinus(n, rng, young=kind == "sinus young"), rng, e_ectopy, e_geminy)


# ---- family F ------------------------------------------------------------------------------------
# Written for issue 17's sixth round *before* its decision changes (committed on its own); while
# writing it only the generator's own statistics were looked at, never a model's output on it.
# Evaluated once, at the end, with the final model (benchmarks/RESULTS.md, "AF screening, sixth round").


def _gaussian_band(seconds: int, freq: float, width: float, rng: Rng) -> FloatArray:
    """A unit-SD Gaussian process at 1 Hz whose spectrum is a Gaussian bump (``freq``, SD ``width`` Hz).

    Spectral synthesis with random phases, as ECGSYN's RR process (McSharry PE, Clifford GD,
    Tarassenko L, Smith LA. IEEE Trans Biomed Eng 2003;50:289-294).
    """
    m = max(int(2 ** np.ceil(np.log2(seconds + 64))), 256)
    f = np.fft.rfftfreq(m, 1.0)
    amplitude = np.sqrt(np.exp(-((f - freq) ** 2) / (2 * width * width)))
    amplitude[0] = 0.0
    spectrum = amplitude * np.exp(1j * rng.uniform(0, 2 * np.pi, len(f)))
    out = np.fft.irfft(spectrum, m)[:seconds]
    return np.asarray(out / (out.std() + 1e-12))


def f_period(seconds: int, rng: Rng, young: bool) -> FloatArray:
    """The heart period (s) sampled at 1 Hz: ECGSYN's bimodal spectrum, with nonstationary breathing.

    LF: a Gaussian bump at 0.08-0.12 Hz (SD 0.01 Hz); HF: the respiratory bump. The LF/HF power
    ratio and the HF amplitude follow age (HF falls and LF/HF rises with age: Umetani K et al. J
    Am Coll Cardiol 1998;31:593; Pikkujamsa SM et al. Circulation 1999;100:393): older adults
    LF/HF 1-4, RR SD 1-4 % of the mean at 55-100 bpm; the young LF/HF 0.2-1, RR SD 5-14 % at 45-95
    bpm. Breathing is nonstationary: the recording is cut into 20-90 s pieces (talking, sighing,
    changing posture), each with its own respiratory frequency (0.1-0.45 Hz; children faster), band
    width (0.005-0.02 Hz at rest; 0.02-0.08 Hz for irregular breathing, half of the young and a
    fifth of the others) and depth (x0.5-1.5), overlap-added with raised-cosine crossfades of 8 s.
    """
    if young:
        hr, sd, ratio = rng.uniform(45, 95), rng.uniform(0.05, 0.14), rng.uniform(0.2, 1.0)
        irregular = rng.random() < 0.5
        f_lo, f_hi = (0.1, 0.3) if hr < 65 else (0.2, 0.45)
    else:
        hr, sd, ratio = rng.uniform(55, 100), rng.uniform(0.01, 0.04), rng.uniform(1.0, 4.0)
        irregular = rng.random() < 0.2
        f_lo, f_hi = 0.15, 0.35
    mean = 60.0 / hr
    lf = _gaussian_band(seconds, rng.uniform(0.08, 0.12), 0.01, rng)
    hf = np.zeros(seconds)
    weight = np.zeros(seconds)
    fade = 8
    start = -int(rng.uniform(0, 60))
    while start < seconds:
        length = int(rng.uniform(20, 90))
        lo, hi = max(start - fade, 0), min(start + length + fade, seconds)
        if hi > lo:
            width = rng.uniform(0.02, 0.08) if irregular else rng.uniform(0.005, 0.02)
            piece = _gaussian_band(hi - lo, rng.uniform(f_lo, f_hi), width, rng) * rng.uniform(0.5, 1.5)
            ramp = np.ones(hi - lo)
            k = np.arange(hi - lo)
            up, down = k < (start - lo) + fade, k >= (hi - lo) - fade
            ramp[up] = 0.5 - 0.5 * np.cos(np.pi * (k[up] + 1) / (2 * fade + 1))
            ramp[down] = 0.5 - 0.5 * np.cos(np.pi * ((hi - lo) - k[down]) / (fade + 1))
            hf[lo:hi] += ramp * piece
            weight[lo:hi] += ramp * ramp
        start += length
    hf /= np.sqrt(np.maximum(weight, 1e-6))
    hf /= hf.std() + 1e-12
    s_hf = sd / np.sqrt(1 + ratio)
    s_lf = sd * np.sqrt(ratio / (1 + ratio))
    return np.asarray(mean * (1 + s_lf * lf + s_hf * hf))


def f_sinus(n: int, rng: Rng, young: bool = False) -> FloatArray:
    """``n`` sinus intervals: each beat's interval is the 1 Hz period at the beat (ECGSYN's sampling)."""
    seconds = int(n * 1.5) + 120
    period = f_period(seconds, rng, young)
    grid = np.arange(seconds, dtype=np.float64)
    out = np.empty(n)
    t = 0.0
    for i in range(n):
        out[i] = float(np.interp(t, grid, period))
        t += out[i]
    noise = rng.normal(0, rng.uniform(0.001, 0.005), n)  # beat-to-beat noise (s)
    return np.asarray(np.clip(out + noise, 0.3, 2.5))


def f_ectopy(rr: FloatArray, rng: Rng, rate: float) -> FloatArray:
    """Premature beats from foci of *fixed* coupling (in seconds, re-entry), clustered in time.

    The rate of premature beats changes every ~2 min (a gamma-distributed multiplier, shape 1:
    ectopy comes in bursts) around ``rate``. Each recording has one or two foci: ventricular (a
    fixed coupling of 0.35-0.55 s, +-10 ms, full compensatory pause), atrial (0.4-0.65 s with a
    non-compensatory pause: the sinus node is reset, the next interval is a cycle plus 0-80 ms).
    10 % of premature beats are couplets; 3 % start a run of 3-6 atrial beats at a fixed short
    cycle (a salvo), then a reset pause. A coupling is never later than 0.92 of the cycle.
    """
    out: list[float] = []
    foci = []
    for _ in range(int(rng.integers(1, 3))):
        ventricular = rng.random() < 0.5
        coupling = rng.uniform(0.35, 0.55) if ventricular else rng.uniform(0.4, 0.65)
        foci.append((ventricular, coupling))
    block = rng.gamma(1.0, 1.0, len(rr) // 120 + 2)
    i = 0
    while i < len(rr):
        cycle = float(rr[i])
        if rng.random() < min(rate * block[i // 120], 0.6) and i + 2 < len(rr):
            ventricular, coupling = foci[int(rng.integers(len(foci)))]
            c = min(coupling + rng.normal(0, 0.01), 0.92 * cycle)
            draw = rng.random()
            if draw < 0.03 and not ventricular:  # atrial salvo
                short = max(c * rng.uniform(0.8, 1.0), 0.3)
                out += [c] + [short] * int(rng.integers(2, 6)) + [cycle + rng.uniform(0, 0.08)]
                i += 2
                continue
            beats = [c, c] if draw < 0.13 else [c]
            pause = 2 * cycle - c if ventricular else cycle + rng.uniform(0, 0.08)
            out += [*beats, pause]
            i += 2
            continue
        out.append(cycle)
        i += 1
    return np.asarray(out)


def f_geminy(rr: FloatArray, rng: Rng, every: int) -> FloatArray:
    """Bigeminy / trigeminy from one focus of fixed coupling (s), throughout, with exit block.

    Ventricular (full compensatory pause) or atrial (sinus reset: the pause is a cycle plus 0-80
    ms), coupling 0.38-0.6 s (never later than 0.9 of the cycle) with 5-20 ms jitter; 3-15 % of
    the expected premature beats fail to exit (a sinus beat instead).
    """
    ventricular = rng.random() < 0.5
    coupling, jitter = rng.uniform(0.38, 0.6), rng.uniform(0.005, 0.02)
    exit_block = rng.uniform(0.03, 0.15)
    out: list[float] = []
    i = int(rng.integers(0, every))
    out += [float(v) for v in rr[:i]]
    while i < len(rr):
        group = rr[i : i + every]
        if len(group) < every or rng.random() < exit_block:
            out += [float(v) for v in group]
        else:  # the last two sinus cycles of the group become the premature beat and its pause
            cycle = float(group[-2])
            c = min(coupling + rng.normal(0, jitter), 0.9 * cycle)
            pause = cycle + float(group[-1]) - c if ventricular else cycle + rng.uniform(0, 0.08)
            out += [float(v) for v in group[:-2]] + [c, pause]
        i += every
    return np.asarray(out)


# Moody & Mark's three RR states (short, regular, long) with transition probabilities of AF: near
# uniform with little persistence (Moody GB, Mark RG. A new method for detecting atrial
# fibrillation using R-R intervals. Computers in Cardiology 1983;10:227-230).
F_AF_TRANSITIONS: dict[bool, FloatArray] = {
    False: np.array([[0.30, 0.38, 0.32], [0.33, 0.36, 0.31], [0.36, 0.37, 0.27]]),
    True: np.array([[0.28, 0.42, 0.30], [0.30, 0.42, 0.28], [0.34, 0.40, 0.26]]),
}


def f_af(n: int, rng: Rng, low: bool) -> FloatArray:
    """AF from a hidden three-state Markov chain (short / regular / long) with a drifting rate.

    Each interval's state follows :data:`F_AF_TRANSITIONS`; within a state the interval is normal
    around ``mean`` x (1 - s, 1, 1 + s) with SD ``w`` x mean. AF: 60-150 bpm, s 0.15-0.3, w 0.06-0.12
    (CV ~0.14-0.28); rate-controlled: 50-95 bpm, s 0.05-0.1, w 0.03-0.05 (CV ~0.05-0.10). The
    mean rate drifts (AR(1) over beats, rho 0.995, +-3-8 %; +-2-5 % rate-controlled), a minimum
    interval of 0.28 s.
    """
    if low:
        mean, s, w = 60.0 / rng.uniform(50, 95), rng.uniform(0.05, 0.1), rng.uniform(0.03, 0.05)
    else:
        mean, s, w = 60.0 / rng.uniform(60, 150), rng.uniform(0.15, 0.3), rng.uniform(0.06, 0.12)
    cumulative = np.cumsum(F_AF_TRANSITIONS[low], axis=1)
    draws = rng.random(n)
    state = np.empty(n, np.int64)
    current = 1
    for i in range(n):
        current = int(np.searchsorted(cumulative[current], draws[i], side="right"))
        state[i] = min(current, 2)
        current = state[i]
    drift = lfilter([1.0], [1.0, -0.995], rng.normal(0, 1, n + 500))[500:]
    drift *= (rng.uniform(0.02, 0.05) if low else rng.uniform(0.03, 0.08)) / (drift.std() + 1e-12)
    rr = mean * (1 + drift) * (1 + s * (state - 1) + w * rng.normal(0, 1, n))
    return np.asarray(np.clip(rr, 0.28, 2.5))


def f_errors(rr: FloatArray, rng: Rng) -> FloatArray:
    """A finger / wrist PPG's errors: pulse deficit, low perfusion, transit-time jitter, motion spikes.

    - pulse deficit: a beat whose interval is under 0.8 x the median of its last 8 ejects too little
      to make a pulse (missed with p 0.3-0.9; it merges into the next interval), in ectopy and AF;
    - low perfusion: the pulse amplitude wanders (AR(1) over beats, rho 0.9-0.98) and a beat below
      the detector's threshold is missed (0.5-3 % of beats, in clusters);
    - pulse transit time: each pulse arrives late by a smooth AR(1) (rho 0.9, SD 3-10 ms) plus
      2-6 ms white jitter;
    - motion spikes: 0.2-1 % of intervals get a spurious peak at a uniform 20-80 % of the interval.
    """
    n = len(rr)
    local = np.array([np.median(rr[max(i - 8, 0) : i]) if i else rr[0] for i in range(n)])
    deficit = (rr < 0.8 * local) & (rng.random(n) < rng.uniform(0.3, 0.9))
    rho = rng.uniform(0.9, 0.98)
    amplitude = lfilter([np.sqrt(1 - rho * rho)], [1.0, -rho], rng.normal(0, 1, n))
    threshold = np.quantile(amplitude, rng.uniform(0.005, 0.03))
    missed = deficit | (amplitude < threshold)
    missed[-1] = False
    ptt = lfilter([np.sqrt(1 - 0.81)], [1.0, -0.9], rng.normal(0, rng.uniform(0.003, 0.01), n))
    times = np.cumsum(rr) + ptt + rng.normal(0, rng.uniform(0.002, 0.006), n)
    times = np.sort(times[~missed])
    out = np.diff(np.r_[0.0, times])
    p_spike = rng.uniform(0.002, 0.01)
    pieces: list[float] = []
    for v in out:
        if rng.random() < p_spike:
            f = rng.uniform(0.2, 0.8)
            pieces += [v * f, v * (1 - f)]
        else:
            pieces.append(float(v))
    return np.asarray(np.clip(np.array(pieces), 0.05, None))


def f_background(kind: str, n: int, rng: Rng) -> FloatArray:
    """Family F's non-AF rhythm of ``kind``."""
    return with_ectopy(kind, f_sinus(n, rng, young=kind == "sinus young"), rng, f_ectopy, f_geminy)


# ---- family G ------------------------------------------------------------------------------------
# Written for issue 17's seventh round *before* any change of that round (committed on its own);
# while writing it only the generator's own statistics were looked at, never a model's output on
# it. Held out: evaluated at the end (benchmarks/RESULTS.md, "AF screening, seventh round").


def g_sinus(n: int, rng: Rng, young: bool = False) -> FloatArray:
    """Sinus rhythm from a beat-to-beat baroreflex model (after DeBoer, Karemaker & Strackee 1987).

    Systolic pressure S(n) is fed back with a sympathetic delay of 2-4 beats on the peripheral
    resistance (which makes the ~0.1 Hz Mayer oscillation emerge, not drawn), and onto the interval
    by the vagal baroreflex in the same beat (gain 3-12 ms/mmHg); respiration enters both: the
    interval through a direct vagal (RSA) term and the pressure through intrathoracic swings.
    Breathing is a sequence of breaths, each an inspiration (its own length) and an expiration
    followed by an end-expiratory pause (0-40 % of the breath, longer in slow breathers); the
    vagal response is asymmetric (a quick shortening in inspiration, a slower recovery: the
    breath's waveform is skewed). Older adults 55-100 bpm, RSA +-0.5-4 %; ``young`` 45-95 bpm,
    RSA +-6-20 %, breathing 6-30 a minute (slower breathing at the slower rates), breath length
    CV 0.05-0.35; 1-2 % sighs (x1.8 deep, x1.5 long). Beat-to-beat noise 2-8 ms.
    """
    if young:
        hr = rng.uniform(45, 95)
        rsa = rng.uniform(0.06, 0.2)
        breaths = rng.uniform(6, 18) if hr < 65 else rng.uniform(12, 30)
        cv = rng.uniform(0.05, 0.35)
    else:
        hr = rng.uniform(55, 100)
        rsa = rng.uniform(0.005, 0.04)
        breaths = rng.uniform(10, 22)
        cv = rng.uniform(0.05, 0.2)
    i0 = 60.0 / hr
    # breaths in time: inspiration, expiration, pause
    seconds = n * i0 * 1.6 + 60
    k = int(seconds / (60 / breaths) * 1.5) + 10
    length = (60 / breaths) * np.exp(cv * rng.normal(0, 1, k) - cv * cv / 2)
    sigh = rng.random(k) < rng.uniform(0.01, 0.02)
    length[sigh] *= 1.5
    depth = np.clip(1 + rng.normal(0, 0.2, k), 0.3, None) * np.where(sigh, 1.8, 1.0)
    pause = rng.uniform(0.0, 0.4 if breaths < 12 else 0.2, k)
    inspire = rng.uniform(0.3, 0.45, k) * (1 - pause)
    starts = np.r_[0.0, np.cumsum(length)]
    skew = rng.uniform(1.5, 3.0)

    def lung(t: FloatArray) -> FloatArray:
        b = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, k - 1)
        u = np.clip((t - starts[b]) / length[b], 0, 1)
        up = u < inspire[b]
        down = (u >= inspire[b]) & (u < 1 - pause[b])
        x = np.zeros_like(t)
        x[up] = np.sin(0.5 * np.pi * u[up] / inspire[b][up])
        r = (u[down] - inspire[b][down]) / (1 - pause[b][down] - inspire[b][down])
        x[down] = (1 - r) ** skew
        return np.asarray(depth[b] * x)

    delay = int(rng.integers(2, 5))
    g_symp = rng.uniform(0.3, 0.6)  # the pressure loop's gain (per mmHg of the delayed pressure)
    g_vagal = rng.uniform(0.003, 0.012)  # s per mmHg
    s0 = rng.uniform(110, 140)
    rr = np.empty(n)
    s = np.full(n + delay + 1, s0)
    noise_s = rng.normal(0, rng.uniform(1.0, 3.0), n)
    noise_i = rng.normal(0, rng.uniform(0.002, 0.008), n)
    dt = 0.05
    grid = lung(np.arange(0.0, seconds, dt))  # the breathing signal, looked up at each beat's start
    t = 0.0
    for i in range(n):
        resp = float(grid[min(int(t / dt), len(grid) - 1)])
        j = i + delay
        s[j] = s0 - g_symp * (s[j - delay] - s0) - 4.0 * resp + noise_s[i]
        rr[i] = i0 * (1 - rsa * resp) + g_vagal * (s[j] - s0) + noise_i[i]
        rr[i] = min(max(rr[i], 0.3), 2.5)
        t += rr[i]
    return rr


def g_ectopy(rr: FloatArray, rng: Rng, rate: float) -> FloatArray:
    """Multifocal premature beats of *variable* coupling, some interpolated, some blocked.

    Two or three foci per recording, each atrial or ventricular with its own coupling ratio
    (0.5-0.85 of the cycle) varying beat to beat by 4-12 % (CV); ventricular beats have a full
    compensatory pause unless interpolated (20 % of them when the cycle is long: > 0.9 s),
    atrial beats reset the sinus node (the pause is a cycle x1.0-1.25); 10 % of atrial premature
    beats are blocked (a pause of 1.5-1.9 cycles alone). The rate of premature beats follows a
    slow log-normal modulation (SD 0.5), 8 % of events are couplets.
    """
    count = int(rng.integers(2, 4))
    foci = [(rng.random() < 0.5, rng.uniform(0.5, 0.85), rng.uniform(0.04, 0.12)) for _ in range(count)]
    mod = np.exp(lfilter([0.05], [1.0, -0.95], rng.normal(0, 1, len(rr))) * 0.5 / 0.16)
    out: list[float] = []
    i = 0
    while i < len(rr):
        cycle = float(rr[i])
        if rng.random() < min(rate * mod[i] / np.mean(mod), 0.6) and i + 2 < len(rr):
            ventricular, ratio, spread = foci[int(rng.integers(len(foci)))]
            c = cycle * min(ratio * (1 + spread * rng.normal()), 0.92)
            if not ventricular and rng.random() < 0.1:
                out.append(cycle * rng.uniform(1.5, 1.9))
                i += 1
                continue
            if ventricular and cycle > 0.9 and rng.random() < 0.2:
                out += [c, cycle - c + rng.uniform(0.0, 0.05)]
                i += 1
                continue
            beats = [c, cycle * min(ratio * (1 + spread * rng.normal()), 0.92)] if rng.random() < 0.08 else [c]
            pause = 2 * cycle - c if ventricular else cycle * rng.uniform(1.0, 1.25)
            out += [*beats, pause]
            i += 2
            continue
        out.append(cycle)
        i += 1
    return np.asarray(out)


def g_geminy(rr: FloatArray, rng: Rng, every: int) -> FloatArray:
    """Bigeminy / trigeminy with a coupling ratio that varies beat to beat (CV 3-10 %) and drifts.

    Ventricular (compensatory) or atrial (reset, x1.0-1.2); the coupling ratio 0.55-0.85 of the
    cycle drifts slowly (a random walk, +-5 %); episodes last 1-10 min separated by 0.5-5 min of
    sinus rhythm with isolated premature beats (a quarter of recordings: throughout).
    """
    ventricular = rng.random() < 0.5
    base, spread = rng.uniform(0.55, 0.85), rng.uniform(0.03, 0.1)
    walk = np.cumsum(rng.normal(0, 0.002, len(rr))).clip(-0.05, 0.05)
    throughout = rng.random() < 0.25
    on = np.ones(len(rr), np.bool_)
    if not throughout:
        t = np.cumsum(rr)
        edges, state, s = [], True, 0.0
        while s < t[-1]:
            s += rng.uniform(60, 600) if state else rng.uniform(30, 300)
            edges.append(s)
            state = not state
        on = (np.searchsorted(np.array(edges), t) % 2) == 0
    out: list[float] = []
    i = 0
    while i < len(rr):
        if on[i] and i % every == every - 1 and i + 1 < len(rr):
            cycle = float(rr[i])
            c = cycle * min((base + walk[i]) * (1 + spread * rng.normal()), 0.92)
            pause = 2 * cycle - c if ventricular else cycle * rng.uniform(1.0, 1.2)
            out += [c, pause]
            i += 2
            continue
        out.append(float(rr[i]))
        i += 1
    return np.asarray(out)


def g_af(n: int, rng: Rng, low: bool) -> FloatArray:
    """AF from two other ventricular-response models, with a fractal rate and short-term correlation.

    - uniform plus Gaussian (half): each interval a floor (the AV node's refractory period) plus a
      uniform wait plus Gaussian jitter, a flat-topped histogram;
    - Hayano-type (half): white intervals at short scales riding on 1/f fluctuations of the mean
      at long scales (Hayano J et al. Am J Physiol 1997;273:H2811; a sum of AR(1) processes of
      time constants 10-1000 beats), log-normal at each beat.

    Both with a lag-1 correlation of -0.3..0.3 (concealed conduction: a long interval after a short
    one; or a slowly varying rate). AF: 45-170 bpm, CV 0.12-0.45 (faster and more irregular than
    the other families' upper ends); rate-controlled: 50-100 bpm, CV 0.06-0.10.
    """
    if low:
        mean, cv = 60.0 / rng.uniform(50, 100), rng.uniform(0.06, 0.10)
    else:
        mean, cv = 60.0 / rng.uniform(45, 170), rng.uniform(0.12, 0.45)
    rho = rng.uniform(-0.3, 0.3)
    white = lfilter([np.sqrt(1 - rho * rho)], [1.0, -rho], rng.normal(0, 1, n + 50))[50:]
    if rng.random() < 0.5:
        # uniform plus Gaussian: a uniform of SD u and a Gaussian of SD g, u^2 + g^2 = 1
        share = rng.uniform(0.5, 0.9)
        u = (rng.random(n) - 0.5) * np.sqrt(12) * np.sqrt(share)
        # the uniform part keeps its flat histogram; the correlated white part carries the rest
        z = u + white * np.sqrt(1 - share)
        rr = mean * (1 + cv * z)
    else:
        slow = np.zeros(n)
        for tau in (10, 100, 1000):
            a = 1 - 1 / tau
            slow += lfilter([np.sqrt(1 - a * a)], [1.0, -a], rng.normal(0, 1, n + 3 * tau))[3 * tau :]
        slow *= rng.uniform(0.02, 0.06) / (slow.std() + 1e-12)
        sigma = np.sqrt(np.log(1 + cv * cv))
        rr = mean * (1 + slow) * np.exp(sigma * white - sigma * sigma / 2)
    return np.asarray(np.clip(rr, 0.25, 2.5))


def g_errors(rr: FloatArray, rng: Rng) -> FloatArray:
    """A chest patch / watch's errors: missed beats, doubled detections, motion artefacts.

    - missed beats: isolated (0.5-4 % of beats) and runs of 2-3 (a fifth of them);
    - doubled detections: the same beat found twice 40-200 ms apart (a large T or P wave, a PPG's
      dicrotic notch), 0.3-3 % of beats: a tiny interval and its remainder;
    - motion artefacts: 0.5-2 bursts per 10 min of 3-15 s in which the detector fires on noise:
      the true beats are replaced by detections at random times (a Poisson process at 0.6-1.6 x
      the heart rate); the beats around a burst are kept.
    """
    times = np.cumsum(rr)
    n = len(rr)
    keep = np.ones(n, np.bool_)
    p_miss = rng.uniform(0.005, 0.04)
    starts = np.flatnonzero(rng.random(n) < p_miss)
    for s in starts:
        keep[s : s + (int(rng.integers(2, 4)) if rng.random() < 0.2 else 1)] = False
    keep[-1] = True
    beats = times[keep]
    p_double = rng.uniform(0.003, 0.03)
    doubled = beats[rng.random(len(beats)) < p_double] + rng.uniform(0.04, 0.2)
    beats = np.sort(np.r_[beats, doubled])
    total = times[-1]
    bursts = rng.poisson(rng.uniform(0.5, 2) * total / 600)
    for start in rng.uniform(0, total, bursts):
        stop = start + rng.uniform(3, 15)
        rate = rng.uniform(0.6, 1.6) / float(np.median(rr))
        noise = start + np.cumsum(rng.exponential(1 / rate, int(rate * (stop - start) * 2) + 2))
        noise = noise[noise < stop]
        beats = np.sort(np.r_[beats[(beats < start) | (beats >= stop)], noise])
    beats = beats[beats <= total]
    out = np.diff(np.r_[0.0, beats])
    return np.asarray(out[out > 0.02])


def g_background(kind: str, n: int, rng: Rng) -> FloatArray:
    """Family G's non-AF rhythm of ``kind``."""
    return with_ectopy(kind, g_sinus(n, rng, young=kind == "sinus young"), rng, g_ectopy, g_geminy)


# ---- family H ------------------------------------------------------------------------------------


def _h_drift(n: int, rng: Rng, mean: float) -> FloatArray:
    """Per beat, the mean interval moved by activity ramps (+-5-20 % over 1-6 min) and a wander."""
    level = np.empty(n)
    i, value = 0, 0.0
    while i < n:
        beats = max(int(rng.uniform(60, 360) / mean), 2)
        target = rng.uniform(-0.2, 0.2) if rng.random() < 0.5 else rng.uniform(-0.05, 0.05)
        seg = np.linspace(value, target, beats)
        level[i : i + beats] = seg[: n - i]
        i, value = i + beats, target
    wander = lfilter([0.02], [1.0, -0.98], rng.normal(0, 1, n)) * rng.uniform(0.005, 0.02) / 0.07
    return np.asarray(mean * (1 + level + wander))


def h_sinus(n: int, rng: Rng, young: bool = False) -> FloatArray:
    """Sinus rhythm with activity drift and respiration phase-coupled to the beats (module docstring)."""
    if young:
        child = rng.random() < 0.5
        hr = rng.uniform(75, 120) if child else rng.uniform(42, 62)
        breaths = rng.uniform(18, 40) if child else rng.uniform(8, 16)
        rsa = rng.uniform(0.04, 0.15)
    else:
        hr = rng.uniform(55, 100)
        breaths = rng.uniform(10, 22)
        rsa = rng.uniform(0.005, 0.04)
    base = _h_drift(n, rng, 60.0 / hr)
    per_breath = hr / breaths  # beats per breath before coupling
    coupling = rng.uniform(0.3, 0.9)  # how strongly a breath's length locks to a whole number of beats
    harmonic = rng.uniform(0.0, 0.5)
    noise = rng.normal(0, rng.uniform(0.002, 0.012), n)
    rr = np.empty(n)
    phase, depth, second = rng.uniform(0, 1), 1.0, harmonic
    length = per_breath
    for i in range(n):
        wave = np.sin(2 * np.pi * phase) + second * np.sin(4 * np.pi * phase + 1.0)
        rr[i] = base[i] * (1 + rsa * depth * wave / (1 + harmonic)) + noise[i]
        phase += 1.0 / length
        if phase >= 1.0:  # a new breath: its length in beats, drawn towards a whole number
            phase -= 1.0
            free = per_breath * float(np.exp(rng.normal(0, 0.15)))
            length = max((1 - coupling) * free + coupling * max(round(free), 2), 1.6)
            depth = float(np.clip(rng.normal(1, 0.25), 0.3, 1.8))
            second = harmonic * rng.uniform(0.5, 1.5)
    return np.asarray(np.clip(rr, 0.3, 2.5))


def _h_turbulence(rr: FloatArray, start: int, rng: Rng) -> None:
    """Heart-rate turbulence in place: ~3 cycles 1-4 % shorter, then ~10 cycles 1-5 % longer."""
    early, late = rng.uniform(0.01, 0.04), rng.uniform(0.01, 0.05)
    for k in range(13):
        if start + k >= len(rr):
            return
        rr[start + k] *= 1 - early if k < 3 else 1 + late * np.sin(np.pi * (k - 2) / 11)


def h_ectopy(rr: FloatArray, rng: Rng, rate: float) -> FloatArray:
    """Premature beats of fixed coupling time: ventricular with turbulence, atrial, escapes, runs."""
    rr = rr.copy()
    coupling_s = float(np.median(rr)) * rng.uniform(0.55, 0.8)
    out: list[float] = []
    i = 0
    while i < len(rr) - 16:
        if rng.random() >= rate:
            out.append(float(rr[i]))
            i += 1
            continue
        cycle = float(rr[i])
        c = min(coupling_s * rng.normal(1, 0.03), 0.9 * cycle)
        kind = rng.random()
        if kind < 0.5:  # ventricular: compensatory pause, then turbulence
            out += [c, 2 * cycle - c]
            _h_turbulence(rr, i + 2, rng)
            i += 2
        elif kind < 0.8:  # atrial: non-compensatory pause
            out += [c, cycle * rng.uniform(1.05, 1.4)]
            i += 2
        elif kind < 0.9:  # a late junctional escape beat
            out.append(cycle * rng.uniform(1.15, 1.35))
            i += 1
        else:  # a run of 3-5 at 0.55-0.7 of the cycle, then a pause
            k = int(rng.integers(3, 6))
            out += list(cycle * rng.uniform(0.55, 0.7) * rng.normal(1, 0.03, k))
            out.append(cycle * rng.uniform(1.1, 1.5))
            i += 2
    out += list(rr[i:])
    return np.asarray(out)


def h_geminy(rr: FloatArray, rng: Rng, every: int) -> FloatArray:
    """Bigeminy / trigeminy of fixed coupling time with turbulence, broken by a few sinus beats."""
    rr = rr.copy()
    coupling_s = float(np.median(rr)) * rng.uniform(0.55, 0.8)
    ventricular = rng.random() < 0.6
    out: list[float] = []
    i, until_break = 0, int(rng.integers(20, 200))
    while i < len(rr) - 1:
        if until_break <= 0:
            k = int(rng.integers(2, 6))
            out += list(rr[i : i + k])
            i += k
            until_break = int(rng.integers(20, 200))
            continue
        for _ in range(every - 2):
            if i < len(rr):
                out.append(float(rr[i]))
                i += 1
        if i + 1 >= len(rr):
            break
        cycle = float(rr[i])
        c = min(coupling_s * rng.normal(1, 0.02), 0.9 * cycle)
        pause = 2 * cycle - c if ventricular else cycle * rng.uniform(1.05, 1.3)
        out += [c, pause]
        if ventricular:
            _h_turbulence(rr, i + 2, rng)
        i += 2
        until_break -= every
    out += list(rr[i:])
    return np.asarray(out)


def h_af(n: int, rng: Rng, low: bool) -> FloatArray:
    """AF in regimes of their own serial correlation and variability, heavy tails, a rate trend."""
    if low:
        hr, cv = rng.uniform(50, 100), rng.uniform(0.06, 0.12)
    else:
        hr, cv = rng.uniform(60, 160), rng.uniform(0.10, 0.30)
    mean = 60.0 / hr
    dof = rng.uniform(4, 10)
    z = np.empty(n)
    scale = np.empty(n)
    i = 0
    while i < n:
        beats = max(int(rng.uniform(20, 180) / mean), 10)
        rho = rng.uniform(-0.6, 0.5)
        t = rng.standard_t(dof, beats + 20) / np.sqrt(dof / (dof - 2))
        seg = lfilter([np.sqrt(1 - rho * rho)], [1.0, -rho], t)[20:]
        z[i : i + beats] = seg[: n - i]
        scale[i : i + beats] = rng.uniform(0.7, 1.3)
        i += beats
    trend = np.linspace(0, rng.uniform(-0.3, 0.3) * (n * mean) / 900, n)  # +-30 % over 15 min
    wander = lfilter([0.01], [1.0, -0.99], rng.normal(0, 1, n)) * rng.uniform(0.01, 0.04) / 0.07
    rr = mean * (1 + trend + wander) * (1 + cv * scale * z)
    return np.asarray(np.clip(rr, 0.25, 2.5))


def h_errors(rr: FloatArray, rng: Rng) -> FloatArray:
    """A PPG's errors: pulse-timing jitter on every beat, runs of missed beats, false peaks in motion."""
    times = np.cumsum(rr)
    n = len(rr)
    keep = np.ones(n, np.bool_)
    for s in np.flatnonzero(rng.random(n) < rng.uniform(0.005, 0.03) / 2):
        keep[s : s + int(rng.integers(1, 5))] = False
    keep[-1] = True
    beats = times[keep] + rng.normal(0, rng.uniform(0.005, 0.025), keep.sum())
    gaps = np.diff(np.r_[0.0, times])
    extra = np.flatnonzero(rng.random(n) < rng.uniform(0.002, 0.01))
    false_peaks = times[extra] - gaps[extra] * rng.uniform(0.3, 0.7, len(extra))
    beats = np.sort(np.r_[beats, false_peaks])
    beats = beats[(beats > 0) & (beats <= times[-1] + 0.1)]
    out = np.diff(np.r_[0.0, beats])
    return np.asarray(out[out > 0.02])


def h_background(kind: str, n: int, rng: Rng) -> FloatArray:
    """Family H's non-AF rhythm of ``kind``."""
    return with_ectopy(kind, h_sinus(n, rng, young=kind == "sinus young"), rng, h_ectopy, h_geminy)


# ---- family I ------------------------------------------------------------------------------------


def i_sinus(n: int, rng: Rng, young: bool = False) -> FloatArray:
    """Respiration in time through a vagal low-pass on the period, a Mayer wave, a wander (docstring)."""
    if young:
        hr, breaths, rsa = rng.uniform(45, 90), rng.uniform(8, 30), rng.uniform(0.05, 0.18)
    else:
        hr, breaths, rsa = rng.uniform(55, 100), rng.uniform(10, 22), rng.uniform(0.005, 0.04)
    mean = 60.0 / hr
    dt = 0.05
    steps = int(n * mean * 1.3 / dt) + 200
    lengths = 60.0 / breaths * np.exp(rng.normal(0, rng.uniform(0.05, 0.3), steps // 20 + 10))
    depth = np.clip(rng.normal(1, 0.2, len(lengths)), 0.3, 1.8)
    edges = np.cumsum(lengths)
    t = np.arange(steps) * dt
    k = np.minimum(np.searchsorted(edges, t), len(edges) - 1)
    start = np.where(k > 0, edges[np.maximum(k - 1, 0)], 0.0)
    resp = np.sin(2 * np.pi * (t - start) / lengths[k]) * depth[k]
    tau = rng.uniform(0.3, 1.2)
    vagal = lfilter([dt / tau], [1.0, dt / tau - 1.0], resp)
    vagal /= max(float(np.std(vagal)) * np.sqrt(2), 1e-9)
    mayer = np.sin(2 * np.pi * rng.uniform(0.08, 0.12) * t + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.005, 0.02)
    wander = lfilter([0.002], [1.0, -0.998], rng.normal(0, 1, steps)) * rng.uniform(0.01, 0.03) / 0.032
    period = mean * (1 + rsa * vagal + mayer + wander)
    rr = np.empty(n)
    now = 0.0
    for i in range(n):
        j = min(int(now / dt), steps - 1)
        rr[i] = period[j] + rng.normal(0, 0.003)
        now += rr[i]
    return np.asarray(np.clip(rr, 0.3, 2.5))


def i_ectopy(rr: FloatArray, rng: Rng, rate: float) -> FloatArray:
    """Ventricular (compensatory, 10 % interpolated) and atrial (reset) premature beats, pairs 1 in 10."""
    out: list[float] = []
    coupling = rng.uniform(0.55, 0.8)
    i = 0
    while i < len(rr) - 3:
        cycle = float(rr[i])
        if rng.random() >= rate:
            out.append(cycle)
            i += 1
            continue
        c = cycle * coupling * rng.normal(1, 0.03)
        pair = rng.random() < 0.1
        if rng.random() < 0.5:  # ventricular
            if rng.random() < 0.1:  # interpolated: the cycle split, no pause
                out += [c, cycle - c + 0.02]
                i += 1
                continue
            extra = [c * rng.uniform(0.9, 1.05)] if pair else []
            out += [c, *extra, 2 * cycle - c]
        else:  # atrial: the sinus node reset
            extra = [c * rng.uniform(0.9, 1.05)] if pair else []
            out += [c, *extra, cycle * rng.uniform(1.0, 1.25)]
        i += 2
    out += list(rr[i:])
    return np.asarray(out)


def i_geminy(rr: FloatArray, rng: Rng, every: int) -> FloatArray:
    """Bigeminy / trigeminy with 1-4 % coupling jitter, in runs of 1-8 min between sinus stretches."""
    coupling = rng.uniform(0.55, 0.8)
    jitter = rng.uniform(0.01, 0.04)
    ventricular = rng.random() < 0.6
    out: list[float] = []
    i, mean = 0, float(np.mean(rr))
    on = rng.random() < 0.7
    left = int(rng.uniform(60, 480) / mean)
    while i < len(rr) - every:
        if left <= 0:
            on = not on
            left = int((rng.uniform(60, 480) if on else rng.uniform(20, 120)) / mean)
        if not on:
            out.append(float(rr[i]))
            i += 1
            left -= 1
            continue
        out += [float(x) for x in rr[i : i + every - 2]]
        i += every - 2
        cycle = float(rr[i])
        c = cycle * coupling * rng.normal(1, jitter)
        out += [c, 2 * cycle - c if ventricular else cycle * rng.uniform(1.0, 1.2)]
        i += 2
        left -= every
    out += list(rr[i:])
    return np.asarray(out)


def _i_node(n: int, rng: Rng, refractory: float) -> FloatArray:
    """Ventricular intervals from an AV node fed by fibrillating atria (Lian et al. 2006, simplified)."""
    atrial_mean, atrial_cv = rng.uniform(0.09, 0.18), rng.uniform(0.1, 0.25)
    shape = 1 / atrial_cv**2
    recovery = rng.uniform(0.1, 0.3)  # refractory restitution time constant (s)
    conceal = rng.uniform(0.1, 0.4)  # share of the remaining refractoriness a blocked impulse adds
    delay_min, delay_span, delay_tau = 0.08, rng.uniform(0.05, 0.15), rng.uniform(0.1, 0.3)
    t, last, block_until, previous = 0.0, -refractory, 0.0, 0.0
    out = np.empty(n)
    k = 0
    while k < n:
        cycle = rng.gamma(shape, atrial_mean / shape)
        t += cycle
        if t < block_until:  # blocked, but concealed: it re-excites part of the node, prolonging refractoriness
            block_until += conceal * cycle
            continue
        since = t - last
        # the conduction delay recovers slowly: a short cycle lengthens the next delay (alternation)
        delay = delay_min + delay_span * np.exp(-max(since - refractory, 0.0) / delay_tau)
        out[k] = t + delay - previous
        previous, last = t + delay, t
        block_until = t + refractory * (1 - 0.3 * np.exp(-since / recovery))  # restitution
        k += 1
    out[0] = float(np.median(out[1:])) if n > 1 else out[0]
    return out


def i_af(n: int, rng: Rng, low: bool) -> FloatArray:
    """AF from an AV-node model, its deviations scaled to the episode's CV (module docstring)."""
    if low:
        hr, cv, refractory = rng.uniform(50, 95), rng.uniform(0.08, 0.12), rng.uniform(0.45, 0.8)
    else:
        hr, cv, refractory = rng.uniform(70, 150), rng.uniform(0.15, 0.30), rng.uniform(0.25, 0.45)
    raw = _i_node(n, rng, refractory)
    z = (raw - raw.mean()) / max(float(raw.std()), 1e-9)
    mean = 60.0 / hr
    times = np.cumsum(np.full(n, mean))
    resp = np.sin(2 * np.pi * times / rng.uniform(3, 6)) * rng.uniform(0.005, 0.02)
    wander = lfilter([0.01], [1.0, -0.99], rng.normal(0, 1, n)) * rng.uniform(0.01, 0.03) / 0.07
    rr = mean * (1 + resp + wander + cv * z)
    return np.asarray(np.clip(rr, 0.25, 2.5))


def _i_strap(rr: FloatArray, rng: Rng) -> FloatArray:
    """A chest strap: dry-electrode misses at the start, T waves double-counted in bursts, 1/1024 s."""
    times = np.cumsum(rr)
    n = len(rr)
    miss = rng.uniform(0.02, 0.08) * np.exp(-times / 300.0)
    keep = rng.random(n) >= miss
    keep[-1] = True
    beats = times[keep] + rng.normal(0, rng.uniform(0.001, 0.004), keep.sum())
    burst = np.zeros(n, np.bool_)
    for s in np.flatnonzero(rng.random(n) < 0.002):
        burst[s : s + int(rng.integers(5, 30))] = True
    gaps = np.diff(np.r_[0.0, times])
    doubled = np.flatnonzero(burst & (rng.random(n) < 0.5))
    beats = np.sort(np.r_[beats, times[doubled] - gaps[doubled] * rng.uniform(0.55, 0.7, len(doubled))])
    out = np.diff(np.r_[0.0, beats])
    return np.asarray(np.round(out[out > 0.02] * 1024) / 1024)


def _i_ppg(rr: FloatArray, rng: Rng) -> FloatArray:
    """A wrist PPG: pulse deficit after short cycles, motion bursts, jitter, beats sampled at 25-64 Hz."""
    n = len(rr)
    recent = lfilter([0.1], [1.0, -0.9], rr, zi=[0.9 * rr[0]])[0]
    short = rr < 0.75 * np.r_[rr[0], recent[:-1]]
    keep = ~(short & (rng.random(n) < rng.uniform(0.3, 0.8)))
    motion = np.zeros(n, np.bool_)
    for s in np.flatnonzero(rng.random(n) < 0.003):
        motion[s : s + int(rng.integers(10, 40))] = True
    keep &= ~(motion & (rng.random(n) < rng.uniform(0.1, 0.2)))
    keep[-1] = True
    beats = np.cumsum(rr)[keep] + rng.normal(0, rng.uniform(0.01, 0.03), keep.sum())
    fs = rng.uniform(25, 64)
    beats = np.sort(np.round(beats * fs) / fs)
    out = np.diff(np.r_[0.0, beats])
    return np.asarray(out[out > 0.02])


def i_errors(rr: FloatArray, rng: Rng) -> FloatArray:
    """Half a chest strap's errors, half a wrist PPG's (module docstring)."""
    return _i_strap(rr, rng) if rng.random() < 0.5 else _i_ppg(rr, rng)


def i_background(kind: str, n: int, rng: Rng) -> FloatArray:
    """Family I's non-AF rhythm of ``kind``."""
    return with_ectopy(kind, i_sinus(n, rng, young=kind == "sinus young"), rng, i_ectopy, i_geminy)


# ---- family J ------------------------------------------------------------------------------------


def j_sinus(n: int, rng: Rng, young: bool = False) -> FloatArray:
    """Respiration as a frequency-modulated sinusoid in time, a slow AR(1) wander, 1-5 ms beat noise."""
    if young:
        hr, rsa = rng.uniform(50, 95), rng.uniform(0.06, 0.2)
    else:
        hr, rsa = rng.uniform(55, 105), rng.uniform(0.003, 0.03)
    mean = 60.0 / hr
    seconds = n * mean * 1.3 + 60
    dt = 0.1
    steps = int(seconds / dt)
    rate = rng.uniform(8, 24) / 60 * np.exp(lfilter([0.01], [1.0, -0.99], rng.normal(0, 1, steps)) * 2.0)
    phase = 2 * np.pi * np.cumsum(rate) * dt
    depth = 1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.005, 0.02) * np.arange(steps) * dt)
    wander = lfilter([0.003], [1.0, -0.997], rng.normal(0, 1, steps)) * rng.uniform(0.01, 0.04) / 0.055
    period = mean * (1 + rsa * depth * np.sin(phase) + wander)
    rr = np.empty(n)
    now = 0.0
    noise = rng.uniform(0.001, 0.005)
    for i in range(n):
        rr[i] = period[min(int(now / dt), steps - 1)] + rng.normal(0, noise)
        now += rr[i]
    return np.asarray(np.clip(rr, 0.3, 2.5))


def j_af(n: int, rng: Rng, low: bool) -> FloatArray:
    """AF from one of three other families' laws (G's, H's serially correlated regimes, I's AV node)."""
    make = (g_af, h_af, i_af)[int(rng.integers(0, 3))]
    return make(n, rng, low)


def j_errors(rr: FloatArray, rng: Rng) -> FloatArray:
    """A wrist PPG with heavy-tailed, motion- and rate-dependent pulse-timing error (module docstring)."""
    times = np.cumsum(rr)
    n = len(rr)
    keep = rng.random(n) >= rng.uniform(0.005, 0.03)
    keep[-1] = True
    dof = rng.uniform(2.5, 5)
    scale = rng.uniform(0.006, 0.025)
    motion = np.exp(lfilter([0.02], [1.0, -0.98], rng.normal(0, 1, n)) * rng.uniform(0.5, 2.5))
    faster = (np.median(rr) / np.maximum(rr, 0.25)) ** 0.5
    err = rng.standard_t(dof, n) / np.sqrt(dof / (dof - 2)) * scale * motion * faster
    beats = times[keep] + err[keep]
    extra = np.flatnonzero(rng.random(n) < rng.uniform(0.002, 0.01))
    gaps = np.diff(np.r_[0.0, times])
    beats = np.r_[beats, times[extra] - gaps[extra] * rng.uniform(0.3, 0.7, len(extra))]
    fs = rng.uniform(20, 50)
    beats = np.sort(np.round(beats * fs) / fs)
    beats = beats[(beats > 0) & (beats <= times[-1] + 0.1)]
    out = np.diff(np.r_[0.0, beats])
    return np.asarray(out[out > 0.02])


def j_background(kind: str, n: int, rng: Rng) -> FloatArray:
    """Family J's non-AF rhythm of ``kind`` (E's parasystole and rule-of-bigeminy ectopy)."""
    return with_ectopy(kind, j_sinus(n, rng, young=kind == "sinus young"), rng, e_ectopy, e_geminy)


FAMILIES: dict[str, Family] = {
    "A": (a_background, a_af, a_errors),
    "B": (b_background, b_af, b_errors),
    "C": (c_background, c_af, c_errors),
    "D": (d_background, d_af, d_errors),
    "E": (e_background, e_af, e_errors),
    "F": (f_background, f_af, f_errors),
    "G": (g_background, g_af, g_errors),
    "H": (h_background, h_af, h_errors),
    "I": (i_background, i_af, i_errors),  # tenth round: held out, never tuned on
    "J": (j_background, j_af, j_errors),  # twelfth round: held out, committed before any run on it
    # training data only (benchmarks/train_af.py, family A's training seeds): never evaluated
    "A-augmented": (a_background_augmented, a_af_correlated, a_errors),
}


def _seconds(rr: FloatArray, seconds: float) -> FloatArray:
    return rr[: int(np.searchsorted(np.cumsum(rr), seconds))]


def recording(
    family: str,
    background: str,
    af_kind: str | None,
    errors: bool,
    minutes: float,
    episode_min: tuple[float, float],
    rng: Rng,
) -> Recording:
    """``minutes`` of ``background`` rhythm; with ``af_kind``, one AF paroxysm in its middle part."""
    make_bg, make_af, make_err = FAMILIES[family]
    total = minutes * 60
    n = int(total / 0.3) + 10
    during: FloatArray | None = None
    if af_kind is None:
        rr = _seconds(make_bg(background, n, rng), total)
        episodes: tuple[tuple[float, float], ...] = ()
    else:
        length = rng.uniform(*episode_min) * 60
        start = rng.uniform(0.25, 0.75) * (total - length)
        before = _seconds(make_bg(background, n, rng), start)
        during = _seconds(make_af(n, rng, af_kind == "AF low variability"), length)
        after = _seconds(make_bg(background, n, rng), total - before.sum() - during.sum())
        rr = np.concatenate([before, during, after])
        episodes = ((float(before.sum()), float(before.sum() + during.sum())),)
    if errors:
        rr = make_err(rr, rng)
    return Recording(background, af_kind, errors, rr, np.cumsum(rr), episodes, during)


def cohort(family: str, per_cell: int, minutes: float, episode_min: tuple[float, float], seed: int) -> list[Recording]:
    """Every background x (no AF, AF, low-variability AF) x (clean, beat errors), ``per_cell`` each."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(per_cell):
        for background in BACKGROUNDS:
            for af_kind in (None, *AF_KINDS):
                for errors in (False, True):
                    out.append(recording(family, background, af_kind, errors, minutes, episode_min, rng))
    return out


JITTER_MAX = 0.03  # s: the "Xj" families' beat-time jitter, uniform 0-30 ms per recording


def jittered_cohort(family: str, per_cell: int, minutes: float, episode_min: tuple[float, float],
                    seed: int) -> list[Recording]:
    """``cohort``, and for family ``Xj``: family X's cohort with Gaussian beat-time jitter of one SD
    per recording, uniform 0-``JITTER_MAX`` (a device's timing error, constant over the recording;
    issue 17, twelfth round)."""
    if not family.endswith("j"):
        return cohort(family, per_cell, minutes, episode_min, seed)
    rng = np.random.default_rng([seed, 12])
    out = []
    for rec in cohort(family[:-1], per_cell, minutes, episode_min, seed):
        e = rng.normal(0, rng.uniform(0, JITTER_MAX), len(rec.rr) + 1)
        rr = np.clip(rec.rr + e[1:] - e[:-1], 0.2, None)
        out.append(replace(rec, rr=rr, t=np.cumsum(rr)))
    return out
