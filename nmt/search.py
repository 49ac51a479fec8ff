"""Decoding over the protocol of DESIGN.md: `model.encode`, `model.init_decoder`,
`model.decoder.step` and `DecoderState.reorder`; nothing else of the model is used."""

from __future__ import annotations

import torch

from nmt.tokenizer import BOS_ID, EOS_ID, PAD_ID

HARD_MAX_LEN = 512  # no output is longer, whatever a and b say


def max_output_lengths(src_lengths: torch.Tensor, a: float, b: int, cap: int = HARD_MAX_LEN) -> torch.Tensor:
    """a * src_len + b, at least 1, at most cap: (batch,) long."""
    return (src_lengths.float() * a + b).long().clamp(1, cap)


@torch.no_grad()
def greedy_search(
    model, src: torch.Tensor, src_lengths: torch.Tensor, max_len_a: float = 1.5, max_len_b: int = 10
) -> list[list[int]]:
    """The most probable next token at every step, for a whole batch at once.

    src (batch, src_len), src_lengths (batch,) -> one id list per sentence, without bos/eos.
    """
    state = model.init_decoder(model.encode(src, src_lengths))
    batch_size = src.size(0)
    max_lens = max_output_lengths(src_lengths, max_len_a, max_len_b).to(src.device)
    prev_tokens = torch.full((batch_size,), BOS_ID, dtype=torch.long, device=src.device)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=src.device)
    outputs = []
    for t in range(int(max_lens.max())):
        log_probs, state = model.decoder.step(prev_tokens, state)
        next_tokens = log_probs.argmax(dim=-1).masked_fill(finished, PAD_ID)  # (batch,)
        outputs.append(next_tokens)
        finished |= (next_tokens == EOS_ID) | (max_lens <= t + 1)
        if bool(finished.all()):
            break
        prev_tokens = next_tokens
    tokens = torch.stack(outputs, dim=1).tolist()  # (batch, steps)
    return [_until_eos(row) for row in tokens]


def _until_eos(ids: list[int]) -> list[int]:
    out = []
    for i in ids:
        if i in (EOS_ID, PAD_ID):
            break
        out.append(i)
    return out
