"""Verdicts from a few seeds: a paired comparison of two recipes trained on the same seeds.

With n paired seeds the exact sign-flip permutation test cannot give a two-sided p below
2 / 2^n (0.25 at n = 3, 0.0625 at n = 5), and a t-test has n - 1 degrees of freedom. So a small
study can show an effect, or fail to; it cannot show that there is none.
"""
from __future__ import annotations

import itertools
import math
import statistics

__all__ = ["paired_comparison"]


def paired_comparison(a: list[float], b: list[float], confidence: float = 0.95) -> dict:
    """``a`` minus ``b``, paired by position (one seed each): the mean difference, the paired
    t-test, the exact permutation p-value (every sign flip of the differences), and the
    ``confidence`` interval of the mean difference from the t distribution."""
    from scipy import stats

    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two equally long lists of at least 2 paired values, got "
                         f"{len(a)} and {len(b)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    d = [x - y for x, y in zip(a, b)]
    n, mean = len(d), statistics.mean(d)
    sd = statistics.stdev(d)
    se = sd / math.sqrt(n)
    if se > 0:
        t = mean / se
        p_t = float(2 * stats.t.sf(abs(t), n - 1))
    else:
        t, p_t = (math.inf if mean else 0.0), (0.0 if mean else 1.0)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    flips = [sum(s * x for s, x in zip(signs, d)) / n
             for signs in itertools.product((1, -1), repeat=n)]
    p_perm = sum(abs(m) >= abs(mean) - 1e-12 for m in flips) / len(flips)
    return {"n": n, "mean": mean, "sd": sd, "t": t, "df": n - 1, "p_t": p_t, "p_perm": p_perm,
            "p_perm_min": 2 / 2 ** n, "ci": (mean - half, mean + half), "confidence": confidence,
            "diffs": d}
