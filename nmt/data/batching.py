"""Training batches under a token budget, and collation into padded tensors.

Three batchers, each reproducible from (seed, epoch) alone, so an epoch's batches can be rebuilt
exactly on resume. They work on numpy arrays of lengths, so a corpus of millions of pairs costs a
few arrays, not a Python object per pair:
- `BucketBatcher` ("length"): pairs of equal target length together, batches in random order;
  almost no padding, but each update sees a single length;
- `SourceBatcher` ("source"): pairs of equal source length together; the targets vary;
- `RandomBatcher` ("random"): pairs in random order, as they come; every update sees the corpus'
  mix of lengths.
An epoch may be a draw of pairs (several corpora mixed by weight, nmt/data/mixing.py): then the
batchers deal those. Training's decoder drops each sentence as it ends (`Decoder.forward_packed`),
so the target padding of the last two costs little.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from nmt.data.special import BOS_ID, EOS_ID, PAD_ID


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
    out = np.full((len(sequences), max(map(len, sequences), default=0)), pad_id, np.int64)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = seq
    return torch.from_numpy(out)


def collate_src(src_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Source ids + eos, padded: (batch, src_len) and lengths (batch,). The eos gives an empty
    sentence one real token, so every source has a final state."""
    lengths = np.fromiter(map(len, src_ids), np.int64, len(src_ids)) + 1
    src = np.full((len(src_ids), int(lengths.max(initial=0))), PAD_ID, np.int64)
    for row, ids in enumerate(src_ids):
        src[row, : len(ids)] = ids
        src[row, len(ids)] = EOS_ID
    return torch.from_numpy(src), torch.from_numpy(lengths)


def collate(src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]]) -> Batch:
    """Pairs (lists, or rows of a store's arrays) -> a padded batch, rows ordered longest target
    first (ties keep their order), so the decoder can drop each sentence as it ends
    (`Decoder.forward_packed`)."""
    tgt_lengths = np.fromiter(map(len, tgt_ids), np.int64, len(tgt_ids)) + 1  # + eos
    order = np.argsort(-tgt_lengths, kind="stable").tolist()
    src, src_lengths = collate_src([src_ids[i] for i in order])
    tgt_lengths = tgt_lengths[order]
    tgt_in = np.full((len(order), int(tgt_lengths.max(initial=0))), PAD_ID, np.int64)  # bos + y
    tgt_out = np.full_like(tgt_in, PAD_ID)  # y + eos
    for row, i in enumerate(order):
        ids, length = tgt_ids[i], len(tgt_ids[i])
        tgt_in[row, 0] = BOS_ID
        tgt_in[row, 1 : length + 1] = ids
        tgt_out[row, :length] = ids
        tgt_out[row, length] = EOS_ID
    return Batch(
        src=src,
        src_lengths=src_lengths,
        tgt_in=torch.from_numpy(tgt_in),
        tgt_out=torch.from_numpy(tgt_out),
        tgt_lengths=torch.from_numpy(tgt_lengths),
    )


def pack_targets(tgt_out: torch.Tensor, tgt_lengths: torch.Tensor) -> torch.Tensor:
    """tgt_out (batch, tgt_len), rows longest first -> the real target ids (tokens,), time-major:
    the order of `Decoder.forward_packed`'s logits."""
    return pack_padded_sequence(tgt_out, tgt_lengths.cpu(), batch_first=True).data


# --- cutting an order into batches -----------------------------------------------------------------
def padded_budget_starts(costs: np.ndarray, batch_tokens: int) -> np.ndarray:
    """Where each batch starts when `costs` (in order) are cut into consecutive batches of at most
    `batch_tokens` padded tokens (batch size x costliest member); a pair costlier than the budget
    gets a batch of its own. -> (batches + 1,) with len(costs) last."""
    starts, start, n = [0], 0, len(costs)
    window = 64
    while start < n:
        costs_ahead = costs[start : start + window]
        fits = np.maximum.accumulate(costs_ahead) * np.arange(1, len(costs_ahead) + 1) <= batch_tokens
        size = int(np.argmin(fits)) if not fits.all() else len(costs_ahead)
        if size == len(costs_ahead) and start + size < n:
            window *= 2  # the batch may go on past the window: look further
            continue
        start += max(size, 1)
        starts.append(start)
        window = max(64, 2 * size)
    return np.asarray(starts, np.int64)


def summed_budget_starts(costs: np.ndarray, batch_tokens: int) -> np.ndarray:
    """As `padded_budget_starts`, but a batch's members' costs sum to at most `batch_tokens`
    (padding not counted)."""
    ends = np.cumsum(costs, dtype=np.int64)
    starts, start, n = [0], 0, len(costs)
    while start < n:
        before = ends[start - 1] if start else 0
        start = max(int(np.searchsorted(ends, before + batch_tokens, side="right")), start + 1)
        starts.append(start)
    return np.asarray(starts, np.int64)


class EpochBatches(Sequence):
    """An epoch's batches: batch i is order[starts[i]:stops[i]], an array of pair indices."""

    def __init__(self, order: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> None:
        self.order, self.starts, self.stops = order, starts, stops

    @classmethod
    def cut(cls, order: np.ndarray, bounds: np.ndarray, shuffle: np.random.Generator | None = None) -> EpochBatches:
        """Consecutive batches of `order` between `bounds`, in a random order if `shuffle`."""
        starts, stops = bounds[:-1], bounds[1:]
        if shuffle is not None:
            permutation = shuffle.permutation(len(starts))
            starts, stops = starts[permutation], stops[permutation]
        return cls(order, starts, stops)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return EpochBatches(self.order, self.starts[index], self.stops[index])
        return self.order[self.starts[index] : self.stops[index]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for start, stop in zip(self.starts.tolist(), self.stops.tolist()):
            yield self.order[start:stop]

    def tolist(self) -> list[list[int]]:
        return [batch.tolist() for batch in self]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EpochBatches):
            return self.tolist() == other.tolist()
        return NotImplemented


def token_budget_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices by length (shortest first, ties in order), cut into batches of at most
    `batch_tokens` padded tokens; a sentence longer than the budget gets a batch of its own."""
    costs = np.asarray(lengths, np.int64)
    order = np.argsort(costs, kind="stable")
    return EpochBatches.cut(order, padded_budget_starts(costs[order], batch_tokens)).tolist()


def as_lengths(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """Lengths as an array: a store's (uint16 or int32) as they are, anything else as int32."""
    array = np.asarray(lengths)
    return array if array.dtype in (np.uint16, np.int32) else array.astype(np.int32)


def pair_costs(src_lengths: Sequence[int] | np.ndarray, tgt_lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """What a pair costs a batch: its longer side + eos (the target also gets a bos in tgt_in)."""
    src, tgt = as_lengths(src_lengths), as_lengths(tgt_lengths)
    assert src.shape == tgt.shape
    return np.maximum(src, tgt) + 1  # lengths' dtypes leave room for the + 1


def _shuffled(rng: np.random.Generator, count: int, pairs: np.ndarray | None) -> np.ndarray:
    """The epoch's pairs (default: each of `count` once) in random order, as int32 where they fit:
    at millions of pairs, these arrays are most of an epoch's memory."""
    dtype = np.int32 if count < np.iinfo(np.int32).max else np.int64
    order = np.arange(count, dtype=dtype) if pairs is None else pairs.astype(dtype)
    rng.shuffle(order)
    return order


# --- the batchers -----------------------------------------------------------------------------------
class RandomBatcher:
    """Every epoch, each example exactly once, in random order, cut under a token budget that
    counts each pair's longer side (+ eos), padding not included."""

    def __init__(
        self,
        src_lengths: Sequence[int] | np.ndarray,
        tgt_lengths: Sequence[int] | np.ndarray,
        batch_tokens: int,
        seed: int,
    ) -> None:
        self.src_lengths, self.tgt_lengths = as_lengths(src_lengths), as_lengths(tgt_lengths)
        self.costs = pair_costs(self.src_lengths, self.tgt_lengths)
        self.batch_tokens = batch_tokens
        self.seed = seed

    def epoch_batches(self, epoch: int, pairs: np.ndarray | None = None) -> EpochBatches:
        """This epoch's batches of `pairs` (default: every pair once)."""
        order = _shuffled(np.random.default_rng([self.seed, epoch]), len(self.costs), pairs)
        return EpochBatches.cut(order, summed_budget_starts(self.costs[order], self.batch_tokens))


class SourceBatcher(RandomBatcher):
    """Every epoch, each example exactly once, in batches of equal source length (random among
    equal lengths, batches shuffled), under RandomBatcher's budget. The encoder and the attention
    see almost no padding; the targets keep their spread of lengths (OpenNMT-py's order)."""

    def epoch_batches(self, epoch: int, pairs: np.ndarray | None = None) -> EpochBatches:
        rng = np.random.default_rng([self.seed, epoch])
        shuffled = _shuffled(rng, len(self.costs), pairs)  # ties keep this random order
        order = shuffled[np.argsort(self.src_lengths[shuffled], kind="stable")]
        return EpochBatches.cut(order, summed_budget_starts(self.costs[order], self.batch_tokens), rng)


class BucketBatcher(RandomBatcher):
    """Every epoch, each example exactly once, in length-bucketed batches under a token budget of
    padded tokens (batch size x costliest pair). Within equal lengths the order is random, and the
    batch order is shuffled."""

    def epoch_batches(self, epoch: int, pairs: np.ndarray | None = None) -> EpochBatches:
        rng = np.random.default_rng([self.seed, epoch])
        shuffled = _shuffled(rng, len(self.costs), pairs)
        # Target length first: the decoder steps through every position of a batch's longest
        # target one at a time, while the encoder is packed, so uneven targets cost the most.
        wide = self.tgt_lengths.dtype != np.uint16 or self.src_lengths.dtype != np.uint16
        key_type, shift = (np.int64, 32) if wide else (np.uint32, 16)
        key = self.tgt_lengths[shuffled].astype(key_type) << shift | self.src_lengths[shuffled]
        order = shuffled[np.argsort(key, kind="stable")]
        return EpochBatches.cut(order, padded_budget_starts(self.costs[order], self.batch_tokens), rng)


BATCHERS = {"length": BucketBatcher, "source": SourceBatcher, "random": RandomBatcher}


def make_batcher(
    kind: str,
    src_lengths: Sequence[int] | np.ndarray,
    tgt_lengths: Sequence[int] | np.ndarray,
    batch_tokens: int,
    seed: int,
) -> RandomBatcher:
    return BATCHERS[kind](src_lengths, tgt_lengths, batch_tokens, seed)
