import json
import subprocess
import sys

import pytest
from helpers import PAIRS

from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, TokenizerError

SRC = [de for de, _ in PAIRS]
TGT = [en for _, en in PAIRS]


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
@pytest.mark.parametrize("joint", [True, False])
def test_round_trip_gives_back_the_text(kind, joint):
    tokenizer = Tokenizer.train(SRC, TGT, vocab_size=60, kind=kind, joint=joint)
    ids = tokenizer.encode_tgt(TGT)
    assert tokenizer.decode_tgt(ids) == TGT
    assert tokenizer.src.decode(tokenizer.encode_src(SRC)) == SRC
    assert tokenizer.joint == joint


def test_special_ids_are_fixed_and_never_in_encoded_text():
    tokenizer = Tokenizer.train(SRC, TGT, vocab_size=60)
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    assert tokenizer.src.pad_id() == PAD_ID and tokenizer.src.unk_id() == UNK_ID
    assert tokenizer.src.bos_id() == BOS_ID and tokenizer.src.eos_id() == EOS_ID
    for ids in tokenizer.encode_src(SRC):
        assert not {PAD_ID, BOS_ID, EOS_ID} & set(ids)


def test_decode_stops_at_eos_and_skips_bos_and_pad():
    tokenizer = Tokenizer.train(SRC, TGT, vocab_size=60)
    ids = tokenizer.encode_tgt(["The dog runs."])[0]
    assert tokenizer.decode_tgt([[BOS_ID, *ids, EOS_ID, *ids, PAD_ID]]) == ["The dog runs."]


def test_saved_and_checkpointed_tokenizers_encode_identically(tmp_path):
    for joint in (True, False):
        tokenizer = Tokenizer.train(SRC, TGT, vocab_size=60, joint=joint)
        tokenizer.save(tmp_path / str(joint))
        for copy in (Tokenizer.load(tmp_path / str(joint)), Tokenizer.from_state(tokenizer.state())):
            assert copy.encode_src(SRC) == tokenizer.encode_src(SRC)
            assert copy.encode_tgt(TGT) == tokenizer.encode_tgt(TGT)
            assert copy.fingerprint == tokenizer.fingerprint


def test_a_vocabulary_larger_than_the_corpus_allows_is_capped_not_fatal():
    tokenizer = Tokenizer.train(SRC[:5], TGT[:5], vocab_size=5000)
    assert 4 < tokenizer.src_vocab_size < 5000


def test_bad_model_bytes_are_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="not a valid SentencePiece model"):
        Tokenizer(b"not a model")
    with pytest.raises(TokenizerError, match="no SentencePiece model"):
        Tokenizer.load(tmp_path)


def test_restricted_output_covers_only_target_pieces_and_round_trips(tmp_path):
    tokenizer = Tokenizer.train(SRC, TGT, vocab_size=120)
    restricted = tokenizer.restrict_output(TGT)
    assert restricted.tgt_vocab_size < tokenizer.tgt_vocab_size  # German pieces are gone
    assert restricted.src_vocab_size == tokenizer.src_vocab_size
    ids = restricted.encode_tgt(TGT)
    assert max(max(row) for row in ids) < restricted.tgt_vocab_size
    assert restricted.decode_tgt(ids) == TGT
    assert restricted.tgt_pieces(ids[0]) == tokenizer.tgt_pieces(tokenizer.encode_tgt(TGT[:1])[0])
    # A piece the targets never use (a German word) is unknown on the target side.
    german_only = restricted.encode_tgt([SRC[0]])[0]
    assert UNK_ID in german_only
    restricted.save(tmp_path)
    for copy in (Tokenizer.from_state(restricted.state()), Tokenizer.load(tmp_path)):
        assert copy.encode_tgt(TGT) == ids and copy.fingerprint == restricted.fingerprint
    assert restricted.fingerprint != tokenizer.fingerprint


SAMPLE_IN_A_FRESH_PROCESS = """
import json, sys
from nmt.data.tokenizer import Tokenizer
model, src, tgt = json.load(sys.stdin)
tokenizer = Tokenizer.from_state({"src_model": bytes.fromhex(model), "tgt_model": None})
print(json.dumps(tokenizer.sample_pairs(src, tgt, 0.2, 8, seed="1-0")))
"""


def test_sampled_segmentations_keep_the_text_and_repeat_with_their_seed_in_any_process():
    tokenizer = Tokenizer.train(SRC, TGT, vocab_size=120)
    src_ids, tgt_ids = tokenizer.sample_pairs(SRC, TGT, 0.2, 8, seed="1-0")
    assert tokenizer.src.decode(src_ids) == SRC and tokenizer.decode_tgt(tgt_ids) == TGT
    assert tokenizer.sample_pairs(SRC, TGT, 0.2, 8, seed="1-1") != (src_ids, tgt_ids)
    # Segmentations other than the best one: the point of sampling.
    assert src_ids != tokenizer.encode_src(SRC) and tgt_ids != tokenizer.encode_tgt(TGT)
    # Training ranks and resumed runs are other processes: they must draw the same.
    for _ in range(2):
        fresh = subprocess.run(
            [sys.executable, "-c", SAMPLE_IN_A_FRESH_PROCESS],
            input=json.dumps([tokenizer.src_model_bytes.hex(), SRC, TGT]),
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(fresh.stdout) == [src_ids, tgt_ids]


def test_sampled_targets_stay_inside_a_restricted_output_vocabulary():
    restricted = Tokenizer.train(SRC, TGT, vocab_size=120).restrict_output(TGT)
    best = restricted.encode_tgt(TGT)
    assert not any(UNK_ID in ids for ids in best)
    # An aggressive alpha samples pieces the best segmentations of the targets never use (German
    # ones among them); those sentences keep their best segmentation rather than gain an unk.
    for seed in range(3):
        _, tgt_ids = restricted.sample_pairs(SRC, TGT, 0.05, 32, seed=seed)
        assert not any(UNK_ID in ids for ids in tgt_ids)
        assert restricted.decode_tgt(tgt_ids) == TGT
        assert any(ids != best_ids for ids, best_ids in zip(tgt_ids, best))


def test_a_sample_too_large_for_32_bit_positions_trains_in_sentencepiece_s_large_mode(monkeypatch):
    """Past 2^30 characters a unigram model needs train_extremely_large_corpus; nmt sets it there
    and only there (it costs memory)."""
    import sentencepiece as spm

    from nmt.data import tokenizer as module

    calls = []
    real = spm.SentencePieceTrainer.train

    def train(**options):
        calls.append(options.get("train_extremely_large_corpus", False))
        return real(**options)

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", train)
    Tokenizer.train(SRC, TGT, vocab_size=60)
    characters = sum(map(len, SRC + TGT)) + len(SRC + TGT)
    monkeypatch.setattr(module, "EXTREMELY_LARGE_CHARACTERS", characters - 1)
    Tokenizer.train(SRC, TGT, vocab_size=60)
    Tokenizer.train(SRC, TGT, vocab_size=60, kind="bpe")  # a unigram setting: bpe never needs it
    assert calls == [False, True, False]
