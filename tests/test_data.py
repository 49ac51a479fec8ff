import json
import socket

import datasets
import pytest
from helpers import SPLITS, write_lines

from nmt.config import DataConfig
from nmt.data.corpus import DataError, SplitSource, load_corpus, load_split, split_source, training_chunks


def test_text_files_plain_and_gzipped_load_into_src_tgt(text_corpus):
    corpus = load_corpus(str(text_corpus), "de", "en")
    assert set(corpus) == {"train", "validation", "test"}
    assert len(corpus["train"]) == len(SPLITS["train"])
    assert len(corpus["validation"]) == len(SPLITS["val"])  # val.*.gz
    assert len(corpus["test"]) == len(SPLITS["test"])  # test_2016_toy.*.gz, found by prefix
    assert (corpus["train"].src[0], corpus["train"].tgt[0]) == SPLITS["train"][0]


def test_hub_layout_directory_loads_any_language_pair(hub_corpus):
    de_en = load_corpus(str(hub_corpus), "de", "en")
    en_fr = load_corpus(str(hub_corpus), "en", "fr")
    assert (de_en["test"].src[0], de_en["test"].tgt[0]) == SPLITS["test"][0]
    assert en_fr["train"].tgt[0] == "fr: " + SPLITS["train"][0][1]
    assert len(de_en["validation"]) == len(SPLITS["val"])


def write_translation_layout(root, configs=("de-en",)):
    """The layout of WMT, IWSLT and OPUS on the hub: one `translation` column per pair, configs
    named in the README's front matter, each with its own files."""
    front = ["---", "configs:"]
    for config in configs:
        src, tgt = config.split("-")
        (root / config).mkdir(parents=True)
        front += [f"- config_name: {config}", "  data_files:"]
        for split, name in (("train", "train"), ("validation", "val"), ("test", "test")):
            with open(root / config / f"{name}.jsonl", "w", encoding="utf-8") as out:
                for de, en in SPLITS[name]:
                    pair = {src: de if src == "de" else f"{src}: {en}", tgt: en}
                    out.write(json.dumps({"translation": pair}, ensure_ascii=False) + "\n")
            front += [f"  - split: {split}", f"    path: {config}/{name}.jsonl"]
    (root / "README.md").write_text("\n".join([*front, "---", "A toy parallel corpus.", ""]))


def test_a_translation_column_dataset_with_config_names_loads(tmp_path):
    root = tmp_path / "wmt_like"
    write_translation_layout(root, configs=("de-en", "fr-en"))
    de_en = SplitSource(str(root), "de", "en", "train", "train", config="de-en")
    src, tgt = next(de_en.chunks())
    assert (src[0], tgt[0]) == SPLITS["train"][0]
    fr_en = load_split(SplitSource(str(root), "fr", "en", "test", "test", config="fr-en"))
    assert fr_en.src[0] == "fr: " + SPLITS["test"][0][1]
    with pytest.raises(DataError, match=r"translation column has no 'cs'"):
        next(SplitSource(str(root), "cs", "en", "train", "train", config="de-en").chunks())
    with pytest.raises(DataError, match=r"data.config"):
        next(SplitSource(str(root), "de", "en", "train", "train", config="xx-yy").chunks())


def test_a_translation_column_in_a_plain_hub_layout_directory(tmp_path):
    root = tmp_path / "jsonl"
    root.mkdir()
    for split in SPLITS:
        with open(root / f"{split}.jsonl", "w", encoding="utf-8") as out:
            for de, en in SPLITS[split]:
                out.write(json.dumps({"translation": {"de": de, "en": en}}, ensure_ascii=False) + "\n")
    corpus = load_corpus(str(root), "de", "en")
    assert (corpus["validation"].src[2], corpus["validation"].tgt[2]) == SPLITS["val"][2]


def test_hub_id_is_passed_to_load_dataset_with_its_config(monkeypatch, hub_corpus):
    calls = []
    real = datasets.load_dataset(str(hub_corpus))
    monkeypatch.setattr("nmt.data.corpus.check_hub_reachable", lambda hub_id: None)

    def load_dataset(source, **arguments):
        calls.append((source, arguments))
        return real[arguments["split"]]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    config = DataConfig(source="someone/corpus", config="de-en")
    test = load_split(split_source(config, "test"))
    assert calls == [("someone/corpus", {"split": "test", "name": "de-en"})]  # only the split it reads
    assert (test.src[0], test.tgt[0]) == SPLITS["test"][0]


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


def test_mismatched_line_counts_past_the_first_chunk_count_every_line(text_corpus):
    write_lines(text_corpus / "train.de", [de for de, _ in SPLITS["train"]] * 10)
    write_lines(text_corpus / "train.en", [en for _, en in SPLITS["train"]] * 10 + ["one more"])
    source = SplitSource(str(text_corpus), "de", "en", "train", "train")
    with pytest.raises(DataError, match=r"train.de has 1400 lines but .*train.en has 1401"):
        list(source.chunks(size=300))


def test_invalid_utf8_names_file_and_line(text_corpus):
    lines = (text_corpus / "train.de").read_bytes().split(b"\n")
    lines[4] = b"Der Hund \xff\xfe l\xe4uft."
    (text_corpus / "train.de").write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"train.de:5 is not valid UTF-8"):
        load_corpus(str(text_corpus), "de", "en")
    source = SplitSource(str(text_corpus), "de", "en", "train", "train")
    with pytest.raises(DataError, match=r"train.de:5 is not valid UTF-8"):
        list(source.chunks(size=3))  # the line number counts the chunks before


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
    assert corpus["validation"].tgt[0] == ""
    assert corpus["train"].src[0] == corpus["train"].src[0].strip()


def test_train_limit_keeps_the_first_pairs_across_chunks(text_corpus):
    assert len(load_corpus(str(text_corpus), "de", "en", train_limit=10)["train"]) == 10
    source = SplitSource(str(text_corpus), "de", "en", "train", "train")
    chunks = list(training_chunks(source, limit=25, size=7))
    assert [len(src) for src, _ in chunks] == [7, 7, 7, 4]
    assert [pair for src, tgt in chunks for pair in zip(src, tgt)] == SPLITS["train"][:25]


def test_a_split_is_read_without_reading_the_others(text_corpus):
    (text_corpus / "train.de").write_bytes(b"\xff broken")  # not even read
    (text_corpus / "train.en").unlink()
    test = load_split(split_source(DataConfig(source=str(text_corpus)), "test"))
    assert (test.src[1], test.tgt[1]) == SPLITS["test"][1]
