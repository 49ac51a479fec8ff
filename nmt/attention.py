"""Attention over the encoder memory: Bahdanau (additive), Luong dot and Luong general.

Keys are projected once per sentence (`project_keys`), not at every decoding step. Queries are
(batch, tgt_len, query_size), so the same code serves one decoding step (tgt_len 1) and a whole
teacher-forced target at once. Padding gets exactly zero weight.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """Scores a query against projected keys; softmax over real source tokens only."""

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        """memory (batch, src_len, memory_size) -> keys (batch, src_len, key_size)."""
        return memory

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """query (batch, tgt_len, query_size), keys -> (batch, tgt_len, src_len)."""
        return torch.bmm(query, keys.transpose(1, 2))

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> context (batch, tgt_len, memory_size), weights (batch, tgt_len, src_len)."""
        scores = self.score(query, keys)
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # (batch, tgt_len, src_len)
        context = torch.bmm(weights, memory)  # (batch, tgt_len, memory_size)
        return context, weights


class LuongDotAttention(Attention):
    """score = query . memory (sizes must match)."""


class LuongGeneralAttention(Attention):
    """score = query . (W memory)."""

    def __init__(self, query_size: int, memory_size: int) -> None:
        super().__init__()
        self.key_proj = nn.Linear(memory_size, query_size, bias=False)

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key_proj(memory)  # (batch, src_len, query_size)


class BahdanauAttention(Attention):
    """score = v . tanh(W_k memory + W_q query) (additive, "mlp")."""

    def __init__(self, query_size: int, memory_size: int, attention_size: int | None = None) -> None:
        super().__init__()
        attention_size = attention_size or query_size
        self.key_proj = nn.Linear(memory_size, attention_size, bias=False)
        self.query_proj = nn.Linear(query_size, attention_size, bias=True)
        self.energy = nn.Linear(attention_size, 1, bias=False)

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key_proj(memory)  # (batch, src_len, attention_size)

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        projected_query = self.query_proj(query)  # (batch, tgt_len, attention_size)
        hidden = torch.tanh(projected_query.unsqueeze(2) + keys.unsqueeze(1))  # (batch, tgt, src, att)
        return self.energy(hidden).squeeze(-1)  # (batch, tgt_len, src_len)


def make_attention(kind: str, query_size: int, memory_size: int) -> Attention | None:
    if kind == "none":
        return None
    if kind == "bahdanau":
        return BahdanauAttention(query_size, memory_size)
    if kind == "luong_general":
        return LuongGeneralAttention(query_size, memory_size)
    if kind == "luong_dot":
        if query_size != memory_size:
            raise ValueError(f"luong_dot attention needs equal sizes, got query {query_size}, memory {memory_size}")
        return LuongDotAttention()
    raise ValueError(f"unknown attention kind {kind!r}")
