"""Model directories: `nmt-export` writes one (safetensors, config, tokenizer, model card; no
pickle), every tool reads it as it reads the run, locally or from the Hub's cache (offline)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from helpers import PAIRS

import nmt.cli.evaluate
import nmt.cli.export
import nmt.cli.translate
from nmt.checkpoint import Checkpoint, CheckpointError
from nmt.model_directory import read_model_directory
from nmt.translation import Translator

pytest.importorskip("safetensors")
BIN = Path(sys.executable).parent
LINES = [source for source, _ in PAIRS[:8]]


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("export") / "toy-de-en"
    results = trained_run / "results"
    results.mkdir(exist_ok=True)
    score = {"name": "BLEU", "score": 12.345, "signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"}
    (results / "test.best.beam5.json").write_text(
        json.dumps({"split": "test", "beam": 5, "sentences": 3, "scores": [score]})
    )
    argv = [str(trained_run), str(directory), "--license", "apache-2.0", "--name", "org/toy-de-en"]
    assert nmt.cli.export.main(argv) == 0
    return directory


def test_the_directory_holds_weights_config_tokenizer_and_a_card_and_no_pickle(exported, trained_run):
    names = sorted(path.name for path in exported.iterdir())
    assert names == ["README.md", "config.json", "joint.model", "model.safetensors", "output_pieces.txt"]
    for path in exported.iterdir():  # no zip archive (torch.save) and no pickle protocol header
        assert not zipfile.is_zipfile(path) and not path.read_bytes().startswith(b"\x80"), path.name
    config = json.loads((exported / "config.json").read_text())
    assert (config["format"], config["src_lang"], config["tgt_lang"]) == ("nmt-model-1", "de", "en")
    card = (exported / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["language"] == ["de", "en"] and front["license"] == "apache-2.0" and front["library_name"] == "nmt"
    assert "translation" in front["tags"] and "bleu" in front["metrics"]
    metrics = [metric for result in front["model-index"][0]["results"] for metric in result["metrics"]]
    saved = next(metric for metric in metrics if metric["value"] == 12.35)  # the run's other results too
    assert saved["type"] == "bleu" and "tok:13a" in saved["args"]["signature"]
    best = Checkpoint.load(trained_run / "checkpoints" / "best.pt")
    loaded = read_model_directory(exported)
    assert loaded.config == best.config and loaded.progress == best.progress
    assert all(torch.equal(loaded.model[name], weight) for name, weight in best.model.items())


def test_every_tool_translates_from_the_directory_as_from_the_run(exported, trained_run, tmp_path, capsys):
    options = {"device": "cpu", "workers": 1, "beam_size": 3, "nbest": 2}
    from_run = Translator.load(trained_run, **options).translate_lines(LINES)
    from_directory = Translator.load(exported, **options).translate_lines(LINES)
    assert [t.nbest for t in from_directory] == [t.nbest for t in from_run]
    source = tmp_path / "in.de"
    source.write_text("".join(line + "\n" for line in LINES))
    for model, out in ((trained_run, "run.en"), (exported, "dir.en")):
        argv = [str(model), "-i", str(source), "-o", str(tmp_path / out), "--device", "cpu", "--beam", "2"]
        assert nmt.cli.translate.main(argv) == 0
    assert (tmp_path / "run.en").read_text() == (tmp_path / "dir.en").read_text()


def test_bf16_weights_are_half_the_size_and_load_as_float32(exported, trained_run, tmp_path):
    directory = tmp_path / "bf16"
    assert nmt.cli.export.main([str(trained_run), str(directory), "--precision", "bf16"]) == 0
    assert (directory / "model.safetensors").stat().st_size < 0.6 * (exported / "model.safetensors").stat().st_size
    loaded = read_model_directory(directory)
    assert all(weight.dtype == torch.float32 for weight in loaded.model.values() if weight.is_floating_point())
    assert Translator.load(directory, device="cpu", workers=1, beam_size=1).translate(LINES[:2])


def test_export_refuses_a_non_empty_directory_and_a_directory_that_is_no_model(exported, trained_run, capsys):
    assert nmt.cli.export.main([str(trained_run), str(exported)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    broken = exported.parent / "broken"
    shutil.copytree(exported, broken)
    (broken / "config.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="is not an nmt model directory"):
        Translator.load(broken, device="cpu", workers=1)


def _hub_cache(root: Path, repo: str, files: Path) -> str:
    """A cache as the hub client lays it out: models--org--name/{refs/main, snapshots/REV/...}."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    model = root / ("models--" + repo.replace("/", "--"))
    (model / "refs").mkdir(parents=True)
    (model / "refs" / "main").write_text(revision)
    shutil.copytree(files, model / "snapshots" / revision)
    return revision


def _offline(cache: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache.parent / "home")}


def test_a_hub_model_is_read_from_the_hub_client_s_cache_offline(exported, trained_run, tmp_path):
    cache = tmp_path / "hub"
    _hub_cache(cache, "org/toy-de-en", exported)
    env = _offline(cache)
    command = [str(BIN / "nmt-translate"), "org/toy-de-en", "--device", "cpu", "--beam", "2"]
    from_hub = subprocess.run(command, input=LINES[0] + "\n", capture_output=True, text=True, env=env, timeout=120)
    assert from_hub.returncode == 0, from_hub.stderr
    local = Translator.load(trained_run, device="cpu", workers=1, beam_size=2).translate(LINES[:1])
    assert from_hub.stdout == local[0] + "\n"
    pinned = [str(BIN / "nmt-translate"), "org/toy-de-en@main", "--device", "cpu"]
    assert subprocess.run(pinned, input="", capture_output=True, text=True, env=env, timeout=120).returncode == 0


@pytest.mark.parametrize(
    "name, words",
    [
        ("org/unknown", "does not exist here; as a Hub model, it is not in the Hub cache"),
        ("org/not-nmt", "is not an nmt model directory"),
    ],
)
def test_hub_errors_are_one_line(name, words, tmp_path):
    cache = tmp_path / "hub"
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "pytorch_model.bin").write_bytes(b"\0")
    _hub_cache(cache, "org/not-nmt", plain)
    command = [str(BIN / "nmt-translate"), name, "--device", "cpu"]
    result = subprocess.run(command, input="", capture_output=True, text=True, env=_offline(cache), timeout=120)
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_evaluate_and_inspect_take_the_directory(exported, tmp_path, monkeypatch, capsys):
    import nmt.cli.inspect

    monkeypatch.chdir(tmp_path)  # a model directory's results go under ./results/NAME
    source, reference = tmp_path / "src.de", tmp_path / "ref.en"
    source.write_text("".join(line + "\n" for line in LINES))
    reference.write_text("".join(target + "\n" for _, target in PAIRS[:8]))
    argv = [str(exported), "--src", str(source), "--ref", str(reference), "--device", "cpu", "--beam", "1"]
    assert nmt.cli.evaluate.main(argv) == 0 and "| BLEU" in capsys.readouterr().out
    assert list((tmp_path / "results" / exported.name).glob("*.json"))
    assert nmt.cli.inspect.main([str(exported), LINES[0], "-o", str(tmp_path / "gates"), "--device", "cpu"]) == 0
    assert (tmp_path / "gates" / "gates.json").is_file()


def test_the_service_loads_the_directory_and_names_its_weights_digest(exported):
    import hashlib

    from nmt.options import InferenceOptions
    from nmt.service.engine import LoadedModel

    loaded = LoadedModel.load(str(exported), InferenceOptions(device="cpu", workers=1))
    assert loaded.sha256 == hashlib.sha256((exported / "model.safetensors").read_bytes()).hexdigest()
    assert loaded.info["src_lang"] == "de" and loaded.translator.translate(LINES[:1])[0]
