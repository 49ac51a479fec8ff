"""Checkpoints: written atomically, loaded with `weights_only=True`, self-contained.

A checkpoint is a plain dict of tensors, numbers, strings and bytes:
`format`, `config` (the resolved Config as a dict), `tokenizer` (SentencePiece model bytes),
`model` (state dict: the weights to translate with) and, for resuming, `optimizer`, `scheduler`,
`rng`, `progress`, and with `train.average_decay` `trained_model` (the optimizer's weights, while
`model` holds their moving average).
"""

from __future__ import annotations

import errno
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "nmt-checkpoint-1"
LAST, BEST = "last.pt", "best.pt"


class CheckpointError(RuntimeError):
    """A checkpoint could not be found or read; the message says which and why."""


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write to a temporary file beside `path`, flush to disk, then rename over it: a crash at
    any moment leaves either the old checkpoint or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a write that was killed
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            torch.save({"format": FORMAT, **payload}, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_name, path)
        _fsync_directory(path.parent)  # the rename itself reaches the disk
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(
                f"no space left on the device writing {path}: the previous checkpoint is kept; free "
                "space and resume with train.resume"
            ) from None
        raise


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not every system opens directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" not in str(error):  # junk bytes, a truncated file
            # torch's message advises weights_only=False first: quote only what went wrong.
            reason = str(error).split("WeightsUnpickler error:")[-1].strip()
            raise CheckpointError(f"{path} is not a readable nmt checkpoint: {_first_line(reason)}") from None
        # torch's own message suggests weights_only=False: never for a file one does not trust.
        raise CheckpointError(
            f"{path} was refused: it holds Python objects other than tensors and plain data, and "
            "loading those could run code. nmt checkpoints hold none; this file is not one"
        ) from None
    except Exception as error:  # a damaged file can fail anywhere in unpickling (struct, zip, ...)
        raise CheckpointError(f"{path} is not a readable nmt checkpoint: {_first_line(error)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an nmt checkpoint (expected format {FORMAT!r})")
    return payload


def step_checkpoint_name(step: int) -> str:
    return f"step_{step:07d}.pt"


def step_checkpoints(directory: Path) -> list[Path]:
    """A run's kept validation checkpoints (train.keep_checkpoints), oldest first."""
    return sorted(directory.glob("step_*.pt"))


def average_checkpoints(paths: list[Path]) -> dict[str, Any]:
    """One checkpoint whose weights are the mean of these checkpoints' (the translation weights,
    `model`), with the config and tokenizer they share. Refused (CheckpointError) when they come
    from different models or vocabularies."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    first = load_checkpoint(paths[0])
    total = {name: weight.double() for name, weight in first["model"].items()}
    # The mean is as trained as its most trained member: report that one's step and epoch.
    progress = first.get("progress", {})
    for path in paths[1:]:
        payload = load_checkpoint(path)
        if payload.get("progress", {}).get("step", 0) > progress.get("step", 0):
            progress = payload["progress"]
        if payload["config"].get("model") != first["config"].get("model"):
            raise CheckpointError(f"{path} is of another model than {paths[0]}: only one model's checkpoints average")
        if payload["tokenizer"] != first["tokenizer"]:
            raise CheckpointError(f"{path} has another vocabulary than {paths[0]}: they cannot be averaged")
        if payload["model"].keys() != total.keys():
            raise CheckpointError(f"{path} holds other weights than {paths[0]}")
        for name, weight in payload["model"].items():
            total[name] += weight.double()
    model = {name: (weight / len(paths)).to(first["model"][name].dtype) for name, weight in total.items()}
    return {
        "config": first["config"],
        "tokenizer": first["tokenizer"],
        "model": model,
        "progress": progress,
        "averaged_from": [str(path) for path in paths],
    }


def _first_line(error: Exception | str) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def resolve_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """A checkpoint file as given, or a run directory's best checkpoint (else its last)."""
    path = Path(run_or_checkpoint).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / "checkpoints" / BEST, path / "checkpoints" / LAST, path / BEST, path / LAST):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path} holds no checkpoints/{BEST} or checkpoints/{LAST}; is it a run directory?")
    raise CheckpointError(f"{path} does not exist; give a run directory or a .pt checkpoint")
