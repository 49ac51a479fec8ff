"""An exponential moving average of the model's weights (Polyak averaging).

Adam at a constant rate leaves the weights jittering around the path they follow; once that
path levels off, their average over recent updates is a steadier model than any single point of
it. OpenNMT-py's `average_decay` and Marian's `exponential-smoothing` are the same idea. While
the model still improves quickly the average trails it: in the 25-minute reference run it scored
below the trained weights at every validation measured (docs/experiments.md), so it is off by
default.

The average starts at the initial weights and follows
    average <- average + (1 - d_t) * (weights - average),   d_t = min(decay, (1 + t) / (10 + t))
after update t: the warm-up keeps the first updates from being drowned by the random start.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay={decay} must be in (0, 1)")
        self.decay = decay
        trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
        self.names = [name for name, _ in trainable]
        self.averages = [param.detach().clone() for _, param in trainable]
        self.updates = 0

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        params = dict(model.named_parameters())
        return [params[name] for name in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (after each optimizer step)."""
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, param in zip(self.averages, self._params(model)):
            average.lerp_(param.detach(), 1.0 - decay)
        self.updates += 1

    @contextmanager
    @torch.no_grad()
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The model holds the averaged weights inside the block and its own ones again after it."""
        params = self._params(model)
        trained = [p.detach().clone() for p in params]
        for param, average in zip(params, self.averages):
            param.detach().copy_(average)
        try:
            yield
        finally:
            for param, weights in zip(params, trained):
                param.detach().copy_(weights)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with the averaged weights in place of the trained ones."""
        state = dict(model.state_dict())
        state.update({name: average.clone() for name, average in zip(self.names, self.averages)})
        return state

    def load(self, averaged_state: dict[str, torch.Tensor], updates: int) -> None:
        with torch.no_grad():
            for name, average in zip(self.names, self.averages):
                average.copy_(averaged_state[name])
        self.updates = updates
