"""The smoke preset on the real Multi30k (needs NMT_DATA, as CI sets it)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nmt.checkpoint import Checkpoint

BIN = Path(sys.executable).parent
NMT_DATA = os.environ.get("NMT_DATA", "")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (NMT_DATA and Path(NMT_DATA).is_dir()), reason="NMT_DATA does not name a local Multi30k copy"
    ),
]


def test_smoke_preset_trains_on_multi30k_and_translates(tmp_path):
    run = tmp_path / "run"
    trained = subprocess.run(
        [str(BIN / "nmt-train"), "train=smoke", f"hydra.run.dir={run}"], capture_output=True, text=True, timeout=600
    )
    assert trained.returncode == 0, trained.stderr
    progress = Checkpoint.load(run / "checkpoints" / "last.pt").progress
    assert progress.epoch == 2 and progress.step > 0
    assert list((run / "tensorboard").glob("events.*")) and (run / "tokenizer" / "joint.model").is_file()
    translated = subprocess.run(
        [str(BIN / "nmt-translate"), str(run)],
        input="Ein Hund läuft.\n\nZwei Männer.\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert translated.returncode == 0, translated.stderr
    assert len(translated.stdout.split("\n")) == 4 and translated.stdout.split("\n")[1] == ""
