"""Greedy search and sampling: one piece per row at every step, each sentence on its own rows.

Greedy takes the most probable next piece; sampling draws it (`nmt.search.sampling`), with
`beam_size` samples of every sentence, of which the `nbest` best by score are kept. Rows that end
leave the batch, so a step costs only the rows still decoding.
"""

from __future__ import annotations

import torch

from nmt.config import SearchOptions
from nmt.data.tokenizer import BOS_ID, EOS_ID
from nmt.search.constraints import block_repeated_ngrams, restrict_eos
from nmt.search.hypothesis import Hypothesis, best_first, make_hypothesis, max_output_lengths
from nmt.search.protocol import DecodingModel
from nmt.search.sampling import sampler


@torch.no_grad()
def greedy_search(
    model: DecodingModel, src: torch.Tensor, src_lengths: torch.Tensor, options: SearchOptions
) -> list[list[Hypothesis]]:
    """The options.nbest best hypotheses of every sentence (one without sampling), best first."""
    copies = options.beam_size if options.sample else 1  # rows per sentence
    sentences, device = src.size(0), src.device
    state = model.init_decoder(model.encode(src, src_lengths))
    max_lens = max_output_lengths(src_lengths, options.max_len_a, options.max_len_b, options.max_len_cap).to(device)
    if copies > 1:
        row_sentence = torch.arange(sentences, device=device).repeat_interleave(copies)
        state, max_lens = state.select_sentences(row_sentence), max_lens[row_sentence]
    rows, steps = sentences * copies, int(max_lens.max())
    choose = sampler(options, device) if options.sample else None
    tokens = torch.full((rows, steps), EOS_ID, dtype=torch.long, device=device)
    attention = src.new_zeros(rows, steps, src.size(1), dtype=torch.float) if options.return_attention else None
    log_prob = torch.zeros(rows, device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)  # tokens + eos, once finished
    live = torch.arange(rows, device=device)  # the original row of every row still decoding
    prev_tokens = torch.full_like(live, BOS_ID)
    for t in range(steps):
        log_probs, state = model.step(prev_tokens, state)  # (live, vocab)
        restrict_eos(log_probs, t, options.min_len, max_lens[live])
        if options.no_repeat_ngram:
            block_repeated_ngrams(log_probs, tokens[live, :t], options.no_repeat_ngram)
        if choose is None:
            chosen_log_probs, next_tokens = log_probs.max(dim=-1)  # (live,)
        else:
            next_tokens = choose(log_probs)
            chosen_log_probs = log_probs.gather(1, next_tokens.unsqueeze(1)).squeeze(1)
        tokens[live, t] = next_tokens
        log_prob[live] += chosen_log_probs
        if attention is not None and state.attention_weights is not None:
            attention[live, t] = state.attention_weights.float()
        finished = next_tokens == EOS_ID
        lengths[live[finished]] = t + 1
        if bool(finished.all()):
            break
        if bool(finished.any()):  # shrink the batch to the rows still decoding
            keep = (~finished).nonzero().squeeze(1)
            state, live, next_tokens = state.select_sentences(keep), live[keep], next_tokens[keep]
        prev_tokens = next_tokens
    hypotheses = [
        make_hypothesis(
            tokens[i, : n - 1].tolist(), float(log_prob[i]), None if attention is None else attention[i, :n], options
        )
        for i, n in enumerate(lengths.tolist())
    ]
    return [best_first(hypotheses[s * copies : (s + 1) * copies], options.nbest) for s in range(sentences)]
