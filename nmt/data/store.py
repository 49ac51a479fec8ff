"""The prepared store: a corpus made ready for training once, then read by every run, every rank
and every resume that trains on the same data.

A store is a directory `CACHE/stores/<fingerprint>/`: the tokenizer, the training pairs' ids and
texts as ragged arrays (nmt/data/arrays.py), the validation split, and `meta.json`. The fingerprint
hashes what the store's content depends on: the sources (each file's path, size and modification
time, or the hub dataset's fingerprint), the languages, the filters (`train_limit`, `max_len`) and
the tokenizer (its options when trained, its content when reused). Change any of them and a new
store is prepared; change nothing and the store is reused.

One process prepares a store while the others that need it wait on a file lock (so ranks, and
separate jobs, never prepare the same store twice, and a waiting rank has no collective that could
time out). The preparation runs in a child process (named `nmt-prepare`) whose memory is returned
when it ends, and writes into a temporary directory renamed into place when complete: a killed
preparation leaves no half-written store. A failed one leaves its reason for the waiting processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nmt.config import DataConfig
from nmt.data.arrays import RaggedFile, TokenPairs
from nmt.data.corpus import DataError, split_source, training_sources
from nmt.data.tokenizer import Tokenizer, TokenizerError

log = logging.getLogger(__name__)

STORE_FORMAT = 1  # raise when the layout changes: older stores are then prepared anew
PR_SET_NAME, PR_SET_PDEATHSIG = 15, 1  # prctl(2)


class PreparedElsewhere(DataError):
    """Another process failed to prepare the store this one waited for; it reported why."""


@dataclass
class ValidationSplit:
    """The validation split in memory: texts and ids of every pair."""

    src_texts: list[str]
    tgt_texts: list[str]
    src_ids: list[list[int]]
    tgt_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.src_ids)


@dataclass
class Store:
    """A prepared store, opened: what training reads."""

    directory: Path
    meta: dict
    tokenizer: Tokenizer
    train: TokenPairs  # ids, read from the store's files
    train_texts: tuple[RaggedFile, RaggedFile]  # UTF-8 texts
    validation: ValidationSplit

    @classmethod
    def open(cls, directory: Path) -> Store:
        meta = json.loads((directory / "meta.json").read_text())
        dtype = meta["dtype"]

        def ragged(name: str, dtype=dtype) -> RaggedFile:
            return RaggedFile(directory / name, dtype)

        validation = ValidationSplit(
            ragged("validation.src_text", np.uint8).load().texts(),
            ragged("validation.tgt_text", np.uint8).load().texts(),
            ragged("validation.src_ids").load().rows(),
            ragged("validation.tgt_ids").load().rows(),
        )
        return cls(
            directory,
            meta,
            Tokenizer.load(directory / "tokenizer"),
            TokenPairs(ragged("train.src_ids"), ragged("train.tgt_ids")),
            (ragged("train.src_text", np.uint8), ragged("train.tgt_text", np.uint8)),
            validation,
        )

    @property
    def corpora(self) -> list[tuple[str, int, int]]:
        """(name, first pair, end) of every training corpus, in the store's order."""
        spans, start = [], 0
        for corpus in self.meta["train"]["corpora"]:
            spans.append((corpus["name"], start, start + corpus["pairs"]))
            start += corpus["pairs"]
        return spans


# --- where and under which name --------------------------------------------------------------------
def cache_root(data: DataConfig) -> Path:
    if data.cache_dir:
        return Path(data.cache_dir).expanduser()
    if os.environ.get("NMT_CACHE"):
        return Path(os.environ["NMT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "nmt"


def store_key(data: DataConfig, tokenizer: Tokenizer | None = None) -> dict:
    """What a store's content depends on (its fingerprint hashes this)."""
    if tokenizer is not None:
        tokenizer_key: dict = {"model": tokenizer.fingerprint}
    elif data.tokenizer.model is not None:
        tokenizer_key = {"model": Tokenizer.from_path(Path(data.tokenizer.model)).fingerprint}
    else:
        options = asdict(data.tokenizer)
        tokenizer_key = {key: options[key] for key in ("kind", "vocab_size", "joint", "character_coverage")}
        tokenizer_key |= {"max_sentences": data.tokenizer.max_sentences, "restrict": data.tokenizer.restrict_output}
    return {
        "format": STORE_FORMAT,
        "languages": [data.src_lang, data.tgt_lang],
        "train": {name: source.identity() for name, source in training_sources(data).items()},
        "validation": split_source(data, "validation").identity(),
        "train_limit": data.train_limit,
        "max_len": data.max_len,
        "tokenizer": tokenizer_key,
    }


def fingerprint(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


# --- preparing, once ---------------------------------------------------------------------------------
def prepare_store(data: DataConfig, tokenizer: Tokenizer | None = None, workers: int = 1, job: str = "") -> Store:
    """The store of `data` (with `tokenizer`, if given, instead of the one `data` names or
    trains): opened if it exists, else prepared here or, while another process prepares it,
    waited for. Processes of one `job` (e.g. the ranks of a training) take a failure of one of
    them as their own; other processes try again."""
    try:
        key = store_key(data, tokenizer)
    except TokenizerError as error:
        raise DataError(str(error)) from None
    directory = cache_root(data) / "stores" / fingerprint(key)
    if not (directory / "meta.json").is_file():
        _prepare_once(data, tokenizer, workers, directory, key, job)
    store = Store.open(directory)
    log.info(
        "prepared store %s: %s training pairs, %s validation pairs",
        directory,
        f"{store.meta['train']['pairs']:,}",
        f"{store.meta['validation']['pairs']:,}",
    )
    return store


def prepare_for_resume(data: DataConfig, tokenizer: Tokenizer, workers: int = 1, job: str = "") -> Store:
    """The store a resumed run trained on: the one its data config names, if it holds the
    checkpoint's tokenizer (it was kept), else one prepared with that tokenizer."""
    if data.tokenizer.model is None:
        with contextlib.suppress(DataError, OSError):
            directory = cache_root(data) / "stores" / fingerprint(store_key(data))
            meta_path = directory / "meta.json"
            if meta_path.is_file() and json.loads(meta_path.read_text())["tokenizer"] == tokenizer.fingerprint:
                return prepare_store(data, None, workers, job)
    return prepare_store(data, tokenizer, workers, job)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the lock file `path` (waiting while another process does)."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is preparing %s: waiting for it", path.with_suffix(""))
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare_once(
    data: DataConfig, tokenizer: Tokenizer | None, workers: int, directory: Path, key: dict, job: str
) -> None:
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot make the store cache {directory.parent}: {error}; set data.cache_dir") from None
    failure = directory.with_name(directory.name + ".failed")
    with _locked(directory.with_name(directory.name + ".lock")):
        if (directory / "meta.json").is_file():
            return  # prepared by the process this one waited for
        if job and failure.is_file():
            failed = json.loads(failure.read_text())
            if failed["job"] == job:
                raise PreparedElsewhere(failed["error"])
        failure.unlink(missing_ok=True)
        for stale in directory.parent.glob(f"{directory.name}.tmp-*"):  # of a preparation killed before
            shutil.rmtree(stale, ignore_errors=True)
        log.info("preparing the corpus into %s (%d processes)", directory, workers)
        temporary = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
        temporary.mkdir()
        (temporary / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
        try:
            meta = _build(data, tokenizer, workers, temporary)
        except BaseException as error:
            shutil.rmtree(temporary, ignore_errors=True)
            if isinstance(error, DataError):
                failure.write_text(json.dumps({"job": job, "error": str(error)}) + "\n")
            raise
        os.rename(temporary, directory)
    log.info("prepared the corpus in %.1f s", meta["seconds"])


def _build(data: DataConfig, tokenizer: Tokenizer | None, workers: int, directory: Path) -> dict:
    """`build_store` in a child process on Linux (its memory goes back when it ends; a crash in
    it is reported, not inherited), here elsewhere. The child is a fresh interpreter, not a fork:
    a process that has run torch's OpenMP threads (a notebook, a benchmark) forks children whose
    SentencePiece training never returns, and a fresh one imports nothing of the caller's script."""
    from nmt.data.preparation import build_store

    if not sys.platform.startswith("linux"):
        return build_store(data, directory, tokenizer, workers)
    answer_read, answer_write = os.pipe()
    package_root = str(Path(__file__).resolve().parents[2])  # this nmt, whatever the child's path says
    paths = [package_root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}  # no empty entry: it would mean the cwd
    command = [sys.executable, "-c", f"from nmt.data.store import _child; _child({answer_write})"]
    child = subprocess.Popen(command, stdin=subprocess.PIPE, pass_fds=(answer_write,), env=env)
    os.close(answer_write)
    level = logging.getLogger("nmt").getEffectiveLevel()
    try:
        assert child.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it died at once: its answer says nothing
            child.stdin.write(pickle.dumps((data, tokenizer, workers, directory, level)))
            child.stdin.close()
        with os.fdopen(answer_read, "rb") as answers:
            answer = answers.read()
        child.wait()
    finally:
        if child.poll() is None:  # interrupted (Ctrl-C): the preparation stops with this process
            child.kill()
            child.wait()
    kind, outcome = pickle.loads(answer) if answer else ("killed", None)
    if kind == "done":
        return outcome
    if kind == "user error":
        raise DataError(outcome)
    if kind == "error":
        raise DataError(f"preparing the corpus failed: {outcome}")
    cause = f"exit status {child.returncode}"
    with contextlib.suppress(ValueError):
        cause = signal.Signals(-child.returncode).name
    raise DataError(f"preparing the corpus was stopped by {cause} (out of memory? lower data.tokenizer.max_sentences)")


def _child(answer_fd: int) -> None:
    """The preparation process: its work arrives pickled on stdin, its outcome leaves on `answer_fd`."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, b"nmt-prepare")
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # dies with the process that waits for it
    from nmt.data.preparation import build_store

    data, tokenizer, workers, directory, level = pickle.loads(sys.stdin.buffer.read())
    logging.basicConfig(level=level, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    with os.fdopen(answer_fd, "wb") as answers:
        try:
            outcome = ("done", build_store(data, directory, tokenizer, workers))
            code = 0
        except (DataError, TokenizerError) as error:
            outcome, code = ("user error", str(error)), 2
        except Exception as error:
            log.debug("preparation failed", exc_info=error)
            outcome, code = ("error", f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"), 1
        answers.write(pickle.dumps(outcome))
    os._exit(code)
