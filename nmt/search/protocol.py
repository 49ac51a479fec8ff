"""The decoding protocol: all that search knows of a model.

A model encodes a batch of sources once, turns the encoding into a decoder state, and steps that
state one target piece at a time. Search moves the state's rows with two named operations:
`reorder_beams` (beam search keeps the best continuations, each of a beam of the same sentence),
`select_sentences` (finished sentences leave the batch; a sentence named twice is decoded
twice, as sampling does for several samples) and `join` (sentences that arrive while others are
decoding enter the batch: continuous batching, `nmt.search.start_search`). Every cell and attention kind of `nmt.model`
implements it, and so can any other model, e.g. an ensemble or the fixed tables of the tests.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class DecoderState(Protocol):
    """Rows of hypotheses in progress: `beams` consecutive rows per sentence."""

    @property
    def attention_weights(self) -> torch.Tensor | None:
        """(rows, src_len): the last step's attention, or None for a model without attention."""
        ...

    def reorder_beams(self, parents: torch.Tensor) -> DecoderState:
        """Row i of the new state continues row parents[i], which belongs to row i's sentence;
        every sentence gets len(parents) / sentences beams."""
        ...

    def select_sentences(self, sentences: torch.Tensor) -> DecoderState:
        """Keep these sentences (indices into the current ones), in this order, with all their
        beams; a sentence named twice is decoded twice from here on, independently."""
        ...

    def join(self, other: DecoderState) -> DecoderState:
        """This state's sentences, then other's, with as many beams each; a sentence's rows go
        on as they would have alone."""
        ...


@runtime_checkable
class DecodingModel(Protocol):
    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> Any:
        """src (sentences, src_len) ids with eos, src_lengths (sentences,) -> an encoding."""
        ...

    def init_decoder(self, encoder_output: Any) -> DecoderState:
        """The state before the first target piece: one row per sentence."""
        ...

    def step(self, prev_tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """prev_tokens (rows,) -> log-probabilities of the next piece (rows, vocab), the next state."""
        ...
