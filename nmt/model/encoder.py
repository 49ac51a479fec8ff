"""The encoder: embeddings and a (bi)directional recurrent stack that compresses the source into
its final state (and, for attention, a memory of every position)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from nmt.data.special import PAD_ID
from nmt.model.cells import Gates
from nmt.model.rnn import RecurrentStack
from nmt.model.word_dropout import WordDropout


@dataclass
class RecurrentState:
    """Per-layer hidden and cell state, (num_layers, batch, size) each; `c` is None for cells
    without a cell state (gru, rnn)."""

    h: torch.Tensor
    c: torch.Tensor | None

    def index_select(self, index: torch.Tensor) -> RecurrentState:
        c = None if self.c is None else self.c.index_select(1, index)
        return RecurrentState(self.h.index_select(1, index), c)


@dataclass
class EncoderOutput:
    memory: torch.Tensor  # (batch, src_len, output_size): top layer, zero at padding
    mask: torch.Tensor  # (batch, src_len) bool, True for real tokens
    final: RecurrentState  # (num_layers, batch, output_size): directions concatenated
    gates: list[Gates] = field(default_factory=list)  # recorded gates, when asked for


class Encoder(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        dropout: float,
        cell: str = "lstm",
        word_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.num_directions = 2 if bidirectional else 1
        self.output_size = hidden_size * self.num_directions
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.word_dropout = WordDropout(word_dropout)
        self.dropout = nn.Dropout(dropout)
        self.rnn = RecurrentStack(cell, embed_dim, hidden_size, num_layers, bidirectional, dropout)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, record_gates: bool = False) -> EncoderOutput:
        """src (batch, src_len) ids, src_lengths (batch,) -> EncoderOutput.

        Padding never reaches the final state (packed or masked), so it is the last real token's.
        """
        embedded = self.dropout(self.word_dropout(self.embed(src)))  # (batch, src_len, embed_dim)
        out = self.rnn(embedded, src_lengths, record=record_gates)
        c = None if out.c is None else self._join_directions(out.c)
        return EncoderOutput(
            memory=out.outputs,  # (batch, src_len, output_size)
            mask=src != PAD_ID,
            final=RecurrentState(self._join_directions(out.h), c),
            gates=out.gates,
        )

    def _join_directions(self, state: torch.Tensor) -> torch.Tensor:
        """(layers * dirs, batch, hidden) -> (layers, batch, dirs * hidden)."""
        _, batch_size, hidden = state.shape
        state = state.view(self.num_layers, self.num_directions, batch_size, hidden)
        return torch.cat(state.unbind(1), dim=-1)
