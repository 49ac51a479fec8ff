"""Checkpoint averaging: training keeps its last validation checkpoints, and nmt-average writes
their mean as a normal checkpoint; checkpoints of different models or vocabularies are refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import PAIRS, SPLITS, tiny_config, write_lines

import nmt.cli.average
from nmt.checkpoint import Checkpoint
from nmt.data.tokenizer import Tokenizer
from nmt.training.run import run_training
from nmt.translation import Translator


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("kept")
    for split, pairs in SPLITS.items():
        write_lines(root / f"{split}.de", [de for de, _ in pairs])
        write_lines(root / f"{split}.en", [en for _, en in pairs])
    run = root / "run"
    run_training(tiny_config(root, max_steps=12, validate_every=4, keep_checkpoints=2), run)
    return run


def test_training_keeps_the_last_k_validation_checkpoints(kept_run):
    kept = sorted(path.name for path in (kept_run / "checkpoints").glob("step_*.pt"))
    assert kept == ["step_0000008.pt", "step_0000012.pt"]


def test_the_average_of_the_last_k_is_their_mean_and_translates(kept_run, tmp_path):
    out = tmp_path / "avg.pt"
    assert nmt.cli.average.main([str(kept_run), "--last", "2", "-o", str(out)]) == 0
    a, b = (Checkpoint.load(kept_run / "checkpoints" / name).model for name in ("step_0000008.pt", "step_0000012.pt"))
    averaged = Checkpoint.load(out)
    for name, weight in averaged.model.items():
        torch.testing.assert_close(weight, (a[name] + b[name]) / 2)
    assert len(averaged.averaged_from) == 2
    assert averaged.progress.step == 12  # the newest member's, in whatever order they are given
    translator = Translator.load(out, beam_size=2, device="cpu", workers=1)
    assert translator.translate([PAIRS[0][0]])[0]
    listed = tmp_path / "listed.pt"
    paths = [str(kept_run / "checkpoints" / name) for name in ("step_0000012.pt", "step_0000008.pt")]
    assert nmt.cli.average.main([*paths, "-o", str(listed)]) == 0
    assert all(torch.equal(Checkpoint.load(listed).model[n], w) for n, w in averaged.model.items())
    assert Checkpoint.load(listed).progress.step == 12


def test_checkpoints_of_another_model_or_vocabulary_are_refused(kept_run, tmp_path, capsys):
    mine = kept_run / "checkpoints" / "step_0000012.pt"
    checkpoint = Checkpoint.load(mine)
    model = replace(checkpoint.config.model, embed_dim=8)
    replace(checkpoint, config=replace(checkpoint.config, model=model)).save(tmp_path / "other_model.pt")
    tokenizer = Tokenizer.from_state({**checkpoint.tokenizer.state(), "output_pieces": [0, 1, 2, 3]})
    replace(checkpoint, tokenizer=tokenizer).save(tmp_path / "other_vocab.pt")
    for other, words in (("other_model.pt", "another model"), ("other_vocab.pt", "another vocabulary")):
        out = tmp_path / f"from_{other}"
        assert nmt.cli.average.main([str(mine), str(tmp_path / other), "-o", str(out)]) == 2
        error = capsys.readouterr().err
        assert words in error and "Traceback" not in error and not out.exists()
    assert nmt.cli.average.main([str(kept_run), "--last", "5", "-o", str(tmp_path / "x.pt")]) == 2
    assert "keeps 2 step checkpoints, fewer than --last 5" in capsys.readouterr().err


def test_the_average_can_be_written_as_a_model_directory(kept_run, tmp_path):
    pytest.importorskip("safetensors")
    from nmt.model_directory import read_model_directory

    directory = tmp_path / "averaged"
    assert nmt.cli.average.main([str(kept_run), "--last", "2", "-o", str(directory)]) == 0
    as_file = tmp_path / "avg.pt"
    assert nmt.cli.average.main([str(kept_run), "--last", "2", "-o", str(as_file)]) == 0
    loaded, expected = read_model_directory(directory), Checkpoint.load(as_file)
    assert all(torch.equal(loaded.model[name], weight) for name, weight in expected.model.items())
    assert (directory / "README.md").read_text().count("mean of 2 checkpoints") == 1
