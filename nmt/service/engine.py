"""The service's engine: the loaded model, and a queue whose requests are searched together.

Requests arrive one by one from many clients; searching each alone would run tiny batches. The
engine's search threads take the first request waiting, wait at most `max_wait_ms` for more, and
search every segment of those requests that share their search options as one call of
`Translator.search_ids`, which sorts them into token-budget batches as `nmt-translate` does. A
segment's answer does not depend on its batch (fp32 and bf16 search is row by row), so it is the
one `nmt-translate` gives; sampling requests are searched alone (their draws follow the batch).

On a CPU the searches run in worker processes forked from the server once the model is loaded
(one per core, one thread each, as `nmt-translate --workers`): a search step spends half its time
in Python and small operations that a second thread cannot share, and the server's own HTTP work
would contend with a search thread for the interpreter. One dispatch thread per worker gathers a
batch and waits for its worker's answer.

A reload loads the new checkpoint beside the old one (with workers of its own) and swaps it in
under a lock: a request is pinned to the model it was queued with, so requests in flight finish on
the old model, whose workers stop when its last request is answered.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import queue
import re
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from nmt.checkpoint import resolve_checkpoint
from nmt.config import InferenceOptions, SearchOptions
from nmt.model.seq2seq import count_parameters
from nmt.translation import Translator
from nmt.workers import can_fork, resolve_workers

log = logging.getLogger(__name__)

LINE_BREAKS = re.compile(r"\r\n|[\r\n\u2028\u2029\x85]")


def setting(default: Any, help: str) -> Any:
    """A field with the help text of its nmt-serve flag."""
    return field(default=default, metadata={"help": help})


class QueueFull(RuntimeError):
    """More segments are waiting than the service holds: the client should retry later."""


class Expired(RuntimeError):
    """A request's deadline passed before it was searched."""


class WorkerLost(RuntimeError):
    """A search worker died (killed from outside); its requests may be retried."""

    def __init__(self, message: str, pool: ProcessPoolExecutor) -> None:
        super().__init__(message)
        self.pool = pool


# One segment's answer: its texts and scores, best first (empty for an empty segment).
Outcome = tuple[list[str], list[float]]


@dataclass(frozen=True)
class EngineSettings:
    max_wait_ms: float = setting(5.0, "how long the first request waits for others to share its batch (ms)")
    queue_segments: int = setting(1024, "segments waiting at most; beyond, requests are refused with 503")
    batching: bool = setting(True, "search concurrent requests together (off: each alone)")
    workers: int = setting(
        0, "processes searching side by side, one thread each (0: one per core on Linux; 1: in this process)"
    )


@dataclass
class LoadedModel:
    """A checkpoint ready to translate, with what `/model` reports of it."""

    path: Path
    translator: Translator  # its options are replaced per request
    sha256: str
    info: dict[str, Any]
    pool: ProcessPoolExecutor | None = None
    worker_pids: set[int] = field(default_factory=set)  # those seen answering at start
    jobs: int = 0  # requests queued with this model and not yet answered
    retired: bool = False  # another model serves now: stop the pool after the last request

    @classmethod
    def load(cls, run_or_checkpoint: str | Path, inference: InferenceOptions) -> LoadedModel:
        path = resolve_checkpoint(run_or_checkpoint)
        digest = _sha256(path)  # read first: what is hashed is what is loaded, unless it is rewritten between
        translator = Translator.load(path, inference=replace(inference, workers=1)).freeze()
        config = translator.config
        assert config is not None  # loaded from a checkpoint
        info = {
            "checkpoint": str(path),
            "sha256": digest,
            "src_lang": config.data.src_lang,
            "tgt_lang": config.data.tgt_lang,
            "encoder_cell": config.model.encoder.cell,
            "decoder_cell": config.model.decoder.cell,
            "attention": config.model.attention,
            "parameters": count_parameters(translator.model),
            "precision": translator.precision,
            "quantize": inference.quantize,
            "device": str(translator.device),
            "src_vocab_size": translator.tokenizer.src_vocab_size,
            "tgt_vocab_size": translator.tokenizer.tgt_vocab_size,
        }
        return cls(path, translator, digest, info)

    def translator_for(self, options: SearchOptions) -> Translator:
        return self.translator.with_options(options)

    def start_workers(self, workers: int) -> None:
        """Fork `workers` search processes now (they share this model's pages), one thread each
        (more would hang after a fork: nmt.workers)."""
        self.pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_start_worker,
            initargs=(self.translator,),
        )
        # All forked before the server takes requests.
        self.worker_pids = {future.result() for future in [self.pool.submit(os.getpid) for _ in range(workers)]}

    def search(self, options: SearchOptions, lines: list[str]) -> list[Outcome]:
        pool = self.pool
        if pool is None:
            return _outcomes(self.translator_for(options), lines)
        try:
            return pool.submit(_search_in_worker, options, lines).result()
        except BrokenProcessPool:
            raise WorkerLost("a search worker died; retry the request", pool) from None

    def stop_workers(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- in a search worker ---------------------------------------------------------------------------
_served: Translator | None = None  # set by _start_worker in each forked worker


def _start_worker(translator: Translator) -> None:
    global _served
    _served = translator
    torch.set_num_threads(1)


def _search_in_worker(options: SearchOptions, lines: list[str]) -> list[Outcome]:
    assert _served is not None, "_start_worker runs first in every worker"
    return _outcomes(_served.with_options(options), lines)


def _outcomes(translator: Translator, lines: list[str]) -> list[Outcome]:
    return [(t.texts, [h.score for h in t.hypotheses]) for t in translator.translate_lines(lines)]


def clean_segment(text: str) -> str:
    """One segment, one line: line breaks inside it become spaces (nmt-translate would split it)."""
    return LINE_BREAKS.sub(" ", text)


@dataclass
class Job:
    """One request's segments, waiting in the queue."""

    loaded: LoadedModel
    options: SearchOptions
    segments: list[str]
    deadline: float  # time.monotonic()
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple:
        return id(self.loaded), astuple(self.options)


class Engine:
    """Searches queued requests in shared batches: one dispatch thread per search worker."""

    def __init__(self, loaded: LoadedModel, settings: EngineSettings) -> None:
        self.settings = settings
        self._loaded = loaded
        translator = loaded.translator
        self.workers = resolve_workers(settings.workers) if translator.device.type == "cpu" and can_fork() else 1
        self._swap = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._waiting = 0  # segments queued, not yet taken by a search thread
        self._count = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.batches = 0  # search calls made, for the logs and the tests

    @property
    def loaded(self) -> LoadedModel:
        with self._swap:
            return self._loaded

    def start(self) -> None:
        if self.workers > 1:
            self._loaded.start_workers(self.workers)
        for number in range(self.workers):
            thread = threading.Thread(target=self._run, name=f"nmt-search-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Search what is queued, then stop the threads."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        self._loaded.stop_workers()

    def submit(self, segments: list[str], options: SearchOptions, timeout_s: float) -> Job:
        """Queue a request -> its Job, whose future gives its Translations in order. Raises
        QueueFull."""
        with self._count:
            if self._waiting + len(segments) > self.settings.queue_segments:
                raise QueueFull(f"{self._waiting} segments are waiting; the queue holds {self.settings.queue_segments}")
            self._waiting += len(segments)
        with self._swap:
            loaded = self._loaded
            loaded.jobs += 1
        job = Job(loaded, options, [clean_segment(s) for s in segments], time.monotonic() + timeout_s)
        self._queue.put(job)
        return job

    def reload(self, run_or_checkpoint: str | Path | None, inference: InferenceOptions) -> LoadedModel:
        """Load a checkpoint (default: the one serving) and swap it in; on failure the old one
        goes on serving and the error is raised."""
        new = LoadedModel.load(run_or_checkpoint or self.loaded.path, inference)
        if self.workers > 1:
            new.start_workers(self.workers)
        with self._swap:
            old, self._loaded = self._loaded, new
            old.retired = True
            idle = old.jobs == 0
        if idle:
            old.stop_workers()
        log.info("serving %s (sha256 %s)", new.path, new.sha256[:12])
        return new

    # --- the search threads ---------------------------------------------------------------------
    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            jobs = self._gather(first)
            groups: dict[tuple, list[Job]] = defaultdict(list)
            for job in jobs:
                groups[job.key].append(job)
            for group in groups.values():
                try:
                    self._search(group)
                except WorkerLost as error:
                    self._replace_workers(group[0].loaded, error.pool)
                    self._fail(group, error)
                except Exception as error:  # a bug: its requests answer 500, the thread goes on
                    log.exception("search failed")
                    self._fail(group, error)
                finally:
                    self._answered(group)

    def _fail(self, jobs: list[Job], error: Exception) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)

    def _answered(self, jobs: list[Job]) -> None:
        loaded = jobs[0].loaded
        with self._swap:
            loaded.jobs -= len(jobs)
            idle = loaded.retired and loaded.jobs == 0
        if idle:
            loaded.stop_workers()

    def _replace_workers(self, loaded: LoadedModel, broken: ProcessPoolExecutor) -> None:
        """A worker was killed from outside (for memory, by a signal): its pool is broken; fork
        a new one so the service goes on."""
        with self._swap:
            if loaded.pool is not broken:  # another dispatch thread has replaced it
                return
            log.error("a search worker died; starting new workers")
            loaded.stop_workers()
            loaded.start_workers(self.workers)

    def _gather(self, first: Job) -> list[Job]:
        """`first` and the requests that arrive within max_wait_ms, up to a batch's tokens."""
        jobs = [first]
        self._taken(first)
        if not self.settings.batching or first.options.sample:
            return jobs
        tokens, budget = _tokens(first), first.loaded.translator.batch_tokens
        until = time.monotonic() + self.settings.max_wait_ms / 1000
        while tokens < budget:
            try:
                job = self._queue.get(timeout=max(0.0, until - time.monotonic()))
            except queue.Empty:
                break
            if job is None or job.options.sample:
                self._queue.put(job)  # the stop marker, or a request that is searched alone: later
                break
            self._taken(job)
            jobs.append(job)
            tokens += _tokens(job)
        return jobs

    def _taken(self, job: Job) -> None:
        with self._count:
            self._waiting -= len(job.segments)

    def _search(self, jobs: list[Job]) -> None:
        now = time.monotonic()
        live = []
        for job in jobs:
            if job.future.cancelled():
                continue
            if now > job.deadline:
                job.future.set_exception(Expired("the request's deadline passed while it waited"))
                continue
            if job.future.set_running_or_notify_cancel():
                live.append(job)
        if not live:
            return
        lines = [segment for job in live for segment in job.segments]
        translations = live[0].loaded.search(live[0].options, lines)
        self.batches += 1
        start = 0
        for job in live:
            job.future.set_result(translations[start : start + len(job.segments)])
            start += len(job.segments)


def _tokens(job: Job) -> int:
    # A rough count before tokenizing: ~1 piece per 4 characters, as a budget's guide only.
    return sum(len(segment) // 4 + 2 for segment in job.segments)


def translation_dict(outcome: Outcome, nbest: int) -> dict[str, Any]:
    texts, scores = outcome
    result: dict[str, Any] = {"text": texts[0] if texts else "", "score": round(scores[0], 6) if scores else 0.0}
    if nbest > 1:
        result["nbest"] = [{"text": text, "score": round(score, 6)} for text, score in zip(texts, scores)]
    return result
