"""Sampling (temperature, top-k, top-p) and repeated-n-gram blocking, held to their definitions
on a toy decoder whose next-piece probabilities come from a fixed table."""

import itertools
import math
from dataclasses import replace

import pytest
import torch
from helpers import TableModel, table_from

from nmt.config import ConfigError, SearchOptions
from nmt.data.tokenizer import BOS_ID, EOS_ID
from nmt.search import search
from nmt.search.sampling import sampling_distribution

A, B, C = 4, 5, 6
FIRST = {A: 0.5, B: 0.3, C: 0.15, EOS_ID: 0.05}  # the first piece's distribution
# Greedy alone loops A B A B ...: blocking must break the loop.
LOOPING = {
    BOS_ID: {A: 0.6, B: 0.4},
    A: {B: 0.5, C: 0.3, EOS_ID: 0.2},
    B: {A: 0.6, C: 0.25, EOS_ID: 0.15},
    C: {A: 0.4, B: 0.35, EOS_ID: 0.25},
}


def run(table: torch.Tensor, options: SearchOptions, sentences: int = 1):
    src = torch.full((sentences, 1), A)
    return search(TableModel(table), src, torch.ones(sentences, dtype=torch.long), options)


def first_pieces(options: SearchOptions, sentences: int = 20000) -> torch.Tensor:
    """Each sentence's one sampled piece (max_len 2: a piece, then the eos the limit forces)."""
    table = table_from({BOS_ID: FIRST, A: {EOS_ID: 1.0}, B: {EOS_ID: 1.0}, C: {EOS_ID: 1.0}})
    hypotheses = run(table, options, sentences)
    return torch.tensor([nbest[0].tokens[0] if nbest[0].tokens else EOS_ID for nbest in hypotheses])


def frequencies(pieces: torch.Tensor) -> dict[int, float]:
    return {piece: float((pieces == piece).float().mean()) for piece in (A, B, C, EOS_ID)}


def expected(probabilities: dict[int, float], temperature: float = 1.0) -> dict[int, float]:
    """p^(1/T), renormalized over the given pieces: softmax(log p / T)."""
    weights = {piece: p ** (1 / temperature) for piece, p in probabilities.items()}
    total = sum(weights.values())
    return {piece: weights.get(piece, 0.0) / total for piece in (A, B, C, EOS_ID)}


SAMPLE = dict(sample=True, beam_size=1, max_len_a=0.0, max_len_b=2)


@pytest.mark.parametrize(
    "options, kept, temperature",
    [
        (dict(temperature=1.0), FIRST, 1.0),
        (dict(temperature=0.5), FIRST, 0.5),  # sharper: p^2, renormalized
        (dict(temperature=2.0), FIRST, 2.0),  # flatter
        (dict(top_k=2), {A: 0.5, B: 0.3}, 1.0),
        (dict(top_p=0.7), {A: 0.5, B: 0.3}, 1.0),  # 0.5 < 0.7 before B; 0.8 >= 0.7 before C
        (dict(top_p=0.85), {A: 0.5, B: 0.3, C: 0.15}, 1.0),
        (dict(top_p=0.3), {A: 0.5}, 1.0),  # the most probable piece always stays
        (dict(top_k=3, top_p=0.7, temperature=0.5), {A: 0.5, B: 0.3}, 0.5),
    ],
)
def test_the_sampled_distribution_is_its_definition(options, kept, temperature):
    log_probs = torch.full((1, 7), -math.inf)
    for piece, p in FIRST.items():
        log_probs[0, piece] = math.log(p)
    full = SearchOptions(**SAMPLE, **options)
    probabilities = sampling_distribution(log_probs, full.temperature, full.top_k, full.top_p)[0]
    for piece, p in expected(kept, temperature).items():
        assert float(probabilities[piece]) == pytest.approx(p, abs=1e-6), piece
    # And the draws follow it: 20,000 samples, within 0.015 of each probability (3.5 sigma at most).
    for piece, share in frequencies(first_pieces(full)).items():
        assert share == pytest.approx(expected(kept, temperature)[piece], abs=0.015), piece


def test_samples_depend_on_the_seed_alone_and_score_by_the_model():
    options = SearchOptions(sample=True, beam_size=1, temperature=1.5, max_len_a=0.0, max_len_b=8)
    table = table_from(LOOPING)
    first, again = run(table, options, 200), run(table, options, 200)
    other = run(table, replace(options, seed=1), 200)
    assert [h[0].tokens for h in first] == [h[0].tokens for h in again]
    assert [h[0].tokens for h in first] != [h[0].tokens for h in other]
    for (hypothesis,) in first:
        path = [BOS_ID, *hypothesis.tokens, EOS_ID]
        model_log_prob = sum(float(table[p, q]) for p, q in itertools.pairwise(path))
        assert hypothesis.log_prob == pytest.approx(model_log_prob, abs=1e-4)  # not the tempered one
        assert hypothesis.score == pytest.approx(model_log_prob / len(path[1:]), abs=1e-4)


def test_nbest_samples_are_the_best_of_beam_size_draws():
    options = SearchOptions(sample=True, beam_size=6, nbest=3, max_len_a=0.0, max_len_b=8)
    for nbest in run(table_from(LOOPING), options, 50):
        assert len(nbest) == 3
        assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)


def reference_greedy(table: torch.Tensor, n: int, max_len: int) -> list[int]:
    """Greedy by the definition: at every step the most probable piece that does not complete an
    n-gram the output already holds; only eos at the length limit (which counts the eos)."""
    output: list[int] = []
    while True:
        if len(output) + 1 >= max_len:
            return output
        ngrams = {tuple(output[j : j + n]) for j in range(len(output) - n + 1)}
        prev = output[-1] if output else BOS_ID
        allowed = [p for p in range(table.size(1)) if (*output[max(0, len(output) - n + 1) :], p) not in ngrams]
        best = max(allowed, key=lambda p: float(table[prev, p]))
        if best == EOS_ID:
            return output
        output.append(best)


@pytest.mark.parametrize("n", [2, 3])
def test_no_repeat_ngram_greedy_takes_the_best_piece_that_repeats_no_ngram(n):
    table = table_from(LOOPING)
    unblocked = run(table, SearchOptions(beam_size=1, max_len_a=0.0, max_len_b=12))[0][0]
    assert unblocked.tokens == [A, B] * 5 + [A]  # the loop that blocking must break
    blocked = run(table, SearchOptions(beam_size=1, no_repeat_ngram=n, max_len_a=0.0, max_len_b=12))[0][0]
    assert blocked.tokens == reference_greedy(table, n, 12)
    assert len(blocked.tokens) >= n  # it did run into the rule


def repeats_an_ngram(tokens: list[int], n: int) -> bool:
    ngrams = [tuple(tokens[j : j + n]) for j in range(len(tokens) - n + 1)]
    return len(ngrams) != len(set(ngrams))


@pytest.mark.parametrize("n", [2, 3])
def test_a_wide_blocked_beam_finds_the_best_output_that_repeats_no_ngram(n):
    """A beam that holds every candidate is exhaustive: blocking must leave it exactly the
    outputs without a repeated n-gram, so it finds the best of those."""
    table = table_from(LOOPING)
    max_len = 6
    best = None
    for length in range(max_len):
        for tokens in itertools.product((A, B, C), repeat=length):
            if repeats_an_ngram(list(tokens), n):
                continue
            path = [BOS_ID, *tokens, EOS_ID]
            log_prob = sum(float(table[p, q]) for p, q in itertools.pairwise(path))
            if best is None or log_prob / len(path[1:]) > best[0]:
                best = (log_prob / len(path[1:]), list(tokens))
    options = SearchOptions(
        beam_size=60, nbest=5, no_repeat_ngram=n, max_len_a=0.0, max_len_b=max_len, stopping="exact"
    )
    nbest = run(table, options)[0]
    assert nbest[0].tokens == best[1] and nbest[0].score == pytest.approx(best[0], abs=1e-5)
    assert not any(repeats_an_ngram(h.tokens, n) for h in nbest)
    sampled = run(
        table, SearchOptions(sample=True, beam_size=20, nbest=20, no_repeat_ngram=n, max_len_a=0.0, max_len_b=9)
    )
    assert not any(repeats_an_ngram(h.tokens, n) for h in sampled[0])


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(temperature=0.7), "temperature only apply with sample=true"),
        (dict(sample=True, temperature=0.0), "temperature=0.0 must be > 0"),
        (dict(sample=True, top_p=1.5), r"top_p=1.5 must be in \(0, 1\]"),
        (dict(no_repeat_ngram=1), "no_repeat_ngram=1"),
        (dict(beam_size=2, nbest=3), r"nbest=3 must be between 1 and the beam size \(2\)"),
    ],
)
def test_bad_search_options_name_themselves(options, message):
    with pytest.raises(ConfigError, match=message):
        SearchOptions(**options)
