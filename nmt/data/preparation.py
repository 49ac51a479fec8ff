"""Building a prepared store: the training corpora read in chunks, a tokenizer trained on a sample
of them (or reused), every pair encoded on every core, and the results written as ragged arrays.

Two passes over the training text: the first draws the tokenizer's sample (reservoir sampling,
fixed seed: a corpus that fits is taken whole and in order), the second encodes. Workers encode
chunks side by side (SentencePiece's batched `encode` in a process pool), while this process
reads ahead and writes in order, so that memory holds a few chunks, never the corpus.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import random
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nmt.config import DataConfig
from nmt.data.arrays import RaggedWriter, ids_dtype
from nmt.data.corpus import DataError, SplitSource, load_split, split_source, training_chunks, training_sources
from nmt.data.special import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from nmt.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SAMPLE_SEED = 0  # the tokenizer's training sample: the same in every run on the same data
LOG_EVERY_PAIRS = 1_000_000


def build_store(data: DataConfig, directory: Path, tokenizer: Tokenizer | None, workers: int) -> dict:
    """Prepare `data` into the empty directory `directory` -> the store's description (meta)."""
    started = time.monotonic()
    sources = training_sources(data)
    trained = tokenizer is None and data.tokenizer.model is None
    if tokenizer is None:
        tokenizer = (
            _train_tokenizer(data, sources, workers) if trained else Tokenizer.from_path(Path(data.tokenizer.model))
        )
    restrict = trained and data.tokenizer.restrict_output
    dtype = ids_dtype(max(tokenizer.src_vocab_size, tokenizer.tgt.get_piece_size()))
    encoder = _Encoder(tokenizer, dtype, workers)
    try:
        train = _encode_training(sources, data, encoder, directory, restrict)
    finally:
        encoder.close()
    if restrict:
        tokenizer = Tokenizer(tokenizer.src_model_bytes, tokenizer.tgt_model_bytes, train.pop("output_pieces"))
        log.info(
            "output vocabulary: %d of %d target pieces occur", tokenizer.tgt_vocab_size, tokenizer.tgt.get_piece_size()
        )
    if tokenizer.output_pieces is not None:
        _map_to_output(directory / "train.tgt_ids.values", dtype, tokenizer)
    validation = _write_validation(split_source(data, "validation"), tokenizer, directory, dtype)
    tokenizer.save(directory / "tokenizer")
    meta = {
        "tokenizer": tokenizer.fingerprint,
        "dtype": dtype.name,
        "train": train,
        "validation": {"pairs": validation},
        "seconds": round(time.monotonic() - started, 1),
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# --- the tokenizer ----------------------------------------------------------------------------------
def sample_pairs(chunks: Iterator[tuple[list[str], list[str]]], size: int, seed: int) -> tuple[list[str], list[str]]:
    """A uniform sample of `size` pairs (0: all) by reservoir sampling: fewer pairs than `size`
    are all kept, in their order."""
    rng = random.Random(seed)
    src_sample: list[str] = []
    tgt_sample: list[str] = []
    seen = 0
    for src, tgt in chunks:
        for s, t in zip(src, tgt):
            seen += 1
            if not size or len(src_sample) < size:
                src_sample.append(s)
                tgt_sample.append(t)
                continue
            slot = rng.randrange(seen)
            if slot < size:
                src_sample[slot], tgt_sample[slot] = s, t
    return src_sample, tgt_sample


def _train_tokenizer(data: DataConfig, sources: dict[str, SplitSource], workers: int) -> Tokenizer:
    options = data.tokenizer
    pairs = (options.max_sentences // 2 or 1) if options.joint and options.max_sentences else options.max_sentences
    chunks = (chunk for source in sources.values() for chunk in training_chunks(source, data.train_limit))
    src_sample, tgt_sample = sample_pairs(chunks, pairs, SAMPLE_SEED)
    if not src_sample:
        raise DataError(
            f"the training split of {data.source} holds no sentence pair with both sides non-empty; "
            "check the files (or data.train_prefix)"
        )
    log.info("training the tokenizer on %d sentence pairs", len(src_sample))
    return Tokenizer.train(
        src_sample,
        tgt_sample,
        vocab_size=options.vocab_size,
        kind=options.kind,
        joint=options.joint,
        character_coverage=options.character_coverage,
        max_sentences=0,  # the sample is what it trains on
        num_threads=workers,
    )


# --- encoding ------------------------------------------------------------------------------------------
_WORKER: dict = {}


def _start_worker(src_model: bytes, tgt_model: bytes | None, dtype: str) -> None:
    tokenizer = Tokenizer(src_model, tgt_model)
    _WORKER.update(src=tokenizer.src, tgt=tokenizer.tgt, dtype=np.dtype(dtype))


def _encode_side(processor, texts: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """-> (the ids of every text one after the other, each text's length)."""
    ids = processor.encode(texts)
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    return np.fromiter((i for row in ids for i in row), dtype, int(lengths.sum())), lengths


def _encode_chunk(src: list[str], tgt: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """SentencePiece ids of both sides (target ids are pieces: the output mapping comes last)."""
    return (*_encode_side(_WORKER["src"], src, _WORKER["dtype"]), *_encode_side(_WORKER["tgt"], tgt, _WORKER["dtype"]))


class _Encoder:
    """Encodes chunks in `workers` processes, results in the order the chunks came. The first
    chunk is encoded here: a corpus of one chunk starts no process."""

    def __init__(self, tokenizer: Tokenizer, dtype: np.dtype, workers: int) -> None:
        self.arguments = (tokenizer.src_model_bytes, tokenizer.tgt_model_bytes, dtype.name)
        self.dtype = dtype
        self.workers = max(1, workers)
        self.pool = None
        _start_worker(*self.arguments)

    def map(self, chunks: Iterator[tuple[list[str], list[str]]]) -> Iterator[tuple[tuple, tuple]]:
        """-> (chunk, its ids) in order; at most two chunks per worker in flight."""
        chunks = iter(chunks)
        first = next(chunks, None)
        if first is None:
            return
        yield first, _encode_chunk(*first)
        if self.workers > 1 and self.pool is None:
            context = multiprocessing.get_context("fork")
            self.pool = context.Pool(self.workers, initializer=_start_worker, initargs=self.arguments)
        if self.pool is None:
            for chunk in chunks:
                yield chunk, _encode_chunk(*chunk)
            return
        pending: deque = deque()
        for chunk in chunks:
            pending.append((chunk, self.pool.apply_async(_encode_chunk, chunk)))
            if len(pending) >= 2 * self.workers:
                chunk, result = pending.popleft()
                yield chunk, result.get()
        while pending:
            chunk, result = pending.popleft()
            yield chunk, result.get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _rows(values: np.ndarray, lengths: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The values of the kept rows."""
    return values[np.repeat(keep, lengths)]


def _encode_training(
    sources: dict[str, SplitSource], data: DataConfig, encoder: _Encoder, directory: Path, restrict: bool
) -> dict:
    """Every training pair of every corpus, in order; pairs longer than data.max_len pieces on
    either side are dropped. -> counts (and, if `restrict`, the target pieces that occur)."""
    writers = {name: RaggedWriter(directory / f"train.{name}", encoder.dtype) for name in ("src_ids", "tgt_ids")}
    writers |= {name: RaggedWriter(directory / f"train.{name}", np.uint8) for name in ("src_text", "tgt_text")}
    corpora, piece_counts, too_long, read = [], None, 0, 0
    started = time.monotonic()
    for name, source in sources.items():
        kept = 0
        for (src, tgt), (src_ids, src_lengths, tgt_ids, tgt_lengths) in encoder.map(
            training_chunks(source, data.train_limit)
        ):
            if restrict:
                piece_counts = _add_counts(piece_counts, np.bincount(tgt_ids))
            keep = (src_lengths <= data.max_len) & (tgt_lengths <= data.max_len)
            writers["src_ids"].append(_rows(src_ids, src_lengths, keep), src_lengths[keep])
            writers["tgt_ids"].append(_rows(tgt_ids, tgt_lengths, keep), tgt_lengths[keep])
            writers["src_text"].append_texts([text for text, k in zip(src, keep) if k])
            writers["tgt_text"].append_texts([text for text, k in zip(tgt, keep) if k])
            kept += int(keep.sum())
            too_long += len(keep) - int(keep.sum())
            if (read + len(keep)) // LOG_EVERY_PAIRS > read // LOG_EVERY_PAIRS:
                rate = (read + len(keep)) / (time.monotonic() - started)
                log.info("encoded %s training pairs (%.0f pairs/s)", f"{read + len(keep):,}", rate)
            read += len(keep)
        corpora.append({"name": name, "pairs": kept})
        log.info("%s: %s training pairs", name, f"{kept:,}")
    pairs = [writer.close() for writer in writers.values()][0]  # noqa: RUF015 (every writer closes)
    if too_long:
        log.info("train: dropped %d pairs longer than %d pieces", too_long, data.max_len)
    if pairs == 0:
        if read:
            raise DataError(f"no training pair is at most {data.max_len} pieces long; raise data.max_len")
        raise DataError(
            f"the training split of {data.source} holds no sentence pair with both sides non-empty; "
            "check the files (or data.train_prefix)"
        )
    counts = {"pairs": pairs, "corpora": corpora, "dropped_too_long": too_long}
    if restrict:
        assert piece_counts is not None
        used = {PAD_ID, UNK_ID, BOS_ID, EOS_ID, *np.flatnonzero(piece_counts).tolist()}
        counts["output_pieces"] = sorted(used)
    return counts


def _add_counts(total: np.ndarray | None, counts: np.ndarray) -> np.ndarray:
    if total is None:
        return counts
    if len(counts) > len(total):
        total, counts = counts, total
    total[: len(counts)] += counts
    return total


def _map_to_output(path: Path, dtype: np.dtype, tokenizer: Tokenizer, chunk: int = 1 << 24) -> None:
    """Target piece ids -> the tokenizer's output ids, in place (pieces outside it -> unk)."""
    lookup = np.full(tokenizer.tgt.get_piece_size(), UNK_ID, dtype)
    assert tokenizer.output_pieces is not None
    lookup[tokenizer.output_pieces] = np.arange(len(tokenizer.output_pieces), dtype=dtype)
    if path.stat().st_size == 0:
        return
    ids = np.memmap(path, dtype=dtype, mode="r+")
    for start in range(0, len(ids), chunk):
        ids[start : start + chunk] = lookup[ids[start : start + chunk]]
    ids.flush()
    del ids


def _write_validation(source: SplitSource, tokenizer: Tokenizer, directory: Path, dtype: np.dtype) -> int:
    """Every validation pair, texts and ids (no filter: its scores cover the whole split)."""
    text = load_split(source)
    if not any(text.src) or not any(text.tgt):
        raise DataError(
            f"the validation split of {source.source} holds no sentence pair with both sides non-empty; "
            "check the files (or data.valid_prefix)"
        )
    for side, texts, ids in (
        ("src", text.src, tokenizer.encode_src(text.src)),
        ("tgt", text.tgt, tokenizer.encode_tgt(text.tgt)),
    ):
        writer = RaggedWriter(directory / f"validation.{side}_ids", dtype)
        writer.append(np.fromiter((i for row in ids for i in row), dtype), np.fromiter(map(len, ids), np.int64))
        writer.close()
        text_writer = RaggedWriter(directory / f"validation.{side}_text", np.uint8)
        text_writer.append_texts(texts)
        text_writer.close()
    return len(text)
