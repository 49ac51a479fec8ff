import socket

import datasets
import pytest
from helpers import SPLITS, write_lines

from nmt.data import corpus as corpus_module
from nmt.data.corpus import DataError, filter_by_length, load_corpus


def test_text_files_plain_and_gzipped_load_into_src_tgt(text_corpus):
    corpus = load_corpus(str(text_corpus), "de", "en")
    assert set(corpus) == {"train", "validation", "test"}
    assert corpus["train"].column_names == ["src", "tgt"]
    assert len(corpus["train"]) == len(SPLITS["train"])
    assert len(corpus["validation"]) == len(SPLITS["val"])  # val.*.gz
    assert len(corpus["test"]) == len(SPLITS["test"])  # test_2016_toy.*.gz, found by prefix
    assert (corpus["train"][0]["src"], corpus["train"][0]["tgt"]) == SPLITS["train"][0]


def test_hub_layout_directory_loads_any_language_pair(hub_corpus):
    de_en = load_corpus(str(hub_corpus), "de", "en")
    en_fr = load_corpus(str(hub_corpus), "en", "fr")
    assert (de_en["test"][0]["src"], de_en["test"][0]["tgt"]) == SPLITS["test"][0]
    assert en_fr["train"][0]["tgt"] == "fr: " + SPLITS["train"][0][1]
    assert len(de_en["validation"]) == len(SPLITS["val"])


def test_hub_id_is_passed_to_load_dataset(monkeypatch, hub_corpus):
    calls = []
    real = datasets.load_dataset(str(hub_corpus))
    monkeypatch.setattr(corpus_module, "check_hub_reachable", lambda hub_id: None)
    monkeypatch.setattr(corpus_module.datasets, "load_dataset", lambda source: calls.append(source) or real)
    corpus = load_corpus("bentrevett/multi30k", "de", "en")
    assert calls == ["bentrevett/multi30k"]
    assert len(corpus["train"]) == len(SPLITS["train"])


def test_unreachable_hub_fails_at_once_naming_the_override(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(DataError, match=r"data.source=PATH") as error:
        load_corpus("bentrevett/multi30k", "de", "en")
    assert "NMT_DATA" in str(error.value)


def test_mismatched_line_counts_are_a_clear_error(text_corpus):
    write_lines(text_corpus / "train.en", [en for _, en in SPLITS["train"]][:-3])
    with pytest.raises(DataError, match=r"train.de has 140 lines but .*train.en has 137"):
        load_corpus(str(text_corpus), "de", "en")


def test_invalid_utf8_names_file_and_line(text_corpus):
    lines = (text_corpus / "train.de").read_bytes().split(b"\n")
    lines[4] = b"Der Hund \xff\xfe l\xe4uft."
    (text_corpus / "train.de").write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"train.de:5 is not valid UTF-8"):
        load_corpus(str(text_corpus), "de", "en")


def test_missing_directory_and_missing_language(tmp_path, hub_corpus):
    with pytest.raises(DataError, match="does not exist"):
        load_corpus(str(tmp_path / "nowhere"), "de", "en")
    with pytest.raises(DataError, match="no column 'cs'"):
        load_corpus(str(hub_corpus), "cs", "en")


def test_training_drops_empty_pairs_but_validation_keeps_every_line(text_corpus):
    train_de = [de for de, _ in SPLITS["train"]]
    train_de[3] = "   "
    write_lines(text_corpus / "train.de", train_de)
    val_en = [en for _, en in SPLITS["val"]]
    val_en[0] = ""
    write_lines(text_corpus / "val.en.gz", val_en)
    corpus = load_corpus(str(text_corpus), "de", "en")
    assert len(corpus["train"]) == len(SPLITS["train"]) - 1
    assert len(corpus["validation"]) == len(SPLITS["val"])
    assert corpus["validation"][0]["tgt"] == ""
    assert corpus["train"][0]["src"] == corpus["train"][0]["src"].strip()


def test_length_filter_and_train_limit(text_corpus):
    corpus = load_corpus(str(text_corpus), "de", "en", train_limit=10)
    assert len(corpus["train"]) == 10
    encoded = datasets.Dataset.from_dict({"src_ids": [[1] * 3, [1] * 8, [1] * 2], "tgt_ids": [[1] * 3, [1], [1] * 9]})
    assert len(filter_by_length(encoded, 5)) == 1
    with pytest.raises(DataError, match=r"raise data.max_len"):
        filter_by_length(encoded, 1)
