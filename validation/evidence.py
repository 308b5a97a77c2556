"""Confidence intervals for gated figures, so that a verdict rests on evidence, not on a point estimate.

Both models score the same items, windows and tokens, so every interval is of paired differences:
- accuracy drops: the normal interval of the mean per-item difference (baseline - candidate, each
  0 or 1), as lm-evaluation-harness reports a standard error;
- perplexity increases: a percentile bootstrap over scored units (a window, or a block of tokens),
  each unit carrying the sum of its tokens' NLL differences and its token count.
"""

import math
from statistics import NormalDist

import numpy as np


def z_score(confidence: float) -> float:
    """The two-sided normal quantile: 1.96 for 0.95."""
    return NormalDist().inv_cdf((1 + confidence) / 2)


def paired_mean(diffs: list[int] | list[float], confidence: float) -> tuple[float, float, float]:
    """Mean of per-item differences and its normal confidence interval: (mean, low, high)."""
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
    half = z_score(confidence) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def increase(nll_diff: float, tokens: int) -> float:
    """Relative perplexity increase from summed NLL differences: ppl_candidate / ppl_baseline - 1."""
    return math.exp(nll_diff / tokens) - 1


def bootstrap_increases(nll_diffs: list[float], tokens: list[int], resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples,) relative perplexity increases, each over units drawn with replacement."""
    diffs, counts = np.asarray(nll_diffs, dtype=np.float64), np.asarray(tokens, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, len(diffs), size=(resamples, len(diffs)))  # (R, U)
    return np.expm1(diffs[draws].sum(axis=1) / counts[draws].sum(axis=1))


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)
