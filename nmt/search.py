"""Greedy and beam search over the decoding protocol of DESIGN.md.

Only `model.encode`, `model.init_decoder`, `model.decoder.step` and the state's row moves
(`reorder`, `select_sentences`) are used, so every cell and attention kind decodes
with this code. A sentence's beams share one copy of its encoder memory.
Both searches run a whole batch of sentences at once (one `step` call per time step) and drop
sentences from the batch as they finish.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from nmt.tokenizer import BOS_ID, EOS_ID

HARD_MAX_LEN = 512  # no output is longer, whatever a and b say
LENGTH_PENALTIES = ("none", "average", "gnmt")
STOPPING_RULES = ("early", "exact")


@dataclass
class SearchOptions:
    beam_size: int = 1
    nbest: int = 1
    max_len_a: float = 1.5  # output length limit: a * src_len + b, capped at max_len_cap
    max_len_b: int = 10
    max_len_cap: int = HARD_MAX_LEN
    min_len: int = 0  # eos is not allowed before this many tokens
    # none | average (log-prob / length) | gnmt (log-prob / ((5 + len) / 6) ** alpha). Without one,
    # beam search prefers short outputs: on Multi30k de-en validation, beam 5 with `average` scored
    # 0.8 BLEU over greedy, and with `none` 0.2 below it (README). Greedy (beam 1) ignores it.
    length_penalty: str = "average"
    alpha: float = 0.6
    # When a sentence stops. "early": once its nbest-th finished hypothesis scores at least as well
    # as every live beam would if that beam ended at the next step (fairseq's and Hugging Face's
    # rule). "exact": only once no live beam could still win at any length up to the limit. With
    # the length penalty a finished hypothesis cannot know that a longer one will not overtake it,
    # so "exact" searches on to the limit and finds over-long outputs that the penalty favours:
    # on Multi30k de-en validation (25-minute reference model, beam 5, average) "early" scored
    # 34.90 BLEU against 34.18 and decoded 1.5x faster (README, "Speed"). Without a length
    # penalty the two rules are the same.
    stopping: str = "early"
    return_attention: bool = False

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam size must be >= 1, got {self.beam_size}")
        if not 1 <= self.nbest <= self.beam_size:
            raise ValueError(f"nbest must be between 1 and the beam size ({self.beam_size}), got {self.nbest}")
        if self.length_penalty not in LENGTH_PENALTIES:
            raise ValueError(f"length penalty must be one of {', '.join(LENGTH_PENALTIES)}, got {self.length_penalty!r}")
        if self.stopping not in STOPPING_RULES:
            raise ValueError(f"stopping must be one of {', '.join(STOPPING_RULES)}, got {self.stopping!r}")


@dataclass
class Hypothesis:
    tokens: list[int]  # without bos and eos
    log_prob: float  # the model's log-probability of tokens + eos
    score: float  # log_prob after the length penalty: what the search ranks by
    attention: torch.Tensor | None = field(default=None, repr=False)  # (len(tokens) + 1, src_len)


def length_penalty(length: int | torch.Tensor, kind: str, alpha: float):
    """The divisor of a hypothesis's log-probability; `length` counts the eos."""
    if kind == "none":
        return 1.0
    if kind == "average":
        return length
    return ((5.0 + length) / 6.0) ** alpha


def max_output_lengths(src_lengths: torch.Tensor, a: float, b: int, cap: int = HARD_MAX_LEN) -> torch.Tensor:
    """a * src_len + b, at least 1, at most cap: (batch,) long. Counts the eos."""
    return (src_lengths.float() * a + b).long().clamp(1, cap)


def search(model, src: torch.Tensor, src_lengths: torch.Tensor, options: SearchOptions) -> list[list[Hypothesis]]:
    """The `options.nbest` best hypotheses of every sentence, best first.

    src (batch, src_len), src_lengths (batch,). Greedy (beam 1) has its own fast path; it gives
    the same result as beam search with beam size 1 and no length penalty.
    """
    if options.beam_size == 1:
        return [[hypothesis] for hypothesis in greedy_search(model, src, src_lengths, options)]
    return beam_search(model, src, src_lengths, options)


@torch.no_grad()
def greedy_search(model, src: torch.Tensor, src_lengths: torch.Tensor, options: SearchOptions) -> list[Hypothesis]:
    """The most probable next token at every step."""
    batch_size, device = src.size(0), src.device
    state = model.init_decoder(model.encode(src, src_lengths))
    max_lens = max_output_lengths(src_lengths, options.max_len_a, options.max_len_b, options.max_len_cap).to(device)
    steps = int(max_lens.max())
    tokens = torch.full((batch_size, steps), EOS_ID, dtype=torch.long, device=device)
    attention = src.new_zeros(batch_size, steps, src.size(1), dtype=torch.float) if options.return_attention else None
    log_prob = torch.zeros(batch_size, device=device)
    lengths = torch.zeros(batch_size, dtype=torch.long, device=device)  # tokens + eos, once finished
    live = torch.arange(batch_size, device=device)  # the original row of every row still decoding
    prev_tokens = torch.full_like(live, BOS_ID)
    for t in range(steps):
        log_probs, state = model.decoder.step(prev_tokens, state)  # (live, vocab)
        _restrict_eos(log_probs, t, options.min_len, max_lens[live])
        best_log_probs, next_tokens = log_probs.max(dim=-1)  # (live,)
        tokens[live, t] = next_tokens
        log_prob[live] += best_log_probs
        if attention is not None and state.attention_weights is not None:
            attention[live, t] = state.attention_weights.float()
        finished = next_tokens == EOS_ID
        lengths[live[finished]] = t + 1
        if bool(finished.all()):
            break
        if bool(finished.any()):  # shrink the batch to the sentences still decoding
            keep = (~finished).nonzero().squeeze(1)
            state, live, next_tokens = state.select_sentences(keep), live[keep], next_tokens[keep]
        prev_tokens = next_tokens
    return [
        _hypothesis(tokens[i, : n - 1].tolist(), float(log_prob[i]), None if attention is None else attention[i, :n], options)
        for i, n in enumerate(lengths.tolist())
    ]


@torch.no_grad()
def beam_search(model, src: torch.Tensor, src_lengths: torch.Tensor, options: SearchOptions) -> list[list[Hypothesis]]:
    """Beam search over every sentence and beam at once: rows are (sentence, beam) pairs."""
    beams = _Beams.start(model, src, src_lengths, options)
    for t in range(int(beams.max_lens.max())):
        log_probs, beams.state = model.decoder.step(beams.prev_tokens, beams.state)  # (rows, vocab)
        _restrict_eos(log_probs, t, options.min_len, beams.max_lens[beams.live].repeat_interleave(beams.width))
        beams.expand(log_probs)
        if not beams.prune(t):
            break
    return beams.finish()


def _restrict_eos(log_probs: torch.Tensor, t: int, min_len: int, max_lens: torch.Tensor) -> None:
    """In place: no eos before min_len tokens; only eos at the last allowed step."""
    if t < min_len:
        log_probs[:, EOS_ID] = -math.inf
    at_limit = max_lens <= t + 1  # (rows,)
    if bool(at_limit.any()):
        eos_log_prob = log_probs[at_limit, EOS_ID]
        log_probs[at_limit] = -math.inf
        log_probs[at_limit, EOS_ID] = eos_log_prob.clamp(min=-1e9)  # finite: the search must end


def _hypothesis(
    tokens: list[int], log_prob: float, attention: torch.Tensor | None, options: SearchOptions
) -> Hypothesis:
    score = log_prob / length_penalty(len(tokens) + 1, options.length_penalty, options.alpha)
    # A copy, not a view: a view would keep (and pickle) the whole batch's attention.
    return Hypothesis(tokens, log_prob, score, None if attention is None else attention.to("cpu", copy=True))


class _Beams:
    """The live part of a beam search: `live` sentences x `width` beams, as rows. The search
    starts from one beam per sentence (its bos), so the first step decodes one row per sentence,
    not beam_size copies of it; from the first expansion on every sentence has beam_size."""

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
    def start(cls, model, src: torch.Tensor, src_lengths: torch.Tensor, options: SearchOptions) -> "_Beams":
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
        for row, sentence_id, tokens, log_prob in zip(ending_rows.tolist(), self.live[sentence].tolist(),
                                                      self.history[ending_rows].tolist(),
                                                      top_scores[sentence, column].tolist()):  # fmt: skip
            attention = None
            if self.attention is not None and step_attention is not None:
                attention = torch.cat([self.attention[row], step_attention[row : row + 1].float()])
            self._add_finished(sentence_id, _hypothesis(tokens, log_prob, attention, self.options))
        # The k best candidates that do not end continue, best first.
        keep = torch.sort(is_eos.to(torch.int8), dim=1, stable=True).indices[:, :k]  # (live, k)
        self.scores = top_scores.gather(1, keep)
        parent_rows = (torch.arange(live, device=keep.device) * width).unsqueeze(1) + top_beams.gather(1, keep)
        parent_rows = parent_rows.view(-1)  # (live * k,)
        self.state = self.state.reorder(parent_rows, same_sources=True)  # parents are the sentence's own beams
        self.prev_tokens = top_tokens.gather(1, keep).view(-1)
        self.history = torch.cat([self.history[parent_rows], self.prev_tokens.unsqueeze(1)], dim=1)
        if self.attention is not None and self.state.attention_weights is not None:
            self.attention = torch.cat([self.attention[parent_rows], self.state.attention_weights.unsqueeze(1).float()], 1)

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
            self.state, self.prev_tokens, self.history = self.state.select_sentences(keep), self.prev_tokens[rows], self.history[rows]
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
        return [sorted(hyps, key=lambda h: h.score, reverse=True)[: self.options.nbest] for hyps in self.finished]
