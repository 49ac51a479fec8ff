"""What a model is evaluated on: a split of the corpus it was trained on, or a sacrebleu test set."""

from __future__ import annotations

from pathlib import Path

from nmt.data.corpus import load_split, read_lines, split_source
from nmt.model_sources import load_checkpoint


def corpus_split(checkpoint: Path, split: str, source: str | None = None) -> tuple[list[str], list[str]]:
    """Sources and references of a split of the corpus the checkpoint was trained on (or of
    `source`): only that split is read."""
    data = load_checkpoint(checkpoint).config.data
    text = load_split(split_source(data, split, source))
    return text.src, text.tgt


def language_pair(checkpoint: Path) -> str:
    """The checkpoint's languages as sacrebleu names them, e.g. `de-en`."""
    data = load_checkpoint(checkpoint).config.data
    return f"{data.src_lang}-{data.tgt_lang}"


def sacrebleu_testset(name: str, langpair: str) -> tuple[list[str], list[str]]:
    """A sacrebleu test set (downloaded by sacrebleu into its cache on first use)."""
    from sacrebleu.utils import get_reference_files, get_source_file

    try:
        source, reference = get_source_file(name, langpair), get_reference_files(name, langpair)[0]
    except Exception as error:  # sacrebleu raises plain exceptions or exits for unknown sets
        raise ValueError(f"sacrebleu test set {name!r} ({langpair}) is not available: {error}") from None
    return read_lines(Path(source)), read_lines(Path(reference))
