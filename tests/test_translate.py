import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nmt.checkpoint import save_checkpoint
from nmt.config import Config, DataConfig, DecoderConfig, EncoderConfig, ModelConfig
from nmt.model import build_model
from nmt.search import greedy_search, max_output_lengths
from nmt.tokenizer import Tokenizer
from nmt.translate import Translator

from conftest import PAIRS

BIN = Path(sys.executable).parent
SOURCES = [de for de, _ in PAIRS]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained but complete checkpoint: config, tokenizer, weights."""
    tokenizer = Tokenizer.train(SOURCES, [en for _, en in PAIRS], vocab_size=80)
    config = Config(
        data=DataConfig(name="toy", source="unused"),
        model=ModelConfig(embed_dim=16, encoder=EncoderConfig(16, 1, True), decoder=DecoderConfig(32, 1), dropout=0.0),
    )
    torch.manual_seed(3)
    model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "best.pt"
    save_checkpoint({"config": config.to_dict(), "tokenizer": tokenizer.state(), "model": model.state_dict()}, path)
    return path


def test_one_output_per_input_in_order_with_empty_lines_kept(checkpoint):
    translator = Translator.from_checkpoint(checkpoint, device="cpu", batch_tokens=60)
    lines = [SOURCES[0], "", SOURCES[5], "   ", *SOURCES[10:40]]
    outputs = translator.translate(lines)
    assert len(outputs) == len(lines)
    assert outputs[1] == "" and outputs[3] == ""
    # Sorting into batches by length never mixes up the order.
    one_by_one = [translator.translate([line])[0] for line in lines]
    assert outputs == one_by_one


def test_greedy_respects_the_length_limit(checkpoint):
    translator = Translator.from_checkpoint(checkpoint, device="cpu")
    src = torch.tensor([[5, 6, 3, 0], [7, 3, 0, 0]])
    lengths = torch.tensor([3, 2])
    outputs = greedy_search(translator.model, src, lengths, max_len_a=0.0, max_len_b=2)
    assert all(len(output) <= 2 for output in outputs)
    assert max_output_lengths(torch.tensor([10]), 1.5, 10).item() == 25
    assert max_output_lengths(torch.tensor([1000]), 1.5, 10).item() == 512


def test_streaming_gives_the_same_as_one_call(checkpoint):
    translator = Translator.from_checkpoint(checkpoint, device="cpu")
    lines = SOURCES[:25]
    assert list(translator.translate_stream(iter(lines), chunk_lines=7)) == translator.translate(lines)


def test_cli_reads_a_file_with_bad_bytes_and_writes_every_line(checkpoint, tmp_path):
    source = tmp_path / "in.de"
    source.write_bytes(b"Der Hund l\xe4uft.\n\nEine Frau spielt im Park.\n")
    out = tmp_path / "out.en"
    result = subprocess.run(
        [str(BIN / "nmt-translate"), str(checkpoint.parent.parent), "-i", str(source), "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "in.de:1: invalid UTF-8 replaced" in result.stderr
    lines = out.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""


def test_cli_errors_are_one_line(tmp_path):
    result = subprocess.run([str(BIN / "nmt-translate"), str(tmp_path / "nothing")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "bad.pt").write_bytes(b"junk")
    result = subprocess.run([str(BIN / "nmt-translate"), str(tmp_path / "bad.pt")], capture_output=True, text=True)
    assert result.returncode == 2 and "not a readable nmt checkpoint" in result.stderr
