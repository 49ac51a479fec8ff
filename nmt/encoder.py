"""The encoder: embeddings and a (bi)LSTM stack that compresses the source into its final state."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.tokenizer import PAD_ID


@dataclass
class RecurrentState:
    """Per-layer hidden and cell state, (num_layers, batch, size) each."""

    h: torch.Tensor
    c: torch.Tensor

    def index_select(self, index: torch.Tensor) -> "RecurrentState":
        return RecurrentState(self.h.index_select(1, index), self.c.index_select(1, index))


@dataclass
class EncoderOutput:
    memory: torch.Tensor  # (batch, src_len, output_size): top layer, zero at padding
    mask: torch.Tensor  # (batch, src_len) bool, True for real tokens
    final: RecurrentState  # (num_layers, batch, output_size): directions concatenated


class Encoder(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.num_directions = 2 if bidirectional else 1
        self.output_size = hidden_size * self.num_directions
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(dropout)
        self.rnn = nn.LSTM(
            embed_dim,
            hidden_size,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor) -> EncoderOutput:
        """src (batch, src_len) ids, src_lengths (batch,) -> EncoderOutput."""
        batch_size, src_len = src.shape
        embedded = self.dropout(self.embed(src))  # (batch, src_len, embed_dim)
        # Packing keeps padding out of the recurrence, so the final state is the last real token's.
        packed = pack_padded_sequence(
            embedded, src_lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        packed_memory, (h, c) = self.rnn(packed)
        memory, _ = pad_packed_sequence(packed_memory, batch_first=True, total_length=src_len)
        return EncoderOutput(
            memory=memory,  # (batch, src_len, output_size)
            mask=src != PAD_ID,
            final=RecurrentState(self._join_directions(h), self._join_directions(c)),
        )

    def _join_directions(self, state: torch.Tensor) -> torch.Tensor:
        """(layers * dirs, batch, hidden) -> (layers, batch, dirs * hidden)."""
        _, batch_size, hidden = state.shape
        state = state.view(self.num_layers, self.num_directions, batch_size, hidden)
        return torch.cat(state.unbind(1), dim=-1)
