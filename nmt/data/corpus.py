"""Parallel corpora from any source into `src`/`tgt` string columns.

A source is one of
- a Hugging Face hub id (`bentrevett/multi30k`), loaded with `datasets.load_dataset`;
- a local directory in the hub layout (`train.jsonl`, `val.jsonl`, `test.jsonl` with one column
  per language), which `datasets.load_dataset(path)` reads exactly as it reads the hub id;
- a local directory of line-aligned text files `{prefix}.{lang}` (gzipped or not), e.g.
  `train.de` / `train.en`, `val.de.gz`, `test_2016_flickr.de.gz`.

Training pairs are stripped, empty pairs dropped and long pairs filtered (`filter_by_length`,
after tokenization); validation and test keep every line, so their scores cover the whole set.
`prepare_data` does all of it for a DataConfig: load, train the tokenizer, encode, filter.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

import datasets

from nmt.config import DataConfig
from nmt.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_HUB_LAYOUT_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
_PREFIX_KEYS = {"train": "data.train_prefix", "validation": "data.valid_prefix", "test": "data.test_prefix"}
_OVERRIDE_HINT = (
    "point to a local copy with data.source=PATH or the environment variable NMT_DATA=PATH "
    "(a directory in the hub layout, or with line-aligned text files such as train.de/train.en)"
)


class DataError(RuntimeError):
    """A user-fixable problem with the corpus; the message says what and how to fix it."""


def load_corpus(
    source: str,
    src_lang: str,
    tgt_lang: str,
    prefixes: dict[str, str] | None = None,
    train_limit: int = 0,
) -> datasets.DatasetDict:
    """Load train/validation/test as a DatasetDict with string columns `src` and `tgt`.

    `prefixes` maps split names to text-file prefixes (text sources only), e.g.
    `{"train": "train", "validation": "val", "test": "test"}`.
    """
    prefixes = prefixes or {"train": "train", "validation": "val", "test": "test"}
    check_source(source)
    path = Path(source).expanduser()
    if not path.is_dir():  # a hub id: check_source refused every other non-directory
        corpus = _load_hub_layout(source, src_lang, tgt_lang)
    elif _is_text_dir(path, prefixes["train"], src_lang):
        corpus = _load_text_dir(path, src_lang, tgt_lang, prefixes)
    else:
        corpus = _load_hub_layout(str(path), src_lang, tgt_lang)
    corpus = corpus.map(_strip_pair, desc="strip")
    corpus["train"] = clean_train(corpus["train"], train_limit)
    for split in SPLITS:
        log.info("%s: %d sentence pairs (%s-%s)", split, len(corpus[split]), src_lang, tgt_lang)
    return corpus


def clean_train(train: datasets.Dataset, limit: int = 0) -> datasets.Dataset:
    """Drop training pairs with an empty side, then keep the first `limit` (0: all)."""
    before = len(train)
    train = train.filter(lambda pair: bool(pair["src"]) and bool(pair["tgt"]), desc="drop empty")
    if before != len(train):
        log.info("train: dropped %d pairs with an empty side", before - len(train))
    if limit and limit < len(train):
        train = train.select(range(limit))
    return train


def filter_by_length(train: datasets.Dataset, max_len: int) -> datasets.Dataset:
    """Drop training pairs whose `src_ids` or `tgt_ids` are longer than `max_len` pieces."""
    before = len(train)
    train = train.filter(
        lambda pair: len(pair["src_ids"]) <= max_len and len(pair["tgt_ids"]) <= max_len,
        desc="length filter",
    )
    if before != len(train):
        log.info("train: dropped %d pairs longer than %d pieces", before - len(train), max_len)
    if len(train) == 0:
        raise DataError(f"no training pair is at most {max_len} pieces long; raise data.max_len")
    return train


def _strip_pair(pair: dict) -> dict:
    return {"src": pair["src"].strip(), "tgt": pair["tgt"].strip()}


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


def check_hub_reachable(hub_id: str) -> None:
    """Fail in seconds, not after a minute of retries, when the hub cannot be reached."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
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


def _load_hub_layout(source: str, src_lang: str, tgt_lang: str) -> datasets.DatasetDict:
    try:
        raw = datasets.load_dataset(source)
    except (ConnectionError, OSError, FileNotFoundError, ValueError) as error:
        raise DataError(f"could not load {source!r}: {error}; {_OVERRIDE_HINT}") from None
    missing_splits = [split for split in SPLITS if split not in raw]
    if missing_splits:
        raise DataError(
            f"{source!r} has splits {sorted(raw)}, but train, validation and test are needed "
            f"(missing: {', '.join(missing_splits)}); name the files train.*, val.*, test.*"
        )
    corpus = {}
    for split in SPLITS:
        columns = raw[split].column_names
        for lang in (src_lang, tgt_lang):
            if lang not in columns:
                raise DataError(
                    f"{source!r} split {split!r} has no column {lang!r} (it has {columns}); "
                    "set data.src_lang / data.tgt_lang to languages it has"
                )
        pairs = raw[split].select_columns([src_lang, tgt_lang])
        corpus[split] = pairs.rename_columns({src_lang: "src", tgt_lang: "tgt"})
    return datasets.DatasetDict(corpus)


def _is_text_dir(path: Path, train_prefix: str, lang: str) -> bool:
    has_hub_files = any(p.suffix in _HUB_LAYOUT_SUFFIXES for p in path.iterdir())
    return not has_hub_files and bool(_text_candidates(path, train_prefix, lang))


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


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file, gzipped or not, without line endings."""
    opener = gzip.open if path.name.endswith(".gz") else open
    lines = []
    try:
        with opener(path, "rb") as stream:
            for number, raw_line in enumerate(stream, start=1):
                try:
                    lines.append(raw_line.decode("utf-8").rstrip("\r\n"))
                except UnicodeDecodeError as error:
                    raise DataError(
                        f"{path}:{number} is not valid UTF-8 ({error.reason} at byte {error.start}); "
                        "convert the file to UTF-8, e.g. with iconv"
                    ) from None
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read {path}: {error}") from None
    return lines


def _load_text_dir(path: Path, src_lang: str, tgt_lang: str, prefixes: dict[str, str]) -> datasets.DatasetDict:
    corpus = {}
    for split in SPLITS:
        src_file = _find_text_file(path, prefixes[split], src_lang, split)
        tgt_file = _find_text_file(path, prefixes[split], tgt_lang, split)
        src_lines, tgt_lines = read_lines(src_file), read_lines(tgt_file)
        if len(src_lines) != len(tgt_lines):
            raise DataError(
                f"{src_file} has {len(src_lines)} lines but {tgt_file} has {len(tgt_lines)}; "
                "the two sides of a parallel corpus must be line-aligned"
            )
        corpus[split] = datasets.Dataset.from_dict({"src": src_lines, "tgt": tgt_lines})
    return datasets.DatasetDict(corpus)


def prepare_data(
    config: DataConfig, tokenizer: Tokenizer | None = None, num_threads: int = 2
) -> tuple[Tokenizer, datasets.DatasetDict]:
    """Load the corpus, train a tokenizer on its training split unless one is given, and add
    `src_ids`/`tgt_ids` columns; training pairs are then filtered by length."""
    corpus = load_corpus(
        config.source,
        config.src_lang,
        config.tgt_lang,
        prefixes={"train": config.train_prefix, "validation": config.valid_prefix, "test": config.test_prefix},
        train_limit=config.train_limit,
    )
    for split in ("train", "validation"):
        if len(corpus[split]) == 0:
            raise DataError(
                f"the {split} split of {config.source} holds no sentence pair with both sides non-empty; "
                "check the files (or data.train_prefix / data.valid_prefix)"
            )
    if tokenizer is None:
        options = config.tokenizer
        tokenizer = Tokenizer.train(
            corpus["train"]["src"],
            corpus["train"]["tgt"],
            vocab_size=options.vocab_size,
            kind=options.kind,
            joint=options.joint,
            character_coverage=options.character_coverage,
            max_sentences=options.max_sentences,
            num_threads=num_threads,
        )
        if options.restrict_output:
            tokenizer = tokenizer.restrict_output(corpus["train"]["tgt"])

    def encode(batch: dict) -> dict:
        return {"src_ids": tokenizer.encode_src(batch["src"]), "tgt_ids": tokenizer.encode_tgt(batch["tgt"])}

    encoded = datasets.DatasetDict(
        {
            split: dataset.map(
                encode,
                batched=True,
                desc=f"encode {split}",
                # Named by the vocabulary, so datasets' cache never mixes two tokenizers.
                new_fingerprint=f"{dataset._fingerprint}-{tokenizer.fingerprint}",
            )
            for split, dataset in corpus.items()
        }
    )
    encoded["train"] = filter_by_length(encoded["train"], config.max_len)
    return tokenizer, encoded
