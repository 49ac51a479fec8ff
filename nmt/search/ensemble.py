"""An ensemble of models as one model of the decoding protocol.

Every member encodes the same source and steps its own decoder state; the ensemble's next-piece
scores are the mean of the members' log-probabilities, so greedy, beam search and sampling search
an ensemble as they search one model, whatever the members' cells and attention. The members
must share their target vocabulary (and, since they read the same source ids, their source one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nmt.search.protocol import DecoderState, DecodingModel


@dataclass
class EnsembleState:
    """One decoder state per member, their rows in the same order."""

    members: list[DecoderState]

    @property
    def attention_weights(self) -> torch.Tensor | None:
        """The mean of the members' attention (rows, src_len); None if none has attention."""
        weights = [m.attention_weights for m in self.members if m.attention_weights is not None]
        return torch.stack([w.float() for w in weights]).mean(0) if weights else None

    def reorder_beams(self, parents: torch.Tensor) -> EnsembleState:
        return EnsembleState([member.reorder_beams(parents) for member in self.members])

    def select_sentences(self, sentences: torch.Tensor) -> EnsembleState:
        return EnsembleState([member.select_sentences(sentences) for member in self.members])

    def join(self, other: EnsembleState) -> EnsembleState:
        return EnsembleState([mine.join(theirs) for mine, theirs in zip(self.members, other.members)])


class Ensemble:
    """Models searched together: the mean of their log-probabilities at every step."""

    def __init__(self, members: Sequence[DecodingModel]) -> None:
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two models")
        self.members = list(members)

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> list[Any]:
        return [member.encode(src, src_lengths) for member in self.members]

    def init_decoder(self, encoder_output: list[Any]) -> EnsembleState:
        return EnsembleState([m.init_decoder(out) for m, out in zip(self.members, encoder_output)])

    def step(self, prev_tokens: torch.Tensor, state: EnsembleState) -> tuple[torch.Tensor, EnsembleState]:
        log_probs, states = [], []
        for member, member_state in zip(self.members, state.members):
            member_log_probs, member_state = member.step(prev_tokens, member_state)
            log_probs.append(member_log_probs)
            states.append(member_state)
        return torch.stack(log_probs).mean(0), EnsembleState(states)  # (rows, vocab)
