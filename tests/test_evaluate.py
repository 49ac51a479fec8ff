import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import SPLITS, write_lines

from nmt.scoring import bleu, corpus_scores

BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "nmt-evaluate"), *args], capture_output=True, text=True, timeout=600)


def test_scores_carry_signatures_and_perfect_output_scores_100():
    refs = ["The dog runs in the park.", "A woman laughs."]
    scores = {s.name: s for s in corpus_scores(refs, refs)}
    assert scores["BLEU"].score == pytest.approx(100.0)
    assert scores["chrF2"].score == pytest.approx(100.0)
    assert scores["TER"].score == pytest.approx(0.0)
    assert "tok:13a" in scores["BLEU"].signature and "nc:6" in scores["chrF2"].signature
    with pytest.raises(ValueError, match="line-aligned"):
        bleu(refs, refs[:1])


def test_split_of_the_runs_corpus_writes_hypotheses_that_sacrebleu_scores_the_same(trained_run):
    result = run(str(trained_run), "--split", "test", "--beam", "3")
    assert result.returncode == 0, result.stderr
    results = trained_run / "results"
    hyp = results / "test.best.beam3.hyp"
    saved = json.loads((results / "test.best.beam3.json").read_text())
    assert saved["sentences"] == len(SPLITS["test"]) and saved["split"] == "test"
    assert len(hyp.read_text().splitlines()) == len(SPLITS["test"])
    bleu_row = next(s for s in saved["scores"] if s["name"] == "BLEU")
    assert f"{bleu_row['score']:.2f}" in result.stdout
    # sacrebleu's own command line on the written hypotheses gives the same BLEU.
    refs = trained_run.parent / "corpus" / "test.en"
    by_hand = subprocess.run(
        [str(BIN / "sacrebleu"), str(refs), "-i", str(hyp), "-b", "-w", "4"], capture_output=True, text=True
    )
    assert float(by_hand.stdout) == pytest.approx(bleu_row["score"], abs=0.005)


def test_src_ref_and_hyp_ref_agree(trained_run, tmp_path):
    src, ref = tmp_path / "src.de", tmp_path / "ref.en"
    write_lines(src, [de for de, _ in SPLITS["val"]])
    write_lines(ref, [en for _, en in SPLITS["val"]])
    translated = run(str(trained_run), "--src", str(src), "--ref", str(ref), "--beam", "1")
    assert translated.returncode == 0, translated.stderr
    hyp = trained_run / "results" / "src.de.best.beam1.hyp"
    scored = run("--hyp", str(hyp), "--ref", str(ref))
    assert scored.returncode == 0, scored.stderr
    row = lambda out: out.splitlines()[2].split("|")[5:8]  # noqa: E731  BLEU, chrF, TER
    assert row(translated.stdout) == row(scored.stdout)


def test_several_checkpoints_make_one_table(trained_run):
    checkpoints = trained_run / "checkpoints"
    result = run(str(checkpoints / "best.pt"), str(checkpoints / "last.pt"), "--split", "validation", "--beam", "1")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if ".pt | validation |" in line]
    assert len(rows) == 2 and "best.pt" in rows[0] and "last.pt" in rows[1]


def test_user_errors_are_one_line(tmp_path, capsys):
    import nmt.cli.evaluate

    missing = run("--hyp", str(tmp_path / "nope"), "--ref", str(tmp_path / "nope"))  # the whole command
    assert missing.returncode == 2 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr
    write_lines(tmp_path / "a", ["x", "y"])
    write_lines(tmp_path / "b", ["x"])
    assert nmt.cli.evaluate.main(["--hyp", str(tmp_path / "a"), "--ref", str(tmp_path / "b")]) == 2
    assert "2 hypotheses but 1 references" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        nmt.cli.evaluate.main(["--hyp", str(tmp_path / "a")])
    assert usage.value.code == 2 and "need --ref" in capsys.readouterr().err


def test_the_lowercased_bleu_comes_on_request_labelled_with_its_signature(tmp_path, capsys):
    import nmt.cli.evaluate

    hyp, ref = tmp_path / "hyp.en", tmp_path / "ref.en"
    hyp.write_text("A Dog runs through the Snow .\nTwo Men talk .\n")
    ref.write_text("a dog runs through the snow .\ntwo men talk .\n")
    assert nmt.cli.evaluate.main(["--hyp", str(hyp), "--ref", str(ref), "--lowercase-bleu"]) == 0
    out = capsys.readouterr().out
    header, _, row = out.splitlines()[:3]
    assert "| BLEU | BLEU-lc |" in header
    cased, lowercased = (float(cell) for cell in row.split("|")[5:7])
    assert lowercased == 100.0 and cased < 100.0
    assert "BLEU-lc: nrefs:1|case:lc|" in out and "BLEU: nrefs:1|case:mixed|" in out
    assert nmt.cli.evaluate.main(["--hyp", str(hyp), "--ref", str(ref)]) == 0
    assert "BLEU-lc" not in capsys.readouterr().out  # only on request


def test_a_split_is_scored_without_reading_the_training_corpus(trained_run, tmp_path):
    """--split test reads the test split alone: a corpus whose training files are gone (or
    millions of pairs long) costs nothing."""
    corpus = tmp_path / "test_only"
    corpus.mkdir()
    write_lines(corpus / "test.de", [de for de, _ in SPLITS["test"]])
    write_lines(corpus / "test.en", [en for _, en in SPLITS["test"]])
    result = run(str(trained_run), "--split", "test", "--source", str(corpus), "--beam", "1")
    assert result.returncode == 0, result.stderr
    assert f"| {len(SPLITS['test'])} |" in result.stdout
