"""Beam search over the decoding protocol: every sentence and beam of a batch at once.

Rows are (sentence, beam) pairs; a sentence's beams share one copy of its encoder memory
(`DecoderState.reorder_beams`), and sentences that are done leave the batch (`select_sentences`).
A search starts from one row per sentence (its bos), so the first step decodes one row per
sentence, not beam_size copies of it. Sentences may join between steps (`nmt.search.running`):
they enter with beam_size rows of which all but the first score -inf, which expands as one row.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch

from nmt.data.special import BOS_ID, EOS_ID
from nmt.options import SearchOptions
from nmt.search.hypothesis import Hypothesis, best_first, length_penalty, make_hypothesis
from nmt.search.protocol import DecodingModel
from nmt.search.rows import RowSearch
from nmt.search.running import Finished, decode_all, own_tokens


@torch.no_grad()
def beam_search(
    model: DecodingModel, src: torch.Tensor, src_lengths: torch.Tensor, options: SearchOptions
) -> list[list[Hypothesis]]:
    """The options.nbest best hypotheses of every sentence, best first."""
    return decode_all(BeamSearch(model, options), src, src_lengths)


class BeamSearch(RowSearch):
    """A running beam search: `live` sentences x `width` beams, as rows; `width` is 1 until the
    first expansion, then beam_size. Every step keeps the k best continuations of each sentence."""

    def __init__(self, model: DecodingModel, options: SearchOptions) -> None:
        super().__init__(model, options)
        self.keys: list[Hashable] = []  # of every live sentence
        # Per live sentence: its length limit, the pieces its beams have, the nbest-th best
        # finished score (-inf until it has nbest) and its beams' log-probs (live, width).
        self.limits = self.steps = self.nbest_score = torch.empty(0)
        self.scores = torch.empty(0, 1)

    @property
    def width(self) -> int:
        """Beams per live sentence: 1 before the first expansion, then beam_size."""
        return self.scores.size(1)

    @torch.no_grad()
    def add(self, src: torch.Tensor, src_lengths: torch.Tensor, keys: Sequence[Hashable]) -> None:
        device, sentences = src.device, src.size(0)
        state, limits = self.encode(src, src_lengths)
        self.keys += keys
        self.finished.update((key, []) for key in keys)
        width = self.width if self.busy else 1
        scores = torch.zeros(sentences, width, device=device)
        if width > 1:  # expands as one row: the others cannot win
            state = state.reorder_beams(torch.arange(sentences, device=device).repeat_interleave(width))
            scores[:, 1:] = -math.inf
        new = {
            "limits": limits,
            "steps": torch.zeros(sentences, dtype=torch.long, device=device),
            "nbest_score": torch.full((sentences,), -math.inf, device=device),
            "scores": scores,
            "history": self.new_history(sentences * width, device),
            "prev_tokens": torch.full((sentences * width,), BOS_ID, dtype=torch.long, device=device),
        }
        self.join_rows(state, new, src.size(1))

    @torch.no_grad()
    def step(self) -> Finished:
        width = self.width
        log_probs = self.next_log_probs(self.steps.repeat_interleave(width), self.limits.repeat_interleave(width))
        self._expand(log_probs)
        self.steps += 1
        return self._prune()

    def _expand(self, log_probs: torch.Tensor) -> None:
        """Extend every beam by every token, keep the k best continuations of each sentence, and
        finish the hypotheses that end in eos among the k best candidates."""
        k, width, vocab = self.options.beam_size, self.width, log_probs.size(-1)
        live = len(self.keys)
        candidates = (self.scores.unsqueeze(-1) + log_probs.view(live, width, vocab)).view(live, width * vocab)
        if candidates.size(1) < 2 * k:  # a vocabulary smaller than 2k: pad with impossible candidates
            candidates = torch.nn.functional.pad(candidates, (0, 2 * k - candidates.size(1)), value=-math.inf)
        top_scores, top_ids = candidates.topk(2 * k, dim=1)  # (live, 2k): at least k do not end
        top_beams, top_tokens = (top_ids // vocab).clamp(max=width - 1), top_ids % vocab
        is_eos = top_tokens == EOS_ID
        step_attention = self.state.attention_weights if self.attention is not None else None
        sentence, column = (is_eos[:, :k] & top_scores[:, :k].isfinite()).nonzero().unbind(1)
        ending_rows = sentence * width + top_beams[sentence, column]  # the rows whose next token is eos
        # One conversion to Python per step, not one per hypothesis.
        sentences = sentence.tolist()
        for row, live_sentence, tokens, log_prob in zip(
            ending_rows.tolist(),
            sentences,
            own_tokens(self.history[ending_rows].tolist(), self.steps[sentence].tolist()),
            top_scores[sentence, column].tolist(),
        ):
            attention = None
            if step_attention is not None:
                attention = torch.cat([self.attention[row], step_attention[row : row + 1].float()])
            self._add_finished(live_sentence, make_hypothesis(tokens, log_prob, attention, self.options))
        # The k best candidates that do not end continue, best first.
        keep = torch.sort(is_eos.to(torch.int8), dim=1, stable=True).indices[:, :k]  # (live, k)
        self.scores = top_scores.gather(1, keep)
        parent_rows = (torch.arange(live, device=keep.device) * width).unsqueeze(1) + top_beams.gather(1, keep)
        parent_rows = parent_rows.view(-1)  # (live * k,)
        self.state = self.state.reorder_beams(parent_rows)  # parents are the sentence's own beams
        self.extend(top_tokens.gather(1, keep).view(-1), parent_rows)

    def _prune(self) -> Finished:
        """Drop the sentences that are done -> their nbest hypotheses.

        A sentence is done at its length limit, or once its nbest-th finished hypothesis scores
        at least as well as the best live beam could (options.stopping): at the next step
        ("early"), or at any length up to the limit ("exact": a live beam's log-prob only falls,
        but the penalty's divisor grows with length, so the limit's divisor bounds it).
        """
        options, k, limits = self.options, self.options.beam_size, self.limits
        lengths = limits if options.stopping == "exact" else (self.steps + 1).clamp(max=limits)
        best_possible = self.scores[:, 0] / torch.as_tensor(
            length_penalty(lengths.float(), options.length_penalty, options.alpha), device=limits.device
        )
        done = (limits <= self.steps) | (self.nbest_score >= best_possible)
        if not bool(done.any()):
            return []
        finished = [
            (self.keys[i], best_first(self.finished.pop(self.keys[i]), options.nbest))
            for i in done.nonzero().squeeze(1).tolist()
        ]
        if bool(done.all()):
            self.state, self.keys = None, []
            return finished
        keep = (~done).nonzero().squeeze(1)
        rows = ((keep * k).unsqueeze(1) + torch.arange(k, device=keep.device)).view(-1)
        self.keys = [self.keys[i] for i in keep.tolist()]
        self.limits, self.steps, self.nbest_score = self.limits[keep], self.steps[keep], self.nbest_score[keep]
        self.scores, self.state = self.scores[keep], self.state.select_sentences(keep)
        self.keep_rows(rows, int(self.steps.max()))
        return finished

    def _add_finished(self, live_sentence: int, hypothesis: Hypothesis) -> None:
        finished = self.finished[self.keys[live_sentence]]
        finished.append(hypothesis)
        if len(finished) >= self.options.nbest:
            finished.sort(key=lambda h: h.score, reverse=True)
            self.nbest_score[live_sentence] = finished[self.options.nbest - 1].score
