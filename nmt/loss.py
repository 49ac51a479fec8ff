"""Token-level cross-entropy with label smoothing; padding never counts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nmt.tokenizer import PAD_ID


def sequence_loss(
    logits: torch.Tensor, tgt_out: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (batch, tgt_len, vocab), tgt_out (batch, tgt_len) -> (loss sum, nll sum).

    The loss (smoothed) is what training minimises; the plain negative log-likelihood gives
    perplexity. Both are sums over real tokens: divide by the token count.
    """
    flat_logits = logits.reshape(-1, logits.size(-1)).float()
    flat_target = tgt_out.reshape(-1)
    loss = F.cross_entropy(
        flat_logits, flat_target, ignore_index=PAD_ID, label_smoothing=label_smoothing, reduction="sum"
    )
    if label_smoothing == 0.0:
        return loss, loss.detach()
    with torch.no_grad():
        nll = F.cross_entropy(flat_logits, flat_target, ignore_index=PAD_ID, reduction="sum")
    return loss, nll
