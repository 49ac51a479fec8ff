"""Parallel corpora from any source, read one split at a time and in chunks.

A source is one of
- a Hugging Face hub id (`bentrevett/multi30k`, or `wmt14` with `data.config=de-en`), loaded with
  `datasets.load_dataset`;
- a local directory in the hub layout (`train.jsonl`, `val.jsonl`, `test.jsonl`, or parquet /
  csv), which `datasets.load_dataset(path)` reads exactly as it reads the hub id;
- a local directory of line-aligned text files `{prefix}.{lang}` (gzipped or not), e.g.
  `train.de` / `train.en`, `val.de.gz`, `test_2016_flickr.de.gz`.
A hub dataset (or local copy) keeps the languages either as columns of their own (`de`, `en`) or
in one `translation` column of `{"de": ..., "en": ...}` (WMT, IWSLT, OPUS).

`SplitSource.chunks` yields a split as (source lines, target lines) chunks, stripped, so that a
corpus of millions of pairs never sits in memory whole; `training_chunks` drops the pairs with an
empty side and keeps the first `train_limit`. Validation and test keep every line, so their scores
cover the whole set (`load_split`).
"""

from __future__ import annotations

import gzip
import itertools
import logging
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from nmt.config import DataConfig

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
CHUNK_PAIRS = 50_000
_HUB_LAYOUT_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
_PREFIX_KEYS = {"train": "data.train_prefix", "validation": "data.valid_prefix", "test": "data.test_prefix"}
_OVERRIDE_HINT = (
    "point to a local copy with data.source=PATH or the environment variable NMT_DATA=PATH "
    "(a directory in the hub layout, or with line-aligned text files such as train.de/train.en)"
)

Chunk = tuple[list[str], list[str]]


class DataError(RuntimeError):
    """A user-fixable problem with the corpus; the message says what and how to fix it."""


@dataclass(frozen=True)
class SplitSource:
    """One split of a parallel corpus: where it is and how to read it."""

    source: str  # a hub id, a hub-layout directory or a directory of text files
    src_lang: str
    tgt_lang: str
    split: str  # train | validation | test
    prefix: str  # the split's file prefix in a text directory (train, val, test)
    config: str | None = None  # the hub dataset's config name (wmt14: de-en)

    @property
    def path(self) -> Path:
        return Path(self.source).expanduser()

    @property
    def is_text_dir(self) -> bool:
        return self.path.is_dir() and _is_text_dir(self.path, self.src_lang)

    def text_files(self) -> tuple[Path, Path]:
        return (
            _find_text_file(self.path, self.prefix, self.src_lang, self.split),
            _find_text_file(self.path, self.prefix, self.tgt_lang, self.split),
        )

    def chunks(self, size: int = CHUNK_PAIRS) -> Iterator[Chunk]:
        """Every pair of the split, stripped, in chunks of `size` pairs."""
        check_source(self.source)
        if self.is_text_dir:
            chunks = _text_chunks(*self.text_files(), size)
        else:
            chunks = _hub_chunks(self, size)
        for src, tgt in chunks:
            yield [line.strip() for line in src], [line.strip() for line in tgt]

    def identity(self) -> dict[str, Any]:
        """What the split's content depends on, for a store's fingerprint: each file's path,
        size and modification time, or the hub dataset's own fingerprint."""
        check_source(self.source)
        if self.is_text_dir:
            return {"files": [_file_identity(path) for path in self.text_files()]}
        if self.path.is_dir():
            files = sorted(p for p in self.path.iterdir() if p.is_file())
            return {"files": [_file_identity(path) for path in files], "config": self.config}
        dataset = _load_hub_split(self, streaming=False)
        return {"hub": self.source, "config": self.config, "fingerprint": dataset._fingerprint}


def _file_identity(path: Path) -> list:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def split_source(config: DataConfig, split: str, source: str | None = None) -> SplitSource:
    """The validation or test split of `config`'s corpus (`source` overrides the corpus)."""
    prefixes = {"train": config.train_prefix, "validation": config.valid_prefix, "test": config.test_prefix}
    return SplitSource(source or config.source, config.src_lang, config.tgt_lang, split, prefixes[split], config.config)


def training_sources(config: DataConfig) -> dict[str, SplitSource]:
    """The training corpora by name: `data.corpora`, else the train split of `data.source`."""
    if not config.corpora:
        return {"train": split_source(config, "train")}
    return {
        name: SplitSource(
            corpus.source, config.src_lang, config.tgt_lang, "train", corpus.prefix, corpus.config or config.config
        )
        for name, corpus in config.corpora.items()
    }


def training_chunks(source: SplitSource, limit: int = 0, size: int = CHUNK_PAIRS) -> Iterator[Chunk]:
    """The training pairs of `source` with both sides non-empty, the first `limit` (0: all)."""
    kept = dropped = 0
    for src, tgt in source.chunks(size):
        pairs = [(s, t) for s, t in zip(src, tgt) if s and t]
        dropped += len(src) - len(pairs)
        if limit:
            pairs = pairs[: limit - kept]
        kept += len(pairs)
        if pairs:
            yield [s for s, _ in pairs], [t for _, t in pairs]
        if limit and kept >= limit:
            break
    if dropped:
        log.info("%s: dropped %d training pairs with an empty side", source.source, dropped)


@dataclass
class ParallelText:
    """A split in memory (validation and test): every line, stripped."""

    src: list[str]
    tgt: list[str]

    def __len__(self) -> int:
        return len(self.src)


def load_split(source: SplitSource) -> ParallelText:
    """A whole split in memory: for validation and test, or small corpora."""
    text = ParallelText([], [])
    for src, tgt in source.chunks():
        text.src += src
        text.tgt += tgt
    log.info("%s: %d sentence pairs (%s-%s)", source.split, len(text), source.src_lang, source.tgt_lang)
    return text


def load_corpus(
    source: str, src_lang: str, tgt_lang: str, prefixes: dict[str, str] | None = None, train_limit: int = 0
) -> dict[str, ParallelText]:
    """Every split of a small corpus in memory, training pairs cleaned (for scripts and tests;
    training itself reads through the prepared store, nmt/data/store.py)."""
    prefixes = prefixes or {"train": "train", "validation": "val", "test": "test"}
    splits = {split: SplitSource(source, src_lang, tgt_lang, split, prefixes[split]) for split in SPLITS}
    train = ParallelText([], [])
    for src, tgt in training_chunks(splits["train"], train_limit):
        train.src += src
        train.tgt += tgt
    return {"train": train, "validation": load_split(splits["validation"]), "test": load_split(splits["test"])}


# --- checks ---------------------------------------------------------------------------------------
def check_source(source: str) -> None:
    """Refuse (DataError) a data source that cannot be loaded before reading any of it: a local
    path that is missing or a file, or a hub id when the hub cannot be reached."""
    path = Path(source).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise DataError(f"data source {source!r} is a file; give the directory that holds the splits")
    if _looks_like_path(source):
        raise DataError(f"data source directory {source!r} does not exist; {_OVERRIDE_HINT}")
    check_hub_reachable(source)


def _looks_like_path(source: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else is meant as a local path."""
    return source.startswith((".", "~")) or not _HUB_ID.fullmatch(source)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def check_hub_reachable(hub_id: str) -> None:
    """Fail in seconds, not after a minute of retries, when the hub cannot be reached."""
    if hub_offline():
        return  # the user asked for the local cache
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or 443
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as error:
        raise DataError(
            f"cannot reach the Hugging Face hub ({host}: {error}) to load {hub_id!r}; "
            f"{_OVERRIDE_HINT}; or set HF_HUB_OFFLINE=1 to use a copy in the datasets cache"
        ) from None


# --- hub datasets and their local copies -----------------------------------------------------------
def _load_hub_split(source: SplitSource, streaming: bool):
    """The split as a `datasets` Dataset (IterableDataset when streaming)."""
    import datasets

    arguments: dict[str, Any] = {"split": source.split}
    if source.config:
        arguments["name"] = source.config
    if streaming:
        arguments["streaming"] = True
    try:
        return datasets.load_dataset(str(source.path) if source.path.is_dir() else source.source, **arguments)
    except (ConnectionError, OSError, FileNotFoundError, ValueError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        hint = "set data.config to one of its configs" if "config" in first_line.lower() else _OVERRIDE_HINT
        raise DataError(f"could not load the {source.split} split of {source.source!r}: {first_line}; {hint}") from None


def _hub_chunks(source: SplitSource, size: int) -> Iterator[Chunk]:
    # A local copy's validation or test split is read straight from its files (streaming), so
    # that scoring a test set never converts a large training file first.
    streaming = source.split != "train" and source.path.is_dir()
    dataset = _load_hub_split(source, streaming)
    columns = list(dataset.column_names or [])
    langs = (source.src_lang, source.tgt_lang)
    if all(lang in columns for lang in langs):
        dataset = dataset.select_columns(list(langs))
        for batch in dataset.iter(batch_size=size):
            yield batch[langs[0]], batch[langs[1]]
        return
    if "translation" not in columns:
        raise DataError(
            f"{source.source!r} split {source.split!r} has no column {_missing(langs, columns)!r} (it has {columns}); "
            "set data.src_lang / data.tgt_lang to languages it has"
        )
    dataset = dataset.select_columns(["translation"])
    for batch in dataset.iter(batch_size=size):
        pairs = batch["translation"]
        missing = next((lang for lang in langs if pairs and lang not in pairs[0]), None)
        if missing:
            raise DataError(
                f"{source.source!r} split {source.split!r}: its translation column has no {missing!r} "
                f"(it has {sorted(pairs[0])}); set data.src_lang / data.tgt_lang to languages it has"
            )
        yield [pair[langs[0]] or "" for pair in pairs], [pair[langs[1]] or "" for pair in pairs]


def _missing(langs: tuple[str, str], columns: list[str]) -> str:
    return next(lang for lang in langs if lang not in columns)


# --- line-aligned text files --------------------------------------------------------------------------
def _is_text_dir(path: Path, lang: str) -> bool:
    """No file of the hub layout, and text files of the source language."""
    names = [p.name for p in path.iterdir()]
    has_hub_files = any(Path(name).suffix in _HUB_LAYOUT_SUFFIXES for name in names)
    return not has_hub_files and any(name.endswith((f".{lang}", f".{lang}.gz")) for name in names)


def _text_candidates(path: Path, prefix: str, lang: str) -> list[Path]:
    """`{prefix}.{lang}[.gz]`, else any `{prefix}_*.{lang}[.gz]` (e.g. test_2016_flickr.de.gz)."""
    exact = [path / f"{prefix}.{lang}{gz}" for gz in ("", ".gz")]
    found = [p for p in exact if p.is_file()]
    if found:
        return found
    return sorted(p for p in path.glob(f"{prefix}_*.{lang}*") if p.name.endswith((f".{lang}", f".{lang}.gz")))


def _find_text_file(path: Path, prefix: str, lang: str, split: str) -> Path:
    candidates = _text_candidates(path, prefix, lang)
    if not candidates:
        raise DataError(
            f"no {split} file for {lang!r} in {path}: expected {prefix}.{lang} or {prefix}.{lang}.gz "
            f"(set {_PREFIX_KEYS[split]} if your files are named differently)"
        )
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise DataError(f"several {split} files for {lang!r} in {path} ({names}); keep one")
    return candidates[0]


def _open_binary(path: Path):
    try:
        return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    except OSError as error:
        raise DataError(f"cannot read {path}: {error}") from None


def _decode(lines: list[bytes], path: Path, first_number: int) -> list[str]:
    try:
        return [line.decode("utf-8").rstrip("\r\n") for line in lines]
    except UnicodeDecodeError:
        for number, line in enumerate(lines, start=first_number):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(
                    f"{path}:{number} is not valid UTF-8 ({error.reason} at byte {error.start}); "
                    "convert the file to UTF-8, e.g. with iconv"
                ) from None
        raise


def _text_chunks(src_file: Path, tgt_file: Path, size: int) -> Iterator[Chunk]:
    """Both files in step, `size` lines at a time; a difference in line counts is an error."""
    read = 0
    with _open_binary(src_file) as src_stream, _open_binary(tgt_file) as tgt_stream:
        try:
            while True:
                src_raw = list(itertools.islice(src_stream, size))
                tgt_raw = list(itertools.islice(tgt_stream, size))
                if len(src_raw) != len(tgt_raw):
                    src_total = read + len(src_raw) + sum(1 for _ in src_stream)
                    tgt_total = read + len(tgt_raw) + sum(1 for _ in tgt_stream)
                    raise DataError(
                        f"{src_file} has {src_total} lines but {tgt_file} has {tgt_total}; "
                        "the two sides of a parallel corpus must be line-aligned"
                    )
                if not src_raw:
                    return
                yield _decode(src_raw, src_file, read + 1), _decode(tgt_raw, tgt_file, read + 1)
                read += len(src_raw)
        except (OSError, EOFError) as error:
            raise DataError(f"cannot read {src_file} / {tgt_file}: {error}") from None


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file, gzipped or not, without line endings."""
    lines: list[str] = []
    with _open_binary(path) as stream:
        try:
            while chunk := list(itertools.islice(stream, CHUNK_PAIRS)):
                lines += _decode(chunk, path, len(lines) + 1)
        except (OSError, EOFError) as error:
            raise DataError(f"cannot read {path}: {error}") from None
    return lines
