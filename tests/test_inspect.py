import json
import subprocess
import sys
from pathlib import Path

from conftest import PAIRS

BIN = Path(sys.executable).parent


def test_inspector_writes_a_plot_per_layer_and_the_numbers(trained_run, tmp_path):
    sentence = PAIRS[0][0]
    out = tmp_path / "gates"
    result = subprocess.run([str(BIN / "nmt-inspect"), str(trained_run), sentence, "-o", str(out)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.glob("*.png")) == [
        "decoder_layer0_forward.png", "encoder_layer0_backward.png", "encoder_layer0_forward.png"]
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


def test_translate_gates_option_and_errors(trained_run, tmp_path):
    stdin = f"{PAIRS[1][0]}\n\n"
    result = subprocess.run([str(BIN / "nmt-translate"), str(trained_run), "--gates", str(tmp_path / "g")],
                            input=stdin, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [p.name for p in sorted((tmp_path / "g").iterdir())] == ["000001"]
    assert (tmp_path / "g" / "000001" / "gates.json").is_file()
    empty = subprocess.run([str(BIN / "nmt-inspect"), str(trained_run), "  ", "-o", str(tmp_path / "e")],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert empty.returncode == 2 and "the sentence is empty" in empty.stderr
