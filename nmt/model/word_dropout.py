"""Whole-word dropout: during training, every token's embedding is zeroed with probability p, so
the network learns not to lean on any single word of its input (Gal and Ghahramani 2016; Marian's
--dropout-src / --dropout-trg, Nematus' dropout_source / dropout_target). Unlike ordinary dropout,
which thins every embedding a little, it removes whole words."""

from __future__ import annotations

import torch
from torch import nn


class WordDropout(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"word dropout {p} must be in [0, 1)")
        self.p = p

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:
        """embedded (batch, length, embed_dim) -> the same, each token's vector zeroed with
        probability p and the kept ones scaled by 1 / (1 - p), so evaluation needs no change."""
        if not self.training or self.p == 0.0:
            return embedded
        keep = embedded.new_empty(*embedded.shape[:-1], 1).bernoulli_(1.0 - self.p)  # (batch, length, 1)
        return embedded * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
