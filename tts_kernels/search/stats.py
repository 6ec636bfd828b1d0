"""Uncertainty of the main job's accuracies: one rule per kind of interval.

* :func:`accuracy_interval` -- every accuracy the main job reports (a share of
  problems solved, k of n) gets a 95% **Wilson score interval** (:func:`wilson`):
  closed-form, deterministic, and sensible at 0/n and n/n, where the normal
  approximation collapses to a zero-width interval.
* :func:`paired_difference` -- the difference of two accuracies measured on the
  *same* problems (the headline: the small policy with a strategy against the
  larger policy sampled once) gets a **paired bootstrap** interval over problems
  (:func:`bootstrap_mean` of the per-problem differences; percentile method, a
  fixed seed, :data:`RESAMPLES` resamples). Pairing keeps the problem-to-problem
  difficulty that both runs share out of the interval.

* :func:`splits` -- the calibration / held-out splits on which the main job chooses
  and scores its compute-optimal strategy (cross-fitting: each problem is held out
  exactly once, and scored by a choice made without it).

The intervals treat the problems as the random sample; the sampling noise of the policy
on a fixed problem is inside each problem's 0/1 outcome.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

CONFIDENCE = 0.95
#: the standard-normal quantile of a two-sided 95% interval
Z95 = 1.959963984540054
RESAMPLES = 10_000
SEED = 0
ACCURACY_METHOD = "Wilson score interval, 95%, over problems"


def difference_method(seed: int = SEED, resamples: int = RESAMPLES) -> str:
    """How :func:`paired_difference` computes its interval (stated in the main job's JSON)."""
    return f"paired bootstrap over problems, 95% percentile interval, {resamples} resamples, seed {seed}"


def wilson(k: int, n: int, z: float = Z95) -> Tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n``.

    Parameters
    ----------
    k : int or float
        Successes, ``0 <= k <= n`` (a float: summed per-unit shares, e.g. each problem's share of
        its runs, ``n`` being the units).
    n : int
        Trials, ``n >= 1``.
    z : float
        Standard-normal quantile (default: two-sided 95%).

    Returns
    -------
    (lo, hi) : tuple of float
        ``0 <= lo <= k/n <= hi <= 1``; ``lo == 0`` at ``k == 0`` and ``hi == 1`` at ``k == n``.
    """
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"wilson needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * ((p * (1 - p) / n + z2 / (4 * n * n)) ** 0.5) / (1 + z2 / n)
    lo, hi = centre - half, centre + half
    # exact at the edges (the formula gives them up to rounding)
    return (0.0 if k == 0 else max(0.0, min(lo, p)), 1.0 if k == n else min(1.0, max(hi, p)))


def accuracy_interval(outcomes: Sequence[bool]) -> Optional[dict]:
    """The interval of every reported accuracy: ``{"point", "lo", "hi"}`` (Wilson, 95%); None for no problems.

    Parameters
    ----------
    outcomes : sequence of bool
        Per problem: solved or not.
    """
    n = len(outcomes)
    if n == 0:
        return None
    k = sum(bool(x) for x in outcomes)
    lo, hi = wilson(k, n)
    return {"point": k / n, "lo": lo, "hi": hi}


def bootstrap_mean(values: Sequence[float], seed: int = SEED, resamples: int = RESAMPLES,
                   confidence: float = CONFIDENCE) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling the values with replacement).

    Parameters
    ----------
    values : sequence of float
        One value per problem (at least one).
    seed : int
        Seed of the resampling (the same seed gives the same interval).
    resamples : int
        Bootstrap resamples.
    confidence : float
        Coverage of the two-sided interval.

    Returns
    -------
    (lo, hi) : tuple of float
        Lower and upper percentiles of the resampled means: the ``(1 - confidence) / 2`` quantile
        rounded down to a resample and the ``(1 + confidence) / 2`` one rounded up.
    """
    if len(values) == 0:
        raise ValueError("bootstrap_mean needs at least one value")
    x = torch.tensor([float(v) for v in values], dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(x), (resamples, len(x)), generator=gen)
    means = x[idx].mean(dim=1)
    alpha = (1 - confidence) / 2
    lo = torch.quantile(means, alpha, interpolation="lower").item()
    hi = torch.quantile(means, 1 - alpha, interpolation="higher").item()
    return lo, hi


def paired_difference(a: Sequence[bool], b: Sequence[bool], seed: int = SEED,
                      resamples: int = RESAMPLES) -> dict:
    """Accuracy of ``a`` minus that of ``b`` on the same problems, with its paired bootstrap interval.

    Parameters
    ----------
    a, b : sequence of bool
        Per problem (same order, same length): solved by run ``a`` / run ``b``.
    seed, resamples
        As in :func:`bootstrap_mean`.

    Returns
    -------
    dict
        ``difference`` (a point estimate, the plain difference of the accuracies), ``lo``, ``hi``,
        ``zero_outside_interval`` (the difference is significant at this level) and ``method``.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference needs outcomes on the same problems, got {len(a)} and {len(b)}")
    diffs = [float(bool(x)) - float(bool(y)) for x, y in zip(a, b)]
    point = sum(diffs) / len(diffs)
    lo, hi = bootstrap_mean(diffs, seed=seed, resamples=resamples)
    return {"difference": point, "lo": lo, "hi": hi, "zero_outside_interval": lo > 0 or hi < 0,
            "method": difference_method(seed, resamples)}


def splits(n: int, folds: int = 2, seed: int = SEED) -> List[Tuple[List[int], List[int]]]:
    """Cross-fitting splits of problems ``0..n-1``: ``folds`` pairs of (calibration, held-out) indices.

    The problems are shuffled with ``seed`` and dealt into ``folds`` held-out parts of equal size
    (+-1); each part's calibration split is every other problem. So within a pair the two never
    overlap, the held-out parts partition the problems (each problem is held out exactly once),
    and every calibration split has at least ``n - ceil(n / folds)`` problems.

    Parameters
    ----------
    n : int
        Problems, ``n >= folds``.
    folds : int
        Parts, ``>= 2``.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    list of (calibration, held_out)
        Both sorted lists of problem indices.
    """
    if folds < 2 or n < folds:
        raise ValueError(f"splits needs folds >= 2 and at least one problem per fold, got n={n}, folds={folds}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    parts = [sorted(order[f::folds]) for f in range(folds)]
    return [(sorted(i for p in parts[:f] + parts[f + 1:] for i in p), held) for f, held in enumerate(parts)]
