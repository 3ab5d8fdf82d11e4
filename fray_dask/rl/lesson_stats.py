"""The statistics behind fray_dask.rl.curriculum: a lesson's reward record, its success rate (an
EMA), the plateau test (least squares with a Student-t p-value) and the sampling weights.
Pure Python and numpy: no scipy, no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "EMA_ALPHA",
    "EMA_PRIOR",
    "MAX_REWARDS",
    "LessonStats",
    "PerformanceStats",
    "is_plateaued",
    "sampling_weights",
    "slope_and_p_value",
    "smoothed_success",
    "student_t_two_sided_p",
]

MAX_REWARDS = 1000  # rewards kept per lesson and mode: memory stays bounded on long runs
EMA_ALPHA = 0.1
EMA_PRIOR = 0.5
CV_LIMIT = 0.1  # plateau: std / |mean| of the window must stay under this
P_VALUE_LIMIT = 0.1  # plateau: the slope's two-sided p-value must exceed this
NEAR_ZERO = 1e-6  # a window mean this close to 0 counts as 0 (relative measures are undefined)


def smoothed_success(
    rewards: Sequence[float], alpha: float = EMA_ALPHA, prior: float = EMA_PRIOR
) -> float:
    """The success rate of `rewards`: an exponential moving average of `reward > 0` started at
    `prior`, e_0 = prior, e_i = (1 - alpha) * e_(i-1) + alpha * [r_i > 0]; `prior` for no rewards.

    After [1, 0, 1]: 0.5 -> 0.55 -> 0.495 -> 0.5455. Computed in closed form,
    (1 - alpha)^n * prior + alpha * sum_i (1 - alpha)^(n - i) * [r_i > 0], which equals the loop.
    """
    successes = np.asarray(rewards, dtype=float) > 0
    n = len(successes)
    if n == 0:
        return float(prior)
    decay = (1.0 - alpha) ** np.arange(n - 1, -1, -1, dtype=float)
    return float((1.0 - alpha) ** n * prior + alpha * float(decay @ successes))


def student_t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with a whole number `df` >= 1 of degrees of freedom.

    Exact finite series of Abramowitz & Stegun 26.7.3 (odd df) and 26.7.4 (even df) for
    A(t|df) = P(|T| <= |t|), with theta = atan(|t| / sqrt(df)); the p-value is 1 - A.
    NaN for a NaN `t`, 0 for an infinite one.
    """
    if not isinstance(df, int | np.integer) or df < 1:
        raise ValueError(f"df must be a whole number >= 1, got {df!r}")
    t = abs(float(t))
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    cos, sin = math.cos(theta), math.sin(theta)
    cos2 = cos * cos
    if df % 2 == 1:
        # A = 2/pi * (theta + sin * (cos + 2/3 cos^3 + (2*4)/(3*5) cos^5 + ... up to cos^(df-2)))
        series, term = 0.0, cos
        for k in range(1, (df - 1) // 2 + 1):
            series += term
            term *= (2 * k) / (2 * k + 1) * cos2
        a = 2.0 / math.pi * (theta + sin * series) if df > 1 else 2.0 * theta / math.pi
    else:
        # A = sin * (1 + 1/2 cos^2 + (1*3)/(2*4) cos^4 + ... up to cos^(df-2))
        series, term = 0.0, 1.0
        for k in range(1, df // 2 + 1):
            series += term
            term *= (2 * k - 1) / (2 * k) * cos2
        a = sin * series
    return min(1.0, max(0.0, 1.0 - a))


def slope_and_p_value(values: Sequence[float]) -> tuple[float, float]:
    """The least-squares slope of `values` against 0, 1, 2, ... and the two-sided p-value of the
    t-test that the slope is 0 (as scipy.stats.linregress gives them).

    A constant series has slope 0 and p-value 1; a perfect line with a slope has p-value 0; two
    points leave no degree of freedom for the test: NaN.
    """
    y = np.asarray(values, dtype=float)
    n = len(y)
    if n < 2:
        raise ValueError(f"a slope needs at least 2 values, got {n}")
    x = np.arange(n, dtype=float) - (n - 1) / 2.0  # centred: sum(x) is exactly 0
    if np.ptp(y) == 0.0:
        return 0.0, 1.0
    sxx = float(x @ x)
    slope = float(x @ y) / sxx
    if n == 2:
        return slope, math.nan
    residuals = y - y.mean() - slope * x
    sse = float(residuals @ residuals)
    df = n - 2
    if sse == 0.0:
        return slope, 0.0 if slope != 0.0 else 1.0
    t = slope / math.sqrt(sse / df / sxx)
    return slope, student_t_two_sided_p(t, df)


def is_plateaued(rewards: Sequence[float], window: int, threshold: float) -> bool:
    """Whether the last `window` rewards have stopped changing (upstream Marin's rule). True only
    when there are at least `window` rewards and, over the last `window` of them, all of:
    |slope| / |mean| < `threshold` (the least-squares slope per reward, relative to the mean);
    std / |mean| < 0.1 (the coefficient of variation); both hold when |mean| < 1e-6; and the slope
    is not significant: its two-sided t-test p-value is > 0.1 or undefined (NaN).
    """
    if len(rewards) < window:
        return False
    recent = np.asarray(rewards[-window:], dtype=float)
    slope, p_value = slope_and_p_value(recent)
    mean = abs(float(recent.mean()))
    if mean > NEAR_ZERO:
        flat = abs(slope) / mean < threshold
        stable = float(recent.std()) / mean < CV_LIMIT
    else:
        flat = stable = True
    not_significant = math.isnan(p_value) or p_value > P_VALUE_LIMIT
    return flat and stable and not_significant


def sampling_weights(
    lessons: Mapping[str, tuple[float, int]], temperature: float, minimum: float
) -> dict[str, float]:
    """Sampling probabilities for `lessons` ({id: (success rate s, training samples n)}), in
    sorted id order.

    base = max(0, 4s - 4s^2) * (1 + exp(-0.01 n)): peaks at s = 0.5, 0 at s = 0 and s = 1, and
    up to doubled for lessons with few samples; then base ** (1 / temperature) (1: unchanged;
    above 1 flattens, below 1 sharpens); equal weights if every base is 0; normalised; each
    raised to at least `minimum`; renormalised (so a raised lesson ends slightly under `minimum`
    when the raise grew the total).
    """
    ids = sorted(lessons)
    if not ids:
        return {}
    bases = []
    for lesson_id in ids:
        success, samples = lessons[lesson_id]
        base = max(0.0, -4.0 * success * success + 4.0 * success)
        bases.append((base * (1.0 + math.exp(-0.01 * samples))) ** (1.0 / temperature))
    total = sum(bases)
    weights = [b / total for b in bases] if total > 0 else [1.0 / len(ids)] * len(ids)
    weights = [max(w, minimum) for w in weights]
    total = sum(weights)
    return {lesson_id: w / total for lesson_id, w in zip(ids, weights, strict=True)}


@dataclass
class PerformanceStats:
    """One lesson's rewards in one mode (training or eval): how many were ever reported, the last
    MAX_REWARDS of them, the step of the last report, and `success`, always equal to
    smoothed_success(reward_history) (the EMA over the kept rewards)."""

    total_samples: int = 0
    reward_history: list[float] = field(default_factory=list)
    last_update_step: int = -1
    success: float = EMA_PRIOR

    def add(self, rewards: Sequence[float], step: int) -> None:
        self.total_samples += len(rewards)
        self.reward_history = [*self.reward_history, *map(float, rewards)][-MAX_REWARDS:]
        self.success = smoothed_success(self.reward_history)
        self.last_update_step = step

    def to_json(self) -> dict[str, Any]:
        return {
            "total_samples": self.total_samples,
            "reward_history": self.reward_history,
            "last_update_step": self.last_update_step,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PerformanceStats:
        history = [float(r) for r in data["reward_history"]][-MAX_REWARDS:]
        return cls(
            total_samples=int(data["total_samples"]),
            reward_history=history,
            last_update_step=int(data["last_update_step"]),
            success=smoothed_success(history),
        )


@dataclass
class LessonStats:
    """A lesson's training and eval records."""

    training_stats: PerformanceStats = field(default_factory=PerformanceStats)
    eval_stats: PerformanceStats = field(default_factory=PerformanceStats)

    def to_json(self) -> dict[str, Any]:
        return {
            "training_stats": self.training_stats.to_json(),
            "eval_stats": self.eval_stats.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LessonStats:
        return cls(
            PerformanceStats.from_json(data["training_stats"]),
            PerformanceStats.from_json(data["eval_stats"]),
        )
