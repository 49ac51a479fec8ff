"""The Python API: `from nmt import Translator`, load a run, translate, n-best with scores."""

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PAIRS

SOURCES = [de for de, _ in PAIRS[:6]]


def test_importing_nmt_and_its_config_does_not_import_torch():
    code = "import sys, nmt, nmt.config; print(nmt.__version__); assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().count(".") == 2  # a version such as 0.2.0


def test_load_and_translate_in_five_lines(trained_run):
    from nmt import Translator

    translator = Translator.load(trained_run, beam_size=4, nbest=3, device="cpu", workers=1)
    texts = translator.translate([SOURCES[0], "", SOURCES[1]])
    assert len(texts) == 3 and texts[1] == "" and all(texts[0::2])
    translation = translator.translate_lines([SOURCES[0]])[0]
    assert translation.text == texts[0]
    assert len(translation.nbest) == 3 and translation.nbest[0] == (texts[0], translation.score)
    scores = [score for _, score in translation.nbest]
    assert scores == sorted(scores, reverse=True) and all(score < 0 for score in scores)


def test_the_api_and_the_command_line_translate_alike(trained_run):
    from nmt import Translator

    translator = Translator.load(trained_run, beam_size=3, device="cpu", workers=1)
    cli = subprocess.run(
        [str(Path(sys.executable).parent / "nmt-translate"), str(trained_run), "--beam", "3"],
        input="\n".join(SOURCES) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.splitlines() == translator.translate(SOURCES)


def test_unknown_options_are_refused_by_name(trained_run):
    from nmt import Translator

    with pytest.raises(TypeError, match=r"unknown option beam; valid options: .*beam_size"):
        Translator.load(trained_run, beam=5)
