"""Training batches under a token budget, and collation into padded tensors.

Two batchers, both reproducible from (seed, epoch) alone, so an epoch's batches can be rebuilt
exactly on resume:
- `BucketBatcher` ("length"): pairs of equal target length together, batches in random order;
  almost no padding, but each update sees a single length;
- `SourceBatcher` ("source"): pairs of equal source length together; the targets vary;
- `RandomBatcher` ("random"): pairs in random order, as they come; every update sees the corpus'
  mix of lengths.
Training's decoder drops each sentence as it ends (`Decoder.forward_packed`), so the target
padding of the last two costs little.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pack_padded_sequence

from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass
class Batch:
    src: torch.Tensor  # (batch, src_len) long: x + eos, padded with PAD_ID
    src_lengths: torch.Tensor  # (batch,) long, on the CPU (pack_padded_sequence wants it there)
    tgt_in: torch.Tensor  # (batch, tgt_len) long: bos + y
    tgt_out: torch.Tensor  # (batch, tgt_len) long: y + eos
    tgt_lengths: torch.Tensor  # (batch,) long, counts eos

    @property
    def src_mask(self) -> torch.Tensor:
        return self.src != PAD_ID  # (batch, src_len), True for real tokens

    @property
    def tgt_mask(self) -> torch.Tensor:
        return self.tgt_out != PAD_ID  # (batch, tgt_len)

    @property
    def num_tgt_tokens(self) -> int:
        return int(self.tgt_lengths.sum())

    def __len__(self) -> int:
        return self.src.size(0)

    def to(self, device: torch.device) -> Batch:
        return Batch(
            src=self.src.to(device, non_blocking=True),
            src_lengths=self.src_lengths,
            tgt_in=self.tgt_in.to(device, non_blocking=True),
            tgt_out=self.tgt_out.to(device, non_blocking=True),
            tgt_lengths=self.tgt_lengths,
        )


def pad(sequences: Sequence[Sequence[int]], pad_id: int = PAD_ID) -> torch.Tensor:
    """(batch, longest) long tensor, right-padded."""
    longest = max((len(s) for s in sequences), default=0)
    out = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


def collate_src(src_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Source ids + eos, padded: (batch, src_len) and lengths (batch,). The eos gives an empty
    sentence one real token, so every source has a final state."""
    src = [[*s, EOS_ID] for s in src_ids]
    return pad(src), torch.tensor([len(s) for s in src], dtype=torch.long)


def collate(src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]]) -> Batch:
    """Pairs -> a padded batch, rows ordered longest target first (ties keep their order), so
    the decoder can drop each sentence as it ends (`Decoder.forward_packed`)."""
    order = sorted(range(len(tgt_ids)), key=lambda i: -len(tgt_ids[i]))
    src_ids, tgt_ids = [src_ids[i] for i in order], [tgt_ids[i] for i in order]
    src, src_lengths = collate_src(src_ids)
    return Batch(
        src=src,
        src_lengths=src_lengths,
        tgt_in=pad([[BOS_ID, *t] for t in tgt_ids]),
        tgt_out=pad([[*t, EOS_ID] for t in tgt_ids]),
        tgt_lengths=torch.tensor([len(t) + 1 for t in tgt_ids], dtype=torch.long),
    )


def pack_targets(tgt_out: torch.Tensor, tgt_lengths: torch.Tensor) -> torch.Tensor:
    """tgt_out (batch, tgt_len), rows longest first -> the real target ids (tokens,), time-major:
    the order of `Decoder.forward_packed`'s logits."""
    return pack_padded_sequence(tgt_out, tgt_lengths.cpu(), batch_first=True).data


def token_budget_batches(
    lengths: Sequence[int], batch_tokens: int, order: Sequence[int] | None = None
) -> list[list[int]]:
    """Cut `order` (default: by length) into consecutive batches of at most `batch_tokens`
    padded tokens (batch size x longest member). A sentence longer than the budget gets a batch
    of its own rather than being dropped."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__) if order is None else order
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        candidate_longest = max(longest, lengths[index])
        if current and candidate_longest * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, candidate_longest = [], lengths[index]
        current.append(index)
        longest = candidate_longest
    if current:
        batches.append(current)
    return batches


class BucketBatcher:
    """Every epoch, each example exactly once, in length-bucketed batches under a token budget.

    Within equal lengths the order is random, and the batch order is shuffled; both come from
    `(seed, epoch)` alone, so `epoch_batches(epoch)` is reproducible without saved state.
    """

    def __init__(self, src_lengths: Sequence[int], tgt_lengths: Sequence[int], batch_tokens: int, seed: int) -> None:
        self.lengths = pair_costs(src_lengths, tgt_lengths)
        self.src_lengths = list(src_lengths)
        self.tgt_lengths = list(tgt_lengths)
        self.batch_tokens = batch_tokens
        self.seed = seed

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"{self.seed}-{epoch}")
        tie_break = [rng.random() for _ in self.lengths]
        # Target length first: the decoder steps through every position of a batch's longest
        # target one at a time, while the encoder is packed, so uneven targets cost the most.
        order = sorted(
            range(len(self.lengths)),
            key=lambda i: (self.tgt_lengths[i], self.src_lengths[i], tie_break[i]),
        )
        batches = token_budget_batches(self.lengths, self.batch_tokens, order)
        rng.shuffle(batches)
        return batches


def pair_costs(src_lengths: Sequence[int], tgt_lengths: Sequence[int]) -> list[int]:
    """What a pair costs a batch: its longer side + eos (the target also gets a bos in tgt_in)."""
    assert len(src_lengths) == len(tgt_lengths)
    return [max(s, t) + 1 for s, t in zip(src_lengths, tgt_lengths)]


def summed_budget_batches(costs: Sequence[int], batch_tokens: int, order: Sequence[int]) -> list[list[int]]:
    """Cut `order` into consecutive batches whose members' costs sum to at most `batch_tokens`
    (padding not counted); an oversized pair gets a batch of its own."""
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for index in order:
        if current and tokens + costs[index] > batch_tokens:
            batches.append(current)
            current, tokens = [], 0
        current.append(index)
        tokens += costs[index]
    if current:
        batches.append(current)
    return batches


class RandomBatcher:
    """Every epoch, each example exactly once, in random order, cut under a token budget that
    counts each pair's longer side (+ eos), padding not included."""

    def __init__(self, src_lengths: Sequence[int], tgt_lengths: Sequence[int], batch_tokens: int, seed: int) -> None:
        self.costs = pair_costs(src_lengths, tgt_lengths)
        self.batch_tokens = batch_tokens
        self.seed = seed

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        order = list(range(len(self.costs)))
        random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return summed_budget_batches(self.costs, self.batch_tokens, order)


class SourceBatcher(RandomBatcher):
    """Every epoch, each example exactly once, in batches of equal source length (random among
    equal lengths, batches shuffled), under RandomBatcher's budget. The encoder and the attention
    see almost no padding; the targets keep their spread of lengths (OpenNMT-py's order)."""

    def __init__(self, src_lengths: Sequence[int], tgt_lengths: Sequence[int], batch_tokens: int, seed: int) -> None:
        super().__init__(src_lengths, tgt_lengths, batch_tokens, seed)
        self.src_lengths = list(src_lengths)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"{self.seed}-{epoch}")
        tie_break = [rng.random() for _ in self.costs]
        order = sorted(range(len(self.costs)), key=lambda i: (self.src_lengths[i], tie_break[i]))
        batches = summed_budget_batches(self.costs, self.batch_tokens, order)
        rng.shuffle(batches)
        return batches


BATCHERS = {"length": BucketBatcher, "source": SourceBatcher, "random": RandomBatcher}


def make_batcher(
    kind: str, src_lengths: Sequence[int], tgt_lengths: Sequence[int], batch_tokens: int, seed: int
) -> BucketBatcher | RandomBatcher | SourceBatcher:
    return BATCHERS[kind](src_lengths, tgt_lengths, batch_tokens, seed)
