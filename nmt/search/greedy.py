"""Greedy search and sampling: one piece per row at every step, each sentence on its own rows.

Greedy takes the most probable next piece; sampling draws it (`nmt.search.sampling`), with
`options.samples` samples of every sentence, of which the `nbest` best by score are kept. Rows
that end leave the batch, so a step costs only the rows still decoding; new sentences may join
between steps (`nmt.search.running`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from nmt.data.special import BOS_ID, EOS_ID
from nmt.options import SearchOptions
from nmt.search.hypothesis import Hypothesis, best_first, make_hypothesis
from nmt.search.protocol import DecodingModel
from nmt.search.rows import RowSearch
from nmt.search.running import Finished, decode_all, own_tokens
from nmt.search.sampling import sampler


@torch.no_grad()
def greedy_search(
    model: DecodingModel, src: torch.Tensor, src_lengths: torch.Tensor, options: SearchOptions
) -> list[list[Hypothesis]]:
    """The options.nbest best hypotheses of every sentence (one without sampling), best first."""
    search = SamplingSearch(model, options) if options.sample else GreedySearch(model, options)
    return decode_all(search, src, src_lengths)


class GreedySearch(RowSearch):
    """A running greedy search: every row is one hypothesis of one sentence, extended by its
    most probable next piece."""

    def __init__(self, model: DecodingModel, options: SearchOptions) -> None:
        super().__init__(model, options)
        self.rows_per_sentence = 1
        self.row_keys: list[Hashable] = []  # the sentence of every row
        # Per row, beside the pieces so far and the last one: their count, their log-probability
        # and the length limit.
        self.steps = self.log_prob = self.limits = torch.empty(0)

    def choose(self, log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log_probs (rows, vocab) -> every row's next piece and its log-probability (rows,)."""
        chosen_log_probs, next_tokens = log_probs.max(dim=-1)
        return next_tokens, chosen_log_probs

    @torch.no_grad()
    def add(self, src: torch.Tensor, src_lengths: torch.Tensor, keys: Sequence[Hashable]) -> None:
        device, copies = src.device, self.rows_per_sentence
        state, limits = self.encode(src, src_lengths)
        if copies > 1:
            row_sentence = torch.arange(src.size(0), device=device).repeat_interleave(copies)
            state, limits = state.select_sentences(row_sentence), limits[row_sentence]
        rows = limits.numel()
        self.row_keys += [key for key in keys for _ in range(copies)]
        self.finished.update((key, []) for key in keys)
        new = {
            "history": self.new_history(rows, device),
            "steps": torch.zeros(rows, dtype=torch.long, device=device),
            "log_prob": torch.zeros(rows, device=device),
            "limits": limits,
            "prev_tokens": torch.full((rows,), BOS_ID, dtype=torch.long, device=device),
        }
        self.join_rows(state, new, src.size(1))

    @torch.no_grad()
    def step(self) -> Finished:
        next_tokens, chosen_log_probs = self.choose(self.next_log_probs(self.steps, self.limits))
        self.log_prob += chosen_log_probs
        self.extend(next_tokens)
        self.steps += 1
        ended = next_tokens == EOS_ID
        return self._leave(ended) if bool(ended.any()) else []

    def _leave(self, ended: torch.Tensor) -> Finished:
        """Record the rows that ended; -> the sentences whose every row has."""
        rows = ended.nonzero().squeeze(1)
        done: Finished = []
        steps = self.steps[rows].tolist()
        # The eos is not a token of the hypothesis.
        tokens = own_tokens(self.history[rows, :-1].tolist(), [n - 1 for n in steps])
        for row, row_tokens, log_prob, length in zip(rows.tolist(), tokens, self.log_prob[rows].tolist(), steps):
            attention = None if self.attention is None else self.attention[row, -length:]
            key = self.row_keys[row]
            self.finished[key].append(make_hypothesis(row_tokens, log_prob, attention, self.options))
            if len(self.finished[key]) == self.rows_per_sentence:
                done.append((key, best_first(self.finished.pop(key), self.options.nbest)))
        if bool(ended.all()):
            self.state, self.row_keys = None, []
            return done
        assert self.state is not None
        keep = (~ended).nonzero().squeeze(1)
        self.state = self.state.select_sentences(keep)
        self.row_keys = [self.row_keys[i] for i in keep.tolist()]
        self.keep_rows(keep, int(self.steps[keep].max()))
        self.steps, self.log_prob, self.limits = self.steps[keep], self.log_prob[keep], self.limits[keep]
        return done


class SamplingSearch(GreedySearch):
    """Sampling: `options.samples` rows per sentence, each drawing its next piece at random from
    the model's distribution (temperature, top-k, top-p) with the search's own seeded generator."""

    def __init__(self, model: DecodingModel, options: SearchOptions) -> None:
        super().__init__(model, options)
        self.rows_per_sentence = options.sample_count
        self.draw = None  # made with the first sentences' device

    def add(self, src: torch.Tensor, src_lengths: torch.Tensor, keys: Sequence[Hashable]) -> None:
        if self.draw is None:
            self.draw = sampler(self.options, src.device)
        super().add(src, src_lengths, keys)

    def choose(self, log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.draw is not None, "add sentences first"
        next_tokens = self.draw(log_probs)
        return next_tokens, log_probs.gather(1, next_tokens.unsqueeze(1)).squeeze(1)
