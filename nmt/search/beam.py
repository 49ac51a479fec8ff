"""Beam search over the decoding protocol: every sentence and beam of a batch at once.

Rows are (sentence, beam) pairs; a sentence's beams share one copy of its encoder memory
(`DecoderState.reorder_beams`), and sentences that are done leave the batch (`select_sentences`).
The search starts from one row per sentence (its bos), so the first step decodes one row per
sentence, not beam_size copies of it.
"""

from __future__ import annotations

import math

import torch

from nmt.config import SearchOptions
from nmt.data.tokenizer import BOS_ID, EOS_ID
from nmt.search.constraints import block_repeated_ngrams, restrict_eos
from nmt.search.hypothesis import Hypothesis, best_first, length_penalty, make_hypothesis, max_output_lengths
from nmt.search.protocol import DecodingModel


@torch.no_grad()
def beam_search(
    model: DecodingModel, src: torch.Tensor, src_lengths: torch.Tensor, options: SearchOptions
) -> list[list[Hypothesis]]:
    """The options.nbest best hypotheses of every sentence, best first."""
    beams = _Beams.start(model, src, src_lengths, options)
    for t in range(int(beams.max_lens.max())):
        log_probs, beams.state = model.step(beams.prev_tokens, beams.state)  # (rows, vocab)
        restrict_eos(log_probs, t, options.min_len, beams.max_lens[beams.live].repeat_interleave(beams.width))
        if options.no_repeat_ngram:
            block_repeated_ngrams(log_probs, beams.history, options.no_repeat_ngram)
        beams.expand(log_probs)
        if not beams.prune(t):
            break
    return beams.finish()


class _Beams:
    """The live part of a beam search: `live` sentences x `width` beams, as rows; `width` is 1
    before the first expansion, then beam_size."""

    def __init__(self, state, max_lens: torch.Tensor, batch_size: int, src_len: int, options: SearchOptions) -> None:
        device = max_lens.device
        self.options = options
        self.state = state
        self.max_lens = max_lens  # (batch,) for every original sentence
        self.live = torch.arange(batch_size, device=device)  # original index of each live sentence
        self.scores = torch.zeros(batch_size, 1, device=device)  # (live, width) log-probs
        self.history = torch.empty(batch_size, 0, dtype=torch.long, device=device)  # (rows, t)
        self.attention = torch.empty(batch_size, 0, src_len, device=device) if options.return_attention else None
        self.prev_tokens = torch.full((batch_size,), BOS_ID, dtype=torch.long, device=device)
        self.finished: list[list[Hypothesis]] = [[] for _ in range(batch_size)]
        # The nbest-th best finished score of every sentence (-inf until it has nbest).
        self.nbest_score = torch.full((batch_size,), -math.inf, device=device)

    @classmethod
    def start(
        cls, model: DecodingModel, src: torch.Tensor, src_lengths: torch.Tensor, options: SearchOptions
    ) -> _Beams:
        """Encode once; every sentence starts as one row."""
        state = model.init_decoder(model.encode(src, src_lengths))
        max_lens = max_output_lengths(src_lengths, options.max_len_a, options.max_len_b, options.max_len_cap)
        return cls(state, max_lens.to(src.device), src.size(0), src.size(1), options)

    @property
    def width(self) -> int:
        """Beams per live sentence: 1 before the first expansion, then beam_size."""
        return self.scores.size(1)

    def expand(self, log_probs: torch.Tensor) -> None:
        """Extend every beam by every token, keep the k best continuations of each sentence, and
        finish the hypotheses that end in eos among the k best candidates."""
        k, width, vocab = self.options.beam_size, self.width, log_probs.size(-1)
        live = len(self.live)
        candidates = (self.scores.unsqueeze(-1) + log_probs.view(live, width, vocab)).view(live, width * vocab)
        if candidates.size(1) < 2 * k:  # a vocabulary smaller than 2k: pad with impossible candidates
            candidates = torch.nn.functional.pad(candidates, (0, 2 * k - candidates.size(1)), value=-math.inf)
        top_scores, top_ids = candidates.topk(2 * k, dim=1)  # (live, 2k): at least k do not end
        top_beams, top_tokens = (top_ids // vocab).clamp(max=width - 1), top_ids % vocab
        is_eos = top_tokens == EOS_ID
        step_attention = self.state.attention_weights
        sentence, column = (is_eos[:, :k] & top_scores[:, :k].isfinite()).nonzero().unbind(1)
        ending_rows = sentence * width + top_beams[sentence, column]  # the rows whose next token is eos
        # One conversion to Python per step, not one per hypothesis.
        for row, sentence_id, tokens, log_prob in zip(
            ending_rows.tolist(),
            self.live[sentence].tolist(),
            self.history[ending_rows].tolist(),
            top_scores[sentence, column].tolist(),
        ):
            attention = None
            if self.attention is not None and step_attention is not None:
                attention = torch.cat([self.attention[row], step_attention[row : row + 1].float()])
            self._add_finished(sentence_id, make_hypothesis(tokens, log_prob, attention, self.options))
        # The k best candidates that do not end continue, best first.
        keep = torch.sort(is_eos.to(torch.int8), dim=1, stable=True).indices[:, :k]  # (live, k)
        self.scores = top_scores.gather(1, keep)
        parent_rows = (torch.arange(live, device=keep.device) * width).unsqueeze(1) + top_beams.gather(1, keep)
        parent_rows = parent_rows.view(-1)  # (live * k,)
        self.state = self.state.reorder_beams(parent_rows)  # parents are the sentence's own beams
        self.prev_tokens = top_tokens.gather(1, keep).view(-1)
        self.history = torch.cat([self.history[parent_rows], self.prev_tokens.unsqueeze(1)], dim=1)
        if self.attention is not None and self.state.attention_weights is not None:
            self.attention = torch.cat(
                [self.attention[parent_rows], self.state.attention_weights.unsqueeze(1).float()], 1
            )

    def prune(self, t: int) -> bool:
        """Drop the sentences that are done; False when none is left.

        A sentence is done at its length limit, or once its nbest-th finished hypothesis scores
        at least as well as the best live beam could (options.stopping): at the next step
        ("early"), or at any length up to the limit ("exact": a live beam's log-prob only falls,
        but the penalty's divisor grows with length, so the limit's divisor bounds it).
        """
        options, k = self.options, self.options.beam_size
        limits = self.max_lens[self.live]
        lengths = limits if options.stopping == "exact" else torch.full_like(limits, t + 2).clamp(max=limits)
        best_possible = self.scores[:, 0] / torch.as_tensor(
            length_penalty(lengths.float(), options.length_penalty, options.alpha), device=limits.device
        )
        done = (limits <= t + 1) | (self.nbest_score[self.live] >= best_possible)
        if bool(done.all()):
            return False
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            rows = ((keep * k).unsqueeze(1) + torch.arange(k, device=keep.device)).view(-1)
            self.live, self.scores = self.live[keep], self.scores[keep]
            self.state, self.prev_tokens, self.history = (
                self.state.select_sentences(keep),
                self.prev_tokens[rows],
                self.history[rows],
            )
            if self.attention is not None:
                self.attention = self.attention[rows]
        return True

    def _add_finished(self, sentence: int, hypothesis: Hypothesis) -> None:
        finished = self.finished[sentence]
        finished.append(hypothesis)
        if len(finished) >= self.options.nbest:
            finished.sort(key=lambda h: h.score, reverse=True)
            self.nbest_score[sentence] = finished[self.options.nbest - 1].score

    def finish(self) -> list[list[Hypothesis]]:
        return [best_first(hypotheses, self.options.nbest) for hypotheses in self.finished]
