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
    """score = v . tanh(W_k memory + W_q query) (additive, "mlp").

    In float32 the tanh is computed as 2 sigmoid(2x) - 1: torch's CPU sigmoid runs ~3.5x faster
    than its tanh, and this sum over (batch, tgt_len, src_len, attention_size) is the largest
    tensor of a decoding step (docs/performance.md). In bf16 the rewritten form would cost the
    scores their precision, so bf16 keeps tanh.
    """

    # Rows of queries scored at once without gradients: (rows, tgt, src, attention) floats stay
    # within about a megabyte, so the sum, its activation and the product with v run in cache.
    _CACHE_FLOATS = 1 << 18

    def __init__(self, query_size: int, memory_size: int, attention_size: int | None = None) -> None:
        super().__init__()
        attention_size = attention_size or query_size
        self.key_proj = nn.Linear(memory_size, attention_size, bias=False)
        self.query_proj = nn.Linear(query_size, attention_size, bias=True)
        self.energy = nn.Linear(attention_size, 1, bias=False)

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key_proj(memory)  # (batch, src_len, attention_size): W_k memory

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """-> v . tanh(keys + W_q query): (batch, tgt_len, src_len)."""
        projected_query = self.query_proj(query).unsqueeze(2)  # (batch, tgt_len, 1, attention_size)
        keys = keys.unsqueeze(1)  # (batch, 1, src_len, attention_size)
        # (attention_size,), made once per call, not once per block
        v = self.energy.weight.squeeze(0).to(torch.promote_types(projected_query.dtype, keys.dtype))
        if torch.is_grad_enabled():
            return self._energies(projected_query, keys, v)
        rows = max(1, self._CACHE_FLOATS // (query.size(1) * keys.size(2) * keys.size(3)))
        blocks = [
            self._energies(projected_query[start : start + rows], keys[start : start + rows], v)
            for start in range(0, query.size(0), rows)
        ]
        return torch.cat(blocks)  # (batch, tgt_len, src_len)

    @staticmethod
    def _energies(projected_query: torch.Tensor, keys: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(rows, tgt_len, 1, size) and (rows, 1, src_len, size) -> v . tanh(sum): (rows, tgt_len, src_len)."""
        if keys.dtype != torch.float32 or projected_query.dtype != torch.float32:
            return torch.matmul(torch.tanh(projected_query + keys), v)
        # v . tanh(x) = 2v . sigmoid(2x) - sum(v); the sum 2q + 2k is made in one pass.
        doubled = torch.add(2 * projected_query, keys, alpha=2)  # fresh: autograd allows sigmoid_
        return torch.matmul(doubled.sigmoid_(), 2 * v) - v.sum()


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
