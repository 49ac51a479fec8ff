"""scripts/make_corpus.py: the corpora the large-corpus figures are measured on, made again
byte for byte from a base corpus and a seed."""

from helpers import SPLITS, script_module


def test_the_generated_corpus_is_deterministic_and_joins_base_pairs(text_corpus, tmp_path):
    make_corpus = script_module("make_corpus")
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert make_corpus.main([str(text_corpus), str(tmp_path / name), "--pairs", "250", "--seed", str(seed)]) == 0
    same = [(tmp_path / name / "train.de").read_bytes() for name in ("a", "b", "c")]
    assert same[0] == same[1] and same[0] != same[2]
    de = (tmp_path / "a" / "train.de").read_text().splitlines()
    en = (tmp_path / "a" / "train.en").read_text().splitlines()
    assert len(de) == len(en) == 250
    base = dict(SPLITS["train"])
    for src, tgt in zip(de[:20], en[:20]):  # each line: two base pairs side by side, aligned
        pairs = [(s, t) for s, t in base.items() if src.startswith(s + " ") or src.endswith(" " + s)]
        assert any(tgt.startswith(t + " ") or tgt.endswith(" " + t) for _, t in pairs), (src, tgt)
    assert (tmp_path / "a" / "val.de").read_text().splitlines() == [de for de, _ in SPLITS["val"]]


def test_the_translation_layout_is_read_back_by_nmt(text_corpus, tmp_path):
    from nmt.data.corpus import load_corpus

    make_corpus = script_module("make_corpus")
    make_corpus.main([str(text_corpus), str(tmp_path / "t"), "--pairs", "30", "--layout", "translation"])
    corpus = load_corpus(str(tmp_path / "t"), "de", "en")
    assert len(corpus["train"]) == 30 and corpus["test"].tgt == [en for _, en in SPLITS["test"]]
