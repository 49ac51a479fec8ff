import signal
import subprocess
import sys

import pytest
import torch

from nmt import checkpoint
from nmt.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint, save_checkpoint


def test_round_trip_with_weights_only(tmp_path):
    payload = {"model": {"w": torch.arange(4.0)}, "tokenizer": {"src_model": b"\x00\x01", "tgt_model": None}}
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(payload, path)
    loaded = load_checkpoint(path)
    torch.testing.assert_close(loaded["model"]["w"], torch.arange(4.0))
    assert loaded["tokenizer"] == payload["tokenizer"]


def test_a_crash_while_saving_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    def crash(obj, stream):
        stream.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_unreadable_or_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    for junk in (b"not a checkpoint", b"junk", b""):
        (tmp_path / "junk.pt").write_bytes(junk)
        with pytest.raises(CheckpointError, match="not a readable nmt checkpoint"):
            load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an nmt checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_run_directories_resolve_to_best_then_last(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="is it a run directory"):
        resolve_checkpoint(run)
    save_checkpoint({}, run / "checkpoints" / "last.pt")
    assert resolve_checkpoint(run).name == "last.pt"
    save_checkpoint({}, run / "checkpoints" / "best.pt")
    assert resolve_checkpoint(run).name == "best.pt"
    assert resolve_checkpoint(run / "checkpoints" / "last.pt").name == "last.pt"
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope")


class _RunsCode:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_pickle_that_would_run_code_is_refused_without_advising_weights_only_false(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "nmt-checkpoint-1", "model": _RunsCode()}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert "evil.pt" in message and "could run code" in message and "weights_only" not in message
    assert "this ran" not in capsys.readouterr().out


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"no space left on the device writing .*last\.pt"):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_a_write_killed_midway_leaves_the_previous_checkpoint_loadable(tmp_path):
    """SIGKILL while torch.save writes: the temporary file is half written, last.pt untouched."""
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "weights": torch.zeros(10)}, path)
    script = (
        "import os, signal, torch\n"
        "from pathlib import Path\n"
        "from nmt.checkpoint import save_checkpoint\n"
        "real_save = torch.save\n"
        "def dying_save(obj, f, *a, **k):\n"
        "    f.write(b'PK half a zip')\n"
        "    f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "torch.save = dying_save\n"
        f"save_checkpoint({{'step': 2}}, Path({str(path)!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert load_checkpoint(path)["step"] == 1
    assert len(list(tmp_path.glob(".last.pt.*.tmp"))) == 1  # the half-written file
    save_checkpoint({"step": 3}, path)  # the next save clears it away
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"] and load_checkpoint(path)["step"] == 3
