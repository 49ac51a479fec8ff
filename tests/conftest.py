"""Fixtures: the toy corpus in every source layout nmt reads, and a small trained run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import SPLITS, write_lines


@pytest.fixture(autouse=True, scope="session")
def store_cache(tmp_path_factory) -> Path:
    """Prepared stores go to a cache of the test session's own (commands the tests start inherit
    it), never to the user's."""
    import os

    cache = tmp_path_factory.mktemp("nmt-cache")
    os.environ["NMT_CACHE"] = str(cache)
    return cache


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
    from nmt.training.run import run_training

    root = tmp_path_factory.mktemp("trained")
    corpus = root / "corpus"
    corpus.mkdir()
    for split, pairs in SPLITS.items():
        write_lines(corpus / f"{split}.de", [de for de, _ in pairs])
        write_lines(corpus / f"{split}.en", [en for _, en in pairs])
    config = Config(
        data=DataConfig(name="toy", source=str(corpus), tokenizer=TokenizerConfig(vocab_size=80)),
        model=ModelConfig(embed_dim=32, encoder=EncoderConfig(32, 1, True), decoder=DecoderConfig(64, 1), dropout=0.0),
        train=TrainConfig(
            batch_tokens=600,
            lr=0.01,
            max_epochs=0,
            max_steps=240,
            validate_every=120,
            log_every=60,
            label_smoothing=0.0,
            num_threads=1,
            valid_attention_plots=1,
        ),
    )
    run_training(config, root / "run")
    return root / "run"
