"""The learning rate's fall over the end of a training budget (train.lr_anneal)."""

import pytest

from nmt.training.schedule import annealed_lr, budget_used


def test_the_rate_stays_until_the_fall_then_drops_linearly_to_min_lr():
    rates = [annealed_lr(1e-3, 1e-5, 0.25, used) for used in (0.0, 0.5, 0.75, 0.875, 1.0)]
    assert rates[:3] == [1e-3, 1e-3, 1e-3]
    assert rates[3] == pytest.approx((1e-3 + 1e-5) / 2)
    assert rates[4] == pytest.approx(1e-5)
    assert annealed_lr(1e-3, 1e-5, 0.0, 0.99) == 1e-3  # off


def test_the_budget_is_the_limit_nearest_its_end():
    # 30 of 100 steps, 12 of 20 minutes, 1.5 of 10 epochs: the minutes end the run first.
    assert budget_used(30, 12 * 60, 1.5, 100, 20, 10) == pytest.approx(0.6)
    assert budget_used(30, 12 * 60, 1.5, 100, 0, 10) == pytest.approx(0.3)
    assert budget_used(30, 0, 9.0, 0, 0, 10) == pytest.approx(0.9)
    assert budget_used(300, 0, 0.0, 100, 0, 0) == 1.0
