"""What a search returns, and how it ranks: hypotheses, the length penalty, the length limit."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nmt.options import HARD_MAX_LEN, SearchOptions


@dataclass
class Hypothesis:
    tokens: list[int]  # without bos and eos
    log_prob: float  # the model's log-probability of tokens + eos
    score: float  # log_prob after the length penalty: what the search ranks by
    attention: torch.Tensor | None = field(default=None, repr=False)  # (len(tokens) + 1, src_len)


def length_penalty(length: int | torch.Tensor, kind: str, alpha: float):
    """The divisor of a hypothesis's log-probability; `length` counts the eos."""
    if kind == "none":
        return 1.0
    if kind == "average":
        return length
    return ((5.0 + length) / 6.0) ** alpha


def max_output_lengths(src_lengths: torch.Tensor, a: float, b: int, cap: int = HARD_MAX_LEN) -> torch.Tensor:
    """a * src_len + b, at least 1, at most cap: (batch,) long. Counts the eos."""
    return (src_lengths.float() * a + b).long().clamp(1, cap)


def make_hypothesis(
    tokens: list[int], log_prob: float, attention: torch.Tensor | None, options: SearchOptions
) -> Hypothesis:
    score = log_prob / length_penalty(len(tokens) + 1, options.length_penalty, options.alpha)
    # A copy, not a view: a view would keep (and pickle) the whole batch's attention.
    return Hypothesis(tokens, log_prob, score, None if attention is None else attention.to("cpu", copy=True))


def best_first(hypotheses: list[Hypothesis], nbest: int) -> list[Hypothesis]:
    return sorted(hypotheses, key=lambda h: h.score, reverse=True)[:nbest]
