"""Search over the decoding protocol (`nmt.search.protocol`): greedy, beam and sampling.

Only the protocol is used, so every model that implements it decodes with this code. All
searches run a whole batch of sentences at once and drop sentences as they finish.
"""

from __future__ import annotations

import torch

from nmt.config import SearchOptions
from nmt.search.beam import beam_search
from nmt.search.greedy import greedy_search
from nmt.search.hypothesis import Hypothesis, length_penalty, max_output_lengths
from nmt.search.protocol import DecoderState, DecodingModel

__all__ = [
    "DecoderState",
    "DecodingModel",
    "Hypothesis",
    "SearchOptions",
    "beam_search",
    "greedy_search",
    "length_penalty",
    "max_output_lengths",
    "search",
]


def search(
    model: DecodingModel, src: torch.Tensor, src_lengths: torch.Tensor, options: SearchOptions
) -> list[list[Hypothesis]]:
    """The `options.nbest` best hypotheses of every sentence, best first.

    src (batch, src_len), src_lengths (batch,). Greedy (beam 1) and sampling run one row per
    hypothesis; greedy gives what beam search of size 1 without a length penalty gives.
    """
    if options.sample or options.beam_size == 1:
        return greedy_search(model, src, src_lengths, options)
    return beam_search(model, src, src_lengths, options)
