"""A tiny parallel corpus the tests make themselves, in every source layout nmt reads."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import pytest

SUBJECTS = [("der Hund", "the dog"), ("die Katze", "the cat"), ("ein Mann", "a man"),
            ("eine Frau", "a woman"), ("das Kind", "the child"), ("der Junge", "the boy")]
VERBS = [("läuft", "runs"), ("schläft", "sleeps"), ("spielt", "plays"), ("springt", "jumps"),
         ("isst", "eats"), ("lacht", "laughs")]
PLACES = [("im Park", "in the park"), ("am Strand", "on the beach"), ("auf der Straße", "on the street"),
          ("im Schnee", "in the snow"), ("", "")]


def make_pairs() -> list[tuple[str, str]]:
    """150 German-English pairs of a toy grammar (subject, verb, optional place)."""
    pairs = []
    for (sd, se), (vd, ve), (pd, pe) in itertools.product(SUBJECTS, VERBS, PLACES):
        de = f"{sd.capitalize()} {vd} {pd}".strip() + "."
        en = f"{se.capitalize()} {ve} {pe}".strip() + "."
        pairs.append((de, en))
    return pairs


PAIRS = make_pairs()
SPLITS = {"train": PAIRS[:120], "val": PAIRS[120:135], "test": PAIRS[135:]}


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
