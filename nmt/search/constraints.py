"""What a search may not produce next: eos too early or too late, and repeated n-grams.

Each function edits a step's log-probabilities (rows, vocab) in place, setting what is not
allowed to -inf, so greedy, sampling and beam search apply the same rules.
"""

from __future__ import annotations

import math

import torch

from nmt.data.special import EOS_ID


def restrict_eos(log_probs: torch.Tensor, t: int | torch.Tensor, min_len: int, max_lens: torch.Tensor) -> None:
    """No eos before min_len pieces; only eos at each row's last allowed step. t: the pieces every
    row has (int), or each row's (rows,); max_lens (rows,)."""
    if isinstance(t, int):
        if t < min_len:
            log_probs[:, EOS_ID] = -math.inf
    elif min_len > 0:
        log_probs[t < min_len, EOS_ID] = -math.inf
    at_limit = max_lens <= t + 1  # (rows,)
    if bool(at_limit.any()):
        eos_log_prob = log_probs[at_limit, EOS_ID]
        log_probs[at_limit] = -math.inf
        log_probs[at_limit, EOS_ID] = eos_log_prob.clamp(min=-1e9)  # finite: the search must end


def block_repeated_ngrams(log_probs: torch.Tensor, history: torch.Tensor, n: int) -> None:
    """Forbid every piece that would complete an n-gram the row's output already holds.

    history (rows, t): the pieces produced so far (no bos). The candidate n-gram is the last
    n - 1 pieces and the next one; it repeats an earlier n-gram when the earlier one starts with
    the same n - 1 pieces, so the piece that followed those is forbidden."""
    steps = history.size(1)
    if n < 2 or steps < n:
        return
    prefixes = history.unfold(1, n - 1, 1)[:, : steps - n + 1]  # (rows, ngrams, n - 1): each n-gram's start
    followers = history[:, n - 1 :]  # (rows, ngrams): each n-gram's last piece
    suffix = history[:, steps - n + 1 :]  # (rows, n - 1): the pieces the next one would follow
    matches = (prefixes == suffix.unsqueeze(1)).all(dim=-1)  # (rows, ngrams)
    rows, ngrams = matches.nonzero(as_tuple=True)
    log_probs[rows, followers[rows, ngrams]] = -math.inf
