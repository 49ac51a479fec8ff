import random

import pytest
import torch

from nmt.data.batching import BucketBatcher, RandomBatcher, collate, make_batcher, pack_targets, token_budget_batches
from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID


def lengths(n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    return [rng.randint(1, 50) for _ in range(n)], [rng.randint(1, 50) for _ in range(n)]


@pytest.mark.parametrize("kind", ["length", "source", "random"])
def test_every_sentence_exactly_once_per_epoch_within_the_budget(kind):
    src, tgt = lengths(1000)
    batcher = make_batcher(kind, src, tgt, batch_tokens=600, seed=1)
    for epoch in range(3):
        batches = batcher.epoch_batches(epoch)
        seen = sorted(i for batch in batches for i in batch)
        assert seen == list(range(1000))
        for batch in batches:
            costs = [max(src[i], tgt[i]) + 1 for i in batch]
            # length batching counts the padded batch, the others the pairs themselves
            assert (len(batch) * max(costs) if kind == "length" else sum(costs)) <= 600


@pytest.mark.parametrize("kind", ["length", "source", "random"])
def test_batches_are_reproducible_per_seed_and_epoch_and_differ_across_epochs(kind):
    src, tgt = lengths(500)
    first = make_batcher(kind, src, tgt, 400, seed=7)
    again = make_batcher(kind, src, tgt, 400, seed=7)
    assert first.epoch_batches(3) == again.epoch_batches(3)
    assert first.epoch_batches(3) != first.epoch_batches(4)
    assert first.epoch_batches(3) != make_batcher(kind, src, tgt, 400, seed=8).epoch_batches(3)


def test_batches_group_similar_lengths():
    src, tgt = lengths(2000)
    batcher = BucketBatcher(src, tgt, 2000, seed=0)
    # The decoder steps through every target position of a batch: its padding is what costs.
    padded = sum(len(b) * max(tgt[i] for i in b) for b in batcher.epoch_batches(0))
    assert sum(tgt) / padded > 0.9  # under 10% target padding


def test_random_batches_mix_the_corpus_lengths():
    src, tgt = lengths(2000)
    batches = RandomBatcher(src, tgt, 2000, seed=0).epoch_batches(0)
    # Every update sees short and long targets alike, not one length as with length batching.
    spreads = [max(tgt[i] for i in b) - min(tgt[i] for i in b) for b in batches if len(b) > 20]
    assert min(spreads) > 30
    grouped = BucketBatcher(src, tgt, 2000, seed=0).epoch_batches(0)
    assert max(max(tgt[i] for i in b) - min(tgt[i] for i in b) for b in grouped) <= 1


def test_an_oversized_sentence_gets_a_batch_of_its_own():
    batches = token_budget_batches([3, 100, 4], batch_tokens=10)
    assert sorted(map(sorted, batches)) == [[0, 2], [1]]


def test_collate_pads_adds_bos_and_eos_and_puts_the_longest_target_first():
    batch = collate([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]])
    # The pair with the longer target comes first: the decoder drops sentences as they end.
    assert batch.src.tolist() == [[8, EOS_ID, PAD_ID, PAD_ID], [5, 6, 7, EOS_ID]]
    assert batch.src_lengths.tolist() == [2, 4]
    assert batch.tgt_in.tolist() == [[BOS_ID, 11, 12, 13], [BOS_ID, 9, 10, PAD_ID]]
    assert batch.tgt_out.tolist() == [[11, 12, 13, EOS_ID], [9, 10, EOS_ID, PAD_ID]]
    assert batch.src_mask.tolist() == [[True, True, False, False], [True] * 4]
    assert batch.tgt_mask.sum().item() == batch.num_tgt_tokens == 7
    assert pack_targets(batch.tgt_out, batch.tgt_lengths).tolist() == [11, 9, 12, 10, 13, EOS_ID, EOS_ID]
    assert batch.src.dtype == torch.long
