import os
import signal
import subprocess
import sys

import pytest
import torch

from nmt import checkpoint
from nmt.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_for_resume,
    read_payload,
    resolve_checkpoint,
    write_payload,
)


def test_round_trip_with_weights_only(tmp_path):
    payload = {"model": {"w": torch.arange(4.0)}, "tokenizer": {"src_model": b"\x00\x01", "tgt_model": None}}
    path = tmp_path / "checkpoints" / "last.pt"
    write_payload(payload, path)
    loaded = read_payload(path)
    torch.testing.assert_close(loaded["model"]["w"], torch.arange(4.0))
    assert loaded["tokenizer"] == payload["tokenizer"]


def test_a_crash_while_saving_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    write_payload({"step": 1}, path)

    def crash(obj, stream):
        stream.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        write_payload({"step": 2}, path)
    monkeypatch.undo()
    assert read_payload(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_unreadable_or_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        read_payload(tmp_path / "missing.pt")
    for junk in (b"not a checkpoint", b"junk", b""):
        (tmp_path / "junk.pt").write_bytes(junk)
        with pytest.raises(CheckpointError, match="not a readable nmt checkpoint"):
            read_payload(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an nmt checkpoint"):
        read_payload(tmp_path / "other.pt")


def test_run_directories_resolve_to_best_then_last(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="is it a run directory"):
        resolve_checkpoint(run)
    write_payload({}, run / "checkpoints" / "last.pt")
    assert resolve_checkpoint(run).name == "last.pt"
    write_payload({}, run / "checkpoints" / "best.pt")
    assert resolve_checkpoint(run).name == "best.pt"
    assert resolve_checkpoint(run / "checkpoints" / "last.pt").name == "last.pt"
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope")


class _RunsCode:
    def __reduce__(self):
        return (print, ("this ran",))


class _RunsAShell:
    def __reduce__(self):
        return (os.system, ("echo this ran",))


@pytest.mark.parametrize("payload", [_RunsCode(), _RunsAShell()], ids=["builtins.print", "posix.system"])
def test_a_pickle_that_would_run_code_is_refused_without_advising_weights_only_false(payload, tmp_path, capfd):
    """torch words a blocked module ("... whose module posix is blocked") unlike an unsupported
    global; either way the refusal is nmt's, and names what the file asked for."""
    path = tmp_path / "evil.pt"
    torch.save({"format": "nmt-checkpoint-1", "model": payload}, path)
    with pytest.raises(CheckpointError) as error:
        read_payload(path)
    message = str(error.value)
    assert "evil.pt" in message and "could run code" in message and "weights_only" not in message
    assert ("print" in message or "system" in message) and "\n" not in message
    assert "this ran" not in capfd.readouterr().out


def test_a_truncated_checkpoint_is_one_line_in_nmts_words(tmp_path):
    path = tmp_path / "last.pt"
    write_payload({"weights": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError) as error:
        read_payload(path)
    message = str(error.value)
    assert message == f"{path} is not a readable nmt checkpoint: the file is truncated or damaged, or of another kind"


def test_a_checkpoint_round_trips_every_field(trained_run, tmp_path):
    last = Checkpoint.load(trained_run / "checkpoints" / "last.pt")
    assert last.training is not None and last.progress.step > 0
    last.save(tmp_path / "copy.pt")
    copy = Checkpoint.load(tmp_path / "copy.pt")
    assert copy.config == last.config and copy.progress == last.progress
    assert copy.tokenizer.fingerprint == last.tokenizer.fingerprint
    assert all(torch.equal(copy.model[name], weight) for name, weight in last.model.items())
    assert copy.training.optimizer["param_groups"] == last.training.optimizer["param_groups"]
    best = Checkpoint.load(trained_run / "checkpoints" / "best.pt")
    assert best.training is None
    with pytest.raises(CheckpointError, match="no optimizer state to resume from"):
        best.save(tmp_path / "run" / "checkpoints" / "last.pt")
        load_for_resume(tmp_path / "run")


def test_a_payload_missing_a_part_is_a_clear_error(tmp_path):
    write_payload({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"partial\.pt is not a complete nmt checkpoint"):
        Checkpoint.load(tmp_path / "partial.pt")


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "last.pt"
    write_payload({"step": 1}, path)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"no space left on the device writing .*last\.pt"):
        write_payload({"step": 2}, path)
    monkeypatch.undo()
    assert read_payload(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_a_write_killed_midway_leaves_the_previous_checkpoint_loadable(tmp_path):
    """SIGKILL while torch.save writes: the temporary file is half written, last.pt untouched."""
    path = tmp_path / "last.pt"
    write_payload({"step": 1, "weights": torch.zeros(10)}, path)
    script = (
        "import os, signal, torch\n"
        "from pathlib import Path\n"
        "from nmt.checkpoint import write_payload\n"
        "real_save = torch.save\n"
        "def dying_save(obj, f, *a, **k):\n"
        "    f.write(b'PK half a zip')\n"
        "    f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "torch.save = dying_save\n"
        f"write_payload({{'step': 2}}, Path({str(path)!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert read_payload(path)["step"] == 1
    assert len(list(tmp_path.glob(".last.pt.*.tmp"))) == 1  # the half-written file
    write_payload({"step": 3}, path)  # the next save clears it away
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"] and read_payload(path)["step"] == 3
