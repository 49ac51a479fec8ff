"""scripts/tune_search.py: the search a recipe states is the one the validation split picks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from nmt.checkpoint import resolve_checkpoint
from nmt.evaluation import corpus_split
from nmt.options import SearchOptions
from nmt.scoring import bleu
from nmt.translation import Translator

SCRIPT = Path(__file__).parent.parent / "scripts" / "tune_search.py"


def tune_search():
    spec = importlib.util.spec_from_file_location("tune_search", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def split_bleu(translator: Translator, run: Path, split: str) -> float:
    sources, references = corpus_split(resolve_checkpoint(run), split, None)
    return bleu(translator.translate(sources), references).score


def test_the_tuned_search_is_the_best_on_validation_and_test_is_scored_with_it(trained_run, tmp_path):
    argv = [str(trained_run), "--beams", "1", "3", "--penalties", "none", "gnmt:1.0", "--test", "--out", str(tmp_path)]
    assert tune_search().main(argv) == 0
    record = json.loads((tmp_path / "search.json").read_text())
    grid = record["grid"]
    # Greedy search once (no penalty ranks anything), the beam once per penalty.
    assert [(r["beam"], r["length_penalty"], r["alpha"]) for r in grid] == [
        (1, "none", 0.6),
        (3, "none", 0.6),
        (3, "gnmt", 1.0),
    ]
    assert record["tuned"] == max(grid, key=lambda r: r["val_bleu"])
    translator = Translator.load(trained_run, device="cpu", workers=1)
    for row in grid:
        options = SearchOptions(beam_size=row["beam"], length_penalty=row["length_penalty"], alpha=row["alpha"])
        assert split_bleu(translator.with_options(options), trained_run, "validation") == pytest.approx(row["val_bleu"])
    tuned = record["tuned"]
    options = SearchOptions(beam_size=tuned["beam"], length_penalty=tuned["length_penalty"], alpha=tuned["alpha"])
    assert split_bleu(translator.with_options(options), trained_run, "test") == pytest.approx(record["test_bleu"])
    assert "tuned: `--beam" in (tmp_path / "search.md").read_text()


@pytest.mark.parametrize(
    "penalty, message",
    [("gnmt:high", "ALPHA must be a number"), ("average:0.5", "give none, average or gnmt:ALPHA"), ("longest", "give")],
)
def test_a_bad_length_penalty_is_refused_with_its_form(penalty, message, capsys):
    with pytest.raises(SystemExit) as exit:
        tune_search().parse_args(["RUN", "--penalties", penalty])
    assert exit.value.code == 2
    assert f"'{penalty}': {message}" in capsys.readouterr().err
