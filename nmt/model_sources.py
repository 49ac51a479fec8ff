"""Where a model comes from: a checkpoint file, a run directory (its best.pt, else last.pt), a
model directory (`nmt-export`), or a model on the Hugging Face Hub (`org/name[@revision]`; local
paths win). Every tool that takes a model resolves it here."""

from __future__ import annotations

import logging
from pathlib import Path

from nmt.checkpoint import Checkpoint, CheckpointError, resolve_checkpoint
from nmt.hub import hub_snapshot, looks_like_hub_id
from nmt.model.device import resolve_device
from nmt.model.seq2seq import Seq2Seq
from nmt.model_directory import CONFIG, is_model_directory, read_model_directory

log = logging.getLogger(__name__)


def resolve_model(source: str | Path) -> Path:
    """The checkpoint file or model directory that `source` names (fetched from the Hub when it
    is an `org/name` that is no local path)."""
    if isinstance(source, str) and looks_like_hub_id(source):
        snapshot = hub_snapshot(source)
        if not is_model_directory(snapshot):
            raise CheckpointError(f"{source} on the Hub is not an nmt model directory (no {CONFIG} and weights)")
        return snapshot
    path = Path(source).expanduser()
    if is_model_directory(path):
        return path
    return resolve_checkpoint(path)


def load_checkpoint(path: Path) -> Checkpoint:
    """A resolved model, file or directory, as a Checkpoint."""
    return read_model_directory(path) if path.is_dir() else Checkpoint.load(path)


def load_for_translation(source: str | Path, device: str = "auto") -> tuple[Seq2Seq, Checkpoint]:
    """The model `source` names, on the device in eval mode, and its checkpoint."""
    path = resolve_model(source)
    checkpoint = load_checkpoint(path)
    try:
        model = checkpoint.build_model(resolve_device(device))
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    log.info("loaded %s (step %d)", path, checkpoint.progress.step)
    return model, checkpoint
