"""What every search keeps of its rows, and the step they share.

A row is one hypothesis being extended: greedy search has one per sentence, sampling one per
sample, beam search one per beam. `RowSearch` keeps the decoder state of every row, the pieces so
far (`history`: rows x T, newest last; a sentence that joined later has fewer, on the right), the
last piece, the attention (with `options.return_attention`), the sentences' keys and their
finished hypotheses. Its `next_log_probs` runs the model one step and applies the constraints
(no eos before `min_len`, eos at the length limit, no repeated n-grams); each strategy chooses the
next pieces from those log-probabilities and says which rows go on.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from nmt.options import SearchOptions
from nmt.search.constraints import block_repeated_ngrams, restrict_eos
from nmt.search.hypothesis import Hypothesis, max_output_lengths
from nmt.search.protocol import DecoderState, DecodingModel
from nmt.search.running import can_join


class RowSearch:
    def __init__(self, model: DecodingModel, options: SearchOptions) -> None:
        self.model, self.options = model, options
        self.state: DecoderState | None = None
        self.finished: dict[Hashable, list[Hypothesis]] = {}  # a sentence's finished hypotheses
        self.history = self.prev_tokens = torch.empty(0, dtype=torch.long)
        self.attention: torch.Tensor | None = None  # (rows, T, src_len) with options.return_attention

    @property
    def busy(self) -> bool:
        """Some sentence is still decoding."""
        return self.state is not None

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[DecoderState, torch.Tensor]:
        """The decoder state (a row per sentence) and length limits (sentences,) of sentences
        that join; refused while busy with options that cannot take late sentences."""
        options = self.options
        if self.busy and not can_join(options):
            raise ValueError("sentences cannot join a search under way that samples, blocks n-grams or keeps attention")
        state = self.model.init_decoder(self.model.encode(src, src_lengths))
        limits = max_output_lengths(src_lengths, options.max_len_a, options.max_len_b, options.max_len_cap)
        return state, limits.to(src.device)

    def new_history(self, rows: int, device: torch.device) -> torch.Tensor:
        """Empty pieces for rows that join: as long as the rows' under way, padding on the left."""
        return torch.zeros(rows, self.history.size(1) if self.busy else 0, dtype=torch.long, device=device)

    def join_rows(self, state: DecoderState, tensors: dict[str, torch.Tensor], src_len: int) -> None:
        """Make new sentences' decoder state and their tensors of one entry per row or sentence
        (attribute name -> tensor; each strategy has its own) the search's, when it is idle, or
        append them to its own (`DecoderState.join`)."""
        if self.state is None:
            self.state = state
            for name, tensor in tensors.items():
                setattr(self, name, tensor)
            if self.options.return_attention:
                self.attention = torch.zeros(self.prev_tokens.numel(), 0, src_len, device=self.prev_tokens.device)
            return
        self.state = self.state.join(state)
        for name, tensor in tensors.items():
            setattr(self, name, torch.cat([getattr(self, name), tensor]))

    def next_log_probs(self, row_steps: torch.Tensor, row_limits: torch.Tensor) -> torch.Tensor:
        """One step of the model for every row -> log-probabilities of the next piece (rows,
        vocab), with eos kept within the rows' lengths (`row_steps` pieces so far, at most
        `row_limits`) and repeated n-grams blocked."""
        assert self.state is not None, "add sentences first"
        options = self.options
        log_probs, self.state = self.model.step(self.prev_tokens, self.state)
        restrict_eos(log_probs, row_steps, options.min_len, row_limits)
        if options.no_repeat_ngram:
            block_repeated_ngrams(log_probs, self.history, options.no_repeat_ngram)
        return log_probs

    def extend(self, next_tokens: torch.Tensor, parent_rows: torch.Tensor | None = None) -> None:
        """Each row's next piece; with `parent_rows`, row i continues row parent_rows[i] (beams)."""
        history, attention = self.history, self.attention
        if parent_rows is not None:
            history = history[parent_rows]
            attention = None if attention is None else attention[parent_rows]
        self.history = torch.cat([history, next_tokens.unsqueeze(1)], dim=1)
        self.prev_tokens = next_tokens
        assert self.state is not None
        if attention is not None and self.state.attention_weights is not None:
            attention = torch.cat([attention, self.state.attention_weights.unsqueeze(1).float()], dim=1)
        self.attention = attention

    def keep_rows(self, rows: torch.Tensor, longest: int) -> None:
        """Only these rows go on; `longest`: the most pieces any of them has (the history's
        columns before are padding)."""
        self.history = self.history[rows, self.history.size(1) - longest :]
        self.prev_tokens = self.prev_tokens[rows]
        if self.attention is not None:
            self.attention = self.attention[rows]
