"""The catalogue of hostile input: one row per case, each ending in one clear message and exit
status 2 (or a normal answer where the input is merely odd), no traceback, no output clobbered.

The commands run in this process through their `main(argv)`, so the catalogue stays fast;
`tests/test_train.py` and `tests/test_service.py` hold nmt-train's and nmt-serve's cases."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import PAIRS

import nmt.cli.average
import nmt.cli.evaluate
import nmt.cli.inspect
import nmt.cli.translate

SOURCE = PAIRS[0][0]


@dataclass
class Case:
    name: str
    command: str  # translate | evaluate | inspect
    argv: list[str]  # RUN, IN, OUT, REF, DIR, CKPT placeholders
    files: dict[str, bytes]  # name -> content, written into the test's directory
    exit_code: int
    words: str  # in stderr (exit != 0) or checked by `lines_out` (exit 0)
    lines_out: int | None = None  # with exit 0: the output file's line count


def lines(*texts: str) -> bytes:
    return "".join(f"{text}\n" for text in texts).encode()


CASES = [
    # --- input files ---
    Case("missing input", "translate", ["RUN", "-i", "nope.de", "-o", "OUT"], {}, 2, "nope.de"),
    Case("directory as input", "translate", ["RUN", "-i", "DIR", "-o", "OUT"], {}, 2, "Is a directory"),
    Case("empty input", "translate", ["RUN", "-i", "IN", "-o", "OUT"], {"in.de": b""}, 0, "", 0),
    Case(
        "invalid UTF-8",
        "translate",
        ["RUN", "-i", "IN", "-o", "OUT"],
        {"in.de": b"\xff\xfe bad\n" + lines(SOURCE)},
        0,
        "",
        2,
    ),
    Case("NUL bytes", "translate", ["RUN", "-i", "IN", "-o", "OUT"], {"in.de": lines("Ein\x00Mann", SOURCE)}, 0, "", 2),
    Case(
        "control characters",
        "translate",
        ["RUN", "-i", "IN", "-o", "OUT"],
        {"in.de": lines("Ein\x07\x1b[31m Mann\x7f")},
        0,
        "",
        1,
    ),
    Case(
        "byte-order mark",
        "translate",
        ["RUN", "-i", "IN", "-o", "OUT"],
        {"in.de": b"\xef\xbb\xbf" + lines(SOURCE, SOURCE)},
        0,
        "",
        2,
    ),
    Case(
        "a line of 1 MB",
        "translate",
        ["RUN", "-i", "IN", "-o", "OUT", "--beam", "1"],
        {"in.de": lines("Mann " * 200_000, SOURCE)},
        0,
        "cut to its first 1024",
        2,
    ),
    Case(
        "CRLF line ends",
        "translate",
        ["RUN", "-i", "IN", "-o", "OUT"],
        {"in.de": f"{SOURCE}\r\n\r\n{SOURCE}\r\n".encode()},
        0,
        "",
        3,
    ),
    Case("no newline at the end", "translate", ["RUN", "-i", "IN", "-o", "OUT"], {"in.de": SOURCE.encode()}, 0, "", 1),
    # --- outputs ---
    Case(
        "output directory missing",
        "translate",
        ["RUN", "-i", "IN", "-o", "missing/out.en"],
        {"in.de": lines(SOURCE)},
        2,
        "output directory",
    ),
    Case(
        "output is a directory",
        "translate",
        ["RUN", "-i", "IN", "-o", "DIR"],
        {"in.de": lines(SOURCE)},
        2,
        "is a directory",
    ),
    # --- search options ---
    Case(
        "beam 0",
        "translate",
        ["RUN", "-i", "IN", "--beam", "0"],
        {"in.de": lines(SOURCE)},
        2,
        "beam_size=0 must be >= 1",
    ),
    Case(
        "nbest over beam",
        "translate",
        ["RUN", "-i", "IN", "--beam", "2", "--nbest", "3"],
        {"in.de": lines(SOURCE)},
        2,
        "nbest=3 must be between",
    ),
    Case(
        "negative min length",
        "translate",
        ["RUN", "-i", "IN", "--min-len", "-1"],
        {"in.de": lines(SOURCE)},
        2,
        "min_len=-1",
    ),
    Case(
        "negative max length",
        "translate",
        ["RUN", "-i", "IN", "--max-len-b", "-5"],
        {"in.de": lines(SOURCE)},
        2,
        "max_len_b=-5",
    ),
    Case(
        "top-p out of range",
        "translate",
        ["RUN", "-i", "IN", "--sample", "--top-p", "1.5"],
        {"in.de": lines(SOURCE)},
        2,
        "top_p=1.5",
    ),
    Case(
        "temperature without sampling",
        "translate",
        ["RUN", "-i", "IN", "--temperature", "0.5"],
        {"in.de": lines(SOURCE)},
        2,
        "only apply with sample",
    ),
    Case(
        "bad precision",
        "translate",
        ["RUN", "-i", "IN", "--precision", "fp8"],
        {"in.de": lines(SOURCE)},
        2,
        "invalid choice",
    ),
    # --- checkpoints ---
    Case(
        "missing checkpoint", "translate", ["nope/best.pt", "-i", "IN"], {"in.de": lines(SOURCE)}, 2, "does not exist"
    ),
    Case(
        "truncated checkpoint",
        "translate",
        ["CKPT", "-i", "IN"],
        {"in.de": lines(SOURCE), "ckpt.pt": b"TRUNCATE"},
        2,
        "not a readable nmt checkpoint",
    ),
    Case(
        "checkpoint whose pickle calls a blocked module",
        "translate",
        ["CKPT", "-i", "IN"],
        {"in.de": lines(SOURCE), "ckpt.pt": b"BLOCKED"},
        2,
        "could run code",
    ),
    Case(
        "random bytes as checkpoint",
        "translate",
        ["CKPT", "-i", "IN"],
        {"in.de": lines(SOURCE), "ckpt.pt": os.urandom(4096)},
        2,
        "ckpt.pt",
    ),
    Case(
        "another program's checkpoint",
        "translate",
        ["CKPT", "-i", "IN"],
        {"in.de": lines(SOURCE), "ckpt.pt": b"FOREIGN"},
        2,
        "not an nmt checkpoint",
    ),
    Case(
        "checkpoint of another model",
        "translate",
        ["CKPT", "-i", "IN"],
        {"in.de": lines(SOURCE), "ckpt.pt": b"RESHAPED"},
        2,
        "weights do not fit",
    ),
    Case(
        "checkpoint of another nmt version",
        "translate",
        ["CKPT", "-i", "IN"],
        {"in.de": lines(SOURCE), "ckpt.pt": b"FUTURE"},
        2,
        "not an nmt checkpoint",
    ),
    Case(
        "a directory that is no run",
        "translate",
        ["DIR", "-i", "IN"],
        {"in.de": lines(SOURCE)},
        2,
        "is it a run directory",
    ),
    # --- evaluation ---
    Case(
        "mismatched line counts",
        "evaluate",
        ["--hyp", "IN", "--ref", "REF"],
        {"in.de": lines("a", "b"), "ref.en": lines("a")},
        2,
        "line",
    ),
    Case("missing reference", "evaluate", ["--hyp", "IN", "--ref", "nope.en"], {"in.de": lines("a")}, 2, "nope.en"),
    Case(
        "empty hypotheses and references",
        "evaluate",
        ["--hyp", "IN", "--ref", "REF"],
        {"in.de": b"", "ref.en": b""},
        2,
        "empty",
    ),
    Case("evaluate: bad beam", "evaluate", ["RUN", "--split", "test", "--beam", "0"], {}, 2, "beam_size=0"),
    # --- averaging ---
    Case("average: missing checkpoint", "average", ["nope.pt", "-o", "OUT"], {}, 2, "no checkpoint at"),
    Case(
        "average: junk checkpoint",
        "average",
        ["CKPT", "CKPT", "-o", "OUT"],
        {"ckpt.pt": b"junk"},
        2,
        "not a readable nmt checkpoint",
    ),
    Case(
        "average: --last without kept checkpoints",
        "average",
        ["RUN", "--last", "3", "-o", "OUT"],
        {},
        2,
        "fewer than --last 3",
    ),
    Case(
        "average: output directory missing",
        "average",
        ["RUN/checkpoints/best.pt", "-o", "missing/out.en"],
        {},
        2,
        "does not exist",
    ),
    # --- inspection ---
    Case("inspect: missing checkpoint", "inspect", ["nope.pt", SOURCE, "-o", "DIR"], {}, 2, "does not exist"),
    Case("inspect: empty sentence", "inspect", ["RUN", "   ", "-o", "DIR"], {}, 2, "empty"),
]


class _RunsAShell:
    def __reduce__(self):
        return (os.system, ("echo this ran",))


def _checkpoint_variant(kind: bytes, run: Path, path: Path) -> None:
    from dataclasses import replace

    import torch

    from nmt.checkpoint import Checkpoint, read_payload

    real = (run / "checkpoints" / "best.pt").read_bytes()
    if kind == b"TRUNCATE":
        path.write_bytes(real[: len(real) // 2])
    elif kind == b"BLOCKED":  # torch words a blocked module unlike other refused globals
        torch.save({"format": "nmt-checkpoint-1", "model": _RunsAShell()}, path)
    elif kind == b"FOREIGN":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif kind in (b"RESHAPED", b"FUTURE"):
        if kind == b"RESHAPED":
            checkpoint = Checkpoint.load(run / "checkpoints" / "best.pt")
            name = next(iter(checkpoint.model))
            replace(checkpoint, model={**checkpoint.model, name: torch.zeros(3, 3)}).save(path)
        else:
            payload = read_payload(run / "checkpoints" / "best.pt")
            payload.pop("format")
            torch.save({"format": "nmt-checkpoint-99", **payload}, path)
    else:
        path.write_bytes(kind)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_input_is_one_message(trained_run, tmp_path, capsys):
    source = tmp_path / "in.de"
    source.write_text(SOURCE + "\n")
    source.chmod(0)
    code = nmt.cli.translate.main([str(trained_run), "-i", str(source), "--device", "cpu"])
    assert code == 2 and "Permission denied" in capsys.readouterr().err


def test_a_missing_input_is_one_line_before_any_model_is_loaded(trained_run, tmp_path, capsys, caplog):
    missing = tmp_path / "missing.de"
    code = nmt.cli.translate.main([str(trained_run), "-i", str(missing), "--device", "cpu"])
    assert code == 2 and capsys.readouterr().err == f"nmt-translate: -i {missing}: No such file or directory\n"
    assert "loaded" not in caplog.text


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input(case: Case, trained_run: Path, tmp_path: Path, capsys, caplog):
    (tmp_path / "dir").mkdir()
    for name, content in case.files.items():
        if name.endswith(".pt"):
            _checkpoint_variant(content, trained_run, tmp_path / name)
        else:
            (tmp_path / name).write_bytes(content)
    out = tmp_path / "out.en"
    out.write_text("precious\n")
    names = {"RUN": trained_run, "IN": tmp_path / "in.de", "OUT": out, "REF": tmp_path / "ref.en"}
    names |= {"DIR": tmp_path / "dir", "CKPT": tmp_path / "ckpt.pt"}
    argv = [str(names.get(arg, arg)) for arg in case.argv]
    argv = [arg.replace("RUN/", f"{trained_run}/") for arg in argv]
    argv = [str(tmp_path / arg) if arg in ("nope.de", "nope.en", "nope.pt", "missing/out.en") else arg for arg in argv]
    if case.command == "translate":
        argv += ["--device", "cpu", "--workers", "1", "--no-progress"]
    main = {
        "translate": nmt.cli.translate.main,
        "evaluate": nmt.cli.evaluate.main,
        "inspect": nmt.cli.inspect.main,
        "average": nmt.cli.average.main,
    }
    try:
        code = main[case.command](argv)
    except SystemExit as exit:  # argparse's own refusals
        code = exit.code
    captured = capsys.readouterr()
    assert code == case.exit_code, captured.err
    assert "Traceback" not in captured.err and "this ran" not in captured.out
    if code:
        assert case.words in captured.err
        if "ckpt.pt" in case.files:  # nmt's words, not torch's advice or miniz's paragraph
            assert len(captured.err.strip().splitlines()) == 1, captured.err
            assert "weights_only" not in captured.err and "miniz" not in captured.err
        if "OUT" in case.argv:
            assert out.read_text() == "precious\n"  # never clobbered by a failed run
    elif case.lines_out is not None:
        assert len(out.read_text(encoding="utf-8").splitlines()) == case.lines_out
        assert case.words in captured.err + caplog.text  # warnings go through logging


# --- commands that are their own process: nmt-train (Hydra) and nmt-serve (a server) ----------------
BIN = Path(sys.executable).parent
SLOW = pytest.mark.slow  # a whole nmt-train start each: the fast run keeps two of them
TRAIN_CASES = [
    pytest.param("missing corpus", ["data.source=NOPE"], "does not exist", marks=SLOW),
    pytest.param(
        "empty training files", ["data.source=EMPTY"], "holds no sentence pair with both sides non-empty", marks=SLOW
    ),
    pytest.param("mismatched line counts", ["data.source=UNEVEN"], "lines", marks=SLOW),
    # test_train checks the same key among its user errors
    pytest.param("unknown key", ["train.lr_rate=0.1"], "unknown key train.lr_rate", marks=SLOW),
    pytest.param("bad value", ["model.dropout=1.5"], "model.dropout=1.5", marks=SLOW),
    pytest.param("no stopping rule", ["train.max_epochs=0"], "no stopping rule", marks=SLOW),
    pytest.param("resume of a run that does not exist", ["train.resume=NOPE"], "no checkpoints/last.pt there"),
]


@pytest.mark.parametrize("name, overrides, words", TRAIN_CASES, ids=[case.values[0] for case in TRAIN_CASES])
def test_hostile_training_input(name, overrides, words, tmp_path, text_corpus):
    places = {"NOPE": str(tmp_path / "nope"), "EMPTY": str(tmp_path / "empty"), "UNEVEN": str(tmp_path / "uneven")}
    for corpus in ("empty", "uneven"):
        (tmp_path / corpus).mkdir()
        for split in ("train", "val", "test"):
            src = b"" if corpus == "empty" else lines(*[de for de, _ in PAIRS[:10]])
            tgt = b"" if corpus == "empty" else lines(*[en for _, en in PAIRS[:9]])
            (tmp_path / corpus / f"{split}.de").write_bytes(src)
            (tmp_path / corpus / f"{split}.en").write_bytes(tgt)
    argv = [arg.replace(key, value) for arg in overrides for key, value in places.items() if key in arg] or overrides
    if not any(arg.startswith("data.source=") for arg in argv):
        argv.append(f"data.source={text_corpus}")
    result = subprocess.run(
        [str(BIN / "nmt-train"), *argv, f"hydra.run.dir={tmp_path / 'run'}", "train=smoke"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert words in output and "Traceback" not in output


@pytest.mark.parametrize("content", [b"junk", b""], ids=["junk checkpoint", "empty checkpoint"])
def test_hostile_serving_input(content, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    result = subprocess.run([str(BIN / "nmt-serve"), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "bad.pt" in result.stderr and "Traceback" not in result.stderr
