"""A tiny parallel corpus the tests make themselves, in every source layout nmt reads."""

from __future__ import annotations

import gzip
import itertools
import json
import random
from pathlib import Path

import pytest

SUBJECTS = [("der Hund", "the dog"), ("die Katze", "the cat"), ("ein Mann", "a man"),
            ("eine Frau", "a woman"), ("das Kind", "the child"), ("der Junge", "the boy")]
VERBS = [("läuft", "runs"), ("schläft", "sleeps"), ("spielt", "plays"), ("springt", "jumps"),
         ("isst", "eats"), ("lacht", "laughs")]
PLACES = [("im Park", "in the park"), ("am Strand", "on the beach"), ("auf der Straße", "on the street"),
          ("im Schnee", "in the snow"), ("", "")]


def make_pairs() -> list[tuple[str, str]]:
    """180 German-English pairs of a toy grammar (subject, verb, optional place), shuffled so
    that every word of the validation and test pairs is seen in training."""
    pairs = []
    for (sd, se), (vd, ve), (pd, pe) in itertools.product(SUBJECTS, VERBS, PLACES):
        de = f"{sd[0].upper()}{sd[1:]} {vd} {pd}".strip() + "."
        en = f"{se[0].upper()}{se[1:]} {ve} {pe}".strip() + "."
        pairs.append((de, en))
    random.Random(0).shuffle(pairs)
    return pairs


PAIRS = make_pairs()
SPLITS = {"train": PAIRS[:140], "val": PAIRS[140:160], "test": PAIRS[160:]}


def write_lines(path: Path, lines: list[str]) -> None:
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


@pytest.fixture
def text_corpus(tmp_path: Path) -> Path:
    """train.de/train.en plain, val.*.gz and test_2016_toy.*.gz gzipped (as the shared raw data)."""
    root = tmp_path / "text"
    root.mkdir()
    names = {"train": "train.{}", "val": "val.{}.gz", "test": "test_2016_toy.{}.gz"}
    for split, pairs in SPLITS.items():
        write_lines(root / names[split].format("de"), [de for de, _ in pairs])
        write_lines(root / names[split].format("en"), [en for _, en in pairs])
    return root


@pytest.fixture
def hub_corpus(tmp_path: Path) -> Path:
    """The hub dataset's layout: {train,val,test}.jsonl with one column per language."""
    root = tmp_path / "hub"
    root.mkdir()
    for split, pairs in SPLITS.items():
        with open(root / f"{split}.jsonl", "w", encoding="utf-8") as out:
            for de, en in pairs:
                out.write(json.dumps({"en": en, "de": de, "fr": f"fr: {en}"}, ensure_ascii=False) + "\n")
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A small attention model trained for a few seconds on the toy corpus: its outputs are
    peaked enough that searches can be compared without near-ties."""
    from nmt.config import Config, DataConfig, DecoderConfig, EncoderConfig, ModelConfig, TokenizerConfig, TrainConfig
    from nmt.train import run_training

    root = tmp_path_factory.mktemp("trained")
    corpus = root / "corpus"
    corpus.mkdir()
    for split, pairs in SPLITS.items():
        write_lines(corpus / f"{split}.de", [de for de, _ in pairs])
        write_lines(corpus / f"{split}.en", [en for _, en in pairs])
    config = Config(
        data=DataConfig(name="toy", source=str(corpus), tokenizer=TokenizerConfig(vocab_size=80)),
        model=ModelConfig(embed_dim=32, encoder=EncoderConfig(32, 1, True), decoder=DecoderConfig(64, 1), dropout=0.0),
        train=TrainConfig(batch_tokens=600, lr=0.01, max_epochs=0, max_steps=240, validate_every=120, log_every=60,
                          label_smoothing=0.0, num_threads=1, valid_attention_plots=1),
    )  # fmt: skip
    run_training(config, root / "run")
    return root / "run"
