"""Ragged arrays: many rows of different lengths as one flat array and the offsets where each row
starts (the layout of fairseq's indexed datasets and Arrow's list arrays). A store keeps its token
ids and texts so: a corpus of millions of sentences costs training no Python object per sentence.

On disk (`RaggedFile`) the rows are read with `pread` from the page cache, which every process on
the machine shares: a row costs its bytes, and a training process holds only its batch. (Mapping
the files would share the same pages, but every page a process touches, and the neighbours the
kernel maps with it, then counts in its resident memory and stays there: random batches over a
large store would grow each rank toward the store's size.)
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OFFSET_DTYPE = np.dtype(np.int64)
LENGTHS_CHUNK = 1 << 20  # offsets read at a time when computing every row's length


def ids_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every id of a vocabulary."""
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)


def lengths_dtype(longest: int) -> np.dtype:
    """uint16 where a length + 1 (its eos) still fits, else int32."""
    return np.dtype(np.uint16 if longest < np.iinfo(np.uint16).max else np.int32)


class RaggedArray:
    """Rows in memory: row i is values[offsets[i]:offsets[i + 1]]."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray) -> None:
        self.values = values
        self.offsets = offsets  # (rows + 1,) int64, from 0 to len(values)

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int]], dtype: np.dtype | str = np.int64) -> RaggedArray:
        """Rows in memory (e.g. one epoch's sampled segmentations)."""
        lengths = np.fromiter(map(len, rows), OFFSET_DTYPE, len(rows))
        values = np.fromiter(itertools.chain.from_iterable(rows), np.dtype(dtype), int(lengths.sum()))
        return cls(values, np.concatenate([[0], np.cumsum(lengths)]).astype(OFFSET_DTYPE))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, row: int) -> np.ndarray:
        return self.values[self.offsets[row] : self.offsets[row + 1]]

    def lengths(self) -> np.ndarray:
        """(rows,) every row's length, in the smallest dtype that holds the longest + 1."""
        lengths = np.diff(self.offsets)
        return lengths.astype(lengths_dtype(int(lengths.max(initial=0))))

    def rows(self) -> list[list[int]]:
        return [self[row].tolist() for row in range(len(self))]

    def texts(self) -> list[str]:
        """The rows of an array of UTF-8 bytes, as text."""
        return [bytes(self[row]).decode("utf-8") for row in range(len(self))]


class RaggedFile(RaggedArray):
    """The rows `RaggedWriter(path)` wrote, read from its files as they are asked for."""

    def __init__(self, path: Path, dtype: np.dtype | str) -> None:
        self.dtype = np.dtype(dtype)
        self._path = path
        self._values = os.open(_values_path(path), os.O_RDONLY)
        self._offsets = os.open(_offsets_path(path), os.O_RDONLY)
        self.rows_count = os.fstat(self._offsets).st_size // OFFSET_DTYPE.itemsize - 1

    def __del__(self) -> None:
        for descriptor in (getattr(self, "_values", None), getattr(self, "_offsets", None)):
            if descriptor is not None:
                os.close(descriptor)

    def __len__(self) -> int:
        return self.rows_count

    def __getitem__(self, row: int) -> np.ndarray:
        start, stop = np.frombuffer(os.pread(self._offsets, 16, int(row) * 8), OFFSET_DTYPE).tolist()
        size = self.dtype.itemsize
        return np.frombuffer(os.pread(self._values, (stop - start) * size, start * size), self.dtype)

    def load(self) -> RaggedArray:
        """Every row, in memory."""
        values = np.fromfile(_values_path(self._path), self.dtype)
        return RaggedArray(values, np.fromfile(_offsets_path(self._path), OFFSET_DTYPE))

    def lengths(self) -> np.ndarray:
        parts, previous = [], None
        for first in range(0, self.rows_count + 1, LENGTHS_CHUNK):
            count = min(LENGTHS_CHUNK, self.rows_count + 1 - first)
            offsets = np.frombuffer(os.pread(self._offsets, count * 8, first * 8), OFFSET_DTYPE)
            lengths = np.diff(offsets) if previous is None else np.diff(offsets, prepend=previous)
            parts.append(lengths.astype(np.int32))  # no sentence is 2^31 pieces long
            previous = offsets[-1]
        lengths = np.concatenate(parts) if parts else np.empty(0, np.int32)
        return lengths.astype(lengths_dtype(int(lengths.max(initial=0))), copy=False)


def _values_path(path: Path) -> Path:
    return path.with_name(path.name + ".values")


def _offsets_path(path: Path) -> Path:
    return path.with_name(path.name + ".offsets")


class RaggedWriter:
    """Appends rows to `path.values`; `close` writes `path.offsets`."""

    def __init__(self, path: Path, dtype: np.dtype | str) -> None:
        self.path, self.dtype = path, np.dtype(dtype)
        self._values = open(_values_path(path), "wb")  # noqa: SIM115 (held until close)
        self._lengths: list[np.ndarray] = []

    def append(self, values: np.ndarray, lengths: np.ndarray) -> None:
        """Rows given as their values one after the other and each row's length."""
        self._values.write(np.ascontiguousarray(values, self.dtype).tobytes())
        self._lengths.append(np.asarray(lengths, OFFSET_DTYPE))

    def append_texts(self, texts: Sequence[str]) -> None:
        encoded = [text.encode("utf-8") for text in texts]
        self.append(np.frombuffer(b"".join(encoded), np.uint8), np.fromiter(map(len, encoded), OFFSET_DTYPE))

    def close(self) -> int:
        """-> the number of rows."""
        self._values.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.empty(0, OFFSET_DTYPE)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(OFFSET_DTYPE)
        offsets.tofile(_offsets_path(self.path))
        return len(lengths)


@dataclass
class TokenPairs:
    """Parallel token ids: pair i is (src[i], tgt[i])."""

    src: RaggedArray
    tgt: RaggedArray

    def __post_init__(self) -> None:
        assert len(self.src) == len(self.tgt), (len(self.src), len(self.tgt))

    def __len__(self) -> int:
        return len(self.src)

    @classmethod
    def from_rows(cls, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> TokenPairs:
        return cls(RaggedArray.from_rows(src), RaggedArray.from_rows(tgt))
