"""A running search: sentences join it between steps and leave it as soon as they are done.

A translation service cannot wait for a batch of sentences to finish before starting the next:
its sentences arrive one by one. Greedy search, sampling and beam search (`GreedySearch`,
`SamplingSearch`, `BeamSearch`, on the rows of `nmt.search.rows`) are written as running searches. `add` encodes new sentences and joins their decoder state to the rows in
progress (`DecoderState.join`); `step` decodes one piece of every row and hands back the sentences
that are done. Every sentence keeps its own step count, so its answer is the one it gets alone
(up to the order of floating-point sums, which a batch's composition can change). A whole batch
searched at once (`decode_all`) is the same search with one `add`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol

import torch

from nmt.options import SearchOptions
from nmt.search.hypothesis import Hypothesis

Finished = list[tuple[Hashable, list[Hypothesis]]]  # (key, its nbest hypotheses, best first)


class RunningSearch(Protocol):
    options: SearchOptions

    @property
    def busy(self) -> bool:
        """Some sentence is still decoding."""
        ...

    def add(self, src: torch.Tensor, src_lengths: torch.Tensor, keys: Sequence[Hashable]) -> None:
        """src (sentences, src_len) ids with eos, src_lengths (sentences,): sentences that join
        before the next step, each named by its key."""
        ...

    def step(self) -> Finished:
        """Decode one piece of every row -> the sentences that are done."""
        ...


def can_join(options: SearchOptions) -> bool:
    """Whether sentences may join a search of these options that is under way without changing
    any answer: not for sampling (its draws follow the batch), blocked n-grams or attention
    (both kept as one tensor of the whole batch's steps)."""
    return not (options.sample or options.no_repeat_ngram or options.return_attention)


def decode_all(search: RunningSearch, src: torch.Tensor, src_lengths: torch.Tensor) -> list[list[Hypothesis]]:
    """One batch from start to end -> the nbest hypotheses of every sentence, in order."""
    search.add(src, src_lengths, range(src.size(0)))
    results: dict[Hashable, list[Hypothesis]] = {}
    while search.busy:
        results.update(search.step())
    return [results[i] for i in range(src.size(0))]


def own_tokens(history: list[list[int]], steps: list[int]) -> list[list[int]]:
    """Rows of a history whose sentences joined at different steps (rows (T,), the newest piece
    last) -> each row's own `steps` pieces."""
    return [row[len(row) - n :] if n else [] for row, n in zip(history, steps)]
