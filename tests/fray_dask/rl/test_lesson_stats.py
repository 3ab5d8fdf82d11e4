"""The curriculum's statistics: the success EMA, the Student-t p-value (against scipy), the plateau
test and the sampling weights. Pure: milliseconds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fray_dask.rl.lesson_stats import (
    MAX_REWARDS,
    PerformanceStats,
    is_plateaued,
    sampling_weights,
    slope_and_p_value,
    smoothed_success,
    student_t_two_sided_p,
)


def _ema_loop(rewards, alpha=0.1, prior=0.5):
    ema = prior
    for r in rewards:
        ema = (1 - alpha) * ema + alpha * (1.0 if r > 0 else 0.0)
    return ema


def test_success_is_an_ema_of_positive_rewards_from_a_prior_of_one_half():
    assert smoothed_success([]) == 0.5
    assert smoothed_success([1, 0, 1]) == pytest.approx(0.5455)  # 0.5 -> 0.55 -> 0.495 -> 0.5455
    rewards = [2.5, -1.0, 0.0, 0.3, 1e-9, -7.0] * 20  # only reward > 0 is a success
    assert smoothed_success(rewards) == pytest.approx(_ema_loop(rewards), abs=1e-12)


def test_a_record_keeps_the_last_rewards_and_its_success_is_the_ema_over_them():
    stats = PerformanceStats()
    stats.add([1.0] * 300, step=3)
    stats.add([0.0] * 600 + [1.0, 0.0] * 200, step=7)
    assert stats.total_samples == 1300
    assert len(stats.reward_history) == MAX_REWARDS
    assert stats.reward_history == ([0.0] * 600 + [1.0, 0.0] * 200)[-MAX_REWARDS:]
    assert stats.success == pytest.approx(_ema_loop(stats.reward_history), abs=1e-12)
    assert stats.last_update_step == 7
    assert PerformanceStats.from_json(stats.to_json()) == stats


def test_student_t_p_value_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 31), 47, 48, 99, 100, 998]:
        for t in [0.0, 0.05, 0.5, 1.0, 1.645, 2.0, 3.3, 8.0, -2.0, 40.0]:
            expected = 2 * scipy_stats.t.sf(abs(t), df)
            assert student_t_two_sided_p(t, df) == pytest.approx(expected, abs=1e-12), (t, df)
    assert student_t_two_sided_p(math.inf, 5) == 0.0
    assert math.isnan(student_t_two_sided_p(math.nan, 5))
    with pytest.raises(ValueError, match="df must be a whole number >= 1, got 0"):
        student_t_two_sided_p(1.0, 0)


def test_slope_and_p_value_match_linregress():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (3, 4, 10, 50, 500):
        for trend in (0.0, 0.01, 0.2):
            y = rng.normal(size=n) + trend * np.arange(n)
            expected = scipy_stats.linregress(np.arange(n), y)
            slope, p_value = slope_and_p_value(y)
            assert slope == pytest.approx(expected.slope, abs=1e-12)
            assert p_value == pytest.approx(expected.pvalue, abs=1e-10)
    assert slope_and_p_value([0.7] * 50) == (0.0, 1.0)  # flat: no trend at all
    assert slope_and_p_value([1.0, 2.0, 3.0, 4.0]) == (1.0, 0.0)  # a perfect line: certain
    assert math.isnan(slope_and_p_value([1.0, 3.0])[1])  # no degree of freedom left


def test_plateau_needs_a_full_window_that_is_flat_stable_and_without_a_significant_trend():
    steady = [1.0] * 49
    assert not is_plateaued(steady, window=50, threshold=0.01)  # one reward short
    assert is_plateaued([*steady, 1.0], window=50, threshold=0.01)
    assert is_plateaued([0.0] * 50, window=50, threshold=0.01)  # mean 0: flat and stable
    rng = np.random.default_rng(1)
    near_one = list(1.0 + rng.normal(scale=0.001, size=50))
    assert is_plateaued(near_one, window=50, threshold=0.01)
    rising = [0.5 + 0.01 * i for i in range(50)]  # relative slope ~0.01, p ~ 0
    assert not is_plateaued(rising, window=50, threshold=0.01)
    coin = [float(i % 2) for i in range(50)]  # no trend, but std / mean = 1 > 0.1
    assert not is_plateaued(coin, window=50, threshold=0.01)
    # Only the last `window` rewards count: an old climb does not matter.
    assert is_plateaued([0.1 * i for i in range(30)] + [1.0] * 50, window=50, threshold=0.01)


def test_weights_peak_at_middling_success():
    weights = sampling_weights(
        {"easy": (0.9, 500), "hard": (0.1, 500), "middling": (0.5, 500)}, 1.0, 0.0
    )
    assert list(weights) == ["easy", "hard", "middling"]  # sorted by id
    assert weights["middling"] > weights["easy"] == pytest.approx(weights["hard"])
    base = {s: 4 * s - 4 * s * s for s in (0.9, 0.5)}  # 0.36 and 1.0
    assert weights["middling"] / weights["easy"] == pytest.approx(base[0.5] / base[0.9])
    assert sum(weights.values()) == pytest.approx(1.0)


def test_fresh_lessons_get_up_to_twice_the_weight():
    weights = sampling_weights({"new": (0.5, 0), "old": (0.5, 1000)}, 1.0, 0.0)
    assert weights["new"] / weights["old"] == pytest.approx(2.0 / (1.0 + math.exp(-10.0)))


def test_weights_are_floored_then_renormalised():
    weights = sampling_weights({"done": (1.0, 10), "learning": (0.5, 10)}, 1.0, 0.1)
    # normalised: done 0 -> raised to 0.1 -> both divided by 1.1
    assert weights == pytest.approx({"done": 0.1 / 1.1, "learning": 1.0 / 1.1})
    assert sampling_weights({"a": (0.0, 3), "b": (1.0, 9)}, 1.0, 0.1) == {"a": 0.5, "b": 0.5}
    assert sampling_weights({}, 1.0, 0.1) == {}


def test_temperature_raises_each_base_to_one_over_t():
    lessons = {"a": (0.5, 1000), "b": (0.8, 1000)}
    ratio = {t: (w := sampling_weights(lessons, t, 0.0))["a"] / w["b"] for t in (0.5, 1.0, 4.0)}
    assert ratio[1.0] == pytest.approx(1.0 / 0.64)  # T = 1: upstream's weights
    assert ratio[0.5] == pytest.approx(ratio[1.0] ** 2)  # colder: sharper
    assert ratio[4.0] == pytest.approx(ratio[1.0] ** 0.25)  # hotter: flatter
