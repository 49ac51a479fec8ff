import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PAIRS

BIN = Path(sys.executable).parent


def test_inspector_writes_a_plot_per_layer_and_the_numbers(trained_run, tmp_path):
    sentence = PAIRS[0][0]
    out = tmp_path / "gates"
    result = subprocess.run(
        [str(BIN / "nmt-inspect"), str(trained_run), sentence, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.png")) == [
        "decoder_layer0_forward.png",
        "encoder_layer0_backward.png",
        "encoder_layer0_forward.png",
    ]
    numbers = json.loads((out / "gates.json").read_text())
    assert numbers["source"] == sentence and numbers["translation"] == result.stdout.strip()
    encoder = numbers["layers"][0]
    assert encoder["pieces"][-1] == "</s>"
    assert set(encoder["gates"]) == {"forget", "input", "output"}
    time_steps, units = len(encoder["pieces"]), 32
    assert len(encoder["gates"]["forget"]) == time_steps and len(encoder["gates"]["forget"][0]) == units
    assert all(0 < v < 1 for row in encoder["gates"]["forget"] for v in row)
    assert len(encoder["cell_norm"]) == time_steps
    decoder = numbers["layers"][-1]
    assert decoder["side"] == "decoder" and decoder["pieces"][0] == "<s>"


def test_translate_gates_option_and_errors(trained_run, tmp_path, capsys):
    import nmt.cli.inspect

    stdin = f"{PAIRS[1][0]}\n\n"
    result = subprocess.run(
        [str(BIN / "nmt-translate"), str(trained_run), "--gates", str(tmp_path / "g")],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert [p.name for p in sorted((tmp_path / "g").iterdir())] == ["000001"]
    assert (tmp_path / "g" / "000001" / "gates.json").is_file()
    assert nmt.cli.inspect.main([str(trained_run), "  ", "-o", str(tmp_path / "e")]) == 2
    assert "the sentence is empty" in capsys.readouterr().err


@pytest.mark.parametrize("cell", ["gru", "rnn"])
@pytest.mark.parametrize("seed", [0, 22])  # seed 22: the untrained decoder emits pad/bos ids
def test_cells_without_a_cell_state_are_inspected_and_plotted(cell, seed, tmp_path):
    """rnn has no gates at all: its plot shows the hidden state's norm (a gateless layer once
    crashed the first validation of a `model.*.cell=rnn` run)."""
    import torch

    from nmt.config import DecoderConfig, EncoderConfig, ModelConfig
    from nmt.data.tokenizer import Tokenizer
    from nmt.inspection import inspect_sentence, write_inspection
    from nmt.model.seq2seq import build_model

    tokenizer = Tokenizer.train([de for de, _ in PAIRS], [en for _, en in PAIRS], vocab_size=60)
    config = ModelConfig(
        embed_dim=8,
        encoder=EncoderConfig(hidden_size=6, num_layers=1, cell=cell),
        decoder=DecoderConfig(hidden_size=8, num_layers=1, cell=cell),
    )
    torch.manual_seed(seed)
    model = build_model(config, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    translation, layers = inspect_sentence(model, tokenizer, PAIRS[0][0], torch.device("cpu"))
    paths = write_inspection(translation, layers, PAIRS[0][0], tmp_path)
    assert len(paths) == 3 and all(path.stat().st_size > 0 for path in paths)
    numbers = json.loads((tmp_path / "gates.json").read_text())
    for layer in numbers["layers"]:
        assert layer["cell_norm"] is None and len(layer["hidden_norm"]) == len(layer["pieces"])
        assert set(layer["gates"]) == ({"update", "reset"} if cell == "gru" else set())
