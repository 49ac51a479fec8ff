"""Sampling the next piece: temperature, top-k and nucleus (top-p), as every peer offers them.

The distribution is the model's, divided by the temperature, cut to the k most probable pieces
(pieces tied with the k-th stay), then to the smallest set of most probable pieces whose
probability reaches top_p (Holtzman et al. 2020), and renormalized. A hypothesis's score is still
the model's own log-probability of what was drawn, so samples rank as search results do.
"""

from __future__ import annotations

import math

import torch

from nmt.options import SearchOptions


def sampling_distribution(log_probs: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """log_probs (rows, vocab) -> the probabilities to draw from (rows, vocab)."""
    logits = log_probs / temperature
    if 0 < top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (rows, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the more probable pieces
        sorted_logits = sorted_logits.masked_fill(before >= top_p, -math.inf)  # the first always stays
        logits = torch.full_like(logits, -math.inf).scatter(-1, order, sorted_logits)
    return logits.softmax(dim=-1)


def sampler(options: SearchOptions, device: torch.device):
    """A function log_probs (rows, vocab) -> drawn pieces (rows,), with its own seeded generator:
    the same seed, input and batches give the same samples."""
    generator = torch.Generator(device=device).manual_seed(options.seed)

    def draw(log_probs: torch.Tensor) -> torch.Tensor:
        probs = sampling_distribution(log_probs, options.temperature, options.top_k, options.top_p)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return draw
