import itertools
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import PAIRS

from nmt.checkpoint import Checkpoint
from nmt.config import Config, DataConfig, DecoderConfig, EncoderConfig, ModelConfig
from nmt.data.tokenizer import Tokenizer
from nmt.model.seq2seq import build_model
from nmt.options import SearchOptions
from nmt.search import max_output_lengths, search
from nmt.translation import Translator, load_model

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
    Checkpoint(config, tokenizer, model.state_dict()).save(path)
    return path


def test_loading_gives_the_checkpoints_weights_without_drawing_random_ones(checkpoint):
    saved = Checkpoint.load(checkpoint).model
    rng = torch.get_rng_state()
    model, _, _ = load_model(checkpoint, "cpu")
    # Construction's random fills are skipped (they cost ~0.3 s of every start), so the generator
    # is untouched, and every weight is the checkpoint's.
    assert torch.equal(torch.get_rng_state(), rng)
    loaded = model.state_dict()
    assert loaded.keys() == saved.keys()
    for name, weight in saved.items():
        assert torch.equal(loaded[name], weight), name
    # The fills are skipped only while loading: a model built afterwards is random again.
    config = Checkpoint.load(checkpoint).config
    fresh = build_model(config.model, model.encoder.embed.num_embeddings, model.decoder.embed.num_embeddings)
    assert not torch.equal(fresh.decoder.embed.weight, model.decoder.embed.weight)
    assert fresh.decoder.embed.weight.abs().max() <= config.model.init_range


def test_one_output_per_input_in_order_with_empty_lines_kept(checkpoint):
    translator = Translator.load(checkpoint, device="cpu", batch_tokens=60)
    lines = [SOURCES[0], "", SOURCES[5], "   ", *SOURCES[10:40]]
    outputs = translator.translate(lines)
    assert len(outputs) == len(lines)
    assert outputs[1] == "" and outputs[3] == ""
    # Sorting into batches by length never mixes up the order.
    one_by_one = [translator.translate([line])[0] for line in lines]
    assert outputs == one_by_one


def test_greedy_respects_the_length_limit(checkpoint):
    translator = Translator.load(checkpoint, device="cpu")
    src = torch.tensor([[5, 6, 3, 0], [7, 3, 0, 0]])
    lengths = torch.tensor([3, 2])
    for beam in (1, 4):
        outputs = search(translator.model, src, lengths, SearchOptions(beam_size=beam, max_len_a=0.0, max_len_b=2))
        assert all(len(nbest[0].tokens) <= 1 for nbest in outputs)  # 2 counts the eos
    assert max_output_lengths(torch.tensor([10]), 1.5, 10).item() == 25
    assert max_output_lengths(torch.tensor([1000]), 1.5, 10).item() == 512


def test_streaming_gives_the_same_as_one_call(checkpoint):
    translator = Translator.load(checkpoint, device="cpu")
    lines = SOURCES[:25]
    streamed = [t.text for t in translator.translate_stream(iter(lines), chunk_lines=7)]
    assert streamed == translator.translate(lines)


def test_cli_reads_a_file_with_bad_bytes_and_writes_every_line(checkpoint, tmp_path):
    source = tmp_path / "in.de"
    source.write_bytes(b"Der Hund l\xe4uft.\n\nEine Frau spielt im Park.\n")
    out = tmp_path / "out.en"
    result = subprocess.run(
        [str(BIN / "nmt-translate"), str(checkpoint.parent.parent), "-i", str(source), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
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


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "nmt-translate"), *args], input=stdin, capture_output=True, text=True, timeout=300)


def test_cli_nbest_scores_and_attention_plots(trained_run, tmp_path, capsys):
    import nmt.cli.translate

    sources = [de for de, _ in PAIRS[:3]]
    stdin = "\n".join([sources[0], "", *sources[1:]]) + "\n"
    source = tmp_path / "source.de"
    source.write_text(stdin)

    def translate(*options: str) -> list[str]:  # in-process, the source as a file
        assert nmt.cli.translate.main([str(trained_run), "-i", str(source), *options]) == 0
        return capsys.readouterr().out.splitlines()

    nbest = run_cli(str(trained_run), "--beam", "4", "--nbest", "3", stdin=stdin)  # the whole command
    assert nbest.returncode == 0, nbest.stderr
    rows = [line.split("\t") for line in nbest.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [1, 1, 1, 2, 3, 3, 3, 4, 4, 4]
    for line in (1, 3, 4):
        scores = [float(r[1]) for r in rows if int(r[0]) == line]
        assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)
    best = translate("--beam", "4")
    assert [r[2] for r in rows if r[0] in ("1", "3", "4")][::3] == [best[0], best[2], best[3]]
    scored = translate("--scores")
    assert len(scored) == 4 and float(scored[0].split("\t")[0]) < 0
    plots = tmp_path / "attention"
    translate("--attention", str(plots))
    assert sorted(p.name for p in plots.iterdir()) == ["000001.png", "000003.png", "000004.png"]


def test_cli_rejects_bad_search_options(trained_run, capsys):
    import nmt.cli.translate

    result = run_cli(str(trained_run), "--beam", "2", "--nbest", "3", stdin="x\n")  # the whole command
    assert result.returncode == 2 and "nbest=3 must be between 1 and the beam size (2)" in result.stderr
    assert nmt.cli.translate.main([str(trained_run), "--workers", "-1"]) == 2
    assert "workers=-1 must be >= 0" in capsys.readouterr().err
    assert nmt.cli.translate.main([str(trained_run), "--temperature", "0.5"]) == 2
    assert "temperature only apply with sample=true (--sample)" in capsys.readouterr().err


def test_long_lines_empty_lines_and_bad_bytes_keep_the_line_count(checkpoint, tmp_path):
    source = tmp_path / "mixed.de"
    lines = []
    for i in range(300):
        lines.append(b"" if i % 7 == 0 else SOURCES[i % len(SOURCES)].encode())
    lines[5] = ("Ein sehr langer Satz " * 250).encode()[:5000]
    lines[9] = b"Der Hund \xff\xfe l\xe4uft."
    source.write_bytes(b"\n".join(lines) + b"\n")
    result = subprocess.run(
        [str(BIN / "nmt-translate"), str(checkpoint), "-i", str(source), "--batch-tokens", "2000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.split("\n")
    assert len(out) == 301 and out[-1] == ""
    assert all(out[i] == "" for i in range(0, 300, 7))
    assert result.stderr.count("invalid UTF-8") == 1 and "mixed.de:10:" in result.stderr


def test_an_unwritable_output_is_one_line_and_an_old_output_survives_a_failure(checkpoint, tmp_path):
    result = run_cli(str(checkpoint), "-o", str(tmp_path / "no" / "such" / "dir" / "out.en"), stdin="x\n")
    assert (
        result.returncode == 2
        and "output directory" in result.stderr
        and "does not exist" in result.stderr
        and "Traceback" not in result.stderr
    )
    old = tmp_path / "out.en"
    old.write_text("precious\n")
    failed = run_cli(str(checkpoint), "-i", str(tmp_path / "missing.de"), "-o", str(old))
    assert failed.returncode == 2
    assert old.read_text() == "precious\n" and not list(tmp_path.glob(".out.en.partial"))


def test_a_checkpoint_with_torchs_weight_names_in_its_cells_still_loads(checkpoint, tmp_path):
    """Checkpoints written before the cells held their products as nn.Linear children name the
    weights as torch.nn.LSTM does (weight_ih, bias_hh, ...)."""
    loaded_checkpoint = Checkpoint.load(checkpoint)
    renames = {
        "input_proj.weight": "weight_ih",
        "input_proj.bias": "bias_ih",
        "hidden_proj.weight": "weight_hh",
        "hidden_proj.bias": "bias_hh",
    }
    old = {}
    for name, weight in loaded_checkpoint.model.items():
        prefix, _, rest = name.partition(".cells.")
        for new_name, old_name in renames.items():
            if rest.endswith(new_name):
                name = f"{prefix}.cells.{rest[: -len(new_name)]}{old_name}"
        old[name] = weight
    assert "decoder.rnn.cells.0.weight_ih" in old
    path = tmp_path / "old.pt"
    replace(loaded_checkpoint, model=old).save(path)
    loaded, _, _ = load_model(path, "cpu")
    for name, weight in loaded_checkpoint.model.items():
        assert torch.equal(loaded.state_dict()[name], weight), name


@pytest.mark.slow  # test_sampling holds the same behaviour through the API
def test_cli_samples_and_blocks_repeated_ngrams(trained_run):
    lines = "\n".join(SOURCES[:20]) + "\n"
    sampled = run_cli(str(trained_run), "--sample", "--temperature", "0.7", "--top-k", "20", "--seed", "3", stdin=lines)
    assert sampled.returncode == 0, sampled.stderr
    again = run_cli(str(trained_run), "--sample", "--temperature", "0.7", "--top-k", "20", "--seed", "3", stdin=lines)
    assert len(sampled.stdout.splitlines()) == 20 and sampled.stdout == again.stdout
    blocked = run_cli(str(trained_run), "--no-repeat-ngram", "2", "--nbest", "3", stdin=lines)
    assert blocked.returncode == 0, blocked.stderr
    for row in blocked.stdout.splitlines():
        words = row.split("\t")[2].split()
        bigrams = list(itertools.pairwise(words))
        assert len(bigrams) == len(set(bigrams)), row  # no piece pair twice, so no word pair either


def test_a_line_written_into_an_open_pipe_is_answered_before_the_pipe_closes(trained_run):
    """Interactive use: `nmt-translate RUN`, then type; each line is answered as it arrives."""
    import select

    translator = Translator.load(trained_run, device="cpu", workers=1)
    process = subprocess.Popen(
        [str(BIN / "nmt-translate"), str(trained_run), "--device", "cpu", "--no-progress"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        for line in (PAIRS[0][0], PAIRS[5][0]):
            process.stdin.write(line.encode() + b"\n")
            process.stdin.flush()
            ready, _, _ = select.select([process.stdout], [], [], 60)
            assert ready, "no answer while the pipe is open"
            assert process.stdout.readline().decode().rstrip("\n") == translator.translate([line])[0]
    finally:
        process.stdin.close()
    assert process.wait(timeout=60) == 0


@pytest.mark.parametrize("output, words", [("missing/out.en", "output directory"), (".", "is a directory")])
def test_an_output_that_cannot_be_written_is_named_not_its_temporary_file(trained_run, tmp_path, output, words):
    source = tmp_path / "in.de"
    source.write_text(PAIRS[0][0] + "\n", encoding="utf-8")
    result = subprocess.run(
        [str(BIN / "nmt-translate"), str(trained_run), "-i", str(source), "-o", str(tmp_path / output)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and words in result.stderr
    assert ".partial" not in result.stderr and "Traceback" not in result.stderr


def test_the_number_of_samples_is_an_option_of_its_own_and_the_beam_size_still_gives_it(trained_run):
    lines = [source for source, _ in PAIRS[:6]]
    inference = {"device": "cpu", "workers": 1}
    by_beam = Translator.load(trained_run, sample=True, beam_size=3, nbest=2, seed=5, **inference)
    by_samples = Translator.load(trained_run, sample=True, samples=3, nbest=2, seed=5, **inference)
    assert by_samples.options.beam_size == 5  # the default beam, unused by sampling
    assert [t.nbest for t in by_samples.translate_lines(lines)] == [t.nbest for t in by_beam.translate_lines(lines)]
    with pytest.raises(ValueError, match="samples only apply with sample=true"):
        SearchOptions(samples=3)
    with pytest.raises(ValueError, match=r"nbest=4 must be between 1 and samples \(3\)"):
        SearchOptions(sample=True, samples=3, nbest=4)
