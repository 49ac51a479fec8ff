"""The learning rate's fall over the end of a fixed training budget.

A run with a hard budget (steps, epochs or minutes) can spend its last share at a falling rate:
constant at `lr` until `1 - anneal` of the budget is used, then linear down to `min_lr` at the
end (the "warmup-stable-decay" shape without warmup). Adam at a constant rate keeps jumping
around a minimum it never settles into; the fall lets the last updates settle. It pays only
once the constant rate has stopped improving the model: in the 25-minute reference run it cost
1 BLEU (docs/experiments.md).
"""

from __future__ import annotations


def budget_used(
    step: int, train_seconds: float, epoch_progress: float, max_steps: int, max_minutes: float, max_epochs: int
) -> float:
    """Share of the budget spent, in [0, 1]: the largest over the limits that are set (the limit
    that ends the run first is the one nearest its end)."""
    shares = [0.0]
    if max_steps:
        shares.append(step / max_steps)
    if max_minutes:
        shares.append(train_seconds / (max_minutes * 60))
    if max_epochs:
        shares.append(epoch_progress / max_epochs)
    return min(max(shares), 1.0)


def annealed_lr(lr: float, min_lr: float, anneal: float, used: float) -> float:
    """The rate once `used` of the budget is spent, falling over the last `anneal` of it."""
    start = 1.0 - anneal
    if anneal <= 0.0 or used <= start:
        return lr
    fallen = (used - start) / anneal  # 0 where the fall starts, 1 at the budget's end
    return lr + (min(min_lr, lr) - lr) * fallen
