"""The compute-optimal envelope of a grid and two fits of quality against compute on it.

The envelope is the best quality reached at or below each compute level; its points are
the runs that raise that best (a run that costs more and scores less than a cheaper one is
not compute-optimal). On those points, with C the training FLOPs:

* log-linear, as the HSTU paper's figure: ``q = a + b ln C`` (least squares);
* saturating power law: ``q = q_inf - A (C / C0)^(-alpha)`` with C0 the envelope's least
  compute, ``alpha > 0``: for a fixed alpha the fit is linear in (q_inf, A), so alpha is
  found by a bounded one-dimensional search over ln alpha and the rest by least squares.

R² is on the envelope points. ``range`` is the compute interval they span: the only one
where either fit is evidence of anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

ALPHA_RANGE = (1e-3, 3.0)  # the saturating fit's search interval for alpha
SEARCH_STEPS = 400


def envelope(flops: Sequence[float], quality: Sequence[float]) -> list[int]:
    """Indices of the envelope's points, by increasing compute: each run whose quality is
    above every run's at or below its compute (ties in compute: the better run)."""
    order = sorted(range(len(flops)), key=lambda i: (flops[i], -quality[i]))
    points: list[int] = []
    best = -math.inf
    for i in order:
        if quality[i] > best:
            points.append(i)
            best = quality[i]
    return points


def r_squared(y: np.ndarray, predicted: np.ndarray) -> float:
    total = float(((y - y.mean()) ** 2).sum())
    residual = float(((y - predicted) ** 2).sum())
    return 1.0 - residual / total if total > 0 else (1.0 if residual == 0 else 0.0)


def fit_log_linear(flops: Sequence[float], quality: Sequence[float]) -> dict[str, float] | None:
    """``q = a + b ln C`` by least squares; None with fewer than 2 distinct computes."""
    x, y = np.log(np.asarray(flops, np.float64)), np.asarray(quality, np.float64)
    if np.unique(x).size < 2:
        return None
    b, a = np.polyfit(x, y, 1)
    return {"a": float(a), "b": float(b), "r2": r_squared(y, a + b * x)}


def _saturating_at(alpha: float, z: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(q_inf, A, squared error) of the least-squares fit at a fixed alpha; z = C / C0."""
    x = z**-alpha
    slope, q_inf = np.polyfit(x, y, 1)
    error = float(((y - (q_inf + slope * x)) ** 2).sum())
    return float(q_inf), float(-slope), error


def fit_saturating(flops: Sequence[float], quality: Sequence[float]) -> dict[str, float] | None:
    """``q = q_inf - A (C / C0)^(-alpha)``; None with fewer than 3 distinct computes or
    when no rising curve (A > 0) fits."""
    c = np.asarray(flops, np.float64)
    y = np.asarray(quality, np.float64)
    if np.unique(c).size < 3:
        return None
    c0 = float(c.min())
    z = c / c0
    lo, hi = (math.log(a) for a in ALPHA_RANGE)
    grid = np.exp(np.linspace(lo, hi, SEARCH_STEPS))
    errors = [_saturating_at(a, z, y)[2] for a in grid]
    best = int(np.argmin(errors))
    # refine between the neighbours of the best grid point (golden section on ln alpha)
    left, right = math.log(grid[max(best - 1, 0)]), math.log(grid[min(best + 1, grid.size - 1)])
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        m1, m2 = right - ratio * (right - left), left + ratio * (right - left)
        if _saturating_at(math.exp(m1), z, y)[2] <= _saturating_at(math.exp(m2), z, y)[2]:
            right = m2
        else:
            left = m1
    alpha = math.exp((left + right) / 2)
    q_inf, amplitude, _ = _saturating_at(alpha, z, y)
    if amplitude <= 0:
        return None
    predicted = q_inf - amplitude * z**-alpha
    return {
        "q_inf": q_inf,
        "A": amplitude,
        "alpha": alpha,
        "C0": c0,
        "r2": r_squared(y, predicted),
        # alpha at the search's lower end: the points are straight in ln C (as alpha -> 0
        # the law tends to a + b ln C), no saturation within the range, q_inf meaningless
        "alpha_at_bound": alpha <= ALPHA_RANGE[0] * 1.01,
    }


def envelope_fits(flops: Sequence[float], quality: Sequence[float]) -> dict[str, Any]:
    """The envelope of (flops, quality) and both fits on it, JSON-ready."""
    points = envelope(flops, quality)
    env_c = [float(flops[i]) for i in points]
    env_q = [float(quality[i]) for i in points]
    return {
        "envelope": points,
        "envelope_flops": env_c,
        "envelope_quality": env_q,
        "range": [min(env_c), max(env_c)] if env_c else None,
        "max_flops": float(max(flops)) if len(flops) else None,
        "log_linear": fit_log_linear(env_c, env_q),
        "saturating": fit_saturating(env_c, env_q),
    }
