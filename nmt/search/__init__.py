"""Search over the decoding protocol (`nmt.search.protocol`): greedy, beam and sampling.

Only the protocol is used, so every model that implements it decodes with this code. All
searches run a batch of sentences at once, drop sentences as they finish and, as running searches
(`start_search`, `nmt.search.running`), take in new ones between steps.
"""

from __future__ import annotations

import torch

from nmt.options import SearchOptions
from nmt.search.beam import BeamSearch, beam_search
from nmt.search.greedy import GreedySearch, SamplingSearch, greedy_search
from nmt.search.hypothesis import Hypothesis, length_penalty, max_output_lengths
from nmt.search.protocol import DecoderState, DecodingModel
from nmt.search.running import RunningSearch, can_join, decode_all

__all__ = [
    "BeamSearch",
    "DecoderState",
    "DecodingModel",
    "GreedySearch",
    "Hypothesis",
    "RunningSearch",
    "SamplingSearch",
    "SearchOptions",
    "beam_search",
    "can_join",
    "greedy_search",
    "length_penalty",
    "max_output_lengths",
    "search",
    "start_search",
]


def search(
    model: DecodingModel, src: torch.Tensor, src_lengths: torch.Tensor, options: SearchOptions
) -> list[list[Hypothesis]]:
    """The `options.nbest` best hypotheses of every sentence, best first.

    src (batch, src_len), src_lengths (batch,). Greedy (beam 1) and sampling run one row per
    hypothesis; greedy gives what beam search of size 1 without a length penalty gives.
    """
    return decode_all(start_search(model, options), src, src_lengths)


def start_search(model: DecodingModel, options: SearchOptions) -> RunningSearch:
    """A running search with these options, empty: `add` sentences, then `step` while `busy`."""
    if options.sample:
        return SamplingSearch(model, options)
    if options.beam_size == 1:
        return GreedySearch(model, options)
    return BeamSearch(model, options)
