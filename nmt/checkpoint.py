"""Checkpoints: what they hold, how they are written (atomically) and read (`weights_only=True`).

`Checkpoint` is the contract. On disk it is a dict of tensors, numbers, strings and bytes under
`torch.save`: `format`, `config` (the resolved Config as a dict), `tokenizer` (the SentencePiece
models' bytes), `model` (the weights to translate with), `progress`, and, in `last.pt` only, what
resuming needs besides: `optimizer`, `scheduler`, `rng` and, with `train.average_decay`,
`trained_model` (the optimizer's weights, while `model` holds their moving average). An averaged
checkpoint names its members in `averaged_from`. Only this module builds or reads that dict.
"""

from __future__ import annotations

import errno
import os
import pickle
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from nmt.config import Config
from nmt.data.tokenizer import Tokenizer
from nmt.model.seq2seq import Seq2Seq, build_model

FORMAT = "nmt-checkpoint-1"
LAST, BEST = "last.pt", "best.pt"
StateDict = dict[str, torch.Tensor]


class CheckpointError(RuntimeError):
    """A checkpoint could not be found or read; the message says which and why."""


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so a resumed run picks up exactly here."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already trained on
    best_bleu: float = -1.0
    validations_since_best: int = 0  # for early stopping (train.patience)
    train_seconds: float = 0.0  # wall time spent training, summed over resumes
    tgt_tokens: int = 0
    nonfinite_in_a_row: int = 0  # updates skipped for a NaN or inf gradient, since the last good one
    nonfinite_total: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Progress:
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in values.items() if name in known})


@dataclass
class TrainingState:
    """What a resumed run needs beyond the weights it translates with (torch's state dicts)."""

    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    rng: dict[str, Any]  # "torch", and "cuda" where there is one
    trained_model: StateDict | None = None  # with a weight average: where the optimizer goes on from


@dataclass
class Checkpoint:
    config: Config
    tokenizer: Tokenizer
    model: StateDict  # the weights to translate with (the moving average when averaging)
    progress: Progress = field(default_factory=Progress)
    training: TrainingState | None = None  # last.pt's; None in best.pt and the kept ones
    averaged_from: list[str] = field(default_factory=list)

    def save(self, path: str | Path) -> None:
        write_payload(self._payload(), Path(path))

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        return cls._from_payload(read_payload(Path(path)), Path(path))

    def build_model(self, device: str | torch.device = "cpu") -> Seq2Seq:
        """The model its config describes, holding its weights, in eval mode on `device`."""
        tokenizer = self.tokenizer
        model = build_model(self.config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, init_weights=False)
        try:
            # strict: older names are renamed by the model's own load hooks, anything else refused
            model.load_state_dict(self.model)
        except RuntimeError as error:
            # torch lists every mismatch on lines of their own: the first says what is wrong
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            detail = lines[1] if len(lines) > 1 else lines[0]
            raise CheckpointError(f"weights do not fit the model its config describes: {detail}") from None
        return model.to(device).eval()

    def _payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "config": self.config.to_dict(),
            "tokenizer": self.tokenizer.state(),
            "model": self.model,
            "progress": asdict(self.progress),
        }
        training = self.training
        if training is not None:  # torch's state dicts as they are: asdict would deep-copy every tensor
            payload |= {"optimizer": training.optimizer, "scheduler": training.scheduler, "rng": training.rng}
            if training.trained_model is not None:
                payload["trained_model"] = training.trained_model
        if self.averaged_from:
            payload["averaged_from"] = list(self.averaged_from)
        return payload

    @classmethod
    def _from_payload(cls, payload: dict[str, Any], path: Path) -> Checkpoint:
        try:
            training = None
            if "optimizer" in payload:
                training = TrainingState(
                    payload["optimizer"], payload.get("scheduler"), payload["rng"], payload.get("trained_model")
                )
            return cls(
                config=Config.from_dict(payload["config"]),
                tokenizer=Tokenizer.from_state(payload["tokenizer"]),
                model=payload["model"],
                progress=Progress.from_dict(payload.get("progress", {})),
                training=training,
                averaged_from=list(payload.get("averaged_from", [])),
            )
        except (KeyError, TypeError, ValueError, AssertionError) as error:
            raise CheckpointError(
                f"{path} is not a complete nmt checkpoint ({type(error).__name__}: {error})"
            ) from None


def load_for_resume(run_dir: str | Path) -> Checkpoint:
    """A run's last.pt, with the optimizer, scheduler and RNG state a resumed run goes on from."""
    path = Path(run_dir).expanduser() / "checkpoints" / LAST
    checkpoint = Checkpoint.load(path)
    if checkpoint.training is None:
        raise CheckpointError(f"{path} holds no optimizer state to resume from (a best.pt or averaged checkpoint?)")
    return checkpoint


# --- the file -------------------------------------------------------------------------------------
def write_payload(payload: dict[str, Any], path: Path) -> None:
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


def read_payload(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict `write_payload` wrote; every way a file can fail to be one is a CheckpointError
    in nmt's words (torch's own messages advise turning `weights_only` off, the advice nmt exists to withhold)."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    damaged = f"{path} is not a readable nmt checkpoint: the file is truncated or damaged, or of another kind"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive, its directory at the end
        raise CheckpointError(damaged)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        refused = _unsafe_globals(path)
        if not refused:
            raise CheckpointError(damaged) from None
        raise CheckpointError(
            f"{path} was refused: it names Python objects ({', '.join(refused[:3])}) other than tensors and "
            "plain data, and loading those could run code. nmt checkpoints hold none; this file is not one"
        ) from None
    except Exception:  # a damaged archive can fail anywhere in reading (zip, struct, storage sizes)
        raise CheckpointError(damaged) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an nmt checkpoint (expected format {FORMAT!r})")
    return payload


def _unsafe_globals(path: Path) -> list[str]:
    """The globals the file's pickle names beyond what `weights_only` allows; none if unreadable."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        return []


# --- runs -----------------------------------------------------------------------------------------
def step_checkpoint_name(step: int) -> str:
    return f"step_{step:07d}.pt"


def step_checkpoints(directory: Path) -> list[Path]:
    """A run's kept validation checkpoints (train.keep_checkpoints), oldest first."""
    return sorted(directory.glob("step_*.pt"))


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


def average_checkpoints(paths: list[Path]) -> Checkpoint:
    """One checkpoint whose weights are the mean of these checkpoints' (the translation weights),
    with the config and tokenizer they share. Refused (CheckpointError) when they come from
    different models or vocabularies."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    first = Checkpoint.load(paths[0])
    total = {name: weight.double() for name, weight in first.model.items()}
    # The mean is as trained as its most trained member: report that one's step and epoch.
    progress = first.progress
    for path in paths[1:]:
        other = Checkpoint.load(path)
        if other.progress.step > progress.step:
            progress = other.progress
        if other.config.model != first.config.model:
            raise CheckpointError(f"{path} is of another model than {paths[0]}: only one model's checkpoints average")
        if other.tokenizer.state() != first.tokenizer.state():
            raise CheckpointError(f"{path} has another vocabulary than {paths[0]}: they cannot be averaged")
        if other.model.keys() != total.keys():
            raise CheckpointError(f"{path} holds other weights than {paths[0]}")
        for name, weight in other.model.items():
            total[name] += weight.double()
    model = {name: (weight / len(paths)).to(first.model[name].dtype) for name, weight in total.items()}
    return Checkpoint(first.config, first.tokenizer, model, progress, averaged_from=[str(path) for path in paths])
