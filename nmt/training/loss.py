"""Token-level cross-entropy with label smoothing (padding never counts), and the teacher-forced
training objective built on it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nmt.data.batching import Batch, pack_targets
from nmt.data.special import PAD_ID
from nmt.model.device import autocast
from nmt.model.seq2seq import Seq2Seq


def sequence_loss(
    logits: torch.Tensor, tgt_out: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (batch, tgt_len, vocab) and tgt_out (batch, tgt_len), or packed: (tokens, vocab) and
    (tokens,) -> (loss sum, nll sum).

    The loss (smoothed) is what training minimises; the plain negative log-likelihood gives
    perplexity. Both are sums over real tokens: divide by the token count. One log-softmax serves
    both (it is the largest tensor of a training step): the smoothed loss is torch's
    `cross_entropy(label_smoothing=eps)`, (1 - eps) * nll + eps * mean over the vocabulary of -log p.
    """
    log_probs = F.log_softmax(logits.reshape(-1, logits.size(-1)).float(), dim=-1)  # (tokens, vocab)
    flat_target = tgt_out.reshape(-1)
    nll = F.nll_loss(log_probs, flat_target, ignore_index=PAD_ID, reduction="sum")
    if label_smoothing == 0.0:
        return nll, nll.detach()
    real = flat_target != PAD_ID
    uniform = -log_probs.sum(dim=-1).masked_select(real).sum() / log_probs.size(-1)
    return (1.0 - label_smoothing) * nll + label_smoothing * uniform, nll.detach()


class TeacherForcedLoss(torch.nn.Module):
    """The training objective as one module, so that DistributedDataParallel can wrap it: its
    forward is what every rank runs on its share of a batch."""

    def __init__(self, model: Seq2Seq, precision: str, device: torch.device) -> None:
        super().__init__()
        self.model = model
        self.precision = precision
        self.device = device

    def forward(self, batch: Batch | None, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss sum, nll sum) over the batch's real target tokens, in fp32 whatever the precision
        (sequence_loss upcasts the logits). No batch (a rank's empty share of a batch with fewer
        pairs than ranks): a zero that reaches every weight, as DDP's gradient sum expects."""
        if batch is None:
            zero = sum(parameter.sum() for parameter in self.model.parameters()) * 0.0
            return zero, zero.detach()
        with autocast(self.precision, self.device):
            logits = self.model.forward_packed(batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_lengths)
        return sequence_loss(logits, pack_targets(batch.tgt_out, batch.tgt_lengths), label_smoothing)
