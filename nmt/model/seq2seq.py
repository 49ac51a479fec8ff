"""Seq2Seq: encoder -> bridge -> decoder, and how to build one from a ModelConfig.

A Seq2Seq implements the decoding protocol of `nmt.search.protocol` (`encode`, `init_decoder`,
`step`), so every search decodes every cell and attention kind."""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from nmt.config import ModelConfig
from nmt.data.special import PAD_ID
from nmt.model.bridge import Bridge
from nmt.model.cells import CELLS, set_forget_bias
from nmt.model.decoder import Decoder, DecoderState, StepTable
from nmt.model.encoder import Encoder, EncoderOutput


class Seq2Seq(nn.Module):
    def __init__(self, encoder: Encoder, bridge: Bridge, decoder: Decoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.bridge = bridge
        self.decoder = decoder

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> EncoderOutput:
        return self.encoder(src, src_lengths)

    def init_decoder(self, encoder_output: EncoderOutput) -> DecoderState:
        return self.decoder.init_state(encoder_output, self.bridge(encoder_output.final))

    def step(self, prev_tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """One decoding step: prev_tokens (rows,) -> log_probs (rows, tgt_vocab), the next state."""
        return self.decoder.step(prev_tokens, state)

    def for_search(self) -> Seq2Seq | TableSearch:
        """This model for searches over weights that stay as they are meanwhile (a Translator
        call): its steps look the first layer's embedding half up in a StepTable made now, where
        one pays. Make a new one after the weights change."""
        table = StepTable.of(self.decoder)
        return self if table is None else TableSearch(self, table)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: -> logits (batch, tgt_len, tgt_vocab)."""
        state = self.init_decoder(self.encode(src, src_lengths))
        return self.decoder(tgt_in, state)

    def forward_packed(
        self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor, tgt_lengths: torch.Tensor
    ) -> torch.Tensor:
        """Teacher forcing over real target positions only (rows longest target first, as
        `collate` orders them): -> logits (tokens, tgt_vocab), in `pack_targets`' order."""
        state = self.init_decoder(self.encode(src, src_lengths))
        return self.decoder.forward_packed(tgt_in, tgt_lengths.tolist(), state)


class TableSearch:
    """A Seq2Seq and the StepTable of its weights: the decoding protocol, for one block of searches."""

    def __init__(self, model: Seq2Seq, table: StepTable) -> None:
        self.model, self.table = model, table

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> EncoderOutput:
        return self.model.encode(src, src_lengths)

    def init_decoder(self, encoder_output: EncoderOutput) -> DecoderState:
        return self.model.init_decoder(encoder_output)

    def step(self, prev_tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        return self.model.decoder.step(prev_tokens, state, self.table)


def build_model(config: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, init_weights: bool = True) -> Seq2Seq:
    """`init_weights=False` leaves the weights as allocated, for a caller that loads them at once
    (a checkpoint): drawing 13 M random numbers on torch's one-core generator cost ~0.3 s of
    every `nmt-translate`."""
    if not init_weights:
        with _NoRandomInit():
            return _build(config, src_vocab_size, tgt_vocab_size)
    model = _build(config, src_vocab_size, tgt_vocab_size)
    initialize(model, config.init, config.init_range)
    if config.forget_bias is not None:
        for cell in (*model.encoder.rnn.cells, *model.decoder.rnn.cells):
            set_forget_bias(cell, config.forget_bias)
    return model


class _NoRandomInit(TorchFunctionMode):
    """Within it, torch.nn.init's random fills (which every module constructor calls, ours and
    torch's) return their tensor untouched. A torch function mode, not a patch: it holds for
    this thread only and ends with the block."""

    _FILLS = frozenset((nn.init.uniform_, nn.init.normal_, nn.init.kaiming_uniform_, nn.init.kaiming_normal_))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self._FILLS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def _build(config: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> Seq2Seq:
    encoder = Encoder(
        vocab_size=src_vocab_size,
        embed_dim=config.embed_dim,
        hidden_size=config.encoder.hidden_size,
        num_layers=config.encoder.num_layers,
        bidirectional=config.encoder.bidirectional,
        dropout=config.dropout,
        cell=config.encoder.cell,
        word_dropout=config.source_word_dropout,
    )
    bridge = Bridge(
        encoder_layers=config.encoder.num_layers,
        encoder_size=encoder.output_size,
        decoder_layers=config.decoder.num_layers,
        decoder_size=config.decoder.hidden_size,
        encoder_cell_state=encoder.rnn.has_cell_state,
        decoder_cell_state=CELLS[config.decoder.cell].has_cell_state,
    )
    decoder = Decoder(
        vocab_size=tgt_vocab_size,
        embed_dim=config.embed_dim,
        hidden_size=config.decoder.hidden_size,
        num_layers=config.decoder.num_layers,
        memory_size=encoder.output_size,
        attention=config.attention,
        input_feeding=config.input_feeding,
        dropout=config.dropout,
        tie_embeddings=config.tie_embeddings,
        cell=config.decoder.cell,
        word_dropout=config.target_word_dropout,
    )
    return Seq2Seq(encoder, bridge, decoder)


def initialize(model: nn.Module, kind: str, init_range: float) -> None:
    """`uniform`: every parameter ~ U(-r, r) (OpenNMT-py's default; in a short budget it trains
    far faster than xavier: docs/experiments.md); `xavier`: matrices xavier-uniform,
    vectors zero; `pytorch`: leave torch's defaults."""
    if kind == "pytorch":
        return
    for _name, param in model.named_parameters():
        if kind == "uniform":
            nn.init.uniform_(param, -init_range, init_range)
        elif param.dim() > 1:
            nn.init.xavier_uniform_(param)
        else:
            nn.init.zeros_(param)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                module.weight[PAD_ID].zero_()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
