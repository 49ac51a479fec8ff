"""Model directories: a trained model as people share it, with no pickle in it.

    config.json          the model's config, languages and training progress (plain JSON)
    model.safetensors    the weights to translate with (float32, or bfloat16 when exported so)
    joint.model | src.model + tgt.model, output_pieces.txt    the SentencePiece tokenizer
    README.md            a model card in the Hugging Face Hub's format

`nmt-export` writes one from a run or checkpoint; every tool reads one wherever it takes a run
(`nmt.models`), from a local path or from the Hub.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from nmt.checkpoint import Checkpoint, CheckpointError, Progress
from nmt.config import Config
from nmt.data.tokenizer import Tokenizer, TokenizerError

FORMAT = "nmt-model-1"
CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def is_model_directory(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def write_model_directory(
    checkpoint: Checkpoint,
    directory: Path,
    precision: str = "fp32",
    card: str = "",
    graphs: Callable[[Path], dict] | None = None,
) -> None:
    """Write `checkpoint`'s translation weights, config and tokenizer (and the model card) as a
    model directory; written beside and renamed into place, so a failure leaves no half of one.
    `graphs(dir)` may write more files there (ONNX graphs) and return their description, which
    config.json keeps under "onnx"."""
    from safetensors.torch import save_file

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose fp32 or bf16")
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty; give a new directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        dtype = PRECISIONS[precision]
        weights = {
            name: (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()
            for name, tensor in checkpoint.model.items()
        }
        save_file(weights, str(partial / WEIGHTS), metadata={"format": "pt", "nmt": FORMAT})
        config = {
            "format": FORMAT,
            "src_lang": checkpoint.config.data.src_lang,
            "tgt_lang": checkpoint.config.data.tgt_lang,
            "precision": precision,
            "config": checkpoint.config.to_dict(),
            "progress": asdict(checkpoint.progress),
            "averaged_from": [Path(member).name for member in checkpoint.averaged_from],  # no local paths
        }
        if graphs is not None:
            config["onnx"] = graphs(partial)
        (partial / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        checkpoint.tokenizer.save(partial)
        if card:
            (partial / CARD).write_text(card, encoding="utf-8")
        _shareable(partial)
        if directory.exists():
            directory.rmdir()  # empty: checked above
        os.replace(partial, directory)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _shareable(directory: Path) -> None:
    """The modes a directory made here would have (a temporary one is private to its owner)."""
    umask = os.umask(0o022)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def read_model_directory(directory: Path) -> Checkpoint:
    """The model directory as a Checkpoint (its weights as float32, as trained)."""
    config = _read_config(directory)
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{directory} is a model directory: reading it needs `pip install nmt[export]`") from None
    try:
        weights = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{directory / WEIGHTS} is not readable safetensors: {error}") from None
    model = {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in weights.items()}
    try:
        tokenizer = Tokenizer.load(directory)
    except TokenizerError as error:
        raise CheckpointError(f"{directory}: {error}") from None
    progress = Progress.from_dict(config.get("progress") or {})
    try:
        return Checkpoint(Config.from_dict(config["config"]), tokenizer, model, progress)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{directory / CONFIG} does not describe an nmt model ({type(error).__name__}: {error})"
        ) from None


def _read_config(directory: Path) -> dict[str, Any]:
    try:
        config = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{directory / CONFIG} is not readable JSON: {error}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{directory} is not an nmt model directory ({CONFIG} has no format {FORMAT!r})")
    return config
