"""Greedy search and sampling: one piece per row at every step, each sentence on its own rows.

Greedy takes the most probable next piece; sampling draws it (`nmt.search.sampling`), with
`beam_size` samples of every sentence, of which the `nbest` best by score are kept. Rows that end
leave the batch, so a step costs only the rows still decoding; new sentences may join between
steps (`nmt.search.running`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from nmt.data.special import BOS_ID, EOS_ID
from nmt.options import SearchOptions
from nmt.search.constraints import block_repeated_ngrams, restrict_eos
from nmt.search.hypothesis import Hypothesis, best_first, make_hypothesis
from nmt.search.protocol import DecoderState, DecodingModel
from nmt.search.running import Finished, decode_all, new_rows, own_tokens, take_in
from nmt.search.sampling import sampler


@torch.no_grad()
def greedy_search(
    model: DecodingModel, src: torch.Tensor, src_lengths: torch.Tensor, options: SearchOptions
) -> list[list[Hypothesis]]:
    """The options.nbest best hypotheses of every sentence (one without sampling), best first."""
    return decode_all(GreedySearch(model, options), src, src_lengths)


class GreedySearch:
    """A running greedy search (or sampling): every row is one hypothesis of one sentence."""

    def __init__(self, model: DecodingModel, options: SearchOptions) -> None:
        self.model, self.options = model, options
        self.copies = options.beam_size if options.sample else 1  # rows per sentence
        self.choose = None  # the sampler, made with the first sentences' device
        self.state: DecoderState | None = None
        self.row_keys: list[Hashable] = []  # the sentence of every row
        self.finished: dict[Hashable, list[Hypothesis]] = {}  # a sentence's ended rows
        # Per row: the pieces so far (rows, T, newest last; a row that joined later has fewer,
        # on the right), their count, their log-probability, the length limit, the last piece.
        self.history = self.steps = self.log_prob = self.limits = self.prev_tokens = torch.empty(0)
        self.attention: torch.Tensor | None = None  # (rows, T, src_len) with options.return_attention

    @property
    def busy(self) -> bool:
        return self.state is not None

    @torch.no_grad()
    def add(self, src: torch.Tensor, src_lengths: torch.Tensor, keys: Sequence[Hashable]) -> None:
        options, device, sentences = self.options, src.device, src.size(0)
        state, limits = new_rows(self, src, src_lengths)
        if self.copies > 1:
            row_sentence = torch.arange(sentences, device=device).repeat_interleave(self.copies)
            state, limits = state.select_sentences(row_sentence), limits[row_sentence]
        if options.sample and self.choose is None:
            self.choose = sampler(options, device)
        rows = limits.numel()
        self.row_keys += [key for key in keys for _ in range(self.copies)]
        self.finished.update((key, []) for key in keys)
        new = {
            "history": torch.zeros(rows, self.history.size(1) if self.busy else 0, dtype=torch.long, device=device),
            "steps": torch.zeros(rows, dtype=torch.long, device=device),
            "log_prob": torch.zeros(rows, device=device),
            "limits": limits,
            "prev_tokens": torch.full((rows,), BOS_ID, dtype=torch.long, device=device),
        }
        if self.state is None and options.return_attention:
            self.attention = torch.zeros(rows, 0, src.size(1), device=device)
        take_in(self, state, new)

    @torch.no_grad()
    def step(self) -> Finished:
        assert self.state is not None, "add sentences first"
        options = self.options
        log_probs, self.state = self.model.step(self.prev_tokens, self.state)  # (rows, vocab)
        restrict_eos(log_probs, self.steps, options.min_len, self.limits)
        if options.no_repeat_ngram:
            block_repeated_ngrams(log_probs, self.history, options.no_repeat_ngram)
        if self.choose is None:
            chosen_log_probs, next_tokens = log_probs.max(dim=-1)  # (rows,)
        else:
            next_tokens = self.choose(log_probs)
            chosen_log_probs = log_probs.gather(1, next_tokens.unsqueeze(1)).squeeze(1)
        self.log_prob += chosen_log_probs
        self.history = torch.cat([self.history, next_tokens.unsqueeze(1)], dim=1)
        self.steps += 1
        if self.attention is not None and self.state.attention_weights is not None:
            self.attention = torch.cat([self.attention, self.state.attention_weights.unsqueeze(1).float()], dim=1)
        self.prev_tokens = next_tokens
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
            if len(self.finished[key]) == self.copies:
                done.append((key, best_first(self.finished.pop(key), self.options.nbest)))
        if bool(ended.all()):
            self.state, self.row_keys = None, []
            return done
        keep = (~ended).nonzero().squeeze(1)
        self.state = self.state.select_sentences(keep)
        self.row_keys = [self.row_keys[i] for i in keep.tolist()]
        longest = int(self.steps[keep].max())  # history beyond every row's own is padding
        self.history = self.history[keep, self.history.size(1) - longest :]
        self.steps, self.log_prob = self.steps[keep], self.log_prob[keep]
        self.limits, self.prev_tokens = self.limits[keep], self.prev_tokens[keep]
        if self.attention is not None:
            self.attention = self.attention[keep]
        return done
