"""ONNX graphs of a model (`nmt-export --onnx`) and `--engine onnxruntime`: the graphs compute
what the torch model computes, and every tool translates with them as with torch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import PAIRS

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import nmt.cli.evaluate  # noqa: E402
import nmt.cli.export  # noqa: E402
import nmt.cli.translate  # noqa: E402
from nmt.config import DecoderConfig, EncoderConfig, ModelConfig  # noqa: E402
from nmt.model.seq2seq import build_model  # noqa: E402
from nmt.onnx_engine import OnnxModel  # noqa: E402
from nmt.onnx_graphs import DECODER_STEP, ENCODER, compare_with_torch, export_graphs  # noqa: E402
from nmt.options import ConfigError, InferenceOptions, SearchOptions  # noqa: E402
from nmt.translation import Translator  # noqa: E402

LINES = [source for source, _ in PAIRS[:12]]
TORCH = {"device": "cpu", "workers": 1}
ORT = {**TORCH, "engine": "onnxruntime"}


@pytest.fixture(scope="module")
def graphs(trained_run, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("onnx") / "toy-de-en"
    assert nmt.cli.export.main([str(trained_run), str(directory), "--onnx"]) == 0
    return directory


def test_the_directory_holds_checked_graphs_with_dynamic_batch_and_length(graphs):
    description = json.loads((graphs / "config.json").read_text())["onnx"]
    for name in (ENCODER, DECODER_STEP):
        onnx.checker.check_model(str(graphs / name), full_check=True)
    assert description["check"]["random_batches"] == 100
    assert description["check"]["max_abs_log_prob_difference"] < 1e-4
    encoder = onnx.load(str(graphs / ENCODER))
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in encoder.graph.input}
    assert shapes == {"src": ["batch", "src_len"], "src_lengths": ["batch"]}
    step = onnx.load(str(graphs / DECODER_STEP))
    assert [v.name for v in step.graph.input] == description["step_inputs"]
    assert description["step_inputs"] == ["prev_tokens", "h", "c", "attentional", "memory", "keys", "src_mask"]
    card = (graphs / "README.md").read_text()
    assert "onnx" in card.split("---")[1] and "--engine onnxruntime\n" in card


def test_translations_with_onnxruntime_are_torch_s_greedy_beam_nbest_and_ensemble(graphs):
    for options in ({"beam_size": 1}, {"beam_size": 3, "nbest": 2, "length_penalty": "gnmt"}):
        expected = Translator.load(graphs, **TORCH, **options).translate_lines(LINES)
        found = Translator.load(graphs, **ORT, **options).translate_lines(LINES)
        assert [t.texts for t in found] == [t.texts for t in expected]
        assert [t.score for t in found] == pytest.approx([t.score for t in expected], abs=1e-4)
    ensemble = Translator.load([graphs, graphs], **ORT, beam_size=2).translate(LINES)
    assert ensemble == Translator.load([graphs, graphs], **TORCH, beam_size=2).translate(LINES)


def test_forked_workers_make_their_own_sessions_after_the_parent_searched(graphs, tmp_path):
    lines = LINES * 20  # several batches
    alone = Translator.load(graphs, **ORT, batch_tokens=60).translate(lines)
    (tmp_path / "lines.json").write_text(json.dumps(lines))
    # In a child process with a deadline: a fork after the parent's sessions ran could hang.
    code = (
        "import json, sys; from nmt.translation import Translator\n"
        "t = Translator.load(sys.argv[1], device='cpu', engine='onnxruntime', workers=2, batch_tokens=60)\n"
        "lines = json.loads(open(sys.argv[2]).read())\n"
        "t.translate(lines[:1])  # one batch: searched in this process\n"
        "print(json.dumps(t.translate(lines)))  # several: searched by forked workers\n"
    )
    command = [sys.executable, "-c", code, str(graphs), str(tmp_path / "lines.json")]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = child.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # its forked workers too
        child.communicate()
        pytest.fail("the forked workers hung")
    assert child.returncode == 0, err
    assert json.loads(out) == alone


def test_a_request_joins_a_search_under_way(graphs):
    translator = Translator.load(graphs, **ORT, beam_size=2)
    running, done = translator.running(), {}
    running.add({"first": LINES[:3]})
    running.step()
    running.add({"second": LINES[3:6]})
    while running.busy:
        done.update(running.step())
    assert [t.text for t in done["second"]] == translator.translate(LINES[3:6])


@pytest.mark.slow
def test_int8_graphs_are_written_checked_and_translate(trained_run, tmp_path):
    directory = tmp_path / "int8"
    assert nmt.cli.export.main([str(trained_run), str(directory), "--onnx", "--quantize", "int8"]) == 0
    for name in ("encoder.int8.onnx", "decoder_step.int8.onnx"):
        onnx.checker.check_model(str(directory / name), full_check=True)
    quantized = json.loads((directory / "config.json").read_text())["onnx"]["int8"]["max_abs_log_prob_difference"]
    assert 0 < quantized < float("inf")  # recorded: int8 differs from float32 by design
    assert "--engine onnxruntime [--quantize int8]" in (directory / "README.md").read_text()
    int8 = Translator.load(directory, **ORT, quantize="int8").translate(LINES)
    assert len(int8) == len(LINES) and all(int8)


def test_the_command_lines_take_the_engine(graphs, tmp_path, capsys, monkeypatch):
    source, reference = tmp_path / "in.de", tmp_path / "ref.en"
    source.write_text("".join(line + "\n" for line in LINES))
    reference.write_text("".join(target + "\n" for _, target in PAIRS[:12]))
    outputs = {}
    for engine in ("torch", "onnxruntime"):
        outputs[engine] = tmp_path / f"{engine}.en"
        argv = [str(graphs), "-i", str(source), "-o", str(outputs[engine]), "--device", "cpu", "--engine", engine]
        assert nmt.cli.translate.main(argv) == 0
    assert outputs["torch"].read_text() == outputs["onnxruntime"].read_text()
    monkeypatch.chdir(tmp_path)
    argv = [str(graphs), "--src", str(source), "--ref", str(reference), "--engine", "onnxruntime", "--beam", "2"]
    assert nmt.cli.evaluate.main(argv) == 0 and "| BLEU" in capsys.readouterr().out


def test_what_onnxruntime_cannot_run_is_one_line(graphs, trained_run, tmp_path, capsys):
    plain = tmp_path / "plain"
    assert nmt.cli.export.main([str(trained_run), str(plain)]) == 0
    source = tmp_path / "in.de"
    source.write_text(LINES[0] + "\n")
    cases = [
        (trained_run, [], "runs a model directory with graphs"),
        (plain, [], "has no ONNX graphs"),
        (graphs, ["--quantize", "int8"], "--onnx --quantize int8"),  # float graphs only
    ]
    capsys.readouterr()
    for model, extra, words in cases:
        assert nmt.cli.translate.main([str(model), "-i", str(source), "--engine", "onnxruntime", *extra]) == 2
        error = capsys.readouterr().err.strip()
        assert words in error and "\n" not in error, error
    with pytest.raises(ConfigError, match="precision fp32"):
        InferenceOptions(engine="onnxruntime", precision="bf16")
    assert nmt.cli.export.main([str(trained_run), str(tmp_path / "q"), "--quantize", "int8"]) == 2
    assert "add --onnx" in capsys.readouterr().err


def _model(seed: int = 0, **changes) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = ModelConfig(
        embed_dim=16,
        encoder=changes.pop("encoder", EncoderConfig(12, 1, True)),
        decoder=changes.pop("decoder", DecoderConfig(24, 1)),
        dropout=0.0,
        **changes,
    )
    return build_model(config, 50, 60).eval()


def _check(model, tmp_path: Path, batches: int = 20) -> float:
    description = export_graphs(model, tmp_path)
    return compare_with_torch(model, OnnxModel(tmp_path, description), batches)


@pytest.mark.slow
def test_a_two_layer_gru_encoder_and_a_peephole_decoder_export_exactly(tmp_path):
    model = _model(
        encoder=EncoderConfig(12, 2, True, "gru"), decoder=DecoderConfig(24, 1, "peephole"), attention="luong_general"
    )
    assert _check(model, tmp_path) < 1e-4


KINDS = {
    "unidirectional encoder, cifg decoder, no attention": dict(
        encoder=EncoderConfig(12, 1, False), decoder=DecoderConfig(24, 2, "cifg"), attention="none"
    ),
    "luong dot, tied embeddings, no input feeding": dict(
        encoder=EncoderConfig(8, 2, True),
        decoder=DecoderConfig(16, 2),
        attention="luong_dot",
        tie_embeddings=True,
        input_feeding=False,
    ),
    "gru decoder from an lstm encoder of other depth": dict(
        encoder=EncoderConfig(12, 3, True), decoder=DecoderConfig(24, 2, "gru"), attention="bahdanau"
    ),
    "rnn decoder from a gru encoder": dict(
        encoder=EncoderConfig(12, 1, True, "gru"), decoder=DecoderConfig(24, 1, "rnn"), attention="bahdanau"
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_every_cell_attention_and_bridge_exports_exactly(kind, tmp_path):
    assert _check(_model(**KINDS[kind]), tmp_path) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["peephole", "cifg", "rnn"])
def test_encoders_of_cells_torch_has_no_kernel_for_export_exactly(cell, tmp_path):
    # peephole: ONNX LSTM's P; cifg: an LSTM with the input gate sigma(-z_f); rnn: a GRU with its gates fixed
    model = _model(encoder=EncoderConfig(12, 2, True, cell), attention="luong_general")
    assert _check(model, tmp_path, batches=10) < 1e-4


def test_the_service_translates_with_onnxruntime(graphs):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from nmt.service.app import Limits, create_app
    from nmt.service.engine import Engine, EngineSettings, LoadedModel

    inference = InferenceOptions(**ORT)
    loaded = LoadedModel.load(graphs, inference)
    with TestClient(create_app(Engine(loaded, EngineSettings()), inference, Limits())) as client:
        answer = client.post("/translate", json={"segments": LINES[:4], "beam": 3})
    assert answer.status_code == 200, answer.text
    expected = Translator.load(graphs, SearchOptions(beam_size=3), InferenceOptions(**TORCH)).translate(LINES[:4])
    assert [t["text"] for t in answer.json()["translations"]] == expected
