"""Search correctness: exhaustive optimum on a fixed table, greedy == beam 1, padding
invariance, n-best scores equal to the model's log-probabilities."""

import itertools
import math

import pytest
import torch
from helpers import NEVER, PAIRS, TableModel, table_from

from nmt.config import SearchOptions
from nmt.data.batching import collate_src
from nmt.data.tokenizer import BOS_ID, EOS_ID
from nmt.search import beam_search, greedy_search, length_penalty, search
from nmt.translation import load_model

A, B, C = 4, 5, 6  # the toy vocabulary's real tokens


def exhaustive_best(table: torch.Tensor, max_len: int, penalty: str = "none", alpha: float = 0.6):
    """Every sequence of real tokens + eos no longer than max_len, scored like the search does."""
    best = None
    for n in range(max_len):
        for tokens in itertools.product((A, B, C), repeat=n):
            path = [BOS_ID, *tokens, EOS_ID]
            log_prob = sum(float(table[p, q]) for p, q in itertools.pairwise(path))
            score = log_prob / length_penalty(n + 1, penalty, alpha)
            if best is None or score > best[0]:
                best = (score, list(tokens))
    return best


def run(model, options: SearchOptions, batch: int = 1):
    src = torch.full((batch, 1), A)
    return search(model, src, torch.ones(batch, dtype=torch.long), options)


def test_beam_finds_the_best_sequence_that_greedy_misses():
    table = table_from(
        {
            BOS_ID: {A: 0.6, B: 0.4},
            A: {A: 0.35, C: 0.35, EOS_ID: 0.3},
            B: {EOS_ID: 0.9, A: 0.05, C: 0.05},
            C: {C: 0.5, EOS_ID: 0.5},
        }
    )
    model = TableModel(table)
    options = dict(max_len_a=0.0, max_len_b=5)
    greedy = run(model, SearchOptions(beam_size=1, **options))[0][0]
    beam = run(model, SearchOptions(beam_size=2, length_penalty="none", **options))[0][0]
    best_score, best_tokens = exhaustive_best(table, max_len=5)
    assert greedy.tokens != best_tokens
    assert beam.tokens == best_tokens == [B]
    assert beam.log_prob == pytest.approx(best_score) == pytest.approx(math.log(0.4 * 0.9))


@pytest.mark.parametrize("penalty", ["none", "average", "gnmt"])
@pytest.mark.parametrize("seed", range(6))
def test_a_wide_beam_is_exhaustive_on_random_tables(penalty, seed):
    """With the exact stopping rule a beam that holds every candidate finds the optimum."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.full((7, 7), NEVER)
    table[:, [A, B, C, EOS_ID]] = torch.log_softmax(torch.randn(7, 4, generator=generator) * 2, dim=-1)
    # 40 beams hold every candidate of every step (at most 9 * 4 real ones): the search is exhaustive.
    options = SearchOptions(beam_size=40, nbest=3, max_len_a=0.0, max_len_b=4, length_penalty=penalty, stopping="exact")
    hypotheses = run(TableModel(table), options, batch=3)
    best_score, best_tokens = exhaustive_best(table, 4, penalty)
    for nbest in hypotheses:
        assert nbest[0].tokens == best_tokens
        assert nbest[0].score == pytest.approx(best_score, abs=1e-5)
        assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)


def test_early_stopping_keeps_a_finished_hypothesis_that_only_a_longer_one_beats_under_the_penalty():
    """The empty output (p 0.7) against A B C (p 0.3 * 0.99^3): by log-prob / length, A B C wins
    (-0.308 > -0.357), but after one step A alone averages -0.60 even if it ended next.
    "early" stops with the empty output; "exact" searches on and finds the optimum."""
    table = table_from(
        {
            BOS_ID: {EOS_ID: 0.7, A: 0.3},
            A: {B: 0.99, EOS_ID: 0.01},
            B: {C: 0.99, EOS_ID: 0.01},
            C: {EOS_ID: 0.99, C: 0.01},
        }
    )
    options = dict(beam_size=2, max_len_a=0.0, max_len_b=5, length_penalty="average")
    early = run(TableModel(table), SearchOptions(stopping="early", **options))[0][0]
    exact = run(TableModel(table), SearchOptions(stopping="exact", **options))[0][0]
    best_score, best_tokens = exhaustive_best(table, 5, "average")
    assert early.tokens == [] and early.score == pytest.approx(math.log(0.7))
    assert exact.tokens == best_tokens == [A, B, C]
    assert exact.score == pytest.approx(best_score)
    with pytest.raises(ValueError, match="stopping"):
        SearchOptions(stopping="never")


def test_min_and_max_length_are_respected():
    table = table_from({BOS_ID: {EOS_ID: 0.9, A: 0.1}, A: {EOS_ID: 0.9, A: 0.1}})
    for beam in (1, 3):
        short = run(TableModel(table), SearchOptions(beam_size=beam, max_len_a=0.0, max_len_b=6))[0][0]
        assert short.tokens == []
        longer = run(TableModel(table), SearchOptions(beam_size=beam, min_len=3, max_len_a=0.0, max_len_b=6))[0][0]
        assert longer.tokens == [A, A, A]
    endless = table_from({BOS_ID: {A: 1.0}, A: {A: 1.0}})  # eos is never chosen: only the limit ends it
    for beam in (1, 3):
        capped = run(TableModel(endless), SearchOptions(beam_size=beam, max_len_a=0.0, max_len_b=4))[0][0]
        assert len(capped.tokens) == 3  # 3 tokens + the forced eos


@pytest.fixture(scope="module")
def trained(trained_run):
    model, tokenizer, _ = load_model(trained_run, device="cpu")
    src_ids = tokenizer.encode_src([de for de, _ in PAIRS])
    return model, src_ids


def batch_of(src_ids):
    return collate_src(src_ids)


def test_beam_one_equals_greedy_on_a_trained_model(trained):
    model, src_ids = trained
    src, lengths = batch_of(src_ids[:64])
    # Greedy is beam search of size 1 ranked by the model's log-probability (no length penalty).
    greedy = [
        nbest[0] for nbest in greedy_search(model, src, lengths, SearchOptions(beam_size=1, length_penalty="none"))
    ]
    beam_one = beam_search(model, src, lengths, SearchOptions(beam_size=1, length_penalty="none"))
    for g, b in zip(greedy, beam_one):
        assert g.tokens == b[0].tokens
        assert g.log_prob == pytest.approx(b[0].log_prob, abs=1e-4)


@pytest.mark.parametrize("beam", [1, 5])
def test_a_sentence_alone_or_in_a_padded_batch_of_64_translates_the_same(trained, beam):
    model, src_ids = trained
    options = SearchOptions(beam_size=beam, nbest=beam)
    src, lengths = batch_of(src_ids[:64])
    batched = search(model, src, lengths, options)
    for i in (0, 17, 63):
        alone_src, alone_lengths = batch_of([src_ids[i]])
        alone = search(model, alone_src, alone_lengths, options)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]


def test_nbest_scores_are_the_models_log_probabilities(trained):
    model, src_ids = trained
    src, lengths = batch_of(src_ids[:8])
    nbest = beam_search(model, src, lengths, SearchOptions(beam_size=5, nbest=5))
    for row, hypotheses in enumerate(nbest):
        assert len(hypotheses) == 5
        assert [h.score for h in hypotheses] == sorted((h.score for h in hypotheses), reverse=True)
        for h in hypotheses:
            tgt_in = torch.tensor([[BOS_ID, *h.tokens]])
            tgt_out = torch.tensor([[*h.tokens, EOS_ID]])
            with torch.no_grad():
                log_probs = torch.log_softmax(model(src[row : row + 1], lengths[row : row + 1], tgt_in), -1)
            rescored = log_probs.gather(-1, tgt_out.unsqueeze(-1)).sum().item()
            assert h.log_prob == pytest.approx(rescored, abs=1e-4)
            assert h.score == pytest.approx(h.log_prob / (len(h.tokens) + 1))  # the default: average


def test_attention_is_returned_per_output_step(trained):
    model, src_ids = trained
    src, lengths = batch_of(src_ids[:4])
    for beam in (1, 3):
        hypotheses = search(model, src, lengths, SearchOptions(beam_size=beam, return_attention=True))
        for row, (best,) in enumerate(hypotheses):
            assert best.attention.shape == (len(best.tokens) + 1, src.size(1))
            torch.testing.assert_close(best.attention.sum(-1), torch.ones(len(best.tokens) + 1))
            assert best.attention[:, lengths[row] :].abs().sum() == 0
