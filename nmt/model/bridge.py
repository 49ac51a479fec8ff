"""The bridge: the encoder's final (h, c) of every layer -> the decoder's initial (h, c).

This is the seeds' z_n -> z'_0: without attention it is the only path from source to target.
- same depth and width: copied layer by layer;
- same depth, other width (e.g. a bidirectional encoder): per-layer linear + tanh;
- other depth: all encoder layers, concatenated, through one linear + tanh to all decoder layers.
The cell state goes the same way as the hidden state when both sides have one. A gru or rnn
encoder has none: an lstm-like decoder then starts from a zero cell state, and the source reaches
it through the bridged hidden state alone (which feeds every gate at the first step). A gru or
rnn decoder takes the hidden state only.
"""

from __future__ import annotations

import torch
from torch import nn

from nmt.model.encoder import RecurrentState


class Bridge(nn.Module):
    def __init__(
        self,
        encoder_layers: int,
        encoder_size: int,
        decoder_layers: int,
        decoder_size: int,
        encoder_cell_state: bool = True,
        decoder_cell_state: bool = True,
    ) -> None:
        super().__init__()
        self.encoder_layers, self.encoder_size = encoder_layers, encoder_size
        self.decoder_layers, self.decoder_size = decoder_layers, decoder_size
        self.decoder_cell_state = decoder_cell_state
        self.bridge_cell_state = encoder_cell_state and decoder_cell_state
        if encoder_layers == decoder_layers and encoder_size == decoder_size:
            self.mode = "copy"
        elif encoder_layers == decoder_layers:
            self.mode = "per_layer"
        else:
            self.mode = "all_layers"
        self.h_proj = self._projections()
        self.c_proj = self._projections() if self.bridge_cell_state else None

    def _projections(self) -> nn.ModuleList | None:
        if self.mode == "copy":
            return None
        if self.mode == "per_layer":
            return nn.ModuleList(nn.Linear(self.encoder_size, self.decoder_size) for _ in range(self.decoder_layers))
        flat_in, flat_out = self.encoder_layers * self.encoder_size, self.decoder_layers * self.decoder_size
        return nn.ModuleList([nn.Linear(flat_in, flat_out)])

    def forward(self, final: RecurrentState) -> RecurrentState:
        """(encoder_layers, batch, encoder_size) each -> (decoder_layers, batch, decoder_size)."""
        assert final.h.shape[0] == self.encoder_layers and final.h.shape[2] == self.encoder_size, final.h.shape
        h = self._map(final.h, self.h_proj)
        if self.bridge_cell_state:
            assert final.c is not None
            c = self._map(final.c, self.c_proj)
        elif self.decoder_cell_state:
            c = torch.zeros_like(h)
        else:
            c = None
        return RecurrentState(h, c)

    def _map(self, state: torch.Tensor, projections: nn.ModuleList | None) -> torch.Tensor:
        if self.mode == "copy":
            return state
        assert projections is not None
        if self.mode == "per_layer":
            return torch.stack([torch.tanh(proj(layer)) for proj, layer in zip(projections, state)])
        batch_size = state.shape[1]
        flat = state.transpose(0, 1).reshape(batch_size, -1)  # (batch, enc_layers * enc_size)
        mapped = torch.tanh(projections[0](flat))  # (batch, dec_layers * dec_size)
        return mapped.view(batch_size, self.decoder_layers, self.decoder_size).transpose(0, 1).contiguous()
